//! Cloud health push: reports of this VM user's services (`berth.health/1`, docs/push.md) sent
//! to the URL of `[push]` in `/etc/berth/config.toml`, at start, on change and periodically.
//!
//! Two tasks, neither of which ever blocks the engine:
//! - the **producer** watches the engine's snapshots and spools a report at start, when the set
//!   of (service, state, reason class) changes (debounced), and after `interval` without one;
//! - the **sender** delivers the spool oldest first; a report leaves the spool only once the
//!   receiver answered 2xx. Failures back off exponentially (1 s to 60 s); a refusal (4xx other
//!   than 408/429) is logged as such and retried every 60 s. Nothing is dropped except to keep
//!   the spool within `spool_max_reports`, and the next report counts what was dropped.
//!
//! Delivery is at least once, in sequence order: a report accepted by the receiver just before
//! the daemon dies, before its spool file is deleted, is sent again after the restart.

pub mod http;
pub mod identity;
pub mod report;
pub mod spool;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::clock::now_unix;
use crate::config::PushConfig;
use crate::engine::source_chain;
use crate::paths::Paths;
use berth_proto::{Event, Snapshot};

use self::http::{Deliver, HttpDelivery, Outcome};
use self::report::{ChangeKey, Identity, Report, SentReason, Transition};
use self::spool::{Spool, SpoolError};

/// `~/.local/state/berth/spool`: reports not yet accepted by the receiver.
pub fn spool_dir(paths: &Paths) -> PathBuf {
    paths.state_dir.join("spool")
}

/// How long the sender waits after failures: doubling from `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Everything the pusher needs, from the admin's `[push]` and berth's places.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub bearer_token_file: Option<PathBuf>,
    pub interval: Duration,
    pub spool_max_reports: usize,
    pub spool_dir: PathBuf,
    pub identity: identity::Sources,
    /// A change is reported once it has held this long (flapping back is no change).
    pub debounce: Duration,
    pub backoff: Backoff,
}

