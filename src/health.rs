//! Health: berth's own HTTP/TCP probes, the state of a service from its parts, and the reason
//! shown when a service crashes (the last lines of its log file).
//!
//! The state function is pure; probes and log reads are small IO helpers the engine calls.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::catalog::Probe;
use crate::state::Choice;
use crate::systemd::UnitState;
use berth_proto::{ContainerStatus, ProbeStatus, State};

/// Runs one probe against `addr` (the container's published port: probing the stable port
/// would count as use of an on-demand service and keep it awake); `at` is when it started.
pub async fn probe(p: &Probe, addr: std::net::SocketAddr, at: u64) -> ProbeStatus {
    let started = Instant::now();
    let result = tokio::time::timeout(p.timeout, probe_inner(p, addr)).await;
    let (ok, detail) = match result {
        Ok(Ok(d)) => (true, d),
        Ok(Err(d)) => (false, d),
        Err(_) => (
            false,
            format!("timed out after {}s", p.timeout.as_secs_f64()),
        ),
    };
    ProbeStatus {
        ok,
        seconds: started.elapsed().as_secs_f64(),
        detail,
        at,
    }
}

async fn probe_inner(p: &Probe, addr: std::net::SocketAddr) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let Some(path) = &p.path else {
        return Ok("TCP connect".into());
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nUser-Agent: berth-probe\r\nConnection: close\r\n\r\n", p.port);
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all a probe needs; read a bounded amount.
    let mut buf = vec![0u8; 512];
    let mut got = 0;
    while got < 16 || !buf[..got].contains(&b'\n') {
        let n = s
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || got + n >= buf.len() {
            got += n;
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let line = line.lines().next().unwrap_or_default();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code} from {path}"))
    }
}

/// The last `n` message lines of the end of a Podman k8s-file log
/// (`<time> <stream> <F|P> <text>` per line). `tail` may start in the middle of a line: a
/// first line without the line before it is dropped unless `tail` is the whole file.
pub fn log_lines(tail: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(tail);
    let cut = tail.len() >= LOG_TAIL_MAX && !text.is_empty();
    let lines: Vec<String> = text
        .lines()
        .skip(usize::from(cut))
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_t, _s, _f, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
            msg.unwrap_or(l).to_string()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// How much of the end of a log is read for [`log_lines`] (callers read at most this much).
pub const LOG_TAIL_MAX: usize = 16 * 1024;

/// The last `n` message lines of the log file at `path` (empty when it cannot be read).
/// Blocking: call it on the blocking pool.
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    crate::files::read_tail(path, LOG_TAIL_MAX as u64)
        .map(|t| log_lines(&t, n))
        .unwrap_or_default()
}

/// Inputs of one service's state, gathered by the engine.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub choice: Choice,
    pub unit: Option<&'a UnitState>,
    pub containers: &'a [ContainerStatus],
    pub probe: Option<&'a ProbeStatus>,
    /// systemd's `Result` of the main unit when it failed (`exit-code`, `start-limit-hit`…).
    pub result: Option<&'a str>,
    pub restarts: u32,
}

/// The coarse state and its reason. Pure.
pub fn derive(p: Parts<'_>) -> (State, Option<String>) {
    let active = p.unit.map_or("inactive", |u| u.active.as_str());
    match (p.choice, active) {
        (_, "failed") => {
            // After its start limit systemd leaves the unit failed with the last exit's
            // result (`exit-code`), not `start-limit-hit`: the restart count tells a loop.
            let why = match (p.result, p.restarts) {
                (_, n) if n > 0 => format!(
                    "crashed {} times in a row ({}); restarts stopped",
                    n + 1,
                    p.result.unwrap_or("failed")
                ),
                (Some("start-limit-hit"), _) => "started too often; restarts stopped".to_string(),
                (Some(r), _) => format!("unit failed ({r})"),
                (None, _) => "unit failed".to_string(),
            };
            (State::Failed, Some(why))
        }
        // Between a crash and systemd's restart (RestartSec) the unit waits in `auto-restart`;
        // NRestarts only counts once the restart begins.
        (Choice::On, "activating") if p.unit.is_some_and(|u| u.sub == "auto-restart") => (
            State::Starting,
            Some(format!(
                "crashed; systemd restarts it shortly (restart {})",
                p.restarts + 1
            )),
        ),
        (Choice::On, "activating") if p.restarts > 0 => (
            State::Starting,
            Some(format!("restarting after a crash (restart {})", p.restarts)),
        ),
        (_, "activating") => (State::Starting, None),
        (_, "deactivating") => (State::Stopping, None),
        (Choice::Off, "active") => (State::Stopping, Some("disabled; stopping".into())),
        (Choice::Off, _) => (State::Off, None),
        (Choice::Stopped, "active") => (State::Stopping, None),
        (Choice::Stopped, _) => (State::Stopped, None),
        (Choice::On, "active") | (Choice::On, "reloading") => {
            if let Some(c) = p
                .containers
                .iter()
                .find(|c| c.state != "running" && c.state != "absent")
            {
                return (
                    State::Starting,
                    Some(format!("container {} is {}", c.name, c.state)),
                );
            }
            if let Some(c) = p
                .containers
                .iter()
                .find(|c| c.health.as_deref() == Some("unhealthy"))
            {
                return (
                    State::Unhealthy,
                    Some(format!("health check of {} fails", c.name)),
                );
            }
            if let Some(pr) = p.probe.filter(|pr| !pr.ok) {
                return (
                    State::Unhealthy,
                    Some(format!("probe fails: {}", pr.detail)),
                );
            }
            if let Some(c) = p
                .containers
                .iter()
                .find(|c| c.health.as_deref() == Some("starting"))
            {
                return (
                    State::Starting,
                    Some(format!("{} is starting (health check pending)", c.name)),
                );
            }
            (State::Running, None)
        }
        (Choice::On, _) => (State::Waiting, None),
    }
}

