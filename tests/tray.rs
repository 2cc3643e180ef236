//! berth-tray in a real tray host: a private D-Bus session with a real StatusNotifierWatcher
//! (Debian's `haskell-status-notifier-item-utils`), a real berth daemon on the real systemd
//! user manager and rootless Podman. The test reads the item and its menu over D-Bus like a
//! panel does (`com.canonical.dbusmenu.GetLayout`) and clicks like a user (`Event clicked`).
//! A second test puts the tray in a real `xfce4-panel` on Xvfb and photographs its menu.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use zbus::zvariant::{OwnedValue, Value};
use zbus_systemd::zbus;

const PAGE_PORT: u16 = 18221;
const SERVICE_PORT: u16 = 18222;
const SERVICE: &str = "it-tray";

/// A child process stopped (by its own PID) and reaped on drop: SIGTERM, so that Xvfb
/// removes its socket and lock, then SIGKILL after 2 s.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _told = run("kill", &["-TERM", &self.0.id().to_string()]);
        if wait_for(Duration::from_secs(2), || self.0.try_wait().ok().flatten()).is_none() {
            let _already_gone = self.0.kill();
            let _reaped = self.0.wait();
        }
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|c| c.is_file())
    })
}

/// The berth-tray binary under test: `$BERTH_TRAY_BIN`, else beside the berth binary under
/// test (scripts/test copies both), else cargo's target directory.
fn tray_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_TRAY_BIN") {
        return PathBuf::from(p);
    }
    let beside = berth_bin().with_file_name("berth-tray");
    if beside.is_file() {
        return beside;
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/berth-tray");
    assert!(
        target.is_file(),
        "no berth-tray binary (looked for $BERTH_TRAY_BIN, {} and {}): build it with `cargo build -p berth-tray` (scripts/test does)",
        beside.display(),
        target.display()
    );
    target
}

/// StatusNotifierItem's `ToolTip`: icon name, icon pixmaps, title, text.
type ToolTip = (String, Vec<(i32, i32, Vec<u8>)>, String, String);

/// One item of the menu, as a tray host reads it.
#[derive(Debug, Clone)]
struct Node {
    id: i32,
    label: String,
    enabled: bool,
    toggle_type: String,
    toggle_state: i32,
    children: Vec<Node>,
}

impl Node {
    fn walk<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        for c in &self.children {
            c.walk(out);
        }
    }

    fn all(&self) -> Vec<&Node> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    /// The top-level item of a service (`● it-tray — running`).
    fn service(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.label.contains(&format!(" {name} — ")))
    }

    fn text(&self) -> String {
        let mut s = String::new();
        for n in self.all().iter().skip(1) {
            s.push_str(&format!(
                "[{}] {}{}{}\n",
                n.id,
                n.label,
                if n.enabled { "" } else { " (disabled)" },
                if n.toggle_type.is_empty() {
                    String::new()
                } else {
                    format!(" {}={}", n.toggle_type, n.toggle_state)
                }
            ));
        }
        s
    }
}

/// A value without its variant wrappers (`v` inside `v`, as nested dbusmenu items come).
fn bare(v: Value<'static>) -> Value<'static> {
    match v {
        Value::Value(inner) => bare(*inner),
        other => other,
    }
}

fn prop<T: TryFrom<Value<'static>>>(
    props: &HashMap<String, Value<'static>>,
    key: &str,
) -> Option<T> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok()?.try_into().ok())
}

/// A menu item from its `(ia{sv}av)` structure.
fn node(v: Value<'static>) -> Node {
    let Value::Structure(s) = bare(v) else {
        panic!("a menu item is not a structure");
    };
    let mut f = s.into_fields().into_iter().map(bare);
    let id: i32 = f.next().and_then(|v| v.try_into().ok()).expect("item id");
    let props: HashMap<String, Value<'static>> = match f.next() {
        Some(Value::Dict(d)) => {
            let raw: HashMap<String, OwnedValue> = d.try_into().expect("item properties");
            raw.into_iter()
                .map(|(k, v)| (k, bare(Value::from(v))))
                .collect()
        }
        other => panic!("item properties are not a dict: {other:?}"),
    };
    let children = match f.next() {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| node(v.try_to_owned().expect("owned child").into()))
            .collect(),
        other => panic!("child list is not an array: {other:?}"),
    };
    Node {
        id,
        // dbusmenu marks access keys with `_`; a literal one is doubled.
        label: prop::<String>(&props, "label")
            .unwrap_or_default()
            .replace("__", "\u{0}")
            .replace('_', "")
            .replace('\u{0}', "_"),
        enabled: prop(&props, "enabled").unwrap_or(true),
        toggle_type: prop(&props, "toggle-type").unwrap_or_default(),
        toggle_state: prop(&props, "toggle-state").unwrap_or(-1),
        children,
    }
}

