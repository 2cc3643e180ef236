//! The core slice against the real systemd user manager and rootless Podman.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn enable_runs_labelled_container_and_disable_keeps_its_volume() {
    let Some(_serial) = session("enable") else {
        return;
    };
    let mut w = World::new(&["it-demo"]);
    w.catalog_file("it-demo.toml", &web_service("it-demo", 18211));
    w.start_daemon();

    let out = w.ok(&["enable", "it-demo"]);
    assert!(
        out.contains("it-demo: running") || out.contains("it-demo: starting"),
        "{out}"
    );
    assert_eq!(unit_active("berth-it-demo.service"), "active");
    assert_eq!(
        inspect("berth-it-demo", "{{.State.Status}}").as_deref(),
        Some("running")
    );
    assert_eq!(
        inspect(
            "berth-it-demo",
            "{{index .Config.Labels \"io.berth.service\"}}"
        )
        .as_deref(),
        Some("it-demo")
    );
    assert_eq!(
        inspect(
            "berth-it-demo",
            "{{index .Config.Labels \"io.berth.unit\"}}"
        )
        .as_deref(),
        Some("berth-it-demo.service")
    );
    assert_page(18211);
    let st = w.status("it-demo");
    assert_eq!(st["choice"], "on");
    assert_eq!(st["containers"][0]["state"], "running");

    w.ok(&["disable", "it-demo"]);
    assert!(
        !unit_file("berth-it-demo.service").exists(),
        "unit file removed"
    );
    assert_ne!(unit_active("berth-it-demo.service"), "active");
    assert!(
        inspect("berth-it-demo", "{{.State.Status}}").is_none(),
        "container removed"
    );
    assert!(
        podman(&["volume", "exists", "berth-it-demo-data"])
            .status
            .success(),
        "data volume kept"
    );
    assert!(http_get(18211).is_err(), "nothing listens after disable");
    assert_eq!(w.status("it-demo")["state"], "off");
}

/// Regression (newcomer report): `berth enable`/`start` of a running service restarted its
/// container, by the CLI and through the API alike.
#[test]
fn enable_or_start_of_a_running_service_leaves_its_container_alone() {
    let Some(_serial) = session("enable_twice") else {
        return;
    };
    let mut w = World::new(&["it-twice"]);
    w.catalog_file("it-twice.toml", &web_service("it-twice", 18212));
    w.start_daemon();
    w.ok(&["enable", "it-twice", "--settle", "0"]);
    assert_page(18212);
    let started = inspect("berth-it-twice", "{{.State.StartedAt}}").expect("container");
    for verb in ["enable", "start"] {
        let out = w.ok(&[verb, "it-twice", "--settle", "0"]);
        assert!(
            !out.contains("restart") && !out.contains("start berth-"),
            "{verb}: {out}"
        );
        let o = run(
            "curl",
            &[
                "-sS",
                "-X",
                "POST",
                "--unix-socket",
                path_str(&w.socket()),
                &format!("http://localhost/v1/services/it-twice/{verb}"),
            ],
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
        assert_eq!(
            report["applied"],
            serde_json::json!([]),
            "API {verb}: {report}"
        );
        assert_eq!(
            inspect("berth-it-twice", "{{.State.StartedAt}}").as_deref(),
            Some(started.as_str()),
            "{verb} restarted the container"
        );
    }
    // `restart` is the verb that restarts.
    w.ok(&["restart", "it-twice", "--settle", "0"]);
    let restarted = wait_for(Duration::from_secs(10), || {
        inspect("berth-it-twice", "{{.State.StartedAt}}").filter(|s| *s != started)
    });
    assert!(restarted.is_some(), "restart did restart it");
}

/// Regression (newcomer report): a broken admin file present when the daemon starts (a VM
/// rebooting after an admin pushed it) made every service vanish.
#[test]
fn a_broken_admin_file_at_start_keeps_the_last_good_catalog_in_force() {
    let Some(_serial) = session("broken_at_boot") else {
        return;
    };
    let mut w = World::new(&["it-boot", "it-boot2"]);
    w.catalog_file("it-boot.toml", &web_service("it-boot", 18213));
    w.start_daemon();
    w.ok(&["enable", "it-boot", "--settle", "0"]);
    assert_page(18213);
    w.stop_daemon();
    // The admin pushes a broken file and a good new one; the VM reboots.
    w.catalog_file("it-boot.toml", "name = \"it-boot\"\ndescription = [\n");
    w.catalog_file("it-boot2.toml", &web_service("it-boot2", 18214));
    w.start_daemon();
    let st = w.status("it-boot");
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["choice"], "on");
    assert_page(18213);
    let ls = w.berth(&["ls"]);
    assert!(ls.status.success(), "{}", text(&ls));
    let out = text(&ls);
    assert!(
        out.contains("it-boot.toml:2:"),
        "names the broken file and line: {out}"
    );
    assert!(
        out.contains("in force meanwhile: the last good catalog"),
        "{out}"
    );
    assert!(out.contains("it-boot "), "lists the service: {out}");
    let info = w.info();
    assert!(
        info["catalog_in_force"]
            .as_str()
            .is_some_and(|s| s.contains("last good")),
        "{info}"
    );
}

