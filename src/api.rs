//! The local API: JSON over HTTP on a unix socket (`$XDG_RUNTIME_DIR/berth/api.sock`, 0600),
//! used by the CLI and the tray.
//!
//! Handlers validate, hand the work to the engine task and return what it says; only reads
//! that need no state (logs, pull progress) talk to Podman directly. Connections from other
//! users are refused by peer credentials, on top of the socket's 0600 mode.

use std::convert::Infallible;
use std::path::Path;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::warn;

use crate::podman::Podman;
use crate::reconcile::{Command, EngineError, Handle};
use crate::state::Choice;
use crate::units;

#[derive(Debug, Clone)]
pub struct ApiState<P> {
    pub engine: Handle,
    pub podman: P,
    /// Where the containers' log files are (they outlive the containers).
    pub paths: crate::paths::Paths,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One place that decides the HTTP status of each engine error.
fn status_of(e: &EngineError) -> StatusCode {
    match e {
        EngineError::UnknownService(_) => StatusCode::NOT_FOUND,
        EngineError::Denied(_) => StatusCode::FORBIDDEN,
        EngineError::NotEnabled(_) => StatusCode::CONFLICT,
        EngineError::Catalog(_) => StatusCode::UNPROCESSABLE_ENTITY,
        EngineError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        EngineError::Gone => StatusCode::SERVICE_UNAVAILABLE,
    }
}

struct ApiError(EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            status_of(&self.0),
            Json(ErrorBody {
                error: self.0.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router<P: Podman + Clone + 'static>(state: ApiState<P>) -> Router {
    Router::new()
        .route("/v1/daemon", get(daemon::<P>))
        .route("/v1/services", get(list::<P>))
        .route("/v1/services/{name}", get(one::<P>))
        .route("/v1/services/{name}/pull", post(pull::<P>))
        .route("/v1/services/{name}/logs", get(logs::<P>))
        .route("/v1/services/{name}/{verb}", post(verb::<P>))
        .route("/v1/plan", get(plan::<P>))
        .route("/v1/reconcile", post(reconcile::<P>))
        .route("/v1/catalog/reload", post(reload::<P>))
        .route("/metrics", get(crate::metrics::api_metrics::<P>))
        .with_state(state)
}

async fn daemon<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<crate::status::DaemonInfo> {
    Ok(Json(s.engine.ask(|reply| Command::Info { reply }).await?))
}

async fn list<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<Vec<crate::status::ServiceStatus>> {
    Ok(Json(
        s.engine
            .ask(|reply| Command::Status {
                service: None,
                reply,
            })
            .await??,
    ))
}

async fn one<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<crate::status::ServiceStatus> {
    let mut v = s
        .engine
        .ask(|reply| Command::Status {
            service: Some(name.clone()),
            reply,
        })
        .await??;
    v.pop()
        .map(Json)
        .ok_or(ApiError(EngineError::UnknownService(name)))
}

async fn verb<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath((name, verb)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    let (choice, force) = match verb.as_str() {
        "enable" | "start" => (Choice::On, true),
        "disable" => (Choice::Off, false),
        "stop" => (Choice::Stopped, false),
        "restart" => (Choice::On, true),
        _ => {
            return Ok((
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: format!("unknown action {verb:?}"),
                }),
            )
                .into_response())
        }
    };
    if verb == "restart" || verb == "stop" {
        // Stopping or restarting a service that is not enabled is a mistake worth naming.
        let statuses = s
            .engine
            .ask(|reply| Command::Status {
                service: Some(name.clone()),
                reply,
            })
            .await??;
        if statuses.first().is_some_and(|st| st.choice == "off") && catalog.get(&name).is_some() {
            return Err(ApiError(EngineError::NotEnabled(name)));
        }
    }
    let report = s
        .engine
        .ask(|reply| Command::Choose {
            service: name.clone(),
            choice,
            force,
            reply,
        })
        .await??;
    Ok(Json(report).into_response())
}

async fn plan<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<crate::plan::Plan> {
    Ok(Json(s.engine.ask(|reply| Command::Plan { reply }).await??))
}

async fn reconcile<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<crate::status::PassReport> {
    Ok(Json(
        s.engine
            .ask(|reply| Command::Reconcile { reply: Some(reply) })
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub services: usize,
}

async fn reload<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<ReloadAnswer> {
    let n = s
        .engine
        .ask(|reply| Command::ReloadCatalog { reply: Some(reply) })
        .await??;
    Ok(Json(ReloadAnswer { services: n }))
}

fn line_stream(rx: mpsc::Receiver<String>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(format!("{line}\n")), rx))
    });
    Body::from_stream(stream)
}