/// A tray host's view of the bus: the watcher and the item registered with it.
struct Host {
    conn: zbus::Connection,
    item: String,
    item_path: String,
    menu_path: String,
}

impl Host {
    async fn call(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        method: &str,
        body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
    ) -> zbus::Result<zbus::Message> {
        self.conn
            .call_method(Some(dest), path, Some(iface), method, body)
            .await
    }

    async fn property(&self, name: &str) -> zbus::Result<OwnedValue> {
        let m = self
            .call(
                &self.item,
                &self.item_path,
                "org.freedesktop.DBus.Properties",
                "Get",
                &("org.kde.StatusNotifierItem", name),
            )
            .await?;
        m.body().deserialize::<OwnedValue>()
    }

    async fn layout(&self) -> Node {
        let m = self
            .call(
                &self.item,
                &self.menu_path,
                "com.canonical.dbusmenu",
                "GetLayout",
                &(0i32, -1i32, Vec::<String>::new()),
            )
            .await
            .expect("GetLayout");
        // `u(ia{sv}av)`: the revision, then the root item.
        let raw = m.body();
        let body: zbus::zvariant::Structure = raw.deserialize().expect("layout");
        let root = body
            .into_fields()
            .into_iter()
            .nth(1)
            .expect("the root item");
        node(root.try_to_owned().expect("owned layout").into())
    }

    async fn click(&self, id: i32) {
        self.call(
            &self.item,
            &self.menu_path,
            "com.canonical.dbusmenu",
            "Event",
            &(id, "clicked", Value::I32(0), 0u32),
        )
        .await
        .unwrap_or_else(|e| panic!("Event clicked on item {id}: {e}"));
    }

    /// Waits until the menu satisfies `f`; the last layout on timeout.
    async fn wait_menu(&self, limit: Duration, f: impl Fn(&Node) -> bool) -> Result<Node, Node> {
        let start = Instant::now();
        loop {
            let l = self.layout().await;
            if f(&l) {
                return Ok(l);
            }
            if start.elapsed() > limit {
                return Err(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_tray_shows_every_service_turns_one_on_and_survives_the_daemon_restarting() {
    let Some(_serial) = session("tray") else {
        return;
    };
    let watcher_bin = which("status-notifier-watcher").expect(
        "no status-notifier-watcher: this test needs a real StatusNotifierWatcher; install Debian's haskell-status-notifier-item-utils (scripts/test installs it)",
    );
    let dbus_daemon =
        which("dbus-daemon").expect("no dbus-daemon: install Debian's dbus (scripts/test does)");
    let tray = tray_bin();

    let mut w = World::new(&[SERVICE]);
    w.config(&format!("[web]\nlisten = \"127.0.0.1:{PAGE_PORT}\"\n"));
    w.catalog_file("it-tray.toml", &web_service(SERVICE, SERVICE_PORT));
    w.start_daemon();

    // A private session bus, as `dbus-run-session` makes one, for the watcher and the tray
    // only: berth itself keeps the user bus with its systemd manager.
    let bus = w.dir.path().join("session-bus");
    let address = format!("unix:path={}", bus.display());
    let _bus = Proc(
        Command::new(&dbus_daemon)
            .args(["--session", "--nofork", "--address", &address])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start dbus-daemon"),
    );
    assert!(
        wait_for(Duration::from_secs(5), || bus.exists().then_some(())).is_some(),
        "the private dbus-daemon did not make {}",
        bus.display()
    );
    let watcher_log = w.dir.path().join("watcher.log");
    let _watcher = Proc(
        Command::new(&watcher_bin)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(&watcher_log).expect("log"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(w.dir.path().join("watcher.err")).expect("log"),
            ))
            .spawn()
            .expect("start status-notifier-watcher"),
    );
    // The browser: a script that notes each link it is asked to open.
    let opened = w.dir.path().join("opened.txt");
    let opener = w.dir.path().join("open.sh");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()),
    )
    .expect("opener");
    run("chmod", &["755", path_str(&opener)]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the private bus");
        // The watcher is up once it owns its name.
        let start = Instant::now();
        loop {
            let m = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "NameHasOwner",
                    &("org.kde.StatusNotifierWatcher",),
                )
                .await
                .expect("NameHasOwner");
            if m.body().deserialize::<bool>().expect("bool") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "status-notifier-watcher never took org.kde.StatusNotifierWatcher:\n{}",
                log_of(&w.dir.path().join("watcher.err"))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let tray_log = w.dir.path().join("tray.log");
        let mut tray_proc = Proc(
            Command::new(&tray)
                .env("DBUS_SESSION_BUS_ADDRESS", &address)
                .env("BERTH_SOCKET", w.socket())
                .env("BERTH_TRAY_OPEN", &opener)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&tray_log).expect("log")))
                .spawn()
                .expect("start berth-tray"),
        );

