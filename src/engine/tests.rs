//! The engine against in-memory edges: a systemd that keeps units running across engines, a
//! Podman whose containers are those units, files in memory and a clock that moves when told.
//! The catalog layers are real files in a temporary directory (the built-in catalog is there
//! too, all of it off).

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::{Choice, Event, Failure, ServiceStatus, State, Verb};
use tokio::task::JoinHandle;

use super::{Edges, Engine, EngineError, Handle};
use crate::paths::Paths;
use crate::proxy::ports::Engine as _;
use crate::testkit::{Call, ManualClock, MemFiles, MemPodman, MemSystemd};
use crate::units::RenderCtx;

/// The world of one test: edges that outlive any one engine, and the admin directory.
struct Rig {
    files: MemFiles,
    systemd: MemSystemd,
    podman: MemPodman,
    clock: ManualClock,
    paths: Paths,
    _etc: tempfile::TempDir,
}

/// A running engine: its handle and its task (abort it for a kill -9).
struct Running {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        drop(self.handle);
        let _ended = self.task.await;
    }

    fn kill(self) {
        self.task.abort();
    }
}

const IMAGE: &str = "localhost/berth-demo:1";

fn service(name: &str, port: u16) -> String {
    format!(
        r#"name = "{name}"
description = "a test service"

[[containers]]
name = "web"
image = "{IMAGE}"

[[containers.ports]]
name = "http"
host = {port}
container = 8080
"#
    )
}

fn unit(name: &str) -> String {
    format!("berth-{name}.service")
}

impl Rig {
    fn new() -> Rig {
        let etc = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(etc.path().join("catalog.d")).expect("catalog.d");
        let home = PathBuf::from("/home/u");
        let paths = Paths {
            state_dir: home.join(".local/state/berth"),
            unit_dir: home.join(".local/share/systemd/user"),
            runtime_dir: PathBuf::from("/run/user/1000/berth"),
            etc_dir: etc.path().to_path_buf(),
            config_dir: etc.path().join("user"),
            home,
        };
        let files = MemFiles::new();
        let systemd = MemSystemd::new(&files, &paths.unit_dir);
        let podman = MemPodman::new(&systemd);
        podman.add_images([IMAGE]);
        Rig {
            files,
            systemd,
            podman,
            clock: ManualClock::at(1_800_000_000),
            paths,
            _etc: etc,
        }
    }

    fn catalog(&self, file: &str, text: &str) {
        std::fs::write(self.paths.etc_dir.join("catalog.d").join(file), text).expect("write");
    }

    fn policy(&self, text: &str) {
        std::fs::write(self.paths.etc_dir.join("policy.toml"), text).expect("write policy");
    }

    /// The user's choices as a state file, before an engine starts.
    fn choose(&self, on: &[&str]) {
        let mut text = String::new();
        for s in on {
            text.push_str(&format!("[services.{s}]\nchoice = \"on\"\n"));
        }
        self.files.put(self.paths.state_file(), text);
    }

    fn edges(&self) -> Edges<MemSystemd, MemPodman, MemFiles, ManualClock> {
        Edges {
            systemd: self.systemd.clone(),
            podman: self.podman.clone(),
            files: self.files.clone(),
            clock: self.clock.clone(),
        }
    }

    async fn start(&self) -> Running {
        let (engine, handle) = Engine::new(self.edges(), self.paths.clone(), RenderCtx::default())
            .await
            .expect("engine");
        let task = tokio::spawn(engine.run());
        // The first pass, as the daemon makes it.
        handle.reconcile().await.expect("first pass");
        Running { handle, task }
    }
}

async fn status(h: &Handle, name: &str) -> ServiceStatus {
    h.status(Some(name))
        .await
        .expect("status")
        .pop()
        .expect("one status")
}

