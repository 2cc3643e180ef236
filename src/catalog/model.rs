//! The validated catalog: types the rest of berth trusts without checking again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Every service known to this berth, after layering and validation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Catalog {
    pub services: BTreeMap<String, Service>,
    pub policy: Policy,
    /// A short hash of every file it was made from: tells fleets which catalog a VM runs.
    pub serial: String,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
}

/// Where a definition came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
}

/// A field that a patch layer set, and where (see [`super::patch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldOrigin {
    /// Dotted path with container names, e.g. `containers.n8n.image`.
    pub field: String,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gpu {
    None,
    Optional,
    Required,
}

/// How `berth backup` keeps a running service's volumes consistent (`[backup] mode`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum BackupMode {
    /// Stopped for the copy and started again after: right for any application.
    #[default]
    Stop,
    /// Copied while it runs: its files are consistent at any moment.
    Live,
    /// `command` runs in `container` first (a dump into a volume, a checkpoint), then the
    /// copy is made while the service runs.
    Command {
        container: String,
        command: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub description: String,
    pub homepage: Option<String>,
    pub on_demand: bool,
    #[serde(with = "secs")]
    pub idle_stop: Duration,
    pub uses: Vec<String>,
    pub shared: bool,
    pub gpu: Gpu,
    pub secrets: Vec<String>,
    #[serde(with = "secs")]
    pub start_timeout: Duration,
    /// A check berth runs itself against the service's stable port.
    pub probe: Option<Probe>,
    /// How `berth backup` copies the volumes of the service while it runs.
    pub backup: BackupMode,
    /// In start order: every container comes after those it names in `after`.
    pub containers: Vec<Container>,
    pub origin: Origin,
    /// Fields set by patch layers over `origin`, in the order they were applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patched: Vec<FieldOrigin>,
}

impl Service {
    /// Several containers share one pod; so does a service that uses others, even with one
    /// container: its pod's network namespace exists before the application starts, so
    /// berth's relays to the used services listen there first (see `proxy::relays`). A single
    /// container otherwise runs on its own.
    pub fn is_pod(&self) -> bool {
        self.containers.len() > 1 || !self.uses.is_empty()
    }

    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.containers.iter().flat_map(|c| c.ports.iter())
    }

    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.containers.iter().map(|c| c.image.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub user: Option<String>,
    pub after: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub read_only: bool,
    /// Run a tiny init (catatonit) as PID 1 that forwards signals and reaps children.
    pub init: bool,
    pub tmpfs: Vec<String>,
    /// Size of `/dev/shm` in bytes; `None` keeps Podman's default (64 MiB).
    pub shm_size: Option<u64>,
    pub no_new_privileges: bool,
    pub ports: Vec<Port>,
    pub volumes: Vec<Volume>,
    pub files: Vec<FileMount>,
    pub health: Option<Health>,
}

impl Container {
    /// Whether any env value or file refers to a secret (and so must stay out of unit files).
    pub fn uses_secrets(&self) -> bool {
        self.env.values().any(|v| v.contains(SECRET_PREFIX))
    }
}

/// Marker of a secret reference inside env values and file contents: `${secret.NAME}`.
pub const SECRET_PREFIX: &str = "${secret.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub name: String,
    pub host: u16,
    pub container: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "source")]
pub enum VolumeSource {
    /// A named Podman volume, `berth-<service>-<name>`.
    Named(String),
    /// A host path that policy allows.
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileMount {
    pub target: String,
    pub content: String,
}

impl FileMount {
    pub fn uses_secrets(&self) -> bool {
        self.content.contains(SECRET_PREFIX)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub cmd: String,
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "secs")]
    pub start_period: Duration,
}

/// An HTTP GET (with `path`) or a TCP connect (without) to `127.0.0.1:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub port: u16,
    pub path: Option<String>,
    #[serde(with = "secs")]
    pub interval: Duration,
    #[serde(with = "secs")]
    pub timeout: Duration,
}

/// Admin policy, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub allowed_host_paths: Vec<PathBuf>,
    pub port_min: u16,
    pub port_max: u16,
    pub denied_services: Vec<String>,
    pub default_enabled: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_host_paths: vec![PathBuf::from("/shared")],
            port_min: 1024,
            port_max: 65535,
            denied_services: Vec::new(),
            default_enabled: Vec::new(),
        }
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
