//! Shared harness of the integration tests: a real systemd user manager, the real user D-Bus
//! and real rootless Podman, driven through the real `berth` binary.
//!
//! Tests run one at a time (they share the user's systemd manager and unit directory) and each
//! starts its own daemon with its own state directory, admin directory and API socket.
//! Without a user session the tests fail with a message saying how to get one; with
//! `BERTH_SKIP_INTEGRATION=1` they print a loud SKIP line instead.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// The `berth` binary under test.
pub fn berth_bin() -> PathBuf {
    std::env::var_os("BERTH_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth")), PathBuf::from)
}

/// Checks the session; `None` means skip (loudly), and a missing session without the skip
/// switch panics with instructions.
pub fn session(test: &str) -> Option<MutexGuard<'static, ()>> {
    let missing = session_problem();
    if let Some(why) = missing {
        if std::env::var_os("BERTH_SKIP_INTEGRATION").is_some_and(|v| v == "1") {
            // Straight to stdout, past the test harness's capture: scripts/test counts these
            // lines, and a skipped test is reported as skipped, never as passed.
            let _shown = writeln!(
                std::io::stdout(),
                // A line of its own: the harness has already written "test NAME ... ".
                "\nSKIP {test}: {why} (BERTH_SKIP_INTEGRATION=1)"
            );
            return None;
        }
        panic!(
            "{test}: {why}.\nIntegration tests need a systemd user manager, the user D-Bus and rootless Podman; \
             run them through `scripts/test` (it sets all of that up), or set BERTH_SKIP_INTEGRATION=1 to skip them."
        );
    }
    Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

fn session_problem() -> Option<String> {
    let Some(rt) = std::env::var_os("XDG_RUNTIME_DIR") else {
        return Some("XDG_RUNTIME_DIR is not set".into());
    };
    let rt = PathBuf::from(rt);
    if !rt.join("bus").exists() && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        return Some(format!("no user D-Bus at {}/bus", rt.display()));
    }
    let ok = Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            s.contains("running") || s.contains("degraded")
        })
        .unwrap_or(false);
    if !ok {
        return Some(
            "the systemd user manager does not answer (`systemctl --user is-system-running`)"
                .into(),
        );
    }
    if !rt.join("podman/podman.sock").exists() {
        return Some(format!("no Podman API socket at {}/podman/podman.sock (`systemctl --user start podman.socket`)", rt.display()));
    }
    if !run("podman", &["image", "exists", "localhost/berth-demo:1"])
        .status
        .success()
    {
        return Some(
            "the test image localhost/berth-demo:1 is missing (scripts/test-env builds it)".into(),
        );
    }
    None
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn systemctl(args: &[&str]) -> Output {
    let mut a = vec!["--user"];
    a.extend_from_slice(args);
    run("systemctl", &a)
}

pub fn unit_active(unit: &str) -> String {
    String::from_utf8_lossy(&systemctl(&["is-active", unit]).stdout)
        .trim()
        .to_string()
}

pub fn podman(args: &[&str]) -> Output {
    run("podman", args)
}

