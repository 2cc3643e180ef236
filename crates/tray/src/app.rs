//! The edges of the tray: the StatusNotifierItem and its dbusmenu (through ksni, on the
//! session bus), berth's event stream (through berth-client), and the programs it opens.
//!
//! One task follows the event stream and feeds the [`View`]; clicks arrive on ksni's task,
//! mark the view and hand an [`Action`] to the task that carries it out. Nothing here polls:
//! while the daemon is up and quiet the process sleeps in `epoll`; while it is away the tray
//! retries with a [`Backoff`].

use std::process::Stdio;

use berth_client::{Client, ClientError};
use berth_proto::Verb;
use ksni::menu::{CheckmarkItem, StandardItem, SubMenu};
use ksni::{MenuItem, TrayMethods as _};
use tokio::sync::mpsc;

use crate::icon;
use crate::model::{dbusmenu_label, Action, Backoff, Entry, Health, View};

/// The tray as ksni sees it: the view, and where clicks go.
#[derive(Debug)]
pub struct TrayApp {
    pub view: View,
    actions: mpsc::UnboundedSender<Action>,
}

impl TrayApp {
    fn ask(&mut self, action: Action) {
        if let Action::Act { service, verb } = &action {
            self.view.started(service, *verb);
        }
        if self.actions.send(action).is_err() {
            // Only while the process is ending: the task that carries actions out is gone.
            self.view.note = Some("berth-tray is stopping".into());
        }
    }
}

fn ksni_icons(h: Health) -> Vec<ksni::Icon> {
    icon::pixmaps(h)
        .into_iter()
        .map(|p| ksni::Icon {
            width: p.size as i32,
            height: p.size as i32,
            data: p.argb,
        })
        .collect()
}

fn item(e: &Entry) -> MenuItem<TrayApp> {
    match e {
        Entry::Label(text) => StandardItem {
            label: dbusmenu_label(text),
            enabled: false,
            ..Default::default()
        }
        .into(),
        Entry::Separator => MenuItem::Separator,
        Entry::Service { label, items } => SubMenu {
            label: dbusmenu_label(label),
            submenu: items.iter().map(item).collect(),
            ..Default::default()
        }
        .into(),
        Entry::Check {
            label,
            checked,
            enabled,
            action,
        } => {
            let a = action.clone();
            CheckmarkItem {
                label: dbusmenu_label(label),
                checked: *checked,
                enabled: *enabled,
                activate: Box::new(move |t: &mut TrayApp| t.ask(a.clone())),
                ..Default::default()
            }
            .into()
        }
        Entry::Button {
            label,
            enabled,
            action,
        } => {
            let a = action.clone();
            StandardItem {
                label: dbusmenu_label(label),
                enabled: *enabled,
                activate: Box::new(move |t: &mut TrayApp| t.ask(a.clone())),
                ..Default::default()
            }
            .into()
        }
    }
}

impl ksni::Tray for TrayApp {
    // A left click opens the menu too: the menu is the whole tray.
    const MENU_ON_ACTIVATE: bool = true;

    fn id(&self) -> String {
        "berth".into()
    }

    fn title(&self) -> String {
        "berth".into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::SystemServices
    }

    fn status(&self) -> ksni::Status {
        match self.view.health() {
            Health::Failed => ksni::Status::NeedsAttention,
            _ => ksni::Status::Active,
        }
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        ksni_icons(self.view.health())
    }

    fn attention_icon_pixmap(&self) -> Vec<ksni::Icon> {
        ksni_icons(Health::Failed)
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        let (title, description) = self.view.tooltip();
        ksni::ToolTip {
            title,
            description,
            ..Default::default()
        }
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        self.view.menu().iter().map(item).collect()
    }

    fn watcher_online(&self) {
        eprintln!("berth-tray: the tray host (StatusNotifierWatcher) is here");
    }

