//! The stable ports against real units and containers: on-demand start, idle stop, berth
//! restarts under systemd, and ports taken by other programs.

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use common::*;

fn on_demand_service(name: &str, port: u16, idle: &str) -> String {
    web_service(name, port).replace(
        "description = \"integration test page\"",
        &format!(
            "description = \"integration test page\"\non_demand = true\nidle_stop = \"{idle}\""
        ),
    )
}

#[test]
fn first_connection_starts_an_on_demand_service_and_idle_stops_it() {
    let Some(_serial) = session("on_demand") else {
        return;
    };
    let mut w = World::new(&["it-lazy"]);
    w.catalog_file("it-lazy.toml", &on_demand_service("it-lazy", 18196, "3s"));
    w.start_daemon();
    w.ok(&["enable", "it-lazy"]);
    let st = w.status("it-lazy");
    assert_eq!(st["state"], "idle", "{st}");
    assert_ne!(
        unit_active("berth-it-lazy.service"),
        "active",
        "not started before a connection"
    );
    assert!(w.ok(&["ls"]).contains("idle"));

    // The first connection starts it and gets the page.
    let t = Instant::now();
    let page = http_get(18196).expect("served");
    assert!(page.contains("berth demo"), "{page}");
    eprintln!("first byte after {:?} (cold start)", t.elapsed());
    assert_eq!(unit_active("berth-it-lazy.service"), "active");

    // No connection for the idle time: stopped, idle again.
    let stopped = wait_for(Duration::from_secs(30), || {
        (unit_active("berth-it-lazy.service") != "active").then_some(())
    });
    assert!(stopped.is_some(), "idle service was not stopped");
    let st = wait_for(Duration::from_secs(5), || {
        let st = w.status("it-lazy");
        (st["state"] == "idle").then_some(st)
    });
    assert!(st.is_some(), "{}", w.status("it-lazy"));

    // And the next connection starts it again.
    assert!(http_get(18196)
        .expect("served again")
        .contains("berth demo"));
    let st = w.status("it-lazy");
    assert_eq!(st["state"], "running", "{st}");

    // The counters tell: two starts on demand, two connections on the port.
    let m = w.metrics();
    assert!(
        m.contains("berth_on_demand_starts_total{service=\"it-lazy\"} 2"),
        "{m}"
    );
    let conns = metric(
        &m,
        "berth_proxy_connections_total{service=\"it-lazy\",port=\"18196\"}",
    )
    .unwrap_or_else(|| panic!("no connection counter: {m}"));
    assert_eq!(conns, 2, "{m}");
}

#[test]
fn a_burst_of_first_connections_starts_the_service_once_and_all_are_served() {
    let Some(_serial) = session("on_demand_burst") else {
        return;
    };
    let mut w = World::new(&["it-burst"]);
    w.catalog_file("it-burst.toml", &on_demand_service("it-burst", 18204, "1h"));
    w.start_daemon();
    w.ok(&["enable", "it-burst"]);
    assert_eq!(w.status("it-burst")["state"], "idle");
    // 24 clients at once, like a browser opening a page with its assets.
    let clients: Vec<_> = (0..24)
        .map(|_| std::thread::spawn(|| http_get(18204)))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let page = c.join().expect("client thread");
        assert!(
            page.as_deref().is_ok_and(|p| p.contains("berth demo")),
            "client {i}: {page:?}"
        );
    }
    let m = w.metrics();
    assert!(
        m.contains("berth_on_demand_starts_total{service=\"it-burst\"} 1"),
        "one start for the whole burst: {m}"
    );
}

