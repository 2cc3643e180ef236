//! The signed remote catalog: fetched over HTTPS on a schedule and on demand, verified, handed
//! to the engine as one catalog layer (after `/etc/berth/catalog.d`), and kept on disk.
//!
//! One task owns it ([`run`]). Each poll asks for the catalog with `If-None-Match`; a `304`
//! ends there. A changed catalog must pass [`verify`]'s rules (minisign signature by a
//! configured key, `[remote]` header, not expired, serial newer than the one in force), then
//! the engine's validation as a layer (every service checked like an admin file's, over the
//! other layers). Only then is it in force and kept — catalog, signature, serial and ETag in
//! one file written atomically (`~/.local/state/berth/remote-catalog.json`) — so it serves
//! offline and from the daemon's next start on. Anything refused changes nothing and is
//! reported: the log, `berth ls`/`info` (the daemon info's `remote_catalog.error`) and
//! `/metrics`.
//!
//! Limits: the kept copy is used past its expiry (its services keep running, and the expiry
//! is reported) until a newer catalog arrives; the expiry guards against a server or a
//! man in the middle replaying an old catalog, not against the VM's own copy. A catalog and
//! its signature are two requests: a poll between the two uploads fails once (bad signature)
//! and the next one gets both.

pub mod http;
pub mod verify;

use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::{FetchAnswer, RemoteCatalogInfo};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::catalog::Source;
use crate::config::RemoteCatalogConfig;
use crate::files::Files;
use crate::paths::Paths;

use self::http::{Fetch, Fetched};
use self::verify::{verify, Kept, Keys, Verdict};

/// `~/.local/state/berth/remote-catalog.json`: the remote catalog in force.
pub fn kept_path(paths: &Paths) -> PathBuf {
    paths.state_dir.join("remote-catalog.json")
}

/// What the task is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub keys: Keys,
    pub poll_interval: Duration,
    pub kept_path: PathBuf,
}

impl Settings {
    pub fn new(config: &RemoteCatalogConfig, paths: &Paths) -> Result<Settings, String> {
        Ok(Settings {
            url: config.url.clone(),
            keys: Keys::decode(&config.public_keys)?,
            poll_interval: config.poll_interval,
            kept_path: kept_path(paths),
        })
    }
}

/// What the remote catalog needs of the engine ([`crate::engine::Handle`] is the real one).
pub trait Engine: Send + Sync + 'static {
    /// Validates `source` as the remote layer over the others and, unless `dry_run`, puts it
    /// in force; what it adds, changes and removes.
    fn offer(
        &self,
        source: Source,
        dry_run: bool,
    ) -> impl Future<Output = Result<FetchAnswer, String>> + Send;
    /// The remote catalog's status, for the daemon's info and `/metrics`.
    fn seen(&self, info: RemoteCatalogInfo) -> impl Future<Output = ()> + Send;
}

/// The remote catalog's state: what is in force and how fetching goes.
#[derive(Debug)]
pub struct Remote<F, Fs> {
    settings: Settings,
    fetch: F,
    files: Fs,
    kept: Option<Kept>,
    info: RemoteCatalogInfo,
}

