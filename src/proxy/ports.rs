//! The stable ports: one listener per enabled service port on `127.0.0.1`, forwarding each
//! connection into the container: straight into its network namespace where berth can enter
//! it ([`super::netns`], one relay on the path), else to the port Podman published for it (a
//! random loopback port behind Podman's own forwarder).
//!
//! - Listeners come from systemd's file descriptor store when berth restarts, so clients that
//!   connect during a restart wait in the kernel's backlog instead of being refused. New
//!   listeners are handed to the store.
//! - A connection to an on-demand service that is not running asks the engine to start it,
//!   waits (bounded) until the container answers, then flows. Clients arriving meanwhile queue,
//!   at most [`MAX_WAITING`] per port; more are closed at once.
//! - A service with no open connection for its idle time is reported idle to the engine, which
//!   stops it.
//!
//! The engine tells this task which ports to serve through a watch of [`PortSpec`]s and reads
//! back bind errors, counters and resolved backends through [`Shared`].

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::forward::{self, Counters};
use super::netns::Netns;
use crate::podman::Podman;

/// Clients that may wait for one port's service to start; more are closed at once.
pub const MAX_WAITING: usize = 256;
/// How long a client of a service that is not on-demand waits for it to come up.
const WAIT_NOT_ON_DEMAND: Duration = Duration::from_secs(10);
/// How long a resolved backend is fresh. An older one is still used (a container that was
/// replaced refuses the connection, which sends it down the cold path), while one refresh in
/// the background asks Podman again: a burst of new connections never waits for Podman.
const BACKEND_TTL: Duration = Duration::from_secs(2);

/// One stable port berth serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub service: String,
    pub name: String,
    /// The stable port on 127.0.0.1.
    pub port: u16,
    /// The port inside the container, published by Podman on a random loopback port.
    pub container_port: u16,
    /// A container of the service to ask Podman about (containers of a pod share ports).
    pub container: String,
    pub on_demand: bool,
    pub idle_stop: Duration,
    /// How long a first connection waits for an on-demand start.
    pub start_wait: Duration,
}

/// Why the engine could not start a service for a client.
pub type DemandError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy needs of the engine.
pub trait Engine: Send + Sync + Clone + 'static {
    /// Start an on-demand service now; returns when systemd accepted the start.
    fn demand(&self, service: &str) -> impl Future<Output = Result<(), DemandError>> + Send;
    /// The service had no connection for its idle time.
    fn idle(&self, service: &str) -> impl Future<Output = ()> + Send;
    /// Whether the engine last saw the service idle (on-demand and not running): its first
    /// connection can start it at once, without asking Podman first.
    fn seen_idle(&self, service: &str) -> bool;
}

/// Start-on-demand figures of one service.
#[derive(Debug, Default)]
pub struct DemandStats {
    pub starts: AtomicU64,
    /// Sum and last of the time from the first byte of demand to a ready backend, in µs.
    pub wait_us_sum: AtomicU64,
    pub wait_us_last: AtomicU64,
    /// When the start in progress was asked for: the clients that arrive meanwhile wait for
    /// it instead of asking (and counting) again.
    asked: Mutex<Option<Instant>>,
}

#[derive(Debug)]
struct Activity {
    active: AtomicUsize,
    last: Mutex<Instant>,
    idle_sent: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            idle_sent: AtomicBool::new(false),
        }
    }
}

