//! Connections straight into a container's network namespace.
//!
//! Podman publishes a rootless container's port through a port forwarder of its own
//! (rootlessport, or pasta on Podman 5), which is a user-space relay. Relaying to that published
//! port would put two relays into every connection. Instead berth gets unconnected TCP sockets
//! that were created *inside* the container's network namespace: a socket belongs to the
//! namespace it was created in, whichever process later connects it. berth connects such a
//! socket to `127.0.0.1:PORT` of the container itself and splices from there, so the only relay
//! on the path is berth's.
//!
//! The sockets come from a helper: berth itself (`berth netns-sockets`, hidden), started with
//! its user and network namespaces switched to the container's between fork and exec (as the
//! user that owns the rootless user namespace, no privilege is needed for that). The helper
//! drops every capability, creates sockets on request, sends them back over a
//! `SOCK_SEQPACKET` pair with `SCM_RIGHTS`, and exits when berth closes its end (also when berth
//! dies) or after 30 s without a request; berth starts a new one when it needs sockets again,
//! from the namespace handles it keeps. Sockets are fetched in batches and pooled, so a
//! connection costs no round trip.
//!
//! Whenever any of this is impossible (no access to the namespaces, the application listens on
//! the container's external address only…), the proxy uses the published port.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::process::Stdio;
use std::sync::Mutex;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::thread::LinkNameSpaceType;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpSocket;

/// Sockets fetched from the helper at a time.
const BATCH: usize = 32;

/// A helper with no request for this long exits; the next request starts a new one (a few
/// ms). Idle services then cost no process.
const HELPER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Sockets from inside one container's network namespace.
#[derive(Debug)]
pub struct Netns {
    /// The container's namespaces, held open: a helper started later enters exactly these,
    /// whatever became of the pid they were found by.
    user: Option<File>,
    net: File,
    /// The helper last started (it may have left since); also serialises requests to it.
    helper: tokio::sync::Mutex<Helper>,
    pool: Mutex<Vec<OwnedFd>>,
}

/// A running helper. It exits by itself when `chan` closes (this is dropped) or after
/// [`HELPER_IDLE`]; a task reaps it then.
#[derive(Debug)]
struct Helper {
    /// Our end of the pair to the helper (non-blocking).
    chan: AsyncFd<OwnedFd>,
}

fn same_namespace(a: &File, ns: &str) -> io::Result<bool> {
    let ours = std::fs::metadata(format!("/proc/self/ns/{ns}"))?;
    let theirs = a.metadata()?;
    Ok(ours.ino() == theirs.ino() && ours.dev() == theirs.dev())
}

impl Netns {
    /// Opens the namespaces of process `pid` (a container's main process) and starts a helper
    /// there. Errors when they cannot be entered; callers then use the published port.
    pub fn open(pid: u32) -> io::Result<Netns> {
        if pid == 0 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no process"));
        }
        // `pid` comes from a Podman inspect a moment ago. Should the container have died since
        // and its pid been reused, the new process would have to be the same user's and live
        // in a namespace of its own for this to pick the wrong one; the window is the time
        // between that inspect and these two opens.
        let user = File::open(format!("/proc/{pid}/ns/user"))?;
        let net = File::open(format!("/proc/{pid}/ns/net"))?;
        if same_namespace(&net, "net")? {
            // Host network: the published address is the application's own.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the container shares berth's network namespace",
            ));
        }
        // Joining one's own user namespace is an error; the network namespace is all we need.
        let user = (!same_namespace(&user, "user")?).then_some(user);
        // Start it now, so that an error shows here and not at the first connection.
        let first = start_helper(user.as_ref(), &net)?;
        Ok(Netns {
            user,
            net,
            helper: tokio::sync::Mutex::new(first),
            pool: Mutex::new(Vec::new()),
        })
    }

    fn pop(&self) -> Option<TcpSocket> {
        let fd = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
    }

    /// An unconnected, non-blocking TCP/IPv4 socket of the container's network namespace.
    pub async fn socket(&self) -> io::Result<TcpSocket> {
        if let Some(s) = self.pop() {
            return Ok(s);
        }
        let mut helper = self.helper.lock().await;
        // Someone else may have refilled the pool while we waited.
        if let Some(s) = self.pop() {
            return Ok(s);
        }
        let fds = match ask(&helper, BATCH).await {
            Ok(fds) => fds,
            // It left for idleness (or died): once more with a new one, started on the
            // blocking pool (a fork and exec).
            Err(_gone) => {
                let user = self.user.as_ref().map(File::try_clone).transpose()?;
                let net = self.net.try_clone()?;
                *helper = tokio::task::spawn_blocking(move || start_helper(user.as_ref(), &net))
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))??;
                ask(&helper, BATCH).await?
            }
        };
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(fds);
        self.pop()
            .ok_or_else(|| io::Error::other("the netns helper sent no sockets"))
    }
}