        // The item registers with the watcher, as a panel would find it.
        let start = Instant::now();
        let item = loop {
            // The watcher may own its name a moment before it serves its object.
            let items: Vec<String> = match conn
                .call_method(
                    Some("org.kde.StatusNotifierWatcher"),
                    "/StatusNotifierWatcher",
                    Some("org.freedesktop.DBus.Properties"),
                    "Get",
                    &("org.kde.StatusNotifierWatcher", "RegisteredStatusNotifierItems"),
                )
                .await
            {
                Ok(m) => m
                    .body()
                    .deserialize::<OwnedValue>()
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .unwrap_or_default(),
                Err(_not_yet) => Vec::new(),
            };
            if let Some(i) = items.into_iter().next() {
                break i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "berth-tray never registered with the watcher:\n{}",
                log_of(&tray_log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Registered as a bus name, or as `name/path`.
        let (name, item_path) = match item.split_once('/') {
            Some((n, p)) => (n.to_string(), format!("/{p}")),
            None => (item.clone(), "/StatusNotifierItem".to_string()),
        };
        let mut host = Host {
            conn: conn.clone(),
            item: name,
            item_path,
            menu_path: String::new(),
        };
        let menu: OwnedValue = host.property("Menu").await.expect("Menu property");
        host.menu_path = zbus::zvariant::OwnedObjectPath::try_from(menu)
            .expect("Menu is an object path")
            .to_string();
        let id: String = host
            .property("Id")
            .await
            .expect("Id")
            .try_into()
            .expect("Id is a string");
        assert_eq!(id, "berth");

        // Every service, with its state; ours is off.
        let l = host
            .wait_menu(Duration::from_secs(15), |l| {
                l.service(SERVICE).is_some_and(|s| s.label.contains("— off"))
            })
            .await
            .unwrap_or_else(|l| {
                panic!("the menu never listed {SERVICE} as off:\n{}\ntray log:\n{}", l.text(), log_of(&tray_log))
            });
        let service = l.service(SERVICE).expect("service");
        let enable = service
            .children
            .iter()
            .find(|c| c.toggle_type == "checkmark")
            .unwrap_or_else(|| panic!("no enable checkbox under {SERVICE}:\n{}", l.text()));
        assert_eq!(enable.label, "Enabled", "{}", l.text());
        assert_eq!(enable.toggle_state, 0, "off is unchecked:\n{}", l.text());
        assert!(enable.enabled, "{}", l.text());
        for item in ["Open http://127.0.0.1:18222/", "Restart", "Logs"] {
            assert!(
                service.children.iter().any(|c| c.label == item),
                "no {item:?} under {SERVICE}:\n{}",
                l.text()
            );
        }
        assert!(
            l.children.iter().any(|c| c.label == "Open dashboard" && c.enabled),
            "{}",
            l.text()
        );

        // Click "Enabled": the service really starts. The menu's signals are what a panel
        // redraws on; the first one after which the menu shows the service running is timed
        // against the moment systemd saw the unit active.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(host.item.as_str())
            .and_then(|b| b.interface("com.canonical.dbusmenu"))
            .expect("match rule")
            .build();
        let mut signals = zbus::MessageStream::for_match_rule(rule, &host.conn, Some(256))
            .await
            .expect("dbusmenu signals");
        let clicked = Instant::now();
        host.click(enable.id).await;
        let shows_running = |l: &Node| {
            l.service(SERVICE).is_some_and(|s| {
                s.label.contains(&format!("{SERVICE} — running"))
                    && s.children
                        .iter()
                        .any(|c| c.toggle_type == "checkmark" && c.toggle_state == 1)
            })
        };
        let mut shown_at = None;
        let mut l = host.layout().await;
        while clicked.elapsed() < Duration::from_secs(90) {
            match tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut signals)).await {
                Ok(Some(Ok(_signal))) => {
                    let at = std::time::SystemTime::now();
                    l = host.layout().await;
                    if shows_running(&l) {
                        shown_at = Some(at);
                        break;
                    }
                }
                Ok(_) => panic!("the signal stream ended"),
                Err(_quiet) => {}
            }
        }
        let Some(shown_at) = shown_at else {
            panic!(
                "{SERVICE} never showed running after the click:\n{}\nstatus: {}\ntray log:\n{}\ndaemon log:\n{}",
                l.text(),
                w.status(SERVICE),
                log_of(&tray_log),
                w.daemon_log()
            );
        };
        let shown_us = shown_at
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as i64;
        let active_us = unit_active_since_us(&format!("berth-{SERVICE}.service"))
            .expect("ActiveEnterTimestamp") as i64;
        // Read by bench/tray.sh.
        eprintln!(
            "tray latency: running shown {} ms after the unit became active",
            (shown_us - active_us) / 1000
        );
        eprintln!("clicked → menu shows running: {:?}", clicked.elapsed());
        assert_eq!(w.status(SERVICE)["state"], "running", "the API agrees");
        assert_eq!(unit_active(&format!("berth-{SERVICE}.service")), "active");
        assert_page(SERVICE_PORT);
        let tip: ToolTip = host
            .property("ToolTip")
            .await
            .expect("ToolTip")
            .try_into()
            .expect("ToolTip (sa(iiay)ss)");
        assert!(tip.3.contains("1 running"), "tooltip: {tip:?}");

        // "Logs" opens the page's log view through a one-time login link.
        let logs = l
            .service(SERVICE)
            .and_then(|s| s.children.iter().find(|c| c.label == "Logs"))
            .expect("Logs item")
            .id;
        host.click(logs).await;
        let link = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&opened)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| panic!("Logs opened nothing; tray log:\n{}", log_of(&tray_log)));
        assert!(
            link.starts_with(&format!("http://127.0.0.1:{PAGE_PORT}/login?token=")),
            "{link}"
        );
        assert!(link.contains("logs"), "the link lands on the log view: {link}");
        // "Open" hands the service's stable URL to the browser.
        let url = format!("http://127.0.0.1:{SERVICE_PORT}/");
        let open = l
            .service(SERVICE)
            .and_then(|s| s.children.iter().find(|c| c.label == format!("Open {url}")))
            .expect("Open item")
            .id;
        host.click(open).await;
        let second = wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(&opened)
                .ok()
                .and_then(|s| s.lines().nth(1).map(str::to_string))
        });
        assert_eq!(second.as_deref(), Some(url.as_str()), "tray log:\n{}", log_of(&tray_log));

        // The daemon dies: the menu says so, the tray stays.
        w.kill_daemon();
        let l = host
            .wait_menu(Duration::from_secs(10), |l| {
                l.children.first().is_some_and(|c| c.label == "berth is not running")
            })
            .await
            .unwrap_or_else(|l| panic!("the menu never said berth is not running:\n{}", l.text()));
        assert!(l.service(SERVICE).is_none(), "no stale service:\n{}", l.text());
        let status: String = host
            .property("Status")
            .await
            .expect("Status")
            .try_into()
            .expect("string");
        assert_eq!(status, "Active");

        // It comes back: the menu recovers by itself, the service still running (systemd kept
        // it).
        let back = Instant::now();
        w.start_daemon();
        let l = host
            .wait_menu(Duration::from_secs(20), |l| {
                l.service(SERVICE)
                    .is_some_and(|s| s.label.contains(&format!("{SERVICE} — running")))
            })
            .await
            .unwrap_or_else(|l| {
                panic!("the menu did not recover after the daemon came back:\n{}\ntray log:\n{}", l.text(), log_of(&tray_log))
            });
        eprintln!("daemon back → menu recovered: {:?}", back.elapsed());
        assert!(l.children.first().is_some_and(|c| c.label.starts_with("berth: ")), "{}", l.text());
        assert!(
            tray_proc.0.try_wait().expect("try_wait").is_none(),
            "berth-tray exited:\n{}",
            log_of(&tray_log)
        );
        // Turn it off again through the tray: the unit goes.
        let disable = l
            .service(SERVICE)
            .and_then(|s| s.children.iter().find(|c| c.toggle_type == "checkmark"))
            .expect("checkbox")
            .id;
        host.click(disable).await;
        host.wait_menu(Duration::from_secs(30), |l| {
            l.service(SERVICE).is_some_and(|s| s.label.contains("— off"))
        })
        .await
        .unwrap_or_else(|l| panic!("{SERVICE} never showed off after the second click:\n{}", l.text()));
        assert_eq!(w.status(SERVICE)["choice"], "off");
        drop(tray_proc);
    });
}

