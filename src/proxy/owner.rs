//! Who holds a TCP port: for the reason shown when berth cannot listen on a service's port.
//!
//! Reads `/proc/net/tcp{,6}` for the listening socket's inode, then looks for that inode among
//! the open files of processes. Only the user's own processes can be inspected; for others the
//! answer says "another user's program".

use std::path::Path;

/// The socket inode listening on `port` (any local address), from a `/proc/net/tcp` text.
pub fn listening_inode(table: &str, port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = cols.get(1)?;
        let state = cols.get(3)?;
        let inode = cols.get(9)?;
        let (_, hex_port) = local.rsplit_once(':')?;
        // 0A is TCP_LISTEN.
        (u16::from_str_radix(hex_port, 16).ok()? == port && *state == "0A")
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// An IPv4 socket address as `/proc/net/tcp` writes it: `0100007F:1F90` is 127.0.0.1:8080 (the
/// address in the kernel's byte order, which is little-endian on the machines berth runs on).
fn proc_v4(hex: &str) -> Option<std::net::SocketAddrV4> {
    let (ip, port) = hex.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::from(ip.swap_bytes()),
        port,
    ))
}

/// The uid owning the TCP socket whose own address is `local` and whose peer is `remote`,
/// from a `/proc/net/tcp` text: who is at the other end of a loopback connection.
pub fn socket_uid(
    table: &str,
    local: std::net::SocketAddrV4,
    remote: std::net::SocketAddrV4,
) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (l, r) = (proc_v4(cols.get(1)?)?, proc_v4(cols.get(2)?)?);
        (l == local && r == remote)
            .then(|| cols.get(7)?.parse().ok())
            .flatten()
    })
}

/// The uid of the process at the other end of a loopback TCP connection that we `accepted`
/// (our side `ours`, theirs `peer`); `None` when it cannot be told (not IPv4 loopback).
pub fn peer_uid(ours: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u32> {
    let (std::net::SocketAddr::V4(ours), std::net::SocketAddr::V4(peer)) = (ours, peer) else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // The peer's socket has the peer's address as its own and ours as its remote.
    socket_uid(&table, peer, ours)
}

/// A readable description of the program holding `port`, if the OS lets us tell.
pub fn describe(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|t| listening_inode(&t, port))?;
    Some(match find_process(Path::new("/proc"), inode) {
        Some((pid, name)) => format!("{name} (pid {pid})"),
        None => "a program of another user (or one this user cannot inspect)".to_string(),
    })
}

fn find_process(proc_dir: &Path, inode: u64) -> Option<(u32, String)> {
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(proc_dir).ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == needle.as_str()) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, name));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 424242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 77 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 8080), Some(424242));
        assert_eq!(
            listening_inode(table, 8081),
            None,
            "an established socket is not a listener"
        );
    }

    #[test]
    fn finds_the_uid_at_the_other_end_of_a_connection() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1CD4 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 11 1 0\n   1: 0100007F:D431 0100007F:1CD4 01 00000000:00000000 00:00000000 00000000  1001        0 12 1 0\n";
        let server = "127.0.0.1:7380".parse().expect("addr");
        let client = "127.0.0.1:54321".parse().expect("addr");
        assert_eq!(
            socket_uid(table, client, server),
            Some(1001),
            "the client's socket"
        );
        assert_eq!(
            socket_uid(table, server, client),
            Some(1000),
            "the server's socket"
        );
        let other = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(socket_uid(table, other, server), None);
    }

    #[test]
    fn the_peer_of_a_real_loopback_connection_is_this_process_user() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, peer) = l.accept().expect("accept");
        let ours = s.local_addr().expect("ours");
        assert_eq!(peer_uid(ours, peer), Some(crate::sys::uid()));
        drop(c);
    }

    #[test]
    fn names_this_process_for_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let who = describe(port).expect("found");
        assert!(
            who.contains(&format!("pid {}", std::process::id())),
            "{who}"
        );
    }
}
