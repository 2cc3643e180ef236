//! `berth daemon`: [`start`] binds the listeners and connects the real edges (systemd, Podman,
//! the filesystem), then hands over to [`run`], which runs the engine and everything around it
//! until `shutdown` and joins every task before it returns.
//!
//! [`run`] takes its edges and listeners as arguments (the mini-redis `run(listener,
//! shutdown)` shape), so tests run a whole daemon against in-memory edges on a socket of their
//! own.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tracing::{info, warn};
use zbus_systemd::zbus;

use crate::api::{self, ApiState};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::engine::{self, Edges, Engine};
use crate::files::{DiskFiles, Files};
use crate::metrics;
use crate::paths::{Paths, PathsError};
use crate::podman::{Podman, PodmanClient};
use crate::state::StateError;
use crate::systemd::{self, Systemd, SystemdError, UserManager};
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
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// config.toml changed and validates: the daemon ends so that systemd starts it again
    /// with the new settings (`Restart=on-failure`); services keep running, stable ports wait
    /// in systemd's fd store.
    #[error("{} changed: berth exits to start again with it (services keep running)", .0.display())]
    ConfigChanged(std::path::PathBuf),
    #[error(transparent)]
    Podman(crate::podman::PodmanError),
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

/// The podman binary on PATH (else the usual place).
pub fn podman_path() -> String {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("podman"))
                .find(|c| c.is_file())
        })
        .map_or_else(
            || "/usr/bin/podman".to_string(),
            |p| p.display().to_string(),
        )
}

/// Facts of this host for rendering units.
pub fn detect_render_ctx() -> RenderCtx {
    let podman = podman_path();
    let dirs: Vec<PathBuf> = std::env::var_os("BERTH_CDI_DIRS").map_or_else(
        || crate::gpu::CDI_DIRS.iter().map(PathBuf::from).collect(),
        |v| std::env::split_paths(&v).collect(),
    );
    let dir_refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let gpu = crate::gpu::detect(&dir_refs);
    for p in &gpu.problems {
        warn!("GPU: {p}");
    }
    if gpu.gpus.is_empty() {
        info!(
            "no GPU for containers (no usable CDI spec in {}); services run on CPU",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        info!(devices = ?gpu.devices, "GPUs for containers: {}", gpu.gpus.iter().map(|g| g.device.as_str()).collect::<Vec<_>>().join(", "));
    }
    // The binary that runs now: units call it back (the relays hook). After an upgrade
    // replaced it on disk the link names the old path with " (deleted)": the path is right.
    let berth = std::fs::read_link("/proc/self/exe")
        .map(|p| {
            let s = p.display().to_string();
            s.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(s)
        })
        .unwrap_or_else(|_| "/usr/local/bin/berth".to_string());
    RenderCtx {
        podman,
        berth,
        api_socket: None,
        gpu_devices: gpu.devices,
        gpus: gpu.gpus,
        shared_present: Path::new("/shared").is_dir(),
        systemd_version: 0,
    }
}

/// What the daemon listens on, bound before it runs.
#[derive(Debug)]
pub struct Listeners {
    pub api: UnixListener,
    /// `[metrics] listen`, with who may read it.
    pub metrics: Option<(TcpListener, metrics::Access)>,
    /// The local web page: its listener, or why it has none (off, the port taken).
    pub web: Result<TcpListener, String>,
    /// Stable-port sockets systemd kept for us across a restart (fd store names).
    pub ports: Vec<(String, OwnedFd)>,
}

/// The local web page's listener as config.toml asks for it.
pub async fn bind_web(config: &crate::config::WebConfig) -> Result<TcpListener, String> {
    if !config.enabled {
        return Err("the local web page is off (config.toml: [web] enabled = false)".into());
    }
    let addr = config.listen;
    match crate::proxy::forward::bind(addr) {
        Ok(l) => Ok(l),
        Err(e) => {
            let who =
                tokio::task::spawn_blocking(move || crate::proxy::owner::describe(addr.port()))
                    .await
                    .ok()
                    .flatten()
                    .map(|w| format!(" (taken by {w})"))
                    .unwrap_or_default();
            Err(format!("the local web page cannot listen on {addr}: {e}{who}; set another port in config.toml [web] listen"))
        }
    }
}

/// What the daemon is told, beyond its edges.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub paths: Paths,
    pub ctx: RenderCtx,
    /// The session bus for desktop notifications; `None` keeps them off.
    pub notifications: Option<zbus::Connection>,
    /// Tell systemd about readiness and stopping (`NOTIFY_SOCKET`).
    pub sd_notify: bool,
    /// Run the stable ports on a thread (and runtime) of their own instead of beside the
    /// engine (see README: what the benchmark found).
    pub proxy_thread: bool,
}