/// A picture of the root window as RGB rows (`import -window root -depth 8 ppm:-`).
struct Shot {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Shot {
    fn take(display: &str) -> Shot {
        let o = Command::new("import")
            .args(["-window", "root", "-depth", "8", "ppm:-"])
            .env("DISPLAY", display)
            .stdin(Stdio::null())
            .output()
            .expect("run import (ImageMagick)");
        assert!(o.status.success(), "import failed: {}", text(&o));
        Shot::parse(&o.stdout).expect("a binary PPM from import")
    }

    /// A binary PPM (P6, maxval 255) as ImageMagick writes it.
    fn parse(b: &[u8]) -> Option<Shot> {
        let mut fields = Vec::new();
        let mut i = 0;
        while fields.len() < 4 {
            while b.get(i)?.is_ascii_whitespace() {
                i += 1;
            }
            if b[i] == b'#' {
                while *b.get(i)? != b'\n' {
                    i += 1;
                }
                continue;
            }
            let start = i;
            while !b.get(i)?.is_ascii_whitespace() {
                i += 1;
            }
            fields.push(std::str::from_utf8(&b[start..i]).ok()?.to_string());
        }
        if fields[0] != "P6" || fields[3] != "255" {
            return None;
        }
        let (width, height) = (fields[1].parse().ok()?, fields[2].parse().ok()?);
        let rgb = b.get(i + 1..i + 1 + width * height * 3)?.to_vec();
        Some(Shot { width, height, rgb })
    }

