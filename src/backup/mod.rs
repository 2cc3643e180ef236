//! `berth backup` and `berth restore`: a service's data outlives its VM.
//!
//! Workspace VMs are replaced when admins roll out a new template; the user's data must come
//! along. A backup of a service is one directory `<root>/<service>-<UTC time>/` holding
//!
//! - `volumes/<volume>.tar`: each named Podman volume, as a tar made inside the user's
//!   rootless user namespace (`podman unshare`), so the files keep the owners the
//!   containers see (works on Podman 3.0 to 5.x alike, which `podman volume export` does not);
//! - `secrets.toml` (0600): the secrets berth generated for the service — restored with the
//!   data, because a database's volume only opens with the password it was made with;
//! - `manifest.json`, written last and atomically: what is in it, from which catalog entry
//!   (origin and images), and how it was kept consistent. A directory without a manifest is an
//!   unfinished backup and restore never picks it.
//!
//! The root is `[backup] dir` of `config.toml` if set, else `/shared/users/<user>/backups`
//! where that folder exists (the team's CephFS share: it survives the VM), else
//! `~/.local/share/berth/backups` (say so: it dies with the VM). Directories are 0700.
//!
//! Consistency follows the entry's `[backup] mode`: `stop` (the default) stops a running
//! service for the copy and starts it again; `live` copies while it runs; `command` runs the
//! entry's command in the named container first (a dump into a volume), then copies live.
//!
//! This module is the pure part (what to copy, names, picking a backup); `run.rs` does it.

pub mod run;
pub mod schedule;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::{Service, VolumeSource};

/// The manifest's format; a newer one is refused with a clear message.
pub const FORMAT: u32 = 1;

pub const MANIFEST: &str = "manifest.json";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub service: String,
    /// When the copy was made, RFC 3339 (UTC).
    pub created: String,
    pub berth_version: String,
    /// The catalog entry the data belongs to.
    pub entry: Entry,
    /// `stopped`, `live` or `after-command`.
    pub consistency: String,
    pub volumes: Vec<VolumeFile>,
    /// Whether `secrets.toml` is there.
    pub secrets: bool,
    /// What the entry mounts but a backup does not carry (host paths), said plainly.
    #[serde(default)]
    pub left_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The catalog file the entry came from.
    pub origin: String,
    pub images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFile {
    /// The volume's name in the catalog (`data`).
    pub name: String,
    /// Its Podman volume (`berth-demo-data`).
    pub podman: String,
    /// The tar, relative to the backup's directory.
    pub file: String,
    pub bytes: u64,
}

/// A service's named volumes as (catalog name, Podman volume), each once, and the host paths
/// it mounts (which a backup leaves out).
pub fn volumes_of(svc: &Service) -> (Vec<(String, String)>, Vec<String>) {
    let mut named: Vec<(String, String)> = Vec::new();
    let mut host = Vec::new();
    for c in &svc.containers {
        for v in &c.volumes {
            match &v.source {
                VolumeSource::Named(n) => {
                    if !named.iter().any(|(x, _)| x == n) {
                        named.push((n.clone(), crate::units::volume_name(svc, n)));
                    }
                }
                VolumeSource::Host(p) => {
                    let s = p.display().to_string();
                    if !host.contains(&s) {
                        host.push(s);
                    }
                }
            }
        }
    }
    (named, host)
}

/// `2026-12-02T15:04:05Z` → `20261202T150405Z`: sortable, and no `:` in a path.
pub fn stamp(rfc3339: &str) -> String {
    rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// The directory name of a backup of `service` made at `created` (RFC 3339).
pub fn dir_name(service: &str, created: &str) -> String {
    format!("{service}-{}", stamp(created))
}

/// Where backups go: the configured directory, else the user's folder on `/shared`, else a
/// local one. The second value says whether the place outlives the VM (as far as berth can
/// tell).
pub fn default_root(
    configured: Option<&Path>,
    shared_user_dir: &Path,
    data_home: &Path,
) -> (PathBuf, bool) {
    if let Some(c) = configured {
        return (c.to_path_buf(), true);
    }
    if shared_user_dir.is_dir() {
        return (shared_user_dir.join("backups"), true);
    }
    (data_home.join("berth/backups"), false)
}

/// The newest complete backup of `service` among `entries` (directory name, its manifest if
/// it has a readable one).
pub fn latest<'a>(
    service: &str,
    entries: &'a [(String, Option<Manifest>)],
) -> Option<&'a (String, Option<Manifest>)> {
    let prefix = format!("{service}-");
    entries
        .iter()
        .filter(|(dir, m)| {
            // `demo-2` backups are not `demo`'s: the rest must be a stamp.
            dir.strip_prefix(&prefix)
                .is_some_and(|rest| rest.bytes().next().is_some_and(|b| b.is_ascii_digit()))
                && m.as_ref().is_some_and(|m| m.service == service)
        })
        .max_by(|a, b| a.0.cmp(&b.0))
}

