//! Scheduled backups (the policy's `[backup] every`): the daemon runs `berth backup
//! --scheduled` as a child process of its own whenever one is due, so a backup's blocking
//! copies and its calls back into the daemon's API (stopping a service for the copy) never run
//! on the daemon's own threads. When the last runs were is kept in the state directory
//! (`backup-schedule.json`, written atomically): a VM that was off when a backup was due makes
//! it right after berth starts, and one that failed is retried after [`RETRY`], not in a loop.
//! How it went is part of the daemon's info (`berth info`, /metrics, the push report).

use std::path::PathBuf;
use std::time::Duration;

use berth_proto::BackupScheduleInfo;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::BackupPolicy;
use crate::engine::Handle;

/// After a failed run, the next try comes this much later (or after the interval, if shorter).
pub const RETRY: u64 = 15 * 60;
/// The longest a whole run may take before it is stopped and counted as failed.
pub const RUN_LIMIT: Duration = Duration::from_secs(6 * 3600);
/// Wall-clock time is looked at again at least this often (a suspended VM, a clock change).
const RECHECK: Duration = Duration::from_secs(600);

/// When the runs were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    last_success: Option<u64>,
    last_attempt: Option<u64>,
    error: Option<String>,
}

/// Where the schedule's parts are.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// berth itself, run for each backup.
    pub exe: PathBuf,
    /// The daemon's API socket, which the run talks to.
    pub socket: PathBuf,
    /// `backup-schedule.json` in the state directory.
    pub state_file: PathBuf,
}

fn info(b: &BackupPolicy, s: &Stamp, next: u64) -> BackupScheduleInfo {
    BackupScheduleInfo {
        every: b.every.as_secs(),
        keep: b.keep as u64,
        last_success: s.last_success,
        last_attempt: s.last_attempt,
        error: s.error.clone(),
        next: Some(next),
    }
}

async fn load(path: PathBuf) -> Stamp {
    tokio::task::spawn_blocking(move || match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!(path = %path.display(), "unreadable backup schedule state ({e}); starting afresh");
            Stamp::default()
        }),
        Err(_) => Stamp::default(),
    })
    .await
    .unwrap_or_default()
}

async fn save(path: PathBuf, s: &Stamp) {
    let Ok(json) = serde_json::to_vec_pretty(s) else {
        return;
    };
    let shown = path.display().to_string();
    let r =
        tokio::task::spawn_blocking(move || crate::fsutil::write_atomic(&path, &json, 0o600)).await;
    if let Ok(Err(e)) = r {
        warn!(path = %shown, "cannot keep when backups ran: {e}");
    }
}

/// One run of `berth backup --scheduled`: `Ok` when every service was backed up.
async fn run_once(s: &Schedule) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&s.exe);
    cmd.args(["backup", "--scheduled"])
        .env("BERTH_SOCKET", &s.socket)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(RUN_LIMIT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "did not finish within {} h",
                RUN_LIMIT.as_secs() / 3600
            ))
        }
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", s.exe.display())),
        Ok(Ok(o)) => o,
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        info!("scheduled backup: {line}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        warn!("scheduled backup: {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or_else(
                || format!("berth backup exited with {}", out.status),
                str::to_string,
            ))
    }
}

/// Runs backups when the policy's schedule says, until the engine goes away.
pub async fn run(handle: Handle, s: Schedule) {
    let mut stamp = load(s.state_file.clone()).await;
    let mut catalogs = handle.catalog_changes();
    loop {
        let policy = catalogs.borrow_and_update().policy.backup.clone();
        let Some(b) = policy else {
            handle.set_backup_schedule(None).await;
            if catalogs.changed().await.is_err() {
                return;
            }
            continue;
        };
        let due = super::next_due(
            b.every.as_secs().max(1),
            RETRY,
            stamp.last_success,
            stamp.last_attempt,
        );
        handle
            .set_backup_schedule(Some(info(&b, &stamp, due)))
            .await;
        let now = crate::clock::now_unix();
        if due > now {
            let wait = Duration::from_secs(due - now).min(RECHECK);
            tokio::select! {
                r = catalogs.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        info!("scheduled backup due: backing up every enabled service's data");
        stamp.last_attempt = Some(now);
        match run_once(&s).await {
            Ok(()) => {
                stamp.last_success = Some(now);
                stamp.error = None;
                info!("scheduled backup done");
            }
            Err(e) => {
                warn!(err = %e, "scheduled backup failed: {e}");
                stamp.error = Some(e);
            }
        }
        save(s.state_file.clone(), &stamp).await;
    }
}