/// State shared with the engine and /metrics. Short critical sections only.
#[derive(Debug)]
pub struct Shared {
    /// Set when berth stops: listeners stop accepting (the kernel keeps queueing on the
    /// sockets systemd holds) and open connections get time to finish.
    stop: watch::Sender<bool>,
    /// Why a service's port could not be served (e.g. taken by another program).
    bind_errors: Mutex<BTreeMap<String, String>>,
    /// Services that cannot start now (failed), with the reason: their clients are answered
    /// at once instead of waiting.
    unavailable: Mutex<BTreeMap<String, String>>,
    counters: Mutex<BTreeMap<u16, (String, Arc<Counters>)>>,
    demand: Mutex<BTreeMap<String, Arc<DemandStats>>>,
    backends: Mutex<BTreeMap<(String, u16), (Backend, Instant)>>,
    /// Socket helpers by container pid; `None` where the namespace cannot be entered.
    netns: Mutex<BTreeMap<u32, Option<Arc<Netns>>>>,
    /// Backends (service, container port) being refreshed in the background.
    refreshing: Mutex<std::collections::BTreeSet<(String, u16)>>,
    activity: Mutex<BTreeMap<String, Arc<Activity>>>,
    /// Counters of the relays inside consumers' network namespaces, by (consumer, service,
    /// port).
    relay_counters: Mutex<BTreeMap<(String, String, u16), Arc<Counters>>>,
    /// Asks for a consumer's relays (`berth relays-ready`), served by [`super::relays::run`].
    relay_tx: tokio::sync::mpsc::UnboundedSender<super::relays::Request>,
    relay_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<super::relays::Request>>>,
}

impl Default for Shared {
    fn default() -> Self {
        let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
        Shared {
            stop: watch::channel(false).0,
            bind_errors: Mutex::default(),
            unavailable: Mutex::default(),
            counters: Mutex::default(),
            demand: Mutex::default(),
            backends: Mutex::default(),
            netns: Mutex::default(),
            refreshing: Mutex::default(),
            activity: Mutex::default(),
            relay_counters: Mutex::default(),
            relay_tx,
            relay_rx: Mutex::new(Some(relay_rx)),
        }
    }
}