/// `BERTH_PROXY_THREAD=1` (or `0`): whether the proxy gets its own thread; see
/// [`Settings::proxy_thread`].
pub fn proxy_thread_from_env() -> bool {
    std::env::var("BERTH_PROXY_THREAD").is_ok_and(|v| v == "1")
}

/// The real daemon: binds, connects and runs until `shutdown`.
pub async fn start(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // First, before anything else runs: sockets systemd kept for us across a restart.
    let ports = crate::sys::take_listen_fds();
    let paths = Paths::from_env()?;
    // A broken config.toml stops the daemon with its location; services keep running.
    let config = Config::load(&paths.etc().join("config.toml"))?;
    let _lock = take_lock(&paths)?;
    match crate::sys::raise_nofile(65536) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(err) => warn!(%err, "cannot raise the open files limit; busy ports may run out"),
    }
    let socket = PodmanClient::default_socket().ok_or(DaemonError::NoPodman)?;
    let podman = PodmanClient::new(socket);
    // A Podman that answers and is too old is refused here, before berth writes any unit. One
    // that does not answer yet is no reason to stop: services keep running without it.
    match podman.ping().await {
        Ok(version) => crate::podman::check_supported(&version).map_err(DaemonError::Podman)?,
        Err(err) => warn!(%err, "Podman's API does not answer at start"),
    }
    let systemd = UserManager::connect().await?;
    let mut ctx = detect_render_ctx();
    // Units call the daemon back (the relays hook): at its socket if it is not the usual one.
    if std::env::var_os("BERTH_SOCKET").is_some() {
        ctx.api_socket = Some(paths.socket().display().to_string());
    }
    ctx.systemd_version = systemd
        .version()
        .await
        .map_or(0, |v| systemd::major_version(&v));
    let notifications = config.notifications.then(|| systemd.connection().clone());
    let api = api::bind(&paths.socket()).await?;
    let metrics = match config.metrics.listen {
        Some(addr) => {
            let access =
                metrics::Access::for_listen(addr, config.metrics.bearer_token_file.clone())?;
            Some((metrics::bind(addr).await?, access))
        }
        None => None,
    };
    let web = bind_web(&config.web).await;
    tracing::debug!(?config, "admin configuration");
    let edges = Edges {
        systemd,
        podman,
        files: DiskFiles,
        clock: SystemClock,
    };
    run(
        edges,
        Settings {
            config,
            paths,
            ctx,
            notifications,
            sd_notify: true,
            proxy_thread: proxy_thread_from_env(),
        },
        Listeners {
            api,
            metrics,
            web,
            ports,
        },
        shutdown,
    )
    .await
}

