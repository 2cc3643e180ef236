//! berth's wire types: what the daemon's API says and what its clients (the CLI, the tray, the
//! local web page) read. Plain data with serde, no behaviour beyond formatting, and no
//! dependency on the daemon, so a client never links the server.
//!
//! Compatibility: fields are added, never renamed; new fields carry `#[serde(default)]` so an
//! older daemon's answers still decode. Enums that may grow (events, error codes) are matched
//! by clients with a fallback.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod event;
mod plan;

pub use event::{Event, PullProgress};
pub use plan::{Action, Plan};

/// What the user wants of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// Installed and running.
    On,
    /// Installed, held stopped until started again.
    Stopped,
    /// Not installed: units removed, data volumes kept.
    Off,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::On => "on",
            Choice::Stopped => "stopped",
            Choice::Off => "off",
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Coarse state of a service, with the reason in [`ServiceStatus::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not enabled.
    Off,
    /// Enabled, held stopped.
    Stopped,
    /// Wanted, not running yet: pulling, waiting, or blocked (see reason).
    Waiting,
    Starting,
    /// Running; health checks pass or there are none.
    Running,
    /// Running, but a health check fails.
    Unhealthy,
    Failed,
    Stopping,
    /// On-demand and not running: starts at the first connection to its port.
    Idle,
}

impl State {
    /// Every state, in declaration order.
    pub const ALL: [State; 9] = [
        State::Off,
        State::Stopped,
        State::Waiting,
        State::Starting,
        State::Running,
        State::Unhealthy,
        State::Failed,
        State::Stopping,
        State::Idle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Off => "off",
            State::Stopped => "stopped",
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Running => "running",
            State::Unhealthy => "unhealthy",
            State::Failed => "failed",
            State::Stopping => "stopping",
            State::Idle => "idle",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a failed service failed, where berth knows the class: clients show a matching hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// An image could not be pulled; `berth start NAME` (or enable) pulls again.
    Pull,
    /// The unit crashed or would not start.
    Unit,
    /// Its stable port cannot be served (taken by another program).
    Port,
    /// A dependency inside the service never became ready.
    Dependency,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    pub port: u16,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub unit: String,
    pub image: String,
    /// Podman's state (`running`, `exited`…), or `absent`.
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`; absent without a health check.
    pub health: Option<String>,
    /// RFC 3339 as Podman reports it.
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub description: String,
    /// The user's choice as policy lets it stand.
    pub choice: Choice,
    pub state: State,
    pub reason: Option<String>,
    /// The class of a failure, when `state` is failed and berth knows it.
    #[serde(default)]
    pub failure: Option<Failure>,
    /// The command that retries or fixes it, when there is one (`berth start demo`).
    #[serde(default)]
    pub hint: Option<String>,
    pub unit: String,
    /// systemd's ActiveState/SubState of the main unit, or `absent` when systemd has not
    /// loaded it.
    pub unit_state: String,
    pub ports: Vec<PortStatus>,
    pub containers: Vec<ContainerStatus>,
    /// Automatic restarts systemd made of the main unit since it was last started by hand.
    #[serde(default)]
    pub restarts: u32,
    /// When the service entered its current state (unix seconds), as far as this daemon saw.
    #[serde(default)]
    pub since: Option<u64>,
    /// The last HTTP/TCP probe berth ran, if the catalog defines one.
    #[serde(default)]
    pub probe: Option<ProbeStatus>,
    /// Policy makes this service required: the user cannot disable or stop it.
    #[serde(default)]
    pub locked: bool,
    /// Something the user should know that is not a fault (`runs on CPU: no GPU found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The last image update of this service (a catalog change or `berth update`): under
    /// way, done, or rolled back with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
}

/// Where an image update of a service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// The new image runs and berth waits for it to become healthy (its start period).
    Updating,
    /// The new image became healthy.
    Updated,
    /// The new image did not become healthy: the previous image runs again, and stays until
    /// the catalog names another image or the user runs `berth update NAME`.
    RolledBack,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Updated => "updated",
            UpdateState::RolledBack => "rolled_back",
        }
    }
}

/// The last image update of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// The image ids before the swap (what a rollback returns to), one per container.
    pub from: Vec<String>,
    /// The images the swap went to, as the catalog names them.
    pub to: Vec<String>,
    /// Why it was rolled back.
    #[serde(default)]
    pub reason: Option<String>,
    /// Unix seconds of the last change of `state`.
    pub at: u64,
    /// Rollbacks of this service, kept across restarts of the daemon.
    #[serde(default)]
    pub rollbacks: u64,
}

