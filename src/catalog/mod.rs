//! Service definitions: parsing, layering and validating the catalog and the admin policy.
//!
//! Layers, later replacing earlier services of the same name whole:
//! the built-in catalog (embedded from `config/catalog/`), then `<etc>/catalog.d/*.toml`, then
//! the signed remote catalog ([`remote`], one file of many services, verified before it
//! gets here).
//! A file with `patch = true` changes only the fields it names of the service before it
//! ([`patch`]).
//! Problems are collected, not stopped at: one run reports every broken field with its
//! file, line and column. A catalog with any error is rejected whole, so the caller keeps
//! running the last good one.

pub mod diff;
pub mod model;
pub mod patch;
pub mod policy;
pub mod raw;
pub mod remote;
pub mod show;
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
    /// The layer it belongs to: built-in for paths under [`BUILTIN_PREFIX`], else admin
    /// unless [`Source::in_layer`] says otherwise.
    pub layer: Layer,
}

impl Source {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        let path = path.into();
        let layer = if is_builtin(&path) {
            Layer::Builtin
        } else {
            Layer::Admin
        };
        Source {
            path,
            text: text.into(),
            layer,
        }
    }

    pub fn in_layer(mut self, layer: Layer) -> Self {
        self.layer = layer;
        self
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
    /// At `loc`, or else at the service's own `name` line (`origin`): a problem of a
    /// service that has no single place of its own still names a line.
    fn at(
        loc: Option<&validate::Loc>,
        origin: &Origin,
        field: impl Into<String>,
        message: String,
    ) -> Self {
        Diagnostic {
            file: loc.map_or_else(|| origin.file.clone(), |l| l.file.clone()),
            line: loc.map_or(origin.line, |l| l.line),
            col: loc.map_or(usize::from(origin.line > 0), |l| l.col),
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

/// Where the layers live: `/etc/berth` normally; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Include the built-in catalog.
    pub builtin: bool,
    /// `policy.toml`, if it exists.
    pub policy: Option<PathBuf>,
    /// Files of the admin layer, in order; each replaces same-named services before it.
    pub files: Vec<PathBuf>,
    /// The slot of the signed remote catalog, between the admin and the user layer: files
    /// read into [`Layer::Remote`]. Nothing fills it yet.
    pub remote: Vec<PathBuf>,
    /// Files of the user's own layer (`~/.config/berth/catalog.d`), read only where policy
    /// allows (`user_catalogs`).
    pub user: Vec<PathBuf>,
}

/// The `*.toml` files of a directory, sorted; a missing directory has none.
pub fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|source| CatalogError::Read {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(CatalogError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    files.sort();
    Ok(files)
}

impl Layers {
    /// The standard layers under `etc` (normally `/etc/berth`): built-in, admin, policy.
    pub fn standard(etc: &Path) -> Result<Self, CatalogError> {
        let policy = etc.join("policy.toml");
        Ok(Layers {
            builtin: true,
            policy: policy.exists().then_some(policy),
            files: toml_files(&etc.join("catalog.d"))?,
            remote: Vec::new(),
            user: Vec::new(),
        })
    }

    /// The standard layers and the user's own `catalog.d` under `user_dir` (normally
    /// `~/.config/berth`).
    pub fn with_user(etc: &Path, user_dir: &Path) -> Result<Self, CatalogError> {
        let mut l = Layers::standard(etc)?;
        l.user = toml_files(&user_dir.join("catalog.d"))?;
        Ok(l)
    }

    /// Every file of every layer and the policy, for noticing changes.
    pub fn all_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.files
            .iter()
            .chain(&self.remote)
            .chain(&self.user)
            .chain(&self.policy)
    }
}

fn read(path: &Path, layer: Layer) -> Result<Source, CatalogError> {
    std::fs::read_to_string(path)
        .map(|t| Source::new(path, t).in_layer(layer))
        .map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn toml_error(src: &Source, e: toml::de::Error) -> Diagnostic {
    src.diagnostic(e.span(), String::new(), e.message().trim().to_string())
}

/// Reads a TOML file into `T`, collecting every unknown field instead of stopping at the
/// first: each is reported with its place and left out, and the rest is read again, so the
/// checks after it (ports, images…) still run and report their problems in the same go. Any
/// other error (syntax, a wrong type) ends the file's reading with that error.
pub fn parse<T: serde::de::DeserializeOwned>(
    src: &Source,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut root = match toml::de::DeTable::parse(&src.text) {
        Ok(r) => r,
        Err(e) => {
            diags.push(toml_error(src, e));
            return None;
        }
    };
    loop {
        match T::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(v) => return Some(v),
            Err(e) => {
                let unknown = e.message().starts_with("unknown field");
                let span = e.span();
                diags.push(toml_error(src, e));
                match span {
                    Some(at) if unknown && remove_key_at(root.get_mut(), &at) => continue,
                    _ => return None,
                }
            }
        }
    }
}

/// Removes the key whose span starts where `at` does, anywhere in the table; whether it did.
fn remove_key_at(table: &mut toml::de::DeTable<'_>, at: &Range<usize>) -> bool {
    let found = table.keys().find(|k| k.span().start == at.start).cloned();
    if let Some(k) = found {
        table.remove(&k);
        return true;
    }
    table
        .iter_mut()
        .any(|(_, v)| remove_in_value(v.get_mut(), at))
}

fn remove_in_value(v: &mut toml::de::DeValue<'_>, at: &Range<usize>) -> bool {
    match v {
        toml::de::DeValue::Table(t) => remove_key_at(t, at),
        toml::de::DeValue::Array(items) => {
            items.iter_mut().any(|i| remove_in_value(i.get_mut(), at))
        }
        _ => false,
    }
}

/// The text of every file of the layers, in layer order (built-in files first).
#[derive(Debug, Clone, Default)]
pub struct LayerSources {
    pub policy: Option<Source>,
    pub files: Vec<Source>,
    /// Files that could not be read, each as a problem without a line.
    pub unreadable: Vec<Diagnostic>,
}

impl LayerSources {
    /// The files of every layer but the built-in one.
    pub fn admin_files(&self) -> impl Iterator<Item = &Source> {
        self.files.iter().filter(|s| s.layer != Layer::Builtin)
    }
}

/// Whether a source path names a file of the built-in catalog.
pub fn is_builtin(path: &Path) -> bool {
    path.starts_with(BUILTIN_PREFIX)
}

/// The built-in catalog's files as sources.
pub fn builtin_sources() -> Vec<Source> {
    BUILTIN
        .iter()
        .map(|(name, text)| Source::new(Path::new(BUILTIN_PREFIX).join(name), *text))
        .collect()
}

/// Reads every file of the layers; a file that cannot be read is noted, not fatal.
pub fn read_layers(layers: &Layers) -> LayerSources {
    let mut out = LayerSources::default();
    if layers.builtin {
        out.files = builtin_sources();
    }
    let mut unreadable = Vec::new();
    let mut note = |path: &Path, e: CatalogError| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        unreadable.push(Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("{e}{cause}"),
        });
    };
    for (files, layer) in [
        (&layers.files, Layer::Admin),
        (&layers.remote, Layer::Remote),
        (&layers.user, Layer::User),
    ] {
        for f in files {
            match read(f, layer) {
                Ok(s) => out.files.push(s),
                Err(e) => note(f, e),
            }
        }
    }
    if let Some(p) = &layers.policy {
        match read(p, Layer::Admin) {
            Ok(s) => out.policy = Some(s),
            Err(e) => note(p, e),
        }
    }
    out.unreadable = unreadable;
    out
}