/// Runs the engine, the proxy, the API and the health consumers until `shutdown`, then stops
/// them in order (API first, open connections drained, a last push report) and joins every
/// task.
pub async fn run<S, P, F, C>(
    edges: Edges<S, P, F, C>,
    settings: Settings,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError>
where
    S: Systemd + Clone + 'static,
    P: Podman + Clone + 'static,
    F: Files + Clone,
    C: Clock,
{
    let Settings {
        config,
        paths,
        ctx,
        notifications,
        sd_notify,
        proxy_thread,
    } = settings;
    let systemd = edges.systemd.clone();
    let podman = edges.podman.clone();
    // [remote_catalog]: the kept copy is a layer from the start, fetched anew right after.
    let remote = match &config.remote_catalog {
        Some(rc) => match crate::remote::Settings::new(rc, &paths) {
            Ok(s) => {
                let fetch = crate::remote::http::Fetcher::new(&rc.url, rc.ca_file.as_deref());
                let now = edges.clock.now_unix();
                Some(crate::remote::Remote::load(s, fetch, edges.files.clone(), now).await)
            }
            Err(err) => {
                warn!(%err, "the remote catalog is off: {err}");
                None
            }
        },
        None => None,
    };
    let in_force = remote.as_ref().and_then(|r| r.in_force());
    let (engine, handle) = Engine::with_remote(edges, paths.clone(), ctx, in_force).await?;
    let mut tasks = JoinSet::new();
    // Consumers subscribe before the engine runs, so they see its first transitions.
    tasks.spawn(crate::journal::run(handle.events()));
    if let Some(conn) = notifications {
        tasks.spawn(crate::notify::run(
            conn,
            handle.events(),
            handle.snapshots(),
        ));
    }
    tasks.spawn(engine.run());
    // The policy's [backup] every: runs of `berth backup --scheduled` when due.
    tasks.spawn(crate::backup::schedule::run(
        handle.clone(),
        crate::backup::schedule::Schedule {
            exe: PathBuf::from("/proc/self/exe"),
            socket: paths.socket(),
            state_file: paths.state_dir.join("backup-schedule.json"),
        },
    ));
    let remote = remote.map(|r| {
        let (h, task) = crate::remote::spawn(r, handle.clone());
        tasks.spawn(async move {
            let _ended_or_aborted = task.await;
        });
        h
    });
    let (relay_fds, port_fds): (Vec<_>, Vec<_>) = listeners
        .ports
        .into_iter()
        .partition(|(name, _)| crate::proxy::relays::is_relay_fd(name));
    let ports_run = crate::proxy::ports::run(
        handle.port_specs(),
        port_fds,
        podman.clone(),
        handle.clone(),
        handle.proxy(),
    );
    let relays_run = crate::proxy::relays::run(
        handle.relay_wants(),
        relay_fds,
        podman.clone(),
        handle.clone(),
        handle.proxy(),
    );
    let proxy_run = async move {
        tokio::join!(ports_run, relays_run);
    };
    // The proxy ends when the engine's port specs go away (the engine stopped).
    let proxy_thread = if proxy_thread {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DaemonError::Serve)?;
        let t = std::thread::Builder::new()
            .name("berth-proxy".into())
            .spawn(move || rt.block_on(proxy_run))
            .map_err(DaemonError::Serve)?;
        info!("stable ports on a thread of their own");
        Some(t)
    } else {
        tasks.spawn(proxy_run);
        None
    };
    // The admin's and the user's files, live: a change of a layer or the policy goes to the
    // engine; a change of config.toml is checked here.
    let config_changed = Arc::new(tokio::sync::Notify::new());
    tasks.spawn(crate::watch::run(
        crate::watch::Watch {
            layer_dirs: vec![
                paths.etc().join("catalog.d"),
                paths.user_catalog().join("catalog.d"),
            ],
            layer_files: vec![paths.etc().join("policy.toml")],
            config: Some(paths.etc().join("config.toml")),
            poll: config.poll_interval,
            inotify: config.inotify,
        },
        handle.layers_changed_notify(),
        config_changed.clone(),
    ));
    let restart = Arc::new(tokio::sync::Notify::new());
    {
        let (handle, restart, path) = (
            handle.clone(),
            restart.clone(),
            paths.etc().join("config.toml"),
        );
        let running = config.clone();
        tasks.spawn(async move {
            loop {
                config_changed.notified().await;
                let p = path.clone();
                let loaded = tokio::task::spawn_blocking(move || Config::load(&p)).await;
                let Ok(loaded) = loaded else { continue };
                match loaded {
                    Ok(c) if c == running => handle.set_config_error(None).await,
                    Ok(_) => {
                        info!(path = %path.display(), "config.toml changed and validates: restarting to apply it");
                        handle.set_config_error(None).await;
                        restart.notify_one();
                        return;
                    }
                    Err(e) => {
                        let msg = engine::full_message(&e);
                        warn!(err = %msg, "config.toml change rejected, the settings in force stay: {msg}");
                        handle.set_config_error(Some(msg)).await;
                    }
                }
            }
        });
    }
    let changed = handle.units_changed_notify();
    tasks.spawn(async move {
        if let Err(err) = systemd.watch_units(changed).await {
            warn!(%err, "cannot watch unit changes ({err}); relying on the safety timer");
        }
    });

    // [push] cloud health reports; its counters go to /metrics.
    let push = config.push.as_ref().and_then(|p| {
        match crate::push::spawn(
            crate::push::Settings::new(p, &paths),
            handle.snapshots(),
            handle.events(),
        ) {
            Ok(pusher) => Some(pusher),
            Err(err) => {
                let msg = engine::full_message(&err);
                warn!(err = %msg, "cloud health push is off: {msg}");
                None
            }
        }
    });
    let sources = metrics::Sources {
        snapshots: handle.snapshots(),
        proxy: handle.proxy(),
        push: push.as_ref().map(|p| p.stats()),
        vm: Arc::new(metrics::VmInfo::new(
            crate::push::identity::Sources::system(),
        )),
    };
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    if let Some((listener, access)) = listeners.metrics {
        let mut stop = stopping.clone();
        tasks.spawn(metrics::serve_logged(
            listener,
            access,
            sources.clone(),
            async move {
                let _either_way = stop.wait_for(|s| *s).await;
            },
        ));
    }

    match handle.reconcile().await {
        Ok(r) => info!(
            applied = r.applied.len(),
            errors = r.errors.len(),
            "first pass done: {} applied, {} errors",
            r.applied.len(),
            r.errors.len()
        ),
        Err(err) => warn!(%err, "first pass did not run: {err}"),
    }
    if sd_notify {
        if let Err(err) = crate::sys::sd_notify("READY=1") {
            warn!(%err, "cannot notify systemd: {err}");
        }
    }
    info!(socket = %paths.socket().display(), "berth daemon ready");
    let proxy = handle.proxy();
    let sessions = Arc::new(crate::web::Sessions::default());
    let (web_listener, web_link) = match listeners.web {
        Ok(l) => {
            let addr = l.local_addr().map_err(DaemonError::Serve)?;
            let link = crate::web::WebLink {
                sessions: sessions.clone(),
                base: format!("http://{addr}"),
            };
            handle
                .set_web(engine::WebSeen {
                    url: Some(format!("{}/", link.base)),
                    error: None,
                })
                .await;
            info!(%addr, "the local web page serves on http://{addr}/");
            (Some((l, addr)), Ok(link))
        }
        Err(why) => {
            if config.web.enabled {
                warn!("{why}");
            }
            handle
                .set_web(engine::WebSeen {
                    url: None,
                    error: Some(why.clone()),
                })
                .await;
            (None, Err(why))
        }
    };
    let state = ApiState {
        engine: handle,
        podman,
        paths: paths.clone(),
        metrics: Arc::new(sources),
        stopping: stopping.clone(),
        web: web_link,
        remote,
    };
    if let Some((listener, addr)) = web_listener {
        let web_state = crate::web::WebState {
            api: state.clone(),
            guard: Arc::new(crate::web::Guard::new(addr, sessions)),
        };
        let mut stop = stopping.clone();
        tasks.spawn(async move {
            let served = crate::web::serve(listener, web_state, async move {
                let _either_way = stop.wait_for(|s| *s).await;
            })
            .await;
            if let Err(err) = served {
                warn!(%err, "the local web page stopped: {err}");
            }
        });
    }
    let mut api_stop = stopping.clone();
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = api::serve(listeners.api, state, {
        let restarting = restarting.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = api_stop.wait_for(|s| *s) => {}
                () = restart.notified() => {
                    restarting.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    })
    .await;
    stopping_tx.send_replace(true);
    // Open connections get time to finish while the cloud hears that berth stops.
    let last_report = async {
        if let Some(p) = push {
            p.shutdown(Duration::from_secs(3)).await;
        }
    };
    tokio::join!(
        crate::proxy::ports::drain(&proxy, Duration::from_secs(5)),
        last_report
    );
    if sd_notify {
        let _stopping_notice_is_best_effort = crate::sys::sd_notify("STOPPING=1");
    }
    let _socket_may_be_gone = std::fs::remove_file(paths.socket());
    // The engine ends when the last handle is gone; the rest are stopped here. Every task is
    // joined before the daemon returns.
    tasks.abort_all();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            if e.is_panic() {
                warn!("a daemon task panicked: {e}");
            }
        }
    }
    if let Some(t) = proxy_thread {
        // The engine is gone, so its port specs are: the proxy's loop ends.
        let joined = tokio::task::spawn_blocking(move || t.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            warn!("the proxy thread did not end cleanly");
        }
    }
    served.map_err(DaemonError::Serve)?;
    if restarting.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(DaemonError::ConfigChanged(paths.etc().join("config.toml")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    //! A whole daemon — engine, proxy, API, health consumers — against in-memory edges, on an
    //! API socket of the test's own, driven through the client crate the CLI uses.

    use super::*;
    use crate::testkit::{ManualClock, MemFiles, MemPodman, MemSystemd};
    use berth_client::{Client, ClientError};
    use berth_proto::{ErrorCode, Event, State, Verb};
    use std::path::PathBuf;

    pub(crate) struct Daemon {
        pub client: Client,
        /// The local web page's address, when the test asked for it.
        pub web: Option<std::net::SocketAddr>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), DaemonError>>,
        _dir: tempfile::TempDir,
    }

    impl Daemon {
        pub async fn start(catalog: &[(&str, &str)]) -> Daemon {
            Self::start_with(catalog, false).await
        }

        /// With `web`, the local web page serves on a free loopback port.
        pub async fn start_with(catalog: &[(&str, &str)], web: bool) -> Daemon {
            let dir = tempfile::tempdir().expect("tempdir");
            let etc = dir.path().join("etc");
            std::fs::create_dir_all(etc.join("catalog.d")).expect("catalog.d");
            for (file, text) in catalog {
                std::fs::write(etc.join("catalog.d").join(file), text).expect("catalog file");
            }
            let home = PathBuf::from("/home/u");
            let paths = Paths {
                state_dir: home.join(".local/state/berth"),
                unit_dir: home.join(".local/share/systemd/user"),
                runtime_dir: dir.path().join("run"),
                etc_dir: etc,
                config_dir: dir.path().join("config"),
                home,
            };
            let files = MemFiles::new();
            let systemd = MemSystemd::new(&files, &paths.unit_dir);
            let podman = MemPodman::new(&systemd);
            podman.add_images(["localhost/berth-demo:1"]);
            let socket = paths.runtime_dir.join("api.sock");
            let api = api::bind(&socket).await.expect("bind");
            let web_listener = if web {
                Ok(TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the page"))
            } else {
                Err("off in this test".to_string())
            };
            let web = web_listener.as_ref().ok().and_then(|l| l.local_addr().ok());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(run(
                Edges {
                    systemd,
                    podman,
                    files,
                    clock: ManualClock::at(1_800_000_000),
                },
                Settings {
                    config: Config::default(),
                    paths,
                    ctx: RenderCtx::default(),
                    notifications: None,
                    sd_notify: false,
                    proxy_thread: false,
                },
                Listeners {
                    api,
                    metrics: None,
                    web: web_listener,
                    ports: Vec::new(),
                },
                async move {
                    let _either_way = stopped.await;
                },
            ));
            let client = Client::new(&socket);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while client.daemon().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the daemon never answered"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Daemon {
                client,
                web,
                stop: Some(stop),
                task,
                _dir: dir,
            }
        }

        /// Stops it as SIGTERM would and waits until every task is joined.
        pub async fn stop(mut self) {
            if let Some(s) = self.stop.take() {
                let _daemon_may_be_gone = s.send(());
            }
            let ended = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
            ended
                .expect("the daemon stopped within 10 s")
                .expect("joined")
                .expect("ran without error");
        }
    }

    pub(crate) const WEB: &str = r#"name = "it-web"
description = "a page"
[[containers]]
name = "web"
image = "localhost/berth-demo:1"
[[containers.ports]]
name = "http"
host = 19391
container = 8080
"#;

    #[tokio::test]
    async fn unknown_paths_actions_and_services_answer_json_errors() {
        let d = Daemon::start(&[]).await;
        let e = d
            .client
            .get::<serde_json::Value>("/v1/nope")
            .await
            .expect_err("no such path");
        assert!(
            matches!(&e, ClientError::Api { code: ErrorCode::NotFound, message } if message == "no such API path: /v1/nope"),
            "{e:?}"
        );
        let e = d
            .client
            .post::<serde_json::Value>("/v1/services/demo/explode")
            .await
            .expect_err("no such action");
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e:?}");
        assert!(e.to_string().contains("unknown action \"explode\""), "{e}");
        let e = d.client.service("nosuch").await.expect_err("unknown");
        assert_eq!(e.code(), Some(ErrorCode::UnknownService), "{e:?}");
        let e = d
            .client
            .act("demo", Verb::Stop)
            .await
            .expect_err("not enabled");
        assert_eq!(e.code(), Some(ErrorCode::NotEnabled), "{e:?}");
        d.stop().await;
    }

    #[tokio::test]
    async fn the_event_stream_starts_with_a_snapshot_and_follows_a_service_up() {
        let d = Daemon::start(&[("it-web.toml", WEB)]).await;
        let mut events = d.client.events().await.expect("events");
        match events.next().await {
            Some(Ok(Event::Snapshot { services, .. })) => {
                assert!(services
                    .iter()
                    .any(|s| s.name == "it-web" && s.state == State::Off));
            }
            other => panic!("first event: {other:?}"),
        }
        d.client.act("it-web", Verb::Enable).await.expect("enable");
        let running = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(e) = events.next().await {
                if let Ok(Event::Service { status, .. }) = e {
                    if status.name == "it-web" && status.state == State::Running {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        assert_eq!(running, Ok(true), "no running event for it-web");
        // An open stream does not hold up the daemon's stop, and it ends with it.
        d.stop().await;
        assert!(events.next().await.is_none(), "the stream ended");
    }
}