/// `podman inspect --format`, or `None` when the container does not exist.
pub fn inspect(container: &str, format: &str) -> Option<String> {
    let o = podman(&["container", "inspect", "--format", format, container]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A plain HTTP GET on 127.0.0.1; the whole answer (headers and body), or the error.
pub fn http_get(port: u16) -> Result<String, String> {
    http_get_within(port, Duration::from_secs(5) * time_factor())
}

/// How much slower than a real machine this one is: `BERTH_TEST_TIME_FACTOR` (default 1).
/// image-build/compat sets it inside its emulated VMs (QEMU TCG), where a cold start of an
/// on-demand service alone took 4.8 s of the 5 s a client waits here on a real machine.
pub fn time_factor() -> u32 {
    std::env::var("BERTH_TEST_TIME_FACTOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1)
}

/// [`http_get`] that waits up to `read` for the answer.
pub fn http_get_within(port: u16, read: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(read)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Retries `f` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A berth setup of one test: its own admin dir (catalog.d, policy), state dir and socket.
pub struct World {
    pub dir: tempfile::TempDir,
    pub services: Vec<String>,
    daemon: Option<Child>,
}

impl World {
    /// `services` are the names this test touches; leftovers of earlier runs are removed first.
    pub fn new(services: &[&str]) -> World {
        for s in services {
            // Tests never touch what README's main command runs (the built-in catalog's
            // services): their own names, their own ports.
            assert!(
                s.starts_with("it-"),
                "a test's service must be named it-*: {s}"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc/catalog.d")).expect("catalog.d");
        // The local web page is off unless a test wants it (on a port of its own): the
        // default port may be another user's, such as the one README's main command runs.
        std::fs::write(
            dir.path().join("etc/config.toml"),
            "[web]\nenabled = false\n",
        )
        .expect("config.toml");
        let w = World {
            dir,
            services: services.iter().map(|s| s.to_string()).collect(),
            daemon: None,
        };
        for s in &w.services {
            scrub(s);
        }
        w
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// The admin's config.toml (replacing the default one of the test, which turns the local
    /// web page off).
    pub fn config(&self, text: &str) {
        std::fs::write(self.etc().join("config.toml"), text).expect("write config.toml");
    }

    /// Adds (or replaces) an admin catalog file.
    pub fn catalog_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.etc().join("catalog.d").join(name);
        std::fs::write(&p, text).expect("write catalog file");
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_of(&berth_bin(), args)
    }

    /// A command of this world run by another copy of the binary.
    pub fn cmd_of(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env("BERTH_ETC_DIR", self.etc())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("BERTH_SOCKET", self.socket())
            .stdin(Stdio::null());
        c
    }

    pub fn berth(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run berth")
    }

    /// Runs berth and insists on success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.berth(args);
        assert!(o.status.success(), "berth {args:?} failed:\n{}", text(&o));
        text(&o)
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_from(&berth_bin());
    }

    /// Starts the daemon from another copy of the binary (the CLI still uses the one under
    /// test).
    pub fn start_daemon_from(&mut self, bin: &Path) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::File::create(self.dir.path().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        )))
        .expect("log");
        let child = self
            .cmd_of(bin, &["daemon"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn berth daemon");
        self.daemon = Some(child);
        let ready = wait_for(Duration::from_secs(15), || {
            self.berth(&["info"]).status.success().then_some(())
        });
        assert!(
            ready.is_some(),
            "berth daemon did not become ready:\n{}",
            self.daemon_log()
        );
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon").id()
    }

    /// SIGKILL, as a crash would.
    /// Stops the daemon as systemd would (SIGTERM) and waits for it to exit (at most 30 s).
    pub fn stop_daemon(&mut self) {
        let Some(mut c) = self.daemon.take() else {
            return;
        };
        let o = run("kill", &["-TERM", &c.id().to_string()]);
        assert!(o.status.success(), "{}", text(&o));
        let exited = wait_for(Duration::from_secs(30), || c.try_wait().ok().flatten());
        if exited.is_none() {
            let _already_dead = c.kill();
            let _reaped = c.wait();
            panic!("the daemon did not stop within 30 s of SIGTERM");
        }
    }

    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _already_dead = c.kill();
            let _reaped = c.wait();
        }
    }

    pub fn daemon_log(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("daemon-") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn info(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["info", "--json"])).expect("info json")
    }

    /// The daemon's `/metrics` text, read over the API socket.
    pub fn metrics(&self) -> String {
        let o = run(
            "curl",
            &[
                "-sS",
                "--unix-socket",
                path_str(&self.socket()),
                "http://localhost/metrics",
            ],
        );
        text(&o)
    }

    pub fn status(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", name, "--json"])).expect("status json")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for s in self.services.clone() {
                let _best_effort = self.berth(&["disable", &s]);
            }
        }
        self.kill_daemon();
        for s in &self.services {
            scrub(s);
            remove_volumes(s);
        }
    }
}

/// Removes the data volumes of a service this test made (`berth-<service>-*`).
pub fn remove_volumes(service: &str) {
    let o = podman(&["volume", "ls", "--format", "{{.Name}}"]);
    let prefix = format!("berth-{service}-");
    for v in String::from_utf8_lossy(&o.stdout).lines() {
        if v.starts_with(&prefix) {
            let _best_effort = podman(&["volume", "rm", "-f", v]);
        }
    }
}

fn unit_dir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".local/share")
        });
    data.join("systemd/user")
}