/// Loads and validates all layers into one catalog.
pub fn load(layers: &Layers) -> Result<Catalog, CatalogError> {
    let src = read_layers(layers);
    if let Some(first) = src.unreadable.first() {
        return Err(CatalogError::Read {
            path: first.file.clone(),
            source: std::io::Error::other(first.message.clone()),
        });
    }
    from_sources(src.policy.as_ref(), &src.files)
}

/// What [`load_partial`] could make of layers with broken files.
#[derive(Debug, Clone)]
pub struct Partial {
    /// Every service of the files that validate, together.
    pub catalog: Catalog,
    /// The files left out, each with its problems, in the order they were found.
    pub rejected: Vec<(PathBuf, Vec<Diagnostic>)>,
    /// The policy was left out: `catalog` carries the default policy, which knows nothing of
    /// what the administrator meant to deny.
    pub policy_broken: bool,
}

/// Validates the layers, leaving out the files that break them: each round drops the service
/// files that the problems name (the policy only when it alone is named) and validates the
/// rest again. A port clash names the later layer's file, so an admin's new file is left out
/// rather than the built-in service it collides with.
pub fn load_partial(src: &LayerSources) -> Partial {
    let mut rejected: Vec<(PathBuf, Vec<Diagnostic>)> = src
        .unreadable
        .iter()
        .map(|d| (d.file.clone(), vec![d.clone()]))
        .collect();
    let mut policy_broken = src
        .unreadable
        .iter()
        .any(|d| d.file.file_name().is_some_and(|n| n == "policy.toml"));
    let mut files: Vec<Source> = src.files.clone();
    let mut policy = src.policy.clone();
    loop {
        let diags = match from_sources(policy.as_ref(), &files) {
            Ok(catalog) => {
                return Partial {
                    catalog,
                    rejected,
                    policy_broken,
                }
            }
            Err(e) => e.diagnostics().to_vec(),
        };
        let policy_path = policy.as_ref().map(|p| p.path.clone());
        let named: std::collections::BTreeSet<PathBuf> = diags
            .iter()
            .map(|d| d.file.clone())
            .filter(|f| Some(f) != policy_path.as_ref())
            .collect();
        let before = files.len();
        files.retain(|f| !named.contains(&f.path));
        if files.len() < before {
            for f in named {
                let mine: Vec<Diagnostic> = diags.iter().filter(|d| d.file == f).cloned().collect();
                rejected.push((f, mine));
            }
        } else if let Some(p) = policy_path {
            policy = None;
            policy_broken = true;
            rejected.push((p, diags));
        } else {
            // Problems that name no file left: nothing more to leave out.
            rejected.push((PathBuf::new(), diags));
            return Partial {
                catalog: Catalog::default(),
                rejected,
                policy_broken,
            };
        }
    }
}

