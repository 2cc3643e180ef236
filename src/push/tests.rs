//! The pusher's schedule (pure) and its two tasks end to end against a fake receiver.

use std::sync::atomic::AtomicBool;

use super::report::tests::snapshot;
use super::*;
use berth_proto::State;

fn key(state: State) -> ChangeKey {
    ChangeKey::of(&snapshot(&[("a", state, None)]))
}

#[test]
fn schedule_reports_changes_after_the_debounce_and_otherwise_periodically() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut sch = Schedule::new(t0, s(300), s(2));
    sch.reported(key(State::Starting), t0);
    assert_eq!(sch.next_wakeup(), t0 + s(300));
    assert_eq!(sch.due(&key(State::Starting), false, t0 + s(299)), None);

    // A change is due two seconds after it was first seen, however many snapshots follow.
    sch.observe(&key(State::Running), t0 + s(10));
    sch.observe(&key(State::Running), t0 + s(11));
    assert_eq!(sch.next_wakeup(), t0 + s(12));
    assert_eq!(sch.due(&key(State::Running), false, t0 + s(11)), None);
    assert_eq!(
        sch.due(&key(State::Running), false, t0 + s(12)),
        Some(SentReason::Change)
    );
    sch.reported(key(State::Running), t0 + s(12));
    assert_eq!(
        sch.next_wakeup(),
        t0 + s(312),
        "periodic counts from the last report"
    );

    // The same key again is no change.
    sch.observe(&key(State::Running), t0 + s(20));
    assert_eq!(sch.next_wakeup(), t0 + s(312));

    // A flap that is back before the debounce ends makes no report.
    sch.observe(&key(State::Unhealthy), t0 + s(30));
    assert_eq!(sch.due(&key(State::Running), false, t0 + s(32)), None);
    assert_eq!(sch.next_wakeup(), t0 + s(312));

    assert_eq!(
        sch.due(&key(State::Running), false, t0 + s(312)),
        Some(SentReason::Periodic)
    );
}

/// A receiver that is down while `down` is set and records what it accepts.
#[derive(Debug, Clone, Default)]
struct Fake {
    down: Arc<AtomicBool>,
    refuse: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Deliver for Fake {
    async fn deliver(&self, body: Vec<u8>) -> Outcome {
        if self.down.load(Ordering::SeqCst) {
            return Outcome::Unavailable("connection refused".into());
        }
        if self.refuse.load(Ordering::SeqCst) {
            return Outcome::Rejected("HTTP 401".into());
        }
        let v = serde_json::from_slice(&body).expect("the body is JSON");
        self.got.lock().expect("lock").push(v);
        Outcome::Accepted
    }
}

impl Fake {
    fn got(&self) -> Vec<serde_json::Value> {
        self.got.lock().expect("lock").clone()
    }
}

fn settings(dir: &std::path::Path, max: usize) -> Settings {
    Settings {
        url: "http://127.0.0.1:9/".into(),
        bearer_token_file: None,
        interval: Duration::from_millis(150),
        spool_max_reports: max,
        spool_dir: dir.join("spool"),
        identity: identity::Sources {
            instance_data: dir.join("instance-data.json"),
            machine_id: dir.join("machine-id"),
            hostname: dir.join("hostname"),
            passwd: dir.join("passwd"),
        },
        debounce: Duration::from_millis(50),
        backoff: Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
        },
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each number is the previous one plus one.
fn contiguous(s: &[u64]) -> bool {
    s.windows(2).all(|w| w[1] == w[0] + 1)
}

fn seqs(got: &[serde_json::Value]) -> Vec<u64> {
    got.iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect()
}

/// An event stream that has ended (these tests drive the pusher by snapshots).
fn no_events() -> tokio::sync::broadcast::Receiver<berth_proto::Event> {
    tokio::sync::broadcast::channel(1).1
}

#[tokio::test]
async fn reports_wait_in_the_spool_while_the_receiver_is_down_and_arrive_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("machine-id"), "m-1\n").expect("machine-id");
    let (tx, rx) = watch::channel(Some(Arc::new(snapshot(&[("a", State::Starting, None)]))));
    let fake = Fake::default();
    fake.down.store(true, Ordering::SeqCst);
    let pusher =
        spawn_with(settings(dir.path(), 1000), rx, no_events(), fake.clone()).expect("spawn");
    let stats = pusher.stats();

