//! Health against the real systemd user manager and Podman: probes, container health checks
//! and crash loops.

mod common;

use std::time::Duration;

use common::*;

fn wait_state(w: &World, name: &str, state: &str, limit: Duration) -> serde_json::Value {
    wait_for(limit, || {
        let st = w.status(name);
        (st["state"] == state).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name} never became {state}: {}\n{}",
            w.status(name),
            w.daemon_log()
        )
    })
}

#[test]
fn failing_probe_makes_a_service_unhealthy_and_it_recovers() {
    let Some(_serial) = session("probe") else {
        return;
    };
    let mut w = World::new(&["it-probe"]);
    let entry = web_service("it-probe", 18192).replace(
        "[[containers]]",
        "[probe]\nport = \"http\"\npath = \"/ok.html\"\ninterval = \"1s\"\ntimeout = \"2s\"\n\n[[containers]]",
    );
    w.catalog_file("it-probe.toml", &entry);
    w.start_daemon();
    w.ok(&["enable", "it-probe"]);

    let st = wait_state(&w, "it-probe", "unhealthy", Duration::from_secs(30));
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("404"),
        "reason names the failed probe: {st}"
    );
    assert_eq!(st["probe"]["ok"], false);

    let o = podman(&["exec", "berth-it-probe", "touch", "/www/ok.html"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = wait_state(&w, "it-probe", "running", Duration::from_secs(30));
    assert_eq!(st["probe"]["ok"], true, "{st}");
    assert!(
        st["probe"]["seconds"].as_f64().is_some_and(|s| s < 2.0),
        "{st}"
    );
}

#[test]
fn failing_container_health_check_shows_unhealthy_then_recovers() {
    let Some(_serial) = session("container_health") else {
        return;
    };
    let mut w = World::new(&["it-hc"]);
    let entry = format!(
        "{}\n[containers.health]\ncmd = \"test -f /www/ok.html\"\ninterval = \"1s\"\ntimeout = \"1s\"\nretries = 1\nstart_period = \"1s\"\n",
        web_service("it-hc", 18193)
    );
    w.catalog_file("it-hc.toml", &entry);
    w.start_daemon();
    w.ok(&["enable", "it-hc"]);

    let st = wait_state(&w, "it-hc", "unhealthy", Duration::from_secs(40));
    assert_eq!(st["containers"][0]["health"], "unhealthy", "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("health check"),
        "{st}"
    );

    let o = podman(&["exec", "berth-it-hc", "touch", "/www/ok.html"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = wait_state(&w, "it-hc", "running", Duration::from_secs(40));
    assert_eq!(st["containers"][0]["health"], "healthy", "{st}");
}

fn n_restarts(unit: &str) -> String {
    String::from_utf8_lossy(&systemctl(&["show", "-p", "NRestarts", "--value", unit]).stdout)
        .trim()
        .to_string()
}

#[test]
fn crashing_container_ends_failed_with_its_last_log_lines_and_restarts_stop() {
    let Some(_serial) = session("crash_loop") else {
        return;
    };
    let mut w = World::new(&["it-crash"]);
    let crashing = web_service("it-crash", 18194).replace(
        "init = true",
        "init = true\ncommand = [\"/bin/sh\", \"-c\", \"echo boom: config missing; sleep 1; exit 3\"]",
    );
    w.catalog_file("it-crash.toml", &crashing);
    w.start_daemon();
    // It comes up, then crashes a moment later: `enable` watches long enough to say so.
    let o = w.berth(&["enable", "it-crash"]);
    let out = text(&o);
    assert!(!o.status.success(), "enable must report the crash: {out}");
    assert!(out.contains("crashed right after it started"), "{out}");
    assert!(
        out.contains("boom: config missing"),
        "with the log lines: {out}"
    );

    // systemd restarts it every 5 s, at most 5 starts in 5 minutes.
    let st = wait_state(&w, "it-crash", "failed", Duration::from_secs(90));
    let reason = st["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("crashed"), "{reason}");
    assert!(
        reason.contains("boom: config missing"),
        "the reason quotes the log: {reason}"
    );
    let restarts = n_restarts("berth-it-crash.service");
    assert_eq!(unit_active("berth-it-crash.service"), "failed");

    // Neither systemd nor berth keeps restarting it.
    std::thread::sleep(Duration::from_secs(12));
    let _pass = w.ok(&["reconcile"]);
    assert_eq!(unit_active("berth-it-crash.service"), "failed");
    assert_eq!(
        n_restarts("berth-it-crash.service"),
        restarts,
        "no restarts after giving up"
    );
    assert_eq!(w.status("it-crash")["state"], "failed");

    // The user acts: a fixed catalog plus `berth start` brings it back.
    w.catalog_file("it-crash.toml", &web_service("it-crash", 18194));
    w.ok(&["reload"]);
    w.ok(&["start", "it-crash"]);
    wait_state(&w, "it-crash", "running", Duration::from_secs(30));
    assert_page(18194);
}

/// The invocation of the user's socket-activated Podman API service (it exits after 5 s
/// without requests), or "" while it never ran.
fn podman_service_invocation() -> String {
    let o = systemctl(&["show", "podman.service", "-p", "InvocationID", "--value"]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_steady_service_leaves_podmans_api_service_asleep() {
    let Some(_serial) = session("podman_asleep") else {
        return;
    };
    // No health check and no probe: nothing about it can change without its unit changing.
    let mut w = World::new(&["it-steady"]);
    w.catalog_file("it-steady.toml", &web_service("it-steady", 18205));
    w.start_daemon();
    w.ok(&["enable", "it-steady", "--settle", "0"]);
    assert_page(18205);
    // Let the API service finish its idle time after the start.
    std::thread::sleep(Duration::from_secs(7));
    let first = podman_service_invocation();
    let mut seen = std::collections::BTreeSet::new();
    // Three health ticks (every 10 s) of the daemon.
    for _ in 0..32 {
        seen.insert(podman_service_invocation());
        std::thread::sleep(Duration::from_secs(1));
    }
    seen.remove(&first);
    assert!(
        seen.is_empty(),
        "berth woke Podman's API service {} times in 32 s while nothing changed",
        seen.len()
    );
    // The health snapshot still tells the truth when asked directly.
    let st = w.status("it-steady");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["containers"][0]["state"], "running", "{st}");
}
