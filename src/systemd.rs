//! The systemd user manager over D-Bus: the one place berth talks to systemd.
//!
//! Methods used exist in systemd 249 (Ubuntu 22.04). After a start or stop, berth waits for the
//! job's `JobRemoved` signal (bounded) and then reads state fresh: cached property values can
//! lag behind the signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::Notify;
use zbus::zvariant::OwnedObjectPath;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};
use zbus_systemd::zbus;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the systemd user manager on the session bus (is this a user session with DBUS_SESSION_BUS_ADDRESS set?)")]
    Connect(#[source] Box<zbus::Error>),
    #[error("systemd: {what}")]
    Call {
        what: String,
        // Boxed: zbus's error is large, and this one travels through every engine result.
        #[source]
        source: Box<zbus::Error>,
    },
}

fn call(what: impl Into<String>) -> impl FnOnce(zbus::Error) -> SystemdError {
    let what = what.into();
    move |source| SystemdError::Call {
        what,
        source: Box::new(source),
    }
}

fn connect(e: zbus::Error) -> SystemdError {
    SystemdError::Connect(Box::new(e))
}

/// State of one loaded unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitState {
    pub name: String,
    pub load: String,
    pub active: String,
    pub sub: String,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active" || self.active == "reloading"
    }
}

/// How a start or stop job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum JobOutcome {
    /// `done`, `failed`, `canceled`, `timeout`, `dependency`, `skipped` as systemd says.
    Finished(String),
    /// Still running when berth stopped waiting; a later signal will tell.
    Pending,
}