/// The complete backups of `service` to remove so that the newest `keep` stay. Unfinished ones
/// (no manifest) are left alone: one may be in the making.
pub fn to_prune(service: &str, entries: &[(String, Option<Manifest>)], keep: usize) -> Vec<String> {
    let prefix = format!("{service}-");
    let mut mine: Vec<&String> = entries
        .iter()
        .filter(|(dir, m)| {
            dir.strip_prefix(&prefix)
                .is_some_and(|rest| rest.bytes().next().is_some_and(|b| b.is_ascii_digit()))
                && m.as_ref().is_some_and(|m| m.service == service)
        })
        .map(|(dir, _)| dir)
        .collect();
    mine.sort();
    let extra = mine.len().saturating_sub(keep.max(1));
    mine.into_iter().take(extra).cloned().collect()
}

/// When the next scheduled backup is due, in unix seconds: `every` after the last good one
/// (at once when there was none), but after a failure not before `retry` has passed since that
/// attempt, so a broken backup does not run in a loop.
pub fn next_due(
    every: u64,
    retry: u64,
    last_success: Option<u64>,
    last_attempt: Option<u64>,
) -> u64 {
    let after_success = last_success.map_or(0, |t| t.saturating_add(every));
    let after_attempt = match (last_attempt, last_success) {
        (Some(a), Some(s)) if a > s => a.saturating_add(retry.min(every)),
        (Some(a), None) => a.saturating_add(retry.min(every)),
        _ => 0,
    };
    after_success.max(after_attempt)
}

