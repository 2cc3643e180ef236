//! `berth setup`: the root-side work that makes a machine ready for berth, run by cloud-init at
//! first boot of the workspace template, by image builds (in a chroot) and by the development
//! scripts. Idempotent: a second run finds everything done and says so.
//!
//! Jobs, one file each:
//! - [`admin`]: the admin files (`/etc/berth/config.toml`, `policy.toml`, `catalog.d/`) copied
//!   from a staging directory only after the whole result validated;
//! - [`storage`]: Podman's storage settings for rootless users (overlay, the shared read-only
//!   image store) in each user's `storage.conf` and in `/etc/skel` for users made later;
//! - [`subids`]: `/etc/subuid` and `/etc/subgid` ranges;
//! - [`unit`]: berth's user unit enabled for the user (the symlink `systemctl --user enable`
//!   makes, so it works in a chroot and before the user ever logged in);
//! - [`linger`]: the user's manager started at boot (`loginctl enable-linger`, or the linger
//!   file where logind is not running).
//!
//! Everything is read and validated before anything is written: bad admin files, unknown users
//! or a missing unit file stop the run with nothing changed. The filesystem root is a parameter
//! ([`Options::root`]), so the unit tests run against a temporary directory; the few commands
//! that cannot be replaced by file edits (`useradd`, `loginctl`, `systemctl`, `podman system
//! migrate`) go through the [`Runner`] trait.
//!
//! Limits: users are looked up in `<root>/etc/passwd` (local accounts, as cloud-init makes
//! them), not through NSS; Podman's settings for machines without systemd as PID 1 (runc,
//! ulimits, `/dev/net/tun`) are the development scripts' business, not this one's.

pub mod admin;
pub mod cli;
pub mod home;
pub mod linger;
pub mod storage;
pub mod subids;
pub mod unit;
pub mod users;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::catalog::Diagnostic;

pub use self::home::HomeError;
pub use self::users::User;

/// Where the build puts preloaded images: a read-only Podman store shared by every user.
pub const IMAGE_STORE: &str = "/usr/lib/berth/images";

/// Marker put into every file setup writes, so later runs know the file is theirs to update.
pub const MARK: &str = "written by berth setup";

/// What to set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The filesystem root to work on (`/`, or an image's root in a chroot-less build or test).
    pub root: PathBuf,
    /// Users to set up; empty means every regular user of the machine (which includes
    /// cloud-init's default user), possibly none (then only the machine-wide jobs run).
    pub users: Vec<String>,
    /// Create named users that do not exist (`useradd -m`), instead of refusing.
    pub create_users: bool,
    /// Enable berth's user unit for the users (off for a test user whose tests start their own
    /// daemons).
    pub enable_unit: bool,
    /// Only the machine-wide jobs, whatever users exist (an image build, where the build's
    /// own login user is no workspace user).
    pub machine_only: bool,
    /// A directory with admin files to validate and put in place (`config.toml`,
    /// `policy.toml`, `catalog.d/*.toml`).
    pub admin_from: Option<PathBuf>,
    /// The shared image store as seen from inside the root; listed only where it exists.
    pub image_store: PathBuf,
    /// The root is the running machine, so commands (`loginctl`, `systemctl`, `podman`) may
    /// act on it; false for an image's root, where only files are written.
    pub live: bool,
    /// PID 1 of the running machine is systemd, so logind and user managers are real ones
    /// (the development machines run a user manager without it, and keep stale `/run/systemd`
    /// directories that prove nothing).
    pub systemd_booted: bool,
}

impl Options {
    pub fn new(root: impl Into<PathBuf>) -> Options {
        let root = root.into();
        let live = root == Path::new("/");
        let systemd_booted =
            live && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
        Options {
            live,
            systemd_booted,
            root,
            users: Vec::new(),
            create_users: false,
            machine_only: false,
            enable_unit: true,
            admin_from: None,
            image_store: PathBuf::from(IMAGE_STORE),
        }
    }

    /// `abs` (a path on the target machine) below [`Options::root`].
    pub fn at(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// True when working on the running machine itself (commands may act on it).
    pub fn live(&self) -> bool {
        self.live
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Changed something.
    Done,
    /// Found it done already; nothing written.
    Already,
    /// Not applicable here (the reason is in the detail).
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Already => "already",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One thing setup did or found done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub job: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub outcome: Outcome,
    pub detail: String,
}

/// What a run did, in order (`berth setup --json` prints it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// True when any step changed something.
    pub changed: bool,
    pub steps: Vec<Step>,
}

impl Report {
    fn push(&mut self, job: &'static str, user: Option<&str>, outcome: Outcome, detail: String) {
        self.changed |= outcome == Outcome::Done;
        self.steps.push(Step {
            job,
            user: user.map(str::to_string),
            outcome,
            detail,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            let who = s
                .user
                .as_deref()
                .map(|u| format!(" {u}"))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<8} {}{}: {}",
                s.outcome.as_str(),
                s.job,
                who,
                s.detail
            )?;
        }
        if self.changed {
            write!(f, "setup changed the machine")
        } else {
            write!(f, "nothing to do: everything was set up already")
        }
    }
}