/// How often the engine refreshes health when nothing else happens.
pub const TICK: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: &str) -> UnitState {
        UnitState {
            name: "berth-x.service".into(),
            load: "loaded".into(),
            active: active.into(),
            sub: String::new(),
        }
    }

    fn ctr(health: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: "berth-x".into(),
            unit: "berth-x.service".into(),
            image: "localhost/x:1".into(),
            state: "running".into(),
            health: health.map(str::to_string),
            started_at: None,
        }
    }

    fn parts<'a>(choice: Choice, u: Option<&'a UnitState>, c: &'a [ContainerStatus]) -> Parts<'a> {
        Parts {
            choice,
            unit: u,
            containers: c,
            probe: None,
            result: None,
            restarts: 0,
        }
    }

    #[test]
    fn states() {
        let active = unit("active");
        let healthy = [ctr(Some("healthy"))];
        assert_eq!(
            derive(parts(Choice::On, Some(&active), &healthy)).0,
            State::Running
        );
        let sick = [ctr(Some("unhealthy"))];
        assert_eq!(
            derive(parts(Choice::On, Some(&active), &sick)).0,
            State::Unhealthy
        );
        assert_eq!(derive(parts(Choice::On, None, &[])).0, State::Waiting);
        assert_eq!(derive(parts(Choice::Off, None, &[])).0, State::Off);
        assert_eq!(derive(parts(Choice::Stopped, None, &[])).0, State::Stopped);
        let failed = unit("failed");
        let mut p = parts(Choice::On, Some(&failed), &[]);
        p.result = Some("exit-code");
        p.restarts = 4;
        let (s, why) = derive(p);
        assert_eq!(s, State::Failed);
        assert!(why
            .unwrap_or_default()
            .contains("crashed 5 times in a row (exit-code)"));

        // Waiting for systemd's restart after a crash: starting, and the reason says why.
        let mut waiting = unit("activating");
        waiting.sub = "auto-restart".into();
        let (s, why) = derive(parts(Choice::On, Some(&waiting), &[]));
        assert_eq!(s, State::Starting);
        assert_eq!(
            why.as_deref(),
            Some("crashed; systemd restarts it shortly (restart 1)")
        );
        let starting = unit("activating");
        assert_eq!(
            derive(parts(Choice::On, Some(&starting), &[])),
            (State::Starting, None)
        );
    }

    #[test]
    fn failing_probe_makes_running_service_unhealthy() {
        let active = unit("active");
        let c = [ctr(None)];
        let bad = ProbeStatus {
            ok: false,
            seconds: 0.1,
            detail: "HTTP 500 from /".into(),
            at: 0,
        };
        let mut p = parts(Choice::On, Some(&active), &c);
        p.probe = Some(&bad);
        let (s, why) = derive(p);
        assert_eq!(s, State::Unhealthy);
        assert!(why.unwrap_or_default().contains("HTTP 500"));
    }

    #[test]
    fn log_tail_strips_podman_prefix() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00Z stdout F one\n2026-01-01T00:00:01Z stderr F two words\n",
        )
        .expect("write");
        assert_eq!(log_tail(&p, 5), ["one", "two words"]);
        assert_eq!(log_tail(&p, 1), ["two words"]);
        assert!(log_tail(&d.path().join("none"), 3).is_empty());
    }

    #[test]
    fn log_lines_of_a_cut_tail_drop_the_partial_first_line() {
        let line = b"2026-01-01T00:00:01Z stdout F last one\n";
        let mut big = vec![b'x'; LOG_TAIL_MAX - line.len() - 1];
        big.push(b'\n');
        big.extend_from_slice(line);
        assert_eq!(big.len(), LOG_TAIL_MAX);
        assert_eq!(log_lines(&big, 5), ["last one"]);
        assert_eq!(log_lines(b"t s F only\n", 5), ["only"]);
    }

    #[tokio::test]
    async fn probes_against_a_real_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 256];
                let _n = s.read(&mut buf).await;
                let _w = s
                    .write_all(format!("HTTP/1.0 {code} X\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let p = Probe {
            port,
            path: Some("/h".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ok = probe(&p, addr, 7).await;
        assert_eq!(ok.at, 7);
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.detail, "HTTP 200");
        let bad = probe(&p, addr, 8).await;
        assert!(!bad.ok && bad.detail.contains("503"), "{bad:?}");
        let closed = Probe {
            port: 1,
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        };
        assert!(
            !probe(&closed, std::net::SocketAddr::from(([127, 0, 0, 1], 1)), 9)
                .await
                .ok
        );
    }
}
