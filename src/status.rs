//! What berth reports about a service: the shapes shared by the daemon, the API and the CLI.

use serde::{Deserialize, Serialize};

/// Coarse state of a service, with the reason in [`ServiceStatus::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub description: String,
    /// The user's choice: on, stopped, off.
    pub choice: String,
    pub state: State,
    pub reason: Option<String>,
    pub unit: String,
    /// systemd's ActiveState/SubState of the main unit, or `absent`.
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
/// and desktop notifications are made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds.
    pub taken_at: u64,
    pub daemon: DaemonInfo,
    pub services: Vec<ServiceStatus>,
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    /// Set while the newest catalog is broken; the last good one stays in force.
    pub catalog_error: Option<String>,
    /// Set while Podman's API did not answer the daemon's last question (services keep
    /// running; container details in the states may be old).
    #[serde(default)]
    pub podman_error: Option<String>,
    pub counters: Counters,
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
    pub service_errors: std::collections::BTreeMap<String, Vec<String>>,
    /// Errors that concern every service (a broken catalog, a failed daemon-reload…; also in
    /// `errors`).
    #[serde(default)]
    pub general_errors: Vec<String>,
    pub waiting: std::collections::BTreeMap<String, String>,
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

#[cfg(test)]
mod tests {
    use super::PassReport;

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
}
