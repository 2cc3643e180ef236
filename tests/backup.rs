//! `berth backup` / `berth restore`: a service's data comes back after its volume is gone (as
//! on a new VM), with its owners; a backup of a running service is consistent the way its
//! entry says. Real systemd --user, real rootless Podman.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn sh(container: &str, script: &str) -> String {
    let o = podman(&["exec", container, "sh", "-c", script]);
    assert!(o.status.success(), "{script}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn manifest(dir: &Path) -> serde_json::Value {
    let found: Vec<_> = std::fs::read_dir(dir)
        .expect("backup root")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    assert_eq!(found.len(), 1, "one backup in {}: {found:?}", dir.display());
    serde_json::from_slice(&std::fs::read(found[0].join("manifest.json")).expect("manifest"))
        .expect("json")
}

#[test]
fn a_restored_service_has_its_data_back_after_its_volume_was_removed() {
    let Some(_serial) = session("backup_restore") else {
        return;
    };
    let w = World::new(&["it-bk"]);
    w.catalog_file(
        "it-bk.toml",
        &web_service("it-bk", 18271).replace(
            "description = \"integration test page\"",
            "description = \"integration test page\"\nsecrets = [\"pw\"]",
        ),
    );
    let mut w = w;
    w.start_daemon();
    w.ok(&["enable", "it-bk"]);
    let token = format!("note-{}", std::process::id());
    sh("berth-it-bk", &format!("echo {token} > /data/note.txt"));
    // Files of another uid inside the container (its capabilities are dropped: set from
    // outside, in the user namespace).
    let mp = text(&podman(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        "berth-it-bk-data",
    ]));
    let o = podman(&[
        "unshare",
        "sh",
        "-c",
        "mkdir -p \"$1/sub\" && echo x > \"$1/sub/owned\" && chown -R 1000:1000 \"$1/sub\"",
        "sh",
        mp.trim(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let started = inspect("berth-it-bk", "{{.State.StartedAt}}");
    let root = w.dir.path().join("backups");
    let out = w.ok(&["backup", "it-bk", "--to", path_str(&root)]);
    assert!(out.contains("backed up to"), "{out}");
    let m = manifest(&root);
    assert_eq!(m["service"], "it-bk");
    assert_eq!(
        m["consistency"], "stopped",
        "the default stops it for the copy: {m}"
    );
    assert_eq!(m["volumes"][0]["podman"], "berth-it-bk-data");
    assert_eq!(m["entry"]["images"][0], "localhost/berth-demo:1");
    assert_ne!(
        inspect("berth-it-bk", "{{.State.StartedAt}}"),
        started,
        "stopped for the copy and started again"
    );
    assert_eq!(
        w.status("it-bk")["state"],
        "running",
        "running again after the backup"
    );

    assert_eq!(m["secrets"], true, "{m}");
    let secrets = w.dir.path().join("state/berth/secrets/it-bk.toml");
    let generated = std::fs::read(&secrets).expect("the service's generated secrets");

    // As on a new VM: the service, its volume and its secrets are gone.
    w.ok(&["disable", "it-bk"]);
    std::fs::remove_file(&secrets).expect("rm secrets");
    let rm = podman(&["volume", "rm", "berth-it-bk-data"]);
    assert!(rm.status.success(), "{}", text(&rm));

    let out = w.ok(&["restore", "it-bk", "--from", path_str(&root)]);
    assert!(out.contains("restoring it-bk"), "{out}");
    assert_eq!(
        w.status("it-bk")["state"],
        "running",
        "restore brings the service back"
    );
    assert_eq!(
        sh("berth-it-bk", "cat /data/note.txt"),
        token,
        "the data is back"
    );
    assert_eq!(
        std::fs::read(&secrets).expect("secrets restored"),
        generated,
        "the same secrets (a database opens only with the password it was made with)"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&secrets)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        sh("berth-it-bk", "stat -c %u:%g /data/sub/owned"),
        "1000:1000",
        "with the owners the container saw"
    );
    assert_page(18271);

    // A damaged backup changes nothing.
    let bdir: Vec<_> = std::fs::read_dir(&root)
        .expect("root")
        .flatten()
        .map(|e| e.path())
        .collect();
    let tar = bdir[0].join("volumes/data.tar");
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&tar)
        .expect("open tar");
    f.set_len(100).expect("truncate");
    let o = w.berth(&["restore", "it-bk", "--from", path_str(&root)]);
    assert!(!o.status.success(), "a damaged backup is refused");
    assert!(text(&o).contains("damaged"), "{}", text(&o));
    assert_eq!(
        sh("berth-it-bk", "cat /data/note.txt"),
        token,
        "nothing changed"
    );
    w.ok(&["disable", "it-bk"]);
    remove_volumes("it-bk");
}

