//! What the tray shows, as a pure function of what it knows: the daemon's picture from the
//! event stream, whether the stream is up, and the user's actions in flight. No D-Bus, no
//! sockets, no clock: the edge (`app.rs`) feeds events in and turns [`Entry`] values into
//! dbusmenu items, so every rule here is unit-tested without a bus.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_proto::{Choice, DaemonInfo, Event, ServiceStatus, Snapshot, State, Verb};

/// The longest label, in characters; longer text ends with `…` (menus do not wrap).
pub const MAX_LABEL: usize = 72;

/// Whether the tray hears the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Asking for the event stream; no answer yet.
    Connecting,
    /// The stream is open (the picture arrives as its first event).
    Up,
    /// No daemon: `None` when it simply does not answer, else what went wrong.
    Down { error: Option<String> },
}

/// The one-glance verdict the icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Everything the user turned on runs (or nothing is on).
    Fine,
    /// Something is on its way: pulling, starting, stopping, or an action in flight.
    Busy,
    /// Something failed or is unhealthy, or the catalog or Podman has a problem.
    Failed,
    /// berth is not running (or not reached yet).
    Down,
}

/// What a menu item does when clicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A verb on a service (the enable checkbox, Restart).
    Act { service: String, verb: Verb },
    /// The default browser on a service's stable URL.
    Open { url: String },
    /// The local web page's log view of a service, logged in.
    Logs { service: String },
    /// The local web page, logged in.
    Dashboard,
}

/// One item of the menu model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Text that is not clickable.
    Label(String),
    Separator,
    /// A service: its line, with its own items in a submenu.
    Service {
        label: String,
        items: Vec<Entry>,
    },
    Check {
        label: String,
        checked: bool,
        enabled: bool,
        action: Action,
    },
    Button {
        label: String,
        enabled: bool,
        action: Action,
    },
}

/// Everything the tray knows.
#[derive(Debug, Clone)]
pub struct View {
    pub link: Link,
    /// The daemon's picture, kept in step with the event stream; `None` until the first
    /// snapshot and while the daemon is away.
    pub picture: Option<Snapshot>,
    /// Actions the user asked for that have not come back yet, by service.
    pub busy: BTreeMap<String, Verb>,
    /// Why the last action on a service did not work, by service.
    pub notes: BTreeMap<String, String>,
    /// Why the last action that concerns no single service (the dashboard) did not work.
    pub note: Option<String>,
}

impl Default for View {
    fn default() -> Self {
        View {
            link: Link::Connecting,
            picture: None,
            busy: BTreeMap::new(),
            notes: BTreeMap::new(),
            note: None,
        }
    }
}

impl View {
    /// The event stream is open.
    pub fn connected(&mut self) {
        self.link = Link::Up;
    }

    /// One event of the stream; whether anything the tray shows may have changed.
    pub fn event(&mut self, e: &Event) -> bool {
        self.link = Link::Up;
        match (&mut self.picture, e) {
            (_, Event::Snapshot { daemon, services }) => {
                self.picture = Some(Snapshot {
                    taken_at: 0,
                    daemon: daemon.clone(),
                    services: services.clone(),
                });
                true
            }
            (Some(p), e) => {
                let services = p.apply(e);
                services || matches!(e, Event::Daemon { .. })
            }
            // Nothing to apply a change to before the first snapshot.
            (None, _) => false,
        }
    }

    /// The daemon went away (or never answered): forget its picture, which would only be
    /// stale, and what was in flight.
    pub fn lost(&mut self, error: Option<String>) {
        self.link = Link::Down { error };
        self.picture = None;
        self.busy.clear();
    }

    /// The user asked for `verb` on `service`.
    pub fn started(&mut self, service: &str, verb: Verb) {
        self.busy.insert(service.to_string(), verb);
        self.notes.remove(service);
    }

    /// The daemon answered an action: `Err` with its words when it did not work.
    pub fn finished(&mut self, service: &str, outcome: Result<(), String>) {
        self.busy.remove(service);
        match outcome {
            Ok(()) => self.notes.remove(service),
            Err(e) => self.notes.insert(service.to_string(), e),
        };
    }