#[test]
fn clients_connecting_during_a_restart_of_berth_are_served() {
    let Some(_serial) = session("restart") else {
        return;
    };
    let w = World::new(&["it-rs"]);
    w.catalog_file("it-rs.toml", &web_service("it-rs", 18197));
    let unit = DaemonUnit::install(&w, "it-berthd-rs.service");
    let name = unit.name;
    let o = systemctl(&["start", name]);
    assert!(o.status.success(), "{}", text(&o));
    w.ok(&["enable", "it-rs"]);
    assert_page(18197);

    // A client keeps connecting while berth restarts twice.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let client = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match http_get(18197) {
                Ok(p) if p.contains("berth demo") => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(500));
        let o = systemctl(&["restart", name]);
        assert!(o.status.success(), "{}", text(&o));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().expect("client thread");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during restarts: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "client made only {ok} requests");
    // Under berth's own unit (NoNewPrivileges=yes) connections still go straight into the
    // container.
    let m = w.metrics();
    let inside = metric(
        &m,
        "berth_proxy_inside_connections_total{service=\"it-rs\",port=\"18197\"}",
    )
    .unwrap_or(0);
    assert!(inside > 0, "no connection went inside the container:\n{m}");
    let _disable = w.berth(&["disable", "it-rs"]);
}

/// Regression (newcomer report): after `kill -9` of berth, 7 of 52 requests made during the
/// restarts failed. A request in flight when berth dies is cut (its relay died with it); one
/// that connects after the kill waits in the listening socket's backlog (systemd keeps the
/// socket in its file descriptor store while the unit waits to restart) and is served by the
/// next berth. The test tells the two apart by time and prints the figures.
#[test]
fn after_a_kill_9_of_berth_new_connections_wait_and_are_served() {
    let Some(_serial) = session("kill9_backlog") else {
        return;
    };
    let w = World::new(&["it-k9"]);
    w.catalog_file("it-k9.toml", &web_service("it-k9", 18210));
    let unit = DaemonUnit::install(&w, "it-berthd-k9.service");
    let name = unit.name;
    let o = systemctl(&["start", name]);
    assert!(o.status.success(), "{}", text(&o));
    w.ok(&["enable", "it-k9"]);
    assert_page(18210);

    let t0 = std::time::Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // Four clients; each request: (start, end, ok), as offsets from t0.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut done = Vec::new();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = t0.elapsed();
                    let ok = http_get_within(18210, Duration::from_secs(15))
                        .is_ok_and(|p| p.contains("berth demo"));
                    done.push((start, t0.elapsed(), ok));
                    std::thread::sleep(Duration::from_millis(20));
                }
                done
            })
        })
        .collect();
    let mut kills = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        let pid = String::from_utf8_lossy(
            &systemctl(&["show", "--property=MainPID", "--value", name]).stdout,
        )
        .trim()
        .to_string();
        assert!(pid != "0" && !pid.is_empty(), "berth runs under {name}");
        kills.push(t0.elapsed());
        let o = run("kill", &["-KILL", &pid]);
        assert!(o.status.success(), "{}", text(&o));
        // systemd restarts it (Restart=on-failure, RestartSec=2); wait until it answers.
        let back = wait_for(Duration::from_secs(20), || {
            let answered = w.berth(&["info"]).status.success();
            let new_pid = String::from_utf8_lossy(
                &systemctl(&["show", "--property=MainPID", "--value", name]).stdout,
            )
            .trim()
            .to_string();
            (answered && new_pid != pid).then_some(())
        });
        assert!(back.is_some(), "berth did not come back after kill -9");
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done: Vec<(Duration, Duration, bool)> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let in_flight = |(s, e, _): &(Duration, Duration, bool)| kills.iter().any(|k| s < k && k < e);
    let (cut, after): (Vec<&(Duration, Duration, bool)>, Vec<_>) =
        done.iter().partition(|r| in_flight(r));
    let cut_failed = cut.iter().filter(|r| !r.2).count();
    let after_failed = after.iter().filter(|r| !r.2).count();
    let waited = after
        .iter()
        .filter(|(s, e, ok)| {
            *ok && kills
                .iter()
                .any(|k| s > k && *e - *s > Duration::from_millis(500))
        })
        .count();
    println!(
        "kill -9 twice: {} requests; {} in flight at a kill ({cut_failed} of them failed); \
         {} after ({after_failed} failed, {waited} waited in the backlog and were served)",
        done.len(),
        cut.len(),
        after.len()
    );
    assert_eq!(
        after_failed, 0,
        "requests made after a kill failed: {done:?} kills {kills:?}"
    );
    assert!(
        waited > 0,
        "no request was held in the backlog: {done:?} kills {kills:?}"
    );
    let _disable = w.berth(&["disable", "it-k9"]);
}

