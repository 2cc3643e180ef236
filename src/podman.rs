//! A thin typed client of the Podman libpod REST API, spoken over the user's unix socket
//! (`podman.socket` under `systemd --user`).
//!
//! berth creates and starts containers through systemd units that run the `podman` CLI, so this
//! module only covers what the supervisor needs to *look*: ping, image and volume existence,
//! pulls with progress, listing by label, inspect, and logs (tail and follow). It does not create,
//! start, stop or remove anything, and it has no stats (they need cgroup v2).
//!
//! Podman 3.4 (Ubuntu 22.04), 4.x (Debian 12, Ubuntu 24.04) and 5.x differ in their JSON: 3.4
//! reports health as `State.Healthcheck` where later versions say `State.Health`, 4.x reports an
//! empty `Health` for containers without a healthcheck, and 5.x turned `Config.StopSignal` into a
//! string. So every response is read into a private "raw" struct that names only the fields berth
//! uses, with `#[serde(default)]` and null-tolerant collections, and is then converted into the
//! public types. The `/v4.0.0/` path prefix works on all of them: the server ignores the version.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;

/// The path prefix of every libpod call; Podman 3.4 to 5.x accept it.
const API_PREFIX: &str = "/v4.0.0/libpod";

/// How long an ordinary call (everything but pulls and log follows) may take, body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a non-JSON error body goes into an error message.
const MAX_ERROR_BODY: usize = 300;

/// Everything that can go wrong talking to Podman.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// Nothing listens on the socket (or it does not exist).
    #[error(
        "cannot reach the Podman API at {} (is podman.socket running? try `systemctl --user start podman.socket`)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The connection broke after it was made (request or body).
    #[error("{what}: the connection to the Podman API failed")]
    Transport {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request could not even be built (a bug rather than a runtime condition).
    #[error("{what}: cannot build the request")]
    Request {
        what: String,
        #[source]
        source: hyper::http::Error,
    },
    /// Podman answered with an error status; `message` comes from its JSON body.
    #[error("{what}: Podman answered {status}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    /// Podman answered 2xx with a body this client does not understand.
    #[error("{what}: cannot decode the answer of the Podman API")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The call took longer than the client's timeout.
    #[error("{what}: no answer from the Podman API within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// The pull stream reported an error (registry unreachable, unknown image, ...).
    #[error("pulling {image} failed: {message}")]
    Pull { image: String, message: String },
    /// The caller dropped the receiver of a pull's progress before the pull finished.
    #[error("{what}: stopped because nobody listens any more")]
    Cancelled { what: String },
    /// The server is older than berth supports (see [`check_supported`]).
    #[error(
        "Podman {version} is not supported: berth needs Podman {}.{} or newer (Podman 3.0's rootless API service does not take podman.socket's socket from systemd and deletes the socket file when it goes idle, so the API is gone 5 s after each use)",
        MIN_VERSION.0,
        MIN_VERSION.1
    )]
    Unsupported { version: String },
}

/// libpod's "stopped" is a container whose process ended and whose cleanup has not run yet;
/// Podman 5.4.2 (Debian 13 VM) answered it for a while after the exit, where 4.3 went straight
/// to "exited". For berth both are the same: the process is gone and its exit code is set.
fn exited_if_stopped(status: String) -> String {
    if status == "stopped" {
        "exited".to_owned()
    } else {
        status
    }
}

/// The oldest Podman berth runs on: Ubuntu 22.04's 3.4. Podman 3.0.1 (Debian 11) was tried
/// in a booted VM (`image-build/compat`): its rootless `podman system service` binds
/// podman.socket's path itself instead of taking systemd's socket, and removes the file when
/// it exits after its 5 s idle time, so every later call finds no socket (and its pods need
/// the `k8s.gcr.io/pause` image from a registry).
pub const MIN_VERSION: (u32, u32) = (3, 4);

/// Whether berth supports the Podman that answered `version` (its `Libpod-API-Version`
/// header or `/version`: "3.0.0", "4.3.1", "5.4.2", "5.0.0-dev"). A version that does not
/// parse is let through: refusing a working Podman over an odd string would be worse.
pub fn check_supported(version: &str) -> Result<(), PodmanError> {
    let mut parts = version
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    if (major, minor) < MIN_VERSION {
        return Err(PodmanError::Unsupported {
            version: version.trim().to_owned(),
        });
    }
    Ok(())
}

/// The Podman calls berth makes; [`PodmanClient`] is the real one, tests use fakes.
pub trait Podman: Send + Sync {
    /// The server's Podman version, e.g. "4.3.1".
    fn ping(&self) -> impl Future<Output = Result<String, PodmanError>> + Send;
    /// Whether the image is in local storage.
    fn image_exists(&self, image: &str) -> impl Future<Output = Result<bool, PodmanError>> + Send;
    /// The id of the image a reference (tag, digest or id) names in local storage now; None
    /// when there is no such image.
    fn image_id(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<String>, PodmanError>> + Send;
    /// Pulls, sending one human-readable progress line per event to `progress`; Err when the pull
    /// fails (e.g. registry unreachable), with podman's message.
    fn pull(
        &self,
        image: &str,
        progress: mpsc::Sender<String>,
    ) -> impl Future<Output = Result<(), PodmanError>> + Send;
    /// All containers (running or not) that carry the label `key=value` (or just `key` when
    /// value is None).
    fn list_by_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ContainerSummary>, PodmanError>> + Send;
    /// None when no such container.
    fn inspect(
        &self,
        name_or_id: &str,
    ) -> impl Future<Output = Result<Option<ContainerInspect>, PodmanError>> + Send;
    /// Last `tail` lines of stdout+stderr as text lines.
    fn logs_tail(
        &self,
        name: &str,
        tail: usize,
    ) -> impl Future<Output = Result<Vec<String>, PodmanError>> + Send;
    /// Follow logs, starting with the last `tail` lines: send lines until the container stops or
    /// the receiver is dropped.
    fn logs_follow(
        &self,
        name: &str,
        tail: usize,
        out: mpsc::Sender<String>,
    ) -> impl Future<Output = Result<(), PodmanError>> + Send;
    /// Whether a named volume exists.
    fn volume_exists(&self, name: &str) -> impl Future<Output = Result<bool, PodmanError>> + Send;
    /// The id of a pod's infra container (the holder of its namespaces); None when no such
    /// pod, or it has none.
    fn pod_infra(
        &self,
        pod: &str,
    ) -> impl Future<Output = Result<Option<String>, PodmanError>> + Send;
    /// CPU and memory of running containers, one sample (`podman stats --no-stream`). Rootless
    /// Podman has them only on cgroup v2; elsewhere it answers an error that says so.
    fn stats(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<ContainerStats>, PodmanError>> + Send;
}

/// One container's resource use, as `podman stats` samples it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContainerStats {
    pub name: String,
    /// CPU use since the container started, in percent of one CPU.
    pub cpu_percent: f64,
    pub mem_bytes: u64,
    /// The memory limit (the machine's memory without one).
    pub mem_limit_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStatsAnswer {
    #[serde(rename = "Stats", deserialize_with = "null_default")]
    stats: Vec<RawStats>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStats {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "CPU")]
    cpu: f64,
    #[serde(rename = "MemUsage")]
    mem_usage: u64,
    #[serde(rename = "MemLimit")]
    mem_limit: u64,
}

/// One entry of the container list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    /// "running", "exited", "created", ...
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds; 0 if never started or unknown.
    pub started_at: i64,
}

