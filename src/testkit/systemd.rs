use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use zbus_systemd::zbus;

use super::{lock, MemFiles};
use crate::systemd::{JobOutcome, Systemd, SystemdError, UnitState};

/// A call that changed something, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start(String),
    Stop(String),
    Restart(String),
    ResetFailed(String),
    Reload,
}

#[derive(Debug, Clone)]
struct Unit {
    active: String,
    sub: String,
    result: String,
    restarts: u32,
    /// The file's content when systemd last loaded it.
    loaded: Option<String>,
}

impl Unit {
    fn new(loaded: Option<String>) -> Self {
        Unit {
            active: "inactive".into(),
            sub: "dead".into(),
            result: "success".into(),
            restarts: 0,
            loaded,
        }
    }
}

#[derive(Debug)]
struct Sys {
    units: BTreeMap<String, Unit>,
    unit_dir: PathBuf,
    files: MemFiles,
    calls: Vec<Call>,
    watchers: Vec<Arc<Notify>>,
    /// Starts of these units end failed (`exit-code`).
    failing: BTreeSet<String>,
    /// While set, starts wait for it before they finish (an apply caught in the middle).
    gate: Option<Arc<Notify>>,
    /// `podman.socket`: `None` for a machine without that unit.
    podman_socket: Option<bool>,
    /// Calls fail as if the manager were gone.
    gone: bool,
    /// How many times each unit was started, kept when systemd forgets the unit: each start
    /// is a new container, a new `StartedAt`.
    starts: BTreeMap<String, u64>,
    /// Starts of these units wait for the notifier before they finish.
    gates: BTreeMap<String, Arc<Notify>>,
}

/// A systemd user manager in memory. Units are loaded from the unit files in `unit_dir` of a
/// [`MemFiles`] as systemd would load them; starting a pod's main unit starts its container
/// units (`BindsTo=`), stopping it stops them.
#[derive(Debug, Clone)]
pub struct MemSystemd(Arc<Mutex<Sys>>);

fn failure(what: &str) -> SystemdError {
    SystemdError::Call {
        what: what.to_string(),
        source: Box::new(zbus::Error::Failure(format!("{what} failed in this test"))),
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
        None => pattern == name,
    }
}

/// The container units of the pod whose main unit is `main` (`berth-x.service` →
/// `berth-x--*.service`).
fn members(main: &str) -> Option<String> {
    main.strip_suffix(".service").map(|s| format!("{s}--"))
}

impl MemSystemd {
    pub fn new(files: &MemFiles, unit_dir: &Path) -> Self {
        MemSystemd(Arc::new(Mutex::new(Sys {
            units: BTreeMap::new(),
            unit_dir: unit_dir.to_path_buf(),
            files: files.clone(),
            calls: Vec::new(),
            watchers: Vec::new(),
            failing: BTreeSet::new(),
            gate: None,
            podman_socket: Some(true),
            gone: false,
            starts: BTreeMap::new(),
            gates: BTreeMap::new(),
        })))
    }