/// Waits (up to 5 s of real time) until `f` holds for the service's status.
async fn until(
    h: &Handle,
    name: &str,
    what: &str,
    f: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = status(h, name).await;
        if f(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {what}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn converges_from_nothing_and_a_second_pass_writes_nothing() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog("b.toml", &service("b", 19002));
    rig.choose(&["a", "b"]);
    let e = rig.start().await;
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    assert_eq!(rig.systemd.active(&unit("b")), "active");
    assert_eq!(status(&e.handle, "a").await.state, State::Running);
    assert!(rig.files.get(rig.paths.unit_dir.join(unit("a"))).is_some());

    rig.systemd.clear_calls();
    let writes = rig.files.writes();
    let r = e.handle.reconcile().await.expect("pass");
    assert!(r.applied.is_empty(), "{r:?}");
    assert_eq!(rig.systemd.calls(), [], "no systemd writes");
    assert_eq!(rig.files.writes(), writes, "no file writes");
    assert!(e.handle.plan().await.expect("plan").is_empty());
    e.stop().await;
}

#[tokio::test]
async fn killed_in_the_middle_of_an_apply_a_new_engine_converges_without_restarting() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog("b.toml", &service("b", 19002));
    rig.choose(&["a", "b"]);
    // `a` starts; the start of `b` is caught in the middle, and the engine dies there.
    rig.systemd.hold_start_of(&unit("b"));
    let (engine, handle) = Engine::new(rig.edges(), rig.paths.clone(), RenderCtx::default())
        .await
        .expect("engine");
    let task = tokio::spawn(engine.run());
    let first = tokio::spawn({
        let h = handle.clone();
        async move { h.reconcile().await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rig.systemd.calls().contains(&Call::Start(unit("b"))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            rig.systemd.calls()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (Running { handle, task }).kill();
    first.abort();
    assert_eq!(rig.systemd.active(&unit("a")), "active", "systemd keeps it");
    assert_eq!(rig.systemd.active(&unit("b")), "inactive");
    rig.systemd.release_starts();
    rig.systemd.clear_calls();

    let e = rig.start().await;
    assert_eq!(rig.systemd.starts(&unit("a")), 1, "a was not restarted");
    assert_eq!(rig.systemd.starts(&unit("b")), 1);
    assert_eq!(rig.systemd.active(&unit("b")), "active");
    let calls = rig.systemd.calls();
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Stop(_) | Call::Restart(_))),
        "{calls:?}"
    );
    e.stop().await;
}

#[tokio::test]
async fn a_failing_start_fails_that_service_only() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog("b.toml", &service("b", 19002));
    rig.systemd.fail_starts(&unit("a"), true);
    let e = rig.start().await;
    let r = e.handle.act("a", Verb::Enable).await.expect("enable a");
    let err = r.errors_of("a").expect("a's start failed");
    assert!(
        err.contains("berth-a.service did not start: job failed (exit-code)"),
        "{err}"
    );
    e.handle.act("b", Verb::Enable).await.expect("enable b");
    assert_eq!(rig.systemd.active(&unit("b")), "active");
    let a = status(&e.handle, "a").await;
    assert_eq!(a.state, State::Failed, "{a:?}");
    assert_eq!(a.failure, Some(Failure::Unit));
    assert_eq!(a.hint.as_deref(), Some("berth start a"));
    assert_eq!(status(&e.handle, "b").await.state, State::Running);
    e.stop().await;
}

#[tokio::test]
async fn enable_or_start_of_a_running_service_changes_nothing_and_restart_restarts() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    let e = rig.start().await;
    e.handle.act("a", Verb::Enable).await.expect("enable");
    assert_eq!(rig.systemd.starts(&unit("a")), 1);
    let writes = rig.files.writes();
    for verb in [Verb::Enable, Verb::Start, Verb::Enable] {
        let r = e.handle.act("a", verb).await.expect("again");
        assert!(r.applied.is_empty(), "{verb}: {r:?}");
        assert_eq!(rig.systemd.starts(&unit("a")), 1, "{verb} restarted it");
    }
    assert_eq!(
        rig.files.writes(),
        writes,
        "the choice was already on: nothing written"
    );
    let r = e.handle.act("a", Verb::Restart).await.expect("restart");
    assert_eq!(r.applied, ["write files of a", "restart berth-a.service"]);
    assert_eq!(rig.systemd.starts(&unit("a")), 2);
    e.stop().await;
}

#[tokio::test]
async fn a_broken_catalog_reload_tears_nothing_down_and_says_what_is_in_force() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    rig.catalog(
        "a.toml",
        "name = \"a\"\ndescription = \"x\"\ncolour = \"red\"\n",
    );
    let err = e.handle.reload().await.expect_err("broken");
    let msg = err.to_string();
    assert!(msg.contains("a.toml:3:1"), "{msg}");
    rig.systemd.clear_calls();
    e.handle.reconcile().await.expect("pass");
    assert_eq!(rig.systemd.calls(), [], "nothing stopped or started");
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    let info = e.handle.info().await.expect("info");
    assert!(info
        .catalog_error
        .as_deref()
        .is_some_and(|m| m.contains("a.toml:3:1")));
    assert!(
        info.catalog_in_force
            .as_deref()
            .is_some_and(|m| m.starts_with("the catalog in force before")),
        "{info:?}"
    );
    assert_eq!(status(&e.handle, "a").await.state, State::Running);
    e.stop().await;
}

#[tokio::test]
async fn a_broken_admin_file_at_boot_falls_back_to_the_last_good_catalog() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;
    assert_eq!(status(&e.handle, "a").await.state, State::Running);
    e.stop().await;

    // The VM reboots after an admin pushed a broken file.
    rig.catalog("a.toml", "name = \"a\"\ndescription = [\n");
    rig.systemd.clear_calls();
    let e = rig.start().await;
    let a = status(&e.handle, "a").await;
    assert_eq!(a.state, State::Running, "{a:?}");
    assert_eq!(a.choice, Choice::On);
    assert_eq!(
        rig.systemd.calls(),
        [],
        "nothing torn down, nothing restarted"
    );
    let info = e.handle.info().await.expect("info");
    let error = info.catalog_error.unwrap_or_default();
    assert!(error.contains("a.toml:"), "{error}");
    let in_force = info.catalog_in_force.unwrap_or_default();
    assert!(in_force.starts_with("the last good catalog"), "{in_force}");
    e.stop().await;
}

#[tokio::test]
async fn without_a_last_good_catalog_every_layer_that_validates_is_served() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog(
        "b.toml",
        "name = \"b\"\ndescription = \"b\"\n[[containers]]\nname = \"web\"\nimage = \"nope\"\n",
    );
    rig.choose(&["a", "b"]);
    let e = rig.start().await;
    assert_eq!(status(&e.handle, "a").await.state, State::Running);
    assert!(matches!(
        e.handle.status(Some("b")).await,
        Err(EngineError::UnknownService(_))
    ));
    let info = e.handle.info().await.expect("info");
    let error = info.catalog_error.unwrap_or_default();
    assert!(
        error.contains("b.toml:5:9"),
        "the broken field's place: {error}"
    );
    let in_force = info.catalog_in_force.unwrap_or_default();
    assert!(
        in_force.starts_with("every layer that validates") && in_force.contains("b.toml"),
        "{in_force}"
    );
    e.stop().await;
}

