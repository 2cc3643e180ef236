//! Image updates against the real systemd user manager and rootless Podman, with images built
//! on the machine (no registry is reachable): a catalog change to an image that never becomes
//! healthy is rolled back and the old container serves again; `berth update NAME` after a tag
//! moved swaps to the new image; a pinned digest is left alone. Ports 18291–18299.

mod common;

use std::time::Duration;

use common::*;

/// Builds `tag` from the demo image with the Containerfile lines `extra` (no RUN: nothing
/// runs during the build) and returns its image id.
fn build(tag: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Containerfile"),
        format!("FROM localhost/berth-demo:1\n{extra}\n"),
    )
    .expect("Containerfile");
    let o = podman(&["build", "-q", "-t", tag, path_str(dir.path())]);
    assert!(o.status.success(), "podman build {tag}: {}", text(&o));
    image_id(tag)
}

fn image_id(image: &str) -> String {
    let o = podman(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Removes the images a test built, after its world (declared first, dropped last).
struct Images(Vec<&'static str>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _best_effort = podman(&["rmi", "-f", i]);
        }
    }
}

/// The demo page with a health check that asks it for its page.
fn checked(name: &str, port: u16, image: &str) -> String {
    format!(
        "{}\n[containers.health]\ncmd = \"wget -q -O /dev/null http://127.0.0.1:8080/\"\ninterval = \"1s\"\ntimeout = \"1s\"\nretries = 2\nstart_period = \"3s\"\n",
        web_service(name, port).replace("localhost/berth-demo:1", image)
    )
}

fn container_image(service: &str) -> Option<String> {
    inspect(&format!("berth-{service}"), "{{.Image}}")
}

fn started_at(service: &str) -> Option<String> {
    inspect(&format!("berth-{service}"), "{{.State.StartedAt}}")
}

fn short(id: &str) -> &str {
    &id[..12]
}

#[test]
fn a_catalog_image_that_never_becomes_healthy_is_rolled_back_and_the_old_container_serves() {
    let Some(_serial) = session("update_rollback") else {
        return;
    };
    let _images = Images(vec!["localhost/it-upd-bad:1"]);
    // Runs, but serves nothing: its health check never passes.
    let bad = build(
        "localhost/it-upd-bad:1",
        "CMD [\"/bin/sleep\", \"infinity\"]",
    );
    let good = image_id("localhost/berth-demo:1");
    let mut w = World::new(&["it-upd-a", "it-upd-b"]);
    w.catalog_file(
        "it-upd-a.toml",
        &checked("it-upd-a", 18291, "localhost/berth-demo:1"),
    );
    w.catalog_file("it-upd-b.toml", &web_service("it-upd-b", 18292));
    w.start_daemon();
    w.ok(&["enable", "it-upd-a", "--settle", "0"]);
    w.ok(&["enable", "it-upd-b", "--settle", "0"]);
    assert_page(18291);
    assert_page(18292);
    let b_started = started_at("it-upd-b").expect("b runs");
    assert_eq!(container_image("it-upd-a").as_deref(), Some(good.as_str()));

    // The admin names the new image; the daemon sees the write and swaps.
    w.catalog_file(
        "it-upd-a.toml",
        &checked("it-upd-a", 18291, "localhost/it-upd-bad:1"),
    );
    let swapped = wait_for(Duration::from_secs(20), || {
        (container_image("it-upd-a").as_deref() == Some(bad.as_str())).then_some(())
    });
    assert!(swapped.is_some(), "never swapped:\n{}", w.daemon_log());
    let st = w.status("it-upd-a");
    assert_eq!(st["update"]["state"], "updating", "{st}");

    // Its window (start period 3 s + one check) passes: the old image runs again.
    let st = wait_for(Duration::from_secs(60), || {
        let st = w.status("it-upd-a");
        (st["update"]["state"] == "rolled_back"
            && st["state"] == "running"
            && container_image("it-upd-a").as_deref() == Some(good.as_str()))
        .then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "never rolled back: {}\n--- daemon log ---\n{}",
            w.status("it-upd-a"),
            w.daemon_log()
        )
    });
    println!("rolled back: {st}");
    let why = st["update"]["reason"].as_str().unwrap_or_default();
    assert!(why.starts_with("not healthy within 5s of the swap"), "{st}");
    assert_eq!(st["update"]["rollbacks"], 1, "{st}");
    assert_page(18291);
    let ls = w.ok(&["ls"]);
    assert!(ls.contains("rolled back to the previous image"), "{ls}");
    let detail = w.ok(&["status", "it-upd-a"]);
    assert!(detail.contains("update:  rolled back"), "{detail}");
    let m = w.metrics();
    assert_eq!(
        metric(&m, r#"berth_update_rollbacks_total{service="it-upd-a"}"#),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"berth_service_update{service="it-upd-a",state="rolled_back"}"#
        ),
        Some(1),
        "{m}"
    );
    assert_eq!(
        started_at("it-upd-b").as_deref(),
        Some(b_started.as_str()),
        "only the changed service restarted"
    );

    // No retry loop: the bad image is not tried again, not even after a restart of berth.
    let back_at = started_at("it-upd-a").expect("a runs");
    std::thread::sleep(Duration::from_secs(8));
    w.ok(&["reconcile"]);
    w.stop_daemon();
    w.start_daemon();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(started_at("it-upd-a").as_deref(), Some(back_at.as_str()));
    assert_eq!(container_image("it-upd-a").as_deref(), Some(good.as_str()));
    let st = w.status("it-upd-a");
    assert_eq!(st["update"]["state"], "rolled_back", "{st}");
    assert_eq!(st["update"]["rollbacks"], 1, "kept across restarts: {st}");
    assert_page(18291);
}

