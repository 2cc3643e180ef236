//! `berth::podman` against the real Podman API of the current user.
//!
//! Needs `podman.socket` running for this user (`scripts/test-env` sets it up: as root it makes a
//! test user, so run this binary as that user). Without a socket these tests fail, unless
//! `BERTH_SKIP_PODMAN=1`, which turns them into loud skips. Containers and volumes are made with
//! the `podman` CLI, named after this process, and removed at the end of each test.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use berth::podman::{Podman, PodmanClient, PodmanError};
use tokio::process::Command;
use tokio::sync::{mpsc, OnceCell};

/// Built by `scripts/test-env`; imported here from busybox-static when missing.
const DEMO_IMAGE: &str = "localhost/berth-demo:1";
const LABEL: &str = "berth.test.podman-api";

/// The client, or None when the test should be skipped (only with BERTH_SKIP_PODMAN=1).
async fn client() -> Option<PodmanClient> {
    let missing = match PodmanClient::default_socket() {
        Some(socket) if socket.exists() => None,
        Some(socket) => Some(format!("no Podman socket at {}", socket.display())),
        None => Some("neither CONTAINER_HOST=unix://... nor XDG_RUNTIME_DIR is set".to_owned()),
    };
    if let Some(why) = missing {
        if std::env::var("BERTH_SKIP_PODMAN").is_ok_and(|v| v == "1") {
            // Straight to stderr: the test harness captures only the print macros.
            writeln!(
                std::io::stderr(),
                "\n*** SKIP podman_api: {why} (BERTH_SKIP_PODMAN=1) ***\n"
            )
            .expect("stderr");
            return None;
        }
        panic!(
            "{why}: start the API with `systemctl --user start podman.socket` \
             (scripts/test-env sets everything up), or set BERTH_SKIP_PODMAN=1 to skip"
        );
    }
    let socket = PodmanClient::default_socket()?;
    ensure_demo_image().await;
    Some(PodmanClient::new(socket))
}

/// Runs the podman CLI, panicking with its stderr when it fails; returns trimmed stdout.
async fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .await
        .expect("run the podman CLI");
    assert!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn ensure_demo_image() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let present = Command::new("podman")
            .args(["image", "exists", DEMO_IMAGE])
            .status()
            .await
            .expect("run the podman CLI");
        if !present.success() {
            import_busybox_image(DEMO_IMAGE).await;
        }
    })
    .await;
}

/// A minimal image: a static busybox with the applets these tests use.
async fn import_busybox_image(image: &str) {
    let busybox = find_in_path("busybox").expect("busybox on PATH (install busybox-static)");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("mkdir rootfs/bin");
    std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "sleep", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link applet");
    }
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .await
        .expect("run tar");
    assert!(status.success(), "tar failed");
    podman(&["import", &tar.to_string_lossy(), image]).await;
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn unique(tag: &str) -> String {
    format!("berth-podman-test-{}-{tag}", std::process::id())
}

/// Removes the container when the test ends, passed or not.
struct Container(String);

impl Container {
    async fn run(name: &str, extra: &[&str], script: &str) -> Self {
        let mut args = vec!["run", "-d", "--replace", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[DEMO_IMAGE, "sh", "-c", script]);
        podman(&args).await;
        Self(name.to_owned())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Drop cannot await; a blocking CLI call is fine at the end of a test.
        match std::process::Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: podman rm {} failed: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(err) => eprintln!("cleanup: podman rm {}: {err}", self.0),
        }
    }
}

/// Polls `check` until it returns Some, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ping_answers_a_version() {
    let Some(client) = client().await else { return };
    let version = client.ping().await.expect("ping");
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "version {version:?}"
    );
}

#[tokio::test]
async fn image_exists_for_demo_but_not_for_unknown_image() {
    let Some(client) = client().await else { return };
    assert!(client.image_exists(DEMO_IMAGE).await.expect("exists call"));
    assert!(!client
        .image_exists("localhost/berth-nope:1")
        .await
        .expect("exists call"));
}

#[tokio::test]
async fn pull_of_unknown_image_fails_with_podmans_message() {
    let Some(client) = client().await else { return };
    let (tx, mut rx) = mpsc::channel(64);
    let progress = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    let err = tokio::time::timeout(
        Duration::from_secs(120),
        client.pull("localhost/berth-nope:1", tx),
    )
    .await
    .expect("the failing pull ends")
    .expect_err("no registry serves this image");
    let lines = progress.await.expect("progress task");
    eprintln!("progress: {lines:?}\nerror: {err}");
    let PodmanError::Pull { image, message } = &err else {
        panic!("expected a pull error, got {err:?}");
    };
    assert_eq!(image, "localhost/berth-nope:1");
    assert!(!message.is_empty());
    assert!(
        err.to_string()
            .starts_with("pulling localhost/berth-nope:1 failed: "),
        "{err}"
    );
}