#[tokio::test]
async fn a_broken_policy_at_boot_without_a_good_copy_holds_everything() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.policy("denied_services = [\"a\"\n");
    rig.choose(&["a"]);
    let e = rig.start().await;
    assert_eq!(rig.systemd.calls(), [], "nothing applied");
    assert!(matches!(
        e.handle.act("a", Verb::Enable).await,
        Err(EngineError::Catalog(_))
    ));
    let info = e.handle.info().await.expect("info");
    assert!(info
        .catalog_in_force
        .unwrap_or_default()
        .starts_with("nothing"));
    e.stop().await;
}

#[tokio::test]
async fn a_port_clash_blames_the_admin_file_not_the_built_in_one() {
    let rig = Rig::new();
    // 5678 is the built-in n8n's port.
    // "mine" sorts before "n8n": the blame follows the layers, not the names.
    rig.catalog("mine.toml", &service("mine", 5678));
    let e = rig.start().await;
    let error = e
        .handle
        .info()
        .await
        .expect("info")
        .catalog_error
        .unwrap_or_default();
    assert!(error.contains("catalog.d/mine.toml:"), "{error}");
    assert!(
        error.contains("already taken by service \"n8n\""),
        "{error}"
    );
    // The built-in service stays; only the admin's new file is left out.
    assert!(e.handle.status(Some("n8n")).await.is_ok());
    assert!(e.handle.status(Some("mine")).await.is_err());
    e.stop().await;
}

#[tokio::test]
async fn a_crash_loop_ends_failed_and_only_the_user_starts_it_again() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    rig.files.put(
        rig.paths
            .in_home(".local/share/berth/services/a/logs/web.log"),
        "2026-12-01T00:00:00Z stderr F panic: no config\n",
    );
    let e = rig.start().await;
    rig.systemd.crash_loop(&unit("a"), 5);
    let a = status(&e.handle, "a").await;
    assert_eq!(a.state, State::Failed);
    let reason = a.reason.unwrap_or_default();
    assert!(
        reason.starts_with("crashed 5 times in a row (exit-code); restarts stopped"),
        "{reason}"
    );
    assert!(
        reason.contains("last log lines: panic: no config"),
        "{reason}"
    );
    e.handle.reconcile().await.expect("pass");
    assert_eq!(
        rig.systemd.starts(&unit("a")),
        1,
        "berth does not restart it"
    );
    e.handle.act("a", Verb::Start).await.expect("start");
    assert_eq!(rig.systemd.starts(&unit("a")), 2);
    assert_eq!(status(&e.handle, "a").await.state, State::Running);
    e.stop().await;
}

#[tokio::test]
async fn a_failed_pull_is_failed_with_its_reason_and_is_retried_only_when_the_user_acts() {
    let rig = Rig::new();
    let image = "registry.example/team/app:2";
    rig.catalog("p.toml", &service("p", 19003).replace(IMAGE, image));
    rig.podman
        .fail_pulls(image, Some("no route to registry.example"));
    let e = rig.start().await;
    e.handle.act("p", Verb::Enable).await.expect("enable");
    let p = until(&e.handle, "p", "failed", |s| s.state == State::Failed).await;
    assert_eq!(p.failure, Some(Failure::Pull));
    let reason = p.reason.unwrap_or_default();
    assert_eq!(
        reason,
        format!("cannot pull {image}: no route to registry.example")
    );
    assert_eq!(p.hint.as_deref(), Some("berth start p"));
    e.handle.reconcile().await.expect("pass");
    assert_eq!(rig.podman.pulls().len(), 1, "not retried by a pass");
    e.stop().await;

    // Nor by a restart of the daemon.
    let e = rig.start().await;
    let p = status(&e.handle, "p").await;
    assert_eq!(p.state, State::Failed);
    assert_eq!(rig.podman.pulls().len(), 1, "not retried after a restart");

    // The user acts: pulled again, and this time it works.
    rig.podman.fail_pulls(image, None);
    e.handle.act("p", Verb::Start).await.expect("start");
    until(&e.handle, "p", "running", |s| s.state == State::Running).await;
    assert_eq!(rig.podman.pulls().len(), 2);
    e.stop().await;
}

#[tokio::test]
async fn an_on_demand_service_starts_when_asked_and_stops_when_idle() {
    let rig = Rig::new();
    rig.catalog(
        "od.toml",
        &service("od", 19004).replace(
            "description = \"a test service\"",
            "description = \"x\"\non_demand = true",
        ),
    );
    let e = rig.start().await;
    e.handle.act("od", Verb::Enable).await.expect("enable");
    let st = status(&e.handle, "od").await;
    assert_eq!(st.state, State::Idle, "{st:?}");
    assert_eq!(rig.systemd.starts(&unit("od")), 0);
    e.handle.demand("od").await.expect("demand");
    assert_eq!(rig.systemd.active(&unit("od")), "active");
    assert_eq!(status(&e.handle, "od").await.state, State::Running);
    // A second client while it runs starts nothing.
    e.handle.demand("od").await.expect("demand again");
    assert_eq!(rig.systemd.starts(&unit("od")), 1);
    e.handle.idle("od").await;
    until(&e.handle, "od", "idle", |s| s.state == State::Idle).await;
    assert_eq!(rig.systemd.active(&unit("od")), "inactive");
    e.stop().await;
}