#[test]
fn daemon_killed_with_sigkill_leaves_services_running_and_converges_without_restarting_them() {
    let Some(_serial) = session("kill9") else {
        return;
    };
    let mut w = World::new(&["it-kill"]);
    w.catalog_file("it-kill.toml", &web_service("it-kill", 18181));
    w.start_daemon();
    w.ok(&["enable", "it-kill"]);
    assert_page(18181);
    let started = inspect("berth-it-kill", "{{.State.StartedAt}}").expect("container");

    let pid = w.daemon_pid();
    w.kill_daemon();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "daemon is gone"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        unit_active("berth-it-kill.service"),
        "active",
        "unit survives the daemon"
    );
    // The container still serves on the port Podman published for it.
    let backend = backend_port("berth-it-kill", 8080).expect("published port");
    assert_page(backend);

    w.start_daemon();
    let report: serde_json::Value =
        serde_json::from_str(&w.ok(&["reconcile", "--json"])).expect("json");
    assert_eq!(
        report["applied"],
        serde_json::json!([]),
        "nothing to do after restart: {report}"
    );
    assert_page(18181);
    let c = &w.info()["counters"];
    assert_eq!(
        (
            c["systemd_writes"].as_u64(),
            c["podman_writes"].as_u64(),
            c["file_writes"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{c}"
    );
    assert_eq!(
        inspect("berth-it-kill", "{{.State.StartedAt}}").as_deref(),
        Some(started.as_str()),
        "container was not restarted"
    );

    // A stop (SIGTERM) ends the daemon promptly even with a request that never ends open
    // (`berth logs -f`), and leaves the service running.
    let mut follower = w
        .cmd(&["logs", "-f", "it-kill"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("berth logs -f");
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    w.stop_daemon();
    let _already_gone = follower.kill();
    let _reaped = follower.wait();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the daemon took {:?} to stop",
        t.elapsed()
    );
    assert_eq!(unit_active("berth-it-kill.service"), "active");
}

#[test]
fn second_reconcile_with_nothing_changed_writes_nothing() {
    let Some(_serial) = session("noop") else {
        return;
    };
    let mut w = World::new(&["it-noop"]);
    w.catalog_file("it-noop.toml", &web_service("it-noop", 18182));
    w.start_daemon();
    w.ok(&["enable", "it-noop"]);
    let unit = unit_file("berth-it-noop.service");
    let mtime = std::fs::metadata(&unit)
        .and_then(|m| m.modified())
        .expect("unit file");
    let started = inspect("berth-it-noop", "{{.State.StartedAt}}").expect("container");
    let before = w.info()["counters"].clone();

    for _ in 0..2 {
        let report: serde_json::Value =
            serde_json::from_str(&w.ok(&["reconcile", "--json"])).expect("json");
        assert_eq!(report["applied"], serde_json::json!([]), "{report}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    }
    let after = w.info()["counters"].clone();
    for k in ["systemd_writes", "podman_writes", "file_writes"] {
        assert_eq!(before[k], after[k], "{k} changed: {before} → {after}");
    }
    assert!(
        after["passes"].as_u64() > before["passes"].as_u64(),
        "passes did run"
    );
    assert_eq!(
        std::fs::metadata(&unit)
            .and_then(|m| m.modified())
            .expect("unit"),
        mtime,
        "unit file untouched"
    );
    assert_eq!(
        inspect("berth-it-noop", "{{.State.StartedAt}}").as_deref(),
        Some(started.as_str())
    );
}

/// (file name, content, expected "file:line" fragment, expected words)
fn broken_catalogs() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "it-bad.toml",
            "name = \"it-bad\"\ndescription = \"x\n".into(),
            "it-bad.toml:2:",
            "string",
        ),
        (
            "it-bad.toml",
            web_service("it-bad", 18183)
                .replace("description =", "colour = \"red\"\ndescription ="),
            "it-bad.toml:2:1",
            "unknown field `colour`",
        ),
        (
            "it-bad.toml",
            web_service("it-bad", 18080),
            "it-bad.toml:11:8",
            "port 18080 is already taken by service \"demo\"",
        ),
        (
            "it-bad.toml",
            web_service("it-bad", 18183)
                .replace("description =", "uses = [\"it-bad2\"]\ndescription ="),
            "it-bad.toml:2:9",
            "cycle",
        ),
    ]
}

#[test]
fn broken_catalog_is_rejected_with_its_location_and_running_services_stay() {
    let Some(_serial) = session("broken_catalog") else {
        return;
    };
    let mut w = World::new(&["it-keep"]);
    w.catalog_file("it-keep.toml", &web_service("it-keep", 18184));
    w.start_daemon();
    w.ok(&["enable", "it-keep"]);
    let started = inspect("berth-it-keep", "{{.State.StartedAt}}").expect("container");

    for (file, content, place, words) in broken_catalogs() {
        let path = w.catalog_file(file, &content);
        if words == "cycle" {
            w.catalog_file(
                "it-bad2.toml",
                &web_service("it-bad2", 18185)
                    .replace("description =", "uses = [\"it-bad\"]\ndescription ="),
            );
        }
        let v = w.berth(&["catalog", "validate", path_str(&path)]);
        assert!(!v.status.success(), "validate accepted {file}:\n{content}");
        let msg = text(&v);
        assert!(
            msg.contains(place) && msg.contains(words),
            "validate message lacks {place:?}/{words:?}:\n{msg}"
        );

        let r = w.berth(&["reload"]);
        assert!(!r.status.success(), "reload accepted a broken catalog");
        let msg = text(&r);
        assert!(
            msg.contains(place) && msg.contains(words),
            "reload message lacks {place:?}/{words:?}:\n{msg}"
        );

        let st = w.status("it-keep");
        assert_eq!(st["state"], "running", "{st}");
        assert_eq!(
            inspect("berth-it-keep", "{{.State.StartedAt}}").as_deref(),
            Some(started.as_str())
        );
        let ls = w.ok(&["ls"]);
        assert!(
            ls.contains("in force meanwhile: the catalog in force before"),
            "{ls}"
        );
        std::fs::remove_file(&path).expect("remove broken file");
        let _maybe = std::fs::remove_file(w.etc().join("catalog.d/it-bad2.toml"));
    }
    w.ok(&["reload"]);
    assert_page(18184);
}

#[test]
fn missing_image_gives_a_clear_reason_and_affects_nothing_else() {
    let Some(_serial) = session("missing_image") else {
        return;
    };
    let mut w = World::new(&["it-ok", "it-noimg"]);
    w.catalog_file("it-ok.toml", &web_service("it-ok", 18186));
    w.catalog_file(
        "it-noimg.toml",
        &web_service("it-noimg", 18187).replace("localhost/berth-demo:1", "localhost/berth-nope:1"),
    );
    w.start_daemon();
    w.ok(&["enable", "it-ok"]);

    let e = w.berth(&["enable", "it-noimg"]);
    assert!(
        !e.status.success(),
        "enable of a service without its image must fail"
    );
    let msg = text(&e);
    assert!(msg.contains("localhost/berth-nope:1"), "{msg}");

    let st = wait_for(Duration::from_secs(10), || {
        let st = w.status("it-noimg");
        (st["state"] == "failed").then_some(st)
    })
    .unwrap_or_else(|| panic!("not failed (pull): {}", w.status("it-noimg")));
    assert_eq!(st["choice"], "on");
    assert_eq!(st["failure"], "pull", "{st}");
    assert_eq!(st["hint"], "berth start it-noimg", "{st}");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("cannot pull localhost/berth-nope:1: "),
        "{st}"
    );
    // berth names the image once, then gives Podman's own words (which may name it too).
    assert_eq!(reason.matches("cannot pull").count(), 1, "{reason}");
    assert!(
        !reason.contains("pulling localhost/berth-nope:1"),
        "{reason}"
    );
    assert_ne!(unit_active("berth-it-noimg.service"), "active");
    assert_eq!(w.status("it-ok")["state"], "running");
    assert_page(18186);

    // Its stable port answers at once, with a page that says why.
    let t = std::time::Instant::now();
    let page = http_get(18187).expect("the port answers");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(
        page.contains("cannot pull localhost/berth-nope:1"),
        "{page}"
    );
    assert!(page.contains("berth start it-noimg"), "{page}");

    // A restart of the daemon does not pull again behind the user's back.
    w.stop_daemon();
    w.start_daemon();
    let st = w.status("it-noimg");
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["failure"], "pull", "{st}");
    let ls = text(&w.berth(&["ls"]));
    assert!(!ls.contains("pulling"), "{ls}");
}

