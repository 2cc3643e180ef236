//! Delivery of one report: an HTTP(S) POST with the bearer token, judged by its status.
//!
//! TLS is rustls with the system's CA store (`/etc/ssl/certs` on Debian and Ubuntu, or
//! `SSL_CERT_FILE`), read when the first https request is made: a VM whose CA bundle arrives
//! later still delivers once it is there.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use crate::engine::source_chain;

/// How long one delivery may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How a delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the receiver has the report.
    Accepted,
    /// Temporary: cannot connect, timeout, 5xx, 408, 429. Retried with backoff.
    Unavailable(String),
    /// The receiver refuses (another 4xx), redirects (3xx: berth follows no redirects), or
    /// the token cannot be read: most likely a wrong token or URL. Retried slowly; the report
    /// is kept.
    Rejected(String),
}

/// Sends one report; [`HttpDelivery`] is the real one, tests use fakes.
pub trait Deliver: Send + Sync {
    fn deliver(&self, body: Vec<u8>) -> impl Future<Output = Outcome> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("push.url {url:?} is not a valid URL")]
pub struct BadUrl {
    url: String,
    #[source]
    source: hyper::http::uri::InvalidUri,
}

type Tls = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    /// Built on first use (and again after a failure to load the CA store).
    Tls(Mutex<Option<Tls>>),
}

/// POSTs reports to the configured URL.
#[derive(Debug)]
pub struct HttpDelivery {
    url: Uri,
    token_file: Option<PathBuf>,
    transport: Transport,
    timeout: Duration,
}

impl HttpDelivery {
    pub fn new(url: &str, token_file: Option<PathBuf>) -> Result<HttpDelivery, BadUrl> {
        let uri: Uri = url.parse().map_err(|source| BadUrl {
            url: url.into(),
            source,
        })?;
        let transport = if uri.scheme_str() == Some("https") {
            Transport::Tls(Mutex::new(None))
        } else {
            // No idle connections: reports are minutes apart and a receiver (or a proxy in
            // front of it) closes idle connections at its own pace.
            Transport::Plain(
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build(HttpConnector::new()),
            )
        };
        Ok(HttpDelivery {
            url: uri,
            token_file,
            transport,
            timeout: TIMEOUT,
        })
    }

    fn request(&self, req: Request<Full<Bytes>>) -> Result<ResponseFuture, String> {
        match &self.transport {
            Transport::Plain(c) => Ok(c.request(req)),
            Transport::Tls(slot) => {
                let client = {
                    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                    match &*slot {
                        Some(c) => c.clone(),
                        None => {
                            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                                .with_native_roots()
                                .map_err(|e| {
                                    format!("cannot load the system CA certificates: {e}")
                                })?
                                .https_only()
                                .enable_http1()
                                .build();
                            let c: Tls = Client::builder(TokioExecutor::new())
                                .pool_max_idle_per_host(0)
                                .build(connector);
                            *slot = Some(c.clone());
                            c
                        }
                    }
                };
                Ok(client.request(req))
            }
        }
    }

    async fn exchange(&self, body: Vec<u8>) -> Outcome {
        let token = match &self.token_file {
            // Read for every delivery, so a rotated token is used at once.
            Some(path) => match crate::config::read_token(path) {
                Ok(t) => Some(t),
                Err(e) => {
                    return Outcome::Rejected(format!(
                        "cannot read the bearer token file {}: {e}",
                        path.display()
                    ))
                }
            },
            None => None,
        };
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            // Only an invalid header value gets here: the token has a character HTTP forbids.
            // The error's text would not name it, but say nothing of the token all the same.
            Err(_) => {
                return Outcome::Rejected(
                    "the bearer token holds characters not allowed in an HTTP header".into(),
                )
            }
        };
        let response = match self.request(req) {
            Ok(f) => f.await,
            Err(e) => return Outcome::Unavailable(e),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let chain = source_chain(&e);
                return Outcome::Unavailable(if chain.is_empty() {
                    e.to_string()
                } else {
                    chain
                });
            }
        };
        let status = response.status();
        // The receiver's words, for the log; a little is enough.
        let text = match Limited::new(response.into_body(), 4096).collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                String::from_utf8_lossy(&b[..b.len().min(200)])
                    .trim()
                    .replace(['\r', '\n'], " ")
            }
            Err(_) => String::new(),
        };
        classify(status, &text)
    }
}