#[tokio::test]
async fn every_transition_is_an_event_after_a_first_snapshot() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    let e = rig.start().await;
    let (snap, mut rx) = e.handle.subscribe().await.expect("subscribe");
    assert!(snap
        .services
        .iter()
        .any(|s| s.name == "a" && s.state == State::Off));
    e.handle.act("a", Verb::Enable).await.expect("enable");
    let mut states = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        if let Event::Service { status, from, .. } = ev {
            if status.name == "a" {
                states.push((from, status.state));
            }
        }
    }
    assert_eq!(
        states.first(),
        Some(&(Some(State::Off), State::Running)),
        "{states:?}"
    );
    e.handle.act("a", Verb::Stop).await.expect("stop");
    let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    assert!(
        matches!(&ev, Ok(Ok(Event::Service { status, from: Some(State::Running), .. })) if status.state == State::Stopped),
        "{ev:?}"
    );
    e.stop().await;
}

#[tokio::test]
async fn a_stopped_podman_socket_shows_at_once_and_clears_when_it_is_back() {
    let rig = Rig::new();
    let e = rig.start().await;
    assert_eq!(e.handle.info().await.expect("info").podman_error, None);
    rig.systemd.set_podman_socket(Some(false));
    e.handle.status(None).await.expect("refresh");
    let err = e
        .handle
        .info()
        .await
        .expect("info")
        .podman_error
        .unwrap_or_default();
    assert!(err.contains("podman.socket is inactive"), "{err}");
    rig.systemd.set_podman_socket(Some(true));
    e.handle.status(None).await.expect("refresh");
    assert_eq!(e.handle.info().await.expect("info").podman_error, None);
    e.stop().await;
}

/// A property: whatever the user does and however units crash, the engine ends converged
/// and starts a unit exactly as often as the user's actions call for — never more.
mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Verb(usize, Verb),
        Crash(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let verb = prop_oneof![
            Just(Verb::Enable),
            Just(Verb::Disable),
            Just(Verb::Start),
            Just(Verb::Stop),
            Just(Verb::Restart),
        ];
        prop_oneof![
            4 => (0..2usize, verb).prop_map(|(s, v)| Step::Verb(s, v)),
            1 => (0..2usize).prop_map(Step::Crash),
        ]
    }

    /// What a service should be, and how many starts that took.
    #[derive(Debug, Clone, Copy)]
    struct Model {
        choice: Choice,
        running: bool,
        starts: u64,
    }

    impl Model {
        fn apply(&mut self, step: Step) {
            match step {
                Step::Verb(_, Verb::Enable | Verb::Start) => {
                    self.choice = Choice::On;
                    if !self.running {
                        self.running = true;
                        self.starts += 1;
                    }
                }
                Step::Verb(_, Verb::Restart) if self.choice != Choice::Off => {
                    self.choice = Choice::On;
                    self.running = true;
                    self.starts += 1;
                }
                Step::Verb(_, Verb::Stop) if self.choice != Choice::Off => {
                    self.choice = Choice::Stopped;
                    self.running = false;
                }
                Step::Verb(_, Verb::Disable) => {
                    self.choice = Choice::Off;
                    self.running = false;
                }
                // Stop or restart of a service that is off: refused, nothing changes.
                Step::Verb(_, _) => {}
                Step::Crash(_) => self.running = false,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn any_sequence_ends_converged_without_needless_starts(steps in proptest::collection::vec(step(), 1..14)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let rig = Rig::new();
                let names = ["pa", "pb"];
                rig.catalog("pa.toml", &service("pa", 19011));
                rig.catalog("pb.toml", &service("pb", 19012));
                let e = rig.start().await;
                let mut models = [Model { choice: Choice::Off, running: false, starts: 0 }; 2];
                for s in &steps {
                    match *s {
                        Step::Verb(i, v) => {
                            let r = e.handle.act(names[i], v).await;
                            if r.is_err() {
                                assert!(matches!(v, Verb::Stop | Verb::Restart), "{v}: {r:?}");
                            }
                            models[i].apply(*s);
                        }
                        Step::Crash(i) => {
                            if models[i].running {
                                rig.systemd.crash_loop(&unit(names[i]), 5);
                                models[i].apply(*s);
                            }
                            e.handle.reconcile().await.expect("pass");
                        }
                    }
                }
                e.handle.reconcile().await.expect("pass");
                for (i, name) in names.iter().enumerate() {
                    let m = models[i];
                    assert_eq!(rig.systemd.starts(&unit(name)), m.starts, "{name}: {steps:?}");
                    let active = rig.systemd.active(&unit(name)) == "active";
                    assert_eq!(active, m.running, "{name}: {steps:?}");
                    let st = status(&e.handle, name).await;
                    assert_eq!(st.choice, m.choice, "{name}: {steps:?}");
                }
                assert!(e.handle.plan().await.expect("plan").is_empty(), "converged: {steps:?}");
                e.stop().await;
            });
        }
    }
}

