//! Image pulls: run in the background, one task per image, progress on the event stream.
//!
//! A failed pull is not retried until the user acts (`berth start`, `enable`, `restart`, or a
//! client connecting to an on-demand service), and that holds across restarts of the daemon:
//! failures are kept in `pulls.toml` in the state directory (atomically), so a reboot does not
//! silently pull again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use berth_proto::{Event, PullProgress};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use crate::files::Files;
use crate::plan::PullState;
use crate::podman::{Podman, PodmanError};

/// How a pull task ended.
#[derive(Debug)]
pub(super) struct PullDone {
    pub image: String,
    pub result: Result<(), String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Failure {
    error: String,
    at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default)]
    failed: BTreeMap<String, Failure>,
}

#[derive(Debug)]
pub(super) struct Pulls {
    running: BTreeSet<String>,
    failed: BTreeMap<String, Failure>,
    path: PathBuf,
    done_tx: mpsc::UnboundedSender<PullDone>,
}

/// Podman's own words for why a pull failed, without the image name berth already says.
pub fn reason(e: &PodmanError) -> String {
    match e {
        PodmanError::Pull { message, .. } => message.clone(),
        other => {
            let cause = crate::engine::source_chain(other);
            if cause.is_empty() {
                other.to_string()
            } else {
                format!("{other}: {cause}")
            }
        }
    }
}

impl Pulls {
    /// Failures kept from before; a broken file is logged and ignored (it only spares pulls).
    pub async fn load(
        files: &impl Files,
        path: PathBuf,
        done_tx: mpsc::UnboundedSender<PullDone>,
    ) -> Self {
        let kept = match files.read(&path).await {
            Ok(Some(b)) => toml::from_str::<Kept>(&String::from_utf8_lossy(&b)).unwrap_or_else(|e| {
                warn!(path = %path.display(), err = %e.message(), "cannot read the failed pulls; they will be retried");
                Kept::default()
            }),
            Ok(None) => Kept::default(),
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot read the failed pulls; they will be retried");
                Kept::default()
            }
        };
        Pulls {
            running: BTreeSet::new(),
            failed: kept.failed,
            path,
            done_tx,
        }
    }

    async fn save(&self, files: &impl Files) {
        let kept = Kept {
            failed: self.failed.clone(),
        };
        let text = format!(
            "# berth: image pulls that failed; each is retried when you start the service again.\n{}",
            toml::to_string(&kept).unwrap_or_default()
        );
        if let Err(err) = files.write(&self.path, text.into_bytes(), 0o600).await {
            warn!(path = %self.path.display(), %err, "cannot keep the failed pulls");
        }
    }

    /// The planner's view: running and failed pulls.
    pub fn states(&self) -> BTreeMap<String, PullState> {
        let mut out: BTreeMap<String, PullState> = self
            .failed
            .iter()
            .map(|(i, f)| (i.clone(), PullState::Failed(f.error.clone())))
            .collect();
        for i in &self.running {
            out.insert(i.clone(), PullState::Running);
        }
        out
    }

    /// Failed pulls, image → reason.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.failed
            .iter()
            .map(|(i, f)| (i.clone(), f.error.clone()))
            .collect()
    }

    /// The user acted on a service: its failed pulls may run again.
    pub async fn forget(&mut self, images: &[String], files: &impl Files) {
        let before = self.failed.len();
        self.failed.retain(|i, _| !images.contains(i));
        if self.failed.len() != before {
            self.save(files).await;
        }
    }

    /// Starts pulling `image` for `services`, unless it is being pulled already.
    pub fn start<P: Podman + Clone + 'static>(
        &mut self,
        image: &str,
        services: Vec<String>,
        podman: &P,
        events: &broadcast::Sender<Event>,
    ) {
        if !self.running.insert(image.to_string()) {
            return;
        }
        let (podman, events, done, image) = (
            podman.clone(),
            events.clone(),
            self.done_tx.clone(),
            image.to_string(),
        );
        tokio::spawn(async move {
            let send = |progress| {
                // Nobody listening is fine: the stream is for whoever watches.
                let _no_subscribers = events.send(Event::Pull {
                    image: image.clone(),
                    services: services.clone(),
                    progress,
                });
            };
            send(PullProgress::Started);
            info!(%image, "pulling");
            let (ptx, mut prx) = mpsc::channel::<String>(32);
            let result = {
                let pulled = podman.pull(&image, ptx);
                tokio::pin!(pulled);
                loop {
                    tokio::select! {
                        r = &mut pulled => break r,
                        Some(line) = prx.recv() => {
                            info!(%image, "pull of {image}: {line}");
                            send(PullProgress::Line { text: line });
                        }
                    }
                }
            };
            // Lines still queued when the pull ended.
            while let Ok(line) = prx.try_recv() {
                send(PullProgress::Line { text: line });
            }
            let result = result.map_err(|e| reason(&e));
            match &result {
                Ok(()) => send(PullProgress::Done),
                Err(error) => send(PullProgress::Failed {
                    error: error.clone(),
                }),
            }
            if done.send(PullDone { image, result }).is_err() {
                warn!("engine gone before a pull finished");
            }
        });
    }

    /// A pull task ended. Returns whether it failed.
    pub async fn done(&mut self, d: &PullDone, now: u64, files: &impl Files) -> bool {
        self.running.remove(&d.image);
        match &d.result {
            Ok(()) => {
                info!(image = %d.image, "pulled {}", d.image);
                if self.failed.remove(&d.image).is_some() {
                    self.save(files).await;
                }
                false
            }
            Err(e) => {
                warn!(image = %d.image, err = %e, "pull of {} failed: {e}", d.image);
                self.failed.insert(
                    d.image.clone(),
                    Failure {
                        error: e.clone(),
                        at: now,
                    },
                );
                self.save(files).await;
                true
            }
        }
    }

    /// An image turned out to be present (pulled by hand, preloaded): its failure is moot.
    pub async fn present(&mut self, image: &str, files: &impl Files) {
        if self.failed.remove(image).is_some() {
            self.save(files).await;
        }
    }
}
