//! What the rest of the daemon can ask of the engine: [`Command`]s sent through a [`Handle`],
//! and the errors they can get back.

use std::sync::Arc;

use berth_proto::{DaemonInfo, Event, PassReport, Plan, ServiceStatus, Snapshot, Verb};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::catalog::Catalog;
use crate::proxy::ports::{PortSpec, Shared as ProxyShared};
use crate::state::StateError;

/// Errors an API caller can get back; each maps to one HTTP status in the api module.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown service {0:?} (see `berth ls`)")]
    UnknownService(String),
    /// Policy refuses the service (denied, an image not allowed) or the start (a ceiling);
    /// `reason` names the rule and its file:line.
    #[error("{service} cannot be turned on: {reason}")]
    Refused { service: String, reason: String },
    #[error("service {service:?} is required by {rule} and cannot be turned off or stopped")]
    Required { service: String, rule: String },
    #[error("service {0:?} is not enabled (use `berth enable {0}`)")]
    NotEnabled(String),
    /// No catalog berth can apply (every message names its file and line).
    #[error("{0}")]
    Catalog(String),
    #[error("cannot keep your choice")]
    State(#[source] StateError),
    /// The actual state could not be read (systemd or the unit directory did not answer).
    #[error("{0}")]
    Gather(String),
    #[error("{0} is not an on-demand service")]
    NotOnDemand(String),
    #[error("{service} cannot start: {reason}")]
    CannotStart { service: String, reason: String },
    #[error("the berth daemon is shutting down")]
    Gone,
}

#[derive(Debug)]
pub enum Command {
    /// A user's verb on a service, carried out by a pass.
    Act {
        service: String,
        verb: Verb,
        reply: oneshot::Sender<Result<PassReport, EngineError>>,
    },
    Reconcile {
        reply: Option<oneshot::Sender<PassReport>>,
    },
    Plan {
        reply: oneshot::Sender<Result<Plan, EngineError>>,
    },
    /// Statuses as seen now (one service: inspected freshly).
    Status {
        service: Option<String>,
        reply: oneshot::Sender<Result<Vec<ServiceStatus>, EngineError>>,
    },
    Info {
        reply: oneshot::Sender<DaemonInfo>,
    },
    ReloadCatalog {
        reply: Option<oneshot::Sender<Result<usize, EngineError>>>,
    },
    /// A client connected to an on-demand service that is not running: start it.
    Demand {
        service: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// An on-demand service had no connection for its idle time: stop it.
    Idle {
        service: String,
    },
    /// Where the local web page serves, or why it does not (part of the daemon's info).
    Web(super::WebSeen),
    /// A verified remote catalog: validated as the layer after the admin files and, unless
    /// `dry_run`, put in force (a pass follows).
    OfferRemote {
        source: crate::catalog::Source,
        dry_run: bool,
        reply: oneshot::Sender<Result<berth_proto::FetchAnswer, EngineError>>,
    },
    /// The remote catalog's status (part of the daemon's info).
    RemoteSeen(berth_proto::RemoteCatalogInfo),
    /// What is wrong with a changed config.toml, or `None` once it validates again (part of
    /// the daemon's info).
    ConfigError(Option<String>),
    /// Scheduled backups as their task last ran them (part of the daemon's info).
    BackupSeen(Option<berth_proto::BackupScheduleInfo>),
    /// `berth update [NAME]`: pull, compare, swap where the images changed; answered once
    /// every service has its outcome.
    Update {
        service: Option<String>,
        reply: oneshot::Sender<Result<berth_proto::UpdateAnswer, EngineError>>,
    },
    /// The current picture and, from that very moment, every event after it.
    Subscribe {
        reply: oneshot::Sender<(Arc<Snapshot>, broadcast::Receiver<Event>)>,
    },
}

/// A cheap handle for sending commands to the engine task.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) catalog: watch::Receiver<Arc<Catalog>>,
    pub(super) snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    pub(super) specs: watch::Receiver<Vec<PortSpec>>,
    pub(super) relays: watch::Receiver<Vec<crate::proxy::relays::RelayWant>>,
    pub(super) proxy: Arc<ProxyShared>,
    pub(super) units_changed: Arc<Notify>,
    pub(super) layers_changed: Arc<Notify>,
    pub(super) events: broadcast::Sender<Event>,
}

impl Handle {
    /// Tells the engine that a unit it watches changed state (a debounced pass follows).
    /// Never waits: the D-Bus watch that calls it must keep reading, or the shared connection
    /// stalls (zbus stops reading when a stream's queue is full) and with it the engine's own
    /// calls.
    pub fn units_changed(&self) {
        self.units_changed.notify_one();
    }

    /// Tells the engine that a catalog layer or the policy may have changed on disk: it
    /// waits a moment for more writes, reads the layers again if they changed, and applies a
    /// catalog that validates (a broken one is reported and changes nothing). Never waits.
    pub fn layers_changed(&self) {
        self.layers_changed.notify_one();
    }

    /// The notifier behind [`Handle::layers_changed`], for the watcher.
    pub fn layers_changed_notify(&self) -> Arc<Notify> {
        self.layers_changed.clone()
    }