#[test]
fn every_builtin_unit_passes_systemd_analyze_verify() {
    let Some(_serial) = session("verify") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let units = dir.path().join("units");
    let o = std::process::Command::new(berth_bin())
        .args(["render", "--out", path_str(&units)])
        .env("BERTH_ETC_DIR", dir.path().join("no-etc"))
        .output()
        .expect("render");
    assert!(o.status.success(), "{}", text(&o));
    let mut names: Vec<_> = std::fs::read_dir(&units)
        .expect("units")
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(
        names.len() >= 13,
        "expected units of every built-in service, got {}",
        names.len()
    );
    let runtime = dir.path().join("rt");
    std::fs::create_dir(&runtime).expect("rt");
    for unit in names {
        let o = std::process::Command::new("systemd-analyze")
            .args(["--user", "verify", "--man=no", path_str(&unit)])
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("systemd-analyze");
        // verify exits 0 on some problems (typos, unknown keys) and only warns: any output fails.
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{} does not verify:\n{}\n{}",
            unit.display(),
            text(&o),
            std::fs::read_to_string(&unit).unwrap_or_default()
        );
    }
}

#[test]
fn pod_service_runs_ordered_containers_sharing_localhost_with_secrets_kept_out_of_units() {
    let Some(_serial) = session("pod") else {
        return;
    };
    let mut w = World::new(&["it-pod"]);
    w.catalog_file(
        "it-pod.toml",
        r#"name = "it-pod"
description = "two containers in one pod"
secrets = ["token"]

[[containers]]
name = "web"
image = "localhost/berth-demo:1"
init = true
after = ["db"]
env = { PLAIN = "visible", TOKEN = "${secret.token}" }
[[containers.ports]]
name = "http"
host = 18188
container = 8080

[[containers]]
name = "db"
image = "localhost/berth-demo:1"
init = true
command = ["/bin/httpd", "-f", "-p", "9000", "-h", "/www"]
"#,
    );
    w.start_daemon();
    w.ok(&["enable", "it-pod"]);
    assert_page(18188);
    for unit in [
        "berth-it-pod.service",
        "berth-it-pod--db.service",
        "berth-it-pod--web.service",
    ] {
        let active = wait_for(Duration::from_secs(10), || {
            (unit_active(unit) == "active").then_some(())
        });
        assert!(active.is_some(), "{unit} is {}", unit_active(unit));
    }
    // The web container reaches the db container on the pod's shared loopback.
    let o = podman(&[
        "exec",
        "berth-it-pod--web",
        "wget",
        "-q",
        "-O",
        "-",
        "http://127.0.0.1:9000/",
    ]);
    assert!(text(&o).contains("berth demo"), "{}", text(&o));
    // The secret reached the container, and no unit file carries it.
    let o = podman(&[
        "exec",
        "berth-it-pod--web",
        "sh",
        "-c",
        "printf %s \"$TOKEN\"",
    ]);
    let token = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(token.len(), 64, "secret in the container: {token:?}");
    for unit in [
        "berth-it-pod.service",
        "berth-it-pod--db.service",
        "berth-it-pod--web.service",
    ] {
        let content = std::fs::read_to_string(unit_file(unit)).expect("unit file");
        assert!(!content.contains(&token), "{unit} contains the secret");
    }
    let env_file = std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
        .join(".local/share/berth/services/it-pod/env/web.env");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(&env_file).expect("env file").mode() & 0o777,
        0o600
    );
    // db started before web.
    let db = inspect("berth-it-pod--db", "{{.State.StartedAt}}").expect("db");
    let web = inspect("berth-it-pod--web", "{{.State.StartedAt}}").expect("web");
    assert!(db <= web, "db {db} should start before web {web}");

    w.ok(&["disable", "it-pod"]);
    for c in ["berth-it-pod--db", "berth-it-pod--web"] {
        assert!(inspect(c, "{{.State.Status}}").is_none(), "{c} removed");
    }
    assert!(
        !podman(&["pod", "exists", "berth-it-pod"]).status.success(),
        "pod removed"
    );
}