#[test]
fn a_service_that_says_how_is_backed_up_live_after_its_command() {
    let Some(_serial) = session("backup_command") else {
        return;
    };
    let entry = web_service("it-bk-cmd", 18272).replace(
        "[[containers]]",
        "[backup]\nmode = \"command\"\ncontainer = \"web\"\ncommand = [\"sh\", \"-c\", \"echo dumped-$$ > /data/dump.txt\"]\n\n[[containers]]",
    );
    let mut w = World::new(&["it-bk-cmd"]);
    w.catalog_file("it-bk-cmd.toml", &entry);
    w.start_daemon();
    w.ok(&["enable", "it-bk-cmd"]);
    let started = inspect("berth-it-bk-cmd", "{{.State.StartedAt}}");
    let root = w.dir.path().join("backups");
    w.ok(&["backup", "it-bk-cmd", "--to", path_str(&root)]);
    let m = manifest(&root);
    assert_eq!(m["consistency"], "after-command", "{m}");
    assert_eq!(
        inspect("berth-it-bk-cmd", "{{.State.StartedAt}}"),
        started,
        "a live copy leaves the service running"
    );
    // The copy holds what the command wrote.
    let dumped = sh("berth-it-bk-cmd", "cat /data/dump.txt");
    let bdir: Vec<_> = std::fs::read_dir(&root)
        .expect("root")
        .flatten()
        .map(|e| e.path())
        .collect();
    let listing = run(
        "tar",
        &[
            "-xOf",
            path_str(&bdir[0].join("volumes/data.tar")),
            "./dump.txt",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        dumped,
        "{}",
        text(&listing)
    );
    w.ok(&["disable", "it-bk-cmd"]);
    remove_volumes("it-bk-cmd");
}

/// The complete backups (with a manifest) of `service` under `root`, oldest first.
fn complete(root: &Path, service: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("{service}-")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn schedule(w: &World) -> serde_json::Value {
    w.info()["backup_schedule"].clone()
}

#[test]
fn scheduled_backups_run_when_due_keep_the_newest_and_report_failures() {
    let Some(_serial) = session("backup_scheduled") else {
        return;
    };
    let mut w = World::new(&["it-bks"]);
    let root = w.dir.path().join("backups");
    w.config(&format!(
        "[web]\nenabled = false\n\n[backup]\ndir = \"{}\"\n",
        path_str(&root)
    ));
    w.catalog_file("it-bks.toml", &web_service("it-bks", 18273));
    w.start_daemon();
    w.ok(&["enable", "it-bks"]);
    sh("berth-it-bks", "echo kept > /data/note.txt");
    assert!(
        schedule(&w).is_null(),
        "no schedule without the policy's [backup]"
    );
    // The schedule comes with the policy, live (each run stops the service for its copy).
    let policy = w.etc().join("policy.toml");
    std::fs::write(&policy, "[backup]\nevery = \"3s\"\nkeep = 2\n").expect("policy");

    // Runs come due one after the other; only the newest two stay.
    let first = wait_for(Duration::from_secs(60), || {
        let s = schedule(&w);
        s["last_success"].as_u64().map(|t| (t, s))
    })
    .unwrap_or_else(|| {
        panic!(
            "a scheduled backup ran: {}\n{}",
            schedule(&w),
            w.daemon_log()
        )
    });
    assert_eq!(first.1["every"], 3);
    assert_eq!(first.1["keep"], 2);
    wait_for(Duration::from_secs(90), || {
        let s = schedule(&w);
        (s["last_success"].as_u64().is_some_and(|t| t >= first.0 + 6)
            && w.daemon_log().contains("removed it-bks-"))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "more runs, and pruning: {}\n{}",
            schedule(&w),
            w.daemon_log()
        )
    });
    let kept = complete(&root, "it-bks");
    assert_eq!(kept.len(), 2, "keep = 2: {kept:?}");
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join(&kept[1]).join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(m["service"], "it-bks");
    let metrics = w.metrics();
    assert!(
        metric(&metrics, "berth_backup_last_success_timestamp_seconds")
            .is_some_and(|t| t >= first.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "berth_backup_failing"), Some(0));

    // A run whose pre-backup command fails is reported (the entry's [backup], changed live:
    // its units stay as they are); once the command works again, the error goes.
    let entry = web_service("it-bks", 18273);
    w.catalog_file(
        "it-bks.toml",
        &entry.replace(
            "[[containers]]",
            "[backup]\nmode = \"command\"\ncontainer = \"web\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n\n[[containers]]",
        ),
    );
    let failed = wait_for(Duration::from_secs(60), || {
        let s = schedule(&w);
        s["error"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("the failure is seen: {}\n{}", schedule(&w), w.daemon_log()));
    assert!(failed.contains("failed"), "{failed}");
    assert_eq!(metric(&w.metrics(), "berth_backup_failing"), Some(1));
    w.catalog_file("it-bks.toml", &entry);
    wait_for(Duration::from_secs(60), || {
        schedule(&w)["error"].is_null().then_some(())
    })
    .unwrap_or_else(|| panic!("good again: {}\n{}", schedule(&w), w.daemon_log()));
    assert_eq!(
        w.status("it-bks")["state"],
        "running",
        "running again after every stop for a copy"
    );
    assert_eq!(sh("berth-it-bks", "cat /data/note.txt"), "kept");

    // The schedule goes with the policy's [backup], live.
    std::fs::write(&policy, "").expect("policy");
    wait_for(Duration::from_secs(20), || {
        schedule(&w).is_null().then_some(())
    })
    .unwrap_or_else(|| panic!("no schedule: {}", schedule(&w)));
    w.ok(&["disable", "it-bks"]);
    remove_volumes("it-bks");
}
