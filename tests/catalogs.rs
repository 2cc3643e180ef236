//! Catalog layers, policy and live reload against the real systemd user manager and rootless
//! Podman: files written into the admin folder take effect with no command, a broken one
//! changes nothing and is reported, only the changed service restarts, required services stay
//! on, a forbidden registry is refused with its rule, a user's own catalog counts only where
//! policy allows. Ports 18231–18239.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// The demo page as a service, with an env value that changes its unit when it changes.
fn svc(name: &str, port: u16, mode: &str) -> String {
    format!(
        r#"name = "{name}"
description = "catalog test page"

[[containers]]
name = "web"
image = "localhost/berth-demo:1"
init = true
env = {{ MODE = "{mode}" }}

[[containers.ports]]
name = "http"
host = {port}
container = 8080
"#
    )
}

fn started_at(service: &str) -> Option<String> {
    inspect(&format!("berth-{service}"), "{{.State.StartedAt}}")
}

fn policy(w: &World, text: &str) {
    std::fs::write(w.etc().join("policy.toml"), text).expect("write policy.toml");
}

fn user_catalog(w: &World) -> PathBuf {
    let d = w.dir.path().join("config/berth/catalog.d");
    std::fs::create_dir_all(&d).expect("user catalog.d");
    d
}

/// `berth ls` (stdout and stderr) once `f` holds for it, within `limit`.
fn ls_until(w: &World, limit: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
    let found = wait_for(limit, || {
        let o = w.berth(&["ls"]);
        let t = text(&o);
        f(&t).then_some(t)
    });
    found.unwrap_or_else(|| {
        panic!(
            "berth ls never showed {what}:\n{}\n--- daemon log ---\n{}",
            text(&w.berth(&["ls"])),
            w.daemon_log()
        )
    })
}

#[test]
fn admin_folder_changes_apply_live_and_only_the_changed_service_restarts() {
    let Some(_serial) = session("live_reload") else {
        return;
    };
    let mut w = World::new(&["it-cat-a", "it-cat-b", "it-cat-c"]);
    w.catalog_file("it-cat-a.toml", &svc("it-cat-a", 18231, "one"));
    w.catalog_file("it-cat-b.toml", &svc("it-cat-b", 18232, "one"));
    w.start_daemon();
    w.ok(&["enable", "it-cat-a", "--settle", "0"]);
    w.ok(&["enable", "it-cat-b", "--settle", "0"]);
    assert_page(18231);
    assert_page(18232);
    let a_started = started_at("it-cat-a").expect("a runs");
    let b_started = started_at("it-cat-b").expect("b runs");

    // What the change would do, asked first without changing anything.
    let candidate = w.dir.path().join("it-cat-b.toml");
    std::fs::write(&candidate, svc("it-cat-b", 18232, "two")).expect("candidate");
    let d = w.ok(&["catalog", "diff", path_str(&candidate)]);
    assert!(
        d.contains("~ it-cat-b") && d.contains("would restart"),
        "{d}"
    );
    assert!(!d.contains("it-cat-a"), "{d}");
    assert_eq!(started_at("it-cat-b").as_deref(), Some(b_started.as_str()));

    // Changed: b's unit changes. No command: the daemon sees the write.
    let unit_b = unit_file("berth-it-cat-b.service");
    let written = Instant::now();
    w.catalog_file("it-cat-b.toml", &svc("it-cat-b", 18232, "two"));
    let rewritten = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&unit_b)
            .ok()
            .filter(|u| u.contains("MODE=two"))
            .map(|_| written.elapsed())
    })
    .expect("b's unit rewritten");
    let restarted = wait_for(Duration::from_secs(15), || {
        started_at("it-cat-b")
            .filter(|s| *s != b_started)
            .map(|_| written.elapsed())
    })
    .expect("b restarted");
    println!(
        "catalog change in force: unit rewritten {} ms after the write, container restarted after {} ms",
        rewritten.as_millis(),
        restarted.as_millis()
    );
    assert!(
        rewritten < Duration::from_secs(1),
        "units rewritten within 1 s of the write: {rewritten:?}"
    );
    assert_page(18232);
    assert_eq!(
        started_at("it-cat-a").as_deref(),
        Some(a_started.as_str()),
        "a was not restarted"
    );
    // The service's own restart, measured the same way: what berth adds is the difference.
    let before = started_at("it-cat-b").expect("b runs");
    let asked = Instant::now();
    systemctl(&["restart", "berth-it-cat-b.service"]);
    let own = wait_for(Duration::from_secs(15), || {
        started_at("it-cat-b")
            .filter(|s| *s != before)
            .map(|_| asked.elapsed())
    })
    .expect("b restarted by systemctl");
    println!(
        "the service's own restart (systemctl --user restart): {} ms; berth added {} ms",
        own.as_millis(),
        restarted.as_millis().saturating_sub(own.as_millis())
    );
    assert!(
        restarted < own + Duration::from_secs(1),
        "in force within 1 s of the write plus the service's own restart: {restarted:?} vs {own:?}"
    );

    // Added: c appears, off, with no command.
    w.catalog_file("it-cat-c.toml", &svc("it-cat-c", 18233, "one"));
    ls_until(&w, Duration::from_secs(5), "it-cat-c", |t| {
        t.contains("it-cat-c")
    });
    // Removed: c goes, and so does b, which was running: stopped, units removed.
    std::fs::remove_file(w.etc().join("catalog.d/it-cat-c.toml")).expect("rm c");
    std::fs::remove_file(w.etc().join("catalog.d/it-cat-b.toml")).expect("rm b");
    ls_until(&w, Duration::from_secs(5), "c and b gone", |t| {
        !t.contains("it-cat-c") && !t.contains("it-cat-b")
    });
    let gone = wait_for(Duration::from_secs(15), || {
        (!unit_b.exists() && unit_active("berth-it-cat-b.service") != "active").then_some(())
    });
    assert!(gone.is_some(), "b stopped and its unit removed");
    assert_eq!(
        started_at("it-cat-a").as_deref(),
        Some(a_started.as_str()),
        "a still untouched"
    );
}

