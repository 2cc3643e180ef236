//! The local web page: the user's dashboard, served by the daemon on `127.0.0.1` (port in
//! config.toml `[web]`, default 7380; `enabled = false` turns it off).
//!
//! One static page (`assets/`: plain HTML, CSS and JS embedded in the binary, no build step)
//! that follows the event stream and acts through the same handlers as the API socket, behind
//! [`guard`] (Host, Origin, session, another user's connections). The page's data lives under
//! `/api/`; the page itself under `/` and `/services/NAME/logs`.
//!
//! Limits: no TLS (loopback only); sessions live in memory and end with the daemon.

pub mod guard;
mod page;
pub mod session;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::podman::Podman;

pub use self::guard::{Guard, PeerCheckedListener};
pub use self::session::Sessions;

/// What the page's handlers share.
#[derive(Debug, Clone)]
pub struct WebState<P> {
    pub api: ApiState<P>,
    pub guard: Arc<Guard>,
}

impl<P: Clone> FromRef<WebState<P>> for ApiState<P> {
    fn from_ref(s: &WebState<P>) -> Self {
        s.api.clone()
    }
}

/// How the API socket reaches the page: to hand out login links.
#[derive(Debug, Clone)]
pub struct WebLink {
    pub sessions: Arc<Sessions>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl WebLink {
    /// A one-time login link that lands on `path`.
    pub fn login_url(&self, path: &str) -> std::io::Result<String> {
        let next = session::safe_next(path);
        let token = self.sessions.issue(next)?;
        Ok(format!(
            "{}/login?token={token}&next={}",
            self.base,
            page::encode_query(next)
        ))
    }
}

pub fn router<P: Podman + Clone + 'static>(state: WebState<P>) -> Router {
    let guard = state.guard.clone();
    Router::new()
        .route("/", get(page::index))
        .route("/services/{name}/logs", get(page::index))
        .route("/login", get(page::login::<P>))
        .route("/assets/{file}", get(page::asset))
        .route("/api/events", get(api::events::<P>))
        .route("/api/services/{name}/logs", get(api::logs::<P>))
        .route("/api/services/{name}/{verb}", post(api::verb::<P>))
        .route("/api/stats", get(page::stats::<P>))
        .fallback(page::not_found)
        .layer(middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

/// Serves the page until `shutdown`.
pub async fn serve<P: Podman + Clone + 'static>(
    listener: TcpListener,
    state: WebState<P>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(PeerCheckedListener::new(listener), router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests;
