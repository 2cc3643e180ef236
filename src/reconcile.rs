//! The reconciler: the one task that owns berth's state and the only code that changes the
//! world (unit files, systemd, Podman).
//!
//! Each pass gathers the actual state, asks the pure planner what to do and applies that plan.
//! A failing action of one service is recorded as that service's reason and skips the rest of
//! that service only. Everything else talks to this task through [`Command`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::catalog::{self, Catalog, CatalogError, Gpu, Layers};
use crate::fsutil::{create_dir, write_atomic};
use crate::health;
use crate::paths::Paths;
use crate::plan::{self, Action, Actual, Desired, DesiredService, Plan, PullState};
use crate::podman::{ContainerInspect, Podman};
use crate::proxy::ports::{PortSpec, Shared as ProxyShared};
use crate::state::{substitute, Choice, SecretStore, StateError, UserState};
use crate::status::{
    now_unix, ContainerStatus, Counters, DaemonInfo, PassReport, PortStatus, ProbeStatus,
    ServiceStatus, Snapshot, State,
};
use crate::systemd::{JobOutcome, Systemd, UnitState};
use crate::unitdir::UnitStore;
use crate::units::{self, RenderCtx};

/// How long an apply waits for one start or stop job before moving on.
const JOB_WAIT: Duration = Duration::from_secs(60);
/// The slow safety pass.
pub const SAFETY_INTERVAL: Duration = Duration::from_secs(60);

/// Errors an API caller can get back; each maps to one HTTP status in the api module.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum EngineError {
    #[error("unknown service {0:?} (see `berth ls`)")]
    UnknownService(String),
    #[error("service {0:?} is denied by the administrator's policy")]
    Denied(String),
    #[error("service {0:?} is not enabled (use `berth enable {0}`)")]
    NotEnabled(String),
    #[error("{0}")]
    Catalog(String),
    #[error("{0}")]
    State(String),
    #[error("the berth daemon is shutting down")]
    Gone,
}

#[derive(Debug)]
pub enum Command {
    /// Set the user's choice for a service and converge. `force` restarts it even if running.
    Choose {
        service: String,
        choice: Choice,
        force: bool,
        reply: oneshot::Sender<Result<PassReport, EngineError>>,
    },
    Reconcile {
        reply: Option<oneshot::Sender<PassReport>>,
    },
    Plan {
        reply: oneshot::Sender<Result<Plan, EngineError>>,
    },
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
    PullDone {
        image: String,
        result: Result<(), String>,
    },
    /// Refresh health (statuses, due probes) and publish a snapshot.
    HealthTick,
    /// A client connected to an on-demand service that is not running: start it.
    Demand {
        service: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// An on-demand service had no connection for its idle time: stop it.
    Idle {
        service: String,
    },
    ProbeDone {
        service: String,
        status: ProbeStatus,
    },
}

/// A container inspection kept between health snapshots.
#[derive(Debug)]
struct Inspected {
    inspect: Option<ContainerInspect>,
    /// The container unit's (ActiveState, SubState) when inspected.
    unit: Option<(String, String)>,
    at: tokio::time::Instant,
}

/// What an inspection is kept against: the unit's (ActiveState, SubState).
fn unit_key(unit: Option<&UnitState>) -> Option<(String, String)> {
    unit.map(|u| (u.active.clone(), u.sub.clone()))
}

/// How long a snapshot reuses the inspection of a container without a health check whose unit
/// did not change state.
const INSPECT_MAX_AGE: Duration = Duration::from_secs(300);

/// A cheap handle for sending commands to the engine task.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    catalog: watch::Receiver<Arc<Catalog>>,
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    specs: watch::Receiver<Vec<PortSpec>>,
    proxy: Arc<ProxyShared>,
    units_changed: Arc<tokio::sync::Notify>,
}

impl Handle {
    /// Tells the engine that a berth unit changed state (a debounced pass follows). Never
    /// waits: the D-Bus watch that calls it must keep reading, or the shared connection stalls
    /// (zbus stops reading when a stream's queue is full) and with it the engine's own calls.
    pub fn units_changed(&self) {
        self.units_changed.notify_one();
    }