    fn watcher_offline(&self, reason: ksni::OfflineReason) -> bool {
        // Keep running: the panel may start after the tray, or restart; ksni registers the
        // item again as soon as a watcher appears.
        eprintln!(
            "berth-tray: no tray host (StatusNotifierWatcher) yet: {reason:?}; waiting for one"
        );
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrayError {
    #[error("cannot put the tray icon on the session bus")]
    Spawn(#[source] ksni::Error),
    #[error("the tray left the session bus")]
    Gone,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client: Client,
    /// The program that opens URLs (`xdg-open`).
    pub opener: String,
}

/// Runs the tray until the session bus goes away.
pub async fn run(settings: Settings) -> Result<(), TrayError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut backoff = Backoff::new();
    let handle = loop {
        let tray = TrayApp {
            view: View::default(),
            actions: tx.clone(),
        };
        // Registered even without a watcher yet (a panel starting after the session's
        // autostart entries): ksni registers again when one appears.
        match tray.assume_sni_available(true).spawn().await {
            Ok(h) => break h,
            // A watcher that owns its name but does not serve its object yet (a panel
            // starting) refuses the registration: try again. No session bus at all is fatal.
            Err(ksni::Error::Watcher(e)) => {
                eprintln!("berth-tray: the tray host refused the icon ({e}); trying again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(TrayError::Spawn(e)),
        }
    };
    drop(tx);
    let follower = tokio::spawn(follow(settings.client.clone(), handle.clone()));
    while let Some(action) = rx.recv().await {
        tokio::spawn(perform(action, settings.clone(), handle.clone()));
        if handle.is_closed() {
            break;
        }
    }
    follower.abort();
    Err(TrayError::Gone)
}

/// Why the daemon is not there, for the menu: `None` for plain "not running".
fn down_reason(e: &ClientError) -> Option<String> {
    match e {
        ClientError::NotRunning(_) => None,
        other => Some(chain(other)),
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Follows the daemon's event stream for as long as the tray lives, reconnecting after the
/// daemon stops or restarts.
async fn follow(client: Client, handle: ksni::Handle<TrayApp>) {
    let mut backoff = Backoff::new();
    let mut was_up = None;
    loop {
        let lost = match client.events().await {
            Ok(mut events) => {
                if handle.update(|t| t.view.connected()).await.is_none() {
                    return;
                }
                let mut lost = None;
                while let Some(e) = events.next().await {
                    match e {
                        Ok(e) => {
                            backoff.reset();
                            if was_up != Some(true) {
                                eprintln!("berth-tray: following berth's events");
                                was_up = Some(true);
                            }
                            let changed = handle.update(|t| t.view.event(&e)).await;
                            if changed.is_none() {
                                return;
                            }
                        }
                        Err(e) => {
                            lost = down_reason(&e);
                            break;
                        }
                    }
                }
                lost
            }
            Err(e) => down_reason(&e),
        };
        if was_up != Some(false) {
            eprintln!(
                "berth-tray: berth is not running{}; retrying",
                lost.as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            );
            was_up = Some(false);
        }
        if handle.update(|t| t.view.lost(lost)).await.is_none() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Carries out one click.
async fn perform(action: Action, settings: Settings, handle: ksni::Handle<TrayApp>) {
    match action {
        Action::Act { service, verb } => {
            let outcome = act(&settings.client, &service, verb).await;
            handle.update(|t| t.view.finished(&service, outcome)).await;
        }
        Action::Open { url } => {
            let outcome = open(&settings.opener, &url).await;
            handle.update(|t| t.view.note = outcome.err()).await;
        }
        Action::Logs { service } => {
            let outcome = login_and_open(&settings, &format!("/services/{service}/logs")).await;
            handle.update(|t| t.view.note = outcome.err()).await;
        }
        Action::Dashboard => {
            let outcome = login_and_open(&settings, "/").await;
            handle.update(|t| t.view.note = outcome.err()).await;
        }
    }
}

async fn act(client: &Client, service: &str, verb: Verb) -> Result<(), String> {
    match client.act(service, verb).await {
        Ok(report) => match report.errors_of(service) {
            Some(e) => Err(format!("{verb} {service}: {e}")),
            None => Ok(()),
        },
        Err(e) => Err(format!("{verb} {service}: {}", chain(&e))),
    }
}

/// A one-time login link to the page at `path`, opened in the browser.
async fn login_and_open(settings: &Settings, path: &str) -> Result<(), String> {
    let url = settings
        .client
        .web_session(path)
        .await
        .map_err(|e| format!("cannot open the web page: {}", chain(&e)))?;
    open(&settings.opener, &url).await
}

async fn open(opener: &str, url: &str) -> Result<(), String> {
    let status = tokio::process::Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot run {opener}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{opener} failed ({status})"))
    }
}
