//! The catalog file as written: serde structs that mirror the TOML one to one.
//!
//! Nothing here is trusted. Fields that later checks may complain about are wrapped in
//! [`Spanned`] so that an error can point at the exact line and column. The validated model
//! in [`super::model`] is built from these by [`super::validate`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub description: Spanned<String>,
    pub homepage: Option<String>,
    #[serde(default)]
    pub on_demand: bool,
    pub idle_stop: Option<Spanned<String>>,
    #[serde(default)]
    pub uses: Vec<Spanned<String>>,
    #[serde(default)]
    pub shared: bool,
    pub gpu: Option<Spanned<String>>,
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    pub start_timeout: Option<Spanned<String>>,
    pub probe: Option<Spanned<RawProbe>>,
    pub backup: Option<Spanned<RawBackup>>,
    #[serde(default)]
    pub containers: Vec<Spanned<RawContainer>>,
}

/// `[backup]`: how `berth backup` keeps a running service's volumes consistent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub mode: Spanned<String>,
    pub container: Option<Spanned<String>>,
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub port: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainer {
    pub name: Spanned<String>,
    pub image: Spanned<String>,
    #[serde(default)]
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub cap_add: Option<Spanned<Vec<String>>>,
    pub cap_add_reason: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub init: bool,
    #[serde(default)]
    pub tmpfs: Vec<Spanned<String>>,
    /// Size of `/dev/shm`, e.g. "256m" (Podman's default is 64m).
    pub shm_size: Option<Spanned<String>>,
    pub no_new_privileges: Option<Spanned<bool>>,
    pub privileges_reason: Option<String>,
    #[serde(default)]
    pub ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub volumes: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    pub files: Vec<Spanned<RawFile>>,
    pub health: Option<Spanned<RawHealth>>,
    /// Memory limit, e.g. "2g" (Podman's `--memory`).
    pub memory: Option<Spanned<String>>,
    /// CPU limit in CPUs, e.g. 1.5 (Podman's `--cpus`).
    pub cpus: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    pub name: Spanned<String>,
    pub host: Spanned<i64>,
    pub container: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub target: Spanned<String>,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub target: Spanned<String>,
    pub content: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub cmd: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub start_period: Option<Spanned<String>>,
}

/// `/etc/berth/policy.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Host paths containers may mount (exactly, or anything below them); absent: `/shared`.
    pub allowed_host_paths: Option<Spanned<Vec<Spanned<String>>>>,
    /// Lowest and highest stable port a service may claim.
    pub port_min: Option<Spanned<i64>>,
    pub port_max: Option<Spanned<i64>>,
    /// Services users may not enable.
    #[serde(default)]
    pub denied_services: Vec<Spanned<String>>,
    /// Services enabled for a user who has not chosen otherwise.
    #[serde(default)]
    pub default_enabled: Vec<Spanned<String>>,
    /// Image patterns a service may use (`*` matches anything); absent allows every image.
    pub allowed_images: Option<Spanned<Vec<Spanned<String>>>>,
    /// Services that are always on: the user cannot disable or stop them.
    #[serde(default)]
    pub required_services: Vec<Spanned<String>>,
    /// Services made on-demand whatever their entry says.
    #[serde(default)]
    pub on_demand: Vec<Spanned<String>>,
    /// Whether the user's own `~/.config/berth/catalog.d` is read (default false).
    pub user_catalogs: Option<Spanned<bool>>,
    pub limits: Option<Spanned<RawLimits>>,
    /// Services the cloud provides instead of a local container, by service name.
    #[serde(default)]
    pub remote_services: BTreeMap<String, Spanned<RawRemoteService>>,
    /// Scheduled backups of every enabled service's data.
    pub backup: Option<Spanned<RawBackupPolicy>>,
}

/// `[backup]` of the policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackupPolicy {
    pub every: Spanned<String>,
    pub keep: Option<Spanned<i64>>,
}

/// `[remote_services.NAME]` of the policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteService {
    pub url: Spanned<String>,
    /// Path asked for by the health check (default `/`).
    pub health_path: Option<Spanned<String>>,
    /// How often it is checked (default 30s).
    pub check_interval: Option<Spanned<String>>,
    /// A PEM file with the CA that signed the service's certificate (a private CA of the
    /// cloud); without it the system's CA store.
    pub ca_file: Option<Spanned<String>>,
}

/// `[limits]` of the policy: resource ceilings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub container_memory: Option<Spanned<String>>,
    pub container_cpus: Option<Spanned<f64>>,
    pub user_memory: Option<Spanned<String>>,
    pub user_cpus: Option<Spanned<f64>>,
}
