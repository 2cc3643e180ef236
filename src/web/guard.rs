//! The page's one guard: every request passes it before any handler.
//!
//! - `Host` must be the page's own (`127.0.0.1:PORT` or `localhost:PORT`): a page elsewhere that
//!   rebinds its DNS name to 127.0.0.1 still sends its own name, and is refused.
//! - Every request that is not a `GET`/`HEAD` must carry the page's own `Origin` (and, where the
//!   browser sends it, `Sec-Fetch-Site: same-origin`): a page in another tab cannot drive it.
//!   State changes happen only by `POST`.
//! - The data and the actions want the session cookie (`HttpOnly`, `SameSite=Strict`), which
//!   only a one-time login token from the user's own API socket gives.
//! - No CORS headers are ever sent; every answer carries a strict CSP and frame denial.
//! - A connection from another local user is refused before HTTP (see [`PeerCheckedListener`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::session::Sessions;

/// The name of the session cookie.
pub const COOKIE: &str = "berth_session";

/// What the guard lets in.
#[derive(Debug, Clone)]
pub struct Guard {
    authorities: [String; 2],
    origins: [String; 2],
    pub sessions: Arc<Sessions>,
}

impl Guard {
    pub fn new(addr: SocketAddr, sessions: Arc<Sessions>) -> Self {
        let port = addr.port();
        Guard {
            authorities: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            origins: [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
            ],
            sessions,
        }
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| self.authorities.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }

    /// For a request that may change something: its `Origin` is the page's own.
    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
        let site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
        origin.is_some_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
            && site.is_none_or(|s| s == "same-origin")
    }

    /// Whether the request carries a live session.
    pub fn session_ok(&self, headers: &HeaderMap) -> bool {
        session_cookie(headers).is_some_and(|s| self.sessions.check(s))
    }
}

/// The session secret in a request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Paths anyone may fetch: the login itself and the page's static files (they hold no data).
fn public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// The guard as middleware, and the security headers on every answer.
pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let mut resp = if !g.host_ok(headers) {
        // DNS rebinding, or a client that does not say where it is going.
        refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "this page answers only to http://127.0.0.1 and http://localhost on its own port",
        )
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) && !g.origin_ok(headers) {
        refuse(
            StatusCode::FORBIDDEN,
            "refused: a request that changes something must come from the berth page itself",
        )
    } else if !public(req.uri().path()) && !g.session_ok(headers) {
        if req.uri().path().starts_with("/api/") {
            refuse(
                StatusCode::UNAUTHORIZED,
                "no session: open the dashboard from the berth tray icon or with `berth dashboard`",
            )
        } else {
            (StatusCode::UNAUTHORIZED, super::page::login_needed()).into_response()
        }
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A TCP listener that lets in only the daemon's own user: the page listens on loopback,
/// where every local user can connect, so the uid at the other end of each connection is
/// looked up (`/proc/net/tcp`) and any other is told why it is refused.
#[derive(Debug)]
pub struct PeerCheckedListener {
    inner: TcpListener,
    uid: u32,
}

impl PeerCheckedListener {
    pub fn new(inner: TcpListener) -> Self {
        Self::for_uid(inner, crate::sys::uid())
    }

    /// Lets only `uid` in.
    pub fn for_uid(inner: TcpListener, uid: u32) -> Self {
        PeerCheckedListener { inner, uid }
    }
}

async fn refuse_peer(mut s: TcpStream, theirs: Option<u32>) {
    let who = theirs.map_or_else(
        || "a client berth cannot identify".into(),
        |u| format!("uid {u}"),
    );
    let body = format!("this berth page belongs to another user; {who} may not use it\n");
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 4096];
    let _request =
        tokio::time::timeout(std::time::Duration::from_millis(500), s.read(&mut buf)).await;
    let _peer_may_be_gone = s.write_all(answer.as_bytes()).await;
    let _peer_may_be_gone = s.shutdown().await;
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let uid = stream
                        .local_addr()
                        .ok()
                        .and_then(|ours| crate::proxy::owner::peer_uid(ours, peer));
                    if uid == Some(self.uid) {
                        return (stream, peer);
                    }
                    warn!(?uid, %peer, "refused a connection to the page from another user");
                    tokio::spawn(refuse_peer(stream, uid));
                }
                Err(err) => {
                    warn!(%err, "accept on the page's port failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new("127.0.0.1:7380".parse().expect("addr"), Arc::default())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn host_must_be_the_pages_own() {
        let g = guard();
        assert!(g.host_ok(&headers(&[("host", "127.0.0.1:7380")])));
        assert!(g.host_ok(&headers(&[("host", "LOCALHOST:7380")])));
        assert!(
            !g.host_ok(&headers(&[("host", "evil.example:7380")])),
            "rebinding"
        );
        assert!(!g.host_ok(&headers(&[("host", "127.0.0.1:7381")])));
        assert!(!g.host_ok(&headers(&[("host", "127.0.0.1")])));
        assert!(!g.host_ok(&HeaderMap::new()));
    }

    #[test]
    fn origin_must_be_the_pages_own() {
        let g = guard();
        assert!(g.origin_ok(&headers(&[("origin", "http://127.0.0.1:7380")])));
        assert!(g.origin_ok(&headers(&[
            ("origin", "http://localhost:7380"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!g.origin_ok(&headers(&[("origin", "http://evil.example")])));
        assert!(!g.origin_ok(&headers(&[("origin", "null")])));
        assert!(!g.origin_ok(&HeaderMap::new()), "no origin, no change");
        assert!(!g.origin_ok(&headers(&[
            ("origin", "http://127.0.0.1:7380"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; berth_session=abc; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        let h = headers(&[("cookie", "berth_sessionx=abc")]);
        assert_eq!(session_cookie(&h), None);
    }
}