/// Stops accepting and waits (at most `limit`) for open connections to finish, so a restart
/// of berth cuts no client off.
pub async fn drain(shared: &Shared, limit: Duration) {
    shared.stop.send_replace(true);
    let start = Instant::now();
    loop {
        let open: usize = lock(&shared.activity)
            .values()
            .map(|a| a.active.load(Ordering::Relaxed))
            .sum();
        if open == 0 || start.elapsed() >= limit {
            if open > 0 {
                warn!(open, "stopping with connections still open");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Where a service's container port was last seen, and whether that is still fresh.
    fn backend(&self, service: &str, container_port: u16) -> Option<(Backend, bool)> {
        lock(&self.backends)
            .get(&(service.to_string(), container_port))
            .map(|(b, at)| (*b, at.elapsed() < BACKEND_TTL))
    }

    /// The socket helper of a container's network namespace, started at first use (on the
    /// blocking pool: it forks). A namespace that cannot be entered is remembered, so the
    /// published port is used without trying again for every connection.
    async fn netns(&self, pid: u32) -> Option<Arc<Netns>> {
        if let Some(known) = lock(&self.netns).get(&pid) {
            return known.clone();
        }
        let opened = tokio::task::spawn_blocking(move || Netns::open(pid))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        let made = match opened {
            Ok(n) => {
                debug!(
                    pid,
                    "forwarding straight into the container's network namespace"
                );
                Some(Arc::new(n))
            }
            Err(err) => {
                info!(pid, %err, "cannot enter the container's network namespace ({err}); forwarding to its published port");
                None
            }
        };
        // Another connection may have opened it meanwhile: keep the first, drop ours.
        lock(&self.netns).entry(pid).or_insert(made).clone()
    }

    /// Forgets helpers of containers no resolved backend points at any more (their helpers
    /// exit as the last connection using them ends).
    fn prune_netns(&self) {
        let live: std::collections::BTreeSet<u32> =
            lock(&self.backends).values().map(|(b, _)| b.pid).collect();
        lock(&self.netns).retain(|pid, _| live.contains(pid));
    }

    /// Why the service's stable port cannot be served, if it cannot.
    pub fn bind_error(&self, service: &str) -> Option<String> {
        lock(&self.bind_errors).get(service).cloned()
    }

    /// Every stable port that cannot be served, by service.
    pub fn bind_errors(&self) -> BTreeMap<String, String> {
        lock(&self.bind_errors).clone()
    }

    /// The engine's word on which services cannot start now: all of them, or (with `only`)
    /// whether that one can.
    pub fn set_unavailable(&self, down: BTreeMap<String, String>, only: Option<&str>) {
        let mut map = lock(&self.unavailable);
        match only {
            None => *map = down,
            Some(name) => match down.get(name) {
                Some(why) => {
                    map.insert(name.to_string(), why.clone());
                }
                None => {
                    map.remove(name);
                }
            },
        }
    }

    /// Why `service` cannot start now, if the engine said so.
    pub fn unavailable(&self, service: &str) -> Option<String> {
        lock(&self.unavailable).get(service).cloned()
    }

    /// Counters of every stable port served: (port, service, counters).
    pub fn port_counters(&self) -> Vec<(u16, String, Arc<Counters>)> {
        lock(&self.counters)
            .iter()
            .map(|(p, (s, c))| (*p, s.clone(), c.clone()))
            .collect()
    }

    /// Start-on-demand figures of every service started by a connection.
    pub fn demand_counters(&self) -> Vec<(String, Arc<DemandStats>)> {
        lock(&self.demand)
            .iter()
            .map(|(s, d)| (s.clone(), d.clone()))
            .collect()
    }

    /// Counters of every relay: (consumer, service, port, counters).
    pub fn relay_counters(&self) -> Vec<(String, String, u16, Arc<Counters>)> {
        lock(&self.relay_counters)
            .iter()
            .map(|((c, s, p), k)| (c.clone(), s.clone(), *p, k.clone()))
            .collect()
    }

    pub(super) fn relay_counter(&self, consumer: &str, service: &str, port: u16) -> Arc<Counters> {
        lock(&self.relay_counters)
            .entry((consumer.to_string(), service.to_string(), port))
            .or_default()
            .clone()
    }

    pub(super) fn forget_relay_counters(&self, consumer: &str) {
        lock(&self.relay_counters).retain(|(c, _, _), _| c != consumer);
    }

    pub(super) fn take_relay_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<super::relays::Request>> {
        lock(&self.relay_rx).take()
    }

    /// Asks for the relays of `consumer` to listen inside its pod's network namespace and
    /// waits until they do: the number of ports, or why not.
    pub async fn relays_ready(&self, consumer: &str) -> Result<usize, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.relay_tx
            .send(super::relays::Request {
                consumer: consumer.to_string(),
                reply,
            })
            .map_err(|_| "berth's relays are not running".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("berth's relays stopped".to_string()))
    }

    fn activity(&self, service: &str) -> Arc<Activity> {
        lock(&self.activity)
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    fn demand_stats(&self, service: &str) -> Arc<DemandStats> {
        lock(&self.demand)
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    /// Marks a service as just used (a demand start or a connection).
    pub fn touch(&self, service: &str) {
        let a = self.activity(service);
        *lock(&a.last) = Instant::now();
        a.idle_sent.store(false, Ordering::Relaxed);
    }
}

fn fd_name(port: u16) -> String {
    format!("port-{port}")
}

/// Binds `127.0.0.1:port` with a deep backlog.
fn bind(port: u16) -> std::io::Result<TcpListener> {
    listen(TcpSocket::new_v4()?, port)
}

/// Makes `s` a listener on `127.0.0.1:port` of the namespace it was created in, with a deep
/// backlog.
pub(super) fn listen(s: TcpSocket, port: u16) -> std::io::Result<TcpListener> {
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.listen(1024)
}

/// A listener handed back by systemd's file descriptor store.
pub(super) fn adopt(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// A service's container port as last resolved.
#[derive(Debug, Clone, Copy)]
struct Backend {
    /// The loopback address Podman published the port on.
    published: SocketAddr,
    /// The container's main process (its network namespace is the application's).
    pid: u32,
}

struct Running {
    spec: PortSpec,
    task: JoinHandle<()>,
}

/// Runs the proxy until `specs` closes.
pub async fn run<P: Podman + Clone + 'static, E: Engine>(
    mut specs: watch::Receiver<Vec<PortSpec>>,
    inherited: Vec<(String, OwnedFd)>,
    podman: P,
    engine: E,
    shared: Arc<Shared>,
) {
    let mut inherited: BTreeMap<String, OwnedFd> = inherited.into_iter().collect();
    let mut running: BTreeMap<u16, Running> = BTreeMap::new();
    let mut owners = OwnerCache::default();
    let idle = tokio::spawn(idle_watch(specs.clone(), engine.clone(), shared.clone()));
    // Wait for the engine's first word before judging inherited sockets unwanted: closing
    // them early would refuse the very clients the store kept waiting.
    if !inherited.is_empty() && specs.borrow().is_empty() && specs.changed().await.is_err() {
        return;
    }
    loop {
        let want: Vec<PortSpec> = specs.borrow_and_update().clone();
        let wanted: BTreeMap<u16, PortSpec> = want.into_iter().map(|s| (s.port, s)).collect();
        // Close what is no longer wanted (or changed), then open what is missing.
        let stale: Vec<u16> = running
            .iter()
            .filter(|(p, r)| wanted.get(p) != Some(&r.spec))
            .map(|(p, _)| *p)
            .collect();
        for port in stale {
            if let Some(r) = running.remove(&port) {
                r.task.abort();
                let _aborted = r.task.await;
                if !wanted.contains_key(&port) {
                    info!(port, service = %r.spec.service, "closed stable port");
                    lock(&shared.counters).remove(&port);
                    if let Err(err) = crate::sys::fd_store_remove(&fd_name(port)) {
                        warn!(%err, port, "cannot drop listener from systemd's store");
                    }
                }
            }
        }
        let mut errors = BTreeMap::new();
        for (port, spec) in &wanted {
            if running.contains_key(port) {
                continue;
            }
            let listener = match listener_for(*port, &mut inherited) {
                Ok(l) => l,
                Err(e) => {
                    let who = owners
                        .describe(*port)
                        .await
                        .map(|w| format!(" (taken by {w})"))
                        .unwrap_or_default();
                    let msg = format!("cannot listen on 127.0.0.1:{port}: {e}{who}");
                    warn!(service = %spec.service, port, "{msg}");
                    errors.insert(spec.service.clone(), msg);
                    continue;
                }
            };
            let counters = lock(&shared.counters)
                .entry(*port)
                .or_insert_with(|| (spec.service.clone(), Arc::new(Counters::default())))
                .1
                .clone();
            let task = tokio::spawn(serve_port(
                listener,
                spec.clone(),
                podman.clone(),
                engine.clone(),
                shared.clone(),
                counters,
            ));
            running.insert(
                *port,
                Running {
                    spec: spec.clone(),
                    task,
                },
            );
        }
        *lock(&shared.bind_errors) = errors.clone();
        // Inherited sockets nobody wants any more.
        for (name, fd) in std::mem::take(&mut inherited) {
            drop(fd);
            let _gone = crate::sys::fd_store_remove(&name);
        }
        // A port that failed to bind is retried on the next change or every 30 s.
        let retry = !errors.is_empty();
        tokio::select! {
            changed = specs.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(Duration::from_secs(30)), if retry => {}
        }
    }
    idle.abort();
    for (_, r) in running {
        r.task.abort();
    }
}

/// Who holds a port, asked at most every [`OWNER_TTL`] per port: the answer scans every
/// process's open files, on the blocking pool.
#[derive(Debug, Default)]
struct OwnerCache {
    known: BTreeMap<u16, (Instant, Option<String>)>,
}

const OWNER_TTL: Duration = Duration::from_secs(120);

impl OwnerCache {
    async fn describe(&mut self, port: u16) -> Option<String> {
        if let Some((at, who)) = self.known.get(&port) {
            if at.elapsed() < OWNER_TTL {
                return who.clone();
            }
        }
        let who = tokio::task::spawn_blocking(move || super::owner::describe(port))
            .await
            .ok()
            .flatten();
        self.known.insert(port, (Instant::now(), who.clone()));
        who
    }
}

fn listener_for(
    port: u16,
    inherited: &mut BTreeMap<String, OwnedFd>,
) -> std::io::Result<TcpListener> {
    if let Some(fd) = inherited.remove(&fd_name(port)) {
        debug!(port, "listener taken over from systemd's store");
        return adopt(fd);
    }
    let l = bind(port)?;
    match crate::sys::fd_store(&fd_name(port), &[l.as_fd()]) {
        Ok(true) => debug!(port, "listener handed to systemd's store"),
        Ok(false) => {}
        Err(err) => {
            warn!(%err, port, "cannot hand the listener to systemd's store; a restart of berth will refuse connections briefly")
        }
    }
    info!(port, "listening");
    Ok(l)
}

async fn serve_port<P: Podman + Clone + 'static, E: Engine>(
    listener: TcpListener,
    spec: PortSpec,
    podman: P,
    engine: E,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
) {
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            // Keep the socket open (systemd holds it too): new clients wait in the backlog
            // for the next berth.
            std::future::pending::<()>().await;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => continue,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%err, port = spec.port, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        spawn_client(
            client,
            spec.clone(),
            podman.clone(),
            engine.clone(),
            shared.clone(),
            counters.clone(),
            waiting.clone(),
        );
    }
}

/// Serves one accepted client of a service's port (a stable port, or a relay to it), counted
/// as the service's activity.
pub(super) fn spawn_client<P: Podman + Clone + 'static, E: Engine>(
    client: TcpStream,
    spec: PortSpec,
    podman: P,
    engine: E,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    waiting: Arc<Semaphore>,
) {
    tokio::spawn(async move {
        let activity = shared.activity(&spec.service);
        activity.active.fetch_add(1, Ordering::Relaxed);
        shared.touch(&spec.service);
        let result = connection(
            client, &spec, &podman, &engine, &shared, &counters, &waiting,
        )
        .await;
        if let Err(err) = result {
            debug!(port = spec.port, service = %spec.service, %err, "connection ended with an error");
        }
        activity.active.fetch_sub(1, Ordering::Relaxed);
        shared.touch(&spec.service);
    });
}

/// Whether berth is stopping: listeners stop accepting then (see [`drain`]).
pub(super) fn stopping(shared: &Shared) -> watch::Receiver<bool> {
    shared.stop.subscribe()
}

/// Why a client's connection was not served.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("more than {MAX_WAITING} clients waiting for {0}; closing")]
    TooMany(String),
    #[error("{service} cannot start: {reason}")]
    Unavailable { service: String, reason: String },
    #[error("{service} did not answer within {secs}s")]
    Timeout { service: String, secs: u64 },
    #[error("starting {service} on demand failed")]
    Demand {
        service: String,
        #[source]
        source: DemandError,
    },
    #[error("connect {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("forwarding failed")]
    Forward(#[source] std::io::Error),
}

async fn connection<P: Podman + Clone + 'static, E: Engine>(
    client: TcpStream,
    spec: &PortSpec,
    podman: &P,
    engine: &E,
    shared: &Arc<Shared>,
    counters: &Counters,
    waiting: &Semaphore,
) -> Result<(), ConnError> {
    // Warm path: a known backend that accepts.
    if let Some((b, fresh)) = shared.backend(&spec.service, spec.container_port) {
        if !fresh {
            refresh(spec, podman, shared);
        }
        if let Ok(backend) = connect(shared, b, spec.container_port, fresh, counters).await {
            return forward::pipe(client, backend, counters)
                .await
                .map(|_| ())
                .map_err(ConnError::Forward);
        }
    }
    // A service that cannot start: say so at once instead of keeping the client waiting. (A
    // client of an on-demand service is a user acting: the engine retries it instead.)
    if let Some(reason) = shared
        .unavailable(&spec.service)
        .filter(|_| !spec.on_demand)
    {
        let e = ConnError::Unavailable {
            service: spec.service.clone(),
            reason,
        };
        refuse(client, &spec.service, &e).await;
        return Err(e);
    }
    // Cold path: find (or start) the backend, bounded in waiting clients and in time.
    let Ok(_permit) = waiting.try_acquire() else {
        return Err(ConnError::TooMany(spec.service.clone()));
    };
    let b = match cold_backend(spec, podman, engine, shared).await {
        Ok(b) => b,
        Err(e) => {
            refuse(client, &spec.service, &e).await;
            return Err(e);
        }
    };
    let backend = connect(shared, b, spec.container_port, true, counters)
        .await
        .map_err(|source| ConnError::Connect {
            addr: b.published,
            source,
        })?;
    forward::pipe(client, backend, counters)
        .await
        .map(|_| ())
        .map_err(ConnError::Forward)
}

