//! Desktop notifications: tells the user when a service fails, turns unhealthy or runs again,
//! through `org.freedesktop.Notifications` on the session bus (the Desktop Notifications
//! specification).
//!
//! What to say is decided by [`Tracker`], which is pure: it compares each picture of the
//! services with what it saw and what it already told the user, and debounces flapping
//! services. [`run`] keeps that picture from the engine's event stream (every transition the
//! engine sees, however short) and makes the D-Bus calls, so a slow or missing notification
//! server never holds up the engine.
//!
//! Limits: without a notification server (a headless VM, CI) nothing is shown and one log line
//! says so; every later notification checks again whether a server has appeared, which costs
//! one bus round trip that fails fast.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info};
use zbus_systemd::zbus;

use berth_proto::{Event, ServiceStatus, Snapshot, State};

/// At most one notification per service in this window; recoveries after a failure pass.
pub const DEBOUNCE: Duration = Duration::from_secs(60);
/// How long one call to the notification server may take before berth gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bodies longer than this are cut: a bubble is not a log viewer.
const BODY_MAX_CHARS: usize = 400;

const BUS_NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
const INTERFACE: &str = "org.freedesktop.Notifications";
const APP_NAME: &str = "berth";

/// The spec's `urgency` hint (a byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    Low = 0,
    Normal = 1,
    Critical = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Failed,
    Unhealthy,
    Recovered,
    /// An image update did not become healthy and was rolled back.
    RolledBack,
}

/// One bubble to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The service it is about; `None` for the startup summary of several failed services.
    pub service: Option<String>,
    pub kind: Kind,
    pub urgency: Urgency,
    pub summary: String,
    /// Plain text; [`run`] escapes it for servers that read markup.
    pub body: String,
}

impl Notification {
    fn about(st: &ServiceStatus, kind: Kind) -> Notification {
        let name = &st.name;
        let reason = || {
            st.reason
                .clone()
                .unwrap_or_else(|| format!("see `berth status {name}`"))
        };
        let (urgency, summary, body) = match kind {
            Kind::Failed => (Urgency::Critical, format!("{name} failed"), reason()),
            Kind::Unhealthy => (Urgency::Normal, format!("{name} is unhealthy"), reason()),
            Kind::RolledBack => (
                Urgency::Normal,
                format!("{name}: update rolled back"),
                format!(
                    "{}; it runs the previous image again",
                    st.update
                        .as_ref()
                        .and_then(|u| u.reason.clone())
                        .unwrap_or_else(|| "the new image did not become healthy".into())
                ),
            ),
            Kind::Recovered => (
                Urgency::Low,
                format!("{name} is running again"),
                st.ports.first().map(|p| p.url.clone()).unwrap_or_default(),
            ),
        };
        Notification {
            service: Some(name.clone()),
            kind,
            urgency,
            summary,
            body: clip(&body),
        }
    }
}

/// What the user was last told about a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Shown {
    /// Nothing, or that it runs again: nothing open.
    #[default]
    Nothing,
    Failed,
    Unhealthy,
    /// Unhealthy when berth started: known, but not worth a bubble at login.
    QuietUnhealthy,
}

#[derive(Debug, Default)]
struct Seen {
    shown: Shown,
    /// When the last rollback this tracker saw happened (unix seconds).
    rolled_back_at: Option<u64>,
    /// When the last notification that counts for the debounce went out.
    last: Option<Instant>,
}