/// Validates already-read sources (later ones replace earlier same-named services).
pub fn from_sources(
    policy_src: Option<&Source>,
    sources: &[Source],
) -> Result<Catalog, CatalogError> {
    let mut diags = Vec::new();
    let policy = match policy_src {
        None => Policy::default(),
        Some(src) => match parse::<raw::RawPolicy>(src, &mut diags) {
            Some(raw) => validate::policy(src, raw, &mut diags),
            None => Policy::default(),
        },
    };
    let mut services = BTreeMap::new();
    let mut spans = BTreeMap::new();
    // Service names in layer order: a clash is blamed on the later layer.
    let mut order: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for src in sources {
        if remote::is_remote(&src.path) {
            for (svc, sp) in remote::services(src, &policy, &mut diags) {
                order.retain(|n| n != &svc.name);
                order.push(svc.name.clone());
                spans.insert(svc.name.clone(), sp);
                services.insert(svc.name.clone(), svc);
            }
            continue;
        }
        if src.layer == Layer::User {
            if !policy.user_catalogs {
                ignored.push(format!(
                    "{}: not read: {} does not allow user catalogs",
                    src.path.display(),
                    policy.rule("user_catalogs")
                ));
                continue;
            }
            let name = src.path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if policy.is_required(name) {
                ignored.push(format!(
                    "{}: not read: service {name:?} is required by {}, and a user's entry may not replace it",
                    src.path.display(),
                    policy.rule("required_services")
                ));
                continue;
            }
        }
        if patch::is_patch(&src.text) == Some(true) {
            patch::apply(src, &mut services, &mut diags);
            continue;
        }
        match parse::<raw::RawService>(src, &mut diags) {
            None => {}
            Some(raw) => {
                if let Some((svc, sp)) = validate::service(src, raw, &policy, &mut diags) {
                    order.retain(|n| n != &svc.name);
                    order.push(svc.name.clone());
                    spans.insert(svc.name.clone(), sp);
                    services.insert(svc.name.clone(), svc);
                }
            }
        }
    }
    if diags.is_empty() {
        validate::across(&services, &spans, &order, &mut diags);
    }
    if diags.is_empty() {
        validate::resolve_service_refs(&mut services, &policy.remote_services, &mut diags);
    }
    if diags.is_empty() {
        policy::apply(&mut services, &policy, policy_src, &mut diags);
    }
    for (name, field) in policy
        .denied_services
        .iter()
        .map(|n| (n, "denied_services"))
        .chain(
            policy
                .remote_services
                .keys()
                .map(|n| (n, "remote_services")),
        )
        .chain(
            policy
                .default_enabled
                .iter()
                .map(|n| (n, "default_enabled")),
        )
    {
        if !services.contains_key(name) && diags.is_empty() {
            if let Some(src) = policy_src {
                let rule = if field == "remote_services" {
                    format!("remote_services.{name}")
                } else {
                    field.to_string()
                };
                let line = policy.rules.get(&rule).map_or(0, |l| l.line);
                diags.push(Diagnostic {
                    file: src.path.clone(),
                    line,
                    col: usize::from(line > 0),
                    field: rule,
                    message: format!("unknown service {name:?}"),
                });
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
        ignored,
    })
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike std's hasher.
#[derive(Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
