//! The catalog in force, and what to do when its files are broken.
//!
//! - The verified remote catalog (`crate::remote`) is one more layer after the admin files. A
//!   new one is offered by [`CatalogState::offer_remote`]: put in force only if the layers
//!   with it validate; a dry run says what it would change and keeps nothing.
//! - A reload whose files validate replaces the catalog, and a copy of the admin files that
//!   made it is kept on disk (atomically) as the *last good* one.
//! - A reload that does not validate changes nothing: the catalog in force stays, and the
//!   error (every problem with file:line) is on display until the files are fixed.
//! - At start there is nothing in force yet. Then the last good copy is used (with today's
//!   built-in catalog); without one, every file that validates is served and only the
//!   broken files' services are left out. A broken policy with no good copy leaves berth
//!   holding: it shows the services but applies nothing, because the default policy does not
//!   know what the administrator meant to deny.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::{self, Catalog, CatalogError, Layer, LayerSources, Layers, Source};
use crate::files::Files;

/// A hash of every layer file's path and content, to notice a change on disk. Content, not
/// modification times: a file rewritten within one tick of the kernel's coarse clock keeps
/// its mtime, and the layers are small (200 files read and hashed in about a millisecond).
pub(super) type Stamp = Option<u64>;

/// Where the layers are read from.
#[derive(Debug, Clone)]
pub(super) struct Places {
    /// `/etc/berth`: policy.toml and the admin layer's catalog.d.
    pub etc: PathBuf,
    /// `~/.config/berth`: the user's catalog.d.
    pub user: PathBuf,
}

/// What is in force and what is wrong.
#[derive(Debug)]
pub(super) struct CatalogState {
    pub current: Arc<Catalog>,
    /// What is wrong with the newest catalog files; every problem with file:line.
    pub error: Option<String>,
    /// What berth runs meanwhile, said in words, while `error` is set.
    pub in_force: Option<String>,
    /// No catalog berth may apply: nothing is started, stopped or removed.
    pub hold: bool,
    stamp: Stamp,
    last_good: PathBuf,
    places: Places,
    /// The remote catalog in force (verified), the layer after the admin files.
    remote: Option<Source>,
}

/// The admin files of a catalog that validated, as kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct LastGood {
    serial: String,
    saved_at: u64,
    policy: Option<SourceCopy>,
    files: Vec<SourceCopy>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SourceCopy {
    path: PathBuf,
    text: String,
    /// Absent in copies kept before layers were recorded: those were all admin files.
    #[serde(default)]
    layer: Option<Layer>,
}

impl SourceCopy {
    fn of(s: &Source) -> Self {
        SourceCopy {
            path: s.path.clone(),
            text: s.text.clone(),
            layer: Some(s.layer),
        }
    }

    fn source(&self) -> Source {
        Source::new(self.path.clone(), self.text.clone())
            .in_layer(self.layer.unwrap_or(Layer::Admin))
    }
}

/// Reads the layers (blocking), with the verified remote catalog right after the built-in and
/// admin files (so the user's layer stays after it).
fn read(places: &Places, remote: Option<Source>) -> (Result<LayerSources, CatalogError>, Stamp) {
    match Layers::with_user(&places.etc, &places.user) {
        Ok(layers) => {
            let mut src = catalog::read_layers(&layers);
            if let Some(r) = remote {
                let at = src
                    .files
                    .iter()
                    .rposition(|f| matches!(f.layer, Layer::Builtin | Layer::Admin))
                    .map_or(0, |i| i + 1);
                src.files.insert(at, r.in_layer(Layer::Remote));
            }
            let stamp = stamp(&src);
            (Ok(src), stamp)
        }
        Err(e) => (Err(e), None),
    }
}

/// Reads the layers on the blocking pool.
async fn read_async(
    places: &Places,
    remote: Option<Source>,
) -> (Result<LayerSources, CatalogError>, Stamp) {
    let p = places.clone();
    tokio::task::spawn_blocking(move || read(&p, remote))
        .await
        .unwrap_or_else(|_| (Ok(LayerSources::default()), None))
}