    until("reports spooled while down", || {
        let c = stats.counters();
        c.reports_total >= 3 && c.failed_attempts_total >= 2
    })
    .await;
    tx.send_replace(Some(Arc::new(snapshot(&[(
        "a",
        State::Failed,
        Some("unit failed (exit-code)"),
    )]))));
    until("the change is spooled", || {
        std::fs::read_dir(dir.path().join("spool"))
            .expect("ls")
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"change\"")))
    })
    .await;
    until("four reports waiting", || stats.counters().spooled >= 4).await;
    assert!(fake.got().is_empty());

    fake.down.store(false, Ordering::SeqCst);
    until("the spool drains", || stats.counters().spooled == 0).await;
    let got = fake.got();
    let s = seqs(&got);
    assert!(contiguous(&s), "in order, no gaps: {s:?}");
    assert!(
        s[0] > 1_600_000_000_000,
        "a new spool numbers from the clock: {s:?}"
    );
    assert_eq!(got[0]["sent_reason"], "startup");
    assert_eq!(got[0]["vm"]["instance_id"], "m-1");
    assert_eq!(got[0]["vm"]["source"], "machine-id");
    assert!(got.iter().any(|r| r["sent_reason"] == "periodic"));
    let change = got
        .iter()
        .find(|r| r["sent_reason"] == "change")
        .expect("a change report");
    assert_eq!(change["services"][0]["state"], "failed");
    let c = stats.counters();
    assert_eq!(c.delivered_total, got.len() as u64);
    assert_eq!(c.dropped_total, 0);
    assert!(c.last_delivery_unix > 0);

    // A restart goes on with the next number and says it is a startup.
    drop(pusher);
    let last = *s.last().expect("some");
    let fake2 = Fake::default();
    let (_tx2, rx2) = watch::channel(Some(Arc::new(snapshot(&[("a", State::Failed, None)]))));
    let _pusher =
        spawn_with(settings(dir.path(), 1000), rx2, no_events(), fake2.clone()).expect("respawn");
    until("the startup report", || {
        fake2.got().iter().any(|r| r["sent_reason"] == "startup")
    })
    .await;
    // Reports spooled after the last delivery (if any) come first, then the new run's. The
    // last report may come twice: the old pusher can stop between acceptance and deletion.
    let all = seqs(&fake2.got());
    assert!(all.iter().all(|&q| q >= last), "{all:?} after {last}");
    let s2: Vec<u64> = all.into_iter().filter(|&q| q > last).collect();
    assert!(
        contiguous(&s2) && s2[0] == last + 1,
        "the sequence goes on across the restart: {s2:?} after {last}"
    );
    drop(tx);
}

#[tokio::test]
async fn shutdown_sends_a_last_report_and_keeps_what_it_cannot_deliver() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("machine-id"), "m-1\n").expect("machine-id");
    let (_tx, rx) = watch::channel(Some(Arc::new(snapshot(&[("a", State::Running, None)]))));
    let fake = Fake::default();
    let pusher = spawn_with(
        settings(dir.path(), 1000),
        rx.clone(),
        no_events(),
        fake.clone(),
    )
    .expect("spawn");
    until("the startup report", || !fake.got().is_empty()).await;
    pusher.shutdown(Duration::from_secs(5)).await;
    // Delivered before shutdown returned, as the last report.
    let got = fake.got();
    assert_eq!(
        got.last().expect("reports")["sent_reason"],
        "shutdown",
        "{got:?}"
    );
    assert_eq!(
        got.last().expect("reports")["services"][0]["state"],
        "running"
    );

    // With the receiver down, shutdown gives up after its limit and the report stays spooled.
    let down = Fake::default();
    down.down.store(true, Ordering::SeqCst);
    let pusher =
        spawn_with(settings(dir.path(), 1000), rx, no_events(), down.clone()).expect("respawn");
    let stats = pusher.stats();
    until("the startup report spooled", || {
        stats.counters().reports_total >= 1
    })
    .await;
    let t = std::time::Instant::now();
    pusher.shutdown(Duration::from_millis(300)).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        t.elapsed()
    );
    let spooled: Vec<String> = std::fs::read_dir(dir.path().join("spool"))
        .expect("ls")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    assert!(
        spooled.iter().any(|t| t.contains("\"shutdown\"")),
        "the last report waits for the next start: {spooled:?}"
    );
    assert!(down.got().is_empty());
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_and_the_gaps_are_accounted_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(Some(Arc::new(snapshot(&[("a", State::Running, None)]))));
    let fake = Fake::default();
    fake.down.store(true, Ordering::SeqCst);
    // Number from 1, so that every gap, the first report included, is seen.
    std::fs::create_dir_all(dir.path().join("spool")).expect("spool");
    std::fs::write(dir.path().join("spool/last-seq"), "0\n").expect("last-seq");
    let pusher = spawn_with(settings(dir.path(), 3), rx, no_events(), fake.clone()).expect("spawn");
    let stats = pusher.stats();
    until("reports dropped", || stats.counters().dropped_total >= 3).await;
    assert!(
        stats.counters().spooled <= 4,
        "bounded (plus the one in flight)"
    );
    fake.down.store(false, Ordering::SeqCst);
    until("delivered", || stats.counters().spooled == 0).await;
    drop(pusher);

    let got = fake.got();
    let s = seqs(&got);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "increasing: {s:?}");
    let last = *s.last().expect("some");
    let missing = last - s.len() as u64;
    let accounted: u64 = got
        .iter()
        .map(|r| r["spool"]["dropped_before_this"].as_u64().expect("count"))
        .sum();
    assert_eq!(missing, accounted, "every gap is counted: {s:?}");
    assert!(missing >= 3);
}

