//! The network edge of the remote catalog: two GETs over HTTPS behind [`Fetch`].
//!
//! The catalog is asked for with `If-None-Match` (its last `ETag`): an unchanged catalog is a
//! `304` with no body and no second request. Only a changed one brings its signature
//! (`URL.minisig`) too. berth follows no redirects, sends no credentials, and reads at most
//! [`MAX_CATALOG`] bytes. TLS is rustls: with `ca_file` only that CA is trusted (a private CA
//! of the cloud), else the system's CA store.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::engine::source_chain;

/// The largest catalog berth reads.
pub const MAX_CATALOG: usize = 4 << 20;
/// The largest signature file berth reads (a minisign signature is about 300 bytes).
pub const MAX_SIGNATURE: usize = 16 << 10;
/// How long one fetch may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304 Not Modified`: the catalog with the `ETag` sent is still current.
    NotModified,
    /// The catalog, its signature, and the catalog's `ETag` (if the server gives one).
    Changed {
        catalog: Vec<u8>,
        signature: Vec<u8>,
        etag: Option<String>,
    },
}

/// Gets the catalog and its signature; [`HttpsFetch`] is the real one, tests use an
/// in-memory server.
pub trait Fetch: Send + Sync + 'static {
    /// `etag`: the `ETag` of the catalog in force, sent as `If-None-Match`.
    fn fetch(&self, etag: Option<&str>) -> impl Future<Output = Result<Fetched, String>> + Send;
}

type Https = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The real fetcher.
#[derive(Debug, Clone)]
pub struct HttpsFetch {
    catalog: Uri,
    signature: Uri,
    client: Https,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("remote_catalog.url {0:?} is not a valid URL")]
    Url(String),
    #[error("cannot read remote_catalog.ca_file {}", .0.display())]
    CaFile(PathBuf, #[source] std::io::Error),
    #[error("remote_catalog.ca_file {} holds no usable PEM certificate", .0.display())]
    NoCa(PathBuf),
    #[error("cannot load the system CA certificates")]
    NativeRoots(#[source] std::io::Error),
    #[error("TLS set-up failed")]
    Rustls(#[source] rustls::Error),
}

impl HttpsFetch {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, TlsSetupError> {
        let bad = || TlsSetupError::Url(url.to_string());
        let catalog: Uri = url.parse().map_err(|_| bad())?;
        let signature: Uri = format!("{url}.minisig").parse().map_err(|_| bad())?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_file {
            Some(path) => builder.with_tls_config(private_ca(path)?),
            None => builder
                .with_native_roots()
                .map_err(TlsSetupError::NativeRoots)?,
        };
        let connector = builder.https_only().enable_http1().build();
        // No idle connections kept: polls are minutes apart.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(HttpsFetch {
            catalog,
            signature,
            client,
        })
    }

    async fn get(
        &self,
        uri: &Uri,
        etag: Option<&str>,
        limit: usize,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), String> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("cannot make the request: {e}"))?;
        let resp = self.client.request(req).await.map_err(|e| {
            let chain = source_chain(&e);
            if chain.is_empty() {
                e.to_string()
            } else {
                chain
            }
        })?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                format!("{uri}: reading the answer failed (larger than {limit} bytes?): {e}")
            })?
            .to_bytes()
            .to_vec();
        Ok((status, etag, body))
    }

    async fn exchange(&self, etag: Option<&str>) -> Result<Fetched, String> {
        let (status, new_etag, catalog) = self.get(&self.catalog, etag, MAX_CATALOG).await?;
        match status {
            StatusCode::NOT_MODIFIED if etag.is_some() => return Ok(Fetched::NotModified),
            StatusCode::OK => {}
            s => return Err(format!("{}: HTTP {}", self.catalog, s.as_u16())),
        }
        let (status, _, signature) = self.get(&self.signature, None, MAX_SIGNATURE).await?;
        if status != StatusCode::OK {
            return Err(format!("{}: HTTP {}", self.signature, status.as_u16()));
        }
        Ok(Fetched::Changed {
            catalog,
            signature,
            etag: new_etag,
        })
    }
}

/// A TLS client configuration that trusts only the CA certificates in `path`.
/// Asks `url` once (a GET; the body is not read): its status, or why there was none, within
/// `timeout`, connecting included. A status of 500 or more counts as no answer. `https` with
/// `ca_file` trusts only that CA, else the system's CA store; plain `http` is allowed (an
/// address inside the cloud). This is how berth checks the services the cloud provides.
pub async fn answers(
    url: &str,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<StatusCode, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a valid URL"))?;
    let ca = ca_file.map(std::path::Path::to_path_buf);
    // Reading CA files is blocking IO: not on the runtime's thread.
    let client = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &ca {
            Some(path) => builder.with_tls_config(private_ca(path).map_err(|e| match e {
                TlsSetupError::CaFile(p, io) => {
                    format!("cannot read ca_file {}: {io}", p.display())
                }
                TlsSetupError::NoCa(p) => {
                    format!("ca_file {} holds no usable PEM certificate", p.display())
                }
                other => other.to_string(),
            })?),
            None => builder
                .with_native_roots()
                .map_err(|e| format!("cannot load the system CA certificates: {e}"))?,
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client: Https = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(client)
    })
    .await
    .map_err(|e| format!("TLS set-up failed: {e}"))??;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(
            header::USER_AGENT,
            concat!("berth/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| format!("cannot make the request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        Ok(Err(e)) => {
            let chain = source_chain(&e);
            Err(if chain.is_empty() {
                e.to_string()
            } else {
                chain
            })
        }
        Ok(Ok(resp)) if resp.status().is_server_error() => {
            Err(format!("answered {}", resp.status()))
        }
        Ok(Ok(resp)) => Ok(resp.status()),
    }
}

