//! Which users to set up: the named ones (created on request), or every regular user of the
//! machine, looked up in `<root>/etc/passwd`.

use std::path::{Path, PathBuf};

use super::{read_opt, run_cmd, Command, Options, Outcome, Report, Runner, SetupError};

/// A local account as `/etc/passwd` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The home as seen on the target machine (not below [`Options::root`]).
    pub home: PathBuf,
    pub shell: String,
}

/// Parses passwd text; lines that are not accounts are skipped.
pub fn parse_passwd(text: &str) -> Vec<User> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(User {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
                shell: f[6].into(),
            })
        })
        .collect()
}

/// `UID_MIN`/`UID_MAX` and the like from `login.defs` text.
pub fn login_def(text: Option<&str>, key: &str, default: u64) -> u64 {
    text.and_then(|t| {
        t.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(key))
                .then(|| w.next().and_then(|v| v.parse().ok()))
                .flatten()
        })
    })
    .unwrap_or(default)
}

fn passwd(opts: &Options) -> Result<Vec<User>, SetupError> {
    Ok(read_opt(&opts.at("/etc/passwd"))?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default())
}

/// A user a person logs in as: uid in `UID_MIN..=UID_MAX` and a shell that allows it.
fn regular(u: &User, min: u64, max: u64) -> bool {
    let uid = u64::from(u.uid);
    let shell = Path::new(&u.shell)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (min..=max).contains(&uid) && !matches!(shell.as_str(), "nologin" | "false" | "")
}

/// Valid login names as shadow's useradd accepts them by default (and nothing that could be
/// taken for an option or a path).
fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && n.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// The users to work on: known accounts, and names to create.
#[derive(Debug, Default)]
pub struct Planned {
    names: Vec<String>,
    missing: Vec<String>,
}

impl Planned {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Finds the users to set up. Unknown names are an error unless `create_users`. Writes nothing.
pub fn plan(opts: &Options) -> Result<Planned, SetupError> {
    if opts.machine_only {
        return Ok(Planned::default());
    }
    let all = passwd(opts)?;
    if opts.users.is_empty() {
        let defs = read_opt(&opts.at("/etc/login.defs"))?;
        let min = login_def(defs.as_deref(), "UID_MIN", 1000);
        let max = login_def(defs.as_deref(), "UID_MAX", 60000);
        return Ok(Planned {
            names: all
                .into_iter()
                .filter(|u| regular(u, min, max))
                .map(|u| u.name)
                .collect(),
            missing: Vec::new(),
        });
    }
    let mut p = Planned::default();
    for n in &opts.users {
        if !valid_name(n) {
            return Err(SetupError::NoUser(n.clone()));
        }
        if !all.iter().any(|u| &u.name == n) {
            if !opts.create_users {
                return Err(SetupError::NoUser(n.clone()));
            }
            p.missing.push(n.clone());
        }
        if !p.names.contains(n) {
            p.names.push(n.clone());
        }
    }
    Ok(p)
}

/// Creates the missing users (`useradd -m`, through the runner) and returns all of them.
pub fn create(
    opts: &Options,
    runner: &dyn Runner,
    plan: Planned,
    report: &mut Report,
) -> Result<Vec<User>, SetupError> {
    for n in &plan.missing {
        let mut args = vec!["-m", "-s", "/bin/bash"];
        let root = opts.root.to_string_lossy().into_owned();
        if !opts.live() {
            args.extend(["--root", root.as_str()]);
        }
        args.push(n);
        run_cmd(runner, Command::new("useradd", &args))?;
        report.push(
            "user",
            Some(n),
            Outcome::Done,
            "created (useradd -m)".into(),
        );
    }
    let all = passwd(opts)?;
    plan.names
        .iter()
        .map(|n| {
            all.iter()
                .find(|u| &u.name == n)
                .cloned()
                .ok_or_else(|| SetupError::NoUser(n.clone()))
        })
        .collect()
}