/// Decides the notifications due from a stream of snapshots. Pure: the clock is passed in.
///
/// It compares states, not reasons: a failed service whose reason changes stays one bubble.
/// Transitional states (starting, waiting, stopping) are passed over; what counts is where
/// a service lands. A service the user stops or disables is forgotten without a bubble.
#[derive(Debug, Default)]
pub struct Tracker {
    started: bool,
    services: BTreeMap<String, Seen>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// The notifications due now that `snap` is the newest state.
    pub fn update(&mut self, snap: &Snapshot, now: Instant) -> Vec<Notification> {
        let first = !self.started;
        self.started = true;
        self.services
            .retain(|name, _| snap.services.iter().any(|s| &s.name == name));
        if first {
            return self.startup(snap, now);
        }
        let mut out = Vec::new();
        for st in &snap.services {
            let seen = self.services.entry(st.name.clone()).or_default();
            // A rollback is news once, whatever the state says (the old image usually runs
            // fine again); not debounced: it does not flap.
            if let Some(at) = rolled_back_at(st) {
                if seen.rolled_back_at != Some(at) {
                    seen.rolled_back_at = Some(at);
                    out.push(Notification::about(st, Kind::RolledBack));
                }
            }
            let due = match (st.state, seen.shown) {
                (State::Failed, Shown::Failed) => None,
                (State::Failed, _) => Some(Kind::Failed),
                (State::Unhealthy, Shown::Unhealthy | Shown::QuietUnhealthy) => None,
                (State::Unhealthy, _) => Some(Kind::Unhealthy),
                (State::Running, Shown::Failed | Shown::Unhealthy) => Some(Kind::Recovered),
                (State::Running, Shown::QuietUnhealthy) | (State::Off | State::Stopped, _) => {
                    seen.shown = Shown::Nothing;
                    None
                }
                // An idle on-demand service starts at the next connection; what it does then
                // is the news.
                (
                    State::Running
                    | State::Starting
                    | State::Waiting
                    | State::Stopping
                    | State::Idle,
                    _,
                ) => None,
            };
            let Some(kind) = due else { continue };
            let after_failure = kind == Kind::Recovered && seen.shown == Shown::Failed;
            if !after_failure {
                // Held back, not dropped: a later snapshot still finds it due.
                if seen.last.is_some_and(|t| now.duration_since(t) < DEBOUNCE) {
                    continue;
                }
                seen.last = Some(now);
            }
            seen.shown = match kind {
                Kind::Failed => Shown::Failed,
                Kind::Unhealthy => Shown::Unhealthy,
                Kind::Recovered | Kind::RolledBack => Shown::Nothing,
            };
            out.push(Notification::about(st, kind));
        }
        out
    }

    /// At login nobody needs a bubble per running service; only failures are worth one,
    /// and several of them share one bubble.
    fn startup(&mut self, snap: &Snapshot, now: Instant) -> Vec<Notification> {
        let mut failed = Vec::new();
        for st in &snap.services {
            let seen = self.services.entry(st.name.clone()).or_default();
            // A rollback from before this login was told then.
            seen.rolled_back_at = rolled_back_at(st);
            match st.state {
                State::Failed => {
                    seen.shown = Shown::Failed;
                    seen.last = Some(now);
                    failed.push(st);
                }
                State::Unhealthy => seen.shown = Shown::QuietUnhealthy,
                _ => {}
            }
        }
        match failed.as_slice() {
            [] => Vec::new(),
            [one] => vec![Notification::about(one, Kind::Failed)],
            several => vec![Notification {
                service: None,
                kind: Kind::Failed,
                urgency: Urgency::Critical,
                summary: format!("{} services failed", several.len()),
                body: clip(
                    &several
                        .iter()
                        .map(|s| format!("{}: {}", s.name, s.reason.as_deref().unwrap_or("failed")))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
            }],
        }
    }
}

/// When `st` was last rolled back, while its update says so.
fn rolled_back_at(st: &ServiceStatus) -> Option<u64> {
    st.update
        .as_ref()
        .filter(|u| u.state == berth_proto::UpdateState::RolledBack)
        .map(|u| u.at)
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(BODY_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The spec lets servers read the body as a small markup language; text must not be taken
/// for tags there.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The arguments of `Notify` (`susssasa{sv}i`).
pub type NotifyArgs<'a> = (
    &'a str,
    u32,
    &'a str,
    &'a str,
    &'a str,
    Vec<&'a str>,
    HashMap<&'a str, zbus::zvariant::Value<'a>>,
    i32,
);

/// `Notify` for `n`, replacing the bubble `replaces` (0: a new one), with the server's default
/// timeout.
pub fn notify_args<'a>(n: &'a Notification, body: &'a str, replaces: u32) -> NotifyArgs<'a> {
    let hints = HashMap::from([("urgency", zbus::zvariant::Value::U8(n.urgency as u8))]);
    (
        APP_NAME,
        replaces,
        "",
        &n.summary,
        body,
        Vec::new(),
        hints,
        -1,
    )
}

/// Why a call did not reach a server.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no notification server on the session bus")]
    NoServer,
    #[error("the notification server did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Bus(zbus::Error),
}

impl From<zbus::Error> for CallError {
    fn from(e: zbus::Error) -> Self {
        // zbus 5 hands the bus's error reply over as `MethodError` with its D-Bus name.
        let no_server = match &e {
            zbus::Error::FDO(f) => matches!(
                **f,
                zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
            ),
            zbus::Error::MethodError(name, ..) => matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ),
            _ => false,
        };
        if no_server {
            CallError::NoServer
        } else {
            CallError::Bus(e)
        }
    }
}

