//! `berth setup` against a temporary root: what a first run does, that a second one changes
//! nothing and says so, and that bad input is refused with nothing changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;

/// Records commands; `useradd` adds the account to the temp root like the real one would.
#[derive(Debug, Default)]
struct FakeRunner {
    root: PathBuf,
    calls: Mutex<Vec<String>>,
}

impl Runner for FakeRunner {
    fn run(&self, cmd: &Command) -> Result<(), RunError> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(cmd.to_string());
        if cmd.program == "useradd" {
            let name = cmd.args.last().cloned().unwrap_or_default();
            add_user(&self.root, &name);
        }
        Ok(())
    }
}

impl FakeRunner {
    fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// An account owned by the uid running the tests, so chown works without root.
fn add_user(root: &Path, name: &str) {
    let (uid, gid) = (crate::sys::uid(), unsafe_free_gid());
    let line = format!("{name}:x:{uid}:{gid}::/home/{name}:/bin/bash\n");
    let passwd = root.join("etc/passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap_or_default();
    text.push_str(&line);
    std::fs::write(&passwd, text).expect("passwd");
    std::fs::create_dir_all(root.join("home").join(name)).expect("home");
}

fn unsafe_free_gid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .map(|m| m.gid())
        .unwrap_or(0)
}

struct Fixture {
    dir: tempfile::TempDir,
    /// Staged admin files live outside the root, as a test changes them between runs.
    stage: tempfile::TempDir,
    runner: FakeRunner,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .expect("passwd");
        // A range someone else has, so the new one must come after it.
        std::fs::write(root.join("etc/subuid"), "other:100000:65536\n").expect("subuid");
        std::fs::write(root.join("etc/subgid"), "other:100000:65536\n").expect("subgid");
        add_user(&root, "alice");
        let unit = root.join("usr/lib/systemd/user/berth.service");
        std::fs::create_dir_all(unit.parent().expect("dir")).expect("unit dir");
        std::fs::write(&unit, "[Unit]\n").expect("unit");
        let store = root.join("usr/lib/berth/images/overlay-images");
        std::fs::create_dir_all(&store).expect("store");
        std::fs::write(store.join("images.json"), "[]").expect("images.json");
        Fixture {
            runner: FakeRunner {
                root: root.clone(),
                calls: Mutex::default(),
            },
            dir,
            stage: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn opts(&self) -> Options {
        let mut o = Options::new(self.root());
        o.users = vec!["alice".into()];
        o
    }

    /// A staging directory with valid admin files.
    fn staged(&self) -> PathBuf {
        let s = self.stage.path().join("staged");
        std::fs::create_dir_all(s.join("catalog.d")).expect("staged");
        std::fs::write(
            s.join("config.toml"),
            "[push]\nurl = \"http://127.0.0.1:19180/v1/health\"\ninterval = \"1m\"\n",
        )
        .expect("config");
        std::fs::write(s.join("policy.toml"), "").expect("policy");
        std::fs::write(
            s.join("catalog.d/hello.toml"),
            "name = \"hello\"\ndescription = \"a test service\"\n\n[[containers]]\nname = \"web\"\n\
             image = \"localhost/berth-demo:1\"\n[[containers.ports]]\nname = \"http\"\nhost = 19181\n\
             container = 8080\n",
        )
        .expect("catalog");
        s
    }
}

/// Every file, directory and link below `root` with its content, target and mode.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            let rel = p.strip_prefix(root).expect("rel").to_path_buf();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).expect("link").display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                format!(
                    "file {:o} {:?} {}",
                    m.mode() & 0o7777,
                    std::fs::read_to_string(&p).unwrap_or_default(),
                    m.mtime_nsec()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

fn outcome(r: &Report, job: &str) -> Vec<Outcome> {
    r.steps
        .iter()
        .filter(|s| s.job == job)
        .map(|s| s.outcome)
        .collect()
}

#[test]
fn first_run_sets_up_and_second_run_changes_nothing() {
    let f = Fixture::new();
    let mut opts = f.opts();
    opts.admin_from = Some(f.staged());
    let r = run(&opts, &f.runner).expect("first run");
    assert!(r.changed, "{r}");
    for job in ["subuid", "subgid", "unit", "linger"] {
        assert_eq!(outcome(&r, job), vec![Outcome::Done], "{job}: {r}");
    }
    assert_eq!(outcome(&r, "admin"), vec![Outcome::Done; 3], "{r}");

    let root = f.root();
    let subuid = std::fs::read_to_string(root.join("etc/subuid")).expect("subuid");
    assert!(
        subuid.contains("alice:165536:65536\n"),
        "after the other range: {subuid}"
    );
    let subgid = std::fs::read_to_string(root.join("etc/subgid")).expect("subgid");
    assert!(subgid.contains("alice:165536:65536\n"), "{subgid}");
    assert!(!root.join("etc/subuid.lock").exists(), "lock released");
    let conf = std::fs::read_to_string(root.join("home/alice/.config/containers/storage.conf"))
        .expect("storage.conf");
    assert!(conf.contains("driver = \"overlay\""), "{conf}");
    assert!(
        conf.contains("additionalimagestores = [\"/usr/lib/berth/images\"]"),
        "{conf}"
    );
    let skel = std::fs::read_to_string(root.join("etc/skel/.config/containers/storage.conf"))
        .expect("skel");
    assert_eq!(skel, conf);
    let link = root.join("home/alice/.config/systemd/user/default.target.wants/berth.service");
    assert_eq!(
        std::fs::read_link(&link).expect("enabled"),
        Path::new("/usr/lib/systemd/user/berth.service")
    );
    assert!(root.join("var/lib/systemd/linger/alice").is_file());
    assert!(root.join("etc/berth/config.toml").is_file());
    assert!(root.join("etc/berth/catalog.d/hello.toml").is_file());
    assert!(
        f.runner.calls().is_empty(),
        "not live: no commands ({:?})",
        f.runner.calls()
    );

    // The parsed config and catalog are what the daemon will load.
    let cfg = crate::config::Config::load(&root.join("etc/berth/config.toml")).expect("config");
    assert!(cfg.push.is_some());
    let cat = crate::catalog::load(
        &crate::catalog::Layers::standard(&root.join("etc/berth")).expect("layers"),
    )
    .expect("catalog");
    assert!(cat.get("hello").is_some());

    let before = tree(root);
    let again = run(&opts, &f.runner).expect("second run");
    assert!(!again.changed, "{again}");
    assert!(
        again.steps.iter().all(|s| s.outcome != Outcome::Done),
        "{again}"
    );
    assert!(again
        .to_string()
        .ends_with("nothing to do: everything was set up already"));
    assert_eq!(tree(root), before, "the second run wrote nothing");
    let json = serde_json::to_value(&again).expect("json");
    assert_eq!(json["changed"], false);
    assert_eq!(json["steps"][0]["outcome"], "already");
}

#[test]
fn bad_admin_file_is_refused_with_its_location_and_nothing_changes() {
    let f = Fixture::new();
    let staged = f.staged();
    // Line 8 of the file: a privileged port.
    std::fs::write(
        staged.join("catalog.d/bad.toml"),
        "name = \"bad\"\ndescription = \"x\"\n\n[[containers]]\nname = \"web\"\n\
         image = \"localhost/berth-demo:1\"\n[[containers.ports]]\nhost = 80\ncontainer = 8080\nname = \"http\"\n",
    )
    .expect("bad");
    let mut opts = f.opts();
    opts.admin_from = Some(staged.clone());
    let before = tree(f.root());
    let e = run(&opts, &f.runner).expect_err("refused");
    let msg = e.to_string();
    assert!(e.changed_nothing());
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert!(
        msg.contains(&format!(
            "{}:8:8: containers[0].ports[0].host",
            staged.join("catalog.d/bad.toml").display()
        )),
        "{msg}"
    );
    assert_eq!(tree(f.root()), before, "nothing written");

    // A broken config.toml: the same, with its own line.
    std::fs::remove_file(staged.join("catalog.d/bad.toml")).expect("rm");
    std::fs::write(staged.join("config.toml"), "[push]\nurl = \"ftp://x\"\n").expect("config");
    let e = run(&opts, &f.runner).expect_err("refused");
    assert!(e.to_string().contains("config.toml:2:7: push.url"), "{e}");
    // A token file that is not there, and a stray file name.
    std::fs::write(
        staged.join("config.toml"),
        "[push]\nurl = \"https://fleet.example/v1\"\nbearer_token_file = \"/etc/berth/push.token\"\n",
    )
    .expect("config");
    std::fs::write(staged.join("polcy.toml"), "").expect("typo");
    let e = run(&opts, &f.runner).expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("push.bearer_token_file: /etc/berth/push.token does not exist"),
        "{msg}"
    );
    assert!(msg.contains("polcy.toml: unexpected file"), "{msg}");
    assert_eq!(tree(f.root()), before, "still nothing written");
    assert!(f.runner.calls().is_empty());
}

#[test]
fn unknown_user_is_refused_unless_created() {
    let f = Fixture::new();
    let mut opts = f.opts();
    opts.users = vec!["bob".into()];
    let before = tree(f.root());
    let e = run(&opts, &f.runner).expect_err("no bob");
    assert!(matches!(e, SetupError::NoUser(ref n) if n == "bob"), "{e}");
    assert_eq!(tree(f.root()), before);

    opts.create_users = true;
    let r = run(&opts, &f.runner).expect("created");
    assert_eq!(outcome(&r, "user"), vec![Outcome::Done]);
    let calls = f.runner.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("useradd -m -s /bin/bash --root "),
        "{calls:?}"
    );
    assert!(f.root().join("var/lib/systemd/linger/bob").exists());

