//! The page's own handlers: the static files, the login, resource figures.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::guard::COOKIE;
use super::WebState;
use crate::podman::Podman;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// The page's static files, with the bytes they weigh (README states the total).
pub const ASSETS: [(&str, &str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8", INDEX),
    ("app.js", "text/javascript; charset=utf-8", APP_JS),
    ("app.css", "text/css; charset=utf-8", APP_CSS),
    ("icon.svg", "image/svg+xml", ICON),
];

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == file) {
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => not_found().await,
    }
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "no such page\n",
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small page for people who reached the dashboard without a session.
fn notice(title: &str, text: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body class=\"notice\">\
         <main><h1>{t}</h1><p>{x}</p></main></body></html>\n",
        t = escape(title),
        x = escape(text)
    ))
}

pub fn login_needed() -> Html<String> {
    notice(
        "berth: please open the dashboard again",
        "This page needs a session. Open it from the berth icon in your panel (Open dashboard), \
         or run `berth dashboard` in a terminal.",
    )
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Spends a login token: the session cookie, and on to the page.
pub async fn login<P: Podman + Clone + 'static>(
    State(s): State<WebState<P>>,
    Query(q): Query<LoginQuery>,
) -> Response {
    match s.guard.sessions.redeem(&q.token) {
        Ok((session, next)) => {
            // The token said where to go; the query's `next` only where the token had none.
            let to = if next == "/" {
                super::session::safe_next(&q.next).to_string()
            } else {
                next
            };
            (
                StatusCode::SEE_OTHER,
                [
                    (
                        header::SET_COOKIE,
                        format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"),
                    ),
                    (header::LOCATION, to),
                ],
            )
                .into_response()
        }
        Err(why) => (
            StatusCode::FORBIDDEN,
            notice("berth: login refused", &why.to_string()),
        )
            .into_response(),
    }
}

/// CPU and memory of one service, summed over its containers.
#[derive(Debug, Default, Serialize)]
pub struct Use {
    pub cpu_percent: f64,
    pub mem_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    /// Whether figures exist on this machine at all.
    pub available: bool,
    /// Why not, in words.
    pub reason: Option<String>,
    pub services: BTreeMap<String, Use>,
}

/// Figures of the running services, from Podman (cgroup v2 only).
pub async fn stats<P: Podman + Clone + 'static>(State(s): State<WebState<P>>) -> Json<Stats> {
    let snap = s.api.engine.snapshots().borrow().clone();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for st in snap.iter().flat_map(|s| s.services.iter()) {
        if matches!(
            st.state,
            berth_proto::State::Running
                | berth_proto::State::Unhealthy
                | berth_proto::State::Starting
        ) {
            for c in &st.containers {
                owner.insert(c.name.clone(), st.name.clone());
            }
        }
    }
    let names: Vec<String> = owner.keys().cloned().collect();
    match s.api.podman.stats(&names).await {
        Ok(list) => {
            let mut services: BTreeMap<String, Use> = BTreeMap::new();
            for c in list {
                if let Some(svc) = owner.get(&c.name) {
                    let u = services.entry(svc.clone()).or_default();
                    u.cpu_percent += c.cpu_percent;
                    u.mem_bytes += c.mem_bytes;
                }
            }
            Json(Stats {
                available: true,
                reason: None,
                services,
            })
        }
        Err(e) => Json(Stats {
            available: false,
            reason: Some(match &e {
                crate::podman::PodmanError::Api { message, .. }
                    if message.contains("cgroup v2") =>
                {
                    format!("not available on this machine: {message} (rootless Podman reads CPU and memory from cgroup v2)")
                }
                _ => format!("not available: {e}"),
            }),
            services: BTreeMap::new(),
        }),
    }
}
