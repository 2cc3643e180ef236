//! Zero-copy forwarding between two TCP sockets with `splice(2)`.
//!
//! Each direction moves data socket → pipe → socket inside the kernel; the bytes never enter
//! user space. The loop is driven by tokio's readiness (edge-triggered epoll), never by
//! blocking calls or polling: every splice is non-blocking and an `EAGAIN` clears the
//! readiness it was tried under.
//!
//! A direction always empties its pipe before it fills it again. That keeps `EAGAIN` from the
//! socket → pipe splice unambiguous (the pipe is empty, so it is the socket that has no data)
//! and lets an empty pipe go back to a per-thread pool: a connection holds pipes only while
//! bytes are in flight, so thousands of idle keep-alive connections cost two sockets each, not
//! six descriptors, and a new connection costs no pipe syscalls.
//!
//! Limits: pipes are grown to [`PIPE_SIZE`] when the kernel allows it (`F_SETPIPE_SZ`; an
//! unprivileged user is capped by `fs.pipe-max-size` and `fs.pipe-user-pages-soft`) and keep
//! the default size otherwise. Where `splice` is refused (`EINVAL`/`ENOSYS`, e.g. under some
//! seccomp sandboxes) the caller falls back to a user-space copy, see [`Error::Unsupported`].

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// The size pipes are grown to. One splice moves at most this much; larger means fewer
/// syscalls per byte on bulk transfers (measured in `bench/proxy.sh`).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// Empty pipes kept per thread for reuse. Each one is two descriptors and counts against the
/// user's pipe page budget, so the pool stays small.
const POOL_MAX: usize = 16;

/// Why the splice path stopped early.
#[derive(Debug)]
pub(crate) enum Error {
    /// `splice` is not available for these sockets and no byte has moved yet: the caller can
    /// still forward the connection another way.
    Unsupported(io::Error),
    Io(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Forwards `a` ⇄ `b` until both directions have ended, adding bytes to `a_to_b` and `b_to_a`
/// as each splice delivers them (so a long transfer shows progress), and returns the bytes
/// moved each way.
///
/// End of stream from one side shuts down the other side's write half once everything read
/// before it was delivered (half-close); the other direction keeps going. A peer that resets
/// or closes its read side ends the direction writing to it, without an error.
pub(crate) async fn bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> Result<(u64, u64), Error> {
    // Whether any splice worked yet; an atomic only so the future stays `Send`.
    let started = AtomicBool::new(false);
    tokio::try_join!(
        one_way(a, b, a_to_b, &started),
        one_way(b, a, b_to_a, &started)
    )
}

/// Errors that mean the peer went away: they end one direction, not the connection.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// Errors after which a user-space copy can still forward the connection: splice refused for
/// these sockets, or no descriptor left for a pipe.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EMFILE | libc::ENFILE)
    )
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    moved: &AtomicU64,
    started: &AtomicBool,
) -> Result<u64, Error> {
    let mut total = 0u64;
    loop {
        // Fill: wait for data, then take an empty pipe and splice into it.
        let filled = src
            .async_io(Interest::READABLE, || {
                let pipe = Pipe::take()?;
                match retry_eintr(|| splice(src.as_fd(), pipe.write.as_fd(), PIPE_SIZE)) {
                    Ok(n) => Ok((pipe, n)),
                    Err(e) => {
                        // Nothing entered the pipe: it is still empty and reusable.
                        pipe.give_back();
                        Err(e)
                    }
                }
            })
            .await;
        let (pipe, n) = match filled {
            Ok((pipe, 0)) => {
                pipe.give_back();
                started.store(true, Ordering::Relaxed);
                shutdown_write(dst);
                return Ok(total);
            }
            Ok(filled) => filled,
            Err(e) if unsupported(&e) && !started.load(Ordering::Relaxed) => {
                return Err(Error::Unsupported(e))
            }
            Err(e) if peer_gone(&e) => {
                shutdown_write(dst);
                return Ok(total);
            }
            Err(e) => return Err(e.into()),
        };
        started.store(true, Ordering::Relaxed);

        // Drain: everything in the pipe goes out before the next fill.
        let mut left = n;
        while left > 0 {
            let sent = dst
                .async_io(Interest::WRITABLE, || {
                    retry_eintr(|| splice(pipe.read.as_fd(), dst.as_fd(), left))
                })
                .await;
            match sent {
                Ok(m) => {
                    left -= m;
                    total += m as u64;
                    moved.fetch_add(m as u64, Ordering::Relaxed);
                }
                // The pipe still holds data: it is dropped (closed), not pooled.
                Err(e) if peer_gone(&e) => return Ok(total),
                Err(e) => return Err(e.into()),
            }
        }
        pipe.give_back();
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Ends our sending side of `s`; the peer reads end of stream after the data already sent.
fn shutdown_write(s: &TcpStream) {
    if let Err(e) = shutdown_wr(s.as_fd()) {
        // ENOTCONN: the peer already closed both ways; nothing left to tell it.
        tracing::debug!(%e, "shutdown(write) on a forwarded socket");
    }
}

/// A pipe used as the in-kernel buffer of one direction. Only ever pooled empty.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Ok(p);
        }
        let (read, write) = pipe2()?;
        // Refused above the user's limits: the default size (64 KiB) still works, only with
        // more syscalls per byte.
        if let Err(e) = set_pipe_size(write.as_fd(), PIPE_SIZE) {
            tracing::trace!(%e, "F_SETPIPE_SZ refused; keeping the default pipe size");
        }
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
    fn give_back(self) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(self);
            }
        });
    }
}

#[allow(unsafe_code)]
fn pipe2() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let fds = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(fds)
}

#[allow(unsafe_code)]
fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: fcntl on a descriptor we borrow; F_SETPIPE_SZ takes an int and touches no memory.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// One non-blocking splice of up to `len` bytes; `Ok(0)` from a socket is end of stream.
#[allow(unsafe_code)]
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed and open for the call; null offsets mean "use and
    // advance the file position", which pipes and sockets do not have. No memory is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `shutdown(SHUT_WR)` through a shared reference: tokio only offers it on `&mut` halves.
#[allow(unsafe_code)]
fn shutdown_wr(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown on a socket descriptor we borrow; no memory is passed.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
