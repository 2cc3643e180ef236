//! A client of the berth daemon's API: HTTP/1.1 over the unix socket
//! `$XDG_RUNTIME_DIR/berth/api.sock`, typed with [`berth_proto`]. The CLI and the tray use it;
//! it knows nothing of the daemon's insides.
//!
//! Limits: one request per call (hyper pools the connection); streams (logs, pulls, events)
//! are read line by line and end when the daemon closes them.

use std::path::{Path, PathBuf};

use berth_proto::{
    DaemonInfo, ErrorBody, ErrorCode, FetchAnswer, PassReport, Plan, ReloadAnswer, ServiceStatus,
    Verb,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri};
use serde::de::DeserializeOwned;

mod events;

pub use events::Events;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no berth socket: neither BERTH_SOCKET nor XDG_RUNTIME_DIR is set (is this a login session of the user?)")]
    NoSocket,
    #[error("the berth daemon is not running (no answer on {}); start it with `systemctl --user start berth` or `berth daemon`", .0.display())]
    NotRunning(PathBuf),
    #[error("{0:?} is not a service name (see `berth ls`)")]
    BadName(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api { code: ErrorCode, message: String },
    #[error("talking to the berth daemon failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the berth daemon sent an answer this berth does not understand")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    /// The daemon's error code, when the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn http(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClientError::Http(Box::new(e))
    }
}

/// Where the API socket is: `$BERTH_SOCKET`, else `$XDG_RUNTIME_DIR/berth/api.sock`.
pub fn default_socket() -> Option<PathBuf> {
    let abs = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    abs("BERTH_SOCKET").or_else(|| abs("XDG_RUNTIME_DIR").map(|d| d.join("berth/api.sock")))
}

/// How a pull streamed by the daemon ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEnd {
    Done,
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    http: HyperClient<UnixConnector, Full<Bytes>>,
}

fn check(name: &str) -> Result<(), ClientError> {
    if berth_proto::valid_name(name) {
        Ok(())
    } else {
        Err(ClientError::BadName(name.to_string()))
    }
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            http: HyperClient::builder(TokioExecutor::new()).build(UnixConnector),
        }
    }

    /// The client of this session's daemon (see [`default_socket`]).
    pub fn from_env() -> Result<Self, ClientError> {
        default_socket()
            .map(|s| Client::new(&s))
            .ok_or(ClientError::NoSocket)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let uri: hyper::Uri = Uri::new(&self.socket, path).into();
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(ClientError::http)?;
        match self.http.request(req).await {
            Ok(r) => Ok(r),
            Err(e) if e.is_connect() => Err(ClientError::NotRunning(self.socket.clone())),
            Err(e) => Err(ClientError::http(e)),
        }
    }

    /// A response whose status says success, or the daemon's error.
    async fn ok(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let resp = self.send(method, path).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http)?
            .to_bytes();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => ClientError::Api {
                code: b.code,
                message: b.error,
            },
            Err(_) => ClientError::Api {
                code: ErrorCode::Other,
                message: format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            },
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let body = self
            .ok(method, path)
            .await?
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http)?
            .to_bytes();
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(hyper::Method::GET, path).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(hyper::Method::POST, path).await
    }

    /// Every service the catalog offers, with its state.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ClientError> {
        self.get("/v1/services").await
    }

    /// One service, looked at freshly.
    pub async fn service(&self, name: &str) -> Result<ServiceStatus, ClientError> {
        check(name)?;
        self.get(&format!("/v1/services/{name}")).await
    }

    pub async fn daemon(&self) -> Result<DaemonInfo, ClientError> {
        self.get("/v1/daemon").await
    }

    /// Asks for `verb` on a service; the report of the pass that carried it out.
    pub async fn act(&self, name: &str, verb: Verb) -> Result<PassReport, ClientError> {
        check(name)?;
        self.post(&format!("/v1/services/{name}/{verb}")).await
    }

    /// Updates one service's images (or every enabled service's): pulls, compares, swaps
    /// where they changed and waits for the swap's health window.
    pub async fn update(
        &self,
        name: Option<&str>,
    ) -> Result<berth_proto::UpdateAnswer, ClientError> {
        match name {
            Some(name) => {
                check(name)?;
                self.post(&format!("/v1/services/{name}/update")).await
            }
            None => self.post("/v1/update").await,
        }
    }

    pub async fn plan(&self) -> Result<Plan, ClientError> {
        self.get("/v1/plan").await
    }

    pub async fn reconcile(&self) -> Result<PassReport, ClientError> {
        self.post("/v1/reconcile").await
    }

    /// Fetches the remote catalog now (`dry_run`: verify and compare only).
    pub async fn fetch_catalog(&self, dry_run: bool) -> Result<FetchAnswer, ClientError> {
        self.post(if dry_run {
            "/v1/catalog/fetch?dry_run=true"
        } else {
            "/v1/catalog/fetch"
        })
        .await
    }

    pub async fn reload(&self) -> Result<ReloadAnswer, ClientError> {
        self.post("/v1/catalog/reload").await
    }

    /// Makes berth listen inside `name`'s pod for the services it uses, and returns once it
    /// does (the hook a consumer's container runs before it starts).
    pub async fn relays_ready(&self, name: &str) -> Result<berth_proto::RelaysReady, ClientError> {
        check(name)?;
        self.post(&format!("/v1/services/{name}/relays")).await
    }

    /// A one-time login link to the local web page that lands on `path` (`/`, or
    /// `/services/NAME/logs`).
    pub async fn web_session(&self, path: &str) -> Result<String, ClientError> {
        let mut q = String::new();
        for b in path.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                q.push(char::from(b));
            } else {
                q.push_str(&format!("%{b:02X}"));
            }
        }
        let s: berth_proto::WebSession = self.post(&format!("/v1/web/session?path={q}")).await?;
        Ok(s.url)
    }

    /// The OpenMetrics text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let body = self
            .ok(hyper::Method::GET, "/metrics")
            .await?
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http)?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Pulls a service's missing images through the daemon; `on_line` sees each progress line.
    pub async fn pull(
        &self,
        name: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<PullEnd, ClientError> {
        check(name)?;
        let mut end = None;
        self.lines(
            hyper::Method::POST,
            &format!("/v1/services/{name}/pull"),
            |l| {
                if l == "ok" {
                    end = Some(PullEnd::Done);
                } else if let Some(e) = l.strip_prefix("error: ") {
                    end = Some(PullEnd::Failed(e.to_string()));
                } else {
                    on_line(l);
                }
            },
        )
        .await?;
        Ok(end.unwrap_or_else(|| {
            PullEnd::Failed("the pull ended without a result (did the daemon stop?)".into())
        }))
    }

    /// A service's container logs, the last `tail` lines first; with `follow`, until the
    /// containers stop or the daemon closes the stream.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
        tail: usize,
        on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        check(name)?;
        let path = format!("/v1/services/{name}/logs?follow={follow}&tail={tail}");
        self.lines(hyper::Method::GET, &path, on_line).await
    }

    /// The event stream: a snapshot first, then every change.
    pub async fn events(&self) -> Result<Events, ClientError> {
        let resp = self.ok(hyper::Method::GET, "/v1/events").await?;
        Ok(Events::new(resp.into_body()))
    }

    /// Streams a text answer line by line into `on_line`.
    async fn lines(
        &self,
        method: hyper::Method,
        path: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let mut body = self.ok(method, path).await?.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ClientError::http)?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    on_line(&String::from_utf8_lossy(&line[..line.len() - 1]));
                }
            }
        }
        Ok(())
    }
}