#[test]
fn a_port_taken_by_another_program_is_reported_with_that_program() {
    let Some(_serial) = session("port_clash") else {
        return;
    };
    let mut w = World::new(&["it-clash", "it-fine"]);
    w.catalog_file("it-clash.toml", &web_service("it-clash", 18198));
    w.catalog_file("it-fine.toml", &web_service("it-fine", 18199));
    let squatter = std::net::TcpListener::bind("127.0.0.1:18198").expect("take the port first");
    w.start_daemon();
    w.ok(&["enable", "it-fine"]);
    let e = w.berth(&["enable", "it-clash"]);
    assert!(
        !e.status.success(),
        "enable must report the clash: {}",
        text(&e)
    );
    let st = w.status("it-clash");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("18198"), "{st}");
    assert!(
        reason.contains(&format!("pid {}", std::process::id())),
        "names the program holding the port: {st}"
    );
    assert_eq!(st["state"], "failed");
    assert_page(18199);

    // Once the other program lets go, berth takes the port (on its next try).
    drop(squatter);
    w.ok(&["disable", "it-clash"]);
    w.ok(&["enable", "it-clash"]);
    assert_page(18198);
    let mut s = std::net::TcpStream::connect("127.0.0.1:18198").expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.contains("berth demo"));
}

#[test]
fn a_service_reaches_the_services_it_uses_through_their_injected_stable_urls() {
    let Some(_serial) = session("service_urls") else {
        return;
    };
    let mut w = World::new(&["it-api", "it-client"]);
    w.catalog_file("it-api.toml", &web_service("it-api", 18200));
    let client = web_service("it-client", 18201)
        .replace(
            "description = \"integration test page\"",
            "description = \"integration test page\"\nuses = [\"it-api\"]",
        )
        .replace(
            "init = true",
            "init = true\nenv = { API_URL = \"${service.it-api.url}\" }",
        );
    w.catalog_file("it-client.toml", &client);
    w.start_daemon();
    w.ok(&["enable", "it-api"]);
    w.ok(&["enable", "it-client"]);
    // A service that uses others runs as a pod: its container is `berth-it-client--web`.
    let o = podman(&[
        "exec",
        "berth-it-client--web",
        "sh",
        "-c",
        "echo $API_URL; wget -q -O - \"$API_URL\"",
    ]);
    let out = text(&o);
    assert!(out.contains("http://127.0.0.1:18200"), "{out}");
    assert!(
        out.contains("berth demo"),
        "the container reached it-api through berth: {out}"
    );
}

/// The network namespace a process lives in, as `net:[inode]`.
fn netns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

/// Podman's port forwarder of a container: the `rootlessport` process (Podman 4 with
/// slirp4netns), which holds the published port and enters the container's network namespace.
fn rootlessport_of(container_pid: &str) -> Option<u32> {
    let ns = netns_of(container_pid)?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().to_string();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "rootlessport" && netns_of(&pid).as_deref() == Some(&ns))
                .then(|| pid.parse().ok())
                .flatten()
        })
}

/// Resumes a stopped process however the test ends.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = run("kill", &["-CONT", &self.0.to_string()]);
    }
}