    pub fn sender(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// The catalog in force (the last good one).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// The stable ports the proxy should serve, updated after every pass.
    pub fn port_specs(&self) -> watch::Receiver<Vec<PortSpec>> {
        self.specs.clone()
    }

    /// State shared with the proxy (bind errors, counters, backends).
    pub fn proxy(&self) -> Arc<ProxyShared> {
        self.proxy.clone()
    }

    /// The newest health snapshot, refreshed after every pass and every health tick.
    pub fn snapshots(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.snapshot.clone()
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
}

pub struct Engine<S, P, U> {
    pub systemd: S,
    pub podman: P,
    pub units: U,
    pub paths: Paths,
    pub ctx: RenderCtx,
    catalog: Arc<Catalog>,
    catalog_error: Option<String>,
    catalog_stamp: Vec<(PathBuf, Option<SystemTime>)>,
    catalog_tx: watch::Sender<Arc<Catalog>>,
    state: UserState,
    secrets: SecretStore,
    pulls: BTreeMap<String, PullState>,
    force: BTreeSet<String>,
    /// Services a client connected to: retried if failed, left alone if running.
    retry: BTreeSet<String>,
    apply_errors: BTreeMap<String, String>,
    waiting: BTreeMap<String, String>,
    counters: Counters,
    /// Check NeedDaemonReload of every unit on the next pass (first pass after a start).
    check_stale: bool,
    podman_version: Option<String>,
    pull_tx: mpsc::UnboundedSender<(String, Result<(), String>)>,
    pull_rx: Option<mpsc::UnboundedReceiver<(String, Result<(), String>)>>,
    /// Set by the D-Bus watch through [`Handle::units_changed`].
    units_changed: Arc<tokio::sync::Notify>,
    probe_tx: mpsc::UnboundedSender<(String, ProbeStatus)>,
    probe_rx: Option<mpsc::UnboundedReceiver<(String, ProbeStatus)>>,
    probes: BTreeMap<String, ProbeStatus>,
    probing: BTreeSet<String>,
    since: BTreeMap<String, (State, u64)>,
    /// Container inspections of the last health snapshots, by container name (see
    /// [`Engine::inspect_for_snapshot`]).
    inspected: BTreeMap<String, Inspected>,
    /// The last inspection's failure to reach Podman, until one succeeds.
    podman_error: Option<String>,
    snapshot_tx: watch::Sender<Option<Arc<Snapshot>>>,
    /// On-demand services that were asked for and not idle since.
    awake: BTreeSet<String>,
    first_pass: bool,
    specs_tx: watch::Sender<Vec<PortSpec>>,
    proxy: Arc<ProxyShared>,
}

impl<S, P, U> std::fmt::Debug for Engine<S, P, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn layer_stamp(layers: &Layers) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut paths: Vec<PathBuf> = layers.files.clone();
    paths.extend(layers.policy.clone());
    paths
        .into_iter()
        .map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, t)
        })
        .collect()
}