/// Answers a client whose service cannot be reached: an HTTP client gets a `503` page that
/// says why and how to retry; anything else is closed at once.
pub(super) async fn refuse(mut client: TcpStream, service: &str, why: &ConnError) {
    use tokio::io::AsyncWriteExt as _;
    let mut buf = [0u8; 1024];
    // HTTP clients speak first; wait briefly for their request line.
    let n = match tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => 0,
    };
    if looks_like_http(&buf[..n]) {
        let page = error_page(service, &why.to_string());
        let _client_may_be_gone = client.write_all(page.as_bytes()).await;
        let _client_may_be_gone = client.shutdown().await;
    }
}

/// Whether `head` starts like an HTTP/1 request (`GET / HTTP/1.1`).
fn looks_like_http(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let method = line.split(|b| *b == b' ').next().unwrap_or_default();
    !method.is_empty()
        && method.len() <= 10
        && method.iter().all(u8::is_ascii_uppercase)
        && line.windows(6).any(|w| w == b" HTTP/")
}

/// A small `503 Service Unavailable` answer for a browser or an HTTP client.
fn error_page(service: &str, why: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{svc} is not available</title>\
         <style>body{{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;color:#222}}\
         code{{background:#eee;padding:.1em .3em}}</style></head><body>\
         <h1>{svc} is not available</h1><p>{why}</p>\
         <p>berth serves this port for <b>{svc}</b>. Try <code>berth start {svc}</code>, or \
         <code>berth status {svc}</code> to see more.</p></body></html>\n",
        svc = esc(service),
        why = esc(why),
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nRetry-After: 10\r\n\
         Connection: close\r\nX-Berth-Service: {service}\r\n\r\n{body}",
        body.len()
    )
}

/// A connection to the application: inside the container's network namespace where possible,
/// else through the published port — only a `fresh` one: a container that stopped since may
/// have handed its published port to another.
async fn connect(
    shared: &Shared,
    b: Backend,
    container_port: u16,
    fresh: bool,
    counters: &Counters,
) -> std::io::Result<TcpStream> {
    if let Some(ns) = shared.netns(b.pid).await {
        let inside = SocketAddr::from(([127, 0, 0, 1], container_port));
        match ns.socket().await {
            Ok(socket) => match socket.connect(inside).await {
                Ok(stream) => {
                    counters.inside_total.fetch_add(1, Ordering::Relaxed);
                    return Ok(stream);
                }
                // E.g. an application bound to the container's external address only.
                Err(err) => {
                    debug!(%err, pid = b.pid, container_port, "connect inside the container")
                }
            },
            Err(err) => {
                warn!(%err, pid = b.pid, "socket helper failed; forwarding to the published port");
                lock(&shared.netns).insert(b.pid, None);
            }
        }
    }
    if !fresh {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "backend to be resolved again",
        ));
    }
    TcpStream::connect(b.published).await
}

/// Asks Podman again about a backend, in the background, once at a time per backend.
fn refresh<P: Podman + Clone + 'static>(spec: &PortSpec, podman: &P, shared: &Arc<Shared>) {
    let key = (spec.service.clone(), spec.container_port);
    if !lock(&shared.refreshing).insert(key.clone()) {
        return;
    }
    let (spec, podman, shared) = (spec.clone(), podman.clone(), shared.clone());
    tokio::spawn(async move {
        let _found = resolve(&spec, &podman, &shared).await;
        lock(&shared.refreshing).remove(&key);
    });
}

