//! The local API: JSON over HTTP on a unix socket (`$XDG_RUNTIME_DIR/berth/api.sock`, 0600),
//! used by the CLI and the tray. Wire types are in `berth-proto`.
//!
//! Handlers validate, hand the work to the engine task and return what it says; only reads
//! that need no state (logs, pull progress) talk to Podman directly. Connections from other
//! users are refused by peer credentials, on top of the socket's 0600 mode, with an answer
//! that says why.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_proto::{ErrorBody, ErrorCode, Event, ReloadAnswer, Verb};
use futures_util::Stream;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::engine::{full_message, EngineError, Handle};
use crate::podman::Podman;
use crate::units;

#[derive(Debug, Clone)]
pub struct ApiState<P> {
    pub engine: Handle,
    pub podman: P,
    /// Where the containers' log files are (they outlive the containers).
    pub paths: crate::paths::Paths,
    pub metrics: Arc<crate::metrics::Sources>,
    /// Turns true when the daemon stops: open event streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The local web page, to hand out login links: `Err` says why there is none.
    pub web: Result<crate::web::WebLink, String>,
    /// The remote catalog's task, when config.toml names one.
    pub remote: Option<crate::remote::RemoteHandle>,
}

/// One place that decides the HTTP status and code of each engine error. No `_` arm: a new
/// variant must decide here.
fn status_of(e: &EngineError) -> (StatusCode, ErrorCode) {
    match e {
        EngineError::UnknownService(_) => (StatusCode::NOT_FOUND, ErrorCode::UnknownService),
        EngineError::Refused { .. } => (StatusCode::FORBIDDEN, ErrorCode::Denied),
        EngineError::Required { .. } => (StatusCode::FORBIDDEN, ErrorCode::Required),
        EngineError::NotEnabled(_) => (StatusCode::CONFLICT, ErrorCode::NotEnabled),
        EngineError::Catalog(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Catalog),
        EngineError::State(_) | EngineError::Gather(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::State)
        }
        EngineError::NotOnDemand(_) => (StatusCode::CONFLICT, ErrorCode::BadRequest),
        EngineError::CannotStart { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::State),
        EngineError::Gone => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Gone),
    }
}

fn error(status: StatusCode, code: ErrorCode, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            code,
            error: message,
        }),
    )
        .into_response()
}

pub(crate) struct ApiError(EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = status_of(&self.0);
        error(status, code, full_message(&self.0))
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
        .route("/v1/services/{name}/relays", post(relays::<P>))
        .route("/v1/services/{name}/update", post(update_one::<P>))
        .route("/v1/update", post(update_all::<P>))
        .route("/v1/services/{name}/{verb}", post(verb::<P>))
        .route("/v1/events", get(events::<P>))
        .route("/v1/plan", get(plan::<P>))
        .route("/v1/reconcile", post(reconcile::<P>))
        .route("/v1/catalog/reload", post(reload::<P>))
        .route("/v1/catalog/fetch", post(fetch::<P>))
        .route("/v1/web/session", post(web_session::<P>))
        .route("/metrics", get(metrics::<P>))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no such API path: {}", uri.path()),
    )
}

async fn daemon<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<berth_proto::DaemonInfo> {
    Ok(Json(s.engine.info().await?))
}

async fn list<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<Vec<berth_proto::ServiceStatus>> {
    Ok(Json(s.engine.status(None).await?))
}

async fn one<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<berth_proto::ServiceStatus> {
    let mut v = s.engine.status(Some(&name)).await?;
    v.pop()
        .map(Json)
        .ok_or(ApiError(EngineError::UnknownService(name)))
}

pub(crate) async fn verb<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath((name, verb)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(verb) = Verb::parse(&verb) else {
        let known: Vec<&str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
        return Ok(error(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("unknown action {verb:?} (one of {})", known.join(", ")),
        ));
    };
    let report = s.engine.act(&name, verb).await?;
    Ok(Json(report).into_response())
}

