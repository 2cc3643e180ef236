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
