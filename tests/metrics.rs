//! `/metrics` for real: a real Prometheus scrapes a real berth daemon over TCP with a bearer
//! token, the API socket serves the same text, and the example Prometheus configuration and
//! alert rules in `config/prometheus/` pass `promtool`.
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which `scripts/test`
//! installs; without them these tests fail and say so.

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Fails (or, with BERTH_SKIP_INTEGRATION=1, skips loudly) when a Prometheus program is missing.
fn have(test: &str, bin: &str) -> bool {
    if Path::new(bin).is_file() {
        return true;
    }
    let why = format!("{bin} is missing");
    if std::env::var_os("BERTH_SKIP_INTEGRATION").is_some_and(|v| v == "1") {
        eprintln!("SKIP {test}: {why} (BERTH_SKIP_INTEGRATION=1)");
        return false;
    }
    panic!(
        "{test}: {why}. Run the tests through `scripts/test`, which installs Debian's \
         `prometheus` package (it ships prometheus and promtool)."
    );
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One HTTP/1.0 exchange (no chunking, the server closes): status code, head and body.
fn exchange(
    mut s: impl std::io::Read + std::io::Write,
    path: &str,
    headers: &[String],
) -> Result<(u16, String, String), String> {
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or(format!("no header end in {out:?}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("no status in {head:?}"))?;
    Ok((code, head.to_string(), body.to_string()))
}

fn tcp_get(port: u16, path: &str, headers: &[String]) -> Result<(u16, String, String), String> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    exchange(s, path, headers)
}

/// Percent-encodes a PromQL query for a URL.
fn encode_query(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of one test, killed by its PID when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Prometheus {
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml");
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("prometheus log");
        let err = out.try_clone().expect("prometheus log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, log }
    }

    /// The JSON answer of an API path, once Prometheus answers at all.
    fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let (code, _, body) = tcp_get(self.port, path, &[])?;
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// The values of an instant query, as Prometheus prints them.
    fn query(&self, q: &str) -> Result<Vec<String>, String> {
        let v = self.api(&format!("/api/v1/query?query={}", encode_query(q)))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or(format!("no result in {v}"))?;
        Ok(result
            .iter()
            .filter_map(|r| r["value"][1].as_str().map(str::to_string))
            .collect())
    }

    fn diagnosis(&self) -> String {
        let targets = self
            .api("/api/v1/targets")
            .map_or_else(|e| e, |v| v["data"]["activeTargets"].to_string());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        format!(
            "targets: {targets}\nprometheus log (last lines, newest first):\n{}",
            tail.join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _already_gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

#[test]
fn real_prometheus_scrapes_berth_with_a_bearer_token() {
    let test = "prometheus_scrape";
    let Some(_serial) = session(test) else {
        return;
    };
    if !have(test, PROMETHEUS) {
        return;
    }
    let mut w = World::new(&["it-prom"]);
    w.catalog_file("it-prom.toml", &web_service("it-prom", 18190));
    let token = format!(
        "it-token-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let token_file = w.dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let port = free_port();
    std::fs::write(
        w.etc().join("config.toml"),
        format!(
            "[web]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nbearer_token_file = \"{}\"\n",
            token_file.display()
        ),
    )
    .expect("config.toml");
    w.start_daemon();
    w.ok(&["enable", "it-prom"]);
    assert_page(18190);

    // berth itself: no token, a wrong token, the right one.
    let auth = |t: &str| vec![format!("Authorization: Bearer {t}")];
    let answered = wait_for(Duration::from_secs(10), || {
        tcp_get(port, "/metrics", &[]).ok()
    });
    let (code, head, _) = answered.unwrap_or_else(|| {
        panic!(
            "no metrics endpoint on 127.0.0.1:{port}:\n{}",
            w.daemon_log()
        )
    });
    assert_eq!(code, 401, "{head}");
    let (code, _, _) = tcp_get(port, "/metrics", &auth("not-the-token")).expect("scrape");
    assert_eq!(code, 401);
    let (code, head, body) = tcp_get(port, "/metrics", &auth(&token)).expect("scrape");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_lowercase()
            .contains(&format!("content-type: {OPENMETRICS}")),
        "{head}"
    );
    assert!(body.contains("berth_info{version="), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (code, _, _) = tcp_get(port, "/v1/services", &auth(&token)).expect("get");
    assert_eq!(code, 404, "the TCP endpoint serves /metrics only");

    // A real Prometheus, scraping every second with the token from a file.
    let prom = Prometheus::start(
        &w.dir.path().join("prometheus"),
        &format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: berth
    authorization:
      credentials_file: {token}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"#,
            token = token_file.display()
        ),
    );
    let running = r#"berth_service_state{service="it-prom",state="running"}"#;
    let start = Instant::now();
    let mut last = Err("not asked yet".to_string());
    while start.elapsed() < Duration::from_secs(60) {
        last = prom.query(running);
        if last.as_ref().is_ok_and(|v| v == &["1"]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        last.as_deref(),
        Ok(&["1".to_string()][..]),
        "Prometheus never saw {running} == 1 within 60 s\n{}\nberth log:\n{}",
        prom.diagnosis(),
        w.daemon_log()
    );
    // What Prometheus stored: one state at a time, the info series, counters with _total.
    assert_eq!(
        prom.query(r#"sum(berth_service_state{service="it-prom"})"#),
        Ok(vec!["1".to_string()])
    );
    assert_eq!(
        prom.query(r#"berth_service_enabled{service="it-prom"}"#),
        Ok(vec!["1".to_string()])
    );
    assert_eq!(
        prom.query(r#"count(berth_info{version!=""})"#),
        Ok(vec!["1".to_string()])
    );
    let passes = prom.query("berth_reconcile_passes_total").expect("passes");
    assert!(
        passes.len() == 1 && passes[0].parse::<u64>().is_ok_and(|n| n >= 1),
        "{passes:?}"
    );
    assert_eq!(prom.query(r#"up{job="berth"}"#), Ok(vec!["1".to_string()]));
}

#[test]
fn api_socket_serves_metrics() {
    let Some(_serial) = session("api_metrics") else {
        return;
    };
    let mut w = World::new(&[]);
    w.start_daemon();
    let got = wait_for(Duration::from_secs(15), || {
        let s = UnixStream::connect(w.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        exchange(s, "/metrics", &[])
            .ok()
            .filter(|(code, _, _)| *code == 200)
    });
    let (_, head, body) =
        got.unwrap_or_else(|| panic!("no metrics on the API socket:\n{}", w.daemon_log()));
    assert!(
        head.to_lowercase()
            .contains(&format!("content-type: {OPENMETRICS}")),
        "{head}"
    );
    let info = body
        .lines()
        .find(|l| l.starts_with("berth_info{"))
        .unwrap_or_else(|| panic!("no berth_info line:\n{body}"));
    assert!(
        info.starts_with(&format!(
            "berth_info{{version=\"{}\",podman_version=\"",
            env!("CARGO_PKG_VERSION")
        )) && info.ends_with("} 1"),
        "{info}"
    );
    assert!(body.contains("\nberth_reconcile_passes_total "), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[test]
fn example_prometheus_config_and_alert_rules_pass_promtool() {
    if !have("promtool", PROMTOOL) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-it-promtool-")
        .tempdir()
        .expect("tempdir");
    let d = dir.path();
    // promtool insists the token file exists; the example names the cloud's path.
    let token = d.join("berth.token");
    std::fs::write(&token, "example\n").expect("token");
    let config = include_str!("../config/prometheus/prometheus.yml");
    assert!(config.contains("/etc/prometheus/berth.token"));
    std::fs::write(
        d.join("prometheus.yml"),
        config.replace("/etc/prometheus/berth.token", path_str(&token)),
    )
    .expect("config");
    std::fs::write(
        d.join("berth.rules.yml"),
        include_str!("../config/prometheus/berth.rules.yml"),
    )
    .expect("rules");
    std::fs::write(
        d.join("berth.rules.test.yml"),
        include_str!("../config/prometheus/berth.rules.test.yml"),
    )
    .expect("rule tests");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "berth.rules.yml"],
        ["test", "rules", "berth.rules.test.yml"],
    ] {
        let o = Command::new(PROMTOOL)
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .output()
            .expect("run promtool");
        assert!(o.status.success(), "promtool {args:?}:\n{}", text(&o));
    }
}