/// The services `new` adds, changes and removes compared with `old`.
fn diff(old: &Catalog, new: &Catalog) -> berth_proto::FetchAnswer {
    let mut a = berth_proto::FetchAnswer::default();
    for (name, svc) in &new.services {
        match old.services.get(name) {
            None => a.added.push(name.clone()),
            Some(o) if serde_json::to_value(o).ok() != serde_json::to_value(svc).ok() => {
                a.changed.push(name.clone());
            }
            Some(_) => {}
        }
    }
    a.removed = old
        .services
        .keys()
        .filter(|n| !new.services.contains_key(*n))
        .cloned()
        .collect();
    a
}

fn stamp(src: &LayerSources) -> Stamp {
    let mut h = catalog::Fnv::default();
    for s in src.policy.iter().chain(src.admin_files()) {
        h.write(s.path.as_os_str().as_encoded_bytes());
        h.write(&[0]);
        h.write(s.text.as_bytes());
        h.write(&[0]);
    }
    for d in &src.unreadable {
        h.write(d.to_string().as_bytes());
    }
    Some(h.0)
}

/// Validates what was read; a file that could not be read fails it like a broken one.
fn validate(src: &LayerSources) -> Result<Catalog, CatalogError> {
    if !src.unreadable.is_empty() {
        return Err(CatalogError::Invalid(src.unreadable.clone()));
    }
    catalog::from_sources(src.policy.as_ref(), &src.files)
}