/// What `berth update` did for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateResult {
    /// Swapped to the image the tag names now, and it became healthy.
    Updated,
    /// The running containers already use the images their tags name.
    Current,
    /// Every image is pinned by digest: nothing to update.
    Pinned,
    /// The new image did not become healthy; the previous one runs again.
    RolledBack,
    /// Pulled, but the service does not run: it starts on the new image.
    NotRunning,
    /// The update could not be made (a pull failed…).
    Failed,
    /// A newer daemon's result this client does not know.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOutcome {
    pub service: String,
    pub result: UpdateResult,
    /// One line for people: `updated from sha256:1a2b… to sha256:3c4d…`.
    pub message: String,
}

/// The answer to `POST /v1/update` and `POST /v1/services/NAME/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAnswer {
    pub services: Vec<UpdateOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub ok: bool,
    /// How long the probe took, in seconds.
    pub seconds: f64,
    /// `HTTP 200`, `connection refused`, `timed out after 5s`…
    pub detail: String,
    /// Unix seconds of the probe.
    pub at: u64,
}

/// Everything berth knows about its services at one moment: what /metrics, the cloud push
/// and the first event of every event stream are made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds.
    pub taken_at: u64,
    pub daemon: DaemonInfo,
    pub services: Vec<ServiceStatus>,
}

impl Snapshot {
    /// Brings this picture up to date with one event of the stream; whether the services in
    /// it changed. Clients keep their view this way: a snapshot event replaces it, service
    /// events update or add one service, a removal drops one.
    pub fn apply(&mut self, e: &Event) -> bool {
        match e {
            Event::Snapshot { daemon, services } => {
                self.daemon = daemon.clone();
                self.services = services.clone();
                true
            }
            Event::Service { status, at, .. } => {
                self.taken_at = *at;
                match self.services.iter_mut().find(|s| s.name == status.name) {
                    Some(s) => *s = status.clone(),
                    None => {
                        self.services.push(status.clone());
                        self.services.sort_by(|a, b| a.name.cmp(&b.name));
                    }
                }
                true
            }
            Event::Removed { service, .. } => {
                let before = self.services.len();
                self.services.retain(|s| &s.name != service);
                self.services.len() != before
            }
            Event::Daemon { daemon } => {
                self.daemon = daemon.clone();
                false
            }
            Event::Pull { .. } | Event::PassError { .. } | Event::Unknown => false,
        }
    }
}

/// Counters of the daemon's writes to the outside world, and of its passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub passes: u64,
    pub systemd_writes: u64,
    pub podman_writes: u64,
    pub file_writes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub podman_version: Option<String>,
    pub catalog_services: usize,
    /// A short hash of every catalog and policy file in force.
    #[serde(default)]
    pub catalog_serial: String,
    /// Set while a catalog layer or the policy is broken; see `catalog_in_force` for what
    /// berth runs meanwhile.
    pub catalog_error: Option<String>,
    /// What is in force while `catalog_error` is set: the last good catalog, or every layer
    /// that validates without the broken files.
    #[serde(default)]
    pub catalog_in_force: Option<String>,
    /// Set while `/etc/berth/config.toml` was changed into something that does not validate
    /// (file:line); the daemon keeps the settings it started with.
    #[serde(default)]
    pub config_error: Option<String>,
    /// Set while Podman's API is unreachable (services keep running; container details in the
    /// states may be old).
    #[serde(default)]
    pub podman_error: Option<String>,
    /// The local web page's address, when it serves.
    #[serde(default)]
    pub web_url: Option<String>,
    /// Why the local web page does not serve (off, or its port taken).
    #[serde(default)]
    pub web_error: Option<String>,
    pub counters: Counters,
    /// GPUs containers can get (CDI), found at the daemon's start.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// The signed remote catalog, when config.toml names one.
    #[serde(default)]
    pub remote_catalog: Option<RemoteCatalogInfo>,
    /// Services the cloud provides instead of a local container (the policy's
    /// `[remote_services]`), with how their last health check went.
    #[serde(default)]
    pub remote_services: Vec<RemoteServiceInfo>,
    /// Scheduled backups, when the policy's `[backup]` asks for them.
    #[serde(default)]
    pub backup_schedule: Option<BackupScheduleInfo>,
}

/// Scheduled backups as the daemon last ran them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupScheduleInfo {
    /// Seconds between backups.
    pub every: u64,
    /// Backups kept per service.
    pub keep: u64,
    /// Unix seconds of the last run that backed everything up.
    pub last_success: Option<u64>,
    /// Unix seconds of the last run, good or not.
    pub last_attempt: Option<u64>,
    /// What went wrong in the last run; `None` after a good one.
    #[serde(default)]
    pub error: Option<String>,
    /// Unix seconds when the next run is due.
    pub next: Option<u64>,
}

