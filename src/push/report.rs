//! The health report sent to the cloud (`berth.health/1`, see docs/push.md), built from an
//! engine [`Snapshot`], and the key that decides whether a snapshot is a change worth a report.
//!
//! Everything here is pure: the identity of the VM and user is read elsewhere and passed in.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use berth_proto::{PortStatus, Snapshot, State};

/// The schema tag every report carries. A receiver rejects (or routes) by it; any change that
/// is not purely additive bumps the number.
pub const SCHEMA: &str = "berth.health/1";

/// Why a report was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentReason {
    /// The daemon started.
    Startup,
    /// The set of (service, state, reason class) changed.
    Change,
    /// Nothing changed for one `interval`.
    Periodic,
    /// The daemon is stopping: the last report until it starts again. The services keep
    /// running without it.
    Shutdown,
}

impl SentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SentReason::Startup => "startup",
            SentReason::Change => "change",
            SentReason::Periodic => "periodic",
            SentReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub seq: u64,
    pub sent_reason: SentReason,
    /// RFC 3339, UTC, whole seconds.
    pub generated_at: String,
    pub vm: Vm,
    pub user: User,
    pub berth: Berth,
    pub services: Vec<Service>,
    pub spool: SpoolInfo,
    /// Every state change since the previous report, oldest first (also those that were
    /// over before this report was made).
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// Transitions left out of `transitions` to keep a report small.
    #[serde(default)]
    pub transitions_dropped: u64,
}

/// One state change of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub service: String,
    pub from: State,
    pub to: State,
    /// Unix seconds.
    pub at: u64,
    pub reason: Option<String>,
}

/// Which machine this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub instance_id: String,
    pub hostname: String,
    pub cloud_name: Option<String>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    /// Where `instance_id` came from.
    pub source: IdentitySource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentitySource {
    /// cloud-init's instance data (on OpenStack: the Nova instance UUID).
    #[serde(rename = "cloud-init")]
    CloudInit,
    /// `/etc/machine-id`: no cloud-init data on this machine.
    #[serde(rename = "machine-id")]
    MachineId,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::CloudInit => "cloud-init",
            IdentitySource::MachineId => "machine-id",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Berth {
    pub version: String,
    pub podman_version: Option<String>,
    pub catalog_serial: String,
    pub catalog_error: Option<String>,
    /// What runs while `catalog_error` is set.
    #[serde(default)]
    pub catalog_in_force: Option<String>,
    /// Set while config.toml was changed into something that does not validate.
    #[serde(default)]
    pub config_error: Option<String>,
    /// Set while Podman's API does not answer the daemon.
    #[serde(default)]
    pub podman_error: Option<String>,
    /// GPUs containers can get.
    #[serde(default)]
    pub gpus: Vec<berth_proto::GpuInfo>,
    /// The serial of the signed remote catalog in force (absent without a remote catalog or
    /// before its first good fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_catalog_serial: Option<u64>,
    /// Why the last fetch of the remote catalog changed nothing (absent when it went well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_catalog_error: Option<String>,
    /// The services the cloud provides and whether each answered its last check (absent
    /// when the policy names none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_services: Vec<berth_proto::RemoteServiceInfo>,
    /// Scheduled backups (absent when the policy schedules none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<berth_proto::BackupScheduleInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The user's choice: `on`, `stopped`, `off`.
    pub choice: String,
    pub state: State,
    pub reason: Option<String>,
    /// Unix seconds since the service is in `state`, as far as the daemon saw.
    pub since: Option<u64>,
    pub restarts: u32,
    pub ports: Vec<Port>,
    /// The last image update: under way, done, or rolled back with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<berth_proto::UpdateStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolInfo {
    /// Older reports dropped unsent, because the spool was full, when this one was spooled.
    pub dropped_before_this: u64,
}

/// The parts of a report that do not come from the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub vm: Vm,
    pub user: User,
}

impl Report {
    pub fn build(
        id: &Identity,
        snap: &Snapshot,
        seq: u64,
        reason: SentReason,
        now_unix: u64,
        dropped_before_this: u64,
    ) -> Report {
        Report {
            schema: SCHEMA.into(),
            seq,
            sent_reason: reason,
            generated_at: rfc3339(now_unix),
            vm: id.vm.clone(),
            user: id.user.clone(),
            berth: Berth {
                version: snap.daemon.version.clone(),
                podman_version: snap.daemon.podman_version.clone(),
                catalog_serial: snap.daemon.catalog_serial.clone(),
                catalog_error: snap.daemon.catalog_error.clone(),
                catalog_in_force: snap.daemon.catalog_in_force.clone(),
                config_error: snap.daemon.config_error.clone(),
                podman_error: snap.daemon.podman_error.clone(),
                gpus: snap.daemon.gpus.clone(),
                remote_catalog_serial: snap.daemon.remote_catalog.as_ref().and_then(|r| r.serial),
                remote_catalog_error: snap
                    .daemon
                    .remote_catalog
                    .as_ref()
                    .and_then(|r| r.error.clone()),
                remote_services: snap.daemon.remote_services.clone(),
                backup_schedule: snap.daemon.backup_schedule.clone(),
            },
            services: snap
                .services
                .iter()
                .map(|s| Service {
                    name: s.name.clone(),
                    choice: s.choice.as_str().to_string(),
                    state: s.state,
                    reason: s.reason.clone(),
                    since: s.since,
                    restarts: s.restarts,
                    ports: s.ports.iter().map(port).collect(),
                    update: s.update.clone(),
                })
                .collect(),
            spool: SpoolInfo {
                dropped_before_this,
            },
            transitions: Vec::new(),
            transitions_dropped: 0,
        }
    }
}