    // Names that are not login names never reach useradd.
    opts.users = vec!["-o".into()];
    assert!(matches!(run(&opts, &f.runner), Err(SetupError::NoUser(_))));
}

#[test]
fn missing_unit_file_is_refused() {
    let f = Fixture::new();
    std::fs::remove_file(f.root().join("usr/lib/systemd/user/berth.service")).expect("rm");
    let before = tree(f.root());
    let e = run(&f.opts(), &f.runner).expect_err("no unit");
    assert!(matches!(e, SetupError::NoUnit(_)), "{e}");
    assert_eq!(tree(f.root()), before);

    // A test user needs no unit: everything else is done.
    let mut opts = f.opts();
    opts.enable_unit = false;
    let r = run(&opts, &f.runner).expect("no unit wanted");
    assert_eq!(outcome(&r, "unit"), vec![Outcome::Skipped]);
    assert_eq!(outcome(&r, "subuid"), vec![Outcome::Done]);
}

#[test]
fn default_users_are_the_regular_ones_and_none_is_fine() {
    let f = Fixture::new();
    std::fs::write(
        f.root().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n\
         debian:x:1000:1000::/home/debian:/bin/bash\n\
         alice:x:1001:1001::/home/alice:/bin/sh\n\
         svc:x:1002:1002::/var/lib/svc:/usr/sbin/nologin\n\
         daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
         nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
    )
    .expect("passwd");
    let opts = Options::new(f.root());
    let plan = users::plan(&opts).expect("plan");
    assert_eq!(plan.names(), ["debian", "alice"]);

    // An image root without users: machine-wide settings only, and no unit needed.
    let g = Fixture::new();
    std::fs::write(
        g.root().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
    )
    .expect("w");
    std::fs::remove_file(g.root().join("usr/lib/systemd/user/berth.service")).expect("rm");
    let r = run(&Options::new(g.root()), &g.runner).expect("no users");
    assert_eq!(outcome(&r, "users"), vec![Outcome::Skipped]);
    assert_eq!(outcome(&r, "storage"), vec![Outcome::Done], "skel: {r}");
}

