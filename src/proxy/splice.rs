//! Forwarding between two TCP sockets: `splice(2)` for bulk data, a plain copy for small
//! messages.
//!
//! Bulk data moves socket → pipe → socket inside the kernel and never enters user space. For
//! the small request/response messages of interactive traffic, splice costs more than it
//! saves: every message needs a third, failing call to learn that the socket is empty, where a
//! short `recv` already tells (the rule tokio's own `poll_read` applies). So each direction
//! starts by copying through one buffer per thread and switches to splice when a read brings at
//! least [`SPLICE_MIN`] bytes, and back when a splice brings less.
//!
//! Everything is driven by tokio's readiness (edge-triggered epoll): every call is
//! non-blocking, and `EAGAIN` clears the readiness it was tried under.
//!
//! A direction always empties its pipe before it fills it again. That keeps `EAGAIN` from the
//! socket → pipe splice unambiguous (the pipe is empty, so it is the socket that has no data)
//! and lets an empty pipe go back to a per-thread pool: a connection holds pipes only while
//! bulk bytes are in flight, so idle keep-alive connections cost their two sockets and nothing
//! else, and a new connection costs no pipe syscalls.
//!
//! Limits: pipes are grown to [`PIPE_SIZE`] where the kernel allows it (`F_SETPIPE_SZ`; an
//! unprivileged user is capped by `fs.pipe-max-size` and `fs.pipe-user-pages-soft`) and keep
//! the default size otherwise. Where `splice` is refused (`EINVAL`/`ENOSYS`, e.g. under some
//! seccomp sandboxes) the process copies from then on; where no pipe can be made (out of
//! descriptors) that one transfer is copied.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{ready, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt as _, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// The size pipes are grown to: one splice moves at most this much.
pub(crate) const PIPE_SIZE: usize = 1 << 20;

/// A read or splice of at least this many bytes makes the next transfer a splice.
pub(crate) const SPLICE_MIN: usize = 64 * 1024;

/// The per-thread copy buffer. Larger than [`SPLICE_MIN`] so that bulk data is recognised by
/// a read that fills at least that much.
const COPY_BUF: usize = 256 * 1024;

/// Empty pipes kept per thread for reuse. Each is two descriptors and counts against the
/// user's pipe page budget, so the pool stays small.
const POOL_MAX: usize = 16;

/// Set once `splice` was refused on this system; from then on everything is copied.
static SPLICE_REFUSED: AtomicBool = AtomicBool::new(false);

/// How a direction may move its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Copy small messages, splice bulk data (what [`bidirectional`] uses).
    Auto,
    /// Copy only, as where splice is refused.
    #[cfg_attr(not(test), allow(dead_code))]
    Copy,
    /// Splice everything, small messages too.
    #[cfg_attr(not(test), allow(dead_code))]
    Splice,
}

/// Forwards `a` ⇄ `b` until both directions have ended, adding bytes to `a_to_b` and `b_to_a`
/// as each write or splice delivers them (so a long transfer shows progress), and returns the
/// bytes moved each way.
///
/// End of stream from one side shuts down the other side's write half once everything read
/// before it was delivered (half-close); the other direction keeps going. A peer that resets
/// ends the directions it takes part in without an error.
pub(crate) async fn bidirectional(
    a: &mut TcpStream,
    b: &mut TcpStream,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
    spliced: &AtomicU64,
    mode: Mode,
) -> io::Result<(u64, u64)> {
    let (ar, aw) = a.split();
    let (br, bw) = b.split();
    tokio::try_join!(
        one_way(ar, bw, a_to_b, spliced, mode),
        one_way(br, aw, b_to_a, spliced, mode)
    )
}

/// What one transfer step found.
enum Flow {
    /// `n` bytes delivered (already added to the counter); the next step should splice if
    /// `bulk`.
    Moved { n: usize, bulk: bool },
    /// `n` bytes of an earlier read delivered (already counted); the mode stays as it is.
    Flushed { n: usize },
    /// Nothing to deliver this time (splice not possible now; try copying).
    Retry,
    /// The source ended (end of stream or reset): pass the end on.
    SrcEnded,
    /// The destination is gone: the bytes for it cannot be delivered.
    DstGone,
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

async fn one_way(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    moved: &AtomicU64,
    spliced: &AtomicU64,
    mode: Mode,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut splicing = mode == Mode::Splice;
    // Bytes read but not yet accepted by `dst` (copy mode only; usually empty).
    let mut pending = Vec::new();
    loop {
        let flow = if splicing && pending.is_empty() {
            splice_step(&src, &dst, moved, spliced).await?
        } else {
            copy_step(&mut src, &mut dst, &mut pending, moved).await?
        };
        match flow {
            Flow::Moved { n, bulk } => {
                total += n as u64;
                splicing = match mode {
                    Mode::Auto => bulk && !SPLICE_REFUSED.load(Ordering::Relaxed),
                    Mode::Copy => false,
                    Mode::Splice => !SPLICE_REFUSED.load(Ordering::Relaxed),
                };
            }
            Flow::Flushed { n } => total += n as u64,
            Flow::Retry => splicing = false,
            Flow::SrcEnded => {
                if let Err(e) = dst.shutdown().await {
                    // The destination already closed both ways: nothing left to tell it.
                    tracing::debug!(%e, "shutdown(write) on a forwarded socket");
                }
                return Ok(total);
            }
            Flow::DstGone => return Ok(total),
        }
    }
}

thread_local! {
    /// The copy buffer of this thread. Bytes stay in it only within one poll: what `dst` does
    /// not take at once moves to the direction's own `pending`.
    static COPY: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_BUF].into_boxed_slice());
}