    fn px(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let i = (y * self.width + x) * 3;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// The centre of the pixels near `colour` in the top `rows` rows: where the icon is.
    fn find(&self, colour: (u8, u8, u8), rows: usize) -> Option<(usize, usize)> {
        let near = |a: u8, b: u8| a.abs_diff(b) < 24;
        let (mut sx, mut sy, mut n) = (0, 0, 0);
        for y in 0..rows.min(self.height) {
            for x in 0..self.width {
                let p = self.px(x, y);
                if near(p.0, colour.0) && near(p.1, colour.1) && near(p.2, colour.2) {
                    sx += x;
                    sy += y;
                    n += 1;
                }
            }
        }
        (n >= 12).then(|| (sx / n, sy / n))
    }

    /// The box (x, y, width, height) around every pixel that differs from `other`.
    fn changed_box(&self, other: &Shot) -> Option<(usize, usize, usize, usize)> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.px(x, y) != other.px(x, y) {
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
            }
        }
        (x0 <= x1).then(|| (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
    }

    /// How many pixels differ from `other` below row `from`.
    fn changed_below(&self, other: &Shot, from: usize) -> usize {
        (from * self.width * 3..self.rgb.len())
            .step_by(3)
            .filter(|&i| self.rgb[i..i + 3] != other.rgb[i..i + 3])
            .count()
    }
}

fn xdotool(display: &str, args: &[&str]) {
    let o = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .stdin(Stdio::null())
        .output()
        .expect("run xdotool");
    assert!(o.status.success(), "xdotool {args:?}: {}", text(&o));
}

/// The tray in a real `xfce4-panel` (its systray plugin is the StatusNotifierWatcher and the
/// host) on an Xvfb screen: the icon is found on the screen by its colour, clicked, and the
/// menu with a service's submenu is photographed. With `BERTH_SCREENSHOT_DIR` set (by
/// scripts/screenshots) the picture is saved there as `tray.png` for README.
#[test]
fn the_tray_menu_shows_in_a_real_xfce_panel() {
    let Some(_serial) = session("tray_panel") else {
        return;
    };
    let need = |cmd: &str, package: &str| {
        which(cmd).unwrap_or_else(|| {
            panic!("no {cmd}: this test needs Debian's {package} (scripts/test installs it)")
        })
    };
    let xvfb = need("Xvfb", "xvfb");
    let panel = need("xfce4-panel", "xfce4-panel");
    need("import", "imagemagick");
    need("xdotool", "xdotool");
    let dbus_daemon = need("dbus-daemon", "dbus");
    let tray = tray_bin();

    let web = "it-tray-web";
    let broken = "it-tray-broken";
    let mut w = World::new(&[web, broken]);
    w.config("[web]\nlisten = \"127.0.0.1:18225\"\n");
    w.catalog_file("it-tray-web.toml", &web_service(web, 18226));
    w.catalog_file(
        "it-tray-broken.toml",
        &web_service(broken, 18227)
            .replace("localhost/berth-demo:1", "localhost/berth-it-missing:1"),
    );
    w.start_daemon();
    w.ok(&["enable", web, "--settle", "0"]);
    let _fails = w.berth(&["enable", broken, "--settle", "0"]);
    assert!(
        wait_for(Duration::from_secs(30), || (w.status(broken)["state"]
            == "failed")
            .then_some(()))
        .is_some(),
        "{broken} did not fail: {}",
        w.status(broken)
    );

    // The screen: Xvfb picks a free display and says which.
    let home = w.dir.path().join("desktop");
    std::fs::create_dir_all(home.join("config")).expect("config dir");
    let mut x = Command::new(&xvfb)
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1100x760x24",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Xvfb");
    let mut number = String::new();
    {
        use std::io::BufRead as _;
        let out = x.stdout.take().expect("Xvfb stdout");
        std::io::BufReader::new(out)
            .read_line(&mut number)
            .expect("Xvfb's display number");
    }
    let _x = Proc(x);
    let display = format!(":{}", number.trim());
    assert!(display.len() > 1, "Xvfb said no display number");