/// The published address of the service's port and the container's pid.
async fn resolve<P: Podman>(spec: &PortSpec, podman: &P, shared: &Shared) -> Option<Backend> {
    let key = (spec.service.clone(), spec.container_port);
    let inspect = match podman.inspect(&spec.container).await {
        Ok(i) => i,
        Err(err) => {
            // Podman's API does not answer (its socket stopped, a hang): what runs keeps
            // running, so keep forwarding to where the container was last seen.
            debug!(%err, service = %spec.service, "cannot ask Podman; using the last known backend");
            return lock(&shared.backends).get(&key).map(|(b, _)| *b);
        }
    };
    let Some(inspect) = inspect.filter(|i| i.running) else {
        // Gone or stopped: its namespace helper can go too.
        if lock(&shared.backends).remove(&key).is_some() {
            shared.prune_netns();
        }
        return None;
    };
    let host = *inspect.ports.get(&spec.container_port)?;
    let b = Backend {
        published: SocketAddr::from(([127, 0, 0, 1], host)),
        pid: inspect.pid,
    };
    let replaced = lock(&shared.backends)
        .insert(key, (b, Instant::now()))
        .is_some_and(|(old, _)| old.pid != b.pid);
    if replaced {
        shared.prune_netns();
    }
    Some(b)
}