/// `berth update NAME`: answered once the service's outcome is known (a swap's after its
/// health window).
async fn update_one<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<berth_proto::UpdateAnswer> {
    Ok(Json(s.engine.update(Some(&name)).await?))
}

/// `berth update`: every enabled service.
async fn update_all<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<berth_proto::UpdateAnswer> {
    Ok(Json(s.engine.update(None).await?))
}

async fn plan<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<berth_proto::Plan> {
    Ok(Json(s.engine.plan().await?))
}

async fn reconcile<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<berth_proto::PassReport> {
    Ok(Json(s.engine.reconcile().await?))
}

async fn reload<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> ApiResult<ReloadAnswer> {
    let services = s.engine.reload().await?;
    Ok(Json(ReloadAnswer { services }))
}

#[derive(Debug, Deserialize)]
pub struct FetchQuery {
    #[serde(default)]
    pub dry_run: bool,
}

/// Fetches the remote catalog now; a refused one is a 422 with the reason.
async fn fetch<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    Query(q): Query<FetchQuery>,
) -> Response {
    let Some(remote) = &s.remote else {
        return error(
            StatusCode::CONFLICT,
            ErrorCode::BadRequest,
            "no remote catalog: config.toml has no [remote_catalog]".into(),
        );
    };
    match remote.fetch(q.dry_run).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Catalog, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct WebSessionQuery {
    #[serde(default)]
    pub path: Option<String>,
}

/// A one-time login link to the local web page (for the tray and `berth dashboard`).
async fn web_session<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    Query(q): Query<WebSessionQuery>,
) -> Response {
    let link = match &s.web {
        Ok(l) => l,
        Err(why) => {
            return error(StatusCode::CONFLICT, ErrorCode::Unavailable, why.clone());
        }
    };
    match link.login_url(q.path.as_deref().unwrap_or("/")) {
        Ok(url) => Json(berth_proto::WebSession { url }).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::State,
            format!("cannot make a login link: {e}"),
        ),
    }
}

async fn metrics<P: Podman + Clone + 'static>(AxState(s): AxState<ApiState<P>>) -> Response {
    crate::metrics::render(&s.metrics).await
}

/// The event stream as server-sent events: a snapshot first, then every event; a client that
/// fell behind gets a fresh snapshot in place of what it missed.
pub(crate) async fn events<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let (snapshot, rx) = s.engine.subscribe().await?;
    let first = Event::Snapshot {
        daemon: snapshot.daemon.clone(),
        services: snapshot.services.clone(),
    };
    let state = (Some(first), rx, s.engine.clone(), s.stopping.clone());
    let stream = futures_util::stream::unfold(
        state,
        |(pending, mut rx, engine, mut stopping)| async move {
            if let Some(e) = pending {
                return Some((sse(&e), (None, rx, engine, stopping)));
            }
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = stopping.wait_for(|s| *s) => return None,
            };
            match next {
                Ok(e) => Some((sse(&e), (None, rx, engine, stopping))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "an event client fell behind; sending a snapshot");
                    let (snap, fresh) = engine.subscribe().await.ok()?;
                    let e = Event::Snapshot {
                        daemon: snap.daemon.clone(),
                        services: snap.services.clone(),
                    };
                    Some((sse(&e), (None, fresh, engine, stopping)))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    Ok(Sse::new(stream))
}

fn sse(e: &Event) -> Result<SseEvent, Infallible> {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{\"type\":\"unknown\"}".into());
    Ok(SseEvent::default().event(e.kind()).data(data))
}

fn line_stream(rx: mpsc::Receiver<String>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(format!("{line}\n")), rx))
    });
    Body::from_stream(stream)
}

fn unknown(name: String) -> ApiError {
    ApiError(EngineError::UnknownService(name))
}

