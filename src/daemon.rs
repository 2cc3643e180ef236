//! `berth daemon`: wires the real edges (systemd, Podman, unit directory) to the engine and
//! serves the API until SIGTERM or SIGINT.

use std::path::Path;

use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::paths::{Paths, PathsError};
use crate::podman::PodmanClient;
use crate::reconcile::{Command, Engine};
use crate::state::StateError;
use crate::systemd::{self, SystemdError, UserManager};
use crate::unitdir::UnitDir;
use crate::units::RenderCtx;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error("no Podman socket: set XDG_RUNTIME_DIR or CONTAINER_HOST=unix://…")]
    NoPodman,
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bind(#[from] api::BindError),
    #[error("serving the API failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("another berth daemon already manages this user's units (lock {} is held)", .0.display())]
    Locked(std::path::PathBuf),
    #[error("cannot take the daemon lock {}", path.display())]
    Lock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One daemon per user: two would each remove the other's units as "not wanted".
fn take_lock(paths: &Paths) -> Result<std::fs::File, DaemonError> {
    let path = paths.runtime_dir.join("daemon.lock");
    let err = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    crate::fsutil::create_dir(&paths.runtime_dir, 0o700).map_err(err)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::Locked(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
}

/// Facts of this host for rendering units.
pub fn detect_render_ctx() -> RenderCtx {
    let podman = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("podman"))
                .find(|c| c.is_file())
        })
        .map_or_else(
            || "/usr/bin/podman".to_string(),
            |p| p.display().to_string(),
        );
    let gpu_available = [
        "/etc/cdi/nvidia.yaml",
        "/var/run/cdi/nvidia.yaml",
        "/etc/cdi/nvidia.json",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    RenderCtx {
        podman,
        gpu_available,
        shared_present: Path::new("/shared").is_dir(),
        systemd_version: 0,
    }
}

pub async fn run(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // First, before anything else runs: sockets systemd kept for us across a restart.
    let inherited = crate::sys::take_listen_fds();
    let paths = Paths::from_env()?;
    // A broken config.toml stops the daemon with its location; services keep running.
    let config = crate::config::Config::load(&paths.etc().join("config.toml"))?;
    let _lock = take_lock(&paths)?;
    match crate::sys::raise_nofile(65536) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(err) => warn!(%err, "cannot raise the open files limit; busy ports may run out"),
    }
    let socket = PodmanClient::default_socket().ok_or(DaemonError::NoPodman)?;
    let podman = PodmanClient::new(socket);
    let systemd = UserManager::connect().await?;
    let conn = systemd.connection().clone();
    let notify_conn = conn.clone();
    let units = UnitDir::new(paths.unit_dir.clone());
    let listener = api::bind(&paths.socket()).await?;
    let mut ctx = detect_render_ctx();
    {
        use crate::systemd::Systemd as _;
        ctx.systemd_version = systemd
            .version()
            .await
            .map_or(0, |v| systemd::major_version(&v));
    }
    let (engine, handle, rx) = Engine::new(systemd, podman.clone(), units, paths.clone(), ctx)?;
    let engine_task = tokio::spawn(engine.run(rx));
    let proxy_task = tokio::spawn(crate::proxy::ports::run(
        handle.port_specs(),
        inherited,
        podman.clone(),
        handle.clone(),
        handle.proxy(),
    ));

    // Unit state changes trigger a (debounced) pass.
    let watcher = handle.clone();
    tokio::spawn(async move {
        if let Err(err) = systemd::watch_units(conn, move || watcher.units_changed()).await {
            warn!(%err, "cannot watch unit changes; relying on the safety timer");
        }
    });

    // Health consumers read the engine's snapshots (`handle.snapshots()`); each runs as its
    // own task and never blocks the engine.
    crate::metrics::register_proxy(handle.proxy());
    if let Some(addr) = config.metrics.listen {
        let token_file = config.metrics.bearer_token_file.clone();
        crate::metrics::spawn_tcp(addr, token_file, handle.snapshots());
    }
    // [push] cloud health reports. Kept until the daemon ends; its counters go to /metrics.
    let push = config.push.as_ref().and_then(|p| {
        match crate::push::spawn(crate::push::Settings::new(p, &paths), handle.snapshots()) {
            Ok(pusher) => {
                crate::metrics::register_push(pusher.stats());
                Some(pusher)
            }
            Err(err) => {
                let cause = crate::reconcile::source_chain(&err);
                warn!(%err, %cause, "cloud health push is off");
                None
            }
        }
    });
    if config.notifications {
        tokio::spawn(crate::notify::run(notify_conn, handle.snapshots()));
    }
    tracing::debug!(?config, "admin configuration");

    let first = handle
        .ask(|reply| Command::Reconcile { reply: Some(reply) })
        .await;
    match first {
        Ok(r) => info!(
            applied = r.applied.len(),
            errors = r.errors.len(),
            "first pass done"
        ),
        Err(err) => warn!(%err, "first pass did not run"),
    }
    if let Err(err) = crate::sys::sd_notify("READY=1") {
        warn!(%err, "cannot notify systemd");
    }
    info!(socket = %paths.socket().display(), "berth daemon ready");
    let state = ApiState {
        engine: handle,
        podman,
        paths: paths.clone(),
    };
    let proxy = state.engine.proxy();
    let served = api::serve(listener, state, shutdown).await;
    // Open connections get time to finish while the cloud hears that berth stops.
    let last_report = async {
        if let Some(p) = push {
            p.shutdown(std::time::Duration::from_secs(3)).await;
        }
    };
    tokio::join!(
        crate::proxy::ports::drain(&proxy, std::time::Duration::from_secs(5)),
        last_report
    );
    let _stopping_notice_is_best_effort = crate::sys::sd_notify("STOPPING=1");
    let _socket_may_be_gone = std::fs::remove_file(paths.socket());
    engine_task.abort();
    proxy_task.abort();
    served.map_err(DaemonError::Serve)
}