#[tokio::test]
async fn a_refusing_receiver_keeps_the_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(Some(Arc::new(snapshot(&[("a", State::Running, None)]))));
    let fake = Fake::default();
    fake.refuse.store(true, Ordering::SeqCst);
    let pusher =
        spawn_with(settings(dir.path(), 1000), rx, no_events(), fake.clone()).expect("spawn");
    let stats = pusher.stats();
    until("refused twice", || {
        stats.counters().failed_attempts_total >= 2
    })
    .await;
    assert_eq!(stats.counters().delivered_total, 0);
    fake.refuse.store(false, Ordering::SeqCst);
    until("delivered", || stats.counters().delivered_total >= 2).await;
    assert!(contiguous(&seqs(&fake.got())));
}

#[tokio::test]
async fn no_report_before_the_first_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = watch::channel(None);
    let fake = Fake::default();
    let pusher =
        spawn_with(settings(dir.path(), 1000), rx, no_events(), fake.clone()).expect("spawn");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pusher.stats().counters().reports_total, 0);
    tx.send_replace(Some(Arc::new(snapshot(&[("a", State::Running, None)]))));
    until("startup report", || !fake.got().is_empty()).await;
    assert_eq!(fake.got()[0]["sent_reason"], "startup");
}

#[tokio::test]
async fn a_failure_that_is_over_before_the_next_snapshot_still_reaches_the_cloud() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = snapshot(&[("a", State::Running, None)]);
    let (_tx, rx) = watch::channel(Some(Arc::new(running.clone())));
    let (events, events_rx) = tokio::sync::broadcast::channel(16);
    let fake = Fake::default();
    let mut s = settings(dir.path(), 1000);
    // No periodic report in the way of the one this test waits for.
    s.interval = Duration::from_secs(3600);
    let _pusher = spawn_with(s, rx, events_rx, fake.clone()).expect("spawn");
    until("startup report", || !fake.got().is_empty()).await;
    let mut failed = running.services[0].clone();
    failed.state = State::Failed;
    failed.reason = Some("crashed".into());
    // Failed and back within the debounce: the snapshot never shows it.
    for (st, from, at) in [
        (failed, State::Running, 10),
        (running.services[0].clone(), State::Failed, 11),
    ] {
        events
            .send(berth_proto::Event::Service {
                status: st,
                from: Some(from),
                at,
            })
            .expect("a subscriber");
    }
    until("a change report", || fake.got().len() >= 2).await;
    let report = &fake.got()[1];
    assert_eq!(report["sent_reason"], "change");
    let t = report["transitions"].as_array().expect("transitions");
    assert_eq!(t.len(), 2, "{report}");
    assert_eq!(t[0]["from"], "running");
    assert_eq!(t[0]["to"], "failed");
    assert_eq!(t[0]["reason"], "crashed");
    assert_eq!(t[1]["to"], "running");
    assert_eq!(report["services"][0]["state"], "running");
}