#[test]
fn a_broken_file_changes_nothing_and_is_reported() {
    let Some(_serial) = session("broken_live") else {
        return;
    };
    let mut w = World::new(&["it-cat-keep"]);
    w.catalog_file("it-cat-keep.toml", &svc("it-cat-keep", 18234, "one"));
    w.start_daemon();
    w.ok(&["enable", "it-cat-keep", "--settle", "0"]);
    assert_page(18234);
    let started = started_at("it-cat-keep").expect("runs");

    // The running service's own file broken (a privileged port) and a new broken file.
    w.catalog_file(
        "it-cat-keep.toml",
        &svc("it-cat-keep", 18234, "two").replace("host = 18234", "host = 80"),
    );
    w.catalog_file(
        "it-cat-junk.toml",
        "name = \"it-cat-junk\"\ndescription = [\n",
    );
    let ls = ls_until(&w, Duration::from_secs(5), "the error", |t| {
        t.contains("it-cat-keep.toml:12:8") && t.contains("it-cat-junk.toml:")
    });
    assert!(
        ls.contains("in force meanwhile: the catalog in force before"),
        "{ls}"
    );
    let info = w.info();
    assert!(
        info["catalog_error"]
            .as_str()
            .is_some_and(|e| e.contains("containers[0].ports[0].host")),
        "{info}"
    );
    let m = w.metrics();
    assert!(m.lines().any(|l| l == "berth_catalog_error 1"), "{m}");
    assert!(w.daemon_log().contains("catalog change rejected"), "logged");
    assert_page(18234);
    assert_eq!(started_at("it-cat-keep").as_deref(), Some(started.as_str()));
    assert!(
        std::fs::read_to_string(unit_file("berth-it-cat-keep.service"))
            .expect("unit")
            .contains("MODE=one"),
        "the last good catalog's unit stays"
    );

    // Fixed: the error clears, nothing restarts (the fixed file is what ran).
    std::fs::remove_file(w.etc().join("catalog.d/it-cat-junk.toml")).expect("rm");
    w.catalog_file("it-cat-keep.toml", &svc("it-cat-keep", 18234, "one"));
    let cleared = wait_for(Duration::from_secs(5), || {
        w.info()["catalog_error"].is_null().then_some(())
    });
    assert!(cleared.is_some(), "{}", w.info());
    assert!(w.metrics().lines().any(|l| l == "berth_catalog_error 0"));
    assert_eq!(started_at("it-cat-keep").as_deref(), Some(started.as_str()));
}