/// A service the cloud provides (Ollama on the GPU nodes, say): its consumers get its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteServiceInfo {
    pub name: String,
    pub url: String,
    /// Whether it answered its last check (any HTTP status below 500); `None` before the first.
    pub up: Option<bool>,
    /// Why the last check failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Unix seconds of the last check.
    #[serde(default)]
    pub checked: Option<u64>,
}

/// A GPU as a container gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Its CDI name, `nvidia.com/gpu=0`.
    pub device: String,
    /// `NVIDIA L4`, where `nvidia-smi` says.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The CDI spec file it is listed in.
    pub spec: String,
}

/// The signed remote catalog as the daemon last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCatalogInfo {
    pub url: String,
    /// The serial of the remote catalog in force; `None` before the first good one.
    pub serial: Option<u64>,
    /// Unix seconds at which the catalog in force expires.
    pub expiry: Option<u64>,
    /// Unix seconds of the last fetch that was good (applied, or unchanged).
    pub last_success: Option<u64>,
    /// Unix seconds of the last fetch, good or not.
    pub last_attempt: Option<u64>,
    /// Why the last fetch changed nothing (bad signature, unknown key, older serial, expired,
    /// a broken catalog, the server down…); `None` after a good one.
    pub error: Option<String>,
    /// Fetches that failed since the daemon started.
    pub failures_total: u64,
    /// Fetches answered 304 Not Modified since the daemon started.
    pub not_modified_total: u64,
}

/// The answer to `POST /v1/catalog/fetch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchAnswer {
    /// Only verified and compared: nothing was applied or kept.
    pub dry_run: bool,
    /// The server said 304 Not Modified (or sent the catalog in force again).
    pub unchanged: bool,
    /// The serial of the catalog fetched (or in force, when unchanged).
    pub serial: Option<u64>,
    /// Services the catalog adds, changes, removes (compared with the catalog in force).
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    /// How long the pass took inside the daemon, in microseconds.
    #[serde(default)]
    pub duration_us: u64,
    pub applied: Vec<String>,
    /// Every error of the pass, as text.
    pub errors: Vec<String>,
    /// The errors of actions on one service, by service name (also in `errors`).
    #[serde(default)]
    pub service_errors: BTreeMap<String, Vec<String>>,
    /// Errors that concern every service (a broken catalog, a failed daemon-reload…; also in
    /// `errors`).
    #[serde(default)]
    pub general_errors: Vec<String>,
    pub waiting: BTreeMap<String, String>,
}

impl PassReport {
    /// An error that concerns no single service.
    pub fn general_error(&mut self, e: String) {
        self.errors.push(e.clone());
        self.general_errors.push(e);
    }

    /// An error of an action on `service`.
    pub fn service_error(&mut self, service: &str, e: String) {
        self.errors.push(e.clone());
        self.service_errors
            .entry(service.to_string())
            .or_default()
            .push(e);
    }

    /// The errors that concern `service`: its own and the general ones, joined with "; ".
    /// `None` when there are none.
    pub fn errors_of(&self, service: &str) -> Option<String> {
        let mine: Vec<&str> = self
            .service_errors
            .get(service)
            .into_iter()
            .flatten()
            .chain(&self.general_errors)
            .map(String::as_str)
            .collect();
        (!mine.is_empty()).then(|| mine.join("; "))
    }
}

/// What a user (CLI, tray, page) can ask of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Turn it on; starts it if it is not running, retries it if it failed. Never restarts a
    /// running service.
    Enable,
    /// Turn it off: stop it and remove its units; data volumes are kept.
    Disable,
    /// Like enable for a service that is on: start it if stopped, retry it if failed.
    Start,
    /// Hold it stopped until started again.
    Stop,
    /// Restart it, running or not.
    Restart,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Enable,
        Verb::Disable,
        Verb::Start,
        Verb::Stop,
        Verb::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Enable => "enable",
            Verb::Disable => "disable",
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of an API error, for clients that react to it (the text is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnknownService,
    Denied,
    /// Policy requires the service: it cannot be disabled or stopped.
    Required,
    NotEnabled,
    Catalog,
    State,
    /// The daemon is stopping.
    Gone,
    /// No such API path or action.
    NotFound,
    /// The request itself is wrong (bad name, bad query).
    BadRequest,
    /// The caller may not use this API (another user, a foreign web origin).
    Forbidden,
    /// A part of berth that is switched off or could not start (the local web page).
    Unavailable,
    /// An answer of a newer daemon this client does not know.
    #[serde(other)]
    Other,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Absent in answers of daemons before error codes existed.
    #[serde(default = "other_code")]
    pub code: ErrorCode,
    pub error: String,
}