/// What berth needs from `podman inspect` of a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerInspect {
    pub id: String,
    pub name: String,
    /// The image as the container was created from it (name, else the image id).
    pub image: String,
    /// The id of the image the container runs (`Image`), whatever its tag names now.
    pub image_id: String,
    /// `State.Status`: "running", "exited", "created", ...
    pub status: String,
    pub running: bool,
    /// `State.StartedAt` as given (RFC 3339; `0001-01-01T00:00:00Z` when never started).
    pub started_at: String,
    pub exit_code: i64,
    /// `State.Error`.
    pub error: String,
    /// "healthy", "unhealthy" or "starting"; None when the container has no healthcheck.
    pub health: Option<String>,
    pub failing_streak: i64,
    /// Output of the most recent healthcheck run, if any ran.
    pub last_health_output: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub restart_count: i64,
    /// Published TCP ports: container port → host port (containers of a pod see the pod's).
    pub ports: BTreeMap<u16, u16>,
    /// `State.Pid`: the container's first process on the host, 0 when not running. Its
    /// `/proc/PID/net/tcp` shows the container's own sockets.
    pub pid: u32,
}

/// The real client. Cheap to clone; clones share the connector.
#[derive(Debug, Clone)]
pub struct PodmanClient {
    socket: PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
    timeout: Duration,
}

impl PodmanClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        // No idle connections are kept: podman.socket starts `podman system service`, which exits
        // a few seconds after its last request, and a pooled connection to a service that is
        // going away fails the next request. A fresh unix connection per call costs little.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(UnixConnector);
        Self {
            socket: socket.into(),
            client,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another timeout for ordinary calls (pulls and follows have none).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `$XDG_RUNTIME_DIR/podman/podman.sock`, or CONTAINER_HOST when it is `unix://...`.
    pub fn default_socket() -> Option<PathBuf> {
        socket_from_env(
            std::env::var_os("CONTAINER_HOST").as_deref(),
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn uri(&self, path_and_query: &str) -> String {
        // hyperlocal's connector reads the socket path back from the hex-encoded host.
        format!(
            "unix://{}:0{API_PREFIX}{path_and_query}",
            hex(self.socket.as_os_str().as_encoded_bytes())
        )
    }

    /// Sends a request and returns once the response head is in (no timeout of its own).
    async fn send(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
    ) -> Result<Response<Incoming>, PodmanError> {
        let request = Request::builder()
            .method(method)
            .uri(self.uri(path_and_query))
            .body(Full::new(Bytes::new()))
            .map_err(|source| PodmanError::Request {
                what: what.to_owned(),
                source,
            })?;
        let response = self.client.request(request).await.map_err(|source| {
            if source.is_connect() {
                PodmanError::Connect {
                    socket: self.socket.clone(),
                    source,
                }
            } else {
                PodmanError::Transport {
                    what: what.to_owned(),
                    source: Box::new(source),
                }
            }
        })?;
        tracing::debug!(%what, path = %path_and_query, status = %response.status(), "podman api");
        Ok(response)
    }

    /// An ordinary call: request and whole body, within the timeout.
    async fn call(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
    ) -> Result<Answer, PodmanError> {
        let exchange = async {
            let response = self.send(what, method, path_and_query).await?;
            let status = response.status();
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|source| transport(what, source))?
                .to_bytes();
            Ok(Answer {
                status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_elapsed| PodmanError::Timeout {
                what: what.to_owned(),
                timeout: self.timeout,
            })?
    }

    /// GET of an `.../exists` endpoint: 204 yes, 404 no.
    async fn exists(&self, what: &str, path: &str) -> Result<bool, PodmanError> {
        let answer = self.call(what, Method::GET, path).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            _ => Err(answer.into_error(what)),
        }
    }

    async fn logs_request(
        &self,
        what: &str,
        name: &str,
        tail: usize,
        follow: bool,
    ) -> Result<Response<Incoming>, PodmanError> {
        let path = format!(
            "/containers/{}/logs?stdout=true&stderr=true&tail={tail}&follow={follow}",
            encode(name)
        );
        self.send(what, Method::GET, &path).await
    }
}

impl Podman for PodmanClient {
    async fn stats(&self, names: &[String]) -> Result<Vec<ContainerStats>, PodmanError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let what = "read container stats";
        let mut path = String::from("/containers/stats?stream=false");
        for n in names {
            path.push_str(&format!("&containers={}", encode(n)));
        }
        let answer = self.call(what, Method::GET, &path).await?;
        let raw: RawStatsAnswer = answer.success(what)?.decode(what)?;
        Ok(raw
            .stats
            .into_iter()
            .map(|s| ContainerStats {
                name: s.name,
                cpu_percent: s.cpu,
                mem_bytes: s.mem_usage,
                mem_limit_bytes: s.mem_limit,
            })
            .collect())
    }

    async fn ping(&self) -> Result<String, PodmanError> {
        let what = "ping";
        let answer = self.call(what, Method::GET, "/_ping").await?;
        let answer = answer.success(what)?;
        if let Some(version) = answer
            .headers
            .get("Libpod-API-Version")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            return Ok(version.to_owned());
        }
        // Older or proxied servers may not set the header; /version always has it.
        let what = "query the Podman version";
        let answer = self.call(what, Method::GET, "/version").await?;
        let version: RawVersion = answer.success(what)?.decode(what)?;
        Ok(version.version)
    }

    async fn image_exists(&self, image: &str) -> Result<bool, PodmanError> {
        let what = format!("check image {image}");
        self.exists(&what, &format!("/images/{}/exists", encode(image)))
            .await
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, PodmanError> {
        let what = format!("inspect image {image}");
        let path = format!("/images/{}/json", encode(image));
        let answer = self.call(&what, Method::GET, &path).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let raw: RawImage = answer.success(&what)?.decode(&what)?;
        Ok((!raw.id.is_empty()).then_some(raw.id))
    }

    async fn pull(&self, image: &str, progress: mpsc::Sender<String>) -> Result<(), PodmanError> {
        let what = format!("pull {image}");
        let path = format!("/images/pull?reference={}", encode(image));
        // No timeout: a large pull takes as long as it takes. It stops when the caller drops
        // `progress` (or the future itself).
        let response = tokio::select! {
            response = self.send(&what, Method::POST, &path) => response?,
            () = progress.closed() => return Err(PodmanError::Cancelled { what }),
        };
        if !response.status().is_success() {
            let answer = collect(&what, response, self.timeout).await?;
            return Err(answer.into_error(&what));
        }
        let mut body = response.into_body();
        let mut reports = JsonStream::<RawPullReport>::default();
        let mut pulled = false;
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = progress.closed() => return Err(PodmanError::Cancelled { what }),
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|source| transport(&what, source))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let events = reports.push(&data).map_err(|source| PodmanError::Decode {
                what: what.clone(),
                source,
            })?;
            for event in events {
                match event.into_progress() {
                    PullEvent::Error(message) => {
                        return Err(PodmanError::Pull {
                            image: image.to_owned(),
                            message,
                        })
                    }
                    PullEvent::Lines(lines) => {
                        for line in lines {
                            if progress.send(line).await.is_err() {
                                return Err(PodmanError::Cancelled { what });
                            }
                        }
                    }
                    PullEvent::Done(line) => {
                        pulled = true;
                        if progress.send(line).await.is_err() {
                            return Err(PodmanError::Cancelled { what });
                        }
                    }
                }
            }
        }
        reports.finish().map_err(|source| PodmanError::Decode {
            what: what.clone(),
            source,
        })?;
        if pulled {
            Ok(())
        } else {
            Err(PodmanError::Pull {
                image: image.to_owned(),
                message: "the pull ended without naming the pulled image".to_owned(),
            })
        }
    }

    async fn list_by_label(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, PodmanError> {
        let label = match value {
            Some(value) => format!("{key}={value}"),
            None => key.to_owned(),
        };
        let what = format!("list containers labelled {label}");
        let filters = serde_json::json!({ "label": [label] }).to_string();
        let path = format!("/containers/json?all=true&filters={}", encode(&filters));
        let answer = self.call(&what, Method::GET, &path).await?;
        let raw: Vec<RawListContainer> = answer.success(&what)?.decode(&what)?;
        Ok(raw.into_iter().map(ContainerSummary::from).collect())
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<ContainerInspect>, PodmanError> {
        let what = format!("inspect container {name_or_id}");
        let path = format!("/containers/{}/json", encode(name_or_id));
        let answer = self.call(&what, Method::GET, &path).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let raw: RawInspect = answer.success(&what)?.decode(&what)?;
        Ok(Some(raw.into()))
    }

    async fn logs_tail(&self, name: &str, tail: usize) -> Result<Vec<String>, PodmanError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let what = format!("read the logs of {name}");
        let exchange = async {
            let response = self.logs_request(&what, name, tail, false).await?;
            if !response.status().is_success() {
                let answer = collect(&what, response, self.timeout).await?;
                return Err(answer.into_error(&what));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| transport(&what, source))?
                .to_bytes();
            let mut demux = LogDemux::default();
            let mut lines = demux.push(&body);
            lines.extend(demux.finish());
            Ok(lines)
        };
        let mut lines = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_elapsed| PodmanError::Timeout {
                what: what.clone(),
                timeout: self.timeout,
            })??;
        // The server already cut the log; this only guards against servers that ignore `tail`.
        let excess = lines.len().saturating_sub(tail);
        lines.drain(..excess);
        Ok(lines)
    }

    async fn logs_follow(
        &self,
        name: &str,
        tail: usize,
        out: mpsc::Sender<String>,
    ) -> Result<(), PodmanError> {
        let what = format!("follow the logs of {name}");
        // Dropping the receiver is the normal way to stop following, so it ends in Ok.
        let response = tokio::select! {
            response = self.logs_request(&what, name, tail, true) => response?,
            () = out.closed() => return Ok(()),
        };
        if !response.status().is_success() {
            let answer = collect(&what, response, self.timeout).await?;
            return Err(answer.into_error(&what));
        }
        let mut body = response.into_body();
        let mut demux = LogDemux::default();
        loop {
            // Waiting on `closed()` as well notices a dropped receiver while the log is quiet.
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = out.closed() => return Ok(()),
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|source| transport(&what, source))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            for line in demux.push(&data) {
                if out.send(line).await.is_err() {
                    return Ok(());
                }
            }
        }
        // The server ends the stream when the container stops.
        for line in demux.finish() {
            if out.send(line).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn volume_exists(&self, name: &str) -> Result<bool, PodmanError> {
        let what = format!("check volume {name}");
        self.exists(&what, &format!("/volumes/{}/exists", encode(name)))
            .await
    }

    async fn pod_infra(&self, pod: &str) -> Result<Option<String>, PodmanError> {
        #[derive(Deserialize)]
        struct RawPod {
            // The same name on Podman 3.0 to 5.x.
            #[serde(rename = "InfraContainerID", default)]
            infra: Option<String>,
        }
        let what = format!("inspect pod {pod}");
        let path = format!("/pods/{}/json", encode(pod));
        let answer = self.call(&what, Method::GET, &path).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let raw: RawPod = answer.success(&what)?.decode(&what)?;
        Ok(raw.infra.filter(|id| !id.is_empty()))
    }
}