impl Settings {
    pub fn new(config: &PushConfig, paths: &Paths) -> Settings {
        Settings {
            url: config.url.clone(),
            bearer_token_file: config.bearer_token_file.clone(),
            interval: config.interval,
            spool_max_reports: config.spool_max_reports,
            spool_dir: spool_dir(paths),
            identity: identity::Sources::system(),
            debounce: Duration::from_secs(2),
            backoff: Backoff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Url(#[from] http::BadUrl),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Counters of the push, shared with whoever exports metrics. Updated by the pusher's tasks;
/// read with [`PushStats::counters`].
#[derive(Debug, Default)]
pub struct PushStats {
    spooled: AtomicU64,
    reports_total: AtomicU64,
    delivered_total: AtomicU64,
    failed_attempts_total: AtomicU64,
    dropped_total: AtomicU64,
    last_delivery_unix: AtomicU64,
}

/// A copy of [`PushStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PushCounters {
    /// Reports in the spool now (not yet accepted by the receiver).
    pub spooled: u64,
    /// Reports made since the daemon started.
    pub reports_total: u64,
    /// Reports the receiver accepted (2xx) since the daemon started.
    pub delivered_total: u64,
    /// Deliveries that failed (no connection, timeout, non-2xx) since the daemon started.
    pub failed_attempts_total: u64,
    /// Reports dropped unsent to keep the spool bounded, since the daemon started.
    pub dropped_total: u64,
    /// Unix seconds of the last accepted delivery; 0 for none yet.
    pub last_delivery_unix: u64,
}

impl PushStats {
    pub fn counters(&self) -> PushCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PushCounters {
            spooled: get(&self.spooled),
            reports_total: get(&self.reports_total),
            delivered_total: get(&self.delivered_total),
            failed_attempts_total: get(&self.failed_attempts_total),
            dropped_total: get(&self.dropped_total),
            last_delivery_unix: get(&self.last_delivery_unix),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn set(a: &AtomicU64, n: u64) {
        a.store(n, Ordering::Relaxed);
    }
}

/// The running pusher. Dropping it stops both tasks; the spool stays for the next start.
#[derive(Debug)]
pub struct Pusher {
    stats: Arc<PushStats>,
    /// Set once by [`Pusher::shutdown`]: the producer makes its last report and ends.
    stopping: watch::Sender<bool>,
    producer: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pusher {
    pub fn stats(&self) -> Arc<PushStats> {
        self.stats.clone()
    }

    /// The daemon stops: spools a last report (`shutdown`) and gives the sender up to `limit`
    /// to deliver what is spooled. What is not delivered by then stays in the spool for the
    /// next start.
    pub async fn shutdown(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let _producer_may_have_ended = self.stopping.send(true);
        if let Some(producer) = self.producer.take() {
            if tokio::time::timeout_at(deadline, producer).await.is_err() {
                warn!("the last health report was not spooled in time");
                return;
            }
        }
        while self.stats.spooled.load(Ordering::Relaxed) > 0 {
            if Instant::now() >= deadline {
                info!(
                    spooled = self.stats.spooled.load(Ordering::Relaxed),
                    "stopping with health reports still spooled; they go out after the next start"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        debug!("every health report delivered");
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.producer) {
            t.abort();
        }
    }
}

/// Starts pushing reports made from `snapshots` over HTTP(S). Opens the spool first, so a
/// spool that cannot be used is an error here and not a silent loss later.
pub fn spawn(
    settings: Settings,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    events: broadcast::Receiver<Event>,
) -> Result<Pusher, PushError> {
    let delivery = HttpDelivery::new(&settings.url, settings.bearer_token_file.clone())?;
    spawn_with(settings, snapshots, events, delivery)
}

/// [`spawn`] with another way of delivering (tests).
pub fn spawn_with<D: Deliver + 'static>(
    settings: Settings,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    events: broadcast::Receiver<Event>,
    delivery: D,
) -> Result<Pusher, PushError> {
    // A new spool numbers from the clock (milliseconds), not from 1: should the state directory
    // be wiped, the new reports still sort after the old ones and are not taken for duplicates.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() * 1000 + u64::from(d.subsec_millis()));
    let spool = Spool::open(&settings.spool_dir, settings.spool_max_reports, now_ms)?;
    let stats = Arc::new(PushStats::default());
    PushStats::set(&stats.spooled, spool.len() as u64);
    if !spool.is_empty() {
        info!(
            spooled = spool.len(),
            "reports from an earlier run are waiting to be delivered"
        );
    }
    let spool = Arc::new(Mutex::new(spool));
    let wake = Arc::new(Notify::new());
    let (stopping, stop) = watch::channel(false);
    let producer = tokio::spawn(produce(
        settings.clone(),
        snapshots,
        events,
        stop,
        spool.clone(),
        wake.clone(),
        stats.clone(),
    ));
    let sender = tokio::spawn(send(delivery, spool, wake, stats.clone(), settings.backoff));
    Ok(Pusher {
        stats,
        stopping,
        producer: Some(producer),
        tasks: vec![sender],
    })
}

/// Runs `f` on the spool on a blocking thread (the spool does file I/O with fsync). `None`
/// when the runtime is shutting down.
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> T + Send + 'static,
) -> Option<T> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        f(&mut spool.lock().unwrap_or_else(PoisonError::into_inner))
    })
    .await
    .ok()
}

/// When to make a report. Pure; the producer feeds it snapshots' keys and the clock.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    debounce: Duration,
    last: Option<ChangeKey>,
    change_at: Option<Instant>,
    periodic_at: Instant,
}

impl Schedule {
    pub fn new(now: Instant, interval: Duration, debounce: Duration) -> Schedule {
        Schedule {
            interval,
            debounce,
            last: None,
            change_at: None,
            periodic_at: now + interval,
        }
    }

    /// A new snapshot arrived: a change from the last report is looked at again after the
    /// debounce (later snapshots within it do not push it further out).
    pub fn observe(&mut self, key: &ChangeKey, now: Instant) {
        if self.last.as_ref() != Some(key) && self.change_at.is_none() {
            self.change_at = Some(now + self.debounce);
        }
    }

