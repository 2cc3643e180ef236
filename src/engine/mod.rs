//! The engine: the one task that owns berth's state and the only code that changes the world
//! (unit files, systemd, Podman). Everything else talks to it through [`Command`]s sent by a
//! [`Handle`], and learns what happens from its snapshots and its event stream.
//!
//! One job per file:
//! - `run.rs`: the loop — commands, timers, unit signals, finished pulls and probes;
//! - `command.rs`: the commands, the handle and the errors callers get back;
//! - `catalog.rs`: the catalog in force, reloads, the last good copy kept on disk;
//! - `desired.rs`: desired state and the proxy's port specs (pure);
//! - `gather.rs`: the actual state, and the facts a status refresh needs;
//! - `apply.rs`: one pass — plan and carry it out, one failing service isolated;
//! - `pulls.rs`: image pulls in the background, failures kept across restarts;
//! - `rollouts.rs`: image swaps with a health window and rollback, `berth update`;
//! - `inspect.rs`: the cache of container inspections;
//! - `probes.rs`: berth's own HTTP/TCP probes;
//! - `remotes.rs`: health checks of the services the cloud provides;
//! - `view.rs`: the status of every service (pure);
//! - `events.rs`: transitions into events (pure).
//!
//! The edges are traits ([`Systemd`], [`Podman`], [`Files`], [`Clock`]) so the engine's tests
//! run against in-memory implementations in milliseconds (`crate::testkit`).

mod apply;
mod catalog;
mod command;
mod desired;
mod events;
mod gather;
mod inspect;
mod probes;
mod pulls;
mod remotes;
mod rollouts;
mod run;
mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::{Counters, DaemonInfo, Event, Snapshot};
use tokio::sync::{broadcast, mpsc, watch, Notify};

pub use self::apply::ApplyError;
use self::catalog::CatalogState;
pub use self::command::{Command, EngineError, Handle};
use self::desired::Intent;
use self::events::Tracker;
pub use self::gather::GatherError;
use self::inspect::InspectCache;
use self::probes::{ProbeDone, Probes};
pub use self::pulls::reason as pull_reason;
use self::pulls::{PullDone, Pulls};
use self::remotes::{RemoteChecks, RemoteDone};
pub use self::rollouts::short_id;
use self::rollouts::{Rollouts, UpdateRequest};
use crate::clock::Clock;
use crate::files::{Files, UnitDir};
use crate::paths::Paths;
use crate::podman::Podman;
use crate::proxy::ports::{PortSpec, Shared as ProxyShared};
use crate::state::{SecretStore, StateError, UserState};
use crate::systemd::Systemd;
use crate::units::RenderCtx;

/// How long an apply waits for one start or stop job before moving on.
const JOB_WAIT: Duration = Duration::from_secs(60);
/// The slow safety pass.
pub const SAFETY_INTERVAL: Duration = Duration::from_secs(60);
/// How many events a slow subscriber may fall behind before it gets a fresh snapshot.
const EVENT_BACKLOG: usize = 1024;

/// The engine's edges to the world.
#[derive(Debug, Clone)]
pub struct Edges<S, P, F, C> {
    pub systemd: S,
    pub podman: P,
    pub files: F,
    pub clock: C,
}

/// The local web page as the daemon reported it (see [`Command::Web`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebSeen {
    pub url: Option<String>,
    pub error: Option<String>,
}

/// Podman's API as the engine last found it.
#[derive(Debug, Default)]
struct PodmanSeen {
    version: Option<String>,
    /// Why it does not answer, until it answers again.
    error: Option<String>,
}

pub struct Engine<S, P, F, C> {
    edges: Edges<S, P, F, C>,
    paths: Paths,
    ctx: RenderCtx,
    units: UnitDir,
    catalog: CatalogState,
    state: UserState,
    secrets: SecretStore,
    pulls: Pulls,
    rollouts: Rollouts,
    /// `berth update` calls waiting for their outcomes.
    updates: Vec<UpdateRequest>,
    intent: Intent,
    /// What the last pass could not do, by service.
    apply_errors: BTreeMap<String, String>,
    /// The planner's reasons for wanted services that wait.
    waiting: BTreeMap<String, String>,
    counters: Counters,
    /// Check NeedDaemonReload of every unit on the next pass (first pass after a start).
    check_stale: bool,
    first_pass: bool,
    podman_seen: PodmanSeen,
    web: WebSeen,
    /// The remote catalog's status, as its task last reported it.
    remote_seen: Option<berth_proto::RemoteCatalogInfo>,
    /// What is wrong with a changed config.toml (see [`Command::ConfigError`]).
    config_error: Option<String>,
    /// Scheduled backups, as their task last reported them.
    backup_seen: Option<berth_proto::BackupScheduleInfo>,
    inspected: InspectCache,
    probes: Probes,
    remotes: RemoteChecks,
    seen: Tracker,
    /// The daemon info of the last published snapshot (its changes are events).
    last_info: Option<DaemonInfo>,
    /// Last log lines of failed services, with the unit state they were read in.
    log_tails: BTreeMap<String, (String, Vec<String>)>,
    intake: Option<Intake>,
    out: Outputs,
    proxy: Arc<ProxyShared>,
}

/// Channels into the engine's loop.
struct Intake {
    commands: mpsc::Receiver<Command>,
    pulls: mpsc::UnboundedReceiver<PullDone>,
    probes: mpsc::UnboundedReceiver<ProbeDone>,
    remotes: mpsc::UnboundedReceiver<RemoteDone>,
    units_changed: Arc<Notify>,
    /// A watcher saw a catalog layer or the policy change (see `crate::watch`).
    layers_changed: Arc<Notify>,
}