    /// The notifier behind [`Handle::units_changed`], for an edge that watches units.
    pub fn units_changed_notify(&self) -> Arc<Notify> {
        self.units_changed.clone()
    }

    pub fn sender(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// The stable ports the proxy should serve, updated after every pass.
    pub fn port_specs(&self) -> watch::Receiver<Vec<PortSpec>> {
        self.specs.clone()
    }

    /// The relays the proxy should make inside consumers' pods, updated with the port specs.
    pub fn relay_wants(&self) -> watch::Receiver<Vec<crate::proxy::relays::RelayWant>> {
        self.relays.clone()
    }

    /// State shared with the proxy (bind errors, counters, backends).
    pub fn proxy(&self) -> Arc<ProxyShared> {
        self.proxy.clone()
    }

    /// The newest health snapshot, refreshed after every pass and every health tick.
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.clone()
    }

    /// Every event from now on, without the snapshot (consumers that only react to changes).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| EngineError::Gone)?;
        rx.await.map_err(|_| EngineError::Gone)
    }

    pub async fn act(&self, service: &str, verb: Verb) -> Result<PassReport, EngineError> {
        let service = service.to_string();
        self.ask(|reply| Command::Act {
            service,
            verb,
            reply,
        })
        .await?
    }

    /// Updates one service (or every enabled one); waits for swaps to prove healthy.
    pub async fn update(
        &self,
        service: Option<&str>,
    ) -> Result<berth_proto::UpdateAnswer, EngineError> {
        let service = service.map(str::to_string);
        self.ask(|reply| Command::Update { service, reply }).await?
    }

    pub async fn status(&self, service: Option<&str>) -> Result<Vec<ServiceStatus>, EngineError> {
        let service = service.map(str::to_string);
        self.ask(|reply| Command::Status { service, reply }).await?
    }

    pub async fn info(&self) -> Result<DaemonInfo, EngineError> {
        self.ask(|reply| Command::Info { reply }).await
    }

    pub async fn reconcile(&self) -> Result<PassReport, EngineError> {
        self.ask(|reply| Command::Reconcile { reply: Some(reply) })
            .await
    }

    pub async fn plan(&self) -> Result<Plan, EngineError> {
        self.ask(|reply| Command::Plan { reply }).await?
    }

    pub async fn reload(&self) -> Result<usize, EngineError> {
        self.ask(|reply| Command::ReloadCatalog { reply: Some(reply) })
            .await?
    }

    /// Tells the engine where the local web page serves, or why not.
    pub async fn set_web(&self, web: super::WebSeen) {
        if self.tx.send(Command::Web(web)).await.is_err() {
            tracing::debug!("engine gone; web status dropped");
        }
    }

    /// Tells the engine what is wrong with config.toml (or that nothing is).
    pub async fn set_config_error(&self, error: Option<String>) {
        if self.tx.send(Command::ConfigError(error)).await.is_err() {
            tracing::debug!("engine gone; config error dropped");
        }
    }

    /// Reports how scheduled backups went.
    pub async fn set_backup_schedule(&self, info: Option<berth_proto::BackupScheduleInfo>) {
        if self.tx.send(Command::BackupSeen(info)).await.is_err() {
            tracing::debug!("engine gone; backup status dropped");
        }
    }

    /// The catalog in force, as it changes.
    pub fn catalog_changes(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    pub async fn subscribe(
        &self,
    ) -> Result<(Arc<Snapshot>, broadcast::Receiver<Event>), EngineError> {
        self.ask(|reply| Command::Subscribe { reply }).await
    }
}

impl crate::proxy::ports::Engine for Handle {
    async fn demand(&self, service: &str) -> Result<(), crate::proxy::ports::DemandError> {
        let service = service.to_string();
        self.ask(|reply| Command::Demand { service, reply })
            .await?
            .map_err(Into::into)
    }

    async fn idle(&self, service: &str) {
        let service = service.to_string();
        if self.tx.send(Command::Idle { service }).await.is_err() {
            tracing::debug!("engine gone; idle report dropped");
        }
    }

    fn seen_idle(&self, service: &str) -> bool {
        self.seen(service, |st| st.state == berth_proto::State::Idle)
    }
}

impl crate::remote::Engine for Handle {
    async fn offer(
        &self,
        source: crate::catalog::Source,
        dry_run: bool,
    ) -> Result<berth_proto::FetchAnswer, String> {
        self.ask(|reply| Command::OfferRemote {
            source,
            dry_run,
            reply,
        })
        .await
        .and_then(|r| r)
        .map_err(|e| e.to_string())
    }

    async fn seen(&self, info: berth_proto::RemoteCatalogInfo) {
        if self.tx.send(Command::RemoteSeen(info)).await.is_err() {
            tracing::debug!("engine gone; remote catalog status dropped");
        }
    }
}

impl Handle {
    /// Whether the last snapshot shows `service` and `f` holds for it.
    fn seen(&self, service: &str, mut f: impl FnMut(&ServiceStatus) -> bool) -> bool {
        self.snapshot.borrow().as_ref().is_some_and(|s| {
            s.services
                .iter()
                .find(|st| st.name == service)
                .is_some_and(&mut f)
        })
    }
}