#[test]
fn live_machine_uses_loginctl_and_starts_berth_in_a_running_manager() {
    let f = Fixture::new();
    let mut opts = f.opts();
    // Stale runtime directories without systemd as PID 1 (as on the development machines)
    // are no logind: the linger file is written by hand.
    opts.live = true;
    std::fs::create_dir_all(f.root().join("run/systemd/seats")).expect("stale");
    run(&opts, &f.runner).expect("run");
    assert!(f.runner.calls().is_empty(), "{:?}", f.runner.calls());
    assert!(f.root().join("var/lib/systemd/linger/alice").exists());
    std::fs::remove_file(f.root().join("var/lib/systemd/linger/alice")).expect("rm");
    std::fs::remove_file(
        f.root()
            .join("home/alice/.config/systemd/user/default.target.wants/berth.service"),
    )
    .expect("rm");

    opts.systemd_booted = true;
    for d in ["run/systemd/system", "run/systemd/seats"] {
        std::fs::create_dir_all(f.root().join(d)).expect("logind");
    }
    let uid = crate::sys::uid();
    std::fs::create_dir_all(f.root().join(format!("run/user/{uid}/systemd"))).expect("rt");
    std::fs::write(f.root().join(format!("run/user/{uid}/systemd/private")), "").expect("sock");
    run(&opts, &f.runner).expect("run");
    assert_eq!(
        f.runner.calls(),
        vec![
            "loginctl enable-linger alice".to_string(),
            "systemctl --user --machine=alice@.host start berth.service".to_string(),
        ]
    );
    assert!(
        !f.root().join("var/lib/systemd/linger/alice").exists(),
        "logind writes its own record"
    );
}