/// What the engine publishes.
struct Outputs {
    catalog: watch::Sender<Arc<crate::catalog::Catalog>>,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    specs: watch::Sender<Vec<PortSpec>>,
    relays: watch::Sender<Vec<crate::proxy::relays::RelayWant>>,
    events: broadcast::Sender<Event>,
}

impl<S, P, F, C> std::fmt::Debug for Engine<S, P, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// `a: b: c` from an error's sources, for one-line messages.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// An error and its sources in one line: `cannot write x: permission denied`.
pub fn full_message(e: &dyn std::error::Error) -> String {
    let chain = source_chain(e);
    if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    }
}

impl<S, P, F, C> Engine<S, P, F, C>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    F: Files,
    C: Clock,
{
    /// Loads the user's state, the failed pulls and the catalog. A broken state file is an
    /// error (nothing is touched); a broken catalog is not (see `catalog.rs`).
    pub async fn new(
        edges: Edges<S, P, F, C>,
        paths: Paths,
        ctx: RenderCtx,
    ) -> Result<(Self, Handle), StateError> {
        Self::with_remote(edges, paths, ctx, None).await
    }

    /// [`Engine::new`] with the verified remote catalog kept from before (`crate::remote`)
    /// as the layer after the admin files.
    pub async fn with_remote(
        edges: Edges<S, P, F, C>,
        paths: Paths,
        ctx: RenderCtx,
        remote: Option<crate::catalog::Source>,
    ) -> Result<(Self, Handle), StateError> {
        let state = UserState::load(&edges.files, &paths.state_file()).await?;
        let secrets = SecretStore::new(paths.secrets_dir());
        let now = edges.clock.now_unix();
        let catalog = CatalogState::boot(
            catalog::Places {
                etc: paths.etc().to_path_buf(),
                user: paths.user_catalog().to_path_buf(),
            },
            &edges.files,
            paths.state_dir.join("catalog-last-good.json"),
            now,
            remote,
        )
        .await;
        let (catalog_tx, catalog_rx) = watch::channel(catalog.current.clone());
        let (snapshot_tx, snapshot_rx) = watch::channel(None);
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let (remote_tx, remote_rx) = mpsc::unbounded_channel();
        let (specs_tx, specs_rx) = watch::channel(Vec::new());
        let (relays_tx, relays_rx) = watch::channel(Vec::new());
        let (pull_tx, pull_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::channel(64);
        let (events_tx, _) = broadcast::channel(EVENT_BACKLOG);
        let pulls = Pulls::load(&edges.files, paths.state_dir.join("pulls.toml"), pull_tx).await;
        let rollouts = Rollouts::load(&edges.files, paths.state_dir.join("rollouts.toml")).await;
        let proxy = Arc::new(ProxyShared::default());
        let units_changed = Arc::new(Notify::new());
        let layers_changed = Arc::new(Notify::new());
        let handle = Handle {
            layers_changed: layers_changed.clone(),
            tx,
            catalog: catalog_rx,
            snapshot: snapshot_rx,
            specs: specs_rx,
            relays: relays_rx,
            proxy: proxy.clone(),
            units_changed: units_changed.clone(),
            events: events_tx.clone(),
        };
        let engine = Engine {
            units: UnitDir::new(paths.unit_dir.clone()),
            edges,
            paths,
            ctx,
            catalog,
            state,
            secrets,
            pulls,
            rollouts,
            updates: Vec::new(),
            intent: Intent::default(),
            apply_errors: BTreeMap::new(),
            waiting: BTreeMap::new(),
            counters: Counters::default(),
            check_stale: true,
            first_pass: true,
            podman_seen: PodmanSeen::default(),
            web: WebSeen::default(),
            remote_seen: None,
            config_error: None,
            backup_seen: None,
            inspected: InspectCache::default(),
            probes: Probes::new(probe_tx),
            remotes: RemoteChecks::new(remote_tx),
            seen: Tracker::default(),
            last_info: None,
            log_tails: BTreeMap::new(),
            intake: Some(Intake {
                commands: rx,
                pulls: pull_rx,
                probes: probe_rx,
                remotes: remote_rx,
                units_changed,
                layers_changed,
            }),
            out: Outputs {
                catalog: catalog_tx,
                snapshot: snapshot_tx,
                specs: specs_tx,
                relays: relays_tx,
                events: events_tx,
            },
            proxy,
        };
        Ok((engine, handle))
    }

    fn now(&self) -> u64 {
        self.edges.clock.now_unix()
    }

    /// Sends an event to whoever listens (nobody listening is fine).
    fn emit(&self, e: Event) {
        let _no_subscribers = self.out.events.send(e);
    }

    pub async fn info(&mut self) -> DaemonInfo {
        if self.podman_seen.version.is_none() {
            if let Ok(v) = self.edges.podman.ping().await {
                self.podman_seen.version = Some(v);
                self.podman_seen.error = None;
            }
        }
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            podman_version: self.podman_seen.version.clone(),
            catalog_services: self.catalog.current.services.len(),
            catalog_serial: self.catalog.current.serial.clone(),
            catalog_error: self.catalog.error.clone(),
            catalog_in_force: self.catalog.in_force.clone(),
            config_error: self.config_error.clone(),
            podman_error: self.podman_seen.error.clone(),
            web_url: self.web.url.clone(),
            web_error: self.web.error.clone(),
            counters: self.counters.clone(),
            gpus: self.ctx.gpus.clone(),
            remote_catalog: self.remote_seen.clone(),
            remote_services: self.remotes.infos(&self.catalog.current),
            backup_schedule: self.backup_seen.clone(),
        }
    }
}
