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
    /// Files of the user layer that policy kept out, each saying which rule (file:line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }
}

/// The layers of the catalog, lowest first: a later layer replaces same-named services of an
/// earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Embedded from `config/catalog/`.
    Builtin,
    /// `/etc/berth/catalog.d/*.toml` (cloud-init, Ansible, a shared folder).
    Admin,
    /// The signed remote catalog. Its slot: berth reads nothing into it yet.
    Remote,
    /// `~/.config/berth/catalog.d/*.toml`, only where policy allows (`user_catalogs`).
    User,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Builtin => "built-in",
            Layer::Admin => "admin",
            Layer::Remote => "remote",
            Layer::User => "user",
        }
    }
}

/// Where a definition came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub layer: Layer,
    /// The line of its `name`; 0 when unknown.
    pub line: usize,
}

impl Origin {
    /// An origin in the admin layer (tests, fixtures).
    pub fn admin(file: impl Into<PathBuf>) -> Self {
        Origin {
            file: file.into(),
            layer: Layer::Admin,
            line: 0,
        }
    }
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
    /// Fields that the policy set or limited (forced on-demand, clamped resources), each
    /// naming the rule's file and line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_set: Vec<FieldOrigin>,
    /// Why policy refuses this service (naming the rule and its file:line): it stays in the
    /// catalog so that users see it, but it cannot be enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
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
    /// Memory limit in bytes (`--memory`, `MemoryMax=`); `None` is unlimited.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (`--cpus`, `CPUQuota=`); `None` is unlimited.
    pub cpus: Option<f64>,
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

/// Where a rule of the policy is written: `policy.toml:LINE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleLoc {
    pub file: PathBuf,
    pub line: usize,
}

/// Resource ceilings of the policy (`[limits]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Limits {
    /// Bytes; every container gets at most this (and this when its entry names none).
    pub container_memory: Option<u64>,
    pub container_cpus: Option<f64>,
    /// Bytes; the services a user turns on may together claim at most this.
    pub user_memory: Option<u64>,
    pub user_cpus: Option<f64>,
}

/// Admin policy, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub allowed_host_paths: Vec<PathBuf>,
    pub port_min: u16,
    pub port_max: u16,
    pub denied_services: Vec<String>,
    pub default_enabled: Vec<String>,
    /// Image patterns (`*` matches anything, `/` included); empty allows every image.
    pub allowed_images: Vec<String>,
    /// Always on; the user cannot disable or stop them.
    pub required_services: Vec<String>,
    /// Made on-demand whatever their entry says (heavy services).
    pub on_demand: Vec<String>,
    /// Whether `~/.config/berth/catalog.d` is read at all.
    pub user_catalogs: bool,
    pub limits: Limits,
    /// Where each rule is written, by its name (`allowed_images`, `limits.user_memory`…).
    pub rules: BTreeMap<String, RuleLoc>,
    /// Services the cloud provides, by name: their consumers get the URL, and the local
    /// entry of the same name is not offered.
    pub remote_services: BTreeMap<String, RemoteService>,
    /// Scheduled backups (`[backup]`); `None`: only by hand.
    pub backup: Option<BackupPolicy>,
}

/// `[backup]` of the policy: every enabled service's data is backed up this often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupPolicy {
    pub every: Duration,
    /// Complete backups kept per service; older ones are removed after a good one.
    pub keep: usize,
}

/// A service the cloud provides (`[remote_services.NAME]` of the policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteService {
    /// Without a trailing `/`: what `${service.NAME.url}` becomes.
    pub url: String,
    /// What the health check asks for.
    pub health_url: String,
    pub check_interval: Duration,
    pub ca_file: Option<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_host_paths: vec![PathBuf::from("/shared")],
            port_min: 1024,
            port_max: 65535,
            denied_services: Vec::new(),
            default_enabled: Vec::new(),
            allowed_images: Vec::new(),
            required_services: Vec::new(),
            on_demand: Vec::new(),
            user_catalogs: false,
            limits: Limits::default(),
            rules: BTreeMap::new(),
            remote_services: BTreeMap::new(),
            backup: None,
        }
    }
}

impl Policy {
    /// A rule by name and where it is written, for refusals: `policy rule allowed_images
    /// (/etc/berth/policy.toml:3)`; a rule that is not written is the default.
    pub fn rule(&self, name: &str) -> String {
        match self.rules.get(name) {
            Some(l) => format!("policy rule `{name}` ({}:{})", l.file.display(), l.line),
            None => format!("policy rule `{name}` (the default)"),
        }
    }

    pub fn is_required(&self, service: &str) -> bool {
        self.required_services.iter().any(|s| s == service)
    }

    pub fn is_denied(&self, service: &str) -> bool {
        self.denied_services.iter().any(|s| s == service)
    }

    /// Whether `image` matches one of the allowed patterns (or no pattern is set).
    pub fn image_allowed(&self, image: &str) -> bool {
        self.allowed_images.is_empty() || self.allowed_images.iter().any(|p| glob(p, image))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
