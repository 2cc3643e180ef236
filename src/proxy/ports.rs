//! The stable ports: one listener per enabled service port on `127.0.0.1`, forwarding each
//! connection to the port Podman published for the container (a random loopback port).
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
use crate::podman::Podman;

/// Clients that may wait for one port's service to start; more are closed at once.
pub const MAX_WAITING: usize = 256;
/// How long a client of a service that is not on-demand waits for it to come up.
const WAIT_NOT_ON_DEMAND: Duration = Duration::from_secs(10);
/// How long a resolved backend address is trusted before asking Podman again.
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

/// What the proxy needs of the engine.
pub trait Engine: Send + Sync + Clone + 'static {
    /// Start an on-demand service now; returns when systemd accepted the start.
    fn demand(&self, service: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// The service had no connection for its idle time.
    fn idle(&self, service: &str) -> impl Future<Output = ()> + Send;
}

/// Start-on-demand figures of one service.
#[derive(Debug, Default)]
pub struct DemandStats {
    pub starts: AtomicU64,
    /// Sum and last of the time from the first byte of demand to a ready backend, in µs.
    pub wait_us_sum: AtomicU64,
    pub wait_us_last: AtomicU64,
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
    counters: Mutex<BTreeMap<u16, (String, Arc<Counters>)>>,
    demand: Mutex<BTreeMap<String, Arc<DemandStats>>>,
    backends: Mutex<BTreeMap<(String, u16), (SocketAddr, Instant)>>,
    activity: Mutex<BTreeMap<String, Arc<Activity>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            stop: watch::channel(false).0,
            bind_errors: Mutex::default(),
            counters: Mutex::default(),
            demand: Mutex::default(),
            backends: Mutex::default(),
            activity: Mutex::default(),
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
    /// The published loopback address of a service's container port, if known and fresh.
    pub fn backend(&self, service: &str, container_port: u16) -> Option<SocketAddr> {
        lock(&self.backends)
            .get(&(service.to_string(), container_port))
            .filter(|(_, at)| at.elapsed() < BACKEND_TTL)
            .map(|(a, _)| *a)
    }

    /// Why the service's stable port cannot be served, if it cannot.
    pub fn bind_error(&self, service: &str) -> Option<String> {
        lock(&self.bind_errors).get(service).cloned()
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
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    s.listen(1024)
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
                    let who = super::owner::describe(*port)
                        .map(|w| format!(" by {w}"))
                        .unwrap_or_default();
                    let msg = format!(
                        "cannot listen on 127.0.0.1:{port}: {e}{}",
                        if who.is_empty() {
                            String::new()
                        } else {
                            format!(" (taken{who})")
                        }
                    );
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

fn listener_for(
    port: u16,
    inherited: &mut BTreeMap<String, OwnedFd>,
) -> std::io::Result<TcpListener> {
    if let Some(fd) = inherited.remove(&fd_name(port)) {
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        debug!(port, "listener taken over from systemd's store");
        return TcpListener::from_std(std_listener);
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
        let (spec, podman, engine, shared, counters, waiting) = (
            spec.clone(),
            podman.clone(),
            engine.clone(),
            shared.clone(),
            counters.clone(),
            waiting.clone(),
        );
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
}

async fn connection<P: Podman, E: Engine>(
    client: TcpStream,
    spec: &PortSpec,
    podman: &P,
    engine: &E,
    shared: &Shared,
    counters: &Counters,
    waiting: &Semaphore,
) -> Result<(), String> {
    // Warm path: a known backend that accepts.
    if let Some(addr) = shared.backend(&spec.service, spec.container_port) {
        if let Ok(backend) = TcpStream::connect(addr).await {
            return forward::pipe(client, backend, counters)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
    }
    // Cold path: find (or start) the backend, bounded in waiting clients and in time.
    let Ok(_permit) = waiting.try_acquire() else {
        return Err(format!(
            "more than {MAX_WAITING} clients waiting for {}; closing",
            spec.service
        ));
    };
    let addr = cold_backend(spec, podman, engine, shared).await?;
    let backend = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    forward::pipe(client, backend, counters)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The published address of the service's port and the container's pid.
async fn resolve<P: Podman>(
    spec: &PortSpec,
    podman: &P,
    shared: &Shared,
) -> Option<(SocketAddr, u32)> {
    let inspect = podman.inspect(&spec.container).await.ok().flatten()?;
    if !inspect.running {
        return None;
    }
    let host = *inspect.ports.get(&spec.container_port)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], host));
    lock(&shared.backends).insert(
        (spec.service.clone(), spec.container_port),
        (addr, Instant::now()),
    );
    Some((addr, inspect.pid))
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

async fn cold_backend<P: Podman, E: Engine>(
    spec: &PortSpec,
    podman: &P,
    engine: &E,
    shared: &Shared,
) -> Result<SocketAddr, String> {
    let started = Instant::now();
    let limit = if spec.on_demand {
        spec.start_wait
    } else {
        WAIT_NOT_ON_DEMAND
    };
    let mut demanded = false;
    loop {
        if let Some((addr, pid)) = resolve(spec, podman, shared).await {
            // Ask the container's own socket table; only where that is unreadable, fall back
            // to watching how the port forwarder treats a connection.
            let ready = match listening_inside(pid, spec.container_port) {
                Some(listening) => listening,
                None => answers(addr).await,
            };
            if ready {
                if demanded {
                    let stats = shared.demand_stats(&spec.service);
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    stats.wait_us_sum.fetch_add(us, Ordering::Relaxed);
                    stats.wait_us_last.store(us, Ordering::Relaxed);
                    info!(service = %spec.service, ms = us / 1000, "started on demand");
                }
                return Ok(addr);
            }
        } else if spec.on_demand && !demanded {
            shared
                .demand_stats(&spec.service)
                .starts
                .fetch_add(1, Ordering::Relaxed);
            engine.demand(&spec.service).await?;
            demanded = true;
            continue;
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{} did not answer within {}s",
                spec.service,
                limit.as_secs()
            ));
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
}