/// Makes the relays of a service that uses others listen inside its pod; answers once they do.
async fn relays<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    catalog.get(&name).ok_or_else(|| unknown(name.clone()))?;
    match s.engine.proxy().relays_ready(&name).await {
        Ok(ports) => Ok(Json(berth_proto::RelaysReady { ports }).into_response()),
        Err(why) => Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("no relays for {name}: {why}"),
        )),
    }
}

/// Pulls the service's missing images, streaming progress as text lines. The last line is
/// `ok` or `error: …`.
async fn pull<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    let svc = catalog.get(&name).ok_or_else(|| unknown(name.clone()))?;
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
                failed = Some(format!(
                    "cannot pull {image}: {}",
                    crate::engine::pull_reason(&e)
                ));
                break;
            }
        }
        let last = match failed {
            None => "ok".to_string(),
            Some(e) => format!("error: {e}"),
        };
        let _client_may_have_left = tx.send(last).await;
        if let Err(err) = engine.reconcile().await {
            warn!(%err, "engine gone after a pull");
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

pub(crate) async fn logs<P: Podman + Clone + 'static>(
    AxState(s): AxState<ApiState<P>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let catalog = s.engine.catalog();
    let svc = catalog.get(&name).ok_or_else(|| unknown(name.clone()))?;
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

/// A unix listener that only lets the daemon's own user in. Another user's connection gets a
/// `403` that says why, then is closed.
#[derive(Debug)]
pub struct SameUserListener {
    inner: UnixListener,
    uid: u32,
}

impl SameUserListener {
    pub fn new(inner: UnixListener) -> Self {
        Self::for_uid(inner, crate::sys::uid())
    }

    /// A listener that lets only `uid` in.
    pub fn for_uid(inner: UnixListener, uid: u32) -> Self {
        SameUserListener { inner, uid }
    }
}

/// Tells a peer of another user that this berth is not theirs, in the API's own terms.
async fn refuse_peer(mut stream: UnixStream, ours: u32, theirs: Option<u32>) {
    let who = theirs.map_or_else(
        || "a peer without credentials".to_string(),
        |u| format!("uid {u}"),
    );
    let body = serde_json::to_string(&ErrorBody {
        code: ErrorCode::Forbidden,
        error: format!(
            "this berth daemon serves uid {ours}; {who} may not use it (every user has their own berth: use your own session's socket)"
        ),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Read the request first: closing with unread data would reset the connection before
    // the client reads the answer.
    let mut buf = [0u8; 4096];
    let _request =
        tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut buf)).await;
    let _peer_may_be_gone = stream.write_all(answer.as_bytes()).await;
    let _peer_may_be_gone = stream.shutdown().await;
}

impl axum::serve::Listener for SameUserListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(c) if c.uid() == self.uid => return (stream, addr),
                    Ok(c) => {
                        warn!(
                            peer_uid = c.uid(),
                            "refused a connection from uid {}",
                            c.uid()
                        );
                        tokio::spawn(refuse_peer(stream, self.uid, Some(c.uid())));
                    }
                    Err(err) => {
                        warn!(%err, "refused a connection without peer credentials: {err}");
                        tokio::spawn(refuse_peer(stream, self.uid, None));
                    }
                },
                Err(err) => {
                    warn!(%err, "accept failed: {err}");
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
    // Requests may stay open for long (`berth logs -f`, event streams): once asked to stop,
    // give them a few seconds and then stop anyway.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn another_users_connection_is_told_why_it_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let me = crate::sys::uid();
        // As if this socket belonged to the next uid: we are "another user" to it.
        let listener = SameUserListener::for_uid(bind(&path).await.expect("bind"), me + 1);
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                Router::new().route("/v1/daemon", get(|| async { "{}" })),
            )
            .await
        });
        let e = berth_client::Client::new(&path)
            .daemon()
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("serves uid {}; uid {me} may not use it", me + 1)),
            "{msg}"
        );
        server.abort();
    }
}
