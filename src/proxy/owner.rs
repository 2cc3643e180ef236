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