/// What berth needs of systemd: [`UserManager`] is the real one, `testkit::MemSystemd` the
/// in-memory one the engine's tests use.
pub trait Systemd: Send + Sync {
    /// Loaded units whose names match any of `patterns` (globs, e.g. `berth-*`).
    fn list_units(
        &self,
        patterns: &[&str],
    ) -> impl Future<Output = Result<Vec<UnitState>, SystemdError>> + Send;
    /// One unit's state, loading it if systemd had let go of it (an inactive unit nothing
    /// refers to is not listed); `None` when there is no such unit.
    fn unit_state(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<Option<UnitState>, SystemdError>> + Send;
    /// Whether the unit's file changed since systemd loaded it.
    fn needs_reload(&self, unit: &str) -> impl Future<Output = Result<bool, SystemdError>> + Send;
    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;
    fn start(
        &self,
        unit: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<JobOutcome, SystemdError>> + Send;
    fn stop(
        &self,
        unit: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<JobOutcome, SystemdError>> + Send;
    fn restart(
        &self,
        unit: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<JobOutcome, SystemdError>> + Send;
    fn reset_failed(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The manager's version string, e.g. `252.38-1~deb12u1`.
    fn version(&self) -> impl Future<Output = Result<String, SystemdError>> + Send;
    /// `Result` of a service unit (`success`, `exit-code`, `start-limit-hit`, …) and its restarts.
    fn service_result(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<(String, u32), SystemdError>> + Send;
    /// `ExecMainStatus` of a service unit: the exit status of its last main process (the
    /// health gate's timeout codes, see [`crate::gate`]).
    fn exec_main_status(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<i32, SystemdError>> + Send;
    /// Notifies `changed` whenever a berth unit or `podman.socket` changes state, until the
    /// manager goes away. `changed` is a [`Notify`]: the watch never waits for the engine.
    fn watch_units(
        &self,
        changed: Arc<Notify>,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
}

/// The real user manager.
#[derive(Debug, Clone)]
pub struct UserManager {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl UserManager {
    pub async fn connect() -> Result<Self, SystemdError> {
        // A call that systemd never answers must not hold the engine forever: systemd answers
        // at once (jobs are waited for separately, bounded), so 30 s means something is wrong.
        let conn = zbus::connection::Builder::session()
            .map_err(connect)?
            .method_timeout(Duration::from_secs(30))
            .build()
            .await
            .map_err(connect)?;
        let manager = ManagerProxy::new(&conn).await.map_err(connect)?;
        // Without Subscribe the manager sends no job and unit signals.
        manager.subscribe().await.map_err(call("subscribe"))?;
        Ok(UserManager { conn, manager })
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    async fn job(
        &self,
        what: &str,
        unit: &str,
        wait: Duration,
        f: impl Future<Output = zbus::Result<OwnedObjectPath>>,
    ) -> Result<JobOutcome, SystemdError> {
        // Listen before asking, or a fast job could finish unseen.
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(call(format!("watch jobs for {unit}")))?;
        let job = f.await.map_err(call(format!("{what} {unit}")))?;
        let waited = tokio::time::timeout(wait, async {
            while let Some(sig) = removed.next().await {
                if let Ok(args) = sig.args() {
                    if args.job.as_str() == job.as_str() {
                        return Some(args.result.clone());
                    }
                }
            }
            None
        })
        .await;
        Ok(match waited {
            Ok(Some(result)) => JobOutcome::Finished(result),
            _ => JobOutcome::Pending,
        })
    }

    async fn unit(&self, unit: &str) -> Result<UnitProxy<'static>, SystemdError> {
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .map_err(call(format!("load {unit}")))?;
        UnitProxy::builder(&self.conn)
            .path(path)
            .map_err(call(format!("unit {unit}")))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call(format!("unit {unit}")))
    }
}

impl Systemd for UserManager {
    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitState>, SystemdError> {
        let units = self
            .manager
            .list_units_by_patterns(
                Vec::new(),
                patterns.iter().map(|p| (*p).to_string()).collect(),
            )
            .await
            .map_err(call("list units"))?;
        Ok(units
            .into_iter()
            .map(|u| UnitState {
                name: u.0,
                load: u.2,
                active: u.3,
                sub: u.4,
            })
            .collect())
    }

    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, SystemdError> {
        let u = self.unit(unit).await?;
        let read = |what: &str| call(format!("read {what} of {unit}"));
        let load = u.load_state().await.map_err(read("LoadState"))?;
        if load == "not-found" {
            return Ok(None);
        }
        Ok(Some(UnitState {
            name: unit.to_string(),
            active: u.active_state().await.map_err(read("ActiveState"))?,
            sub: u.sub_state().await.map_err(read("SubState"))?,
            load,
        }))
    }

    async fn needs_reload(&self, unit: &str) -> Result<bool, SystemdError> {
        self.unit(unit)
            .await?
            .need_daemon_reload()
            .await
            .map_err(call(format!("read NeedDaemonReload of {unit}")))
    }

    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager.reload().await.map_err(call("daemon-reload"))
    }

    async fn start(&self, unit: &str, wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.job(
            "start",
            unit,
            wait,
            self.manager.start_unit(unit.to_string(), "replace".into()),
        )
        .await
    }

    async fn stop(&self, unit: &str, wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.job(
            "stop",
            unit,
            wait,
            self.manager.stop_unit(unit.to_string(), "replace".into()),
        )
        .await
    }

    async fn restart(&self, unit: &str, wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.job(
            "restart",
            unit,
            wait,
            self.manager
                .restart_unit(unit.to_string(), "replace".into()),
        )
        .await
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .reset_failed_unit(unit.to_string())
            .await
            .map_err(call(format!("reset-failed {unit}")))
    }

    async fn version(&self) -> Result<String, SystemdError> {
        self.manager.version().await.map_err(call("read Version"))
    }

    async fn service_result(&self, unit: &str) -> Result<(String, u32), SystemdError> {
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .map_err(call(format!("load {unit}")))?;
        let svc = zbus_systemd::systemd1::ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(call(format!("service {unit}")))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call(format!("service {unit}")))?;
        let result = svc
            .result()
            .await
            .map_err(call(format!("read Result of {unit}")))?;
        let restarts = svc.n_restarts().await.unwrap_or(0);
        Ok((result, restarts))
    }

    async fn exec_main_status(&self, unit: &str) -> Result<i32, SystemdError> {
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .map_err(call(format!("load {unit}")))?;
        zbus_systemd::systemd1::ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(call(format!("service {unit}")))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(call(format!("service {unit}")))?
            .exec_main_status()
            .await
            .map_err(call(format!("read ExecMainStatus of {unit}")))
    }

    async fn watch_units(&self, changed: Arc<Notify>) -> Result<(), SystemdError> {
        watch_units(self.conn.clone(), move || changed.notify_one()).await
    }
}

/// The major number of a systemd version string (`252.38-1~deb12u1` → 252); 0 if unreadable.
pub fn major_version(v: &str) -> u32 {
    v.trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Unit names from D-Bus object paths: `/org/freedesktop/systemd1/unit/berth_2ddemo_2eservice`
/// → `berth-demo.service`.
pub fn unit_name_from_path(path: &str) -> Option<String> {
    let enc = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    let bytes = enc.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Calls `changed` for every berth unit whose properties change (state changes, crashes,
/// restarts) until the bus closes. `changed` must return at once: zbus stops reading the
/// connection while any stream's queue is full, which would stall every call on it.
pub async fn watch_units(
    conn: zbus::Connection,
    mut changed: impl FnMut(),
) -> Result<(), SystemdError> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .and_then(|b| b.member("PropertiesChanged"))
        .and_then(|b| b.path_namespace("/org/freedesktop/systemd1/unit"))
        .map_err(call("build match rule"))?
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, Some(64))
        .await
        .map_err(call("watch units"))?;
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { continue };
        let header = msg.header();
        let Some(name) = header.path().and_then(|p| unit_name_from_path(p.as_str())) else {
            continue;
        };
        // `changed` must not wait: this stream has to be read continuously (see its caller).
        if name.starts_with(crate::units::PREFIX) || name == "podman.socket" {
            changed();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(major_version("252.38-1~deb12u1"), 252);
        assert_eq!(major_version("249"), 249);
        assert_eq!(major_version("v255.4"), 255);
        assert_eq!(major_version("odd"), 0);
    }

    #[test]
    fn unit_paths_decode() {
        assert_eq!(
            unit_name_from_path("/org/freedesktop/systemd1/unit/berth_2ddemo_2eservice").as_deref(),
            Some("berth-demo.service")
        );
        assert_eq!(
            unit_name_from_path("/org/freedesktop/systemd1/unit/berth_2dweb_2d_2ddb_2eservice")
                .as_deref(),
            Some("berth-web--db.service")
        );
        assert_eq!(unit_name_from_path("/other"), None);
    }
}
