//! Subordinate id ranges for rootless Podman: a user needs a line in `/etc/subuid` and one in
//! `/etc/subgid`. Recent shadow versions add them in `useradd` already; older ones (and users
//! made by other tools) do not, so setup adds a 65536-id range after the highest one in use
//! (never below `SUB_UID_MIN`), the size `useradd` gives.
//!
//! The files are edited under shadow's own lock convention (`/etc/subuid.lock` holding the
//! holder's pid), so a concurrent `useradd` or `usermod` does not lose an update.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::users::{login_def, User};
use super::{read_opt, write, Options, Outcome, Report, SetupError};

/// Ids per user, as shadow's `SUB_UID_COUNT` default.
pub const COUNT: u64 = 65536;

/// `(start, count)` of `user`'s first range in subid text.
pub fn range_of(text: &str, user: &User) -> Option<(u64, u64)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || (f[0] != user.name && f[0] != user.uid.to_string()) {
            return None;
        }
        Some((f[1].parse().ok()?, f[2].parse().ok()?))
    })
}

/// The first id after every range in the texts.
pub fn end_of_all<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts
        .into_iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            (f.len() == 3)
                .then(|| Some(f[1].parse::<u64>().ok()? + f[2].parse::<u64>().ok()?))
                .flatten()
        })
        .max()
        .unwrap_or(0)
}

/// Shadow's lock file: created exclusively, holding our pid; a lock whose holder is gone is
/// taken over. Removed on drop.
struct Lock(PathBuf);

impl Lock {
    fn take(file: &Path) -> Result<Lock, SetupError> {
        let lock = PathBuf::from(format!("{}.lock", file.display()));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&lock)
            {
                Ok(mut f) => {
                    let _pid_is_a_hint = write!(f, "{}", std::process::id());
                    return Ok(Lock(lock));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&lock)
                        .ok()
                        .and_then(|p| p.trim().parse::<u32>().ok());
                    let alive = holder.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
                    if !alive {
                        let _stale = std::fs::remove_file(&lock);
                        continue;
                    }
                    if Instant::now() > deadline {
                        return Err(SetupError::Locked { path: lock });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => return Err(SetupError::Write { path: lock, source }),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _gone = std::fs::remove_file(&self.0);
    }
}

/// Gives `user` ranges in both files where missing. True when something was added (Podman's
/// storage of the user then needs `podman system migrate`).
pub fn ensure(opts: &Options, user: &User, report: &mut Report) -> Result<bool, SetupError> {
    let files = [opts.at("/etc/subuid"), opts.at("/etc/subgid")];
    let _locks = files
        .iter()
        .map(|f| Lock::take(f))
        .collect::<Result<Vec<_>, _>>()?;
    let texts = [
        read_opt(&files[0])?.unwrap_or_default(),
        read_opt(&files[1])?.unwrap_or_default(),
    ];
    let defs = read_opt(&opts.at("/etc/login.defs"))?;
    let min = login_def(defs.as_deref(), "SUB_UID_MIN", 100_000);
    let start = end_of_all(texts.iter().map(String::as_str)).max(min);
    let mut added = false;
    for (file, text, job) in [
        (&files[0], &texts[0], "subuid"),
        (&files[1], &texts[1], "subgid"),
    ] {
        if let Some((s, c)) = range_of(text, user) {
            report.push(job, Some(&user.name), Outcome::Already, format!("{s}:{c}"));
            continue;
        }
        let mut new = text.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&format!("{}:{start}:{COUNT}\n", user.name));
        write(file, new.as_bytes(), 0o644)?;
        report.push(
            job,
            Some(&user.name),
            Outcome::Done,
            format!("added {start}:{COUNT}"),
        );
        added = true;
    }
    Ok(added)
}