    /// Every call that changed something, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.0).calls.clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.0).calls.clear();
    }

    /// `ActiveState` of a unit (`inactive` for one systemd does not know).
    pub fn active(&self, unit: &str) -> String {
        lock(&self.0)
            .units
            .get(unit)
            .map_or_else(|| "inactive".into(), |u| u.active.clone())
    }

    /// The unit file as systemd last loaded it.
    pub fn loaded(&self, unit: &str) -> Option<String> {
        lock(&self.0).units.get(unit).and_then(|u| u.loaded.clone())
    }

    /// How many times a unit was started (each start is a new container).
    pub fn starts(&self, unit: &str) -> u64 {
        lock(&self.0).starts.get(unit).copied().unwrap_or(0)
    }

    /// Holds starts of `unit` until the returned notifier is notified (or dropped by
    /// [`MemSystemd::release_starts`]).
    pub fn hold_start_of(&self, unit: &str) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        lock(&self.0).gates.insert(unit.to_string(), gate.clone());
        gate
    }

    /// Makes starts of `unit` fail (or succeed again).
    pub fn fail_starts(&self, unit: &str, fail: bool) {
        let mut s = lock(&self.0);
        if fail {
            s.failing.insert(unit.to_string());
        } else {
            s.failing.remove(unit);
        }
    }

    /// A running unit's process crashed `times` times and systemd gave up restarting it.
    pub fn crash_loop(&self, unit: &str, times: u32) {
        let mut s = lock(&self.0);
        let u = s
            .units
            .entry(unit.to_string())
            .or_insert_with(|| Unit::new(None));
        u.active = "failed".into();
        u.sub = "failed".into();
        u.result = "exit-code".into();
        u.restarts = times.saturating_sub(1);
        if let Some(prefix) = members(unit) {
            for (n, m) in s.units.iter_mut() {
                if n.starts_with(&prefix) {
                    m.active = "inactive".into();
                    m.sub = "dead".into();
                }
            }
        }
        Self::changed(&s);
    }

    /// Holds every start until the returned notifier is notified.
    pub fn hold_starts(&self) -> Arc<Notify> {
        let gate = Arc::new(Notify::new());
        lock(&self.0).gate = Some(gate.clone());
        gate
    }

    /// Lets held starts go, and holds no more.
    pub fn release_starts(&self) {
        let mut s = lock(&self.0);
        if let Some(g) = s.gate.take() {
            g.notify_waiters();
        }
        for (_, g) in std::mem::take(&mut s.gates) {
            g.notify_waiters();
        }
    }

    /// `podman.socket` active or stopped; `None` for no such unit.
    pub fn set_podman_socket(&self, active: Option<bool>) {
        let mut s = lock(&self.0);
        s.podman_socket = active;
        Self::changed(&s);
    }

    /// Every call fails (or works again).
    pub fn set_gone(&self, gone: bool) {
        lock(&self.0).gone = gone;
    }

    fn changed(s: &Sys) {
        for w in &s.watchers {
            w.notify_one();
        }
    }

    fn check(&self, what: &str) -> Result<(), SystemdError> {
        if lock(&self.0).gone {
            Err(failure(what))
        } else {
            Ok(())
        }
    }

    fn file(s: &Sys, unit: &str) -> Option<String> {
        s.files.text(s.unit_dir.join(unit))
    }

    fn set(s: &mut Sys, unit: &str, active: &str, sub: &str) {
        let loaded = Self::file(s, unit);
        let u = s
            .units
            .entry(unit.to_string())
            .or_insert_with(|| Unit::new(loaded));
        u.active = active.into();
        u.sub = sub.into();
        if active == "active" {
            u.result = "success".into();
            u.restarts = 0;
            *s.starts.entry(unit.to_string()).or_default() += 1;
        }
    }

    /// Starts `unit` (and its pod members): `Ok(None)` when it ran, `Ok(Some(result))` when
    /// the job ended otherwise.
    fn start_now(&self, unit: &str, restart: bool) -> Result<Option<String>, SystemdError> {
        let mut s = lock(&self.0);
        let known = s.units.get(unit).is_some_and(|u| u.loaded.is_some());
        if !known && Self::file(&s, unit).is_none() {
            return Err(SystemdError::Call {
                what: format!("start {unit}"),
                source: Box::new(zbus::Error::Failure(format!("Unit {unit} not found."))),
            });
        }
        if s.failing.contains(unit) {
            Self::set(&mut s, unit, "failed", "failed");
            if let Some(u) = s.units.get_mut(unit) {
                u.result = "exit-code".into();
            }
            Self::changed(&s);
            return Ok(Some("failed".into()));
        }
        if restart {
            Self::set(&mut s, unit, "inactive", "dead");
        }
        Self::set(&mut s, unit, "active", "running");
        if let Some(prefix) = members(unit) {
            let dir = s.unit_dir.clone();
            let pod: Vec<String> = s
                .files
                .below(&dir)
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .filter(|n| n.starts_with(&prefix))
                .collect();
            for m in pod {
                let running = s.units.get(&m).is_some_and(|u| u.active == "active");
                if restart || !running {
                    Self::set(&mut s, &m, "active", "running");
                }
            }
        }
        Self::changed(&s);
        Ok(None)
    }
}

