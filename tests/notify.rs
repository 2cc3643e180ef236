//! Desktop notifications on the real session bus: the test is the notification server (it owns
//! `org.freedesktop.Notifications` and records every `Notify` call), a real daemon the client,
//! and a service that really crashes under the real systemd user manager.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt as _;
use zbus_systemd::zbus;

const NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";

/// One `Notify` call as the server saw it.
#[derive(Debug, Clone)]
struct Shown {
    app_name: String,
    replaces_id: u32,
    summary: String,
    body: String,
    urgency: Option<u8>,
    expire_timeout: i32,
    /// The id the server answered with.
    id: u32,
}

type NotifyCall = (
    String,
    u32,
    String,
    String,
    String,
    Vec<String>,
    HashMap<String, zbus::zvariant::OwnedValue>,
    i32,
);

/// A minimal notification server on the session bus. The `interface` macro needs zbus's
/// `service` feature, which zbus_systemd does not enable; method calls are read from a message
/// stream and answered by hand instead.
struct Server {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
    shown: Arc<Mutex<Vec<Shown>>>,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shown = Arc::new(Mutex::new(Vec::new()));
        let conn = rt.block_on(async {
            let conn = zbus::Connection::session().await.expect("session bus");
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::MethodCall)
                .interface(NAME)
                .and_then(|b| b.path(PATH))
                .expect("rule")
                .build();
            // Listening before owning the name, so that no call is missed.
            let stream = zbus::MessageStream::for_match_rule(rule, &conn, None)
                .await
                .expect("message stream");
            conn.request_name(NAME).await.unwrap_or_else(|e| {
                panic!("cannot own {NAME} on the session bus (another server?): {e}")
            });
            tokio::spawn(serve(conn.clone(), stream, shown.clone()));
            conn
        });
        Server { rt, conn, shown }
    }

    fn shown(&self) -> Vec<Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until a recorded call satisfies `f`.
    fn wait(&self, limit: Duration, f: impl Fn(&Shown) -> bool) -> Option<Shown> {
        wait_for(limit, || self.shown().into_iter().find(|s| f(s)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _name_goes_with_the_connection_anyway = self.rt.block_on(self.conn.release_name(NAME));
    }
}

async fn serve(
    conn: zbus::Connection,
    mut calls: zbus::MessageStream,
    shown: Arc<Mutex<Vec<Shown>>>,
) {
    let mut next_id = 100u32;
    while let Some(Ok(msg)) = calls.next().await {
        let header = msg.header();
        let answered = match header.member().map(|m| m.as_str()) {
            Some("Notify") => match msg.body().deserialize::<NotifyCall>() {
                Ok((
                    app_name,
                    replaces_id,
                    _icon,
                    summary,
                    body,
                    _actions,
                    hints,
                    expire_timeout,
                )) => {
                    let id = if replaces_id != 0 {
                        replaces_id
                    } else {
                        next_id += 1;
                        next_id
                    };
                    let urgency = hints.get("urgency").and_then(|v| match &**v {
                        zbus::zvariant::Value::U8(u) => Some(*u),
                        _ => None,
                    });
                    shown.lock().unwrap_or_else(|p| p.into_inner()).push(Shown {
                        app_name,
                        replaces_id,
                        summary,
                        body,
                        urgency,
                        expire_timeout,
                        id,
                    });
                    conn.reply(&header, &id).await
                }
                Err(e) => {
                    conn.reply_error(
                        &header,
                        "org.freedesktop.DBus.Error.InvalidArgs",
                        &e.to_string(),
                    )
                    .await
                }
            },
            Some("GetCapabilities") => conn.reply(&header, &vec!["body"]).await,
            Some("GetServerInformation") => {
                conn.reply(&header, &("berth-test", "berth", "0", "1.2"))
                    .await
            }
            _ => {
                conn.reply_error(
                    &header,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &"not implemented by the test server",
                )
                .await
            }
        };
        if let Err(e) = answered {
            eprintln!("test notification server: cannot answer: {e}");
        }
    }
}

/// Whether anything owns the notification name on the session bus now.
fn name_has_owner() -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = zbus::Connection::session().await.expect("session bus");
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
        dbus.name_has_owner(NAME.try_into().expect("bus name"))
            .await
            .expect("NameHasOwner")
    })
}

/// A service whose only container exits with status 3 at once, every time systemd starts it.
fn crashing_service(name: &str) -> String {
    format!(
        r#"name = "{name}"
description = "integration test: crashes at once"

[[containers]]
name = "main"
image = "localhost/berth-demo:1"
init = true
command = ["/bin/sh", "-c", "echo boom; exit 3"]
"#
    )
}

