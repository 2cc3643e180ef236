//! Cloud health push against a real HTTP receiver on 127.0.0.1: reports wait in the spool
//! while the receiver is down and arrive complete and in order once it is up; the sequence
//! goes on across a daemon restart.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "it-push-token-0123456789";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: serde_json::Value,
}

/// A minimal HTTP/1.1 receiver that records every request and answers 204.
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(r) = serve(conn) {
                            g.lock().expect("lock").push(r);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Receiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _finished_or_panicked = t.join();
        }
    }
}

/// Reads one request (head and Content-Length body) and answers 204.
fn serve(mut conn: TcpStream) -> Option<Received> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    Some(Received {
        request_line,
        headers,
        body: serde_json::from_slice(&body[..len]).expect("the report is JSON"),
    })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The report files in the spool, oldest first.
fn spooled(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn last_seq(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("last-seq"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn seq(r: &Received) -> u64 {
    r.body["seq"].as_u64().expect("seq")
}

/// Waits until everything spooled so far has arrived: the spool is empty and the newest
/// number handed out was received.
fn wait_drained(w: &World, rx: &Receiver, spool: &Path, limit: Duration) {
    let done = wait_for(limit, || {
        let newest = last_seq(spool);
        let got = rx.got();
        let max = got.iter().map(seq).max().unwrap_or(0);
        (newest > 0 && spooled(spool).is_empty() && max >= newest).then_some(())
    });
    assert!(
        done.is_some(),
        "not everything arrived: received {:?}, spool {:?}, last-seq {}\n{}",
        rx.got().iter().map(seq).collect::<Vec<_>>(),
        spooled(spool),
        last_seq(spool),
        w.daemon_log()
    );
}

/// Checks arrival order and duplicates; returns the distinct reports by seq.
fn distinct(got: &[Received]) -> BTreeMap<u64, serde_json::Value> {
    let mut by_seq: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    let mut prev = 0;
    for r in got {
        let s = seq(r);
        assert!(s >= prev, "out of order: {s} after {prev}");
        prev = s;
        if let Some(earlier) = by_seq.get(&s) {
            assert_eq!(
                earlier, &r.body,
                "a duplicate of seq {s} must be the same report"
            );
        }
        by_seq.insert(s, r.body.clone());
    }
    by_seq
}

#[test]
fn reports_spool_while_the_receiver_is_down_and_arrive_in_order_when_it_returns() {
    let Some(_serial) = session("push") else {
        return;
    };
    let mut w = World::new(&["it-push"]);
    w.catalog_file("it-push.toml", &web_service("it-push", 18191));
    let port = free_port();
    let token = w.dir.path().join("push.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let instance_data = w.dir.path().join("instance-data.json");
    std::fs::write(
        &instance_data,
        r#"{"v1": {"cloud_name": "openstack", "instance_id": "it-instance-1",
            "local_hostname": "it-host", "region": "RegionOne", "availability_zone": "nova"}}"#,
    )
    .expect("instance data");
    // The daemon inherits this: where cloud-init's instance data is (see docs/push.md).
    std::env::set_var("BERTH_INSTANCE_DATA", &instance_data);
    std::fs::write(
        w.etc().join("config.toml"),
        format!(
            "[web]\nenabled = false\n[push]\nurl = \"http://127.0.0.1:{port}/v1/health\"\nbearer_token_file = \"{}\"\ninterval = \"2s\"\n",
            path_str(&token)
        ),
    )
    .expect("config.toml");
    let spool = w.dir.path().join("state/berth/spool");
    let uid = std::fs::metadata(w.dir.path()).expect("meta").uid();

    // The receiver is down: reports wait in the spool.
    let started = Instant::now();
    w.start_daemon();
    w.ok(&["enable", "it-push"]);
    assert_page(18191);
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    let waiting = spooled(&spool);
    assert!(
        waiting.len() >= 3,
        "reports spooled while the receiver is down: {waiting:?}\n{}",
        w.daemon_log()
    );
    for f in &waiting {
        let mode = std::fs::metadata(f).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    assert!(!w.daemon_log().contains(TOKEN), "the token is never logged");

    // The receiver comes up: everything arrives, in order.
    let rx = Receiver::start(port);
    wait_drained(&w, &rx, &spool, Duration::from_secs(90));
    let got = rx.got();
    for r in &got {
        assert_eq!(r.request_line, "POST /v1/health HTTP/1.1");
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    let reports = distinct(&got);
    let seqs: Vec<u64> = reports.keys().copied().collect();
    let first_seq = seqs[0];
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every report, no gaps: {seqs:?}"
    );
    assert!(seqs.len() >= waiting.len());
    let first = &reports[&first_seq];
    assert_eq!(first["schema"], "berth.health/1");
    assert_eq!(first["sent_reason"], "startup");
    assert_eq!(first["vm"]["instance_id"], "it-instance-1");
    assert_eq!(first["vm"]["hostname"], "it-host");
    assert_eq!(first["vm"]["region"], "RegionOne");
    assert_eq!(first["vm"]["source"], "cloud-init");
    assert_eq!(first["user"]["uid"], uid);
    assert!(first["berth"]["version"].is_string());
    assert!(reports
        .values()
        .all(|r| r["spool"]["dropped_before_this"] == 0));
    assert!(
        reports.values().any(|r| r["sent_reason"] == "periodic"),
        "periodic reports every 2 s"
    );
    let running = reports.values().any(|r| {
        r["services"]
            .as_array()
            .expect("services")
            .iter()
            .any(|s| s["name"] == "it-push" && s["state"] == "running" && s["choice"] == "on")
    });
    assert!(running, "a report shows it-push running: {reports:?}");

    // A restart goes on with the next numbers and starts with a startup report.
    let before = rx.got().iter().map(seq).max().unwrap_or(0);
    w.kill_daemon();
    w.start_daemon();
    let restarted = wait_for(Duration::from_secs(30), || {
        rx.got()
            .iter()
            .find(|r| seq(r) > before && r.body["sent_reason"] == "startup")
            .map(seq)
    });
    let restarted = restarted.unwrap_or_else(|| {
        panic!(
            "no startup report after the restart (got up to {before}):\n{}",
            w.daemon_log()
        )
    });
    let after: Vec<u64> = distinct(&rx.got()).keys().copied().collect();
    assert_eq!(after[0], first_seq);
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "no gaps across the restart: {after:?}"
    );
    assert!(restarted > before);

    // The push's counters reach /metrics.
    let delivered = wait_for(Duration::from_secs(15), || {
        metric(&w.metrics(), "berth_push_delivered_total").filter(|n| *n >= 1)
    });
    assert!(
        delivered.is_some(),
        "no berth_push_delivered_total in /metrics"
    );

    // Stopping: the cloud hears it before the daemon is gone, as the last report.
    w.stop_daemon();
    let got = rx.got();
    let last = got.last().expect("reports");
    assert_eq!(last.body["sent_reason"], "shutdown", "{:?}", last.body);
    assert_eq!(seq(last), got.iter().map(seq).max().unwrap_or(0));
    assert!(spooled(&spool).is_empty(), "{:?}", spooled(&spool));
}