#[test]
fn foreign_storage_conf_is_left_alone_and_reported() {
    let f = Fixture::new();
    let conf = f.root().join("home/alice/.config/containers/storage.conf");
    std::fs::create_dir_all(conf.parent().expect("dir")).expect("mkdir");
    std::fs::write(&conf, "[storage]\ndriver = \"overlay\"\n").expect("w");
    let r = run(&f.opts(), &f.runner).expect("run");
    let step = r
        .steps
        .iter()
        .find(|s| s.job == "storage" && s.user.is_some())
        .expect("step");
    assert_eq!(step.outcome, Outcome::Skipped);
    assert!(
        step.detail.contains("additionalimagestores"),
        "{}",
        step.detail
    );
    assert_eq!(
        std::fs::read_to_string(&conf).expect("r"),
        "[storage]\ndriver = \"overlay\"\n"
    );
}

#[test]
fn symlinks_in_the_home_are_not_followed() {
    let f = Fixture::new();
    let elsewhere = f.root().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::os::unix::fs::symlink(&elsewhere, f.root().join("home/alice/.config")).expect("ln");
    let e = run(&f.opts(), &f.runner).expect_err("refused");
    assert!(e.to_string().contains("storage.conf for alice"), "{e}");
    let source = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(source.contains("is a symlink"), "{source}");
    assert_eq!(
        std::fs::read_dir(&elsewhere).expect("ls").count(),
        0,
        "nothing written through the link"
    );
}

#[test]
fn shared_store_is_listed_only_for_users_whose_ids_it_was_made_for() {
    let f = Fixture::new();
    let uid = crate::sys::uid();
    let gid = unsafe_free_gid();
    // Store made for alice's ids (the subids she gets: after `other`'s range).
    std::fs::write(
        f.root().join("usr/lib/berth/images/berth-store-ids"),
        format!("uid={uid} subid=165536 count=65536\n"),
    )
    .expect("ids");
    if uid != gid {
        // The fixture's account has the primary group of the test process.
        return;
    }
    let r = run(&f.opts(), &f.runner).expect("run");
    assert!(outcome(&r, "store").is_empty(), "fits: {r}");
    let conf = f.root().join("home/alice/.config/containers/storage.conf");
    assert!(std::fs::read_to_string(&conf)
        .expect("conf")
        .contains("additionalimagestores"));

    // Made for other ids: not listed, and the step says why.
    std::fs::write(
        f.root().join("usr/lib/berth/images/berth-store-ids"),
        "uid=4242 subid=100000 count=65536\n",
    )
    .expect("ids");
    let r = run(&f.opts(), &f.runner).expect("run");
    assert_eq!(outcome(&r, "store"), vec![Outcome::Skipped], "{r}");
    assert!(
        r.to_string().contains("would see those files as nobody's"),
        "{r}"
    );
    assert!(!std::fs::read_to_string(&conf)
        .expect("conf")
        .contains("additionalimagestores"));
}

#[test]
fn subid_ranges_follow_the_highest_in_use() {
    let text = "a:100000:65536\nb:300000:1000\n";
    assert_eq!(subids::end_of_all([text, "c:200000:65536\n"]), 301_000);
    let u = User {
        name: "b".into(),
        uid: 1001,
        gid: 1001,
        home: "/home/b".into(),
        shell: "/bin/bash".into(),
    };
    assert_eq!(subids::range_of(text, &u), Some((300_000, 1000)));
    assert_eq!(subids::range_of("1001:5:6\n", &u), Some((5, 6)), "by uid");
}