/// Whether the application inside the container listens on `port`, read from its network
/// namespace (`/proc/PID/net/tcp{,6}`); `None` when that cannot be read.
fn listening_inside(pid: u32, port: u16) -> Option<bool> {
    if pid == 0 {
        return None;
    }
    let mut readable = false;
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            readable = true;
            if super::owner::listening_inode(&text, port).is_some() {
                return Some(true);
            }
        }
    }
    readable.then_some(false)
}

/// Whether something behind `addr` really serves: Podman's port forwarder accepts even while
/// the application inside is not listening yet, and then closes at once. A server that waits
/// for the client (HTTP) or greets it (SSH) is ready; an immediate close is not.
async fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// Whether the application of a running container listens yet. Asks the container's own socket
/// table, every 2 ms for up to half a second (a read of /proc, no Podman call, so the polling
/// costs the starting container nothing); only where that is unreadable, falls back to watching
/// how the port forwarder treats a connection.
async fn ready(b: Backend, container_port: u16) -> bool {
    let until = Instant::now() + Duration::from_millis(500);
    loop {
        match listening_inside(b.pid, container_port) {
            Some(true) => return true,
            Some(false) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Some(false) => return false,
            None => return answers(b.published).await,
        }
    }
}

/// Asks the engine to start the service unless another connection just did; whether this one
/// asked.
async fn demand_once<E: Engine>(
    spec: &PortSpec,
    engine: &E,
    shared: &Shared,
) -> Result<bool, ConnError> {
    if !first_to_demand(shared, spec) {
        return Ok(false);
    }
    if let Err(source) = engine.demand(&spec.service).await {
        // The next connection tries again.
        *lock(&shared.demand_stats(&spec.service).asked) = None;
        return Err(ConnError::Demand {
            service: spec.service.clone(),
            source,
        });
    }
    Ok(true)
}