#[test]
fn update_after_a_tag_moved_swaps_to_the_new_image_and_says_so() {
    let Some(_serial) = session("update_retag") else {
        return;
    };
    let _images = Images(vec!["localhost/it-upd-web:1"]);
    let nonce = std::process::id();
    let first = build(
        "localhost/it-upd-web:1",
        &format!("LABEL it.update=first-{nonce}"),
    );
    let mut w = World::new(&["it-upd-c"]);
    w.catalog_file(
        "it-upd-c.toml",
        &web_service("it-upd-c", 18293).replace("localhost/berth-demo:1", "localhost/it-upd-web:1"),
    );
    w.start_daemon();
    w.ok(&["enable", "it-upd-c", "--settle", "0"]);
    assert_page(18293);
    let out = w.ok(&["update", "it-upd-c"]);
    assert!(
        out.contains(&format!(
            "it-upd-c: already current: localhost/it-upd-web:1 is {}",
            short(&first)
        )),
        "{out}"
    );

    // The same tag now names another build.
    let second = build(
        "localhost/it-upd-web:1",
        &format!("LABEL it.update=second-{nonce}"),
    );
    assert_ne!(first, second);
    assert_eq!(
        container_image("it-upd-c").as_deref(),
        Some(first.as_str()),
        "nothing changes by itself"
    );
    let out = w.ok(&["update", "it-upd-c"]);
    assert!(
        out.contains(&format!(
            "it-upd-c: updated from {} to {} (localhost/it-upd-web:1)",
            short(&first),
            short(&second)
        )),
        "{out}\n{}",
        w.daemon_log()
    );
    assert_eq!(
        container_image("it-upd-c").as_deref(),
        Some(second.as_str())
    );
    assert_page(18293);
    let st = w.status("it-upd-c");
    assert_eq!(st["update"]["state"], "updated", "{st}");
    let out = w.ok(&["update"]);
    assert!(out.contains("it-upd-c: already current"), "{out}");
}

#[test]
fn update_of_a_pinned_digest_says_pinned_and_changes_nothing() {
    let Some(_serial) = session("update_pinned") else {
        return;
    };
    let o = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        "localhost/berth-demo:1",
    ]);
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{}", text(&o));
    let pinned = format!("localhost/berth-demo@{digest}");
    let mut w = World::new(&["it-upd-p"]);
    w.catalog_file(
        "it-upd-p.toml",
        &web_service("it-upd-p", 18294).replace("localhost/berth-demo:1", &pinned),
    );
    w.start_daemon();
    w.ok(&["enable", "it-upd-p", "--settle", "0"]);
    assert_page(18294);
    let unit = std::fs::read_to_string(unit_file("berth-it-upd-p.service")).expect("unit");
    assert!(unit.contains(&pinned), "rendered as written:\n{unit}");
    let started = started_at("it-upd-p").expect("runs");
    let out = w.ok(&["update", "it-upd-p"]);
    assert!(
        out.contains(&format!("it-upd-p: pinned to {pinned}; nothing to update")),
        "{out}"
    );
    assert_eq!(started_at("it-upd-p").as_deref(), Some(started.as_str()));

    // A malformed digest is refused with its file, line and field.
    let broken = w.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        web_service("it-upd-p", 18294)
            .replace("localhost/berth-demo:1", "localhost/berth-demo@sha256:abc"),
    )
    .expect("write");
    let o = w.berth(&["catalog", "validate", path_str(&broken)]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("broken.toml:6:")
            && t.contains("containers[0].image")
            && t.contains("64 lowercase hex digits"),
        "{t}"
    );
}
