//! berth's own user unit, enabled per user: the symlink
//! `~/.config/systemd/user/default.target.wants/berth.service` that `systemctl --user enable`
//! would make. Made directly, because at first boot (and in a chroot) the user's manager does
//! not run yet; the manager picks it up when it starts (lingering starts it at boot).
//!
//! Per user rather than `systemctl --global enable`: only the users named get berth, not root's
//! or a service account's manager.

use std::path::{Path, PathBuf};

use super::users::User;
use super::{run_cmd, Command, Options, Outcome, Report, Runner, SetupError};

pub const UNIT: &str = "berth.service";

/// Where packages, image builds and the development scripts install the unit, in systemd's
/// order of precedence.
pub const UNIT_PATHS: &[&str] = &[
    "/etc/systemd/user/berth.service",
    "/usr/local/lib/systemd/user/berth.service",
    "/usr/lib/systemd/user/berth.service",
];

const WANTS: &str = ".config/systemd/user/default.target.wants/berth.service";

pub fn candidates(opts: &Options) -> Vec<PathBuf> {
    UNIT_PATHS.iter().map(|p| opts.at(p)).collect()
}

/// The installed unit (as a path on the target machine), if any.
pub fn find(opts: &Options) -> Result<Option<PathBuf>, SetupError> {
    Ok(UNIT_PATHS
        .iter()
        .find(|p| opts.at(p).is_file())
        .map(PathBuf::from))
}

/// Makes the enable symlink. True when it was newly made (or pointed elsewhere).
pub fn enable(
    opts: &Options,
    user: &User,
    unit: &Path,
    report: &mut Report,
) -> Result<bool, SetupError> {
    let err = |what| {
        move |source| SetupError::Home {
            user: user.name.clone(),
            what,
            source,
        }
    };
    let home = super::home::Home::open(&opts.at(&user.home), user.uid, user.gid)
        .map_err(err("enabling berth.service"))?;
    let rel = Path::new(WANTS);
    match home.read_link(rel).map_err(err("enabling berth.service"))? {
        Some(t) if t == unit => {
            report.push(
                "unit",
                Some(&user.name),
                Outcome::Already,
                format!("{UNIT} is enabled"),
            );
            Ok(false)
        }
        _ => {
            home.symlink(rel, unit)
                .map_err(err("enabling berth.service"))?;
            report.push(
                "unit",
                Some(&user.name),
                Outcome::Done,
                format!(
                    "enabled {UNIT} (~{}/{WANTS} -> {})",
                    user.name,
                    unit.display()
                ),
            );
            Ok(true)
        }
    }
}

/// Starts berth now when the user's manager already runs (a re-run on a booted machine whose
/// user lingered before); otherwise the manager starts it when it comes up.
pub fn start_now(
    opts: &Options,
    runner: &dyn Runner,
    user: &User,
    report: &mut Report,
) -> Result<(), SetupError> {
    let private = opts.at(format!("/run/user/{}/systemd/private", user.uid));
    if !(super::linger::logind_running(opts) && private.exists()) {
        return Ok(());
    }
    let machine = format!("--machine={}@.host", user.name);
    run_cmd(
        runner,
        Command::new("systemctl", &["--user", &machine, "start", UNIT]),
    )?;
    report.push(
        "unit",
        Some(&user.name),
        Outcome::Done,
        format!("started {UNIT} in the running user manager"),
    );
    Ok(())
}