/// Pulls the service's missing images, streaming progress as text lines. The last line is
/// `ok` or `error: …`.
async fn pull<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    let svc = catalog
        .get(&name)
        .ok_or_else(|| ApiError(EngineError::UnknownService(name.clone())))?;
    let images: Vec<String> = svc.images().map(str::to_string).collect();
    let (tx, rx) = mpsc::channel(64);
    let podman = s.podman.clone();
    let engine = s.engine.clone();
    tokio::spawn(async move {
        let mut failed = None;
        for image in images {
            match podman.image_exists(&image).await {
                Ok(true) => {
                    let _client_may_have_left = tx.send(format!("{image}: present")).await;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            let _client_may_have_left = tx.send(format!("{image}: pulling")).await;
            if let Err(e) = podman.pull(&image, tx.clone()).await {
                failed = Some(format!("{image}: {e}"));
                break;
            }
        }
        let last = match failed {
            None => "ok".to_string(),
            Some(e) => format!("error: {e}"),
        };
        let _client_may_have_left = tx.send(last).await;
        if engine
            .sender()
            .send(Command::Reconcile { reply: None })
            .await
            .is_err()
        {
            warn!("engine gone after a pull");
        }
    });
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(line_stream(rx))
        .unwrap_or_default())
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    pub tail: Option<usize>,
}

async fn logs<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    let svc = catalog
        .get(&name)
        .ok_or_else(|| ApiError(EngineError::UnknownService(name.clone())))?;
    let names: Vec<(String, String, std::path::PathBuf)> = svc
        .containers
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                units::container_name(svc, c),
                s.paths.in_home(&units::log_file(svc, c)),
            )
        })
        .collect();
    let many = names.len() > 1;
    let tail = q.tail.unwrap_or(100);
    let (tx, rx) = mpsc::channel(256);
    for (short, cname, file) in names {
        let podman = s.podman.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let prefix = if many {
                format!("{short} | ")
            } else {
                String::new()
            };
            let (ltx, mut lrx) = mpsc::channel::<String>(256);
            let forward = async {
                while let Some(l) = lrx.recv().await {
                    if tx.send(format!("{prefix}{l}")).await.is_err() {
                        break;
                    }
                }
            };
            let fetch = async {
                let r = if q.follow {
                    podman.logs_follow(&cname, tail, ltx).await
                } else {
                    // A container that is gone (crashed, removed by its unit) left its log
                    // file behind.
                    let lines = match podman.logs_tail(&cname, tail).await {
                        Err(e) if file.exists() => tokio::task::spawn_blocking(move || {
                            crate::health::log_tail(&file, tail)
                        })
                        .await
                        .map_err(|_| e),
                        other => other,
                    };
                    match lines {
                        Ok(lines) => {
                            for l in lines {
                                if ltx.send(l).await.is_err() {
                                    break;
                                }
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = r {
                    let _client_may_have_left = tx
                        .send(format!("{prefix}berth: no logs for {cname}: {e}"))
                        .await;
                }
            };
            tokio::join!(forward, fetch);
        });
    }
    drop(tx);
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(line_stream(rx))
        .unwrap_or_default())
}

/// A unix listener that only lets the daemon's own user in.
#[derive(Debug)]
pub struct SameUserListener {
    inner: UnixListener,
    uid: u32,
}

impl SameUserListener {
    pub fn new(inner: UnixListener) -> Self {
        SameUserListener {
            inner,
            uid: crate::sys::uid(),
        }
    }
}

impl axum::serve::Listener for SameUserListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(c) if c.uid() == self.uid => return (stream, addr),
                    Ok(c) => warn!(peer_uid = c.uid(), "refused a connection from another user"),
                    Err(err) => warn!(%err, "refused a connection without peer credentials"),
                },
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another berth daemon is already answering on {}", .0.display())]
    InUse(std::path::PathBuf),
    #[error("cannot listen on {}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API socket: directory 0700, socket 0600. A stale socket file (nobody answering)
/// is replaced; a live one is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::fsutil::create_dir(dir, 0o700).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let l = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serves the API until `shutdown` resolves.
pub async fn serve<P: Podman + Clone + 'static>(
    listener: UnixListener,
    state: ApiState<P>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Requests may stay open for long (`berth logs -f`): once asked to stop, give them a few
    // seconds and then stop anyway.
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(SameUserListener::new(listener), router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _server_may_be_gone = stopping_tx.send(());
        });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        () = async {
            if stopping.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            warn!("requests still open {}s after the stop; closing them", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    }
}

/// How long open API requests may take to finish once the daemon stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