fn other_code() -> ErrorCode {
    ErrorCode::Other
}

/// The answer to `POST /v1/web/session`: a one-time login link to the local web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSession {
    pub url: String,
}

/// The answer to `POST /v1/services/NAME/relays`: berth listens inside the service's pod for
/// this many ports of the services it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaysReady {
    pub ports: usize,
}

/// The answer to `POST /v1/catalog/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub services: usize,
}

/// The longest service name.
pub const MAX_NAME: usize = 32;

/// Whether `s` can be a service name: `[a-z][a-z0-9-]*`, at most [`MAX_NAME`] characters, no
/// `--` (berth's unit names use it to separate a service from its container) and no trailing
/// `-`. Clients check names before they put them into a URL.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_a_service_are_its_own_and_the_general_ones() {
        let mut r = PassReport::default();
        assert_eq!(r.errors_of("a"), None);
        r.service_error("ab", "start berth-ab.service: boom".into());
        // A name that is a prefix of another service's is not confused with it.
        assert_eq!(r.errors_of("a"), None);
        r.service_error("a", "start berth-a.service: no image".into());
        assert_eq!(
            r.errors_of("a").as_deref(),
            Some("start berth-a.service: no image")
        );
        r.general_error("reload systemd: timeout".into());
        assert_eq!(
            r.errors_of("ab").as_deref(),
            Some("start berth-ab.service: boom; reload systemd: timeout")
        );
        assert_eq!(r.errors.len(), 3);
    }

    fn status(name: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            description: String::new(),
            choice: Choice::On,
            state,
            reason: None,
            failure: None,
            hint: None,
            unit: format!("berth-{name}.service"),
            unit_state: "absent".into(),
            ports: Vec::new(),
            containers: Vec::new(),
            restarts: 0,
            since: None,
            probe: None,
            locked: false,
            note: None,
            update: None,
        }
    }

    #[test]
    fn a_picture_follows_the_event_stream() {
        let daemon = DaemonInfo {
            version: "0".into(),
            pid: 1,
            podman_version: None,
            catalog_services: 2,
            catalog_serial: String::new(),
            catalog_error: None,
            catalog_in_force: None,
            config_error: None,
            podman_error: None,
            web_url: None,
            web_error: None,
            remote_catalog: None,
            remote_services: Vec::new(),
            backup_schedule: None,
            counters: Counters::default(),
            gpus: Vec::new(),
        };
        let mut p = Snapshot {
            taken_at: 0,
            daemon: daemon.clone(),
            services: Vec::new(),
        };
        assert!(p.apply(&Event::Snapshot {
            daemon,
            services: vec![status("b", State::Off)],
        }));
        assert!(p.apply(&Event::Service {
            status: status("a", State::Running),
            from: None,
            at: 5,
        }));
        let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "kept in name order");
        assert!(p.apply(&Event::Service {
            status: status("b", State::Failed),
            from: Some(State::Off),
            at: 6,
        }));
        assert_eq!(p.services[1].state, State::Failed);
        assert!(p.apply(&Event::Removed {
            service: "a".into(),
            at: 7
        }));
        assert!(!p.apply(&Event::Removed {
            service: "a".into(),
            at: 8
        }));
        assert_eq!(p.services.len(), 1);
        assert!(!p.apply(&Event::Unknown));
    }

    #[test]
    fn verbs_round_trip_their_names() {
        for v in Verb::ALL {
            assert_eq!(Verb::parse(v.as_str()), Some(v));
        }
        assert_eq!(Verb::parse("explode"), None);
    }

    #[test]
    fn error_bodies_of_older_daemons_and_unknown_codes_decode() {
        let old: ErrorBody = serde_json::from_str(r#"{"error":"boom"}"#).expect("old body");
        assert_eq!(old.code, ErrorCode::Other);
        let newer: ErrorBody =
            serde_json::from_str(r#"{"code":"quota_exceeded","error":"x"}"#).expect("new code");
        assert_eq!(newer.code, ErrorCode::Other);
        let known: ErrorBody =
            serde_json::from_str(r#"{"code":"unknown_service","error":"x"}"#).expect("known");
        assert_eq!(known.code, ErrorCode::UnknownService);
    }

    #[test]
    fn states_list_every_variant_once() {
        let names: std::collections::BTreeSet<&str> =
            State::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), State::ALL.len());
    }
}
