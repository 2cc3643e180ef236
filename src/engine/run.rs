//! The engine's loop: one task, one thing at a time. It wakes for a command, a unit signal
//! (debounced into one pass), a finished pull or probe, the health tick (refresh statuses),
//! the probe tick (start due probes) and the slow safety tick (look for catalog changes on
//! disk, then a pass).

use std::time::Duration;

use tracing::{info, warn};

use super::probes::ProbeDone;
use super::pulls::PullDone;
use super::remotes::RemoteDone;
use super::{Command, Engine, SAFETY_INTERVAL};
use crate::clock::Clock;
use crate::files::Files;
use crate::health;
use crate::podman::Podman;
use crate::systemd::Systemd;

/// Unit signals within this window become one pass.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Layer changes within this window become one reload: an editor or `cp` of several files
/// writes in bursts, and a half-written set should not be read.
pub(super) const LAYERS_DEBOUNCE: Duration = Duration::from_millis(150);

enum Wake {
    Command(Command),
    UnitsChanged,
    Pull(PullDone),
    Probe(ProbeDone),
    Remote(RemoteDone),
    HealthTick,
    ProbeTick,
    SafetyTick,
    Debounced,
    LayersChanged,
    LayersSettled,
    Closed,
}

impl<S, P, F, C> Engine<S, P, F, C>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    F: Files,
    C: Clock,
{
    /// A pass, then a fresh look at every service.
    async fn pass_and_refresh(&mut self) -> berth_proto::PassReport {
        let report = self.pass().await;
        self.refresh_all().await;
        report
    }

    async fn refresh_all(&mut self) {
        if let Err(err) = self.refresh(None).await {
            warn!(%err, "cannot refresh the services' states: {err}");
        }
    }

    async fn reload_catalog(&mut self) -> Result<usize, super::EngineError> {
        let now = self.now();
        let r = self.catalog.reload(&self.edges.files, now).await;
        self.reloaded(r)
    }

    fn reloaded(&self, r: Result<usize, String>) -> Result<usize, super::EngineError> {
        match &r {
            Ok(n) => {
                info!(services = n, "catalog reloaded: {n} services");
                self.out.catalog.send_replace(self.catalog.current.clone());
            }
            Err(e) => warn!(err = %e, "catalog change rejected, nothing changed: {e}"),
        }
        r.map_err(super::EngineError::Catalog)
    }

    /// Runs the engine until every [`super::Handle`] is dropped.
    pub async fn run(mut self) {
        let Some(mut intake) = self.intake.take() else {
            return;
        };
        // Probes keep their own intervals; this only looks for due ones.
        let mut probe_tick = tokio::time::interval(Duration::from_secs(1));
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_tick = tokio::time::interval(health::TICK);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut safety_tick = tokio::time::interval(SAFETY_INTERVAL);
        safety_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty_since: Option<tokio::time::Instant> = None;
        let mut layers_since: Option<tokio::time::Instant> = None;
        loop {
            let until = dirty_since.map(|t| t + DEBOUNCE);
            let layers_until = layers_since.map(|t| t + LAYERS_DEBOUNCE);
            let wake = tokio::select! {
                c = intake.commands.recv() => c.map_or(Wake::Closed, Wake::Command),
                () = intake.units_changed.notified() => Wake::UnitsChanged,
                () = intake.layers_changed.notified() => Wake::LayersChanged,
                Some(d) = intake.pulls.recv() => Wake::Pull(d),
                Some(d) = intake.probes.recv() => Wake::Probe(d),
                Some(d) = intake.remotes.recv() => Wake::Remote(d),
                _ = health_tick.tick() => Wake::HealthTick,
                _ = probe_tick.tick() => Wake::ProbeTick,
                _ = safety_tick.tick() => Wake::SafetyTick,
                () = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Debounced,
                () = async {
                    match layers_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => Wake::LayersSettled,
            };
            match wake {
                Wake::Closed => break,
                Wake::Command(c) => self.command(c).await,
                Wake::UnitsChanged => {
                    dirty_since.get_or_insert_with(tokio::time::Instant::now);
                }
                Wake::Debounced => {
                    dirty_since = None;
                    self.pass_and_refresh().await;
                }
                Wake::LayersChanged => {
                    // Each write moves the window: the reload reads the files once they rest.
                    layers_since = Some(tokio::time::Instant::now());
                }
                Wake::LayersSettled => {
                    layers_since = None;
                    let now = self.now();
                    if let Some(r) = self.catalog.reload_if_changed(&self.edges.files, now).await {
                        // A rejected change is logged and on display (`berth ls`, /metrics,
                        // the push report); the pass shows it and changes nothing else.
                        let _kept_last_good = self.reloaded(r);
                        self.pass_and_refresh().await;
                    }
                }
                Wake::Pull(d) => {
                    let now = self.now();
                    self.pulls.done(&d, now, &self.edges.files).await;
                    self.update_pulled(&d.image, &d.result).await;
                    self.pass_and_refresh().await;
                }
                Wake::Probe(d) => {
                    if self.probes.done(d) {
                        self.refresh_all().await;
                    }
                }
                Wake::Remote(d) => {
                    let (name, up) = (d.name.clone(), d.result.is_ok());
                    if self.remotes.done(d) {
                        if up {
                            info!(service = %name, "the cloud's {name} answers");
                        } else {
                            warn!(service = %name, "the cloud's {name} does not answer");
                        }
                        self.refresh_all().await;
                    }
                }
                Wake::HealthTick => {
                    self.refresh_all().await;
                    self.start_probes();
                }
                Wake::ProbeTick => {
                    self.start_probes();
                    // A swap's window is judged every second, not every health tick.
                    if self.rollouts.any_pending() {
                        self.refresh_all().await;
                    }
                }
                Wake::SafetyTick => {
                    let now = self.now();
                    if let Some(r) = self.catalog.reload_if_changed(&self.edges.files, now).await {
                        // Rejected changes are logged and on display; the pass runs anyway.
                        let _kept_last_good = self.reloaded(r);
                    }
                    self.pass_and_refresh().await;
                }
            }
            // A rollback or an update asked for a pass (each pass may settle another).
            while std::mem::take(&mut self.rollouts.pass_due) {
                self.pass_and_refresh().await;
            }
        }
    }

    fn start_probes(&mut self) {
        let now = self.now();
        self.remotes.start_due(&self.catalog.current, now);
        let catalog = self.catalog.current.clone();
        self.probes.start_due(
            &catalog,
            &self.seen,
            &self.inspected,
            &self.edges.podman,
            now,
        );
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Act {
                service,
                verb,
                reply,
            } => {
                let r = match self.act(&service, verb).await {
                    Ok(()) => Ok(self.pass_and_refresh().await),
                    Err(e) => Err(e),
                };
                let _caller_may_have_left = reply.send(r);
            }
            Command::Reconcile { reply } => {
                let r = self.pass_and_refresh().await;
                if let Some(reply) = reply {
                    let _caller_may_have_left = reply.send(r);
                }
            }
            Command::Plan { reply } => {
                let r = self.plan().await;
                let _caller_may_have_left = reply.send(r);
            }
            Command::Status { service, reply } => {
                let r = self.refresh(service.as_deref()).await;
                let _caller_may_have_left = reply.send(r);
            }
            Command::Info { reply } => {
                let r = self.info().await;
                let _caller_may_have_left = reply.send(r);
            }
            Command::ReloadCatalog { reply } => {
                let r = self.reload_catalog().await;
                if r.is_ok() {
                    self.pass_and_refresh().await;
                }
                if let Some(reply) = reply {
                    let _caller_may_have_left = reply.send(r);
                }
            }
            Command::Demand { service, reply } => {
                let r = self.demand(&service).await;
                let _caller_may_have_left = reply.send(r);
                self.refresh_all().await;
            }
            Command::Idle { service } => {
                if self.intent.awake.remove(&service) {
                    info!(%service, "{service} is idle: stopping it");
                    self.pass_and_refresh().await;
                }
            }
            Command::Web(web) => {
                if self.web != web {
                    self.web = web;
                    self.refresh_all().await;
                }
            }
            Command::OfferRemote {
                source,
                dry_run,
                reply,
            } => {
                let now = self.now();
                let r = self
                    .catalog
                    .offer_remote(&self.edges.files, source, now, dry_run)
                    .await;
                let applied = r.is_ok() && !dry_run;
                if applied {
                    self.out.catalog.send_replace(self.catalog.current.clone());
                }
                let _caller_may_have_left = reply.send(r.map_err(super::EngineError::Catalog));
                if applied {
                    self.pass_and_refresh().await;
                }
            }
            Command::RemoteSeen(info) => {
                if self.remote_seen.as_ref() != Some(&info) {
                    self.remote_seen = Some(info);
                    self.refresh_all().await;
                }
            }
            Command::BackupSeen(b) => {
                if self.backup_seen != b {
                    self.backup_seen = b;
                    self.refresh_all().await;
                }
            }
            Command::ConfigError(e) => {
                if self.config_error != e {
                    self.config_error = e;
                    self.refresh_all().await;
                }
            }
            Command::Update { service, reply } => self.update(service, reply).await,
            Command::Subscribe { reply } => {
                let snapshot = self.current_snapshot().await;
                // Subscribed here, in the engine's own task: no event can slip in between
                // the snapshot and the first event the subscriber sees.
                let rx = self.out.events.subscribe();
                let _caller_may_have_left = reply.send((snapshot, rx));
            }
        }
    }
}
