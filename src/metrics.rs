//! `/metrics`: berth's health as OpenMetrics text for Prometheus, made from the engine's latest
//! [`Snapshot`].
//!
//! One encoder, two doors: `GET /metrics` on the API socket (local tools, same user only), and,
//! when the administrator sets `[metrics] listen` in config.toml, a TCP endpoint for the cloud's
//! Prometheus that serves nothing but `GET /metrics` and wants `Authorization: Bearer <token>`
//! (the token file is read at start and again whenever it changes). Only a loopback address
//! without a token file is served without a token.
//!
//! Limits: the numbers are as fresh as the last snapshot (published after every pass and every
//! health tick); `berth_snapshot_timestamp_seconds` says how fresh. The TCP endpoint speaks plain
//! HTTP, so the token crosses the network in clear text: it belongs on the cloud's private network
//! only. A registry is built per scrape from the snapshot: it is small, and the engine keeps no
//! metric handles. Metric families from elsewhere in the daemon (the proxy's counters, when it
//! comes) join through [`encode_with`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text;
use prometheus_client::encoding::{EncodeGaugeValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info};

use crate::engine::source_chain;
use berth_proto::{ServiceStatus, Snapshot, State};

/// The content type of every answer with metrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The engine's snapshots, as [`crate::engine::Handle::snapshots`] hands them out.
pub type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

/// Everything a scrape is made from: the engine's snapshots and the live counters of the
/// proxy and the cloud push. Both doors (the API socket and the TCP endpoint) share one.
#[derive(Debug, Clone)]
pub struct Sources {
    pub snapshots: Snapshots,
    pub proxy: Arc<crate::proxy::ports::Shared>,
    pub push: Option<Arc<crate::push::PushStats>>,
    /// Who this VM is (cloud-init's instance data), for `berth_vm_info`.
    pub vm: Arc<VmInfo>,
}

/// The VM's identity as last read: read again at a scrape when older than [`VM_INFO_TTL`]
/// (cloud-init may write its instance data after berth started, at first boot), on the
/// blocking pool.
#[derive(Debug)]
pub struct VmInfo {
    sources: crate::push::identity::Sources,
    last: std::sync::Mutex<Option<(std::time::Instant, crate::push::report::Vm)>>,
}

const VM_INFO_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl VmInfo {
    pub fn new(sources: crate::push::identity::Sources) -> Self {
        VmInfo {
            sources,
            last: std::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> crate::push::report::Vm {
        let fresh = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < VM_INFO_TTL)
            .map(|(_, vm)| vm.clone());
        if let Some(vm) = fresh {
            return vm;
        }
        let src = self.sources.clone();
        let read = tokio::task::spawn_blocking(move || {
            crate::push::identity::read(&src, 0, Some("-".into())).vm
        })
        .await;
        let Ok(vm) = read else {
            return crate::push::report::Vm {
                instance_id: "unknown".into(),
                hostname: "unknown".into(),
                cloud_name: None,
                region: None,
                availability_zone: None,
                source: crate::push::report::IdentitySource::MachineId,
            };
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), vm.clone()));
        vm
    }
}

/// `berth_vm_info{instance_id,hostname,cloud,region,availability_zone,source} 1`: joins this
/// VM's series to the cloud's own inventory.
pub fn vm_registry(vm: &crate::push::report::Vm) -> Registry {
    let source = match vm.source {
        crate::push::report::IdentitySource::CloudInit => "cloud-init",
        crate::push::report::IdentitySource::MachineId => "machine-id",
    };
    let labels = vec![
        ("instance_id", vm.instance_id.clone()),
        ("hostname", vm.hostname.clone()),
        ("cloud", vm.cloud_name.clone().unwrap_or_default()),
        ("region", vm.region.clone().unwrap_or_default()),
        (
            "availability_zone",
            vm.availability_zone.clone().unwrap_or_default(),
        ),
        ("source", source.to_string()),
    ];
    let mut r = Registry::default();
    r.register(
        "berth_vm",
        "The VM berth runs on, as cloud-init's instance data names it (else /etc/machine-id)",
        prometheus_client::metrics::info::Info::new(labels),
    );
    r
}