#[tokio::test]
async fn labelled_container_is_listed_inspected_and_logged() {
    let Some(client) = client().await else { return };
    let name = unique("run");
    let label = format!("{LABEL}={name}");
    let _container = Container::run(
        &name,
        &["--label", &label],
        "echo hello-from-berth; echo to-stderr >&2; exec sleep 600",
    )
    .await;

    let listed = client
        .list_by_label(LABEL, Some(&name))
        .await
        .expect("list by label and value");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].names, std::slice::from_ref(&name));
    assert_eq!(listed[0].state, "running");
    assert_eq!(listed[0].image, DEMO_IMAGE);
    assert_eq!(listed[0].labels.get(LABEL), Some(&name));
    assert!(listed[0].started_at > 0, "{listed:?}");
    let by_key = client
        .list_by_label(LABEL, None)
        .await
        .expect("list by label key");
    assert!(by_key.iter().any(|c| c.names.contains(&name)), "{by_key:?}");
    let other = client
        .list_by_label(LABEL, Some("no-such-value"))
        .await
        .expect("list by other value");
    assert!(other.is_empty(), "{other:?}");

    let inspect = client
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("container exists");
    assert_eq!(inspect.name, name);
    assert_eq!(inspect.id, listed[0].id);
    assert!(inspect.running);
    assert_eq!(inspect.status, "running");
    assert_eq!(inspect.image, DEMO_IMAGE);
    assert_eq!(inspect.health, None);
    assert_eq!(inspect.labels.get(LABEL), Some(&name));
    assert!(!inspect.started_at.starts_with("0001"), "{inspect:?}");

    let wanted = ["hello-from-berth", "to-stderr"];
    let lines = eventually(Duration::from_secs(10), || async {
        let lines = client.logs_tail(&name, 10).await.expect("logs");
        wanted
            .iter()
            .all(|w| lines.iter().any(|l| l == w))
            .then_some(lines)
    })
    .await
    .expect("both lines show up in the log");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let last = client.logs_tail(&name, 1).await.expect("logs");
    assert_eq!(last.len(), 1, "{last:?}");

    // Following a quiet log ends as soon as the receiver goes away.
    let (tx, mut rx) = mpsc::channel(16);
    let follower = client.clone();
    let follow_name = name.clone();
    let follow = tokio::spawn(async move { follower.logs_follow(&follow_name, 10, tx).await });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a line arrives");
    assert!(first.is_some());
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .expect("follow stops after the receiver is dropped")
        .expect("follow task")
        .expect("follow ends without error");
}

#[tokio::test]
async fn follow_ends_when_the_container_exits() {
    let Some(client) = client().await else { return };
    let name = unique("exit");
    let _container = Container::run(&name, &[], "echo one; sleep 1; echo two; exit 3").await;
    let (tx, mut rx) = mpsc::channel(16);
    let lines = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        lines
    });
    tokio::time::timeout(Duration::from_secs(30), client.logs_follow(&name, 100, tx))
        .await
        .expect("follow ends when the container exits")
        .expect("follow");
    assert_eq!(lines.await.expect("lines task"), ["one", "two"]);

    let inspect = eventually(Duration::from_secs(10), || async {
        let inspect = client.inspect(&name).await.expect("inspect")?;
        (!inspect.running).then_some(inspect)
    })
    .await
    .expect("the container is seen stopped");
    assert_eq!(inspect.status, "exited");
    assert_eq!(inspect.exit_code, 3);
}

#[tokio::test]
async fn health_is_reported_after_a_check_ran() {
    let Some(client) = client().await else { return };
    let name = unique("health");
    // No timer: the check runs only when asked, so the test does not depend on timing.
    let _container = Container::run(
        &name,
        &[
            "--health-cmd",
            "echo probe-ok",
            "--health-interval",
            "disable",
        ],
        "exec sleep 600",
    )
    .await;
    let before = client
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(before.health.as_deref(), Some("starting"), "{before:?}");
    podman(&["healthcheck", "run", &name]).await;
    let after = client
        .inspect(&name)
        .await
        .expect("inspect")
        .expect("exists");
    assert_eq!(after.health.as_deref(), Some("healthy"), "{after:?}");
    assert_eq!(after.failing_streak, 0);
    assert_eq!(after.last_health_output.as_deref(), Some("probe-ok"));
}

#[tokio::test]
async fn inspect_and_logs_of_a_missing_container() {
    let Some(client) = client().await else { return };
    let name = unique("never-created");
    assert_eq!(client.inspect(&name).await.expect("inspect"), None);
    let err = client
        .logs_tail(&name, 5)
        .await
        .expect_err("no such container");
    assert!(
        matches!(&err, PodmanError::Api { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test]
async fn volume_exists_follows_the_cli() {
    let Some(client) = client().await else { return };
    let name = unique("vol");
    assert!(!client.volume_exists(&name).await.expect("exists call"));
    podman(&["volume", "create", &name]).await;
    let exists = client.volume_exists(&name).await;
    podman(&["volume", "rm", "-f", &name]).await;
    assert!(exists.expect("exists call"));
}