#[test]
fn berths_own_unit_starts_as_a_notify_service() {
    let Some(_serial) = session("own_unit") else {
        return;
    };
    let w = World::new(&[]);
    let unit = DaemonUnit::install(&w, "it-berthd.service");
    // `start` returns only after READY=1 arrives (Type=notify).
    let o = systemctl(&["start", unit.name]);
    let answered = w.berth(&["info", "--json"]);
    let state = unit_active(unit.name);
    drop(unit);
    assert!(o.status.success(), "start failed: {}", text(&o));
    assert_eq!(state, "active");
    assert!(
        answered.status.success(),
        "daemon under systemd does not answer: {}",
        text(&answered)
    );
}

/// Starts the user's Podman API socket again however the test ends.
struct RestartPodmanSocket;

impl Drop for RestartPodmanSocket {
    fn drop(&mut self) {
        let _started = systemctl(&["start", "podman.socket"]);
    }
}

#[test]
fn a_dead_podman_api_socket_tears_nothing_down_and_the_stable_port_keeps_serving() {
    let Some(_serial) = session("dead_podman") else {
        return;
    };
    let mut w = World::new(&["it-nopodman", "it-nopodman2"]);
    w.catalog_file("it-nopodman.toml", &web_service("it-nopodman", 18206));
    w.catalog_file("it-nopodman2.toml", &web_service("it-nopodman2", 18207));
    w.start_daemon();
    w.ok(&["enable", "it-nopodman", "--settle", "0"]);
    assert_page(18206);

    let _restore = RestartPodmanSocket;
    let o = systemctl(&["stop", "podman.socket", "podman.service"]);
    assert!(o.status.success(), "{}", text(&o));
    // Plain `berth info` says so within seconds, before anything needed Podman.
    let said = wait_for(Duration::from_secs(5), || {
        let o = w.berth(&["info"]);
        text(&o)
            .contains("podman error: Podman's API is not listening: podman.socket")
            .then_some(())
    });
    assert!(said.is_some(), "{}", text(&w.berth(&["info"])));

    // A pass changes nothing, the unit keeps running, and the page is still served, also
    // after the proxy's knowledge of the container has gone stale (2 s).
    let report: serde_json::Value =
        serde_json::from_str(&w.ok(&["reconcile", "--json"])).expect("json");
    assert_eq!(report["applied"], serde_json::json!([]), "{report}");
    for _ in 0..4 {
        let page = http_get(18206);
        assert!(
            page.as_deref().is_ok_and(|p| p.contains("berth demo")),
            "served without Podman's API: {page:?}"
        );
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert_eq!(unit_active("berth-it-nopodman.service"), "active");
    assert_eq!(w.status("it-nopodman")["state"], "running");
    let ls = w.berth(&["ls"]);
    assert!(ls.status.success(), "{}", text(&ls));
    assert!(
        text(&ls).contains("warning:") && text(&ls).contains("podman.socket"),
        "ls says Podman does not answer: {}",
        text(&ls)
    );

    // What needs Podman says so, naming the socket.
    let o = w.berth(&["enable", "it-nopodman2"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("podman.socket"), "{}", text(&o));

    // Back: the warning goes within seconds, and everything converges.
    let o = systemctl(&["start", "podman.socket"]);
    assert!(o.status.success(), "{}", text(&o));
    let cleared = wait_for(Duration::from_secs(5), || {
        w.info()["podman_error"].is_null().then_some(())
    });
    assert!(cleared.is_some(), "{}", w.info());
    w.ok(&["enable", "it-nopodman2"]);
    assert_page(18207);
    assert_page(18206);
    assert!(w.info()["podman_error"].is_null(), "{}", w.info());
}