// ---- policy and live reload -----------------------------------------------------------------

/// Rings the watcher's bell and waits until `f` holds for the engine's info (5 s real time).
async fn after_change(h: &Handle, what: &str, f: impl Fn(&berth_proto::DaemonInfo) -> bool) {
    h.layers_changed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = h.info().await.expect("info");
        if f(&info) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_required_service_runs_unasked_and_cannot_be_turned_off() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.policy("\nrequired_services = [\"a\"]\n");
    let e = rig.start().await;
    assert_eq!(
        rig.systemd.active(&unit("a")),
        "active",
        "on without a choice"
    );
    let st = status(&e.handle, "a").await;
    assert!(st.locked, "{st:?}");
    assert_eq!(st.choice, Choice::On);
    for verb in [Verb::Disable, Verb::Stop] {
        match e.handle.act("a", verb).await {
            Err(EngineError::Required { service, rule }) => {
                assert_eq!(service, "a");
                assert!(rule.ends_with("policy.toml:2)"), "{rule}");
            }
            other => panic!("{verb}: {other:?}"),
        }
    }
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    e.handle
        .act("a", Verb::Restart)
        .await
        .expect("a restart is fine");
    e.stop().await;
}

#[tokio::test]
async fn a_refused_image_cannot_be_enabled_and_says_which_rule() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.policy("allowed_images = [\"registry.corp/*\"]\n");
    let e = rig.start().await;
    let err = e.handle.act("a", Verb::Enable).await.expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("image localhost/berth-demo:1 is not allowed by policy rule `allowed_images`")
            && msg.contains("policy.toml:1)"),
        "{msg}"
    );
    let st = status(&e.handle, "a").await;
    assert_eq!(st.state, State::Off);
    assert!(st.reason.unwrap_or_default().starts_with("refused: image"));
    assert_eq!(rig.systemd.calls(), []);
    e.stop().await;
}

#[tokio::test]
async fn a_refused_service_that_runs_is_stopped_when_the_policy_changes() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    rig.policy("allowed_images = [\"registry.corp/*\"]\n");
    after_change(&e.handle, "reloaded", |i| {
        i.catalog_serial.len() == 16 && i.catalog_error.is_none()
    })
    .await;
    let st = until(&e.handle, "a", "off", |s| s.state == State::Off).await;
    assert!(st.reason.unwrap_or_default().contains("allowed_images"));
    assert_ne!(rig.systemd.active(&unit("a")), "active");
    e.stop().await;
}

#[tokio::test]
async fn the_per_user_ceiling_refuses_the_service_that_would_pass_it() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog("b.toml", &service("b", 19002));
    rig.policy("[limits]\ncontainer_memory = \"1g\"\nuser_memory = \"1536m\"\n");
    let e = rig.start().await;
    e.handle.act("a", Verb::Enable).await.expect("1g fits");
    let err = e
        .handle
        .act("b", Verb::Enable)
        .await
        .expect_err("2g does not");
    assert!(err.to_string().contains("limits.user_memory"), "{err}");
    assert!(
        rig.files
            .text(rig.paths.unit_dir.join(unit("a")))
            .is_some_and(|u| u.contains("--memory=1g")),
        "the ceiling is the container's limit"
    );
    e.handle.act("a", Verb::Disable).await.expect("off");
    e.handle.act("b", Verb::Enable).await.expect("room again");
    e.stop().await;
}

#[tokio::test]
async fn a_changed_layer_is_applied_live_and_only_its_service_restarts() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.catalog("b.toml", &service("b", 19002));
    rig.choose(&["a", "b", "c"]);
    let e = rig.start().await;
    let serial = e.handle.info().await.expect("info").catalog_serial;
    rig.systemd.clear_calls();

    // Changed: b's environment (its unit changes) and a's stable port (the proxy's business:
    // a's unit stays the same); added: c. Nothing is asked of the engine but the bell.
    rig.catalog(
        "b.toml",
        &service("b", 19002).replace("image = ", "env = { MODE = \"fast\" }\nimage = "),
    );
    rig.catalog("a.toml", &service("a", 19009));
    rig.catalog("c.toml", &service("c", 19004));
    after_change(&e.handle, "reloaded", |i| i.catalog_serial != serial).await;
    until(&e.handle, "c", "running", |s| s.state == State::Running).await;
    let calls = rig.systemd.calls();
    assert!(calls.contains(&Call::Restart(unit("b"))), "{calls:?}");
    assert!(calls.contains(&Call::Start(unit("c"))), "{calls:?}");
    assert!(
        !calls.iter().any(
            |c| matches!(c, Call::Restart(u) | Call::Start(u) | Call::Stop(u) if u == &unit("a"))
        ),
        "a is untouched: {calls:?}"
    );

    // Removed: c goes with its file.
    std::fs::remove_file(rig.paths.etc_dir.join("catalog.d/c.toml")).expect("rm");
    let serial = e.handle.info().await.expect("info").catalog_serial;
    after_change(&e.handle, "reloaded", |i| i.catalog_serial != serial).await;
    assert!(matches!(
        e.handle.status(Some("c")).await,
        Err(EngineError::UnknownService(_))
    ));
    assert_ne!(rig.systemd.active(&unit("c")), "active");
    e.stop().await;
}