/// Whether this connection should ask the engine for the start (and count it): not when
/// another one asked within the start wait and the service has not come up since.
fn first_to_demand(shared: &Shared, spec: &PortSpec) -> bool {
    let stats = shared.demand_stats(&spec.service);
    let mut asked = lock(&stats.asked);
    if asked.is_some_and(|t| t.elapsed() < spec.start_wait) {
        return false;
    }
    *asked = Some(Instant::now());
    stats.starts.fetch_add(1, Ordering::Relaxed);
    true
}

async fn cold_backend<P: Podman + Clone + 'static, E: Engine>(
    spec: &PortSpec,
    podman: &P,
    engine: &E,
    shared: &Shared,
) -> Result<Backend, ConnError> {
    let started = Instant::now();
    let limit = if spec.on_demand {
        spec.start_wait
    } else {
        WAIT_NOT_ON_DEMAND
    };
    // Whether a start was asked for (by this connection or one before it), and whether by this
    // one: only that one records the time to ready.
    let (mut demanded, mut asked_here) = (false, false);
    if spec.on_demand && engine.seen_idle(&spec.service) {
        // Start at once; meanwhile wake Podman's API service (socket-activated, it exits when
        // idle and takes tens of ms to come back), which the wait below asks.
        let wake = podman.clone();
        tokio::spawn(async move {
            let _answer_or_not = wake.ping().await;
        });
        asked_here = demand_once(spec, engine, shared).await?;
        demanded = true;
    }
    loop {
        if let Some(b) = resolve(spec, podman, shared).await {
            if ready(b, spec.container_port).await {
                if demanded {
                    let stats = shared.demand_stats(&spec.service);
                    *lock(&stats.asked) = None;
                    if asked_here {
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        stats.wait_us_sum.fetch_add(us, Ordering::Relaxed);
                        stats.wait_us_last.store(us, Ordering::Relaxed);
                        info!(service = %spec.service, ms = us / 1000, "started on demand");
                    }
                }
                return Ok(b);
            }
        } else if spec.on_demand && !demanded {
            asked_here = demand_once(spec, engine, shared).await?;
            demanded = true;
            continue;
        }
        if started.elapsed() > limit {
            return Err(ConnError::Timeout {
                service: spec.service.clone(),
                secs: limit.as_secs(),
            });
        }
        // It failed meanwhile (a pull, a crash): no point in waiting out the limit.
        if let Some(reason) = shared.unavailable(&spec.service) {
            return Err(ConnError::Unavailable {
                service: spec.service.clone(),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Tells the engine about on-demand services nobody used for their idle time.
async fn idle_watch<E: Engine>(
    specs: watch::Receiver<Vec<PortSpec>>,
    engine: E,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let on_demand: BTreeMap<String, Duration> = specs
            .borrow()
            .iter()
            .filter(|s| s.on_demand)
            .map(|s| (s.service.clone(), s.idle_stop))
            .collect();
        for (service, idle_stop) in on_demand {
            let a = shared.activity(&service);
            let quiet =
                a.active.load(Ordering::Relaxed) == 0 && lock(&a.last).elapsed() >= idle_stop;
            if quiet && !a.idle_sent.swap(true, Ordering::Relaxed) {
                info!(%service, "idle");
                engine.idle(&service).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_state_from_a_process_network_namespace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(listening_inside(std::process::id(), port), Some(true));
        drop(l);
        assert_eq!(listening_inside(std::process::id(), port), Some(false));
        assert_eq!(listening_inside(0, port), None, "no pid, no answer");
    }

    #[test]
    fn http_requests_are_told_apart_from_other_protocols() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(looks_like_http(b"POST /api/v1/x HTTP/1.0\r\n"));
        assert!(!looks_like_http(b"SSH-2.0-OpenSSH_9.2\r\n"));
        assert!(!looks_like_http(b""));
        assert!(!looks_like_http(b"\x16\x03\x01\x02\x00"), "a TLS hello");
    }

    #[test]
    fn the_error_page_says_why_escaped_and_has_a_true_length() {
        let page = error_page("demo", "cannot pull <img>: no route");
        let (head, body) = page.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .expect("content length");
        assert_eq!(len, body.len());
        assert!(body.contains("cannot pull &lt;img&gt;: no route"), "{body}");
        assert!(body.contains("berth start demo"), "{body}");
    }
}
