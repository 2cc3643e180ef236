//! The few operating-system facts berth needs that std does not offer.

/// The real user id of this process.
pub fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::getuid()
    }
}

/// Tells systemd (when it started us with `Type=notify`) that berth is ready or stopping.
/// Without `NOTIFY_SOCKET` this does nothing.
pub fn sd_notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(())
}

/// Sockets systemd handed over at start (`LISTEN_FDS`, from socket units or the file
/// descriptor store), with their names (`LISTEN_FDNAMES`). Only honoured when `LISTEN_PID` is
/// this process; the variables are removed so children do not inherit them.
pub fn take_listen_fds() -> Vec<(String, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd as _;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: berth removes these once at start-up, before it spawns any thread that
        // could read the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(var);
        }
    }
    if !pid_ok || count <= 0 {
        return Vec::new();
    }
    (0..count)
        .map(|i| {
            let fd = 3 + i;
            // SAFETY: systemd passes exactly LISTEN_FDS descriptors starting at 3 to the
            // process named by LISTEN_PID, which we checked is us; nobody else owns them.
            #[allow(unsafe_code)]
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            let name = names.get(i as usize).cloned().unwrap_or_default();
            (name, owned)
        })
        .collect()
}

/// Hands `fds` to systemd's file descriptor store under `name` (`FDSTORE=1`), so they outlive
/// a restart of berth. Needs `FileDescriptorStoreMax=` in berth's unit; without
/// `NOTIFY_SOCKET` it does nothing and returns `Ok(false)`.
pub fn fd_store(name: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<bool> {
    let msg = format!("FDSTORE=1\nFDNAME={name}");
    notify_with_fds(&msg, fds)
}

/// Removes `name` from the file descriptor store.
pub fn fd_store_remove(name: &str) -> std::io::Result<bool> {
    notify_with_fds(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[])
}

#[allow(unsafe_code)]
fn notify_with_fds(msg: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    // Build the sockaddr_un by hand: std cannot send ancillary data on stable Rust.
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::other("NOTIFY_SOCKET path too long"));
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    if bytes.first() == Some(&b'@') {
        addr.sun_path[0] = 0;
    }
    let addr_len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if raw.is_empty() {
        0
    } else {
        (unsafe { libc::CMSG_SPACE(payload) }) as usize
    };
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain old data; all-zero is valid and every pointer we set below
    // points into buffers that outlive the sendmsg call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    hdr.msg_namelen = addr_len;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !raw.is_empty() {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(payload) bytes, enough for one header
        // carrying `raw.len()` descriptors; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                raw.len(),
            );
        }
    }
    // SAFETY: hdr is fully initialised above and refers to live buffers.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Raises the soft limit of open files to the hard limit (at most `want`): every proxied
/// connection holds two descriptors, and user managers often start services with a soft
/// limit of 1024. Returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_nofile(want: u64) -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let target = lim.rlim_max.min(want as libc::rlim_t);
    if target > lim.rlim_cur {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
        // limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // rlim_t is u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok(lim.rlim_cur as u64)
}

/// Restores the default action of SIGPIPE (Rust ignores it): a CLI whose output goes into a
/// pipe that closed early (`berth ls | head -1`) ends quietly instead of panicking on the
/// failed write. Not for the daemon, whose sockets must report EPIPE as an error.
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler; called before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