#[tokio::test]
async fn a_broken_change_is_reported_and_changes_nothing_and_a_bell_without_a_change_does_nothing()
{
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;
    // The loop's first ticks come at once; then it is quiet.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let passes = e.handle.info().await.expect("info").counters.passes;
    e.handle.layers_changed();
    tokio::time::sleep(super::run::LAYERS_DEBOUNCE * 3).await;
    assert_eq!(
        e.handle.info().await.expect("info").counters.passes,
        passes,
        "nothing changed on disk: no reload, no pass"
    );
    rig.systemd.clear_calls();
    rig.catalog(
        "a.toml",
        &service("a", 19001).replace("host = 19001", "host = 80"),
    );
    after_change(&e.handle, "rejected", |i| i.catalog_error.is_some()).await;
    let info = e.handle.info().await.expect("info");
    let err = info.catalog_error.unwrap_or_default();
    assert!(
        err.contains("a.toml:10:8: containers[0].ports[0].host"),
        "{err}"
    );
    assert_eq!(
        rig.systemd.calls(),
        [],
        "the last good catalog keeps running"
    );
    assert_eq!(rig.systemd.active(&unit("a")), "active");
    rig.catalog("a.toml", &service("a", 19001));
    after_change(&e.handle, "fixed", |i| i.catalog_error.is_none()).await;
    assert_eq!(
        rig.systemd.calls(),
        [],
        "the fixed file renders the same units"
    );
    e.stop().await;
}

#[tokio::test]
async fn a_user_catalog_counts_only_where_policy_allows() {
    let rig = Rig::new();
    let user = rig.paths.config_dir.join("catalog.d");
    std::fs::create_dir_all(&user).expect("user dir");
    std::fs::write(user.join("mine.toml"), service("mine", 19005)).expect("write");
    let e = rig.start().await;
    assert!(
        matches!(
            e.handle.status(Some("mine")).await,
            Err(EngineError::UnknownService(_))
        ),
        "not allowed by default"
    );
    let serial = e.handle.info().await.expect("info").catalog_serial;
    rig.policy("user_catalogs = true\n");
    after_change(&e.handle, "allowed", |i| i.catalog_serial != serial).await;
    let st = until(&e.handle, "mine", "listed", |_| true).await;
    assert_eq!(st.state, State::Off);
    e.handle.act("mine", Verb::Enable).await.expect("enable");
    assert_eq!(rig.systemd.active(&unit("mine")), "active");
    e.stop().await;
}

/// `services` as a remote catalog with `serial`.
fn remote_bundle(serial: u64, services: &[(&str, u16)]) -> crate::catalog::Source {
    let mut text = format!("[remote]\nserial = {serial}\nexpiry = \"2030-01-01T00:00:00Z\"\n");
    for (name, port) in services {
        text.push_str("\n[[services]]\n");
        text.push_str(&service(name, *port).replace("[[containers", "[[services.containers"));
    }
    crate::catalog::Source::new(
        crate::catalog::remote::source_path("https://c.example/catalog.toml"),
        text,
    )
}

#[tokio::test]
async fn a_remote_layer_is_validated_over_the_others_and_a_broken_one_changes_nothing() {
    use crate::remote::Engine as _;
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;

    // A dry run says what it would add and changes nothing.
    let a = e
        .handle
        .offer(remote_bundle(1, &[("r", 19002)]), true)
        .await
        .expect("dry run");
    assert_eq!(a.added, ["r"]);
    assert!(e.handle.catalog().get("r").is_none());

    let a = e
        .handle
        .offer(remote_bundle(1, &[("r", 19002)]), false)
        .await
        .expect("in force");
    assert_eq!(
        (a.added.as_slice(), a.removed.len()),
        (&["r".to_string()][..], 0)
    );
    let r = e
        .handle
        .catalog()
        .get("r")
        .cloned()
        .expect("r in the catalog");
    assert_eq!(r.origin.file, PathBuf::from("<remote>/catalog.toml"));
    e.handle.act("r", Verb::Enable).await.expect("enable");
    assert_eq!(rig.systemd.active(&unit("r")), "active");
    let starts = rig.systemd.starts(&unit("a"));

    // A port clash with the admin layer: refused with the bundle's line, nothing changes.
    let err = e
        .handle
        .offer(remote_bundle(2, &[("r", 19001)]), false)
        .await
        .expect_err("clash");
    assert!(
        err.contains("<remote>/catalog.toml:15:8: ports.http.host"),
        "{err}"
    );
    let ports: Vec<u16> = e
        .handle
        .catalog()
        .get("r")
        .expect("r")
        .ports()
        .map(|p| p.host)
        .collect();
    assert_eq!(ports, [19002]);
    assert_eq!(rig.systemd.active(&unit("r")), "active");

    // A reload of the admin files keeps the remote layer.
    e.handle.reload().await.expect("reload");
    assert!(e.handle.catalog().get("r").is_some());

    // A newer catalog without the service takes it away; `a` is not restarted by any of it.
    let a = e
        .handle
        .offer(remote_bundle(3, &[]), false)
        .await
        .expect("in force");
    assert_eq!(a.removed, ["r"]);
    assert!(e.handle.catalog().get("r").is_none());
    assert_eq!(rig.systemd.active(&unit("r")), "inactive");
    assert_eq!(rig.systemd.starts(&unit("a")), starts);
    e.stop().await;
}