#[test]
fn a_crashing_service_is_announced_as_failed_with_its_reason_and_its_recovery_replaces_it() {
    let Some(_serial) = session("notify_fail_recover") else {
        return;
    };
    let server = Server::start();
    let mut w = World::new(&["it-notify-crash"]);
    w.catalog_file("it-notify-crash.toml", &crashing_service("it-notify-crash"));
    w.start_daemon();

    let started = Instant::now();
    // The first start may already fail the enable; the daemon keeps the choice either way.
    let enable = w.berth(&["enable", "it-notify-crash"]);
    eprintln!("enable it-notify-crash: {}", text(&enable).trim());
    let failed = server.wait(Duration::from_secs(90), |s| {
        s.summary == "it-notify-crash failed"
    });
    let took = started.elapsed();
    let Some(failed) = failed else {
        panic!(
            "no failure notification after {took:?}; shown: {:?}\nstatus: {}\ndaemon log:\n{}",
            server.shown(),
            w.status("it-notify-crash"),
            w.daemon_log()
        );
    };
    eprintln!("it-notify-crash reached failed and was announced after {took:?}: {failed:?}");
    assert_eq!(failed.app_name, "berth");
    assert_eq!(failed.urgency, Some(2), "critical: {failed:?}");
    assert_eq!(failed.expire_timeout, -1);
    let status = w.status("it-notify-crash");
    assert_eq!(status["state"], "failed", "{status}");
    let reason = status["reason"]
        .as_str()
        .expect("a failed service has a reason");
    assert!(!failed.body.is_empty(), "{failed:?}");
    assert!(
        reason.starts_with(&failed.body) || failed.body.starts_with(reason),
        "the body carries the reason berth shows:\nbody:   {}\nreason: {reason}",
        failed.body
    );

    // Fixed by the admin: a working catalog entry, then the user starts it again.
    w.catalog_file(
        "it-notify-crash.toml",
        &web_service("it-notify-crash", 18291),
    );
    w.ok(&["reload"]);
    w.ok(&["start", "it-notify-crash"]);
    assert_page(18291);
    let back = server.wait(Duration::from_secs(30), |s| {
        s.summary == "it-notify-crash is running again"
    });
    let Some(back) = back else {
        panic!(
            "no recovery notification; shown: {:?}\ndaemon log:\n{}",
            server.shown(),
            w.daemon_log()
        );
    };
    assert_eq!(back.urgency, Some(0), "low urgency: {back:?}");
    assert_eq!(
        back.replaces_id, failed.id,
        "the recovery replaces the failure bubble"
    );
    assert_eq!(back.body, "http://127.0.0.1:18291/");

    let about: Vec<String> = server
        .shown()
        .into_iter()
        .filter(|s| s.summary.starts_with("it-notify-crash"))
        .map(|s| s.summary)
        .collect();
    assert_eq!(
        about,
        ["it-notify-crash failed", "it-notify-crash is running again"],
        "one bubble per change, nothing in between"
    );
    w.ok(&["disable", "it-notify-crash"]);
}

/// A service whose probe fails (the demo page has no /missing): unhealthy a few seconds
/// after it starts.
fn unhealthy_service(name: &str, port: u16) -> String {
    format!(
        "{}\n[probe]\nport = \"http\"\npath = \"/missing\"\ninterval = \"1s\"\n",
        web_service(name, port)
    )
}

#[test]
fn without_a_notification_server_the_daemon_says_so_once_and_keeps_working() {
    let Some(_serial) = session("notify_no_server") else {
        return;
    };
    assert!(
        !name_has_owner(),
        "this test needs a session bus without a notification server, but {NAME} has an owner"
    );
    let mut w = World::new(&["it-notify-quiet-a", "it-notify-quiet-b"]);
    w.catalog_file(
        "it-notify-quiet-a.toml",
        &unhealthy_service("it-notify-quiet-a", 18292),
    );
    w.catalog_file(
        "it-notify-quiet-b.toml",
        &unhealthy_service("it-notify-quiet-b", 18293),
    );
    // Debug lines of the notifier show each attempt; the daemon inherits the variable.
    std::env::set_var("BERTH_LOG", "info,berth::notify=debug");
    w.start_daemon();
    std::env::remove_var("BERTH_LOG");

    w.ok(&["enable", "it-notify-quiet-a"]);
    w.ok(&["enable", "it-notify-quiet-b"]);
    for name in ["it-notify-quiet-a", "it-notify-quiet-b"] {
        let sick = wait_for(Duration::from_secs(30), || {
            (w.status(name)["state"] == "unhealthy").then_some(())
        });
        assert!(
            sick.is_some(),
            "{name} did not turn unhealthy: {}",
            w.status(name)
        );
    }
    // Two notifications were due; both attempts have to be in the log.
    let log = wait_for(Duration::from_secs(10), || {
        let log = w.daemon_log();
        (log.contains("it-notify-quiet-a is unhealthy")
            && log.contains("it-notify-quiet-b is unhealthy"))
        .then_some(log)
    })
    .unwrap_or_else(|| {
        panic!(
            "the notifier did not try both notifications:\n{}",
            w.daemon_log()
        )
    });
    let said = log
        .lines()
        .filter(|l| l.contains("desktop notifications are not shown"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "said once:\n{log}");
    assert!(said[0].contains("INFO"), "{}", said[0]);
    assert!(said[0].contains("no notification server"), "{}", said[0]);
    eprintln!("the daemon said: {}", said[0]);
    let alarming: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| l.contains("notif"))
        .collect();
    assert!(alarming.is_empty(), "nothing alarming:\n{log}");

    // The daemon still does its job.
    w.ok(&["disable", "it-notify-quiet-a"]);
    w.ok(&["disable", "it-notify-quiet-b"]);
    assert_eq!(w.status("it-notify-quiet-a")["state"], "off");
    w.ok(&["enable", "it-notify-quiet-a"]);
    assert_page(18292);
    w.ok(&["disable", "it-notify-quiet-a"]);
}