    fn daemon(&self) -> Option<&DaemonInfo> {
        self.picture.as_ref().map(|p| &p.daemon)
    }

    fn services(&self) -> &[ServiceStatus] {
        self.picture.as_ref().map_or(&[], |p| &p.services)
    }

    pub fn health(&self) -> Health {
        if self.link != Link::Up || self.picture.is_none() {
            return Health::Down;
        }
        let daemon_trouble = self
            .daemon()
            .is_some_and(|d| d.catalog_error.is_some() || d.podman_error.is_some());
        let failing = self
            .services()
            .iter()
            .any(|s| matches!(s.state, State::Failed | State::Unhealthy));
        if daemon_trouble || failing || !self.notes.is_empty() {
            return Health::Failed;
        }
        let moving = self
            .services()
            .iter()
            .any(|s| matches!(s.state, State::Waiting | State::Starting | State::Stopping));
        if moving || !self.busy.is_empty() {
            Health::Busy
        } else {
            Health::Fine
        }
    }

    /// One line that sums up the services (`2 running, 1 failed`).
    pub fn summary(&self) -> String {
        match &self.link {
            Link::Connecting => return "connecting to berth…".into(),
            Link::Down { .. } => return "berth is not running".into(),
            Link::Up if self.picture.is_none() => return "connecting to berth…".into(),
            Link::Up => {}
        }
        let mut counts: BTreeMap<usize, (State, usize)> = BTreeMap::new();
        for s in self.services() {
            if s.state == State::Off {
                continue;
            }
            let order = SUMMARY_ORDER
                .iter()
                .position(|x| *x == s.state)
                .unwrap_or(SUMMARY_ORDER.len());
            counts.entry(order).or_insert((s.state, 0)).1 += 1;
        }
        if counts.is_empty() {
            return "no service is on".into();
        }
        counts
            .values()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The tooltip: a title and a few lines of text.
    pub fn tooltip(&self) -> (String, String) {
        let mut lines = vec![self.summary()];
        for s in self.services() {
            if matches!(s.state, State::Failed | State::Unhealthy) {
                lines.push(clip(&format!(
                    "{} {}: {}",
                    glyph(s.state),
                    s.name,
                    s.reason.as_deref().unwrap_or(s.state.as_str())
                )));
            }
        }
        if let Some(d) = self.daemon() {
            lines.extend(daemon_problems(d));
        }
        ("berth".into(), lines.join("\n"))
    }

    /// The menu.
    pub fn menu(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let picture = match (&self.link, &self.picture) {
            (Link::Up, Some(p)) => p,
            (Link::Down { error }, _) => {
                out.push(Entry::Label("berth is not running".into()));
                out.push(Entry::Label(match error {
                    Some(e) => clip(e),
                    None => "start it: systemctl --user start berth".into(),
                }));
                out.push(Entry::Label("the tray reconnects by itself".into()));
                return out;
            }
            _ => {
                out.push(Entry::Label("connecting to berth…".into()));
                return out;
            }
        };
        out.push(Entry::Label(clip(&format!("berth: {}", self.summary()))));
        for problem in daemon_problems(&picture.daemon) {
            out.push(Entry::Label(problem));
        }
        if let Some(n) = &self.note {
            out.push(Entry::Label(clip(&format!("✖ {n}"))));
        }
        out.push(Entry::Separator);
        if picture.services.is_empty() {
            out.push(Entry::Label("the catalog has no services".into()));
        }
        let web = picture.daemon.web_url.is_some();
        for s in &picture.services {
            out.push(self.service(s, web));
        }
        out.push(Entry::Separator);
        out.push(match (&picture.daemon.web_url, &picture.daemon.web_error) {
            (Some(_), _) => Entry::Button {
                label: "Open dashboard".into(),
                enabled: true,
                action: Action::Dashboard,
            },
            (None, why) => Entry::Button {
                label: clip(&format!(
                    "Open dashboard ({})",
                    why.as_deref().unwrap_or("the web page is off")
                )),
                enabled: false,
                action: Action::Dashboard,
            },
        });
        out
    }

    fn service(&self, s: &ServiceStatus, web: bool) -> Entry {
        let busy = self.busy.get(&s.name).copied();
        let mut line = format!("{} {} — {}", glyph(s.state), s.name, s.state);
        if let Some(r) = &s.reason {
            line.push_str(": ");
            line.push_str(r);
        }
        if let Some(v) = busy {
            line.push_str(&format!(" ({}…)", doing(v)));
        }
        if s.locked {
            line.push_str(" [required]");
        }
        let mut items = Vec::new();
        if let Some(r) = &s.reason {
            items.push(Entry::Label(clip(r)));
        }
        if let Some(h) = &s.hint {
            items.push(Entry::Label(clip(&format!("fix: {h}"))));
        }
        if let Some(n) = self.notes.get(&s.name) {
            items.push(Entry::Label(clip(&format!("✖ {n}"))));
        }
        let on = s.choice != Choice::Off;
        let (check_label, check_enabled) = match (busy, s.locked) {
            (Some(v), _) => (format!("{}…", capital(doing(v))), false),
            (None, true) => ("Enabled (required by policy)".to_string(), false),
            (None, false) => ("Enabled".to_string(), true),
        };
        items.push(Entry::Check {
            label: check_label,
            checked: on,
            enabled: check_enabled,
            action: Action::Act {
                service: s.name.clone(),
                verb: if on { Verb::Disable } else { Verb::Enable },
            },
        });
        let reachable = !matches!(s.state, State::Off | State::Stopped);
        let several = s.ports.len() > 1;
        for p in &s.ports {
            let label = if several {
                format!("Open {} — {}", p.name, p.url)
            } else {
                format!("Open {}", p.url)
            };
            items.push(Entry::Button {
                label: clip(&label),
                enabled: reachable,
                action: Action::Open { url: p.url.clone() },
            });
        }
        items.push(Entry::Button {
            label: "Restart".into(),
            enabled: on && busy.is_none(),
            action: Action::Act {
                service: s.name.clone(),
                verb: Verb::Restart,
            },
        });
        items.push(Entry::Button {
            label: if web {
                "Logs".into()
            } else {
                "Logs (the web page is off)".into()
            },
            enabled: web,
            action: Action::Logs {
                service: s.name.clone(),
            },
        });
        Entry::Service {
            label: clip(&line),
            items,
        }
    }
}

/// The order of states in the summary line: what needs the user's eye first.
const SUMMARY_ORDER: [State; 8] = [
    State::Failed,
    State::Unhealthy,
    State::Waiting,
    State::Starting,
    State::Stopping,
    State::Running,
    State::Idle,
    State::Stopped,
];

fn daemon_problems(d: &DaemonInfo) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = &d.catalog_error {
        out.push(clip(&format!("⚠ catalog: {e}")));
    }
    if let Some(e) = &d.podman_error {
        out.push(clip(&format!("⚠ Podman: {e}")));
    }
    out
}

