//! berth under systemd logs to the journal natively, with fields Loki/Promtail label by:
//! one entry per transition carrying BERTH_SERVICE, BERTH_UNIT, BERTH_STATE (and BERTH_FROM,
//! BERTH_REASON), whose message says the same in words, attributed to berth's own user unit.

mod common;

use std::time::Duration;

use common::*;

/// Journal entries since unix time `since` matching `matches` (FIELD=value), oldest first.
/// Earlier runs of this test left entries of the same service behind.
fn journal(since: u64, matches: &[&str]) -> Vec<serde_json::Value> {
    let since = format!("@{since}");
    let mut args = vec!["-o", "json", "--no-pager", "-q", "--since", &since];
    args.extend_from_slice(matches);
    let o = run("journalctl", &args);
    assert!(o.status.success(), "journalctl failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn field<'a>(e: &'a serde_json::Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

#[test]
fn state_changes_reach_the_journal_with_service_unit_and_state_fields() {
    let Some(_serial) = session("journald") else {
        return;
    };
    assert!(
        std::path::Path::new("/run/systemd/journal/socket").exists(),
        "no journald on this machine: scripts/test-env starts one (as root) where systemd is not PID 1"
    );
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let w = World::new(&["it-journal"]);
    w.catalog_file("it-journal.toml", &web_service("it-journal", 18203));
    let daemon = DaemonUnit::install(&w, "it-berthd-journal.service");
    let o = systemctl(&["start", daemon.name]);
    assert!(o.status.success(), "{}", text(&o));
    w.ok(&["enable", "it-journal"]);
    assert_page(18203);
    w.ok(&["stop", "it-journal"]);

    let seen = wait_for(Duration::from_secs(20), || {
        let entries = journal(start, &["BERTH_SERVICE=it-journal"]);
        let states: Vec<&str> = entries.iter().map(|e| field(e, "BERTH_STATE")).collect();
        let running = states.iter().position(|s| *s == "running")?;
        states[running..].contains(&"stopped").then_some(entries)
    });
    let entries = seen.unwrap_or_else(|| {
        panic!(
            "no running → stopped entries for it-journal in the journal; berth's own entries: {:?}",
            journal(start, &[&format!("_SYSTEMD_USER_UNIT={}", daemon.name)])
                .iter()
                .map(|e| field(e, "MESSAGE").to_string())
                .collect::<Vec<_>>()
        )
    });
    let running = entries
        .iter()
        .find(|e| field(e, "BERTH_STATE") == "running")
        .expect("running entry");
    // The message says it in words too, for a plain `journalctl`.
    let msg = field(running, "MESSAGE");
    assert!(
        msg.starts_with("it-journal: ") && msg.ends_with(" → running"),
        "{running}"
    );
    assert_eq!(field(running, "BERTH_UNIT"), "berth-it-journal.service");
    // tracing-journald maps INFO to 5 (notice), DEBUG to 6.
    assert_eq!(field(running, "PRIORITY"), "5", "info level: {running}");
    assert_eq!(field(running, "SYSLOG_IDENTIFIER"), "berth");
    assert_eq!(
        field(running, "_SYSTEMD_USER_UNIT"),
        daemon.name,
        "attributed to berth's own unit: {running}"
    );
    let stopped = entries
        .iter()
        .rev()
        .find(|e| field(e, "BERTH_STATE") == "stopped")
        .expect("stopped entry");
    assert_eq!(field(stopped, "BERTH_FROM"), "running", "{stopped}");
    let _disable = w.berth(&["disable", "it-journal"]);
}
