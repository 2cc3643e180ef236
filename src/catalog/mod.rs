//! Service definitions: parsing, layering and validating the catalog and the admin policy.
//!
//! Layers, later replacing earlier services of the same name whole:
//! the built-in catalog (embedded from `config/catalog/`), then `<etc>/catalog.d/*.toml`.
//! A file with `patch = true` changes only the fields it names of the service before it
//! ([`patch`]).
//! Problems are collected, not stopped at: one run reports every broken field with its
//! file, line and column. A catalog with any error is rejected whole, so the caller keeps
//! running the last good one.

pub mod model;
pub mod patch;
pub mod raw;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use model::*;

/// The built-in catalog: (file name, contents), embedded at build time.
pub const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_catalog.rs"));

/// Prefix under which built-in files are named in messages.
pub const BUILTIN_PREFIX: &str = "<built-in>";

/// A file's text, kept to turn byte offsets into lines and columns.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    pub fn diagnostic(
        &self,
        span: Option<Range<usize>>,
        field: String,
        message: String,
    ) -> Diagnostic {
        let (line, col) = span.map_or((0, 0), |s| self.line_col(s.start));
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            field,
            message,
        }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place.
    pub line: usize,
    pub col: usize,
    /// Dotted path of the field, e.g. `containers[0].ports[1].host`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    fn at(
        loc: Option<&validate::Loc>,
        file: &Path,
        field: impl Into<String>,
        message: String,
    ) -> Self {
        Diagnostic {
            file: loc.map_or_else(|| file.to_path_buf(), |l| l.file.clone()),
            line: loc.map_or(0, |l| l.line),
            col: loc.map_or(0, |l| l.col),
            field: field.into(),
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<Diagnostic>),
}

fn list(d: &[Diagnostic]) -> String {
    let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    format!(
        "{} problem{} in the catalog:\n  {}",
        d.len(),
        if d.len() == 1 { "" } else { "s" },
        lines.join("\n  ")
    )
}

impl CatalogError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            CatalogError::Invalid(d) => d,
            CatalogError::Read { .. } => &[],
        }
    }
}

/// Where the admin layer lives: `/etc/berth` normally; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Include the built-in catalog.
    pub builtin: bool,
    /// `policy.toml`, if it exists.
    pub policy: Option<PathBuf>,
    /// Files of the admin layers, in order; each replaces same-named services before it.
    pub files: Vec<PathBuf>,
}

impl Layers {
    /// The standard layers under `etc` (normally `/etc/berth`).
    pub fn standard(etc: &Path) -> Result<Self, CatalogError> {
        let policy = etc.join("policy.toml");
        let dir = etc.join("catalog.d");
        let mut files = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|source| CatalogError::Read {
                        path: dir.clone(),
                        source,
                    })?;
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "toml") {
                        files.push(p);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CatalogError::Read { path: dir, source }),
        }
        files.sort();
        Ok(Layers {
            builtin: true,
            policy: policy.exists().then_some(policy),
            files,
        })
    }
}

fn read(path: &Path) -> Result<Source, CatalogError> {
    std::fs::read_to_string(path)
        .map(|t| Source::new(path, t))
        .map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn toml_error(src: &Source, e: toml::de::Error) -> Diagnostic {
    src.diagnostic(e.span(), String::new(), e.message().trim().to_string())
}

/// Loads and validates all layers into one catalog.
pub fn load(layers: &Layers) -> Result<Catalog, CatalogError> {
    let mut sources = Vec::new();
    if layers.builtin {
        for (name, text) in BUILTIN {
            sources.push(Source::new(Path::new(BUILTIN_PREFIX).join(name), *text));
        }
    }
    for f in &layers.files {
        sources.push(read(f)?);
    }
    let policy = match &layers.policy {
        Some(p) => Some(read(p)?),
        None => None,
    };
    from_sources(policy.as_ref(), &sources)
}

/// Validates already-read sources (later ones replace earlier same-named services).
pub fn from_sources(
    policy_src: Option<&Source>,
    sources: &[Source],
) -> Result<Catalog, CatalogError> {
    let mut diags = Vec::new();
    let policy = match policy_src {
        None => Policy::default(),
        Some(src) => match toml::from_str::<raw::RawPolicy>(&src.text) {
            Ok(raw) => validate::policy(src, raw, &mut diags),
            Err(e) => {
                diags.push(toml_error(src, e));
                Policy::default()
            }
        },
    };
    let mut services = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for src in sources {
        if patch::is_patch(&src.text) == Some(true) {
            patch::apply(src, &mut services, &mut diags);
            continue;
        }
        match toml::from_str::<raw::RawService>(&src.text) {
            Err(e) => diags.push(toml_error(src, e)),
            Ok(raw) => {
                if let Some((svc, sp)) = validate::service(src, raw, &policy, &mut diags) {
                    spans.insert(svc.name.clone(), sp);
                    services.insert(svc.name.clone(), svc);
                }
            }
        }
    }
    if diags.is_empty() {
        validate::across(&services, &spans, &policy, &mut diags);
    }
    if diags.is_empty() {
        validate::resolve_service_refs(&mut services, &mut diags);
    }
    for (name, field) in policy
        .denied_services
        .iter()
        .map(|n| (n, "denied_services"))
        .chain(
            policy
                .default_enabled
                .iter()
                .map(|n| (n, "default_enabled")),
        )
    {
        if !services.contains_key(name) && diags.is_empty() {
            if let Some(src) = policy_src {
                diags.push(src.diagnostic(None, field.into(), format!("unknown service {name:?}")));
            }
        }
    }
    if !diags.is_empty() {
        return Err(CatalogError::Invalid(diags));
    }
    let mut hash = Fnv::default();
    for src in policy_src.into_iter().chain(sources) {
        hash.write(src.path.to_string_lossy().as_bytes());
        hash.write(&[0]);
        hash.write(src.text.as_bytes());
        hash.write(&[0]);
    }
    Ok(Catalog {
        services,
        policy,
        serial: format!("{:016x}", hash.0),
    })
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
