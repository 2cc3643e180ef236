//! Health-gated start order in a pod, against the real systemd user manager and Podman: a
//! container waits for the health check of what it comes `after`, and a dependency that never
//! turns healthy fails the service once, with that reason, without systemd's restarts.

mod common;

use std::time::Duration;

use common::*;

fn pod(name: &str, port: u16, ready_after: &str, timeout: &str) -> String {
    format!(
        r#"name = "{name}"
description = "health-gated start order"
start_timeout = "{timeout}"

[[containers]]
name = "db"
image = "localhost/berth-busybox:1"
init = true
command = ["sh", "-c", "{ready_after}; exec sleep 1000000"]
[[containers.volumes]]
name = "data"
target = "/data"
[containers.health]
cmd = "test -f /data/ready"
interval = "1s"
timeout = "1s"
retries = 1
start_period = "1s"

[[containers]]
name = "web"
image = "localhost/berth-demo:1"
init = true
after = ["db"]
[[containers.ports]]
name = "http"
host = {port}
container = 8080
"#
    )
}

fn started_unix(container: &str) -> i64 {
    inspect(container, "{{.State.StartedAt.Unix}}")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no start time of {container}"))
}

fn journal(unit: &str) -> String {
    // The user manager's units log to the system journal here (no per-user journal files).
    text(&run(
        "journalctl",
        &[
            "--no-pager",
            "-q",
            "-o",
            "cat",
            &format!("_SYSTEMD_USER_UNIT={unit}"),
        ],
    ))
}

#[test]
fn a_container_starts_once_what_it_comes_after_is_healthy() {
    let Some(_serial) = session("gate_waits") else {
        return;
    };
    let mut w = World::new(&["it-gate-ok"]);
    w.catalog_file(
        "it-gate-ok.toml",
        &pod(
            "it-gate-ok",
            19201,
            "rm -f /data/ready; sleep 4; touch /data/ready",
            "1m",
        ),
    );
    w.start_daemon();
    w.ok(&["enable", "it-gate-ok", "--settle", "0"]);
    let st = wait_for(Duration::from_secs(60), || {
        let st = w.status("it-gate-ok");
        (st["state"] == "running").then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "never running: {}\n{}",
            w.status("it-gate-ok"),
            journal("berth-it-gate-ok--web.service")
        )
    });
    assert_page(19201);
    let db = started_unix("berth-it-gate-ok--db");
    let web = started_unix("berth-it-gate-ok--web");
    assert!(
        web >= db + 4,
        "web started {}s after db, before db's check could pass: {st}",
        web - db
    );
    let log = journal("berth-it-gate-ok--web.service");
    assert!(log.contains("berth: waiting until db is healthy"), "{log}");
    assert!(log.contains("berth: db is healthy after"), "{log}");
}

#[test]
fn a_dependency_that_never_turns_healthy_fails_the_service_once_with_the_reason() {
    let Some(_serial) = session("gate_never") else {
        return;
    };
    let mut w = World::new(&["it-gate-never"]);
    // The readiness mark lives in the volume, so it outlives the restart below.
    podman(&["volume", "rm", "-f", "berth-it-gate-never-data"]);
    w.catalog_file(
        "it-gate-never.toml",
        &pod("it-gate-never", 19202, "true", "8s"),
    );
    w.start_daemon();
    w.ok(&["enable", "it-gate-never", "--settle", "0"]);
    let st = wait_for(Duration::from_secs(60), || {
        let st = w.status("it-gate-never");
        (st["state"] == "failed").then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "never failed: {}\n{}",
            w.status("it-gate-never"),
            w.daemon_log()
        )
    });
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("db never became healthy within 8s; web was not started"),
        "{st}"
    );
    let unit = "berth-it-gate-never--web.service";
    let show = text(&systemctl(&[
        "show",
        "-p",
        "ActiveState",
        "-p",
        "NRestarts",
        "-p",
        "ExecMainStatus",
        unit,
    ]));
    assert!(show.contains("ActiveState=failed"), "{show}");
    assert!(show.contains("NRestarts=0"), "no restart burnt: {show}");
    assert!(show.contains("ExecMainStatus=190"), "{show}");
    assert!(
        inspect("berth-it-gate-never--web", "{{.State.Status}}").is_none(),
        "web was never started"
    );
    assert_eq!(
        inspect("berth-it-gate-never--db", "{{.State.Status}}").as_deref(),
        Some("running"),
        "the dependency is left running"
    );
    let log = journal(unit);
    assert!(
        log.contains("berth: db never became healthy within 8s"),
        "{log}"
    );
    // Still failed a while later: nothing restarts it behind the user's back.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(w.status("it-gate-never")["state"], "failed");

    // Once the dependency is healthy, `berth start` brings the whole service up.
    let o = podman(&["exec", "berth-it-gate-never--db", "touch", "/data/ready"]);
    assert!(o.status.success(), "{}", text(&o));
    w.ok(&["start", "it-gate-never", "--settle", "0"]);
    wait_for(Duration::from_secs(60), || {
        (w.status("it-gate-never")["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "never running after berth start: {}",
            w.status("it-gate-never")
        )
    });
    assert_page(19202);
}
