//! `berth daemon`: wires the real edges (systemd, Podman, unit directory) to the engine and
//! serves the API until SIGTERM or SIGINT.

use std::path::Path;

use tokio::sync::mpsc;
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
    let paths = Paths::from_env()?;
    // A broken config.toml stops the daemon with its location; services keep running.
    let config = crate::config::Config::load(&paths.etc().join("config.toml"))?;
    let socket = PodmanClient::default_socket().ok_or(DaemonError::NoPodman)?;
    let podman = PodmanClient::new(socket);
    let systemd = UserManager::connect().await?;
    let conn = systemd.connection().clone();
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

    // Unit state changes trigger a (debounced) pass.
    let (utx, mut urx) = mpsc::channel(64);
    tokio::spawn(async move {
        if let Err(err) = systemd::watch_units(conn, utx).await {
            warn!(%err, "cannot watch unit changes; relying on the safety timer");
        }
    });
    let sender = handle.sender().clone();
    tokio::spawn(async move {
        while let Some(unit) = urx.recv().await {
            if sender.send(Command::UnitChanged(unit)).await.is_err() {
                break;
            }
        }
    });

    // Health consumers read the engine's snapshots (`handle.snapshots()`); each runs as its
    // own task and never blocks the engine.
    // [metrics] network endpoint
    // [push] cloud health reports
    // [notifications] desktop notifications
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
    };
    let served = api::serve(listener, state, shutdown).await;
    let _stopping_notice_is_best_effort = crate::sys::sd_notify("STOPPING=1");
    let _socket_may_be_gone = std::fs::remove_file(paths.socket());
    engine_task.abort();
    served.map_err(DaemonError::Serve)
}
