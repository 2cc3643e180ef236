//! Lingering: the user's systemd manager (and with it berth and the user's services) starts at
//! boot, not at the first login, and stays when the user logs out.
//!
//! With logind running, `loginctl enable-linger` records it and starts the manager at once.
//! Without logind (a chroot, an image build, a machine whose PID 1 is not systemd) the same
//! record is made by hand: the empty file `/var/lib/systemd/linger/USER`, which logind reads at
//! boot.

use super::users::User;
use super::{run_cmd, write, Command, Options, Outcome, Report, Runner, SetupError};

/// logind runs where systemd is PID 1 and has made its runtime directory.
pub fn logind_running(opts: &Options) -> bool {
    opts.live() && opts.systemd_booted && opts.at("/run/systemd/seats").is_dir()
}

pub fn ensure(
    opts: &Options,
    runner: &dyn Runner,
    user: &User,
    report: &mut Report,
) -> Result<(), SetupError> {
    let file = opts.at("/var/lib/systemd/linger").join(&user.name);
    if file.exists() {
        report.push(
            "linger",
            Some(&user.name),
            Outcome::Already,
            "lingering is on".into(),
        );
        return Ok(());
    }
    if logind_running(opts) {
        run_cmd(
            runner,
            Command::new("loginctl", &["enable-linger", &user.name]),
        )?;
        report.push(
            "linger",
            Some(&user.name),
            Outcome::Done,
            "loginctl enable-linger (the user's manager starts now and at every boot)".into(),
        );
    } else {
        write(&file, b"", 0o644)?;
        report.push(
            "linger",
            Some(&user.name),
            Outcome::Done,
            "wrote /var/lib/systemd/linger (logind is not running; it applies at boot)".into(),
        );
    }
    Ok(())
}