impl Systemd for MemSystemd {
    async fn list_units(&self, patterns: &[&str]) -> Result<Vec<UnitState>, SystemdError> {
        self.check("list units")?;
        let s = lock(&self.0);
        let mut out: Vec<UnitState> = s
            .units
            .iter()
            .filter(|(n, _)| patterns.iter().any(|p| glob(p, n)))
            .map(|(n, u)| UnitState {
                name: n.clone(),
                load: "loaded".into(),
                active: u.active.clone(),
                sub: u.sub.clone(),
            })
            .collect();
        if let Some(active) = s.podman_socket {
            if patterns.iter().any(|p| glob(p, "podman.socket")) {
                out.push(UnitState {
                    name: "podman.socket".into(),
                    load: "loaded".into(),
                    active: if active { "active" } else { "inactive" }.into(),
                    sub: if active { "listening" } else { "dead" }.into(),
                });
            }
        }
        Ok(out)
    }

    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, SystemdError> {
        let patterns = [unit];
        Ok(self.list_units(&patterns).await?.into_iter().next())
    }

    async fn needs_reload(&self, unit: &str) -> Result<bool, SystemdError> {
        self.check("read NeedDaemonReload")?;
        let s = lock(&self.0);
        let file = Self::file(&s, unit);
        Ok(s.units.get(unit).is_some_and(|u| u.loaded != file))
    }

    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.check("daemon-reload")?;
        let mut s = lock(&self.0);
        s.calls.push(Call::Reload);
        let names: Vec<String> = s.units.keys().cloned().collect();
        for n in names {
            let file = Self::file(&s, &n);
            let gone = file.is_none() && s.units.get(&n).is_some_and(|u| u.active == "inactive");
            if gone {
                s.units.remove(&n);
            } else if let Some(u) = s.units.get_mut(&n) {
                u.loaded = file;
            }
        }
        Ok(())
    }

    async fn start(&self, unit: &str, _wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.check("start")?;
        let gate = {
            let mut s = lock(&self.0);
            s.calls.push(Call::Start(unit.into()));
            s.gates.get(unit).or(s.gate.as_ref()).cloned()
        };
        if let Some(g) = gate {
            g.notified().await;
        }
        Ok(match self.start_now(unit, false)? {
            None => JobOutcome::Finished("done".into()),
            Some(r) => JobOutcome::Finished(r),
        })
    }

    async fn stop(&self, unit: &str, _wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.check("stop")?;
        let mut s = lock(&self.0);
        s.calls.push(Call::Stop(unit.into()));
        Self::set(&mut s, unit, "inactive", "dead");
        if let Some(prefix) = members(unit) {
            let pod: Vec<String> = s
                .units
                .keys()
                .filter(|n| n.starts_with(&prefix))
                .cloned()
                .collect();
            for m in pod {
                Self::set(&mut s, &m, "inactive", "dead");
            }
        }
        Self::changed(&s);
        Ok(JobOutcome::Finished("done".into()))
    }

    async fn restart(&self, unit: &str, _wait: Duration) -> Result<JobOutcome, SystemdError> {
        self.check("restart")?;
        lock(&self.0).calls.push(Call::Restart(unit.into()));
        Ok(match self.start_now(unit, true)? {
            None => JobOutcome::Finished("done".into()),
            Some(r) => JobOutcome::Finished(r),
        })
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.check("reset-failed")?;
        let mut s = lock(&self.0);
        s.calls.push(Call::ResetFailed(unit.into()));
        if let Some(u) = s.units.get_mut(unit) {
            if u.active == "failed" {
                u.active = "inactive".into();
                u.sub = "dead".into();
                u.result = "success".into();
                u.restarts = 0;
            }
        }
        Ok(())
    }

    async fn version(&self) -> Result<String, SystemdError> {
        Ok("257".into())
    }

    async fn service_result(&self, unit: &str) -> Result<(String, u32), SystemdError> {
        self.check("read Result")?;
        let s = lock(&self.0);
        Ok(s.units
            .get(unit)
            .map_or(("success".into(), 0), |u| (u.result.clone(), u.restarts)))
    }

    async fn exec_main_status(&self, unit: &str) -> Result<i32, SystemdError> {
        self.check("read ExecMainStatus")?;
        let s = lock(&self.0);
        Ok(s.units
            .get(unit)
            .map_or(0, |u| i32::from(u.result == "exit-code")))
    }

    async fn watch_units(&self, changed: Arc<Notify>) -> Result<(), SystemdError> {
        lock(&self.0).watchers.push(changed);
        std::future::pending().await
    }
}