/// A whole response.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn success(self, what: &str) -> Result<Self, PodmanError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.into_error(what))
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: &str) -> Result<T, PodmanError> {
        serde_json::from_slice(&self.body).map_err(|source| PodmanError::Decode {
            what: what.to_owned(),
            source,
        })
    }

    fn into_error(self, what: &str) -> PodmanError {
        PodmanError::Api {
            what: what.to_owned(),
            status: self.status.as_u16(),
            message: error_message(self.status, &self.body),
        }
    }
}

/// Reads the rest of a response that is already known to be an error, within `timeout`.
async fn collect(
    what: &str,
    response: Response<Incoming>,
    timeout: Duration,
) -> Result<Answer, PodmanError> {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(timeout, body.collect())
        .await
        .map_err(|_elapsed| PodmanError::Timeout {
            what: what.to_owned(),
            timeout,
        })?
        .map_err(|source| transport(what, source))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn transport(what: &str, source: hyper::Error) -> PodmanError {
    PodmanError::Transport {
        what: what.to_owned(),
        source: Box::new(source),
    }
}

/// The human part of an error body: libpod sends
/// `{"cause": "...", "message": "...", "response": 404}`; anything else is quoted, shortened.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct RawError {
        #[serde(deserialize_with = "null_default")]
        message: String,
        #[serde(deserialize_with = "null_default")]
        cause: String,
    }
    if let Ok(raw) = serde_json::from_slice::<RawError>(body) {
        if !raw.message.is_empty() {
            return raw.message;
        }
        if !raw.cause.is_empty() {
            return raw.cause;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    match text.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// CONTAINER_HOST wins when it names a unix socket (it is what the podman CLI would use);
/// otherwise the per-user socket of podman.socket.
fn socket_from_env(container_host: Option<&OsStr>, runtime_dir: Option<&OsStr>) -> Option<PathBuf> {
    if let Some(path) = container_host
        .and_then(OsStr::to_str)
        .and_then(|host| host.strip_prefix("unix://"))
        .filter(|path| !path.is_empty())
    {
        return Some(PathBuf::from(path));
    }
    // The XDG spec requires an absolute path; a relative one would depend on the cwd.
    let runtime_dir = Path::new(runtime_dir?);
    runtime_dir
        .is_absolute()
        .then(|| runtime_dir.join("podman").join("podman.sock"))
}

/// Percent-encodes everything except RFC 3986 unreserved characters, so the result is safe as
/// one path segment or one query value (`/`, `:`, `@`, `=`, `{`, `"` ... all get encoded).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(hex_digit(byte >> 4).to_ascii_lowercase());
        out.push(hex_digit(byte & 0x0f).to_ascii_lowercase());
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0f)])
}

