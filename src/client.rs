//! The CLI's side of the API: a small HTTP client over the daemon's unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use hyperlocal::{UnixConnector, Uri};
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the berth daemon is not running (no answer on {}); start it with `systemctl --user start berth` or `berth daemon`", .0.display())]
    NotRunning(PathBuf),
    #[error("{0}")]
    Api(String),
    #[error("talking to the berth daemon failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the berth daemon sent an answer this berth does not understand")]
    Decode(#[source] serde_json::Error),
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    http: HyperClient<UnixConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            http: HyperClient::builder(TokioExecutor::new()).build(UnixConnector),
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let uri: hyper::Uri = Uri::new(&self.socket, path).into();
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(Box::new(e)))?;
        match self.http.request(req).await {
            Ok(r) => Ok(r),
            Err(e) if e.is_connect() => Err(ClientError::NotRunning(self.socket.clone())),
            Err(e) => Err(ClientError::Http(Box::new(e))),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(Box::new(e)))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("{status}: {}", String::from_utf8_lossy(&body)));
            return Err(ClientError::Api(msg));
        }
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(hyper::Method::GET, path).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(hyper::Method::POST, path).await
    }

    /// Streams a text answer line by line into `on_line`; returns the last line.
    pub async fn lines(
        &self,
        method: hyper::Method,
        path: &str,
        mut on_line: impl FnMut(&str),
    ) -> Result<Option<String>, ClientError> {
        let resp = self.send(method, path).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| ClientError::Http(Box::new(e)))?
                .to_bytes();
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("{status}"));
            return Err(ClientError::Api(msg));
        }
        let mut buf = Vec::new();
        let mut last = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(Box::new(e)))?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    on_line(&text);
                    last = Some(text);
                }
            }
        }
        Ok(last)
    }
}