/// Why setup stopped. Everything detected before the first write stops it with nothing
/// changed ([`SetupError::changed_nothing`]).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{} problem{} in the admin files, nothing was changed:\n  {}",
        .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no such user {0:?} in /etc/passwd (create it first, e.g. with cloud-init's `users:`, or pass --create-users); nothing was changed")]
    NoUser(String),
    #[error("berth's user unit is not installed (looked for {}); nothing was changed",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoUnit(Vec<PathBuf>),
    #[error("{what} for {user}")]
    Home {
        user: String,
        what: &'static str,
        #[source]
        source: HomeError,
    },
    #[error("`{command}` failed")]
    Command {
        command: String,
        #[source]
        source: RunError,
    },
    #[error("{} is held by another process (another setup or useradd?)", path.display())]
    Locked { path: PathBuf },
}

impl SetupError {
    /// True for the errors found before anything was written.
    pub fn changed_nothing(&self) -> bool {
        matches!(
            self,
            SetupError::Invalid(_) | SetupError::NoUser(_) | SetupError::NoUnit(_)
        )
    }
}

/// A command to run on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    /// Run as this user (uid, gid, home) with a clean environment, instead of root.
    pub as_user: Option<(u32, u32, PathBuf)>,
}

impl Command {
    pub fn new(program: &str, args: &[&str]) -> Command {
        Command {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            as_user: None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start it")]
    Spawn(#[source] std::io::Error),
    #[error("it exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
}

/// The commands setup runs: the one side effect that is not a file under [`Options::root`].
pub trait Runner {
    fn run(&self, cmd: &Command) -> Result<(), RunError>;
}

/// Runs commands for real; as another user through `setpriv` (no PAM session, exact exit code).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealRunner;

impl Runner for RealRunner {
    fn run(&self, cmd: &Command) -> Result<(), RunError> {
        let mut c = match &cmd.as_user {
            None => {
                let mut c = std::process::Command::new(&cmd.program);
                c.args(&cmd.args);
                c
            }
            Some((uid, gid, home)) => {
                let mut c = std::process::Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("env")
                    .arg("-i")
                    .arg(format!("HOME={}", home.display()))
                    .arg("PATH=/usr/local/bin:/usr/bin:/bin")
                    .arg(&cmd.program)
                    .args(&cmd.args)
                    .current_dir(home);
                c
            }
        };
        let out = c
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(RunError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(RunError::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

fn run_cmd(runner: &dyn Runner, cmd: Command) -> Result<(), SetupError> {
    runner.run(&cmd).map_err(|source| SetupError::Command {
        command: cmd.to_string(),
        source,
    })
}

fn read_opt(path: &Path) -> Result<Option<String>, SetupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SetupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), SetupError> {
    let fail = |source| SetupError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    crate::fsutil::write_atomic(path, data, mode).map_err(fail)
}

/// Runs every job: first all checks (nothing written), then the changes, in an order that
/// makes a booted machine start berth at the end (the unit is enabled before lingering starts
/// the user's manager).
pub fn run(opts: &Options, runner: &dyn Runner) -> Result<Report, SetupError> {
    // Checks.
    let admin = admin::prepare(opts)?;
    let unit = unit::find(opts)?;
    let planned = users::plan(opts)?;
    if !planned.is_empty() && unit.is_none() && opts.enable_unit {
        return Err(SetupError::NoUnit(unit::candidates(opts)));
    }

    // Changes.
    let mut report = Report::default();
    let users = users::create(opts, runner, planned, &mut report)?;
    admin::check_tokens(opts, &admin, &users, &mut report);
    admin::install(opts, &admin, &mut report)?;
    storage::skel(opts, &mut report)?;
    for u in &users {
        let added = subids::ensure(opts, u, &mut report)?;
        storage::user(opts, u, &mut report)?;
        if added {
            storage::migrate(opts, runner, u, &mut report)?;
        }
        let newly = match (&unit, opts.enable_unit) {
            (Some(path), true) => unit::enable(opts, u, path, &mut report)?,
            _ => {
                report.push(
                    "unit",
                    Some(&u.name),
                    Outcome::Skipped,
                    "--no-unit: berth's unit is not enabled".into(),
                );
                false
            }
        };
        linger::ensure(opts, runner, u, &mut report)?;
        if newly {
            unit::start_now(opts, runner, u, &mut report)?;
        }
    }
    if users.is_empty() {
        report.push(
            "users",
            None,
            Outcome::Skipped,
            if opts.machine_only {
                "--machine-only: the machine-wide settings only".into()
            } else {
                "no regular user on this machine yet: only the machine-wide settings were made \
                 (run `berth setup --user NAME` once the user exists)"
                    .into()
            },
        );
    }
    Ok(report)
}