/// A service with a health check whose start period is 5 s (a window of 5 + 1 + 1 s).
fn healthy_service(name: &str, port: u16, image: &str) -> String {
    format!(
        r#"name = "{name}"
description = "a test service with a health check"

[[containers]]
name = "web"
image = "{image}"

[containers.health]
cmd = "wget -q -O /dev/null http://127.0.0.1:8080/"
interval = "1s"
timeout = "1s"
retries = 3
start_period = "5s"

[[containers.ports]]
name = "http"
host = {port}
container = 8080
"#
    )
}

fn unit_text(rig: &Rig, name: &str) -> String {
    rig.files
        .text(rig.paths.unit_dir.join(unit(name)))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_image_that_never_becomes_healthy_is_rolled_back_and_not_retried() {
    let rig = Rig::new();
    rig.podman.tag("localhost/a:1", "id-a1");
    rig.podman.tag("localhost/a:2", "id-a2");
    rig.catalog("a.toml", &healthy_service("a", 19001, "localhost/a:1"));
    rig.catalog("b.toml", &service("b", 19002));
    rig.choose(&["a", "b"]);
    rig.podman.set_health("berth-a", "healthy");
    let e = rig.start().await;
    until(&e.handle, "a", "running", |s| s.state == State::Running).await;
    assert_eq!(rig.systemd.starts(&unit("a")), 1);

    // The admin names a new image; it runs but never passes its health check.
    rig.podman.set_image_health("id-a2", "unhealthy");
    rig.catalog("a.toml", &healthy_service("a", 19001, "localhost/a:2"));
    e.handle.reload().await.expect("reload");
    assert_eq!(rig.systemd.starts(&unit("a")), 2, "swapped");
    assert!(unit_text(&rig, "a").contains("localhost/a:2"));
    let st = status(&e.handle, "a").await;
    let u = st.update.clone().expect("an update under way");
    assert_eq!(u.state, berth_proto::UpdateState::Updating, "{st:?}");
    assert_eq!(u.from, ["id-a1"]);

    // Within the window nothing happens; after it, the old image runs again.
    rig.clock.advance(3);
    e.handle.reconcile().await.expect("pass");
    assert_eq!(rig.systemd.starts(&unit("a")), 2, "still in its window");
    rig.clock.advance(5);
    let st = until(&e.handle, "a", "rolled back", |s| {
        s.update
            .as_ref()
            .is_some_and(|u| u.state == berth_proto::UpdateState::RolledBack)
            && rig.systemd.starts(&unit("a")) == 3
    })
    .await;
    let u = st.update.clone().expect("update");
    assert_eq!(u.rollbacks, 1);
    let why = u.reason.clone().expect("a reason");
    assert!(
        why.starts_with("not healthy within 7s of the swap"),
        "{why}"
    );
    assert!(
        unit_text(&rig, "a").contains("id-a1"),
        "the unit runs the old image id"
    );
    assert!(!unit_text(&rig, "a").contains("localhost/a:2"));
    let st = until(&e.handle, "a", "running", |s| s.state == State::Running).await;
    assert!(
        st.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("rolled back to the previous image: not healthy")),
        "{st:?}"
    );
    assert_eq!(st.containers[0].image, "id-a1");
    assert_eq!(rig.systemd.starts(&unit("b")), 1, "b was not touched");

    // No retry loop: passes, health ticks and time change nothing.
    for _ in 0..3 {
        rig.clock.advance(60);
        e.handle.reconcile().await.expect("pass");
        status(&e.handle, "a").await;
    }
    assert_eq!(
        rig.systemd.starts(&unit("a")),
        3,
        "the bad image is not tried again"
    );

    // The hold and the count survive a restart of the daemon.
    e.stop().await;
    let e = rig.start().await;
    let st = status(&e.handle, "a").await;
    assert_eq!(rig.systemd.starts(&unit("a")), 3, "{st:?}");
    assert_eq!(st.update.as_ref().map(|u| u.rollbacks), Some(1));
    assert!(unit_text(&rig, "a").contains("id-a1"));
    assert_eq!(
        rig.files.mode(rig.paths.state_dir.join("rollouts.toml")),
        Some(0o600)
    );

    // Another image in the catalog lets go of the hold, and swaps from the old image.
    rig.podman.tag("localhost/a:3", "id-a3");
    rig.catalog("a.toml", &healthy_service("a", 19001, "localhost/a:3"));
    e.handle.reload().await.expect("reload");
    assert_eq!(rig.systemd.starts(&unit("a")), 4);
    let st = until(&e.handle, "a", "updated", |s| {
        s.update
            .as_ref()
            .is_some_and(|u| u.state == berth_proto::UpdateState::Updated)
    })
    .await;
    assert_eq!(
        st.update.as_ref().map(|u| u.from.clone()),
        Some(vec!["id-a1".to_string()])
    );
    e.stop().await;
}