#[test]
fn a_required_service_runs_and_cannot_be_disabled_by_the_cli_or_the_api() {
    let Some(_serial) = session("required") else {
        return;
    };
    let mut w = World::new(&["it-cat-req"]);
    w.catalog_file("it-cat-req.toml", &svc("it-cat-req", 18235, "one"));
    policy(
        &w,
        "# the admin's policy\nrequired_services = [\"it-cat-req\"]\n",
    );
    w.start_daemon();
    assert_page(18235);
    let st = w.status("it-cat-req");
    assert_eq!(st["locked"], true, "{st}");
    assert_eq!(st["choice"], "on");

    for verb in ["disable", "stop"] {
        let o = w.berth(&[verb, "it-cat-req"]);
        assert!(
            !o.status.success(),
            "{verb} of a required service succeeded"
        );
        let t = text(&o);
        assert!(
            t.contains("required by policy rule `required_services`")
                && t.contains("policy.toml:2)"),
            "{verb}: {t}"
        );
    }
    let o = run(
        "curl",
        &[
            "-sS",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            path_str(&w.socket()),
            "http://localhost/v1/services/it-cat-req/disable",
        ],
    );
    let t = text(&o);
    assert!(t.ends_with("\n403"), "{t}");
    assert!(t.contains("\"code\":\"required\""), "{t}");
    assert_eq!(unit_active("berth-it-cat-req.service"), "active");
    assert_page(18235);
}