impl<S, P, U> Engine<S, P, U>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    U: UnitStore + 'static,
{
    /// Loads the user's state and the catalog. A broken state file is an error (nothing is
    /// touched); a broken catalog is not: the engine starts with an empty catalog in force and
    /// the error on display, and applies nothing until a good catalog arrives.
    pub fn new(
        systemd: S,
        podman: P,
        units: U,
        paths: Paths,
        ctx: RenderCtx,
    ) -> Result<(Self, Handle, mpsc::Receiver<Command>), StateError> {
        let state = UserState::load(&paths.state_file())?;
        let secrets = SecretStore::new(paths.secrets_dir());
        let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog::default()));
        let (snapshot_tx, snapshot_rx) = watch::channel(None);
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let (specs_tx, specs_rx) = watch::channel(Vec::new());
        let proxy = Arc::new(ProxyShared::default());
        let (tx, rx) = mpsc::channel(64);
        let (pull_tx, pull_rx) = mpsc::unbounded_channel();
        let units_changed = Arc::new(tokio::sync::Notify::new());
        let mut e = Engine {
            units_changed: units_changed.clone(),
            systemd,
            podman,
            units,
            paths,
            ctx,
            catalog: Arc::new(Catalog::default()),
            catalog_error: None,
            catalog_stamp: Vec::new(),
            catalog_tx,
            state,
            secrets,
            pulls: BTreeMap::new(),
            force: BTreeSet::new(),
            retry: BTreeSet::new(),
            apply_errors: BTreeMap::new(),
            waiting: BTreeMap::new(),
            counters: Counters::default(),
            check_stale: true,
            podman_version: None,
            pull_tx,
            pull_rx: Some(pull_rx),
            probe_tx,
            probe_rx: Some(probe_rx),
            probes: BTreeMap::new(),
            probing: BTreeSet::new(),
            inspected: BTreeMap::new(),
            podman_error: None,
            since: BTreeMap::new(),
            snapshot_tx,
            awake: BTreeSet::new(),
            first_pass: true,
            specs_tx,
            proxy: proxy.clone(),
        };
        if let Err(err) = e.reload_catalog() {
            warn!(%err, "catalog is broken; nothing will be changed until it is fixed");
        }
        Ok((
            e,
            Handle {
                tx,
                catalog: catalog_rx,
                snapshot: snapshot_rx,
                specs: specs_rx,
                proxy,
                units_changed,
            },
            rx,
        ))
    }

    fn loaded(&self) -> bool {
        self.catalog_error.is_none() || !self.catalog.services.is_empty()
    }

    /// Reads the catalog layers again. On error the last good catalog stays in force.
    pub fn reload_catalog(&mut self) -> Result<usize, EngineError> {
        let result = Layers::standard(self.paths.etc()).and_then(|layers| {
            let stamp = layer_stamp(&layers);
            catalog::load(&layers).map(|c| (c, stamp))
        });
        match result {
            Ok((c, stamp)) => {
                let n = c.services.len();
                self.catalog = Arc::new(c);
                self.catalog_stamp = stamp;
                self.catalog_error = None;
                let _receivers_may_be_gone = self.catalog_tx.send(self.catalog.clone());
                Ok(n)
            }
            Err(e) => {
                let msg = match &e {
                    CatalogError::Read { .. } => format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ),
                    CatalogError::Invalid(_) => e.to_string(),
                };
                if let Ok(layers) = Layers::standard(self.paths.etc()) {
                    self.catalog_stamp = layer_stamp(&layers);
                }
                self.catalog_error = Some(msg.clone());
                Err(EngineError::Catalog(msg))
            }
        }
    }

    fn catalog_changed_on_disk(&self) -> bool {
        match Layers::standard(self.paths.etc()) {
            Ok(l) => layer_stamp(&l) != self.catalog_stamp,
            Err(_) => false,
        }
    }

    /// The user's choice as policy lets it stand: a denied service is off.
    fn choice(&self, name: &str) -> Choice {
        let policy = &self.catalog.policy;
        if policy.denied_services.iter().any(|d| d == name) {
            Choice::Off
        } else {
            self.state.choice(name, &policy.default_enabled)
        }
    }

    fn desired(&self) -> Desired {
        let mut services = BTreeMap::new();
        for (name, svc) in &self.catalog.services {
            let mut choice = self.choice(name);
            // An on-demand service runs only between a connection and its idle stop.
            if svc.on_demand && choice == Choice::On && !self.awake.contains(name) {
                choice = Choice::Stopped;
            }
            let blocked = (svc.gpu == Gpu::Required && !self.ctx.gpu_available)
                .then(|| "needs a GPU and none was found".to_string());
            services.insert(
                name.clone(),
                DesiredService {
                    choice,
                    // Units of a service that is off are never read by the planner.
                    units: if choice == Choice::Off {
                        Vec::new()
                    } else {
                        units::render(svc, &self.ctx)
                    },
                    images: svc.images().map(str::to_string).collect(),
                    uses: svc.uses.clone(),
                    blocked,
                    force: self.force.contains(name),
                    retry: self.retry.contains(name),
                },
            );
        }
        Desired { services }
    }

    async fn actual(&mut self, desired: &Desired) -> Result<Actual, String> {
        let unit_files = self
            .units
            .list()
            .map_err(|e| format!("cannot read {}: {e}", self.units_dir()))?;
        let units: BTreeMap<String, UnitState> = self
            .systemd
            .list_units("berth-*")
            .await
            .map_err(|e| format!("{e}: {}", source_chain(&e)))?
            .into_iter()
            .filter(|u| u.name != "berth.service")
            .map(|u| (u.name.clone(), u))
            .collect();
        let mut stale = BTreeSet::new();
        if self.check_stale {
            for name in unit_files.keys() {
                if units.contains_key(name)
                    && self.systemd.needs_reload(name).await.unwrap_or(false)
                {
                    stale.insert(name.clone());
                }
            }
        }
        // Ask Podman about images only for services that may be started now.
        let mut images = BTreeMap::new();
        for d in desired.services.values() {
            if d.choice != Choice::On || d.blocked.is_some() {
                continue;
            }
            let main = d.units.first().map(|u| u.name.as_str()).unwrap_or_default();
            let running = units
                .get(main)
                .is_some_and(|u| u.is_active() || u.active == "activating");
            if running && !d.force {
                continue;
            }
            for image in &d.images {
                if images.contains_key(image) {
                    continue;
                }
                let present = self
                    .podman
                    .image_exists(image)
                    .await
                    .map_err(|e| format!("{e}"))?;
                images.insert(image.clone(), present);
            }
        }
        Ok(Actual {
            unit_files,
            units,
            stale,
            images,
            pulls: self.pulls.clone(),
        })
    }

    fn units_dir(&self) -> String {
        self.paths.unit_dir.display().to_string()
    }

    /// Computes the plan without applying it.
    pub async fn plan(&mut self) -> Result<Plan, EngineError> {
        if !self.loaded() {
            return Err(EngineError::Catalog(
                self.catalog_error.clone().unwrap_or_default(),
            ));
        }
        let desired = self.desired();
        let actual = self.actual(&desired).await.map_err(EngineError::State)?;
        Ok(plan::plan(&desired, &actual))
    }

    /// One pass: gather, plan, apply.
    pub async fn pass(&mut self) -> PassReport {
        let started = std::time::Instant::now();
        let mut report = self.pass_inner().await;
        report.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        report
    }

    async fn pass_inner(&mut self) -> PassReport {
        self.counters.passes += 1;
        if self.first_pass {
            // On-demand services found running (berth restarted under them) stay up until
            // their idle time passes without a connection.
            if let Ok(units) = self.systemd.list_units("berth-*").await {
                for u in units.iter().filter(|u| u.is_active()) {
                    if let Some(s) = units::service_of_unit(&u.name) {
                        if self.catalog.get(s).is_some_and(|svc| svc.on_demand) {
                            self.awake.insert(s.to_string());
                        }
                    }
                }
            }
            self.first_pass = false;
        }
        self.publish_specs();
        let mut report = PassReport::default();
        if !self.loaded() {
            report.general_error(format!(
                "not applying anything: {}",
                self.catalog_error.clone().unwrap_or_default()
            ));
            return report;
        }
        let desired = self.desired();
        let actual = match self.actual(&desired).await {
            Ok(a) => a,
            Err(e) => {
                warn!(err = %e, "cannot read the actual state");
                report.general_error(e);
                return report;
            }
        };
        self.check_stale = false;
        let plan = plan::plan(&desired, &actual);
        // A forced (re)start is consumed by planning it once.
        self.force.clear();
        self.retry.clear();
        self.waiting = plan.waiting.clone();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for action in &plan.actions {
            if let Some(s) = action.service() {
                if failed.contains(s) {
                    continue;
                }
            }
            let span = tracing::info_span!("apply", action = %action);
            let _enter = span.enter();
            match self.apply(action).await {
                Ok(()) => {
                    info!("done");
                    if let Some(s) = action.service() {
                        if matches!(
                            action,
                            Action::Start { .. } | Action::Restart { .. } | Action::Stop { .. }
                        ) {
                            self.apply_errors.remove(s);
                        }
                    }
                    report.applied.push(action.to_string());
                }
                Err(e) => {
                    warn!(err = %e, "failed");
                    let text = format!("{action}: {e}");
                    match action.service() {
                        Some(s) => {
                            report.service_error(s, text);
                            failed.insert(s.to_string());
                            self.apply_errors.insert(s.to_string(), e);
                        }
                        None => {
                            report.general_error(text);
                            // Without a reload nothing after it is meaningful.
                            break;
                        }
                    }
                }
            }
        }
        report.waiting = self.waiting.clone();
        report
    }

    async fn apply(&mut self, action: &Action) -> Result<(), String> {
        let sd = |e: crate::systemd::SystemdError| format!("{e}: {}", source_chain(&e));
        match action {
            Action::Stop { unit, .. } => {
                self.counters.systemd_writes += 1;
                self.systemd.stop(unit, JOB_WAIT).await.map_err(sd)?;
                Ok(())
            }
            Action::ResetFailed { unit, .. } => {
                self.counters.systemd_writes += 1;
                self.systemd.reset_failed(unit).await.map_err(sd)
            }
            Action::RemoveUnit { unit, .. } => {
                self.counters.file_writes += 1;
                self.units
                    .remove(unit)
                    .map_err(|e| format!("remove {unit}: {e}"))
            }
            Action::WriteUnit { unit, content, .. } => {
                self.counters.file_writes += 1;
                self.units
                    .write(unit, content)
                    .map_err(|e| format!("write {unit} in {}: {e}", self.units_dir()))
            }
            Action::DaemonReload => {
                self.counters.systemd_writes += 1;
                self.systemd.daemon_reload().await.map_err(sd)
            }
            Action::Pull { image, .. } => {
                self.start_pull(image.clone());
                Ok(())
            }
            Action::PrepareFiles { service } => self.prepare_files(service),
            Action::Start { service, unit } | Action::Restart { service, unit } => {
                self.counters.systemd_writes += 1;
                let outcome = if matches!(action, Action::Start { .. }) {
                    self.systemd.start(unit, JOB_WAIT).await
                } else {
                    self.systemd.restart(unit, JOB_WAIT).await
                }
                .map_err(sd)?;
                match outcome {
                    JobOutcome::Finished(r) if r == "done" => Ok(()),
                    JobOutcome::Pending => Ok(()),
                    JobOutcome::Finished(r) => {
                        let detail = match self.systemd.service_result(unit).await {
                            Ok((res, _)) => format!(" ({res})"),
                            Err(_) => String::new(),
                        };
                        Err(format!(
                            "{unit} did not start: job {r}{detail}; see `berth logs {service}`"
                        ))
                    }
                }
            }
        }
    }

    /// Writes a service's env files (with secrets) and mounted files, only where they differ.
    fn prepare_files(&mut self, service: &str) -> Result<(), String> {
        let catalog = self.catalog.clone();
        let Some(svc) = catalog.get(service) else {
            return Ok(());
        };
        let needs_secrets = !svc.secrets.is_empty();
        let secrets = if needs_secrets {
            self.secrets
                .ensure(service, &svc.secrets)
                .map_err(|e| e.to_string())?
        } else {
            BTreeMap::new()
        };
        for ctr in &svc.containers {
            // Podman's log driver does not create the directory of its file.
            let log = self.paths.in_home(&units::log_file(svc, ctr));
            if let Some(dir) = log.parent().filter(|d| !d.is_dir()) {
                self.counters.file_writes += 1;
                create_dir(dir, 0o700).map_err(|e| format!("create {}: {e}", dir.display()))?;
            }
            if let Some(rel) = units::env_file(svc, ctr) {
                let mut text = String::from(
                    "# Generated by berth: secrets for this container. Keep private.\n",
                );
                for (k, v) in &ctr.env {
                    if v.contains(catalog::SECRET_PREFIX) {
                        // Podman env files are KEY=VALUE lines, taken literally.
                        text.push_str(&format!("{k}={}\n", substitute(v, &secrets)));
                    }
                }
                self.write_file(&self.paths.in_home(&rel), &text, 0o600)?;
            }
            for (i, f) in ctr.files.iter().enumerate() {
                let path = self.paths.in_home(&units::file_mount_path(svc, ctr, i));
                let content = substitute(&f.content, &secrets);
                // Containers often read config files as an unprivileged user of their own
                // user namespace; files without secrets are world-readable, secret ones not.
                let mode = if f.uses_secrets() { 0o600 } else { 0o644 };
                self.write_file(&path, &content, mode)?;
            }
        }
        Ok(())
    }

    fn write_file(&mut self, path: &std::path::Path, text: &str, mode: u32) -> Result<(), String> {
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let err = |e: std::io::Error| format!("write {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o700).map_err(err)?;
        }
        self.counters.file_writes += 1;
        write_atomic(path, text.as_bytes(), mode).map_err(err)
    }

    fn start_pull(&mut self, image: String) {
        if self.pulls.get(&image) == Some(&PullState::Running) {
            return;
        }
        self.counters.podman_writes += 1;
        self.pulls.insert(image.clone(), PullState::Running);
        let podman = self.podman.clone();
        let tx = self.pull_tx.clone();
        tokio::spawn(async move {
            let (ptx, mut prx) = mpsc::channel::<String>(32);
            let img = image.clone();
            let logger = tokio::spawn(async move {
                while let Some(line) = prx.recv().await {
                    info!(image = %img, "pull: {line}");
                }
            });
            let result = podman.pull(&image, ptx).await.map_err(|e| e.to_string());
            let _log_task_ends_with_sender = logger.await;
            if tx.send((image, result)).is_err() {
                warn!("engine gone before a pull finished");
            }
        });
    }

    fn choose(&mut self, service: &str, choice: Choice, force: bool) -> Result<(), EngineError> {
        if !self.loaded() {
            return Err(EngineError::Catalog(
                self.catalog_error.clone().unwrap_or_default(),
            ));
        }
        if !self.catalog.services.contains_key(service) {
            return Err(EngineError::UnknownService(service.into()));
        }
        if choice != Choice::Off
            && self
                .catalog
                .policy
                .denied_services
                .iter()
                .any(|d| d == service)
        {
            return Err(EngineError::Denied(service.into()));
        }
        let mut next = self.state.clone();
        next.set(service, choice);
        next.save(&self.paths.state_file())
            .map_err(|e| EngineError::State(format!("{e}: {}", source_chain(&e))))?;
        self.state = next;
        if force {
            self.force.insert(service.into());
            // A user action retries a failed pull too.
            let svc = self.catalog.get(service).cloned();
            for image in svc.iter().flat_map(|s| s.images()) {
                if matches!(self.pulls.get(image), Some(PullState::Failed(_))) {
                    self.pulls.remove(image);
                }
            }
            self.apply_errors.remove(service);
        }
        Ok(())
    }

    /// Status of services (all, or one) as seen now.
    pub async fn status(&mut self, only: Option<&str>) -> Result<Vec<ServiceStatus>, EngineError> {
        if let Some(name) = only {
            if !self.catalog.services.contains_key(name) {
                return Err(EngineError::UnknownService(name.into()));
            }
        }
        let units: BTreeMap<String, UnitState> = self
            .systemd
            .list_units("berth-*")
            .await
            .map_err(|e| EngineError::State(format!("{e}: {}", source_chain(&e))))?
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let catalog = self.catalog.clone();
        let mut out = Vec::new();
        for (name, svc) in &catalog.services {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let choice = self.choice(name);
            let main = units::main_unit(name);
            let ustate = units.get(&main);
            let mut containers = Vec::new();
            let want_inspect = ustate.is_some_and(|u| u.active != "inactive") || only.is_some();
            for ctr in &svc.containers {
                let cname = units::container_name(svc, ctr);
                let cunit = units.get(&units::container_unit(svc, ctr));
                let inspect: Option<ContainerInspect> = if !want_inspect {
                    self.inspected.remove(&cname);
                    None
                } else if only.is_some() {
                    // Someone asks about this service now: always fresh.
                    self.inspect_fresh(&cname, cunit).await
                } else {
                    self.inspect_for_snapshot(ctr, &cname, cunit).await
                };
                containers.push(ContainerStatus {
                    name: cname,
                    unit: units::container_unit(svc, ctr),
                    image: ctr.image.clone(),
                    state: inspect
                        .as_ref()
                        .map_or_else(|| "absent".to_string(), |i| i.status.clone()),
                    health: inspect.as_ref().and_then(|i| i.health.clone()),
                    started_at: inspect
                        .as_ref()
                        .filter(|i| i.running)
                        .map(|i| i.started_at.clone()),
                });
            }
            let (result, restarts) = match ustate.map(|u| u.active.as_str()) {
                Some("failed") | Some("activating") | Some("active") => {
                    match self.systemd.service_result(&main).await {
                        Ok((r, n)) => (Some(r), n),
                        Err(_) => (None, 0),
                    }
                }
                _ => (None, 0),
            };
            let probe = svc
                .probe
                .as_ref()
                .and_then(|_| self.probes.get(name))
                .cloned();
            let (state, reason) = health::derive(health::Parts {
                choice,
                unit: ustate,
                containers: &containers,
                probe: probe.as_ref(),
                result: result.as_deref(),
                restarts,
            });
            // A pod member that failed while the pod runs (its health gate timed out, or it
            // crashed past its restarts) fails the service with the member's reason.
            let (state, reason) = match svc.containers.iter().find(|c| {
                svc.is_pod()
                    && units
                        .get(&units::container_unit(svc, c))
                        .is_some_and(|u| u.active == "failed")
            }) {
                Some(c) if matches!(state, State::Running | State::Starting | State::Unhealthy) => {
                    let unit = units::container_unit(svc, c);
                    let code = self.systemd.exec_main_status(&unit).await.unwrap_or(0);
                    (
                        State::Failed,
                        Some(crate::gate::member_failed(svc, c, code)),
                    )
                }
                // A member not up yet (waiting for its health gate) keeps the pod starting.
                _ if state == State::Running => match svc.containers.iter().find(|c| {
                    svc.is_pod()
                        && units
                            .get(&units::container_unit(svc, c))
                            .is_none_or(|u| u.active != "active")
                }) {
                    Some(c) => (State::Starting, Some(format!("{} is starting", c.name))),
                    None => (state, reason),
                },
                _ => (state, reason),
            };
            let on_demand_idle = svc.on_demand
                && choice == Choice::On
                && !self.awake.contains(name)
                && matches!(state, State::Waiting | State::Stopped);
            let (mut state, mut reason) = if on_demand_idle {
                let ports: Vec<String> = svc.ports().map(|p| p.host.to_string()).collect();
                (
                    State::Idle,
                    Some(format!(
                        "starts on the first connection to port {}",
                        ports.join(", ")
                    )),
                )
            } else {
                (state, reason)
            };
            if state == State::Failed {
                // Quote the end of the crashed container's log: it usually says why.
                let lines: Vec<String> = svc
                    .containers
                    .iter()
                    .flat_map(|c| {
                        health::log_tail(&self.paths.in_home(&units::log_file(svc, c)), 3)
                    })
                    .collect();
                if !lines.is_empty() {
                    let base = reason.unwrap_or_default();
                    reason = Some(format!("{base}; last log lines: {}", lines.join(" | ")));
                }
            }
            // What the last pass could not do, or a stable port berth cannot serve, outranks
            // the coarse reason.
            let bind_error = self.proxy.bind_error(name);
            if let Some(e) = self.apply_errors.get(name) {
                reason = Some(e.clone());
                if state == State::Waiting {
                    state = State::Failed;
                }
            } else if let Some(e) = bind_error {
                reason = Some(e);
                state = State::Failed;
            } else if let Some(w) = self.waiting.get(name) {
                // A failed unit keeps its own reason (crash count, last log lines); the
                // planner's "failed; berth start retries" says less.
                if state == State::Waiting {
                    reason = Some(w.clone());
                }
            }
            out.push(ServiceStatus {
                name: name.clone(),
                description: svc.description.clone(),
                choice: match choice {
                    Choice::On => "on",
                    Choice::Stopped => "stopped",
                    Choice::Off => "off",
                }
                .into(),
                state,
                reason,
                unit: main,
                unit_state: ustate
                    .map_or_else(|| "absent".into(), |u| format!("{}/{}", u.active, u.sub)),
                ports: svc
                    .ports()
                    .map(|p| PortStatus {
                        name: p.name.clone(),
                        port: p.host,
                        url: format!("http://127.0.0.1:{}/", p.host),
                    })
                    .collect(),
                containers,
                restarts,
                since: None,
                probe,
            });
        }
        let now = now_unix();
        for st in &mut out {
            let entry = self.since.entry(st.name.clone()).or_insert((st.state, now));
            if entry.0 != st.state {
                // One structured event per transition: under systemd these become journald
                // fields BERTH_SERVICE, BERTH_UNIT, BERTH_STATE for Loki/Promtail to label.
                info!(
                    service = %st.name,
                    unit = %st.unit,
                    state = st.state.as_str(),
                    from = entry.0.as_str(),
                    reason = st.reason.as_deref().unwrap_or(""),
                    "service state changed"
                );
                *entry = (st.state, now);
            }
            st.since = Some(entry.1);
        }
        Ok(out)
    }

    /// Tells the proxy which stable ports to serve: every port of every service the user
    /// wants (on-demand ones included, whether running or not).
    fn publish_specs(&self) {
        let mut specs = Vec::new();
        for (name, svc) in &self.catalog.services {
            if self.choice(name) != Choice::On {
                continue;
            }
            for ctr in &svc.containers {
                for p in &ctr.ports {
                    specs.push(PortSpec {
                        service: name.clone(),
                        name: p.name.clone(),
                        port: p.host,
                        container_port: p.container,
                        container: units::container_name(svc, &svc.containers[0]),
                        on_demand: svc.on_demand,
                        idle_stop: svc.idle_stop,
                        start_wait: svc.start_timeout,
                    });
                }
            }
        }
        self.specs_tx.send_if_modified(|old| {
            if *old == specs {
                false
            } else {
                *old = specs;
                true
            }
        });
    }

    /// Publishes a fresh snapshot for metrics, the cloud push and notifications.
    async fn publish(&mut self) {
        match self.status(None).await {
            Ok(services) => {
                let daemon = self.info().await;
                let snap = Snapshot {
                    taken_at: now_unix(),
                    daemon,
                    services,
                };
                self.snapshot_tx.send_replace(Some(Arc::new(snap)));
            }
            Err(err) => warn!(%err, "cannot refresh health"),
        }
    }

    /// Inspects a container and remembers the answer with the state of its unit.
    async fn inspect_fresh(
        &mut self,
        cname: &str,
        unit: Option<&UnitState>,
    ) -> Option<ContainerInspect> {
        let inspect = match self.podman.inspect(cname).await {
            Ok(i) => {
                self.podman_error = None;
                i
            }
            Err(err) => {
                if self.podman_error.is_none() {
                    warn!(%err, "Podman's API does not answer; services keep running");
                }
                self.podman_error = Some(err.to_string());
                // What was last seen stays the best knowledge.
                return self.inspected.get(cname).and_then(|i| i.inspect.clone());
            }
        };
        self.inspected.insert(
            cname.to_string(),
            Inspected {
                inspect: inspect.clone(),
                unit: unit_key(unit),
                at: tokio::time::Instant::now(),
            },
        );
        inspect
    }

    /// A container's inspection for the periodic health snapshot. Asking Podman every tick
    /// would wake its socket-activated API service (which exits after 5 s idle) every 10 s;
    /// so the last answer is kept while the container's unit stays in the same state, up to
    /// the container's health-check interval (its health can only change that often; at
    /// least every 30 s) or, without a health check, up to [`INSPECT_MAX_AGE`].
    async fn inspect_for_snapshot(
        &mut self,
        ctr: &crate::catalog::Container,
        cname: &str,
        unit: Option<&UnitState>,
    ) -> Option<ContainerInspect> {
        let max_age = ctr.health.as_ref().map_or(INSPECT_MAX_AGE, |h| {
            h.interval
                .clamp(Duration::from_secs(1), Duration::from_secs(30))
        });
        let key = unit_key(unit);
        if let Some(last) = self.inspected.get(cname) {
            if last.unit == key && last.at.elapsed() < max_age {
                return last.inspect.clone();
            }
        }
        self.inspect_fresh(cname, unit).await
    }

    /// Starts the probes that are due, each in its own task.
    fn start_probes(&mut self) {
        let now = now_unix();
        let catalog = self.catalog.clone();
        for (name, svc) in &catalog.services {
            let Some(p) = &svc.probe else { continue };
            let running = self.since.get(name).is_some_and(|(s, _)| {
                matches!(s, State::Running | State::Unhealthy | State::Starting)
            });
            if !running || self.probing.contains(name) {
                if !running {
                    self.probes.remove(name);
                }
                continue;
            }
            let due = self
                .probes
                .get(name)
                .is_none_or(|last| now.saturating_sub(last.at) >= p.interval.as_secs());
            if !due {
                continue;
            }
            self.probing.insert(name.clone());
            let Some(container_port) = svc.ports().find(|x| x.host == p.port).map(|x| x.container)
            else {
                continue;
            };
            let container = units::container_name(svc, &svc.containers[0]);
            // The published port as the last snapshot saw it; Podman is asked only without one.
            let known = self
                .inspected
                .get(&container)
                .and_then(|i| i.inspect.clone())
                .filter(|i| i.running && i.ports.contains_key(&container_port));
            let (p, name, tx, podman) = (
                p.clone(),
                name.clone(),
                self.probe_tx.clone(),
                self.podman.clone(),
            );
            tokio::spawn(async move {
                let inspect = match known {
                    Some(i) => Ok(Some(i)),
                    None => podman.inspect(&container).await,
                };
                let status = match inspect {
                    Ok(Some(i)) => match i.ports.get(&container_port) {
                        Some(host) => {
                            health::probe(&p, std::net::SocketAddr::from(([127, 0, 0, 1], *host)))
                                .await
                        }
                        None => ProbeStatus {
                            ok: false,
                            seconds: 0.0,
                            detail: format!("container port {container_port} is not published"),
                            at: now_unix(),
                        },
                    },
                    _ => ProbeStatus {
                        ok: false,
                        seconds: 0.0,
                        detail: "container not found".into(),
                        at: now_unix(),
                    },
                };
                if tx.send((name, status)).is_err() {
                    tracing::debug!("engine gone before a probe finished");
                }
            });
        }
    }

    pub async fn info(&mut self) -> DaemonInfo {
        if self.podman_version.is_none() {
            self.podman_version = self.podman.ping().await.ok();
        }
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            podman_version: self.podman_version.clone(),
            catalog_services: self.catalog.services.len(),
            catalog_serial: self.catalog.serial.clone(),
            catalog_error: self.catalog_error.clone(),
            podman_error: self.podman_error.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Runs the engine until every [`Handle`] is dropped.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let (Some(mut pulls), Some(mut probes)) = (self.pull_rx.take(), self.probe_rx.take())
        else {
            return;
        };
        // Probes keep their own intervals; this only looks for due ones.
        let mut probe_tick = tokio::time::interval(Duration::from_secs(1));
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_tick = tokio::time::interval(health::TICK);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(SAFETY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty_since: Option<tokio::time::Instant> = None;
        let debounce = Duration::from_millis(300);
        let units_changed = self.units_changed.clone();
        loop {
            let sleep_until = dirty_since.map(|t| t + debounce);
            let cmd = tokio::select! {
                c = rx.recv() => c,
                () = units_changed.notified() => {
                    dirty_since.get_or_insert_with(tokio::time::Instant::now);
                    continue;
                }
                Some((image, result)) = pulls.recv() => Some(Command::PullDone { image, result }),
                Some((service, status)) = probes.recv() => Some(Command::ProbeDone { service, status }),
                _ = health_tick.tick() => Some(Command::HealthTick),
                _ = probe_tick.tick() => {
                    self.start_probes();
                    continue;
                }
                _ = tick.tick() => {
                    if self.catalog_changed_on_disk() {
                        match self.reload_catalog() {
                            Ok(n) => info!(services = n, "catalog reloaded"),
                            Err(e) => warn!(err = %e, "catalog change rejected; the last good catalog stays"),
                        }
                    }
                    self.pass().await;
                    self.publish().await;
                    continue;
                }
                _ = async { match sleep_until { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    dirty_since = None;
                    self.pass().await;
                    self.publish().await;
                    continue;
                }
            };
            let Some(cmd) = cmd else { break };
            match cmd {
                Command::Choose {
                    service,
                    choice,
                    force,
                    reply,
                } => {
                    let r = match self.choose(&service, choice, force) {
                        Ok(()) => Ok(self.pass().await),
                        Err(e) => Err(e),
                    };
                    let ok = r.is_ok();
                    let _caller_may_have_left = reply.send(r);
                    if ok {
                        self.publish().await;
                    }
                }
                Command::Reconcile { reply } => {
                    let r = self.pass().await;
                    if let Some(reply) = reply {
                        let _caller_may_have_left = reply.send(r);
                    }
                }
                Command::Plan { reply } => {
                    let r = self.plan().await;
                    let _caller_may_have_left = reply.send(r);
                }
                Command::Status { service, reply } => {
                    let r = self.status(service.as_deref()).await;
                    let _caller_may_have_left = reply.send(r);
                }
                Command::Info { reply } => {
                    let r = self.info().await;
                    let _caller_may_have_left = reply.send(r);
                }
                Command::ReloadCatalog { reply } => {
                    let r = self.reload_catalog();
                    match &r {
                        Ok(n) => {
                            info!(services = n, "catalog reloaded");
                            self.pass().await;
                            self.publish().await;
                        }
                        Err(e) => {
                            warn!(err = %e, "catalog change rejected; the last good catalog stays")
                        }
                    }
                    if let Some(reply) = reply {
                        let _caller_may_have_left = reply.send(r);
                    }
                }
                Command::Demand { service, reply } => {
                    let r = if self.catalog.get(&service).is_some_and(|s| s.on_demand) {
                        self.awake.insert(service.clone());
                        // A client connecting is the user acting: retry a failed unit too
                        // (but never restart one that runs: clients may arrive in a burst).
                        self.retry.insert(service.clone());
                        let report = self.pass().await;
                        report.errors_of(&service).map_or(Ok(()), Err)
                    } else {
                        Err(format!("{service} is not an on-demand service"))
                    };
                    let _caller_may_have_left = reply.send(r);
                }
                Command::Idle { service } => {
                    if self.awake.remove(&service) {
                        info!(%service, "idle: stopping");
                        self.pass().await;
                        self.publish().await;
                    }
                }
                Command::HealthTick => {
                    self.publish().await;
                    self.start_probes();
                }
                Command::ProbeDone { service, status } => {
                    self.probing.remove(&service);
                    let changed = self
                        .probes
                        .get(&service)
                        .is_none_or(|old| old.ok != status.ok);
                    self.probes.insert(service, status);
                    if changed {
                        self.publish().await;
                    }
                }
                Command::PullDone { image, result } => {
                    match result {
                        Ok(()) => {
                            info!(%image, "pulled");
                            self.pulls.remove(&image);
                        }
                        Err(e) => {
                            warn!(%image, err = %e, "pull failed");
                            self.pulls.insert(image, PullState::Failed(e));
                        }
                    }
                    self.pass().await;
                    self.publish().await;
                }
            }
        }
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

impl crate::proxy::ports::Engine for Handle {
    async fn demand(&self, service: &str) -> Result<(), String> {
        let service = service.to_string();
        self.ask(|reply| Command::Demand { service, reply })
            .await
            .map_err(|e| e.to_string())?
    }

    async fn idle(&self, service: &str) {
        let service = service.to_string();
        if self.tx.send(Command::Idle { service }).await.is_err() {
            tracing::debug!("engine gone; idle report dropped");
        }
    }

    fn seen_idle(&self, service: &str) -> bool {
        self.snapshot.borrow().as_ref().is_some_and(|s| {
            s.services
                .iter()
                .any(|st| st.name == service && st.state == State::Idle)
        })
    }
}
