//! The admin files: `/etc/berth/config.toml`, `policy.toml` and `catalog.d/*.toml`.
//!
//! cloud-init's `write_files` (or an admin) puts them into a staging directory; setup validates
//! the result they would make — the staged files over those already in place, on top of the
//! built-in catalog, exactly as the daemon will load them — and only then copies them into
//! `/etc/berth`. One bad file refuses the whole set with its file:line:column, and nothing on
//! the machine is changed. Without a staging directory the files in place are validated.
//!
//! Staged files are added or replace the same-named file; files in place that are not staged
//! stay (removing an admin's file is not setup's call). Token files named by `config.toml`
//! must exist and be readable by every user set up, since the daemon runs as the user.

use std::path::{Path, PathBuf};

use crate::catalog::{self, Diagnostic, Source};
use crate::config::{Config, ConfigError};

use super::users::User;
use super::{read_opt, write, Options, Outcome, Report, SetupError};

pub const ETC: &str = "/etc/berth";

/// Files validated and ready to be put in place.
#[derive(Debug, Default)]
pub struct Prepared {
    /// (staged file, destination under the root, content)
    files: Vec<(PathBuf, PathBuf, String)>,
    /// The token files the effective config names (paths on the target machine).
    tokens: Vec<(String, PathBuf)>,
    from: Option<PathBuf>,
}