/// Checks a manifest before anything is restored from it.
pub fn check(m: &Manifest, service: &str) -> Result<(), String> {
    if m.format > FORMAT {
        return Err(format!(
            "the backup was made by a newer berth (manifest format {}; this berth reads {FORMAT})",
            m.format
        ));
    }
    if m.service != service {
        return Err(format!("the backup is of {:?}, not {service:?}", m.service));
    }
    for v in &m.volumes {
        let p = Path::new(&v.file);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("volume file {:?} is outside the backup", v.file));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    fn manifest(service: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            service: service.into(),
            created: "2026-12-02T15:04:05Z".into(),
            berth_version: "0.1.0".into(),
            entry: Entry {
                origin: "builtin/demo.toml".into(),
                images: vec!["localhost/berth-demo:1".into()],
            },
            consistency: "stopped".into(),
            volumes: vec![VolumeFile {
                name: "data".into(),
                podman: "berth-demo-data".into(),
                file: "volumes/data.tar".into(),
                bytes: 10240,
            }],
            secrets: false,
            left_out: vec![],
        }
    }

    #[test]
    fn pruning_keeps_the_newest_complete_backups_of_that_service_only() {
        let e = |d: &str, m: Option<&str>| (d.to_string(), m.map(manifest));
        let entries = vec![
            e("demo-20261201T010000Z", Some("demo")),
            e("demo-20261202T010000Z", Some("demo")),
            e("demo-20261203T010000Z", None),
            e("demo-20261130T010000Z", Some("demo")),
            e("demo-2-20261101T010000Z", Some("demo-2")),
            e("demo-20261204T010000Z", Some("demo")),
        ];
        assert_eq!(
            to_prune("demo", &entries, 2),
            ["demo-20261130T010000Z", "demo-20261201T010000Z"],
            "the oldest complete ones; the unfinished one and demo-2's stay"
        );
        assert!(to_prune("demo", &entries, 9).is_empty());
        assert_eq!(
            to_prune("demo", &entries, 0).len(),
            3,
            "the newest is always kept"
        );
    }

    #[test]
    fn scheduled_backups_fall_due_every_interval_and_retry_after_a_failure_not_in_a_loop() {
        let day = 86_400;
        assert_eq!(next_due(day, 900, None, None), 0, "never: at once");
        assert_eq!(next_due(day, 900, Some(1000), Some(1000)), 1000 + day);
        assert_eq!(
            next_due(day, 900, Some(1000), Some(5000)),
            1000 + day,
            "a failed attempt after a good one: the interval still rules, when it is later"
        );
        assert_eq!(
            next_due(day, 900, Some(1000), Some(1000 + day)),
            1000 + day + 900,
            "failed when due: retried after `retry`"
        );
        assert_eq!(
            next_due(day, 900, None, Some(7)),
            907,
            "never good, failed: retry"
        );
        assert_eq!(
            next_due(60, 900, None, Some(7)),
            67,
            "retry is at most the interval"
        );
    }

    #[test]
    fn named_volumes_are_copied_once_and_host_paths_are_said_to_be_left_out() {
        let text = r#"
name = "web"
description = "x"
[[containers]]
name = "app"
image = "localhost/a:1"
[[containers.volumes]]
name = "data"
target = "/data"
[[containers.volumes]]
host = "/shared/models"
target = "/models"
[[containers]]
name = "side"
image = "localhost/b:1"
[[containers.volumes]]
name = "data"
target = "/srv"
"#;
        let c = from_sources(None, &[Source::new("t/web.toml", text)]).expect("valid");
        let (named, host) = volumes_of(c.get("web").expect("web"));
        assert_eq!(named, [("data".to_string(), "berth-web-data".to_string())]);
        assert_eq!(host, ["/shared/models"]);
    }

    #[test]
    fn the_newest_complete_backup_of_exactly_that_service_is_picked() {
        let entries = vec![
            ("demo-20261201T100000Z".to_string(), Some(manifest("demo"))),
            ("demo-20261202T100000Z".to_string(), Some(manifest("demo"))),
            // Unfinished: no manifest.
            ("demo-20261203T100000Z".to_string(), None),
            // Another service whose name starts the same.
            (
                "demo-2-20261204T100000Z".to_string(),
                Some(manifest("demo-2")),
            ),
        ];
        let got = latest("demo", &entries).expect("one");
        assert_eq!(got.0, "demo-20261202T100000Z");
        assert_eq!(
            latest("demo-2", &entries).expect("one").0,
            "demo-2-20261204T100000Z"
        );
        assert!(latest("other", &entries).is_none());
    }

    #[test]
    fn names_sort_by_time_and_carry_no_colons() {
        assert_eq!(
            dir_name("demo", "2026-12-02T15:04:05Z"),
            "demo-20261202T150405Z"
        );
    }

    #[test]
    fn a_manifest_is_checked_before_restoring() {
        assert!(check(&manifest("demo"), "demo").is_ok());
        assert!(check(&manifest("demo"), "web")
            .expect_err("other service")
            .contains("not \"web\""));
        let mut newer = manifest("demo");
        newer.format = FORMAT + 1;
        assert!(check(&newer, "demo")
            .expect_err("newer")
            .contains("newer berth"));
        let mut escape = manifest("demo");
        escape.volumes[0].file = "../../etc/passwd".into();
        assert!(check(&escape, "demo")
            .expect_err("escape")
            .contains("outside"));
    }

    #[test]
    fn the_root_prefers_config_then_the_shared_folder() {
        let d = tempfile::tempdir().expect("tempdir");
        let shared = d.path().join("shared/users/alice");
        let data = d.path().join("data");
        let (root, lasting) = default_root(None, &shared, &data);
        assert_eq!(root, data.join("berth/backups"));
        assert!(!lasting, "a local folder dies with the VM");
        std::fs::create_dir_all(&shared).expect("mkdir");
        assert_eq!(
            default_root(None, &shared, &data),
            (shared.join("backups"), true)
        );
        let conf = d.path().join("conf");
        assert_eq!(default_root(Some(&conf), &shared, &data).0, conf);
    }
}