/// Every state a service can be in, in the order of [`State`]: the members of the state set.
const STATES: [State; 9] = [
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

/// Position of a state in [`STATES`]. No `_` arm: a new state fails to compile here until it
/// joins the state set.
const fn state_index(s: State) -> usize {
    match s {
        State::Off => 0,
        State::Stopped => 1,
        State::Waiting => 2,
        State::Starting => 3,
        State::Running => 4,
        State::Unhealthy => 5,
        State::Failed => 6,
        State::Stopping => 7,
        State::Idle => 8,
    }
}

type Labels = Vec<(&'static str, String)>;

/// A gauge family whose series come out in the order they were added.
///
/// prometheus-client's `Family` keeps series in a hash map, which suits long-lived
/// instrumentation; this family is rebuilt from every snapshot, and following the snapshot's
/// order keeps scrapes readable and diffable.
#[derive(Debug)]
struct Gauges<V>(Vec<(Labels, V)>);

impl<V: EncodeGaugeValue + std::fmt::Debug> EncodeMetric for Gauges<V> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.0 {
            encoder.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A counter family whose series come out in the order they were added (see [`Gauges`]).
#[derive(Debug)]
struct Counters(Vec<(Labels, u64)>);

impl EncodeMetric for Counters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The proxy's counters: per stable port and per on-demand service.
pub fn proxy_registry(shared: &crate::proxy::ports::Shared) -> Registry {
    use std::sync::atomic::Ordering::Relaxed;
    let ports = shared.port_counters();
    let port = |p: u16, s: &str| vec![("service", s.to_string()), ("port", p.to_string())];
    let per_port = |f: &dyn Fn(&crate::proxy::forward::Counters) -> u64| {
        Counters(ports.iter().map(|(p, s, c)| (port(*p, s), f(c))).collect())
    };
    let mut r = Registry::default();
    r.register(
        "berth_proxy_connections",
        "Connections accepted on a stable port",
        per_port(&|c| c.connections_total.load(Relaxed)),
    );
    r.register(
        "berth_proxy_bytes_in",
        "Bytes forwarded from clients to the service",
        per_port(&|c| c.bytes_in.load(Relaxed)),
    );
    r.register(
        "berth_proxy_bytes_out",
        "Bytes forwarded from the service to clients",
        per_port(&|c| c.bytes_out.load(Relaxed)),
    );
    r.register(
        "berth_proxy_spliced_bytes",
        "Bytes forwarded (both ways) with splice(2), without passing through user space",
        per_port(&|c| c.spliced.load(Relaxed)),
    );
    r.register(
        "berth_proxy_inside_connections",
        "Connections forwarded straight into the container's network namespace, not through Podman's port forwarder",
        per_port(&|c| c.inside_total.load(Relaxed)),
    );
    r.register(
        "berth_proxy_active_connections",
        "Connections open now on a stable port",
        Gauges(
            ports
                .iter()
                .map(|(p, s, c)| (port(*p, s), c.active.load(Relaxed)))
                .collect(),
        ),
    );
    let relays = shared.relay_counters();
    let relay = |c: &str, s: &str, p: u16| {
        vec![
            ("consumer", c.to_string()),
            ("service", s.to_string()),
            ("port", p.to_string()),
        ]
    };
    r.register(
        "berth_relay_connections",
        "Connections a service made to a service it uses, through berth's listener inside its own network namespace",
        Counters(
            relays
                .iter()
                .map(|(c, s, p, k)| (relay(c, s, *p), k.connections_total.load(Relaxed)))
                .collect(),
        ),
    );
    r.register(
        "berth_relay_active_connections",
        "Connections open now from a service to a service it uses",
        Gauges(
            relays
                .iter()
                .map(|(c, s, p, k)| (relay(c, s, *p), k.active.load(Relaxed)))
                .collect(),
        ),
    );
    let demand = shared.demand_counters();
    let svc = |s: &str| vec![("service", s.to_string())];
    r.register(
        "berth_on_demand_starts",
        "Starts of an on-demand service caused by a connection",
        Counters(
            demand
                .iter()
                .map(|(s, d)| (svc(s), d.starts.load(Relaxed)))
                .collect(),
        ),
    );
    r.register_with_unit(
        "berth_on_demand_start_last",
        "Time from the first connection to a ready backend, last on-demand start",
        Unit::Seconds,
        Gauges(
            demand
                .iter()
                .map(|(s, d)| (svc(s), d.wait_us_last.load(Relaxed) as f64 / 1e6))
                .collect(),
        ),
    );
    r
}

fn service(s: &ServiceStatus) -> Labels {
    vec![("service", s.name.clone())]
}

/// berth's own metric families from one snapshot.
fn registry(snap: &Snapshot) -> Registry {
    let d = &snap.daemon;
    let services = &snap.services;
    let mut r = Registry::default();

    // An OpenMetrics info family named `berth` is exposed as the series `berth_info`.
    r.register(
        "berth",
        "berth's version, the Podman version it talks to (empty when Podman did not answer) \
         and the serial of the catalog in force",
        Info::new(vec![
            ("version", d.version.clone()),
            (
                "podman_version",
                d.podman_version.clone().unwrap_or_default(),
            ),
            ("catalog_serial", d.catalog_serial.clone()),
        ]),
    );

    let gpu = |g: &berth_proto::GpuInfo| {
        vec![
            ("device", g.device.clone()),
            ("model", g.model.clone().unwrap_or_default()),
        ]
    };
    r.register(
        "berth_gpus",
        "GPUs containers can get (CDI devices found at the daemon's start)",
        Gauges(vec![(Vec::new(), d.gpus.len() as i64)]),
    );
    r.register_with_unit(
        "berth_gpu_memory",
        "Memory of each GPU, where nvidia-smi says",
        Unit::Bytes,
        Gauges(
            d.gpus
                .iter()
                .filter_map(|g| g.memory_mib.map(|m| (gpu(g), (m * 1024 * 1024) as i64)))
                .collect(),
        ),
    );

    r.register(
        "berth_remote_service_up",
        "Whether each service the cloud provides (the policy's [remote_services]) answered its \
         last health check: 1 yes, 0 no; absent before the first check",
        Gauges(
            d.remote_services
                .iter()
                .filter_map(|rs| {
                    rs.up.map(|up| {
                        (
                            vec![("service", rs.name.clone()), ("url", rs.url.clone())],
                            i64::from(up),
                        )
                    })
                })
                .collect(),
        ),
    );

    if let Some(b) = &d.backup_schedule {
        r.register(
            "berth_backup_last_success_timestamp_seconds",
            "Unix time of the last scheduled backup that backed up every service (0: none yet)",
            Gauges(vec![(Vec::new(), b.last_success.unwrap_or(0) as i64)]),
        );
        r.register(
            "berth_backup_failing",
            "1 while the last scheduled backup failed (`berth info` says why), else 0",
            Gauges(vec![(Vec::new(), i64::from(b.error.is_some()))]),
        );
    }

    // prometheus-client has no state set type, and an OpenMetrics state set would name its
    // label after the metric. A gauge family with a `state` label and exactly one 1 per service
    // is the shape Prometheus users query (`berth_service_state{state="failed"} == 1`).
    r.register(
        "berth_service_state",
        "State of each service: 1 for the state it is in, 0 for every other state \
         (`berth ls` gives the reason)",
        Gauges(
            services
                .iter()
                .flat_map(|s| {
                    let current = state_index(s.state);
                    STATES.iter().enumerate().map(move |(i, st)| {
                        let mut l = service(s);
                        l.push(("state", st.as_str().to_string()));
                        (l, i64::from(i == current))
                    })
                })
                .collect(),
        ),
    );
    r.register(
        "berth_service_enabled",
        "1 when the user enabled the service (on, or held stopped), 0 when it is off",
        Gauges(
            services
                .iter()
                .map(|s| (service(s), i64::from(s.choice != berth_proto::Choice::Off)))
                .collect(),
        ),
    );
    // A gauge, not a counter: this is systemd's NRestarts of the main unit, which drops to 0
    // whenever the unit is started by hand or the user manager restarts, while berth keeps
    // running. A counter may only fall when the process exposing it restarts, and these drops
    // are not that. `changes(x) - resets(x)` counts the restarts (see
    // config/prometheus/berth.rules.yml).
    r.register(
        "berth_service_restarts",
        "Automatic restarts systemd made of the service's main unit since it was last started \
         by hand (systemd's NRestarts)",
        Gauges(
            services
                .iter()
                .map(|s| (service(s), u64::from(s.restarts)))
                .collect(),
        ),
    );
    r.register_with_unit(
        "berth_service_health_check_duration",
        "How long the service's last health probe took (services whose catalog entry has a \
         probe)",
        Unit::Seconds,
        Gauges(
            services
                .iter()
                .filter_map(|s| s.probe.as_ref().map(|p| (service(s), p.seconds)))
                .collect(),
        ),
    );
    r.register(
        "berth_service_probe_ok",
        "1 when the service's last health probe passed, 0 when it failed (services whose \
         catalog entry has a probe)",
        Gauges(
            services
                .iter()
                .filter_map(|s| s.probe.as_ref().map(|p| (service(s), i64::from(p.ok))))
                .collect(),
        ),
    );
    r.register_with_unit(
        "berth_service_state_since",
        "Unix time at which the service entered its current state, as far as this daemon saw",
        Unit::Seconds,
        Gauges(
            services
                .iter()
                .filter_map(|s| s.since.map(|t| (service(s), t)))
                .collect(),
        ),
    );

    // Image updates: a counter of rollbacks (kept across restarts of the daemon, so it only
    // falls when the state directory is reset) and the state of the last update.
    r.register(
        "berth_update_rollbacks",
        "Image updates of the service that were rolled back because the new image did not \
         become healthy within its start period",
        Counters(
            services
                .iter()
                .filter_map(|s| s.update.as_ref().map(|u| (service(s), u.rollbacks)))
                .collect(),
        ),
    );
    r.register(
        "berth_service_update",
        "State of the service's last image update: 1 for the state it is in (updating, \
         updated, rolled_back), 0 for the others (services that had one)",
        Gauges(
            services
                .iter()
                .filter_map(|s| s.update.as_ref().map(|u| (s, u.state)))
                .flat_map(|(s, now)| {
                    [
                        berth_proto::UpdateState::Updating,
                        berth_proto::UpdateState::Updated,
                        berth_proto::UpdateState::RolledBack,
                    ]
                    .into_iter()
                    .map(move |st| {
                        let mut l = service(s);
                        l.push(("state", st.as_str().to_string()));
                        (l, i64::from(st == now))
                    })
                })
                .collect(),
        ),
    );

    let c = &d.counters;
    r.register(
        "berth_reconcile_passes",
        "Reconcile passes since the daemon started",
        ConstCounter::new(c.passes),
    );
    r.register(
        "berth_systemd_writes",
        "Requests that change something sent to the systemd user manager (start, stop, \
         reload, reset) since the daemon started",
        ConstCounter::new(c.systemd_writes),
    );
    r.register(
        "berth_podman_writes",
        "Requests that change something sent to Podman (image pulls) since the daemon started",
        ConstCounter::new(c.podman_writes),
    );
    r.register(
        "berth_file_writes",
        "Unit files, env files and directories written or removed since the daemon started",
        ConstCounter::new(c.file_writes),
    );
    r.register(
        "berth_catalog_error",
        "1 while the newest catalog or policy is broken (the last good one stays in force), \
         else 0",
        ConstGauge::new(i64::from(d.catalog_error.is_some())),
    );
    if let Some(rc) = &d.remote_catalog {
        r.register(
            "berth_remote_catalog_serial",
            "Serial of the signed remote catalog in force (0 before the first good one)",
            ConstGauge::new(rc.serial.unwrap_or(0) as i64),
        );
        r.register(
            "berth_remote_catalog_fetch_failures",
            "Fetches of the remote catalog that changed nothing because they failed (server \
             down, bad signature, unknown key, older serial, replay, expired, invalid) since \
             the daemon started",
            ConstCounter::new(rc.failures_total),
        );
        r.register(
            "berth_remote_catalog_not_modified",
            "Fetches of the remote catalog answered 304 Not Modified since the daemon started",
            ConstCounter::new(rc.not_modified_total),
        );
        r.register(
            "berth_remote_catalog_error",
            "1 while the last fetch of the remote catalog failed or the one in force has \
             expired, else 0",
            ConstGauge::new(i64::from(rc.error.is_some())),
        );
        r.register_with_unit(
            "berth_remote_catalog_last_success_timestamp",
            "Unix time of the last good fetch of the remote catalog (applied or unchanged); 0 \
             for none",
            Unit::Seconds,
            ConstGauge::new(rc.last_success.unwrap_or(0) as i64),
        );
        r.register_with_unit(
            "berth_remote_catalog_expiry_timestamp",
            "Unix time at which the remote catalog in force expires; 0 for none",
            Unit::Seconds,
            ConstGauge::new(rc.expiry.unwrap_or(0) as i64),
        );
    }
    r.register(
        "berth_config_error",
        "1 while a changed config.toml does not validate (the daemon keeps the settings it \
         started with), else 0",
        ConstGauge::new(i64::from(d.config_error.is_some())),
    );
    r.register(
        "berth_podman_up",
        "1 while Podman's API answered the daemon's last question, else 0 (services keep \
         running without it)",
        ConstGauge::new(i64::from(d.podman_error.is_none())),
    );
    r.register_with_unit(
        "berth_snapshot_timestamp",
        "Unix time at which these numbers were taken",
        Unit::Seconds,
        ConstGauge::new(snap.taken_at),
    );
    r
}

/// The whole OpenMetrics exposition of one snapshot.
pub fn encode(snap: &Snapshot) -> String {
    encode_with(snap, &[])
}

/// [`encode`] plus metric families from elsewhere in the daemon, appended before `# EOF`.
///
/// This is the extension point for the proxy's counters: it keeps its own long-lived
/// [`Registry`] (names prefixed `berth_`, none reusing a name from here) and passes it in.
pub fn encode_with(snap: &Snapshot, extra: &[&Registry]) -> String {
    let mut out = String::with_capacity(1024 + 1024 * snap.services.len());
    let written = text::encode_registry(&mut out, &registry(snap))
        .and_then(|()| {
            extra
                .iter()
                .try_for_each(|r| text::encode_registry(&mut out, r))
        })
        .and_then(|()| text::encode_eof(&mut out));
    // Writing into a String cannot fail, and no metric here makes errors of its own.
    debug_assert!(written.is_ok(), "encoding metrics into a String failed");
    out
}

/// The cloud push's counters as metric families.
pub fn push_registry(c: crate::push::PushCounters) -> Registry {
    let mut r = Registry::default();
    r.register(
        "berth_push_spooled_reports",
        "Health reports waiting in the spool for the receiver",
        ConstGauge::new(c.spooled as i64),
    );
    r.register(
        "berth_push_reports",
        "Health reports made since the daemon started",
        ConstCounter::new(c.reports_total),
    );
    r.register(
        "berth_push_delivered",
        "Health reports the receiver accepted since the daemon started",
        ConstCounter::new(c.delivered_total),
    );
    r.register(
        "berth_push_failed_attempts",
        "Deliveries that failed (no connection, timeout, non-2xx) since the daemon started",
        ConstCounter::new(c.failed_attempts_total),
    );
    r.register(
        "berth_push_dropped",
        "Reports dropped unsent to keep the spool bounded, since the daemon started",
        ConstCounter::new(c.dropped_total),
    );
    r.register_with_unit(
        "berth_push_last_delivery_timestamp",
        "Unix time of the last accepted delivery; 0 before the first",
        Unit::Seconds,
        ConstGauge::new(c.last_delivery_unix as i64),
    );
    r
}

/// The answer to `GET /metrics` on either door.
pub async fn render(sources: &Sources) -> Response {
    let vm = sources.vm.get().await;
    // Clone the Arc and let go of the channel before encoding.
    let snap = sources.snapshots.borrow().clone();
    match snap {
        Some(snap) => {
            let mut extra = vec![proxy_registry(&sources.proxy), vm_registry(&vm)];
            if let Some(p) = &sources.push {
                extra.push(push_registry(p.counters()));
            }
            let refs: Vec<&Registry> = extra.iter().collect();
            let body = encode_with(&snap, &refs);
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "berth has no health snapshot yet: the engine publishes its first one right after \
             it starts; try again in a few seconds\n",
        )
            .into_response(),
    }
}

/// Who may read the TCP endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token: only for a loopback address without a token file.
    Open,
    /// `Authorization: Bearer <token>`, the token being the trimmed content of this file.
    TokenFile(PathBuf),
}

impl Access {
    /// The access `[metrics]` asks for. A network address without a token file is refused
    /// (config validation refuses it too; this keeps the endpoint closed whatever the caller).
    pub fn for_listen(
        addr: SocketAddr,
        bearer_token_file: Option<PathBuf>,
    ) -> Result<Access, MetricsError> {
        match bearer_token_file {
            Some(p) => Ok(Access::TokenFile(p)),
            None if addr.ip().is_loopback() => Ok(Access::Open),
            None => Err(MetricsError::Unprotected(addr)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics on {0} would be open to the network: set [metrics] bearer_token_file")]
    Unprotected(SocketAddr),
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving metrics on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What identifies one version of the token file, so a changed file is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The bearer token file: read at start and again whenever it changes, so the administrator
/// can rotate the token without restarting berth.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    stamp: Option<Stamp>,
    /// The token, or what is wrong with the file; `None` before the first look.
    token: Option<Result<Arc<str>, String>>,
}

impl TokenFile {
    fn new(path: PathBuf) -> TokenFile {
        TokenFile {
            path,
            seen: Mutex::new(Seen {
                stamp: None,
                token: None,
            }),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token in force, or `None` while the file is missing, unreadable or empty: then
    /// every request is refused, and the problem is logged once each time it changes.
    async fn current(&self) -> Option<Arc<str>> {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(m) => Stamp::of(&m),
            Err(e) => return self.settle(None, Err(format!("cannot be read: {e}"))),
        };
        {
            let seen = self.seen();
            if seen.stamp == Some(stamp) {
                if let Some(t) = &seen.token {
                    return t.as_ref().ok().cloned();
                }
            }
        }
        let token = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) if t.trim().is_empty() => Err("is empty".to_string()),
            Ok(t) => Ok(Arc::from(t.trim())),
            Err(e) => Err(format!("cannot be read: {e}")),
        };
        self.settle(Some(stamp), token)
    }

    fn settle(&self, stamp: Option<Stamp>, token: Result<Arc<str>, String>) -> Option<Arc<str>> {
        let mut seen = self.seen();
        let path = self.path.display();
        match (&seen.token, &token) {
            (Some(Err(before)), Err(now)) if before == now => {}
            (_, Err(problem)) => error!(
                path = %path,
                %problem,
                "the metrics bearer token file is unusable: the metrics endpoint refuses every \
                 request until it is fixed"
            ),
            (Some(Ok(before)), Ok(now)) if before == now => {}
            (Some(Ok(_)), Ok(_)) => info!(path = %path, "metrics bearer token changed"),
            (_, Ok(_)) => info!(path = %path, "metrics bearer token loaded"),
        }
        seen.stamp = stamp;
        seen.token = Some(token);
        seen.token.as_ref().and_then(|t| t.as_ref().ok().cloned())
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

#[derive(Debug)]
enum Guard {
    Open,
    Token(TokenFile),
}

#[derive(Debug)]
struct TcpState {
    guard: Guard,
    sources: Sources,
}

async fn tcp_metrics(AxState(s): AxState<Arc<TcpState>>, headers: HeaderMap) -> Response {
    if let Guard::Token(file) = &s.guard {
        let Some(token) = file.current().await else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the metrics endpoint is not configured correctly; see the berth daemon's log\n",
            )
                .into_response();
        };
        if !bearer(&headers).is_some_and(|given| crate::secret::same(given, token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"berth\"")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    render(&s.sources).await
}

/// Serves `GET /metrics` (and nothing else) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    access: Access,
    sources: Sources,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let guard = match access {
        Access::Open => Guard::Open,
        Access::TokenFile(path) => {
            let file = TokenFile::new(path);
            // Read once now, so a missing or empty file is in the log from the start.
            file.current().await;
            Guard::Token(file)
        }
    };
    let router = Router::new()
        .route("/metrics", get(tcp_metrics))
        .with_state(Arc::new(TcpState { guard, sources }));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the `[metrics] listen` address (the daemon binds it before it runs).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves the `[metrics] listen` endpoint until `shutdown`. Whatever goes wrong is logged; the
/// daemon and its API carry on without the endpoint.
pub async fn serve_logged(
    listener: TcpListener,
    access: Access,
    sources: Sources,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().ok();
    let auth = match &access {
        Access::Open => "none (loopback)",
        Access::TokenFile(_) => "bearer token",
    };
    info!(?addr, auth, "metrics endpoint listening");
    if let Err(source) = serve(listener, access, sources, shutdown).await {
        let err = MetricsError::Serve {
            addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        };
        error!(%err, cause = %source_chain(&err), "the metrics endpoint stopped; berth carries on without it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::{Counters, DaemonInfo, ProbeStatus};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn svc(name: &str, choice: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            description: String::new(),
            choice: match choice {
                "on" => berth_proto::Choice::On,
                "stopped" => berth_proto::Choice::Stopped,
                _ => berth_proto::Choice::Off,
            },
            state,
            reason: None,
            failure: None,
            hint: None,
            locked: false,
            note: None,
            update: None,
            unit: format!("berth-{name}.service"),
            unit_state: "active/running".into(),
            ports: Vec::new(),
            containers: Vec::new(),
            restarts: 0,
            since: None,
            probe: None,
        }
    }

    fn snapshot(services: Vec<ServiceStatus>) -> Snapshot {
        Snapshot {
            taken_at: 1_700_000_100,
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 42,
                podman_version: Some("4.3.1".into()),
                catalog_services: 2,
                catalog_serial: "5e1a".into(),
                catalog_error: None,
                catalog_in_force: None,
                config_error: None,
                podman_error: None,
                web_url: None,
                web_error: None,
                gpus: Vec::new(),
                remote_catalog: None,
                remote_services: Vec::new(),
                backup_schedule: None,
                counters: Counters {
                    passes: 7,
                    systemd_writes: 3,
                    podman_writes: 1,
                    file_writes: 4,
                },
            },
            services,
        }
    }

    fn sample() -> Snapshot {
        let mut web = svc("web", "on", State::Running);
        web.restarts = 2;
        web.since = Some(1_700_000_000);
        web.probe = Some(ProbeStatus {
            ok: true,
            seconds: 0.25,
            detail: "HTTP 200".into(),
            at: 1_700_000_090,
        });
        snapshot(vec![web, svc("db", "off", State::Off)])
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[tokio::test]
    async fn the_vm_info_names_the_instance_from_cloud_init_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("instance-data.json");
        std::fs::write(
            &data,
            r#"{"v1": {"instance_id": "b7e4-1", "local_hostname": "ws-alice", "cloud_name": "openstack", "region": "RegionOne", "availability_zone": "nova"}}"#,
        )
        .expect("write");
        let info = VmInfo::new(crate::push::identity::Sources {
            instance_data: data.clone(),
            machine_id: dir.path().join("machine-id"),
            hostname: dir.path().join("hostname"),
            passwd: dir.path().join("passwd"),
        });
        let mut out = String::new();
        text::encode_registry(&mut out, &vm_registry(&info.get().await)).expect("encode");
        assert!(
            out.contains(r#"berth_vm_info{instance_id="b7e4-1",hostname="ws-alice",cloud="openstack",region="RegionOne",availability_zone="nova",source="cloud-init"} 1"#),
            "{out}"
        );
        // Kept for a while: a scrape does not read the file each time.
        std::fs::remove_file(&data).expect("rm");
        assert_eq!(info.get().await.instance_id, "b7e4-1");
    }

    #[test]
    fn exact_series_of_a_snapshot() {
        let out = encode(&sample());
        let l = lines(&out);
        for want in [
            "# TYPE berth info",
            r#"berth_info{version="0.1.0",podman_version="4.3.1",catalog_serial="5e1a"} 1"#,
            "# TYPE berth_service_state gauge",
            r#"berth_service_state{service="web",state="running"} 1"#,
            r#"berth_service_state{service="web",state="off"} 0"#,
            r#"berth_service_state{service="db",state="off"} 1"#,
            r#"berth_service_enabled{service="web"} 1"#,
            r#"berth_service_enabled{service="db"} 0"#,
            "# TYPE berth_service_restarts gauge",
            r#"berth_service_restarts{service="web"} 2"#,
            r#"berth_service_restarts{service="db"} 0"#,
            "# UNIT berth_service_health_check_duration_seconds seconds",
            r#"berth_service_health_check_duration_seconds{service="web"} 0.25"#,
            r#"berth_service_probe_ok{service="web"} 1"#,
            r#"berth_service_state_since_seconds{service="web"} 1700000000"#,
            "# TYPE berth_reconcile_passes counter",
            "berth_reconcile_passes_total 7",
            "berth_systemd_writes_total 3",
            "berth_podman_writes_total 1",
            "berth_file_writes_total 4",
            "berth_catalog_error 0",
            "berth_podman_up 1",
            "# UNIT berth_snapshot_timestamp_seconds seconds",
            "berth_snapshot_timestamp_seconds 1700000100",
        ] {
            assert!(l.contains(&want), "missing {want:?} in:\n{out}");
        }
        // Series of a service without a probe or a known start are left out, not made up.
        assert!(
            !out.contains(r#"health_check_duration_seconds{service="db"}"#),
            "{out}"
        );
        assert!(!out.contains(r#"probe_ok{service="db"}"#), "{out}");
        assert!(
            !out.contains(r#"state_since_seconds{service="db"}"#),
            "{out}"
        );
        assert!(out.ends_with("\n# EOF\n"), "{out}");
        assert_eq!(out.matches("# EOF").count(), 1);
        // Every series is berth's.
        for line in l.iter().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("berth_"), "{line}");
        }
    }

    #[test]
    fn rollbacks_are_a_counter_and_the_update_a_state() {
        let mut web = svc("web", "on", State::Running);
        web.update = Some(berth_proto::UpdateStatus {
            state: berth_proto::UpdateState::RolledBack,
            from: vec!["sha256:aa".into()],
            to: vec!["localhost/web:2".into()],
            reason: Some("not healthy within 6s of the swap".into()),
            at: 1_700_000_000,
            rollbacks: 2,
        });
        let out = encode(&snapshot(vec![web, svc("db", "on", State::Running)]));
        let l = lines(&out);
        assert!(
            l.contains(&"# TYPE berth_update_rollbacks counter"),
            "{out}"
        );
        assert!(
            l.contains(&r#"berth_update_rollbacks_total{service="web"} 2"#),
            "{out}"
        );
        assert!(
            l.contains(&r#"berth_service_update{service="web",state="rolled_back"} 1"#),
            "{out}"
        );
        assert!(
            l.contains(&r#"berth_service_update{service="web",state="updated"} 0"#),
            "{out}"
        );
        assert!(
            !out.contains(r#"berth_update_rollbacks_total{service="db"}"#),
            "{out}"
        );
    }

    #[test]
    fn series_follow_the_snapshot_order() {
        let out = encode(&sample());
        let web = out.find(r#"berth_service_enabled{service="web"}"#);
        let db = out.find(r#"berth_service_enabled{service="db"}"#);
        assert!(web < db, "{out}");
        let first_states: Vec<&str> = lines(&out)
            .into_iter()
            .filter(|l| l.starts_with(r#"berth_service_state{service="web""#))
            .collect();
        let names: Vec<String> = STATES
            .iter()
            .map(|s| {
                format!(
                    r#"berth_service_state{{service="web",state="{}"}}"#,
                    s.as_str()
                )
            })
            .collect();
        for (line, name) in first_states.iter().zip(&names) {
            assert!(line.starts_with(name.as_str()), "{line} vs {name}");
        }
    }

    #[test]
    fn state_set_has_exactly_one_state_per_service() {
        let services: Vec<ServiceStatus> = STATES
            .iter()
            .map(|st| svc(&format!("s-{}", st.as_str()), "on", *st))
            .collect();
        let out = encode(&snapshot(services));
        for st in STATES {
            let prefix = format!(r#"berth_service_state{{service="s-{}","#, st.as_str());
            let series: Vec<&str> = lines(&out)
                .into_iter()
                .filter(|l| l.starts_with(&prefix))
                .collect();
            assert_eq!(series.len(), STATES.len(), "{series:?}");
            let on: Vec<&&str> = series.iter().filter(|l| l.ends_with(" 1")).collect();
            assert_eq!(
                on,
                vec![&format!("{prefix}state=\"{}\"}} 1", st.as_str()).as_str()],
                "{series:?}"
            );
            assert_eq!(
                series.iter().filter(|l| l.ends_with(" 0")).count(),
                STATES.len() - 1
            );
        }
    }

    #[test]
    fn states_table_matches_the_enum() {
        for (i, st) in STATES.iter().enumerate() {
            assert_eq!(state_index(*st), i, "{st:?}");
        }
    }

    #[test]
    fn odd_podman_versions_are_quoted() {
        let mut snap = sample();
        snap.daemon.podman_version = Some("5.0 \"dev\" C:\\build\nline2".into());
        let out = encode(&snap);
        assert!(
            out.contains(r#"podman_version="5.0 \"dev\" C:\\build\nline2""#),
            "{out}"
        );
        snap.daemon.podman_version = None;
        assert!(encode(&snap).contains(r#"podman_version="""#));
    }

    #[test]
    fn catalog_error_and_empty_service_list() {
        let mut snap = snapshot(Vec::new());
        snap.daemon.catalog_error = Some("bad.toml:1:1: oops".into());
        let out = encode(&snap);
        assert!(lines(&out).contains(&"berth_catalog_error 1"), "{out}");
        assert!(!out.contains("berth_service_state"), "{out}");
        assert!(out.contains("berth_info{"), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn extra_families_come_before_eof() {
        let mut extra = Registry::default();
        let c: prometheus_client::metrics::counter::Counter = Default::default();
        c.inc_by(5);
        extra.register("berth_proxy_connections", "Connections accepted", c);
        let out = encode_with(&sample(), &[&extra]);
        let at = out
            .find("berth_proxy_connections_total 5")
            .expect("extra family");
        assert!(at < out.find("# EOF").expect("eof"), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn bearer_header_and_secret_comparison() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("value"));
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(
            header::AUTHORIZATION,
            "bearer  abc ".parse().expect("value"),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("value"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn network_address_without_token_is_refused() {
        let lo: SocketAddr = "127.0.0.1:9469".parse().expect("addr");
        let net: SocketAddr = "0.0.0.0:9469".parse().expect("addr");
        assert_eq!(
            Access::for_listen(lo, None).expect("loopback"),
            Access::Open
        );
        assert!(matches!(
            Access::for_listen(net, None),
            Err(MetricsError::Unprotected(_))
        ));
        assert_eq!(
            Access::for_listen(net, Some("/t".into())).expect("token"),
            Access::TokenFile("/t".into())
        );
    }

    /// One request; the status code and the whole answer.
    async fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }

    struct Server {
        port: u16,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(access: Access, snapshots: Snapshots) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = l.local_addr().expect("addr").port();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let sources = Sources {
                snapshots,
                proxy: Arc::new(crate::proxy::ports::Shared::default()),
                push: None,
                vm: Arc::new(VmInfo::new(crate::push::identity::Sources {
                    instance_data: "/nonexistent/instance-data.json".into(),
                    machine_id: "/nonexistent/machine-id".into(),
                    hostname: "/proc/sys/kernel/hostname".into(),
                    passwd: "/etc/passwd".into(),
                })),
            };
            let task = tokio::spawn(serve(l, access, sources, async {
                let _either_way = rx.await;
            }));
            Server {
                port,
                stop: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _server_may_be_gone = tx.send(());
            }
            self.task.await.expect("join").expect("served");
        }
    }

    #[tokio::test]
    async fn tcp_endpoint_wants_the_token_and_follows_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("metrics.token");
        std::fs::write(&token, "first-token\n").expect("token");
        let (tx, rx) = watch::channel(None);
        let srv = Server::start(Access::TokenFile(token.clone()), rx).await;

        assert_eq!(get(srv.port, "/metrics", None).await.0, 401);
        let (code, out) = get(srv.port, "/metrics", Some("Bearer wrong-token")).await;
        assert_eq!(code, 401, "{out}");
        assert!(
            out.to_lowercase().contains("www-authenticate: bearer"),
            "{out}"
        );

        // Right token, no snapshot yet.
        let (code, out) = get(srv.port, "/metrics", Some("Bearer first-token")).await;
        assert_eq!(code, 503, "{out}");
        assert!(out.contains("no health snapshot yet"), "{out}");

        tx.send_replace(Some(Arc::new(sample())));
        let (code, out) = get(srv.port, "/metrics", Some("Bearer first-token")).await;
        assert_eq!(code, 200, "{out}");
        assert!(
            out.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{out}"
        );
        assert!(out.contains("berth_info{"), "{out}");
        assert_eq!(
            get(srv.port, "/other", Some("Bearer first-token")).await.0,
            404
        );

        // A rotated token takes effect without a restart.
        std::fs::write(&token, "second-token-longer").expect("token");
        assert_eq!(
            get(srv.port, "/metrics", Some("Bearer first-token"))
                .await
                .0,
            401
        );
        assert_eq!(
            get(srv.port, "/metrics", Some("Bearer second-token-longer"))
                .await
                .0,
            200
        );

        // A missing or empty file refuses everyone, the old token included.
        std::fs::remove_file(&token).expect("rm");
        let (code, out) = get(srv.port, "/metrics", Some("Bearer second-token-longer")).await;
        assert_eq!(code, 503, "{out}");
        assert!(!out.contains("berth_info"), "{out}");
        std::fs::write(&token, "  \n").expect("token");
        assert_eq!(get(srv.port, "/metrics", Some("Bearer ")).await.0, 503);
        std::fs::write(&token, "third").expect("token");
        assert_eq!(get(srv.port, "/metrics", Some("Bearer third")).await.0, 200);
        srv.stop().await;
    }

    #[tokio::test]
    async fn tcp_endpoint_starting_without_its_token_file_refuses_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_tx, rx) = watch::channel(Some(Arc::new(sample())));
        let srv = Server::start(Access::TokenFile(dir.path().join("absent")), rx).await;
        assert_eq!(get(srv.port, "/metrics", None).await.0, 503);
        assert_eq!(get(srv.port, "/metrics", Some("Bearer ")).await.0, 503);
        srv.stop().await;
    }

    #[tokio::test]
    async fn open_loopback_endpoint_serves_without_token() {
        let (_tx, rx) = watch::channel(Some(Arc::new(sample())));
        let srv = Server::start(Access::Open, rx).await;
        let (code, out) = get(srv.port, "/metrics", None).await;
        assert_eq!(code, 200, "{out}");
        assert!(out.contains("berth_reconcile_passes_total 7"), "{out}");
        srv.stop().await;
    }

    #[tokio::test]
    async fn bind_failure_is_an_error_naming_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.expect_err("address in use");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(matches!(err, MetricsError::Bind { .. }));
    }

    #[test]
    fn push_counters_are_exposed() {
        let c = crate::push::PushCounters {
            spooled: 3,
            reports_total: 10,
            delivered_total: 7,
            failed_attempts_total: 4,
            dropped_total: 0,
            last_delivery_unix: 1_795_650_000,
        };
        let mut out = String::new();
        text::encode_registry(&mut out, &push_registry(c)).expect("encode");
        for line in [
            "berth_push_spooled_reports 3",
            "berth_push_reports_total 10",
            "berth_push_delivered_total 7",
            "berth_push_failed_attempts_total 4",
            "berth_push_dropped_total 0",
            "berth_push_last_delivery_timestamp_seconds 1795650000",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "missing {line:?} in:\n{out}"
            );
        }
    }
}