/// Go encodes nil slices and maps as `null`; `#[serde(default)]` alone only covers absent keys.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawVersion {
    #[serde(rename = "Version", deserialize_with = "null_default")]
    version: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawImage {
    #[serde(rename = "Id", deserialize_with = "null_default")]
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawListContainer {
    #[serde(rename = "Id", deserialize_with = "null_default")]
    id: String,
    #[serde(rename = "Names", deserialize_with = "null_default")]
    names: Vec<String>,
    #[serde(rename = "Image", deserialize_with = "null_default")]
    image: String,
    #[serde(rename = "State", deserialize_with = "null_default")]
    state: String,
    #[serde(rename = "Labels", deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
    /// Unix seconds; Go's zero time (-62135596800) for a container that never started.
    #[serde(rename = "StartedAt", deserialize_with = "null_default")]
    started_at: i64,
}

impl From<RawListContainer> for ContainerSummary {
    fn from(raw: RawListContainer) -> Self {
        Self {
            id: raw.id,
            names: raw.names,
            image: raw.image,
            state: raw.state,
            labels: raw.labels,
            started_at: raw.started_at.max(0),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawInspect {
    #[serde(rename = "Id", deserialize_with = "null_default")]
    id: String,
    #[serde(rename = "Name", deserialize_with = "null_default")]
    name: String,
    /// The image id.
    #[serde(rename = "Image", deserialize_with = "null_default")]
    image: String,
    /// The image name the container was created from.
    #[serde(rename = "ImageName", deserialize_with = "null_default")]
    image_name: String,
    #[serde(rename = "RestartCount", deserialize_with = "null_default")]
    restart_count: i64,
    #[serde(rename = "State", deserialize_with = "null_default")]
    state: RawState,
    /// Only `Labels` and `Image` are read: other fields changed type across versions
    /// (`StopSignal` is a number before 5.0 and a string since).
    #[serde(rename = "Config", deserialize_with = "null_default")]
    config: RawConfig,
    #[serde(rename = "NetworkSettings", deserialize_with = "null_default")]
    network: RawNetwork,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNetwork {
    /// `"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}]`, or null when unpublished.
    #[serde(rename = "Ports", deserialize_with = "null_default")]
    ports: BTreeMap<String, Option<Vec<RawBinding>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBinding {
    #[serde(rename = "HostPort", deserialize_with = "null_default")]
    host_port: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawState {
    #[serde(rename = "Status", deserialize_with = "null_default")]
    status: String,
    #[serde(rename = "Running", deserialize_with = "null_default")]
    running: bool,
    #[serde(rename = "StartedAt", deserialize_with = "null_default")]
    started_at: String,
    #[serde(rename = "ExitCode", deserialize_with = "null_default")]
    exit_code: i64,
    #[serde(rename = "Error", deserialize_with = "null_default")]
    error: String,
    #[serde(rename = "Pid", deserialize_with = "null_default")]
    pid: i64,
    /// Podman 4.0 and later.
    #[serde(rename = "Health")]
    health: Option<RawHealth>,
    /// Podman 3.x. Kept as its own field rather than a serde alias, so a server that sends
    /// both names is not a "duplicate field" error.
    #[serde(rename = "Healthcheck")]
    healthcheck: Option<RawHealth>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHealth {
    #[serde(rename = "Status", deserialize_with = "null_default")]
    status: String,
    #[serde(rename = "FailingStreak", deserialize_with = "null_default")]
    failing_streak: i64,
    #[serde(rename = "Log", deserialize_with = "null_default")]
    log: Vec<RawHealthLog>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHealthLog {
    #[serde(rename = "Output", deserialize_with = "null_default")]
    output: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawConfig {
    #[serde(rename = "Image", deserialize_with = "null_default")]
    image: String,
    #[serde(rename = "Labels", deserialize_with = "null_default")]
    labels: BTreeMap<String, String>,
}

impl From<RawInspect> for ContainerInspect {
    fn from(raw: RawInspect) -> Self {
        // 4.x reports `Health` with an empty status for containers without a healthcheck.
        let health = [raw.state.health, raw.state.healthcheck]
            .into_iter()
            .flatten()
            .find(|health| !health.status.is_empty());
        let image_id = raw.image.clone();
        let image = [raw.image_name, raw.config.image, raw.image]
            .into_iter()
            .find(|image| !image.is_empty())
            .unwrap_or_default();
        let (health, failing_streak, last_health_output) = match health {
            Some(health) => (
                Some(health.status),
                health.failing_streak,
                health
                    .log
                    .into_iter()
                    .last()
                    .map(|entry| entry.output.trim_end().to_owned()),
            ),
            None => (None, 0, None),
        };
        Self {
            id: raw.id,
            // The Docker-compatible API prefixes names with '/'; libpod does not.
            name: raw.name.trim_start_matches('/').to_owned(),
            image,
            image_id,
            status: exited_if_stopped(raw.state.status),
            running: raw.state.running,
            started_at: raw.state.started_at,
            exit_code: raw.state.exit_code,
            error: raw.state.error,
            health,
            failing_streak,
            last_health_output,
            labels: raw.config.labels,
            restart_count: raw.restart_count,
            pid: u32::try_from(raw.state.pid).unwrap_or(0),
            ports: raw
                .network
                .ports
                .iter()
                .filter_map(|(key, bindings)| {
                    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
                    let host = bindings
                        .as_ref()?
                        .iter()
                        .find_map(|b| b.host_port.parse().ok())?;
                    (proto == "tcp").then_some((port.parse().ok()?, host))
                })
                .collect(),
        }
    }
}

/// One object of the pull stream. Podman sends exactly one of these keys per object.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPullReport {
    #[serde(deserialize_with = "null_default")]
    stream: String,
    #[serde(deserialize_with = "null_default")]
    error: String,
    #[serde(deserialize_with = "null_default")]
    images: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    id: String,
}

enum PullEvent {
    Error(String),
    Lines(Vec<String>),
    Done(String),
}

impl RawPullReport {
    fn into_progress(self) -> PullEvent {
        if !self.error.is_empty() {
            return PullEvent::Error(self.error);
        }
        if !self.id.is_empty() || !self.images.is_empty() {
            let id = if self.id.is_empty() {
                self.images.join(", ")
            } else {
                self.id
            };
            return PullEvent::Done(format!("pulled image {id}"));
        }
        PullEvent::Lines(
            self.stream
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// Splits a byte stream of concatenated JSON values (as the pull endpoint sends them) into
/// values, whatever way the bytes are chunked.
#[derive(Debug)]
struct JsonStream<T> {
    pending: Vec<u8>,
    _values: std::marker::PhantomData<fn() -> T>,
}

impl<T> Default for JsonStream<T> {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            _values: std::marker::PhantomData,
        }
    }
}

impl<T: DeserializeOwned> JsonStream<T> {
    /// The values completed by `data`; an incomplete last value waits for more bytes.
    fn push(&mut self, data: &[u8]) -> Result<Vec<T>, serde_json::Error> {
        self.pending.extend_from_slice(data);
        let mut values = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.pending).into_iter::<T>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(value)) => {
                    consumed = stream.byte_offset();
                    values.push(value);
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => return Err(err),
                None => {
                    consumed = stream.byte_offset();
                    break;
                }
            }
        }
        self.pending.drain(..consumed);
        Ok(values)
    }

    /// Errors when the stream ended inside a value.
    fn finish(self) -> Result<(), serde_json::Error> {
        if self.pending.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        serde_json::from_slice::<serde_json::Value>(&self.pending).map(drop)
    }
}

/// Turns the body of `/containers/{name}/logs` into text lines.
///
/// libpod sends Docker's multiplexed format: frames of an 8-byte header (stream id: 1 stdout,
/// 2 stderr; three zero bytes; big-endian u32 length) and the payload, one log line per frame in
/// practice. A plain byte stream (what Docker sends for tty containers) is accepted too; it is
/// recognized because text never starts with bytes 0-3 followed by three zeros.
#[derive(Debug, Default)]
struct LogDemux {
    mode: DemuxMode,
    pending: Vec<u8>,
    /// Unfinished lines of stdout (and other streams) and of stderr, kept apart so that
    /// interleaved partial writes do not mix.
    partial: [Vec<u8>; 2],
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DemuxMode {
    #[default]
    Unknown,
    Framed,
    Raw,
}

const FRAME_HEADER: usize = 8;

impl LogDemux {
    /// The lines completed by `data`.
    fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        self.pending.extend_from_slice(data);
        if self.mode == DemuxMode::Unknown {
            if self.pending.len() < FRAME_HEADER {
                return lines;
            }
            self.mode = if self.pending[0] <= 3 && self.pending[1..4] == [0, 0, 0] {
                DemuxMode::Framed
            } else {
                DemuxMode::Raw
            };
        }
        match self.mode {
            DemuxMode::Unknown => {}
            DemuxMode::Raw => {
                let data = std::mem::take(&mut self.pending);
                split_lines(&mut self.partial[0], &data, &mut lines);
            }
            DemuxMode::Framed => {
                let mut start = 0;
                while let Some(header) = self.pending.get(start..start + FRAME_HEADER) {
                    let stream = usize::from(header[0] == 2);
                    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let body = start + FRAME_HEADER;
                    let Some(payload) = self.pending.get(body..body.saturating_add(len)) else {
                        break;
                    };
                    split_lines(&mut self.partial[stream], payload, &mut lines);
                    start = body + len;
                }
                self.pending.drain(..start);
            }
        }
        lines
    }

    /// The unterminated last lines, once the stream has ended.
    fn finish(mut self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.mode == DemuxMode::Unknown {
            // Fewer than 8 bytes in all: too short for a frame, so plain text.
            let data = std::mem::take(&mut self.pending);
            split_lines(&mut self.partial[0], &data, &mut lines);
        }
        for partial in &mut self.partial {
            if !partial.is_empty() {
                lines.push(line_text(partial));
            }
        }
        lines
    }
}

fn split_lines(partial: &mut Vec<u8>, data: &[u8], lines: &mut Vec<String>) {
    partial.extend_from_slice(data);
    let mut start = 0;
    while let Some(end) = partial[start..].iter().position(|&b| b == b'\n') {
        lines.push(line_text(&partial[start..start + end]));
        start += end + 1;
    }
    partial.drain(..start);
}

/// Logs are text in practice; invalid UTF-8 is replaced rather than failing the whole read.
/// Tty containers end lines with "\r\n".
fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Podman 3.4 (Ubuntu 22.04): health under `State.Healthcheck`, numeric StopSignal.
    const INSPECT_3_4: &str = r#"{
        "Id": "3b1d0f1e7c9a",
        "Created": "2024-03-01T10:00:00.000000000Z",
        "Path": "sh",
        "Args": ["-c", "httpd -f -p 80"],
        "State": {
            "OciVersion": "1.0.2-dev",
            "Status": "running",
            "Running": true,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 4242,
            "ConmonPid": 4230,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2024-03-01T10:00:01.5Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            "Healthcheck": {
                "Status": "unhealthy",
                "FailingStreak": 3,
                "Log": [
                    {"Start": "2024-03-01T10:00:31Z", "End": "2024-03-01T10:00:32Z", "ExitCode": 1, "Output": "wget: can't connect\n"},
                    {"Start": "2024-03-01T10:01:01Z", "End": "2024-03-01T10:01:02Z", "ExitCode": 1, "Output": "connection refused\n"}
                ]
            }
        },
        "Image": "9f1d3c",
        "ImageName": "docker.io/library/nginx:1.25",
        "Name": "web",
        "RestartCount": 2,
        "Config": {
            "Hostname": "3b1d0f1e7c9a",
            "Env": null,
            "Cmd": ["sh"],
            "Image": "docker.io/library/nginx:1.25",
            "Labels": {"berth.service": "web", "berth.generation": "7"},
            "StopSignal": 15,
            "Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- localhost"], "Interval": 30000000000}
        },
        "HostConfig": {"RestartPolicy": {"Name": "", "MaximumRetryCount": 0}}
    }"#;

    /// Podman 4.3 (Debian 12), shaped like what it sent for a container without healthcheck:
    /// `State.Health` present with an empty status, `Labels` null.
    const INSPECT_4_3: &str = r#"{
        "Id": "c34543d6b6ad02f1",
        "State": {
            "OciVersion": "1.0.2-dev",
            "Status": "exited",
            "Running": false,
            "Pid": 0,
            "ExitCode": 137,
            "Error": "",
            "StartedAt": "2026-11-26T00:51:02.188281309Z",
            "FinishedAt": "2026-11-26T00:52:02.188281309Z",
            "Health": {"Status": "", "FailingStreak": 0, "Log": null},
            "CheckpointedAt": "0001-01-01T00:00:00Z"
        },
        "Image": "395db6969d25",
        "ImageName": "localhost/berth-demo:1",
        "Name": "demo",
        "RestartCount": 0,
        "Config": {"Image": "localhost/berth-demo:1", "Labels": null, "StopSignal": 15,
                   "Annotations": {"io.container.manager": "libpod"}}
    }"#;

    /// Podman 5.x: `StopSignal` is a string, health under `State.Health`, no `ImageName`.
    const INSPECT_5: &str = r#"{
        "Id": "77aa",
        "State": {
            "OciVersion": "1.2.0",
            "Status": "running",
            "Running": true,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2025-01-10T08:00:00Z",
            "Health": {
                "Status": "starting",
                "FailingStreak": 1,
                "Log": [{"Start": "2025-01-10T08:00:05Z", "End": "2025-01-10T08:00:06Z", "ExitCode": 1, "Output": "not yet"}]
            },
            "HealthcheckOnFailureAction": "none"
        },
        "Image": "sha256:1234",
        "Name": "/llm",
        "RestartCount": 1,
        "Config": {"Image": "ghcr.io/example/llm:latest", "Labels": {"berth.service": "llm"},
                   "StopSignal": "SIGTERM", "HealthcheckOnFailureAction": "none"}
    }"#;

    fn decode_inspect(json: &str) -> ContainerInspect {
        serde_json::from_str::<RawInspect>(json)
            .expect("sample decodes")
            .into()
    }

    #[test]
    fn inspect_podman_3_4_reads_healthcheck() {
        let inspect = decode_inspect(INSPECT_3_4);
        assert_eq!(inspect.id, "3b1d0f1e7c9a");
        assert_eq!(inspect.name, "web");
        assert_eq!(inspect.image, "docker.io/library/nginx:1.25");
        assert_eq!(inspect.status, "running");
        assert!(inspect.running);
        assert_eq!(inspect.started_at, "2024-03-01T10:00:01.5Z");
        assert_eq!(inspect.health.as_deref(), Some("unhealthy"));
        assert_eq!(inspect.failing_streak, 3);
        assert_eq!(
            inspect.last_health_output.as_deref(),
            Some("connection refused")
        );
        assert_eq!(inspect.restart_count, 2);
        assert_eq!(
            inspect.labels.get("berth.generation").map(String::as_str),
            Some("7")
        );
    }

    #[test]
    fn inspect_podman_4_3_empty_health_is_none() {
        let inspect = decode_inspect(INSPECT_4_3);
        assert_eq!(inspect.status, "exited");
        assert!(!inspect.running);
        assert_eq!(inspect.exit_code, 137);
        assert_eq!(inspect.health, None);
        assert_eq!(inspect.failing_streak, 0);
        assert_eq!(inspect.last_health_output, None);
        assert!(inspect.labels.is_empty());
        assert_eq!(inspect.image, "localhost/berth-demo:1");
    }

    #[test]
    fn inspect_podman_5_string_stop_signal() {
        let inspect = decode_inspect(INSPECT_5);
        assert_eq!(inspect.name, "llm");
        assert_eq!(inspect.image, "ghcr.io/example/llm:latest");
        assert_eq!(inspect.health.as_deref(), Some("starting"));
        assert_eq!(inspect.failing_streak, 1);
        assert_eq!(inspect.last_health_output.as_deref(), Some("not yet"));
        assert_eq!(inspect.restart_count, 1);
    }

    #[test]
    fn inspect_podman_5_stopped_before_cleanup_is_exited() {
        let inspect = decode_inspect(
            r#"{"Id": "x", "State": {"Status": "stopped", "Running": false, "ExitCode": 3}}"#,
        );
        assert_eq!(inspect.status, "exited");
        assert_eq!(inspect.exit_code, 3);
    }

    #[test]
    fn inspect_tolerates_missing_state_and_config() {
        let inspect = decode_inspect(r#"{"Id": "x", "Name": "y", "State": null}"#);
        assert_eq!(inspect.status, "");
        assert_eq!(inspect.health, None);
    }

    #[test]
    fn inspect_reads_published_tcp_ports() {
        let inspect = decode_inspect(
            r#"{"Id": "x", "NetworkSettings": {"Ports": {
                "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "44651"}],
                "9000/tcp": null,
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}}}"#,
        );
        assert_eq!(inspect.ports, BTreeMap::from([(8080, 44651)]));
    }

    #[test]
    fn list_decodes_and_clamps_never_started() {
        let json = r#"[
            {"Id": "a1", "Names": ["web"], "Image": "localhost/berth-demo:1", "State": "running",
             "Labels": {"berth.service": "web"}, "StartedAt": 1795654262, "ExitedAt": -62135596800,
             "Ports": null, "Size": null},
            {"Id": "b2", "Names": null, "Image": "x", "State": "created", "Labels": null,
             "StartedAt": -62135596800}
        ]"#;
        let list: Vec<ContainerSummary> = serde_json::from_str::<Vec<RawListContainer>>(json)
            .expect("sample decodes")
            .into_iter()
            .map(Into::into)
            .collect();
        assert_eq!(list[0].names, ["web"]);
        assert_eq!(list[0].started_at, 1_795_654_262);
        assert_eq!(list[0].labels["berth.service"], "web");
        assert_eq!(list[1].started_at, 0);
        assert!(list[1].names.is_empty());
        assert!(list[1].labels.is_empty());
    }

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small payload");
        let mut out = vec![stream, 0, 0, 0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn demux_frames_split_anywhere() {
        let mut stream = frame(1, b"hello\n");
        stream.extend(frame(2, b"err\n"));
        stream.extend(frame(1, b"tty line\r\n"));
        stream.extend(frame(1, b"no newline"));
        // Every chunking of the same bytes gives the same lines.
        for chunk in 1..=stream.len() {
            let mut demux = LogDemux::default();
            let mut lines = Vec::new();
            for piece in stream.chunks(chunk) {
                lines.extend(demux.push(piece));
            }
            lines.extend(demux.finish());
            assert_eq!(
                lines,
                ["hello", "err", "tty line", "no newline"],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn demux_keeps_partial_lines_of_each_stream_apart() {
        let mut demux = LogDemux::default();
        let mut stream = frame(1, b"out-");
        stream.extend(frame(2, b"err-"));
        stream.extend(frame(1, b"done\n"));
        stream.extend(frame(2, b"done\n"));
        let lines = demux.push(&stream);
        assert_eq!(lines, ["out-done", "err-done"]);
        assert!(demux.finish().is_empty());
    }

    #[test]
    fn demux_empty_frame_and_empty_lines() {
        let mut stream = frame(1, b"");
        stream.extend(frame(1, b"\n\nx\n"));
        let mut demux = LogDemux::default();
        assert_eq!(demux.push(&stream), ["", "", "x"]);
    }

    #[test]
    fn demux_plain_text_stream() {
        let mut demux = LogDemux::default();
        let mut lines = demux.push(b"plain text\nmore");
        lines.extend(demux.finish());
        assert_eq!(lines, ["plain text", "more"]);

        let mut short = LogDemux::default();
        assert!(short.push(b"hi\n").is_empty(), "undecided below 8 bytes");
        assert_eq!(short.finish(), ["hi"]);
    }

    /// Real answers recorded in the compat VMs (`image-build/compat --record`), one folder per
    /// Podman version: a busybox httpd container `compat-rec` with label
    /// `berth.service=compat-rec`, a health check that passed, and 8080 published on
    /// 127.0.0.1.
    struct Recorded {
        version: &'static str,
        ping_headers: &'static str,
        list: &'static str,
        inspect: &'static str,
        inspect_404: &'static str,
        stats: &'static str,
    }

    macro_rules! recorded {
        ($v:literal) => {
            Recorded {
                version: $v,
                ping_headers: include_str!(concat!(
                    "podman/fixtures/podman-",
                    $v,
                    "/ping-headers.txt"
                )),
                list: include_str!(concat!(
                    "podman/fixtures/podman-",
                    $v,
                    "/containers-json.json"
                )),
                inspect: include_str!(concat!(
                    "podman/fixtures/podman-",
                    $v,
                    "/container-inspect.json"
                )),
                inspect_404: include_str!(concat!(
                    "podman/fixtures/podman-",
                    $v,
                    "/container-inspect-404.json"
                )),
                stats: include_str!(concat!(
                    "podman/fixtures/podman-",
                    $v,
                    "/containers-stats.json"
                )),
            }
        };
    }

    fn recorded() -> Vec<Recorded> {
        vec![recorded!("3.0.1"), recorded!("4.3.1"), recorded!("5.4.2")]
    }

    #[test]
    fn recorded_podman_5_4_2_version_and_pod_infra() {
        let version: RawVersion =
            serde_json::from_str(include_str!("podman/fixtures/podman-5.4.2/version.json"))
                .expect("version decodes");
        assert_eq!(version.version, "5.4.2");
        // The field pod_infra reads.
        let pod: serde_json::Value = serde_json::from_str(include_str!(
            "podman/fixtures/podman-5.4.2/pod-inspect.json"
        ))
        .expect("pod decodes");
        assert!(
            pod["InfraContainerID"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{pod}"
        );
    }

    #[test]
    fn recorded_answers_of_each_podman_decode() {
        for r in recorded() {
            let v = r.version;
            let api = r
                .ping_headers
                .trim()
                .split_once(':')
                .map(|(_, v)| v.trim())
                .unwrap_or_default();
            assert!(
                !api.is_empty(),
                "{v}: no Libpod-API-Version: {}",
                r.ping_headers
            );

            let list: Vec<ContainerSummary> = serde_json::from_str::<Vec<RawListContainer>>(r.list)
                .unwrap_or_else(|e| panic!("{v}: list: {e}"))
                .into_iter()
                .map(Into::into)
                .collect();
            assert_eq!(list.len(), 1, "{v}: {list:?}");
            assert_eq!(list[0].names, ["compat-rec"], "{v}");
            assert_eq!(list[0].state, "running", "{v}");
            assert_eq!(list[0].labels["berth.service"], "compat-rec", "{v}");
            assert!(
                list[0].started_at > 1_700_000_000,
                "{v}: {}",
                list[0].started_at
            );

            let inspect: ContainerInspect = serde_json::from_str::<RawInspect>(r.inspect)
                .unwrap_or_else(|e| panic!("{v}: inspect: {e}"))
                .into();
            assert_eq!(inspect.name, "compat-rec", "{v}");
            assert_eq!(inspect.image, "localhost/berth-demo:1", "{v}");
            assert!(inspect.running, "{v}");
            assert_eq!(inspect.health.as_deref(), Some("healthy"), "{v}");
            assert_eq!(inspect.failing_streak, 0, "{v}");
            assert_eq!(inspect.labels["berth.service"], "compat-rec", "{v}");
            assert_eq!(inspect.ports.len(), 1, "{v}: {:?}", inspect.ports);
            assert!(
                inspect.ports.get(&8080).is_some_and(|p| *p > 0),
                "{v}: {:?}",
                inspect.ports
            );

            // 3.0 names the container bare, later versions quote it.
            let msg = error_message(StatusCode::NOT_FOUND, r.inspect_404.as_bytes());
            assert!(
                msg.starts_with("no container with name or ID")
                    && msg.contains("nonexistent-compat")
                    && msg.ends_with("no such container"),
                "{v}: {msg}"
            );

            let stats: RawStatsAnswer =
                serde_json::from_str(r.stats).unwrap_or_else(|e| panic!("{v}: stats: {e}"));
            assert_eq!(stats.stats.len(), 1, "{v}");
            assert_eq!(stats.stats[0].name, "compat-rec", "{v}");
            assert!(
                stats.stats[0].mem_usage > 0 && stats.stats[0].mem_limit > 0,
                "{v}"
            );
        }
    }

    #[test]
    fn the_api_version_podman_3_0_1_sends_is_refused() {
        let r = recorded!("3.0.1");
        let api = r.ping_headers.trim().rsplit(' ').next().unwrap_or_default();
        assert_eq!(api, "3.0.0");
        assert!(check_supported(api).is_err());
    }

    #[test]
    fn podman_older_than_3_4_is_refused_with_the_reason() {
        // "3.0.0": the Libpod-API-Version that Podman 3.0.1 sent in the Debian 11 VM.
        for old in ["3.0.0", "3.0.1", "2.2.1", "3.3.1"] {
            let err = check_supported(old).expect_err(old).to_string();
            assert!(
                err.contains(&format!("Podman {old} is not supported")),
                "{err}"
            );
            assert!(err.contains("3.4 or newer"), "{err}");
        }
        for fine in [
            "3.4.4",
            "4.3.1",
            "4.9.3",
            "5.4.2",
            "5.0.0-dev",
            "10.1.0",
            "",
            "unknown",
        ] {
            assert!(check_supported(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(
            encode("localhost/berth-demo:1"),
            "localhost%2Fberth-demo%3A1"
        );
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            encode(r#"{"label":["k=v w"]}"#),
            "%7B%22label%22%3A%5B%22k%3Dv%20w%22%5D%7D"
        );
        assert_eq!(encode("img@sha256:ab"), "img%40sha256%3Aab");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode(""), "");
    }

    #[test]
    fn uri_carries_socket_and_prefix() {
        let client = PodmanClient::new("/x.sock");
        let uri: hyper::Uri = client.uri("/_ping").parse().expect("valid uri");
        assert_eq!(uri.scheme_str(), Some("unix"));
        assert_eq!(uri.host(), Some("2f782e736f636b"));
        assert_eq!(uri.path(), "/v4.0.0/libpod/_ping");
    }

    #[test]
    fn socket_from_env_prefers_unix_container_host() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            socket_from_env(os("unix:///srv/podman.sock"), os("/rt")),
            Some(PathBuf::from("/srv/podman.sock"))
        );
        assert_eq!(
            socket_from_env(os("ssh://me@host/run/podman.sock"), os("/rt")),
            Some(PathBuf::from("/rt/podman/podman.sock"))
        );
        assert_eq!(
            socket_from_env(None, os("/rt")),
            Some(PathBuf::from("/rt/podman/podman.sock"))
        );
        assert_eq!(socket_from_env(None, os("relative")), None);
        assert_eq!(socket_from_env(None, os("")), None);
        assert_eq!(socket_from_env(None, None), None);
    }

    #[test]
    fn json_stream_across_chunks() {
        let body = br#"{"stream":"Trying to pull x...\n"}
{"stream":"Copying blob 12\n"}{"images":["abc"],"id":"abc"}
"#;
        for chunk in 1..=body.len() {
            let mut stream = JsonStream::<RawPullReport>::default();
            let mut reports = Vec::new();
            for piece in body.chunks(chunk) {
                reports.extend(stream.push(piece).expect("valid json"));
            }
            stream.finish().expect("complete");
            assert_eq!(reports.len(), 3, "chunk {chunk}");
            assert_eq!(reports[2].id, "abc");
        }
        let mut cut = JsonStream::<RawPullReport>::default();
        assert!(cut.push(br#"{"stream":"#).expect("incomplete").is_empty());
        assert!(cut.finish().is_err());
        let mut bad = JsonStream::<RawPullReport>::default();
        assert!(bad.push(b"]").is_err());
    }

    #[test]
    fn pull_reports_become_events() {
        let event = |json: &str| {
            serde_json::from_str::<RawPullReport>(json)
                .expect("decodes")
                .into_progress()
        };
        assert!(matches!(
            event(r#"{"stream":"Copying blob a\nCopying blob b\n"}"#),
            PullEvent::Lines(lines) if lines == ["Copying blob a", "Copying blob b"]
        ));
        assert!(matches!(
            event(r#"{"error":"connection refused"}"#),
            PullEvent::Error(message) if message == "connection refused"
        ));
        assert!(matches!(
            event(r#"{"images":["abc"],"id":"abc"}"#),
            PullEvent::Done(line) if line == "pulled image abc"
        ));
    }

    #[test]
    fn error_message_from_body() {
        let body = br#"{"cause":"no such container","message":"no container with name or ID \"x\" found: no such container","response":404}"#;
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, body),
            r#"no container with name or ID "x" found: no such container"#
        );
        assert_eq!(
            error_message(StatusCode::INTERNAL_SERVER_ERROR, br#"{"cause":"boom"}"#),
            "boom"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"upstream down\n"),
            "upstream down"
        );
        assert_eq!(
            error_message(StatusCode::SERVICE_UNAVAILABLE, b""),
            "Service Unavailable"
        );
        let long = "x".repeat(MAX_ERROR_BODY + 50);
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, long.as_bytes()).len(),
            MAX_ERROR_BODY + 3
        );
    }

    /// A one-shot HTTP server on a unix socket in a temp dir: answers each connection with the
    /// next canned response (after reading the request head), or holds it open when `None`.
    struct FakeApi {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        requests: mpsc::UnboundedReceiver<String>,
    }

    fn fake_api(responses: Vec<Option<Vec<Vec<u8>>>>) -> FakeApi {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for response in responses {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                tx.send(line).expect("test alive");
                match response {
                    Some(chunks) => {
                        for chunk in chunks {
                            conn.write_all(&chunk).await.expect("write");
                            conn.flush().await.expect("flush");
                            tokio::task::yield_now().await;
                        }
                        // Hold the connection until the client is done with it, so that a
                        // stream left open here looks like a server that has nothing more yet.
                        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            }
        });
        FakeApi {
            _dir: dir,
            socket,
            requests,
        }
    }

    fn http(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn chunked_head() -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec()
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        out
    }

    #[tokio::test]
    async fn connect_error_names_socket_and_remedy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("missing.sock");
        let err = PodmanClient::new(&socket)
            .ping()
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, PodmanError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(
            text.contains("systemctl --user start podman.socket"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn ping_reads_version_header() {
        let mut api = fake_api(vec![Some(vec![
            b"HTTP/1.1 200 OK\r\nLibpod-API-Version: 4.3.1\r\nContent-Length: 2\r\n\r\nOK".to_vec(),
        ])]);
        let version = PodmanClient::new(&api.socket).ping().await.expect("ping");
        assert_eq!(version, "4.3.1");
        assert_eq!(
            api.requests.recv().await.as_deref(),
            Some("GET /v4.0.0/libpod/_ping HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn inspect_404_is_none_and_500_is_api_error() {
        let not_found = br#"{"cause":"no such container","message":"no container with name or ID \"a/b\" found: no such container","response":404}"#;
        let mut api = fake_api(vec![
            Some(vec![http("404 Not Found", not_found)]),
            Some(vec![http(
                "500 Internal Server Error",
                br#"{"cause":"x","message":"storage is broken","response":500}"#,
            )]),
        ]);
        let client = PodmanClient::new(&api.socket);
        assert_eq!(client.inspect("a/b").await.expect("404 is fine"), None);
        assert_eq!(
            api.requests.recv().await.as_deref(),
            Some("GET /v4.0.0/libpod/containers/a%2Fb/json HTTP/1.1")
        );
        let err = client.inspect("web").await.expect_err("500");
        assert!(
            matches!(&err, PodmanError::Api { status: 500, message, .. } if message == "storage is broken"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "inspect container web: Podman answered 500: storage is broken"
        );
    }

    #[tokio::test]
    async fn list_by_label_sends_encoded_filter() {
        let mut api = fake_api(vec![Some(vec![http("200 OK", b"[]")])]);
        let list = PodmanClient::new(&api.socket)
            .list_by_label("berth.service", Some("web"))
            .await
            .expect("list");
        assert!(list.is_empty());
        assert_eq!(
            api.requests.recv().await.as_deref(),
            Some("GET /v4.0.0/libpod/containers/json?all=true&filters=%7B%22label%22%3A%5B%22berth.service%3Dweb%22%5D%7D HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn pull_streams_progress_then_fails_with_podmans_message() {
        let api = fake_api(vec![Some(vec![
            chunked_head(),
            chunk(br#"{"stream":"Trying to pull localhost/x:1...\n"}"#),
            chunk(b"\n{\"err"),
            chunk(b"or\":\"pinging container registry localhost: connection refused\"}\n"),
            b"0\r\n\r\n".to_vec(),
        ])]);
        let (tx, mut rx) = mpsc::channel(16);
        let err = PodmanClient::new(&api.socket)
            .pull("localhost/x:1", tx)
            .await
            .expect_err("pull fails");
        assert_eq!(
            err.to_string(),
            "pulling localhost/x:1 failed: pinging container registry localhost: connection refused"
        );
        assert_eq!(
            rx.recv().await.as_deref(),
            Some("Trying to pull localhost/x:1...")
        );
    }

    #[tokio::test]
    async fn pull_succeeds_on_images_report() {
        let api = fake_api(vec![Some(vec![
            chunked_head(),
            chunk(b"{\"stream\":\"Copying blob 1\\n\"}\n{\"images\":[\"abc\"],\"id\":\"abc\"}\n"),
            b"0\r\n\r\n".to_vec(),
        ])]);
        let (tx, mut rx) = mpsc::channel(16);
        PodmanClient::new(&api.socket)
            .pull("x", tx)
            .await
            .expect("pulled");
        assert_eq!(rx.recv().await.as_deref(), Some("Copying blob 1"));
        assert_eq!(rx.recv().await.as_deref(), Some("pulled image abc"));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn pull_stops_when_progress_receiver_is_dropped() {
        // The server sends one line and then hangs; dropping the receiver must end the pull.
        let api = fake_api(vec![Some(vec![
            chunked_head(),
            chunk(b"{\"stream\":\"Copying blob 1\\n\"}\n"),
        ])]);
        let (tx, mut rx) = mpsc::channel(16);
        let client = PodmanClient::new(&api.socket);
        let pull = tokio::spawn(async move { client.pull("x", tx).await });
        assert_eq!(rx.recv().await.as_deref(), Some("Copying blob 1"));
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(5), pull)
            .await
            .expect("pull ends")
            .expect("task ok");
        assert!(
            matches!(result, Err(PodmanError::Cancelled { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn logs_tail_demultiplexes() {
        let mut body = frame(1, b"one\n");
        body.extend(frame(2, b"two\n"));
        body.extend(frame(1, b"three\n"));
        let mut api = fake_api(vec![Some(vec![http("200 OK", &body)])]);
        let lines = PodmanClient::new(&api.socket)
            .logs_tail("web", 2)
            .await
            .expect("logs");
        // The fake ignores `tail`; the client trims anyway.
        assert_eq!(lines, ["two", "three"]);
        assert_eq!(
            api.requests.recv().await.as_deref(),
            Some("GET /v4.0.0/libpod/containers/web/logs?stdout=true&stderr=true&tail=2&follow=false HTTP/1.1")
        );
    }

    #[tokio::test]
    async fn logs_follow_ends_when_receiver_dropped_on_a_quiet_log() {
        let api = fake_api(vec![Some(vec![
            chunked_head(),
            chunk(&frame(1, b"first\n")),
        ])]);
        let (tx, mut rx) = mpsc::channel(16);
        let client = PodmanClient::new(&api.socket);
        let follow = tokio::spawn(async move { client.logs_follow("web", 10, tx).await });
        assert_eq!(rx.recv().await.as_deref(), Some("first"));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("follow ends")
            .expect("task ok")
            .expect("dropping the receiver is not an error");
    }

    #[tokio::test]
    async fn ordinary_calls_time_out() {
        let api = fake_api(vec![None]);
        let err = PodmanClient::new(&api.socket)
            .with_timeout(Duration::from_millis(200))
            .image_exists("x")
            .await
            .expect_err("times out");
        assert!(matches!(err, PodmanError::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "check image x: no answer from the Podman API within 200ms"
        );
    }
}