fn port(p: &PortStatus) -> Port {
    Port {
        name: p.name.clone(),
        port: p.port,
    }
}

/// What a "change" is: the set of (service, state, reason class), plus whether the catalog is
/// broken. Restart counters, timestamps and the details inside reasons are not part of it, so a
/// pull's progress or a probe's timing does not make a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeKey {
    services: BTreeSet<(String, &'static str, String)>,
    /// Each service's last update: its state and when it got there (a rollback is news).
    updates: BTreeSet<(String, &'static str, u64)>,
    catalog_broken: bool,
}

impl ChangeKey {
    pub fn of(snap: &Snapshot) -> ChangeKey {
        ChangeKey {
            services: snap
                .services
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.state.as_str(),
                        s.reason.as_deref().map(reason_class).unwrap_or_default(),
                    )
                })
                .collect(),
            updates: snap
                .services
                .iter()
                .filter_map(|s| {
                    s.update
                        .as_ref()
                        .map(|u| (s.name.clone(), u.state.as_str(), u.at))
                })
                .collect(),
            catalog_broken: snap.daemon.catalog_error.is_some(),
        }
    }
}

/// The class of a reason: its head before the first `: ` or `;` (what follows is detail: an
/// error's cause, log lines; a bare `:` is kept, it is part of image references), with every
/// run of digits replaced by `#` (counts, percentages, durations).
/// `crashed 3 times in a row; restarts stopped; last log lines: …` → `crashed # times in a row`.
pub fn reason_class(reason: &str) -> String {
    let end = [reason.find(": "), reason.find(';')]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(reason.len());
    let head = reason[..end].trim();
    let mut out = String::with_capacity(head.len());
    let mut in_digits = false;
    for c in head.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Unix seconds as RFC 3339 in UTC (`2023-11-14T22:13:20Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let rem = unix % 86_400;
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01. Works in 400-year eras
/// (146 097 days each) counted from 0000-03-01, so that the leap day is the last day of a year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // 1970-01-01 is day 719 468 after 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March … 11 = February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_proto::{Counters, DaemonInfo, ServiceStatus};

    pub(crate) fn snapshot(services: &[(&str, State, Option<&str>)]) -> Snapshot {
        Snapshot {
            taken_at: 1_700_000_000,
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 42,
                podman_version: Some("5.4.2".into()),
                catalog_services: services.len(),
                catalog_serial: "00000000deadbeef".into(),
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
                .map(|(name, state, reason)| ServiceStatus {
                    name: name.to_string(),
                    description: "d".into(),
                    choice: berth_proto::Choice::On,
                    state: *state,
                    reason: reason.map(str::to_string),
                    failure: None,
                    hint: None,
                    locked: false,
                    note: None,
                    update: None,
                    unit: format!("berth-{name}.service"),
                    unit_state: "active/running".into(),
                    ports: vec![PortStatus {
                        name: "http".into(),
                        port: 18080,
                        url: "http://127.0.0.1:18080/".into(),
                    }],
                    containers: Vec::new(),
                    restarts: 0,
                    since: Some(1_699_999_000),
                    probe: None,
                })
                .collect(),
        }
    }

    fn identity() -> Identity {
        Identity {
            vm: Vm {
                instance_id: "i-0123".into(),
                hostname: "ws-7".into(),
                cloud_name: Some("openstack".into()),
                region: Some("RegionOne".into()),
                availability_zone: None,
                source: IdentitySource::CloudInit,
            },
            user: User {
                name: "alice".into(),
                uid: 1000,
            },
        }
    }

    #[test]
    fn a_rollback_is_in_the_report_and_is_a_change() {
        let before = snapshot(&[("web", State::Running, None)]);
        let mut after = before.clone();
        after.services[0].update = Some(berth_proto::UpdateStatus {
            state: berth_proto::UpdateState::RolledBack,
            from: vec!["sha256:aa".into()],
            to: vec!["localhost/web:2".into()],
            reason: Some("not healthy within 6s of the swap".into()),
            at: 1_700_000_050,
            rollbacks: 1,
        });
        assert_ne!(ChangeKey::of(&before), ChangeKey::of(&after));
        let r = Report::build(&identity(), &after, 1, SentReason::Change, 1_700_000_060, 0);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["services"][0]["update"]["state"], "rolled_back");
        assert_eq!(
            json["services"][0]["update"]["reason"],
            "not healthy within 6s of the swap"
        );
        let plain = Report::build(
            &identity(),
            &before,
            1,
            SentReason::Change,
            1_700_000_060,
            0,
        );
        let json = serde_json::to_value(&plain).expect("json");
        assert!(
            json["services"][0].get("update").is_none(),
            "absent without one"
        );
    }

    #[test]
    fn report_has_the_documented_fields() {
        let snap = snapshot(&[("demo", State::Running, None)]);
        let r = Report::build(&identity(), &snap, 7, SentReason::Change, 1_700_000_000, 2);
        let v = serde_json::to_value(&r).expect("json");
        let want = serde_json::json!({
            "schema": "berth.health/1",
            "seq": 7,
            "sent_reason": "change",
            "generated_at": "2023-11-14T22:13:20Z",
            "vm": {
                "instance_id": "i-0123",
                "hostname": "ws-7",
                "cloud_name": "openstack",
                "region": "RegionOne",
                "availability_zone": null,
                "source": "cloud-init"
            },
            "user": { "name": "alice", "uid": 1000 },
            "berth": {
                "version": "0.1.0",
                "podman_version": "5.4.2",
                "catalog_serial": "00000000deadbeef",
                "catalog_error": null,
                "catalog_in_force": null,
                "config_error": null,
                "podman_error": null,
                "gpus": []
            },
            "services": [{
                "name": "demo",
                "choice": "on",
                "state": "running",
                "reason": null,
                "since": 1_699_999_000,
                "restarts": 0,
                "ports": [{ "name": "http", "port": 18080 }]
            }],
            "spool": { "dropped_before_this": 2 },
            "transitions": [],
            "transitions_dropped": 0
        });
        assert_eq!(v, want);
        let back: Report = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, r);
        let machine = serde_json::to_value(IdentitySource::MachineId).expect("json");
        assert_eq!(machine, "machine-id");
    }

    #[test]
    fn the_remote_catalog_serial_and_error_are_reported_when_there_is_one() {
        let snap = snapshot(&[("demo", State::Running, None)]);
        let r = Report::build(&identity(), &snap, 1, SentReason::Change, 1_700_000_000, 0);
        let v = serde_json::to_value(&r).expect("json");
        assert!(v["berth"].get("remote_catalog_serial").is_none(), "{v}");
        let mut snap = snap;
        snap.daemon.remote_catalog = Some(berth_proto::RemoteCatalogInfo {
            serial: Some(42),
            error: Some("bad signature".into()),
            ..berth_proto::RemoteCatalogInfo::default()
        });
        let r = Report::build(&identity(), &snap, 2, SentReason::Change, 1_700_000_000, 0);
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["berth"]["remote_catalog_serial"], 42);
        assert_eq!(v["berth"]["remote_catalog_error"], "bad signature");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn reason_classes_drop_details_and_numbers() {
        assert_eq!(
            reason_class("crashed 3 times in a row; restarts stopped; last log lines: a | b"),
            "crashed # times in a row"
        );
        assert_eq!(
            reason_class("crashed 12 times in a row; restarts stopped"),
            reason_class("crashed 4 times in a row")
        );
        assert_eq!(
            reason_class("probe fails: timed out after 5s"),
            "probe fails"
        );
        assert_eq!(
            reason_class("image localhost/x:1 is not present and could not be pulled: 404"),
            "image localhost/x:# is not present and could not be pulled"
        );
        assert_eq!(
            reason_class("restarting after a crash (restart 2)"),
            "restarting after a crash (restart #)"
        );
        assert_ne!(reason_class("unit failed (exit-code)"), reason_class(""));
    }

    #[test]
    fn change_key_sees_state_and_reason_class_only() {
        let base = ChangeKey::of(&snapshot(&[("a", State::Running, None)]));
        let mut later = snapshot(&[("a", State::Running, None)]);
        later.taken_at += 60;
        later.services[0].restarts = 3;
        later.services[0].since = Some(1);
        assert_eq!(
            ChangeKey::of(&later),
            base,
            "timestamps and counters are no change"
        );
        assert_ne!(
            ChangeKey::of(&snapshot(&[("a", State::Failed, None)])),
            base,
            "state"
        );
        assert_ne!(
            ChangeKey::of(&snapshot(&[
                ("a", State::Running, None),
                ("b", State::Off, None)
            ])),
            base,
            "a new service"
        );
        let pulling = |pct: &str| {
            ChangeKey::of(&snapshot(&[(
                "a",
                State::Waiting,
                Some(&format!("pulling localhost/x:1: {pct}% done")),
            )]))
        };
        assert_eq!(pulling("10"), pulling("90"), "progress is detail");
        assert_ne!(
            pulling("10"),
            ChangeKey::of(&snapshot(&[(
                "a",
                State::Waiting,
                Some("image localhost/x:1 is not present and could not be pulled: 404")
            )])),
            "another reason"
        );
        let mut broken = snapshot(&[("a", State::Running, None)]);
        broken.daemon.catalog_error = Some("bad.toml:1:1: …".into());
        assert_ne!(ChangeKey::of(&broken), base, "a broken catalog");
    }
}