    // A session bus of its own; xfconfd, which it starts for the panel, keeps its settings
    // in this test's directory (the panel's default layout, systray included).
    let bus = w.dir.path().join("desktop-bus");
    let address = format!("unix:path={}", bus.display());
    let _bus = Proc(
        Command::new(&dbus_daemon)
            .args(["--session", "--nofork", "--address", &address])
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("DISPLAY", &display)
            // No accessibility bus for the panel: nothing here reads it.
            .env("NO_AT_BRIDGE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon"),
    );
    assert!(wait_for(Duration::from_secs(5), || bus.exists().then_some(())).is_some());
    let panel_log = w.dir.path().join("panel.log");
    let _panel = Proc(
        Command::new(&panel)
            .env("DISPLAY", &display)
            .env("NO_AT_BRIDGE", "1")
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&panel_log).expect("log")))
            .spawn()
            .expect("start xfce4-panel"),
    );
    let tray_log = w.dir.path().join("tray-panel.log");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = zbus::connection::Builder::address(address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the desktop's bus");
        let start = Instant::now();
        loop {
            let m = conn
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "NameHasOwner",
                    &("org.kde.StatusNotifierWatcher",),
                )
                .await
                .expect("NameHasOwner");
            if m.body().deserialize::<bool>().expect("bool") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "xfce4-panel's systray never became the StatusNotifierWatcher:\n{}",
                log_of(&panel_log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut tray_proc = Proc(
            Command::new(&tray)
                .env("DBUS_SESSION_BUS_ADDRESS", &address)
                .env("DISPLAY", &display)
                .env("BERTH_SOCKET", w.socket())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&tray_log).expect("log")))
                .spawn()
                .expect("start berth-tray"),
        );
        let pid = tray_proc.0.id();
        let host = Host {
            conn: conn.clone(),
            item: format!("org.kde.StatusNotifierItem-{pid}-1"),
            item_path: "/StatusNotifierItem".into(),
            menu_path: "/MenuBar".into(),
        };
        let start = Instant::now();
        let l = loop {
            if let Ok(m) = host
                .call(
                    &host.item,
                    &host.menu_path,
                    "com.canonical.dbusmenu",
                    "GetLayout",
                    &(0i32, -1i32, Vec::<String>::new()),
                )
                .await
            {
                drop(m);
                let l = host.layout().await;
                let ok = l.service(web).is_some_and(|s| s.label.contains("running"))
                    && l.service(broken)
                        .is_some_and(|s| s.label.contains("failed"));
                if ok {
                    break l;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the tray never showed {web} running and {broken} failed:\n{}",
                log_of(&tray_log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The panel draws the item: red (something failed) in the panel's row.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = Shot::take(&display);
        let (ix, iy) = before.find((0xd7, 0x2f, 0x2f), 48).unwrap_or_else(|| {
            panic!(
                "the panel shows no red tray icon ({}x{} screen):\n{}",
                before.width,
                before.height,
                log_of(&panel_log)
            )
        });
        xdotool(
            &display,
            &["mousemove", &ix.to_string(), &iy.to_string(), "click", "1"],
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Down to the broken service (menus skip insensitive items), then into its submenu.
        let sensitive: Vec<&Node> = l
            .children
            .iter()
            .filter(|c| c.enabled && !c.label.is_empty())
            .collect();
        let at = sensitive
            .iter()
            .position(|c| c.label.contains(&format!(" {broken} — ")))
            .expect("the broken service is in the menu");
        for _ in 0..=at {
            xdotool(&display, &["key", "Down"]);
        }
        xdotool(&display, &["key", "Right"]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let after = Shot::take(&display);
        let changed = after.changed_below(&before, 40);
        assert!(
            changed > 20_000,
            "clicking the icon opened no menu ({changed} pixels changed)"
        );
        // The picture: the panel's row and the menus, with a margin.
        let (mx, _, mw, mh) = after.changed_box(&before).expect("changed pixels");
        let left = mx.min(ix).saturating_sub(16);
        let right = (mx + mw).max(ix + 24).min(after.width);
        let bottom = (mh + 16).min(after.height);
        let png = w.dir.path().join("tray.png");
        let o = Command::new("import")
            .args([
                "-window",
                "root",
                "-crop",
                &format!("{}x{bottom}+{left}+0", right - left),
                "+repage",
                path_str(&png),
            ])
            .env("DISPLAY", &display)
            .stdin(Stdio::null())
            .output()
            .expect("import");
        assert!(o.status.success(), "import: {}", text(&o));
        let bytes = std::fs::read(&png).expect("tray.png");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
            "tray.png is not a picture ({} bytes)",
            bytes.len()
        );
        if let Some(dir) = std::env::var_os("BERTH_SCREENSHOT_DIR") {
            let out = Path::new(&dir).join("tray.png");
            std::fs::write(&out, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        }
        xdotool(&display, &["key", "Escape", "Escape"]);
        assert!(
            tray_proc.0.try_wait().expect("try_wait").is_none(),
            "berth-tray exited:\n{}",
            log_of(&tray_log)
        );
    });
}