/// Delivers `pending` if there is any, else reads once and writes what came.
async fn copy_step(
    src: &mut ReadHalf<'_>,
    dst: &mut WriteHalf<'_>,
    pending: &mut Vec<u8>,
    moved: &AtomicU64,
) -> io::Result<Flow> {
    if !pending.is_empty() {
        return match dst.write(pending).await {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
                pending.drain(..n);
                if pending.is_empty() {
                    // Gives back the memory of a large backlog; small ones keep theirs.
                    pending.shrink_to(SPLICE_MIN);
                }
                Ok(Flow::Flushed { n })
            }
            Err(e) if peer_gone(&e) => Ok(Flow::DstGone),
            Err(e) => Err(e),
        };
    }
    poll_fn(|cx| {
        COPY.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut rb = ReadBuf::new(&mut buf[..]);
            // tokio's poll_read: a short read clears the readiness, so an emptied socket
            // costs no extra call.
            match ready!(Pin::new(&mut *src).poll_read(cx, &mut rb)) {
                Ok(()) => {}
                Err(e) if peer_gone(&e) => return Poll::Ready(Ok(Flow::SrcEnded)),
                Err(e) => return Poll::Ready(Err(e)),
            }
            let data = rb.filled();
            if data.is_empty() {
                return Poll::Ready(Ok(Flow::SrcEnded));
            }
            let mut sent = 0;
            while sent < data.len() {
                match dst.as_ref().try_write(&data[sent..]) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        sent += n;
                        moved.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if peer_gone(&e) => return Poll::Ready(Ok(Flow::DstGone)),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            pending.extend_from_slice(&data[sent..]);
            Poll::Ready(Ok(Flow::Moved {
                n: sent,
                bulk: data.len() >= SPLICE_MIN,
            }))
        })
    })
    .await
}

/// Fills an empty pipe from `src` once and drains it completely into `dst`.
async fn splice_step(
    src: &ReadHalf<'_>,
    dst: &WriteHalf<'_>,
    moved: &AtomicU64,
    spliced: &AtomicU64,
) -> io::Result<Flow> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
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
            return Ok(Flow::SrcEnded);
        }
        Ok(filled) => filled,
        Err(e) if peer_gone(&e) => return Ok(Flow::SrcEnded),
        // Nothing was taken from `src`: the same bytes can still be copied.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            if !SPLICE_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::debug!(%e, "splice(2) is not available; forwarding by copying");
            }
            return Ok(Flow::Retry);
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            tracing::debug!(%e, "no descriptors for a pipe; copying this transfer");
            return Ok(Flow::Retry);
        }
        Err(e) => return Err(e),
    };

    let mut left = n;
    while left > 0 {
        let sent = dst
            .async_io(Interest::WRITABLE, || {
                retry_eintr(|| splice(pipe.read.as_fd(), dst.as_fd(), left))
            })
            .await;
        match sent {
            // Not possible while the pipe holds `left` bytes; guards against looping.
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                left -= m;
                moved.fetch_add(m as u64, Ordering::Relaxed);
                spliced.fetch_add(m as u64, Ordering::Relaxed);
            }
            // The pipe still holds data: it is dropped (closed), not pooled.
            Err(e) if peer_gone(&e) => return Ok(Flow::DstGone),
            Err(e) => return Err(e),
        }
    }
    pipe.give_back();
    Ok(Flow::Moved {
        n,
        bulk: n >= SPLICE_MIN,
    })
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
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
        // more calls per byte.
        if let Err(e) = set_pipe_size(write.as_fd(), PIPE_SIZE) {
            tracing::trace!(%e, "F_SETPIPE_SZ refused; keeping the default pipe size");
        }
        Ok(Pipe { read, write })
    }

    /// Returns an empty pipe to this thread's pool, or closes it when the pool is full.
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
///
/// Splicing into a socket whose peer is gone raises SIGPIPE (there is no `MSG_NOSIGNAL` for
/// splice); Rust programs ignore that signal from the start, so it comes back as `EPIPE`.
#[allow(unsafe_code)]
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, so open for the whole call; null offsets are
    // allowed (and required) for pipes and sockets. No memory is passed.
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

/// Pipes in this thread's pool.
#[cfg(test)]
pub(crate) fn pooled_pipes() -> usize {
    POOL.with(|pool| pool.borrow().len())
}