    pub fn next_wakeup(&self) -> Instant {
        self.change_at
            .map_or(self.periodic_at, |c| c.min(self.periodic_at))
    }

    /// A state changed and changed back between two snapshots: a change all the same, looked
    /// at after the debounce like any other.
    pub fn observe_transition(&mut self, now: Instant) {
        if self.change_at.is_none() {
            self.change_at = Some(now + self.debounce);
        }
    }

    /// Whether a report is due now, with the newest snapshot's key; `transitions` says
    /// whether states changed since the last report (even if they are back where they were).
    pub fn due(&mut self, key: &ChangeKey, transitions: bool, now: Instant) -> Option<SentReason> {
        if self.change_at.is_some_and(|t| now >= t) {
            self.change_at = None;
            if self.last.as_ref() != Some(key) || transitions {
                return Some(SentReason::Change);
            }
        }
        (now >= self.periodic_at).then_some(SentReason::Periodic)
    }

    /// A report of `key` was made: the next periodic one is an interval from now.
    pub fn reported(&mut self, key: ChangeKey, now: Instant) {
        self.last = Some(key);
        self.change_at = None;
        self.periodic_at = now + self.interval;
    }
}

/// Transitions kept for the next report at most; older ones are counted, not kept.
const MAX_TRANSITIONS: usize = 100;

async fn produce(
    settings: Settings,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    mut events: broadcast::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<PushStats>,
) {
    let sources = settings.identity.clone();
    let user = std::env::var("USER").ok();
    let uid = crate::sys::uid();
    let Ok(id) = tokio::task::spawn_blocking(move || identity::read(&sources, uid, user)).await
    else {
        return;
    };
    let id = Arc::new(id);
    info!(
        instance_id = %id.vm.instance_id,
        identity = id.vm.source.as_str(),
        receiver = %receiver(&settings.url),
        interval_s = settings.interval.as_secs(),
        "cloud health push on"
    );
    let first = loop {
        if let Some(s) = snapshots.borrow_and_update().clone() {
            break s;
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    };
    let mut schedule = Schedule::new(Instant::now(), settings.interval, settings.debounce);
    let mut latest = first;
    let mut reason = SentReason::Startup;
    // State changes since the last report, from the event stream: a failure that is over by
    // the next snapshot still reaches the cloud.
    let mut transitions: Vec<Transition> = Vec::new();
    let mut transitions_dropped = 0u64;
    let mut events_open = true;
    loop {
        let key = ChangeKey::of(&latest);
        let sent = (
            std::mem::take(&mut transitions),
            std::mem::take(&mut transitions_dropped),
        );
        let Some(result) = spool_report(&spool, &id, latest.clone(), reason, sent).await else {
            return;
        };
        match result {
            Ok((a, len)) => {
                debug!(seq = a.seq, reason = reason.as_str(), "report spooled");
                PushStats::add(&stats.reports_total, 1);
                PushStats::add(&stats.dropped_total, a.dropped_now);
                PushStats::set(&stats.spooled, len as u64);
                if a.dropped_now > 0 {
                    warn!(
                        dropped = a.dropped_now,
                        seq = a.seq,
                        "the spool is full; dropped the oldest reports unsent"
                    );
                }
                wake.notify_one();
            }
            Err(err) => {
                warn!(err = %err, cause = %source_chain(&err), "cannot spool a health report")
            }
        }
        schedule.reported(key, Instant::now());
        if reason == SentReason::Shutdown {
            return;
        }
        // Wait for the next report to be due.
        reason = loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break SentReason::Shutdown,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if let Some(s) = snapshots.borrow_and_update().clone() {
                        latest = s;
                    }
                    schedule.observe(&ChangeKey::of(&latest), Instant::now());
                }
                e = events.recv(), if events_open => match e {
                    Ok(Event::Service { status, from: Some(from), at }) if from != status.state => {
                        if transitions.len() >= MAX_TRANSITIONS {
                            transitions.remove(0);
                            transitions_dropped += 1;
                        }
                        transitions.push(Transition {
                            service: status.name.clone(),
                            from,
                            to: status.state,
                            at,
                            reason: status.reason.clone(),
                        });
                        schedule.observe_transition(Instant::now());
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => transitions_dropped += n,
                    // The engine is gone; the snapshot watch says so too.
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                () = tokio::time::sleep_until(schedule.next_wakeup()) => {
                    let pending = !transitions.is_empty();
                    if let Some(r) = schedule.due(&ChangeKey::of(&latest), pending, Instant::now()) {
                        break r;
                    }
                }
            }
        };
    }
}

/// Builds and spools one report; the spool's length after it.
async fn spool_report(
    spool: &Arc<Mutex<Spool>>,
    id: &Arc<Identity>,
    snap: Arc<Snapshot>,
    reason: SentReason,
    (transitions, transitions_dropped): (Vec<Transition>, u64),
) -> Option<Result<(spool::Appended, usize), SpoolError>> {
    let id = id.clone();
    let now = now_unix();
    with_spool(spool, move |s| {
        s.append(|seq, dropped| {
            let mut r = Report::build(&id, &snap, seq, reason, now, dropped);
            r.transitions = transitions;
            r.transitions_dropped = transitions_dropped;
            serde_json::to_vec(&r)
        })
        .map(|a| (a, s.len()))
    })
    .await
}

/// The scheme and host of the receiver, for logs (a URL may carry credentials in its path).
fn receiver(url: &str) -> String {
    match url.parse::<hyper::Uri>() {
        Ok(u) => format!(
            "{}://{}",
            u.scheme_str().unwrap_or("?"),
            u.authority().map_or("?", |a| a.as_str())
        ),
        Err(_) => "?".into(),
    }
}

async fn send<D: Deliver>(
    delivery: D,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<PushStats>,
    backoff: Backoff,
) {
    let mut delay = backoff.first;
    // The last failure logged, so an outage is one warning and not one per attempt.
    let mut failing: Option<String> = None;
    loop {
        let Some(next) = with_spool(&spool, Spool::take_oldest).await else {
            return;
        };
        let (seq, body) = match next {
            Ok(Some(r)) => r,
            Ok(None) => {
                wake.notified().await;
                continue;
            }
            Err(err) => {
                PushStats::add(&stats.dropped_total, 1);
                warn!(err = %err, cause = %source_chain(&err), "a spooled report cannot be read; dropped it");
                continue;
            }
        };
        let outcome = delivery.deliver(body).await;
        let (why, wait) = match outcome {
            Outcome::Accepted => {
                let Some((removed, len)) =
                    with_spool(&spool, move |s| (s.delivered(seq), s.len())).await
                else {
                    return;
                };
                if let Err(err) = removed {
                    warn!(err = %err, cause = %source_chain(&err), seq, "delivered, but cannot remove the report from the spool; it will be sent again after a restart");
                }
                PushStats::add(&stats.delivered_total, 1);
                PushStats::set(&stats.spooled, len as u64);
                PushStats::set(&stats.last_delivery_unix, now_unix());
                if failing.take().is_some() {
                    info!(seq, spooled = len, "the receiver accepts reports again");
                }
                debug!(seq, "report delivered");
                delay = backoff.first;
                continue;
            }
            Outcome::Unavailable(why) => {
                let wait = delay;
                delay = (delay * 2).min(backoff.max);
                (why, wait)
            }
            Outcome::Rejected(why) => (
                format!("{why} (the receiver refuses the report: is the bearer token or the URL wrong?)"),
                backoff.max,
            ),
        };
        if with_spool(&spool, Spool::release).await.is_none() {
            return;
        }
        PushStats::add(&stats.failed_attempts_total, 1);
        let spooled = stats.spooled.load(Ordering::Relaxed);
        if failing.as_deref() != Some(why.as_str()) {
            warn!(seq, spooled, retry_in_s = wait.as_secs_f32(), error = %why, "cannot deliver the health report; keeping it in the spool");
            failing = Some(why);
        } else {
            debug!(seq, spooled, retry_in_s = wait.as_secs_f32(), error = %why, "delivery failed again");
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