/// The client side of the notification server, with what it learned about it.
#[derive(Debug)]
struct Desktop {
    conn: zbus::Connection,
    /// Whether the server reads markup in bodies; `None` until it answered once.
    markup: Option<bool>,
    /// The bubble of each service, so the next one replaces it.
    ids: BTreeMap<String, u32>,
    /// Set after a failed call, so that failing again stays out of the log.
    quiet: bool,
}

impl Desktop {
    async fn call<B>(&self, method: &str, body: &B) -> Result<zbus::Message, CallError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self
            .conn
            .call_method(Some(BUS_NAME), PATH, Some(INTERFACE), method, body);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn send(&mut self, n: &Notification) {
        match self.try_send(n).await {
            Ok(()) => {
                if std::mem::take(&mut self.quiet) {
                    info!("a desktop notification server answers again");
                }
            }
            Err(err) => {
                // The next server may be another program: start afresh with it.
                self.markup = None;
                self.ids.clear();
                debug!(summary = %n.summary, %err, "notification not shown");
                if !std::mem::replace(&mut self.quiet, true) {
                    info!(%err, "desktop notifications are not shown until a notification server answers");
                }
            }
        }
    }

    async fn try_send(&mut self, n: &Notification) -> Result<(), CallError> {
        // Asked once per server; also the cheap check that a server is there at all.
        let markup = match self.markup {
            Some(m) => m,
            None => {
                let caps: Vec<String> = match self.call("GetCapabilities", &()).await {
                    Ok(reply) => reply.body().deserialize().unwrap_or_default(),
                    Err(CallError::Bus(zbus::Error::FDO(_) | zbus::Error::MethodError(..))) => {
                        // A server that refuses the question still shows bubbles.
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                };
                let m = caps.iter().any(|c| c == "body-markup");
                self.markup = Some(m);
                m
            }
        };
        let body = if markup {
            escape_markup(&n.body)
        } else {
            n.body.clone()
        };
        let replaces = n
            .service
            .as_ref()
            .and_then(|s| self.ids.get(s))
            .copied()
            .unwrap_or(0);
        let reply = self
            .call("Notify", &notify_args(n, &body, replaces))
            .await?;
        let id: u32 = reply.body().deserialize()?;
        debug!(summary = %n.summary, id, "notification shown");
        if let Some(service) = &n.service {
            self.ids.insert(service.clone(), id);
        }
        Ok(())
    }
}

/// Shows notifications for every transition the engine publishes until it is gone. The
/// picture starts from the engine's first snapshot and follows the event stream.
pub async fn run(
    conn: zbus::Connection,
    mut events: broadcast::Receiver<Event>,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
) {
    let mut tracker = Tracker::new();
    let mut desktop = Desktop {
        conn,
        markup: None,
        ids: BTreeMap::new(),
        quiet: false,
    };
    // The first snapshot is the picture at login: failures then make one summary bubble.
    let first = match snapshots.wait_for(Option::is_some).await {
        Ok(s) => s.clone(),
        Err(_) => return,
    };
    let Some(first) = first else { return };
    let mut picture = (*first).clone();
    for n in tracker.update(&picture, Instant::now()) {
        desktop.send(&n).await;
    }
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind: take the newest snapshot as the picture.
                match snapshots.borrow().clone() {
                    Some(s) => Event::Snapshot {
                        daemon: s.daemon.clone(),
                        services: s.services.clone(),
                    },
                    None => continue,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if picture.apply(&e) {
            for n in tracker.update(&picture, Instant::now()) {
                desktop.send(&n).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::{Counters, DaemonInfo, PortStatus};
    use zbus::zvariant::Type as _;

    fn svc(name: &str, state: State, reason: Option<&str>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            description: String::new(),
            choice: berth_proto::Choice::On,
            state,
            reason: reason.map(str::to_string),
            failure: None,
            hint: None,
            locked: false,
            note: None,
            update: None,
            unit: format!("berth-{name}.service"),
            unit_state: String::new(),
            ports: vec![PortStatus {
                name: "http".into(),
                port: 5678,
                url: "http://127.0.0.1:5678/".into(),
            }],
            containers: Vec::new(),
            restarts: 0,
            since: None,
            probe: None,
        }
    }

    fn snap(services: &[(&str, State)]) -> Snapshot {
        Snapshot {
            taken_at: 0,
            daemon: DaemonInfo {
                version: "0".into(),
                pid: 1,
                podman_version: None,
                catalog_services: services.len(),
                catalog_serial: String::new(),
                catalog_error: None,
                catalog_in_force: None,
                config_error: None,
                podman_error: None,
                web_url: None,
                web_error: None,
                gpus: Vec::new(),
                remote_catalog: None,
                remote_services: Vec::new(),
                backup_schedule: None,
                counters: Counters::default(),
            },
            services: services
                .iter()
                .map(|(n, s)| {
                    let reason = match s {
                        State::Failed => Some("crashed 5 times in a row; restarts stopped"),
                        State::Unhealthy => Some("probe fails: HTTP 500 from /"),
                        _ => None,
                    };
                    svc(n, *s, reason)
                })
                .collect(),
        }
    }

    /// A tracker past its startup snapshot, with `services` as they were then.
    fn started(services: &[(&str, State)], t0: Instant) -> Tracker {
        let mut t = Tracker::new();
        let _startup_is_tested_on_its_own = t.update(&snap(services), t0);
        t
    }

    fn kinds(ns: &[Notification]) -> Vec<(Option<&str>, Kind)> {
        ns.iter().map(|n| (n.service.as_deref(), n.kind)).collect()
    }

    #[test]
    fn startup_is_quiet_except_for_failed_services() {
        let t0 = Instant::now();
        let mut t = Tracker::new();
        let quiet = snap(&[
            ("n8n", State::Running),
            ("qdrant", State::Unhealthy),
            ("ollama", State::Starting),
        ]);
        assert_eq!(t.update(&quiet, t0), Vec::new());

        let mut t = Tracker::new();
        let one = t.update(
            &snap(&[("n8n", State::Failed), ("qdrant", State::Running)]),
            t0,
        );
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].summary, "n8n failed");
        assert_eq!(one[0].urgency, Urgency::Critical);
        assert_eq!(one[0].body, "crashed 5 times in a row; restarts stopped");

        let mut t = Tracker::new();
        let several = t.update(
            &snap(&[
                ("n8n", State::Failed),
                ("qdrant", State::Failed),
                ("searxng", State::Failed),
            ]),
            t0,
        );
        assert_eq!(several.len(), 1, "one summary: {several:?}");
        assert_eq!(several[0].service, None);
        assert_eq!(several[0].summary, "3 services failed");
        assert!(several[0].body.starts_with("n8n: crashed 5 times"));
        assert_eq!(several[0].body.lines().count(), 3);
        // They count as told: still failed is no news, running again is.
        let t1 = t0 + Duration::from_secs(10);
        let again = snap(&[
            ("n8n", State::Failed),
            ("qdrant", State::Running),
            ("searxng", State::Failed),
        ]);
        assert_eq!(
            kinds(&t.update(&again, t1)),
            vec![(Some("qdrant"), Kind::Recovered)]
        );
    }

    #[test]
    fn failure_then_recovery_replaces_it_without_waiting_for_the_debounce() {
        let t0 = Instant::now();
        let mut t = started(&[("n8n", State::Running)], t0);
        let t1 = t0 + Duration::from_secs(5);
        let failed = t.update(&snap(&[("n8n", State::Failed)]), t1);
        assert_eq!(kinds(&failed), vec![(Some("n8n"), Kind::Failed)]);
        assert_eq!(failed[0].urgency, Urgency::Critical);
        assert_eq!(failed[0].body, "crashed 5 times in a row; restarts stopped");
        // Still failed, and on the way back: no news.
        assert_eq!(t.update(&snap(&[("n8n", State::Failed)]), t1), Vec::new());
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(t.update(&snap(&[("n8n", State::Waiting)]), t2), Vec::new());
        assert_eq!(t.update(&snap(&[("n8n", State::Starting)]), t2), Vec::new());
        let back = t.update(&snap(&[("n8n", State::Running)]), t2);
        assert_eq!(kinds(&back), vec![(Some("n8n"), Kind::Recovered)]);
        assert_eq!(back[0].urgency, Urgency::Low);
        assert_eq!(back[0].summary, "n8n is running again");
        assert_eq!(back[0].body, "http://127.0.0.1:5678/");
        assert_eq!(t.update(&snap(&[("n8n", State::Running)]), t2), Vec::new());
    }

    #[test]
    fn crash_loop_on_the_way_to_failed_says_nothing_until_it_fails() {
        let t0 = Instant::now();
        let mut t = started(&[("x", State::Off)], t0);
        for (i, s) in [
            State::Waiting,
            State::Starting,
            State::Running,
            State::Starting,
        ]
        .into_iter()
        .enumerate()
        {
            let at = t0 + Duration::from_secs(i as u64 * 5);
            assert_eq!(t.update(&snap(&[("x", s)]), at), Vec::new(), "{s:?}");
        }
        let at = t0 + Duration::from_secs(30);
        assert_eq!(
            kinds(&t.update(&snap(&[("x", State::Failed)]), at)),
            vec![(Some("x"), Kind::Failed)]
        );
    }

    #[test]
    fn unhealthy_is_normal_urgency_with_the_reason() {
        let t0 = Instant::now();
        let mut t = started(&[("qdrant", State::Running)], t0);
        let n = t.update(&snap(&[("qdrant", State::Unhealthy)]), t0);
        assert_eq!(kinds(&n), vec![(Some("qdrant"), Kind::Unhealthy)]);
        assert_eq!(n[0].urgency, Urgency::Normal);
        assert_eq!(n[0].summary, "qdrant is unhealthy");
        assert_eq!(n[0].body, "probe fails: HTTP 500 from /");
    }

    #[test]
    fn flapping_gives_one_notification_per_minute_and_the_last_word_after_it() {
        let t0 = Instant::now();
        let mut t = started(&[("q", State::Running)], t0);
        let mut sent = Vec::new();
        // Unhealthy and back every 10 s for 50 s.
        for i in 0..6u64 {
            let s = if i % 2 == 0 {
                State::Unhealthy
            } else {
                State::Running
            };
            sent.extend(t.update(&snap(&[("q", s)]), t0 + Duration::from_secs(i * 10)));
        }
        assert_eq!(kinds(&sent), vec![(Some("q"), Kind::Unhealthy)]);
        // Healthy at 50 s; the held-back recovery goes out with the first snapshot after 60 s.
        let late = t.update(
            &snap(&[("q", State::Running)]),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(kinds(&late), vec![(Some("q"), Kind::Recovered)]);
        assert_eq!(
            t.update(
                &snap(&[("q", State::Running)]),
                t0 + Duration::from_secs(70)
            ),
            Vec::new()
        );
    }

    #[test]
    fn a_rollback_is_told_once_with_its_reason() {
        let t0 = Instant::now();
        let mut t = started(&[("web", State::Running)], t0);
        let mut snap = snap(&[("web", State::Running)]);
        snap.services[0].update = Some(berth_proto::UpdateStatus {
            state: berth_proto::UpdateState::RolledBack,
            from: vec!["sha256:aa".into()],
            to: vec!["localhost/web:2".into()],
            reason: Some("not healthy within 6s of the swap (unhealthy)".into()),
            at: 1_700_000_100,
            rollbacks: 1,
        });
        let ns = t.update(&snap, t0 + Duration::from_secs(1));
        assert_eq!(kinds(&ns), [(Some("web"), Kind::RolledBack)]);
        assert_eq!(ns[0].summary, "web: update rolled back");
        assert!(
            ns[0].body.starts_with("not healthy within 6s"),
            "{:?}",
            ns[0]
        );
        assert!(
            t.update(&snap, t0 + Duration::from_secs(2)).is_empty(),
            "once"
        );
    }

    #[test]
    fn debounce_is_per_service() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Running), ("b", State::Running)], t0);
        let first = t.update(&snap(&[("a", State::Unhealthy), ("b", State::Running)]), t0);
        assert_eq!(kinds(&first), vec![(Some("a"), Kind::Unhealthy)]);
        let t1 = t0 + Duration::from_secs(1);
        let second = t.update(&snap(&[("a", State::Unhealthy), ("b", State::Failed)]), t1);
        assert_eq!(kinds(&second), vec![(Some("b"), Kind::Failed)]);
    }

    #[test]
    fn a_failure_soon_after_a_warning_waits_for_the_window() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Running)], t0);
        assert_eq!(t.update(&snap(&[("a", State::Unhealthy)]), t0).len(), 1);
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(t.update(&snap(&[("a", State::Failed)]), t1), Vec::new());
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(
            kinds(&t.update(&snap(&[("a", State::Failed)]), t2)),
            vec![(Some("a"), Kind::Failed)]
        );
    }

    #[test]
    fn recovery_after_a_warning_is_debounced_but_after_a_failure_is_not() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Running), ("b", State::Running)], t0);
        let t1 = t0 + Duration::from_secs(1);
        let bad = t.update(&snap(&[("a", State::Unhealthy), ("b", State::Failed)]), t1);
        assert_eq!(bad.len(), 2);
        let t2 = t1 + Duration::from_secs(5);
        let good = t.update(&snap(&[("a", State::Running), ("b", State::Running)]), t2);
        assert_eq!(kinds(&good), vec![(Some("b"), Kind::Recovered)]);
    }

    #[test]
    fn unhealthy_at_startup_is_never_announced_nor_its_recovery() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Unhealthy)], t0);
        let t1 = t0 + Duration::from_secs(70);
        assert_eq!(t.update(&snap(&[("a", State::Unhealthy)]), t1), Vec::new());
        assert_eq!(t.update(&snap(&[("a", State::Running)]), t1), Vec::new());
        // Once it was seen well, a new problem is news.
        assert_eq!(
            kinds(&t.update(&snap(&[("a", State::Unhealthy)]), t1)),
            vec![(Some("a"), Kind::Unhealthy)]
        );
    }

    #[test]
    fn stopping_or_disabling_a_failed_service_is_the_users_doing() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Failed)], t0);
        let t1 = t0 + Duration::from_secs(70);
        assert_eq!(t.update(&snap(&[("a", State::Stopping)]), t1), Vec::new());
        assert_eq!(t.update(&snap(&[("a", State::Off)]), t1), Vec::new());
        assert_eq!(t.update(&snap(&[("a", State::Running)]), t1), Vec::new());
    }

    #[test]
    fn an_idle_service_keeps_its_bubble_until_it_runs_again() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Running)], t0);
        assert_eq!(t.update(&snap(&[("a", State::Failed)]), t0).len(), 1);
        assert_eq!(t.update(&snap(&[("a", State::Idle)]), t0), Vec::new());
        assert_eq!(
            kinds(&t.update(&snap(&[("a", State::Running)]), t0)),
            vec![(Some("a"), Kind::Recovered)]
        );
        assert_eq!(t.update(&snap(&[("a", State::Idle)]), t0), Vec::new());
    }

    #[test]
    fn services_gone_from_the_catalog_are_forgotten() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Failed)], t0);
        assert_eq!(t.update(&snap(&[]), t0), Vec::new());
        // Back with the same name: a new service, its failure is news at once.
        assert_eq!(
            kinds(&t.update(&snap(&[("a", State::Failed)]), t0)),
            vec![(Some("a"), Kind::Failed)]
        );
    }

    #[test]
    fn a_failure_without_a_reason_points_to_status() {
        let t0 = Instant::now();
        let mut t = started(&[("a", State::Running)], t0);
        let mut s = snap(&[("a", State::Failed)]);
        s.services[0].reason = None;
        assert_eq!(t.update(&s, t0)[0].body, "see `berth status a`");
    }

    #[test]
    fn long_bodies_are_clipped_and_markup_is_escaped() {
        let long = "é".repeat(BODY_MAX_CHARS + 10);
        let c = clip(&long);
        assert_eq!(c.chars().count(), BODY_MAX_CHARS + 1);
        assert!(c.ends_with('…'));
        assert_eq!(clip("short"), "short");
        assert_eq!(
            escape_markup("exit <3> & more"),
            "exit &lt;3&gt; &amp; more"
        );
    }

    #[test]
    fn notify_arguments_follow_the_spec() {
        let n = Notification::about(&svc("n8n", State::Failed, Some("boom")), Kind::Failed);
        let args = notify_args(&n, &n.body, 7);
        assert_eq!(NotifyArgs::SIGNATURE.to_string(), "(susssasa{sv}i)");
        assert_eq!(args.0, "berth");
        assert_eq!(args.1, 7);
        assert_eq!((args.2, args.3, args.4), ("", "n8n failed", "boom"));
        assert!(args.5.is_empty());
        assert_eq!(args.6.get("urgency"), Some(&zbus::zvariant::Value::U8(2)));
        assert_eq!(args.7, -1);
    }
}