/// Starts `berth netns-sockets` inside the namespaces `user` (unless berth's own) and `net`.
#[allow(unsafe_code)]
fn start_helper(user: Option<&File>, net: &File) -> io::Result<Helper> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // The running binary itself, also after an upgrade replaced the file on disk (then
    // current_exe() names a deleted path).
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("netns-sockets")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let user_fd = user.map(|u| u.as_raw_fd());
    let net_fd = net.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes setns(2)
    // system calls (async-signal-safe, no allocation). The descriptors are borrowed for this
    // call, so they are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = user_fd {
                rustix::thread::move_into_link_name_space(
                    BorrowedFd::borrow_raw(fd),
                    Some(LinkNameSpaceType::User),
                )?;
            }
            rustix::thread::move_into_link_name_space(
                BorrowedFd::borrow_raw(net_fd),
                Some(LinkNameSpaceType::Network),
            )?;
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    tokio::spawn(async move {
        let _status = child.wait().await;
    });
    rustix::io::ioctl_fionbio(&ours, true)?;
    // SAFETY: `ours` is an open descriptor the AsyncFd owns from here on; nothing else
    // closes it.
    let chan = unsafe { AsyncFd::register(ours) }.map_err(io::Error::from)?;
    Ok(Helper { chan })
}

/// Asks a helper for `n` sockets.
async fn ask(helper: &Helper, n: usize) -> io::Result<Vec<OwnedFd>> {
    let want = [u8::try_from(n).unwrap_or(u8::MAX)];
    loop {
        let mut ready = helper.chan.writable().await?;
        match ready.try_io(|fd| {
            rustix::net::send(fd.get_ref(), &want, SendFlags::NOSIGNAL).map_err(io::Error::from)
        }) {
            Ok(sent) => {
                sent?;
                break;
            }
            Err(_would_block) => continue,
        }
    }
    loop {
        let mut ready = helper.chan.readable().await?;
        match ready.try_io(|fd| recv_fds(fd.get_ref(), RecvFlags::CMSG_CLOEXEC)) {
            Ok(got) => {
                let (bytes, fds) = got?;
                if bytes == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the netns helper has exited",
                    ));
                }
                return Ok(fds);
            }
            Err(_would_block) => continue,
        }
    }
}

/// Receives one message and the descriptors it carries: (payload bytes, descriptors).
fn recv_fds(chan: &OwnedFd, flags: RecvFlags) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(chan, &mut [IoSliceMut::new(&mut byte)], &mut control, flags)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    Ok((msg.bytes, fds))
}

/// `berth netns-sockets`: the helper's side, run inside the container's namespaces with the
/// pair to berth on stdin. Serves requests until berth closes its end.
pub fn serve_helper() -> io::Result<()> {
    // Nothing here needs a capability; keep none of those the user namespace grants.
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: rustix::thread::CapabilitySet::empty(),
            permitted: rustix::thread::CapabilitySet::empty(),
            inheritable: rustix::thread::CapabilitySet::empty(),
        },
    )?;
    let stdin = io::stdin();
    let chan = stdin.as_fd();
    rustix::net::sockopt::set_socket_timeout(
        chan,
        rustix::net::sockopt::Timeout::Recv,
        Some(HELPER_IDLE),
    )?;
    loop {
        let mut want = [0u8; 1];
        let got = match rustix::net::recv(chan, &mut want, rustix::net::RecvFlags::empty()) {
            Ok(got) => got,
            // Nobody asked for a while: leave; berth starts another when it needs one.
            Err(rustix::io::Errno::AGAIN) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if got.0 == 0 {
            return Ok(());
        }
        let n = usize::from(want[0]).clamp(1, BATCH);
        let mut made = Vec::with_capacity(n);
        for _ in 0..n {
            made.push(rustix::net::socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )?);
        }
        let borrowed: Vec<BorrowedFd<'_>> = made.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(io::Error::other("control buffer too small"));
        }
        rustix::net::sendmsg(
            chan,
            &[IoSlice::new(&[1])],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
    }
}