#[tokio::test]
async fn update_of_an_unchanged_image_is_a_no_op_and_of_a_moved_tag_swaps() {
    let rig = Rig::new();
    let image = "registry.example/a:1";
    rig.podman.tag(image, "id-v1");
    rig.catalog("a.toml", &healthy_service("a", 19001, image));
    rig.choose(&["a"]);
    rig.podman.set_health("berth-a", "healthy");
    let e = rig.start().await;
    until(&e.handle, "a", "running", |s| s.state == State::Running).await;
    rig.systemd.clear_calls();

    let a = e.handle.update(Some("a")).await.expect("update");
    assert_eq!(a.services.len(), 1);
    assert_eq!(
        a.services[0].result,
        berth_proto::UpdateResult::Current,
        "{a:?}"
    );
    assert_eq!(
        a.services[0].message,
        "already current: registry.example/a:1 is id-v1"
    );
    assert_eq!(rig.podman.pulls(), [image], "pulled first");
    assert_eq!(rig.systemd.calls(), [], "nothing restarted");
    assert_eq!(rig.systemd.starts(&unit("a")), 1);

    // The registry's tag moved: the pull brings the new image, and the service swaps to it.
    rig.podman.tag(image, "id-v2");
    let a = e.handle.update(None).await.expect("update all");
    assert_eq!(
        a.services[0].result,
        berth_proto::UpdateResult::Updated,
        "{a:?}"
    );
    assert_eq!(
        a.services[0].message,
        "updated from id-v1 to id-v2 (registry.example/a:1)"
    );
    assert_eq!(rig.systemd.starts(&unit("a")), 2);
    let st = status(&e.handle, "a").await;
    assert_eq!(
        st.update.map(|u| u.state),
        Some(berth_proto::UpdateState::Updated)
    );

    // Unknown and not enabled services are errors, not outcomes.
    assert!(matches!(
        e.handle.update(Some("nope")).await,
        Err(EngineError::UnknownService(_))
    ));
    e.stop().await;
}

#[tokio::test]
async fn update_of_a_moved_tag_that_never_becomes_healthy_rolls_back_and_says_why() {
    let rig = Rig::new();
    rig.podman.tag("localhost/a:1", "id-good");
    rig.catalog("a.toml", &healthy_service("a", 19001, "localhost/a:1"));
    rig.choose(&["a"]);
    rig.podman.set_health("berth-a", "healthy");
    let e = rig.start().await;
    until(&e.handle, "a", "running", |s| s.state == State::Running).await;
    rig.podman.tag("localhost/a:1", "id-bad");
    rig.podman.set_image_health("id-bad", "unhealthy");
    let h = e.handle.clone();
    let asked = tokio::spawn(async move { h.update(Some("a")).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rig.systemd.starts(&unit("a")) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never swapped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.clock.advance(10);
    let a = asked.await.expect("joined").expect("update");
    assert_eq!(
        a.services[0].result,
        berth_proto::UpdateResult::RolledBack,
        "{a:?}"
    );
    assert!(
        a.services[0]
            .message
            .starts_with("rolled back to id-good: not healthy within 7s"),
        "{a:?}"
    );
    until(&e.handle, "a", "back on the old image", |_| {
        rig.systemd.starts(&unit("a")) == 3 && unit_text(&rig, "a").contains("id-good")
    })
    .await;
    // The tag still names the bad image: nothing tries it again by itself.
    rig.clock.advance(120);
    e.handle.reconcile().await.expect("pass");
    assert_eq!(rig.systemd.starts(&unit("a")), 3);
    e.stop().await;
}

#[tokio::test]
async fn update_of_a_pinned_image_says_so_and_does_nothing() {
    let rig = Rig::new();
    let pinned = format!("registry.example/a@sha256:{}", "c".repeat(64));
    rig.podman.add_images([pinned.as_str()]);
    rig.catalog("a.toml", &service("a", 19001).replace(IMAGE, &pinned));
    rig.choose(&["a"]);
    let e = rig.start().await;
    assert!(unit_text(&rig, "a").contains(&pinned), "rendered as it is");
    rig.systemd.clear_calls();
    let a = e.handle.update(Some("a")).await.expect("update");
    assert_eq!(
        a.services[0].result,
        berth_proto::UpdateResult::Pinned,
        "{a:?}"
    );
    assert_eq!(
        a.services[0].message,
        format!("pinned to {pinned}; nothing to update")
    );
    assert_eq!(rig.podman.pulls(), Vec::<String>::new(), "nothing pulled");
    assert_eq!(rig.systemd.calls(), [], "nothing restarted");
    e.stop().await;
}

#[tokio::test]
async fn a_new_image_missing_locally_is_pulled_before_the_running_service_swaps() {
    let rig = Rig::new();
    rig.catalog("a.toml", &service("a", 19001));
    rig.choose(&["a"]);
    let e = rig.start().await;
    let gate = rig.podman.hold_pulls();
    rig.systemd.clear_calls();
    rig.catalog(
        "a.toml",
        &service("a", 19001).replace(IMAGE, "registry.example/a:2"),
    );
    e.handle.reload().await.expect("reload");
    assert_eq!(rig.podman.pulls(), ["registry.example/a:2"]);
    assert_eq!(
        rig.systemd.calls(),
        [],
        "the old container keeps running while it pulls"
    );
    assert!(
        unit_text(&rig, "a").contains(IMAGE),
        "units unchanged until the pull is done"
    );
    let st = status(&e.handle, "a").await;
    assert_eq!(st.state, State::Running, "{st:?}");
    gate.notify_one();
    until(&e.handle, "a", "swapped", |_| {
        rig.systemd.starts(&unit("a")) == 2
    })
    .await;
    assert!(unit_text(&rig, "a").contains("registry.example/a:2"));
    e.stop().await;
}