fn describe(e: &CatalogError) -> String {
    match e {
        CatalogError::Read { .. } => {
            let cause = std::error::Error::source(e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("{e}{cause}")
        }
        CatalogError::Invalid(_) => e.to_string(),
    }
}

fn count(n: usize) -> String {
    format!("{n} service{}", if n == 1 { "" } else { "s" })
}

impl CatalogState {
    /// The catalog at the daemon's start (see the module's rules).
    pub async fn boot(
        places: Places,
        files: &impl Files,
        last_good: PathBuf,
        now: u64,
        remote: Option<Source>,
    ) -> Self {
        let (read, stamp) = read_async(&places, remote.clone()).await;
        let mut st = CatalogState {
            remote,
            current: Arc::new(Catalog::default()),
            error: None,
            in_force: None,
            hold: false,
            stamp,
            last_good,
            places,
        };
        let src = match read {
            Ok(src) => src,
            Err(e) => {
                // The admin directory itself cannot be listed: fall back like a broken file.
                st.fall_back(
                    files,
                    describe(&e),
                    LayerSources {
                        files: catalog::builtin_sources(),
                        ..LayerSources::default()
                    },
                )
                .await;
                return st;
            }
        };
        match validate(&src) {
            Ok(c) => st.accept(files, c, &src, now).await,
            Err(e) => st.fall_back(files, describe(&e), src).await,
        }
        st
    }

    /// Without anything in force: the last good copy, else every layer that validates.
    async fn fall_back(&mut self, files: &impl Files, error: String, src: LayerSources) {
        warn!("the catalog is broken: {error}");
        self.error = Some(error);
        if let Some((c, saved_at)) = self.last_good_copy(files).await {
            let n = c.services.len();
            self.in_force = Some(format!(
                "the last good catalog, kept since {} ({}, serial {})",
                crate::clock::format_unix(saved_at),
                count(n),
                c.serial
            ));
            info!("serving the last good catalog");
            self.current = Arc::new(c);
            return;
        }
        let partial = tokio::task::spawn_blocking(move || catalog::load_partial(&src))
            .await
            .ok();
        let Some(partial) = partial else { return };
        let left_out: Vec<String> = partial
            .rejected
            .iter()
            .map(|(f, _)| f.display().to_string())
            .collect();
        let n = partial.catalog.services.len();
        if partial.policy_broken {
            self.hold = true;
            self.in_force = Some(format!(
                "nothing: the policy is broken and there is no last good catalog, so berth \
                 shows {} but starts, stops and removes nothing until it is fixed",
                count(n)
            ));
        } else {
            self.in_force = Some(format!(
                "every layer that validates ({}); left out: {}",
                count(n),
                left_out.join(", ")
            ));
        }
        self.current = Arc::new(partial.catalog);
    }

    async fn last_good_copy(&self, files: &impl Files) -> Option<(Catalog, u64)> {
        let bytes = files.read(&self.last_good).await.ok().flatten()?;
        let kept: LastGood = match serde_json::from_slice(&bytes) {
            Ok(k) => k,
            Err(err) => {
                warn!(path = %self.last_good.display(), %err, "the last good catalog copy is unreadable");
                return None;
            }
        };
        let mut sources = catalog::builtin_sources();
        sources.extend(kept.files.iter().map(SourceCopy::source));
        let policy = kept.policy.as_ref().map(SourceCopy::source);
        match catalog::from_sources(policy.as_ref(), &sources) {
            Ok(c) => Some((c, kept.saved_at)),
            Err(e) => {
                // E.g. a newer built-in catalog that clashes with the old admin files.
                warn!("the last good catalog does not validate with this berth: {e}");
                None
            }
        }
    }

    /// Puts a catalog that validated in force and keeps its admin files as the last good copy.
    async fn accept(&mut self, files: &impl Files, c: Catalog, src: &LayerSources, now: u64) {
        let kept_serial = match files.read(&self.last_good).await {
            Ok(Some(b)) => serde_json::from_slice::<LastGood>(&b)
                .ok()
                .map(|k| k.serial),
            _ => None,
        };
        if kept_serial.as_deref() != Some(c.serial.as_str()) {
            let copy = LastGood {
                serial: c.serial.clone(),
                saved_at: now,
                policy: src.policy.as_ref().map(SourceCopy::of),
                files: src.admin_files().map(SourceCopy::of).collect(),
            };
            let written = match serde_json::to_vec_pretty(&copy) {
                Ok(bytes) => files.write(&self.last_good, bytes, 0o600).await,
                Err(e) => Err(std::io::Error::other(e)),
            };
            if let Err(err) = written {
                warn!(path = %self.last_good.display(), %err, "cannot keep a copy of the good catalog");
            }
        }
        for note in &c.ignored {
            info!("user catalog file left out by policy: {note}");
        }
        for s in c.services.values() {
            if let Some(why) = &s.refused {
                info!(service = %s.name, "{} is refused: {why}", s.name);
            }
        }
        self.current = Arc::new(c);
        self.error = None;
        self.in_force = None;
        self.hold = false;
    }

    /// Reads the layers again. A catalog that does not validate changes nothing; the error
    /// stays on display.
    pub async fn reload(&mut self, files: &impl Files, now: u64) -> Result<usize, String> {
        let (read, stamp) = read_async(&self.places, self.remote.clone()).await;
        self.apply_read(files, read, stamp, now).await
    }

    /// Validates the layers with `remote` as the remote catalog; unless `dry_run`, puts it in
    /// force when they do. What it adds, changes and removes; the problems when it does not
    /// validate (nothing changes then).
    pub async fn offer_remote(
        &mut self,
        files: &impl Files,
        remote: Source,
        now: u64,
        dry_run: bool,
    ) -> Result<berth_proto::FetchAnswer, String> {
        let (read, stamp) = read_async(&self.places, Some(remote.clone())).await;
        let src = read.map_err(|e| describe(&e))?;
        let c = validate(&src).map_err(|e| describe(&e))?;
        let change = diff(&self.current, &c);
        if !dry_run {
            self.stamp = stamp;
            self.remote = Some(remote);
            self.accept(files, c, &src, now).await;
        }
        Ok(change)
    }

    async fn apply_read(
        &mut self,
        files: &impl Files,
        read: Result<LayerSources, CatalogError>,
        stamp: Stamp,
        now: u64,
    ) -> Result<usize, String> {
        self.stamp = stamp;
        let result = read.and_then(|src| validate(&src).map(|c| (c, src)));
        match result {
            Ok((c, src)) => {
                let n = c.services.len();
                self.accept(files, c, &src, now).await;
                Ok(n)
            }
            Err(e) => {
                let msg = describe(&e);
                if !self.hold && self.in_force.is_none() {
                    self.in_force = Some(format!(
                        "the catalog in force before ({}, serial {})",
                        count(self.current.services.len()),
                        self.current.serial
                    ));
                }
                self.error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Reads the layers and reloads only if they differ from what was read last (one read:
    /// what a watcher's bell costs when nothing changed is reading and hashing the files).
    /// `None` when nothing changed.
    pub async fn reload_if_changed(
        &mut self,
        files: &impl Files,
        now: u64,
    ) -> Option<Result<usize, String>> {
        let (read, stamp) = read_async(&self.places, self.remote.clone()).await;
        if stamp.is_some() && stamp == self.stamp {
            return None;
        }
        Some(self.apply_read(files, read, stamp, now).await)
    }
}