#[test]
fn a_forbidden_registry_is_refused_with_its_rule() {
    let Some(_serial) = session("forbidden_registry") else {
        return;
    };
    let mut w = World::new(&["it-cat-forbid"]);
    w.catalog_file("it-cat-forbid.toml", &svc("it-cat-forbid", 18236, "one"));
    policy(&w, "\nallowed_images = [\"registry.corp.example/*\"]\n");
    w.start_daemon();
    let o = w.berth(&["enable", "it-cat-forbid", "--no-pull"]);
    assert!(!o.status.success(), "enable of a forbidden image succeeded");
    let t = text(&o);
    assert!(
        t.contains("image localhost/berth-demo:1 is not allowed by policy rule `allowed_images`")
            && t.contains("policy.toml:2)"),
        "{t}"
    );
    let st = w.status("it-cat-forbid");
    assert_eq!(st["state"], "off");
    assert!(
        st["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("refused: image")),
        "{st}"
    );
    assert!(!unit_file("berth-it-cat-forbid.service").exists());
    let show = w.ok(&["catalog", "show", "it-cat-forbid"]);
    assert!(
        show.contains("refused: image localhost/berth-demo:1"),
        "{show}"
    );
}

#[test]
fn a_user_catalog_is_used_only_where_policy_allows() {
    let Some(_serial) = session("user_catalog") else {
        return;
    };
    let mut w = World::new(&["it-cat-mine"]);
    let dir = user_catalog(&w);
    std::fs::write(
        dir.join("it-cat-mine.toml"),
        svc("it-cat-mine", 18237, "one"),
    )
    .expect("user file");
    w.start_daemon();
    let o = w.berth(&["enable", "it-cat-mine", "--no-pull"]);
    assert!(!o.status.success(), "a user catalog counted without policy");
    let show = w.ok(&["catalog", "show"]);
    assert!(
        show.contains("it-cat-mine.toml: not read: policy rule `user_catalogs` (the default) does not allow user catalogs"),
        "{show}"
    );

    // The admin allows it, live.
    policy(&w, "user_catalogs = true\n");
    ls_until(&w, Duration::from_secs(5), "it-cat-mine", |t| {
        t.contains("it-cat-mine")
    });
    w.ok(&["enable", "it-cat-mine", "--settle", "0"]);
    assert_page(18237);
    let origin = w.ok(&["catalog", "show", "it-cat-mine", "--origin"]);
    assert!(
        origin.contains("from:    user layer, ") && origin.contains("it-cat-mine.toml:1"),
        "{origin}"
    );

    // And takes it back: the user's service stops and goes.
    policy(&w, "user_catalogs = false\n");
    let gone = wait_for(Duration::from_secs(15), || {
        (unit_active("berth-it-cat-mine.service") != "active"
            && !unit_file("berth-it-cat-mine.service").exists())
        .then_some(())
    });
    assert!(gone.is_some(), "{}", w.daemon_log());
}

#[test]
fn polling_alone_sees_a_change() {
    let Some(_serial) = session("polling") else {
        return;
    };
    let mut w = World::new(&["it-cat-poll"]);
    // As on a network filesystem, where inotify does not see other machines' writes.
    w.config("[web]\nenabled = false\n[reload]\ninotify = false\npoll_interval = \"300ms\"\n");
    w.start_daemon();
    assert!(
        w.daemon_log().contains("inotify=false"),
        "{}",
        w.daemon_log()
    );
    w.catalog_file("it-cat-poll.toml", &svc("it-cat-poll", 18238, "one"));
    ls_until(&w, Duration::from_secs(3), "it-cat-poll", |t| {
        t.contains("it-cat-poll")
    });
}

#[test]
fn a_broken_config_change_is_reported_and_a_valid_one_restarts_the_daemon() {
    let Some(_serial) = session("config_reload") else {
        return;
    };
    let mut w = World::new(&["it-cat-cfg"]);
    w.start_daemon();
    w.config("[web]\nenabled = false\n[push]\nurl = \"ftp://x\"\n");
    let reported = wait_for(Duration::from_secs(5), || {
        w.info()["config_error"]
            .as_str()
            .filter(|e| e.contains("config.toml:4:7: push.url"))
            .map(str::to_string)
    });
    assert!(reported.is_some(), "{}", w.info());
    assert!(w.metrics().lines().any(|l| l == "berth_config_error 1"));
    w.config("[web]\nenabled = false\n[reload]\npoll_interval = \"1s\"\n");
    let exited = wait_for(Duration::from_secs(10), || {
        (!w.berth(&["info"]).status.success()).then_some(())
    });
    assert!(exited.is_some(), "the daemon kept running");
    let log = w.daemon_log();
    assert!(
        log.contains("config.toml changed: berth exits to start again with it"),
        "{log}"
    );
}

#[test]
fn resource_ceilings_reach_the_unit_and_the_container_runs() {
    let Some(_serial) = session("ceilings") else {
        return;
    };
    let mut w = World::new(&["it-cat-lim"]);
    w.catalog_file(
        "it-cat-lim.toml",
        &svc("it-cat-lim", 18239, "one")
            .replace("init = true", "init = true\nmemory = \"512m\"\ncpus = 1.5"),
    );
    policy(
        &w,
        "[limits]\ncontainer_memory = \"128m\"\ncontainer_cpus = 0.5\n",
    );
    w.start_daemon();
    w.ok(&["enable", "it-cat-lim", "--settle", "0"]);
    assert_page(18239);
    let unit = unit_file("berth-it-cat-lim.service");
    let text_of = std::fs::read_to_string(&unit).expect("unit");
    for want in [
        " --memory=128m ",
        " --cpus=0.5 ",
        "\nMemoryMax=134217728\n",
        "\nCPUQuota=50%\n",
    ] {
        assert!(
            text_of.contains(want),
            "clamped to the ceiling ({want:?}):\n{text_of}"
        );
    }
    let o = run(
        "systemd-analyze",
        &["--user", "verify", "--man=no", path_str(&unit)],
    );
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
    let origin = w.ok(&["catalog", "show", "it-cat-lim", "--origin"]);
    assert!(
        origin.contains("containers.web.memory          set by the policy, "),
        "{origin}"
    );
    // Podman applies the limit where rootless cgroups allow it (cgroup v2); on cgroup v1
    // it runs the container without it and says so.
    let memory = inspect("berth-it-cat-lim", "{{.HostConfig.Memory}}").unwrap_or_default();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        assert_eq!(memory, "134217728", "the container's own limit");
    } else {
        println!("cgroup v1: Podman reports HostConfig.Memory = {memory} (rootless limits are not applied here)");
    }
}