/// The state's glyph: shape as well as word, so the menu reads at a glance.
pub fn glyph(s: State) -> &'static str {
    match s {
        State::Running => "●",
        State::Unhealthy => "▲",
        State::Failed => "✖",
        State::Waiting => "◔",
        State::Starting => "◐",
        State::Stopping => "◑",
        State::Idle => "◌",
        State::Stopped => "■",
        State::Off => "○",
    }
}

fn doing(v: Verb) -> &'static str {
    match v {
        Verb::Enable => "enabling",
        Verb::Disable => "disabling",
        Verb::Start => "starting",
        Verb::Stop => "stopping",
        Verb::Restart => "restarting",
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `s` on one line of at most [`MAX_LABEL`] characters.
pub fn clip(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_LABEL {
        return one_line;
    }
    let mut out: String = one_line.chars().take(MAX_LABEL - 1).collect();
    out.push('…');
    out
}

/// A label as dbusmenu reads it: `_` marks the access key, so a literal one is doubled.
pub fn dbusmenu_label(s: &str) -> String {
    s.replace('_', "__")
}

/// Delays between attempts to reach the daemon: quick at first (a restart under systemd
/// takes about 2 s), then at most every few seconds — never a busy loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// The daemon answered: the next loss starts quick again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::{Counters, PortStatus};

    fn daemon() -> DaemonInfo {
        DaemonInfo {
            version: "0.1.0".into(),
            pid: 7,
            podman_version: Some("4.3.1".into()),
            catalog_services: 2,
            catalog_serial: String::new(),
            catalog_error: None,
            catalog_in_force: None,
            podman_error: None,
            web_url: Some("http://127.0.0.1:7380/".into()),
            web_error: None,
            counters: Counters::default(),
            gpus: Vec::new(),
            remote_catalog: None,
            remote_services: Vec::new(),
            backup_schedule: None,
            config_error: None,
        }
    }

    fn svc(name: &str, choice: Choice, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            description: String::new(),
            choice,
            state,
            reason: None,
            failure: None,
            hint: None,
            unit: format!("berth-{name}.service"),
            unit_state: "absent".into(),
            ports: vec![PortStatus {
                name: "http".into(),
                port: 18080,
                url: "http://127.0.0.1:18080/".into(),
            }],
            containers: Vec::new(),
            restarts: 0,
            since: None,
            probe: None,
            locked: false,
            note: None,
            update: None,
        }
    }

    fn view(services: Vec<ServiceStatus>) -> View {
        let mut v = View::default();
        v.connected();
        assert!(v.event(&Event::Snapshot {
            daemon: daemon(),
            services,
        }));
        v
    }

    fn service_entry<'a>(menu: &'a [Entry], name: &str) -> (&'a str, &'a [Entry]) {
        menu.iter()
            .find_map(|e| match e {
                Entry::Service { label, items } if label.contains(&format!(" {name} ")) => {
                    Some((label.as_str(), items.as_slice()))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no entry for {name} in {menu:#?}"))
    }

    fn check(items: &[Entry]) -> (&str, bool, bool, &Action) {
        items
            .iter()
            .find_map(|e| match e {
                Entry::Check {
                    label,
                    checked,
                    enabled,
                    action,
                } => Some((label.as_str(), *checked, *enabled, action)),
                _ => None,
            })
            .expect("a checkbox")
    }

    fn button<'a>(items: &'a [Entry], prefix: &str) -> (&'a str, bool, &'a Action) {
        items
            .iter()
            .find_map(|e| match e {
                Entry::Button {
                    label,
                    enabled,
                    action,
                } if label.starts_with(prefix) => Some((label.as_str(), *enabled, action)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no button {prefix:?} in {items:#?}"))
    }

    #[test]
    fn before_the_daemon_answers_the_menu_says_so_and_the_icon_is_down() {
        let v = View::default();
        assert_eq!(v.health(), Health::Down);
        assert_eq!(v.menu(), vec![Entry::Label("connecting to berth…".into())]);
        // Open but no snapshot yet: still nothing to show.
        let mut v = View::default();
        v.connected();
        assert_eq!(v.health(), Health::Down);
        assert!(!v.event(&Event::Removed {
            service: "x".into(),
            at: 1
        }));
    }

    #[test]
    fn a_lost_daemon_says_berth_is_not_running_and_forgets_the_stale_picture() {
        let mut v = view(vec![svc("demo", Choice::On, State::Running)]);
        v.started("demo", Verb::Restart);
        v.lost(None);
        assert_eq!(v.health(), Health::Down);
        assert!(v.busy.is_empty(), "nothing is in flight without a daemon");
        let menu = v.menu();
        assert_eq!(menu[0], Entry::Label("berth is not running".into()));
        assert!(
            !menu.iter().any(|e| matches!(e, Entry::Service { .. })),
            "no stale services: {menu:?}"
        );
        assert_eq!(v.summary(), "berth is not running");
        // Another reason than "no answer" is shown as it is.
        v.lost(Some("talking to the berth daemon failed".into()));
        assert_eq!(
            v.menu()[1],
            Entry::Label("talking to the berth daemon failed".into())
        );
        // It comes back: the first snapshot brings everything back.
        v.connected();
        v.event(&Event::Snapshot {
            daemon: daemon(),
            services: vec![svc("demo", Choice::On, State::Running)],
        });
        assert_eq!(v.health(), Health::Fine);
        service_entry(&v.menu(), "demo");
    }

    #[test]
    fn health_is_failed_over_busy_over_fine() {
        let mut v = view(vec![
            svc("a", Choice::On, State::Running),
            svc("b", Choice::Off, State::Off),
            svc("c", Choice::On, State::Idle),
        ]);
        assert_eq!(v.health(), Health::Fine);
        let mut starting = svc("b", Choice::On, State::Starting);
        starting.reason = Some("pulling localhost/x:1".into());
        v.event(&Event::Service {
            status: starting,
            from: Some(State::Off),
            at: 2,
        });
        assert_eq!(v.health(), Health::Busy);
        v.event(&Event::Service {
            status: svc("a", Choice::On, State::Unhealthy),
            from: Some(State::Running),
            at: 3,
        });
        assert_eq!(v.health(), Health::Failed);
        // An action in flight alone is busy; an action that failed needs the user's eye.
        let mut v = view(vec![svc("a", Choice::Off, State::Off)]);
        v.started("a", Verb::Enable);
        assert_eq!(v.health(), Health::Busy);
        v.finished("a", Err("cannot pull x".into()));
        assert_eq!(v.health(), Health::Failed);
        v.started("a", Verb::Enable);
        v.finished("a", Ok(()));
        assert_eq!(v.health(), Health::Fine);
    }

    #[test]
    fn a_broken_catalog_or_podman_shows_as_failed_with_its_words() {
        let mut v = view(vec![svc("a", Choice::On, State::Running)]);
        let mut d = daemon();
        d.podman_error = Some("podman.socket is not running".into());
        assert!(v.event(&Event::Daemon { daemon: d }));
        assert_eq!(v.health(), Health::Failed);
        assert!(v.menu().contains(&Entry::Label(
            "⚠ Podman: podman.socket is not running".into()
        )));
        assert!(v.tooltip().1.contains("podman.socket is not running"));
    }

    #[test]
    fn every_service_has_its_glyph_state_reason_and_actions() {
        let mut failed = svc("demo", Choice::On, State::Failed);
        failed.reason = Some("cannot pull localhost/x:1: not found".into());
        failed.hint = Some("berth start demo".into());
        let v = view(vec![failed, svc("off-one", Choice::Off, State::Off)]);
        let menu = v.menu();
        assert_eq!(
            menu[0],
            Entry::Label("berth: 1 failed".into()),
            "off services are not counted"
        );
        let (label, items) = service_entry(&menu, "demo");
        assert_eq!(
            label,
            "✖ demo — failed: cannot pull localhost/x:1: not found"
        );
        assert_eq!(
            items[0],
            Entry::Label("cannot pull localhost/x:1: not found".into())
        );
        assert_eq!(items[1], Entry::Label("fix: berth start demo".into()));
        let (l, checked, enabled, action) = check(items);
        assert_eq!((l, checked, enabled), ("Enabled", true, true));
        assert_eq!(
            action,
            &Action::Act {
                service: "demo".into(),
                verb: Verb::Disable
            }
        );
        let (l, enabled, action) = button(items, "Open");
        assert_eq!(l, "Open http://127.0.0.1:18080/");
        assert!(
            enabled,
            "a failed service's port explains itself (503 page)"
        );
        assert_eq!(
            action,
            &Action::Open {
                url: "http://127.0.0.1:18080/".into()
            }
        );
        assert!(button(items, "Restart").1);
        let (_, enabled, action) = button(items, "Logs");
        assert!(enabled);
        assert_eq!(
            action,
            &Action::Logs {
                service: "demo".into()
            }
        );

        let (label, items) = service_entry(&menu, "off-one");
        assert_eq!(label, "○ off-one — off");
        let (_, checked, enabled, action) = check(items);
        assert!(!checked && enabled);
        assert_eq!(
            action,
            &Action::Act {
                service: "off-one".into(),
                verb: Verb::Enable
            }
        );
        assert!(
            !button(items, "Open").1,
            "nothing listens for an off service"
        );
        assert!(!button(items, "Restart").1);
        assert_eq!(
            menu.last(),
            Some(&Entry::Button {
                label: "Open dashboard".into(),
                enabled: true,
                action: Action::Dashboard
            })
        );
    }

    #[test]
    fn a_service_policy_requires_is_locked() {
        let mut s = svc("demo", Choice::On, State::Running);
        s.locked = true;
        let v = view(vec![s]);
        let menu = v.menu();
        let (label, items) = service_entry(&menu, "demo");
        assert!(label.ends_with("[required]"), "{label}");
        let (l, checked, enabled, _) = check(items);
        assert_eq!(
            (l, checked, enabled),
            ("Enabled (required by policy)", true, false)
        );
        assert!(
            button(items, "Restart").1,
            "a required service may be restarted"
        );
    }

    #[test]
    fn an_action_in_flight_shows_and_its_failure_stays_until_the_next_one() {
        let mut v = view(vec![svc("demo", Choice::Off, State::Off)]);
        v.started("demo", Verb::Enable);
        let menu = v.menu();
        let (label, items) = service_entry(&menu, "demo");
        assert_eq!(label, "○ demo — off (enabling…)");
        let (l, _, enabled, _) = check(items);
        assert_eq!(
            (l, enabled),
            ("Enabling…", false),
            "no second click meanwhile"
        );
        v.finished("demo", Err("cannot pull localhost/x:1".into()));
        let menu = v.menu();
        let (label, items) = service_entry(&menu, "demo");
        assert_eq!(label, "○ demo — off");
        assert!(items.contains(&Entry::Label("✖ cannot pull localhost/x:1".into())));
        v.started("demo", Verb::Enable);
        assert!(v.notes.is_empty());
    }

    #[test]
    fn without_the_web_page_logs_and_dashboard_say_why() {
        let mut v = view(vec![svc("demo", Choice::On, State::Running)]);
        let mut d = daemon();
        d.web_url = None;
        d.web_error = Some("cannot listen on 127.0.0.1:7380: taken".into());
        v.event(&Event::Daemon { daemon: d });
        let menu = v.menu();
        let (_, items) = service_entry(&menu, "demo");
        let (l, enabled, _) = button(items, "Logs");
        assert_eq!((l, enabled), ("Logs (the web page is off)", false));
        assert_eq!(
            menu.last(),
            Some(&Entry::Button {
                label: "Open dashboard (cannot listen on 127.0.0.1:7380: taken)".into(),
                enabled: false,
                action: Action::Dashboard
            })
        );
    }

    #[test]
    fn services_with_several_ports_get_one_open_item_each() {
        let mut s = svc("qdrant", Choice::On, State::Running);
        s.ports.push(PortStatus {
            name: "grpc".into(),
            port: 6334,
            url: "http://127.0.0.1:6334/".into(),
        });
        let v = view(vec![s]);
        let menu = v.menu();
        let (_, items) = service_entry(&menu, "qdrant");
        assert_eq!(
            button(items, "Open http").0,
            "Open http — http://127.0.0.1:18080/"
        );
        assert_eq!(
            button(items, "Open grpc").0,
            "Open grpc — http://127.0.0.1:6334/"
        );
    }

    #[test]
    fn the_summary_puts_trouble_first() {
        let v = view(vec![
            svc("a", Choice::On, State::Running),
            svc("b", Choice::On, State::Running),
            svc("c", Choice::On, State::Failed),
            svc("d", Choice::On, State::Starting),
        ]);
        assert_eq!(v.summary(), "1 failed, 1 starting, 2 running");
        assert_eq!(view(vec![]).summary(), "no service is on");
        let (_, text) = v.tooltip();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn labels_are_one_short_line_and_underscores_survive_dbusmenu() {
        let long = "x".repeat(200);
        let c = clip(&format!("a\nb{long}"));
        assert_eq!(c.chars().count(), MAX_LABEL);
        assert!(c.starts_with("a b") && c.ends_with('…'));
        assert_eq!(clip("short"), "short");
        assert_eq!(dbusmenu_label("no_such_image"), "no__such__image");
    }

    #[test]
    fn the_backoff_grows_to_a_ceiling_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Backoff::FIRST);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().expect("delays"), Backoff::MAX);
        assert!(
            delays.iter().all(|d| *d >= Backoff::FIRST),
            "never a busy loop"
        );
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }
}