impl<F: Fetch, Fs: Files> Remote<F, Fs> {
    /// Reads the kept copy; it is used only if its signature still checks out with today's
    /// keys (a key taken out of config.toml takes its catalogs with it).
    pub async fn load(settings: Settings, fetch: F, files: Fs, now: u64) -> Self {
        let kept = match files.read(&settings.kept_path).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Kept>(&bytes) {
                Ok(k) => match settings
                    .keys
                    .check(k.catalog.as_bytes(), k.signature.as_bytes())
                    .and_then(|()| signed_header(&k))
                {
                    Ok(h) => Some(Kept {
                        // The signed text's own serial and expiry, not the file's copy.
                        serial: h.serial,
                        expiry: h.expiry,
                        ..k
                    }),
                    Err(e) => {
                        warn!(path = %settings.kept_path.display(), "the kept remote catalog is not used: {e}");
                        None
                    }
                },
                Err(err) => {
                    warn!(path = %settings.kept_path.display(), %err, "the kept remote catalog is unreadable");
                    None
                }
            },
            Ok(None) => None,
            Err(err) => {
                warn!(path = %settings.kept_path.display(), %err, "cannot read the kept remote catalog");
                None
            }
        };
        let mut r = Remote {
            info: RemoteCatalogInfo {
                url: settings.url.clone(),
                ..RemoteCatalogInfo::default()
            },
            settings,
            fetch,
            files,
            kept,
        };
        r.note_in_force(now);
        r
    }

    /// The remote catalog in force, as a layer source.
    pub fn in_force(&self) -> Option<Source> {
        self.kept.as_ref().map(Kept::source)
    }

    pub fn info(&self) -> &RemoteCatalogInfo {
        &self.info
    }

    fn note_in_force(&mut self, now: u64) {
        self.info.serial = self.kept.as_ref().map(|k| k.serial);
        self.info.expiry = self.kept.as_ref().map(|k| k.expiry);
        if let Some(k) = self.kept.as_ref().filter(|k| k.expiry <= now) {
            self.info.error.get_or_insert_with(|| {
                format!(
                    "the remote catalog in force (serial {}) expired at {}; it stays in force until a newer one arrives",
                    k.serial,
                    crate::clock::format_unix(k.expiry)
                )
            });
        }
    }

    /// One fetch. A dry run verifies and validates, says what would change, and changes
    /// nothing (not even the status).
    pub async fn poll(
        &mut self,
        engine: &impl Engine,
        dry_run: bool,
        now: u64,
    ) -> Result<FetchAnswer, String> {
        let r = self.try_poll(engine, dry_run, now).await;
        if dry_run {
            return r;
        }
        self.info.last_attempt = Some(now);
        match &r {
            Ok(a) => {
                self.info.last_success = Some(now);
                self.info.error = None;
                if !a.unchanged {
                    info!(
                        url = %self.settings.url,
                        serial = a.serial,
                        "remote catalog serial {} in force: {} added, {} changed, {} removed",
                        a.serial.unwrap_or(0),
                        a.added.len(),
                        a.changed.len(),
                        a.removed.len()
                    );
                }
            }
            Err(e) => {
                self.info.failures_total += 1;
                self.info.error = Some(e.clone());
                warn!(url = %self.settings.url, "remote catalog: nothing changed: {e}");
            }
        }
        self.note_in_force(now);
        r
    }

    async fn try_poll(
        &mut self,
        engine: &impl Engine,
        dry_run: bool,
        now: u64,
    ) -> Result<FetchAnswer, String> {
        let etag = self.kept.as_ref().and_then(|k| k.etag.clone());
        let unchanged = |serial| FetchAnswer {
            dry_run,
            unchanged: true,
            serial,
            ..FetchAnswer::default()
        };
        let (catalog, signature, etag) = match self.fetch.fetch(etag.as_deref()).await {
            Err(e) => return Err(format!("cannot fetch {}: {e}", self.settings.url)),
            Ok(Fetched::NotModified) => {
                if !dry_run {
                    self.info.not_modified_total += 1;
                }
                return Ok(unchanged(self.info.serial));
            }
            Ok(Fetched::Changed {
                catalog,
                signature,
                etag,
            }) => (catalog, signature, etag),
        };
        let verdict = verify(
            &self.settings.url,
            &catalog,
            &signature,
            &self.settings.keys,
            self.kept.as_ref(),
            now,
        )
        .map_err(|e| e.to_string())?;
        let (header, text) = match verdict {
            Verdict::Same => {
                // The same catalog under a new ETag (a server restart, another replica):
                // remember the ETag so the next poll is a 304 again.
                if let Some(k) = self.kept.as_mut().filter(|k| k.etag != etag && !dry_run) {
                    k.etag = etag;
                    let k = k.clone();
                    self.keep(&k).await;
                }
                return Ok(unchanged(self.info.serial));
            }
            Verdict::New { header, text } => (header, text),
        };
        let kept = Kept {
            url: self.settings.url.clone(),
            serial: header.serial,
            expiry: header.expiry,
            etag,
            saved_at: now,
            catalog: text,
            signature: String::from_utf8_lossy(&signature).into_owned(),
        };
        let mut answer = engine.offer(kept.source(), dry_run).await.map_err(|e| {
            format!(
                "serial {} does not validate as a catalog layer: {e}",
                header.serial
            )
        })?;
        answer.dry_run = dry_run;
        answer.serial = Some(header.serial);
        if !dry_run {
            self.keep(&kept).await;
            self.kept = Some(kept);
        }
        Ok(answer)
    }

    /// Writes the kept copy; a failure is logged (the catalog is in force all the same, and
    /// the next start fetches it again).
    async fn keep(&self, k: &Kept) {
        let written = match serde_json::to_vec_pretty(k) {
            Ok(bytes) => {
                self.files
                    .write(&self.settings.kept_path, bytes, 0o600)
                    .await
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(err) = written {
            warn!(path = %self.settings.kept_path.display(), %err, "cannot keep the remote catalog on disk");
        }
    }
}

/// The header of a kept catalog's (signed) text.
fn signed_header(k: &Kept) -> Result<crate::catalog::remote::Header, verify::Refused> {
    crate::catalog::remote::header(&k.source()).map_err(|d| {
        verify::Refused::Header(
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// An on-demand fetch (`berth catalog fetch [--dry-run]`).
#[derive(Debug)]
pub struct Request {
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<FetchAnswer, String>>,
}

/// Asks the remote catalog's task for a fetch now.
#[derive(Debug, Clone)]
pub struct RemoteHandle {
    tx: mpsc::Sender<Request>,
}

impl RemoteHandle {
    pub async fn fetch(&self, dry_run: bool) -> Result<FetchAnswer, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { dry_run, reply })
            .await
            .map_err(|_| "the remote catalog's task has stopped".to_string())?;
        rx.await
            .map_err(|_| "the remote catalog's task has stopped".to_string())?
    }
}

/// `base`, jittered by up to a tenth either way, so that a fleet of VMs started together does
/// not poll together.
pub fn jittered(base: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let frac = (r % 2001) as f64 / 10_000.0; // 0 ..= 0.2
    base.mul_f64(0.9 + frac)
}

/// Starts the task: a poll at once, then every `poll_interval` (jittered), and whenever asked.
pub fn spawn<F: Fetch, Fs: Files>(
    remote: Remote<F, Fs>,
    engine: impl Engine,
) -> (RemoteHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(run(remote, engine, rx));
    (RemoteHandle { tx }, task)
}

async fn run<F: Fetch, Fs: Files>(
    mut remote: Remote<F, Fs>,
    engine: impl Engine,
    mut requests: mpsc::Receiver<Request>,
) {
    engine.seen(remote.info.clone()).await;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                let _reported = remote.poll(&engine, false, crate::clock::now_unix()).await;
                next = tokio::time::Instant::now() + jittered(remote.settings.poll_interval);
            }
            r = requests.recv() => {
                let Some(req) = r else { break };
                let answer = remote.poll(&engine, req.dry_run, crate::clock::now_unix()).await;
                let _caller_may_have_left = req.reply.send(answer);
            }
        }
        engine.seen(remote.info.clone()).await;
    }
}

#[cfg(test)]
mod tests;