#[test]
fn connections_go_straight_into_the_container_past_podmans_port_forwarder() {
    let Some(_serial) = session("inside") else {
        return;
    };
    let mut w = World::new(&["it-inside"]);
    w.catalog_file("it-inside.toml", &web_service("it-inside", 18202));
    w.start_daemon();
    w.ok(&["enable", "it-inside"]);
    assert_page(18202);
    let pid = inspect("berth-it-inside", "{{.State.Pid}}").expect("container pid");
    let Some(forwarder) = rootlessport_of(&pid) else {
        // Podman 5 forwards with pasta: no separate process to pause. The counter check below
        // still tells which path berth took.
        eprintln!("SKIP pausing the forwarder: no rootlessport process for this container");
        let m = w.metrics();
        assert!(
            m.contains(
                "berth_proxy_inside_connections_total{service=\"it-inside\",port=\"18202\"} 1"
            ),
            "{m}"
        );
        return;
    };
    // Freeze Podman's forwarder: its published port still accepts (the kernel does), but
    // nothing crosses it any more.
    let o = run("kill", &["-STOP", &forwarder.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let _resume = Resume(forwarder);
    let published = backend_port("berth-it-inside", 8080).expect("published port");
    let mut direct = std::net::TcpStream::connect(("127.0.0.1", published)).expect("connect");
    direct
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    direct.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = [0u8; 64];
    assert!(
        direct.read(&mut buf).is_err(),
        "the published port answered with its forwarder stopped; the test proves nothing"
    );
    // Through berth, pages still flow: berth's connections do not cross the forwarder.
    for _ in 0..3 {
        assert_page(18202);
    }
    // Every connection berth forwarded went inside.
    let m = w.metrics();
    let count = |family: &str| -> u64 {
        metric(
            &m,
            &format!("{family}{{service=\"it-inside\",port=\"18202\"}}"),
        )
        .unwrap_or_else(|| panic!("no {family}: {m}"))
    };
    let (inside, all) = (
        count("berth_proxy_inside_connections_total"),
        count("berth_proxy_connections_total"),
    );
    assert!(inside >= 4 && inside == all, "{inside} of {all} inside");

    // The socket helper leaves after 30 s without a request (and is reaped), and a new one
    // serves once the pooled sockets are used up.
    let daemon = w.daemon_pid();
    assert!(!children(daemon).is_empty(), "a helper runs");
    std::thread::sleep(Duration::from_secs(32));
    let left: Vec<(u32, String)> = children(daemon);
    assert!(
        left.is_empty(),
        "helpers (pid, state) still there: {left:?}"
    );
    for i in 0..40 {
        let page = http_get(18202);
        assert!(
            page.as_deref().is_ok_and(|p| p.contains("berth demo")),
            "request {i} after the helper left: {page:?}"
        );
    }
    let m = w.metrics();
    let again = metric(
        &m,
        "berth_proxy_inside_connections_total{service=\"it-inside\",port=\"18202\"}",
    )
    .unwrap_or(0);
    assert_eq!(again, inside + 40, "all 40 went inside");
}

/// The child processes of `pid` with their state letter (Z: a zombie nobody reaped).
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            out.push((child, state));
        }
    }
    out
}

#[test]
fn socket_helpers_still_start_after_the_binary_was_replaced_on_disk() {
    let Some(_serial) = session("replaced_binary") else {
        return;
    };
    let mut w = World::new(&["it-upgrade"]);
    w.catalog_file("it-upgrade.toml", &web_service("it-upgrade", 18208));
    // The daemon runs from a copy that an "upgrade" then deletes, as a package manager does.
    let copy = w.dir.path().join("berth-old");
    std::fs::copy(berth_bin(), &copy).expect("copy the binary");
    w.start_daemon_from(&copy);
    w.ok(&["enable", "it-upgrade", "--settle", "0"]);
    std::fs::remove_file(&copy).expect("delete the binary");
    assert_page(18208);
    let m = w.metrics();
    assert!(
        m.contains("berth_proxy_inside_connections_total{service=\"it-upgrade\",port=\"18208\"} 1"),
        "the helper started from the deleted binary: {m}"
    );
}