fn private_ca(path: &std::path::Path) -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| TlsSetupError::CaFile(path.into(), e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| TlsSetupError::NoCa(path.into()))?;
        roots
            .add(cert)
            .map_err(|_| TlsSetupError::NoCa(path.into()))?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCa(path.into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The fetcher the daemon runs: HTTPS, or, when TLS could not be set up (a missing
/// `ca_file`…), one that says why at every poll, so the kept catalog still serves.
#[derive(Debug, Clone)]
pub enum Fetcher {
    Https(Box<HttpsFetch>),
    Unusable(String),
}

impl Fetcher {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Fetcher {
        match HttpsFetch::new(url, ca_file) {
            Ok(f) => Fetcher::Https(Box::new(f)),
            Err(e) => Fetcher::Unusable(crate::engine::full_message(&e)),
        }
    }
}

impl Fetch for Fetcher {
    async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, String> {
        match self {
            Fetcher::Https(f) => f.fetch(etag).await,
            Fetcher::Unusable(why) => Err(why.clone()),
        }
    }
}

impl Fetch for HttpsFetch {
    async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, String> {
        match tokio::time::timeout(TIMEOUT, self.exchange(etag)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{}: no answer within {} s",
                self.catalog,
                TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_says_so_and_the_fetcher_keeps_saying_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("ca.pem");
        let f = Fetcher::new("https://127.0.0.1:18249/c.toml", Some(&missing));
        let Fetcher::Unusable(why) = &f else {
            panic!("{f:?}")
        };
        assert!(
            why.contains("cannot read remote_catalog.ca_file") && why.contains("ca.pem"),
            "{why}"
        );
        std::fs::write(&missing, "not a certificate\n").expect("write");
        match HttpsFetch::new("https://127.0.0.1:18249/c.toml", Some(&missing)) {
            Err(TlsSetupError::NoCa(p)) => assert_eq!(p, missing),
            other => panic!("{other:?}"),
        }
        let r = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f.fetch(None));
        assert!(matches!(r, Err(m) if m.contains("ca_file")));
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server on loopback that reads one request head and answers `status` (or nothing).
    async fn server(status: Option<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://127.0.0.1:{}/api/version",
            l.local_addr().expect("addr").port()
        );
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            match status {
                Some(st) => {
                    let answer =
                        format!("HTTP/1.1 {st}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    s.write_all(answer.as_bytes()).await.expect("answer");
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            String::from_utf8_lossy(&got).to_string()
        });
        (url, task)
    }

    #[tokio::test]
    async fn any_status_below_500_is_an_answer() {
        for st in ["200 OK", "401 Unauthorized", "404 Not Found"] {
            let (url, task) = server(Some(st)).await;
            let got = answers(&url, None, Duration::from_secs(5)).await;
            assert_eq!(
                got.map(|s| s.as_u16()),
                Ok(st[..3].parse().expect("code")),
                "{st}"
            );
            let req = task.await.expect("server");
            assert!(req.starts_with("GET /api/version HTTP/1.1\r\n"), "{req}");
            assert!(
                req.to_ascii_lowercase().contains("user-agent: berth/"),
                "{req}"
            );
        }
    }

    #[tokio::test]
    async fn server_errors_refusals_and_silence_are_no_answer() {
        let (url, _task) = server(Some("503 Service Unavailable")).await;
        let e = answers(&url, None, Duration::from_secs(5))
            .await
            .expect_err("503");
        assert!(e.contains("503"), "{e}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = answers(
            &format!("http://127.0.0.1:{closed}/"),
            None,
            Duration::from_secs(5),
        )
        .await
        .expect_err("refused");
        assert!(e.to_lowercase().contains("refused"), "{e}");

        let (url, _task) = server(None).await;
        let t = std::time::Instant::now();
        let e = answers(&url, None, Duration::from_millis(300))
            .await
            .expect_err("silent");
        assert!(e.contains("no answer within"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "bounded by the timeout"
        );

        let e = answers(
            "https://127.0.0.1:1/",
            Some(std::path::Path::new("/nonexistent/ca.pem")),
            Duration::from_secs(1),
        )
        .await
        .expect_err("no CA file");
        assert!(e.contains("cannot read ca_file /nonexistent/ca.pem"), "{e}");
    }
}