/// Removes every trace of a service's units (not its volumes) without berth.
pub fn scrub(service: &str) {
    let dir = unit_dir();
    let main = format!("berth-{service}.service");
    let _best_effort = systemctl(&["stop", &main]);
    let _best_effort = systemctl(&["reset-failed", &main]);
    let mut removed = false;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == main || n.starts_with(&format!("berth-{service}--")) {
                removed |= std::fs::remove_file(e.path()).is_ok();
            }
        }
    }
    if removed {
        let _best_effort = systemctl(&["daemon-reload"]);
    }
}

pub fn unit_file(unit: &str) -> PathBuf {
    unit_dir().join(unit)
}

/// A catalog entry serving the demo page on `port`.
pub fn web_service(name: &str, port: u16) -> String {
    format!(
        r#"name = "{name}"
description = "integration test page"

[[containers]]
name = "web"
image = "localhost/berth-demo:1"
init = true

[[containers.ports]]
name = "http"
host = {port}
container = 8080

[[containers.volumes]]
name = "data"
target = "/data"
"#
    )
}

pub fn assert_page(port: u16) {
    let page = wait_for(Duration::from_secs(10), || {
        http_get(port).ok().filter(|p| p.contains("berth demo"))
    });
    assert!(
        page.is_some(),
        "no demo page on 127.0.0.1:{port}: {:?}",
        http_get(port)
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The loopback port Podman published for `container_port` of `container`.
pub fn backend_port(container: &str, container_port: u16) -> Option<u16> {
    let fmt = format!(
        "{{{{(index (index .NetworkSettings.Ports \"{container_port}/tcp\") 0).HostPort}}}}"
    );
    inspect(container, &fmt).and_then(|p| p.parse().ok())
}

/// berth's own unit (units/berth.service) installed under another name, running the binary
/// under test with this world's directories; stopped and removed on drop.
pub struct DaemonUnit {
    pub name: &'static str,
    path: PathBuf,
}

impl DaemonUnit {
    pub fn install(w: &World, name: &'static str) -> DaemonUnit {
        let unit =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/units/berth.service"))
                .expect("units/berth.service");
        let unit = unit
            .replace("/usr/local/bin/berth", path_str(&berth_bin()))
            .replace(
                "Environment=BERTH_LOG=info",
                &format!(
                    "Environment=BERTH_LOG=info BERTH_ETC_DIR={} XDG_STATE_HOME={} XDG_CONFIG_HOME={} BERTH_SOCKET={}",
                    path_str(&w.etc()),
                    path_str(&w.dir.path().join("state")),
                    path_str(&w.dir.path().join("config")),
                    path_str(&w.socket())
                ),
            );
        let path = unit_file(name);
        std::fs::create_dir_all(path.parent().expect("unit dir")).expect("unit dir");
        std::fs::write(&path, unit).expect("write unit");
        systemctl(&["daemon-reload"]);
        DaemonUnit { name, path }
    }
}

impl Drop for DaemonUnit {
    fn drop(&mut self) {
        let _stop = systemctl(&["stop", self.name]);
        let _rm = std::fs::remove_file(&self.path);
        let _reload = systemctl(&["daemon-reload"]);
    }
}

/// The value of one series (`name{labels}` exactly as exposed) in a /metrics text.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// When a unit last became active, in microseconds of the wall clock (systemd's
/// `ActiveEnterTimestamp`).
pub fn unit_active_since_us(unit: &str) -> Option<u64> {
    let o = systemctl(&[
        "show",
        "--property=ActiveEnterTimestamp",
        "--timestamp=unix",
        "--value",
        unit,
    ]);
    let t = String::from_utf8_lossy(&o.stdout);
    // `@1796160483` has seconds only; the D-Bus property has microseconds.
    let path = format!(
        "/org/freedesktop/systemd1/unit/{}",
        unit.replace('-', "_2d").replace('.', "_2e")
    );
    let o = run(
        "busctl",
        &[
            "--user",
            "get-property",
            "org.freedesktop.systemd1",
            &path,
            "org.freedesktop.systemd1.Unit",
            "ActiveEnterTimestamp",
        ],
    );
    let us = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok());
    us.or_else(|| {
        t.trim()
            .trim_start_matches('@')
            .parse::<u64>()
            .ok()
            .map(|s| s * 1_000_000)
    })
}