/// The outcome of an answer with `status` and the start of its body.
pub fn classify(status: StatusCode, text: &str) -> Outcome {
    let what = if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    };
    if status.is_success() {
        Outcome::Accepted
    } else if status.is_redirection() {
        Outcome::Rejected(format!(
            "{what} (berth follows no redirects: set push.url to the final address)"
        ))
    } else if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Rejected(what)
    } else {
        Outcome::Unavailable(what)
    }
}

impl Deliver for HttpDelivery {
    async fn deliver(&self, body: Vec<u8>) -> Outcome {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(o) => o,
            Err(_) => {
                Outcome::Unavailable(format!("no answer within {} s", self.timeout.as_secs()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn statuses() {
        assert_eq!(classify(StatusCode::OK, ""), Outcome::Accepted);
        assert_eq!(classify(StatusCode::NO_CONTENT, ""), Outcome::Accepted);
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, "bad token"),
            Outcome::Rejected(m) if m == "HTTP 401: bad token"
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, ""),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            classify(StatusCode::PERMANENT_REDIRECT, ""),
            Outcome::Rejected(m) if m.contains("redirects")
        ));
        for s in [
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert!(matches!(classify(s, ""), Outcome::Unavailable(_)), "{s}");
        }
    }

    /// A one-shot HTTP server on 127.0.0.1: answers `answer` and returns the request it got.
    async fn one_shot(answer: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= head_end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).await.expect("answer");
            String::from_utf8_lossy(&got).to_string()
        });
        (port, task)
    }

    #[tokio::test]
    async fn posts_json_with_the_current_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "first\n").expect("token");
        let (port, got) = one_shot("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        let d = HttpDelivery::new(
            &format!("http://127.0.0.1:{port}/v1/health"),
            Some(token.clone()),
        )
        .expect("url");
        std::fs::write(&token, "rotated\n").expect("rotate");
        assert_eq!(d.deliver(b"{\"seq\":1}".to_vec()).await, Outcome::Accepted);
        let req = got.await.expect("request");
        assert!(req.starts_with("POST /v1/health HTTP/1.1\r\n"), "{req}");
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer rotated\r\n"), "{req}");
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{req}"
        );
        assert!(req.ends_with("{\"seq\":1}"), "{req}");
    }

    #[tokio::test]
    async fn refusals_and_outages_are_told_apart() {
        let (port, _got) = one_shot(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\nConnection: close\r\n\r\nbad token",
        )
        .await;
        let d = HttpDelivery::new(&format!("http://127.0.0.1:{port}/"), None).expect("url");
        assert_eq!(
            d.deliver(b"{}".to_vec()).await,
            Outcome::Rejected("HTTP 401: bad token".into())
        );

        // Nobody listens.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let d = HttpDelivery::new(&format!("http://127.0.0.1:{port}/"), None).expect("url");
        match d.deliver(b"{}".to_vec()).await {
            Outcome::Unavailable(m) => assert!(m.contains("refused"), "{m}"),
            other => panic!("{other:?}"),
        }

        // A token file that is missing is the admin's to fix, not an outage.
        let d = HttpDelivery::new(
            &format!("http://127.0.0.1:{port}/"),
            Some("/nonexistent/berth-token".into()),
        )
        .expect("url");
        assert!(matches!(
            d.deliver(b"{}".to_vec()).await,
            Outcome::Rejected(m) if m.contains("/nonexistent/berth-token")
        ));
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut d = HttpDelivery::new(&format!("http://127.0.0.1:{port}/"), None).expect("url");
        d.timeout = Duration::from_millis(300);
        match d.deliver(b"{}".to_vec()).await {
            Outcome::Unavailable(m) => assert!(m.contains("no answer"), "{m}"),
            other => panic!("{other:?}"),
        }
        drop(l);
    }
}