fn diag(file: &Path, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        field: field.into(),
        message,
    }
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, SetupError> {
    let mut v = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let p = e
                    .map_err(|source| SetupError::Read {
                        path: dir.to_path_buf(),
                        source,
                    })?
                    .path();
                if p.extension().is_some_and(|x| x == "toml") {
                    v.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SetupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    v.sort();
    Ok(v)
}

fn source(path: &Path) -> Result<Option<Source>, SetupError> {
    Ok(read_opt(path)?.map(|t| Source::new(path, t)))
}

/// Validates the staged files over the ones in place. Writes nothing.
pub fn prepare(opts: &Options) -> Result<Prepared, SetupError> {
    let etc = opts.at(ETC);
    let mut diags = Vec::new();
    let mut out = Prepared {
        from: opts.admin_from.clone(),
        ..Prepared::default()
    };
    let mut staged_catalog = Vec::new();
    let (mut config, mut policy) = (None, None);
    if let Some(from) = &opts.admin_from {
        let rd = std::fs::read_dir(from).map_err(|source| SetupError::Read {
            path: from.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| SetupError::Read {
                path: from.clone(),
                source,
            })?;
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            match name.as_str() {
                "config.toml" => config = source(&p)?,
                "policy.toml" => policy = source(&p)?,
                "catalog.d" if p.is_dir() => staged_catalog = toml_files(&p)?,
                _ => diags.push(diag(
                    &p,
                    "",
                    "unexpected file: the admin files are config.toml, policy.toml and \
                     catalog.d/*.toml"
                        .into(),
                )),
            }
        }
        for (src, dest) in [(&config, "config.toml"), (&policy, "policy.toml")] {
            if let Some(s) = src {
                out.files
                    .push((s.path.clone(), etc.join(dest), s.text.clone()));
            }
        }
        for p in &staged_catalog {
            let text = read_opt(p)?.unwrap_or_default();
            let name = p.file_name().map(PathBuf::from).unwrap_or_default();
            out.files
                .push((p.clone(), etc.join("catalog.d").join(name), text));
        }
    }

    // The daemon's config: the staged one, else the one in place.
    let config = match config {
        Some(c) => Some(c),
        None => source(&etc.join("config.toml"))?,
    };
    if let Some(src) = &config {
        match Config::parse(src) {
            Ok(cfg) => {
                if let Some(t) = cfg.metrics.bearer_token_file {
                    out.tokens.push(("metrics.bearer_token_file".into(), t));
                }
                if let Some(t) = cfg.push.and_then(|p| p.bearer_token_file) {
                    out.tokens.push(("push.bearer_token_file".into(), t));
                }
                if let Some(t) = cfg.remote_catalog.and_then(|r| r.ca_file) {
                    out.tokens.push(("remote_catalog.ca_file".into(), t));
                }
                for (field, t) in &out.tokens {
                    if !opts.at(t).is_file() {
                        diags.push(diag(
                            &src.path,
                            field,
                            format!("{} does not exist", t.display()),
                        ));
                    }
                }
            }
            Err(ConfigError::Invalid(d)) => diags.extend(d),
            Err(ConfigError::Read { path, source }) => {
                return Err(SetupError::Read { path, source })
            }
        }
    }

    // The catalog as the daemon will load it: built-in, then catalog.d in name order with the
    // staged files replacing same-named ones in place, with the effective policy.
    let mut files: Vec<PathBuf> = toml_files(&etc.join("catalog.d"))?
        .into_iter()
        .filter(|p| {
            !staged_catalog
                .iter()
                .any(|s| s.file_name() == p.file_name())
        })
        .chain(staged_catalog.iter().cloned())
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut sources: Vec<Source> = catalog::BUILTIN
        .iter()
        .map(|(n, t)| Source::new(Path::new(catalog::BUILTIN_PREFIX).join(n), *t))
        .collect();
    for f in &files {
        if let Some(s) = source(f)? {
            sources.push(s);
        }
    }
    let policy = match policy {
        Some(p) => Some(p),
        None => source(&etc.join("policy.toml"))?,
    };
    if let Err(e) = catalog::from_sources(policy.as_ref(), &sources) {
        match e {
            catalog::CatalogError::Invalid(d) => diags.extend(d),
            catalog::CatalogError::Read { path, source } => {
                return Err(SetupError::Read { path, source })
            }
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(SetupError::Invalid(diags))
    }
}

/// Whether `user` can read a token file (owner, group or others may read).
fn readable_by(path: &Path, user: &User) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let mode = m.mode();
    user.uid == 0
        || (m.uid() == user.uid && mode & 0o400 != 0)
        || (m.gid() == user.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

/// Token files every set-up user must be able to read; a step per problem (not an error: the
/// admin may add the user to the file's group later, and the daemon says so itself).
pub fn check_tokens(opts: &Options, prep: &Prepared, users: &[User], report: &mut Report) {
    for (field, t) in &prep.tokens {
        for u in users {
            if !readable_by(&opts.at(t), u) {
                report.push(
                    "admin",
                    Some(&u.name),
                    Outcome::Skipped,
                    format!(
                        "{field} {} is not readable by {}: berth cannot use it (give the file \
                         to the user's group, mode 0640)",
                        t.display(),
                        u.name
                    ),
                );
            }
        }
    }
}

/// Puts the validated files in place.
pub fn install(opts: &Options, prep: &Prepared, report: &mut Report) -> Result<(), SetupError> {
    let Some(from) = &prep.from else {
        report.push(
            "admin",
            None,
            Outcome::Skipped,
            format!("no staged admin files (--admin-from); the ones in {ETC} are valid"),
        );
        return Ok(());
    };
    if prep.files.is_empty() {
        report.push(
            "admin",
            None,
            Outcome::Skipped,
            format!("{} holds no admin files", from.display()),
        );
    }
    for (src, dest, text) in &prep.files {
        let shown = match dest.strip_prefix(&opts.root) {
            Ok(p) => format!("/{}", p.display()),
            Err(_) => dest.display().to_string(),
        };
        if read_opt(dest)?.as_deref() == Some(text.as_str()) {
            report.push(
                "admin",
                None,
                Outcome::Already,
                format!("{shown} is up to date"),
            );
            continue;
        }
        write(dest, text.as_bytes(), 0o644)?;
        report.push(
            "admin",
            None,
            Outcome::Done,
            format!("installed {shown} from {}", src.display()),
        );
    }
    Ok(())
}
