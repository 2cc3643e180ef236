//! Relays inside a consumer's network namespace: a service that `uses` others reaches each of
//! them on its own `127.0.0.1`, at the used service's stable port, and nothing else of the
//! host.
//!
//! Such a service runs as a pod. Its infra container holds the pod's network namespace from
//! the pod unit's start, before any application container exists. Each application
//! container's unit first runs `berth relays-ready NAME` (an `ExecStartPre=`), which asks the
//! daemon for the relays and returns once berth listens inside that namespace; only then does
//! systemd run the container. So the application's first connection finds its listener: there
//! is no window in which it could be refused.
//!
//! berth gets the listening sockets from the namespace's socket helper ([`super::netns`]): a
//! socket belongs to the namespace it was created in, so `bind(127.0.0.1:PORT)` and `listen`
//! there make a listener inside the pod that berth's own threads accept on. Each accepted
//! connection is served like one on the used service's stable port (on-demand start included,
//! counted as that service's activity), and counted per relay.
//!
//! Listeners are handed to systemd's file descriptor store under
//! `relay-<consumer>-<port>-<namespace inode>`, so a restart of berth keeps them (clients wait
//! in the backlog); a new berth takes back those of namespaces that still exist. They close
//! when the namespace's infra process exits (watched with a pidfd, no polling), when the
//! consumer is no longer enabled, and are made anew for a new pod.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::netns::Netns;
use super::ports::{self, ConnError, Engine, PortSpec, Shared, MAX_WAITING};
use crate::podman::Podman;

/// A service that uses others, with the ports berth relays for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayWant {
    pub consumer: String,
    /// Its pod's name.
    pub pod: String,
    pub ports: Vec<RelayPort>,
}

/// One used service's port, as the consumer reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPort {
    pub service: String,
    pub port: u16,
    /// How to serve it; `None` while the used service is not enabled (its clients are told
    /// so at once).
    pub spec: Option<PortSpec>,
}

/// A request for a consumer's relays; the answer is the number of ports relayed.
#[derive(Debug)]
pub struct Request {
    pub consumer: String,
    pub reply: oneshot::Sender<Result<usize, String>>,
}

/// The fd store name of a relay listener.
fn fd_name(consumer: &str, port: u16, ns: u64) -> String {
    format!("relay-{consumer}-{port}-{ns}")
}

/// Whether an fd store name is a relay's (the stable ports' are `port-N`).
pub fn is_relay_fd(name: &str) -> bool {
    name.starts_with("relay-")
}

/// The relays of one consumer's namespace.
struct Active {
    pid: u32,
    ns: u64,
    listeners: BTreeMap<u16, (String, JoinHandle<()>)>,
    /// Tells the task when the infra process exits.
    watch: JoinHandle<()>,
}

impl Active {
    fn close(self, shared: &Shared, consumer: &str, why: &str) {
        self.watch.abort();
        for (port, (name, task)) in self.listeners {
            task.abort();
            if let Err(err) = crate::sys::fd_store_remove(&name) {
                warn!(%err, consumer, port, "cannot drop relay listener from systemd's store");
            }
        }
        shared.forget_relay_counters(consumer);
        info!(consumer, "closed relays ({why})");
    }
}

struct Relays<P, E> {
    podman: P,
    engine: E,
    shared: Arc<Shared>,
    wants: watch::Receiver<Vec<RelayWant>>,
    active: BTreeMap<String, Active>,
    /// Listeners a previous berth left in systemd's store, by name, until claimed.
    inherited: BTreeMap<String, OwnedFd>,
    gone_tx: mpsc::UnboundedSender<(String, u32)>,
}

/// Runs the relays until `wants` closes (the engine stopped).
pub async fn run<P: Podman + Clone + 'static, E: Engine>(
    mut wants: watch::Receiver<Vec<RelayWant>>,
    inherited: Vec<(String, OwnedFd)>,
    podman: P,
    engine: E,
    shared: Arc<Shared>,
) {
    let Some(mut requests) = shared.take_relay_requests() else {
        warn!("relays already running");
        return;
    };
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel();
    let mut r = Relays {
        podman,
        engine,
        shared,
        wants: wants.clone(),
        active: BTreeMap::new(),
        inherited: inherited.into_iter().collect(),
        gone_tx,
    };
    // Consumers whose pods already run (berth restarted under them) get their relays back as
    // soon as the engine names them, taking back the listeners the store kept; listeners
    // nobody claims go once the engine has spoken (or after a while, if it names nobody).
    let mut leftovers = (!r.inherited.is_empty())
        .then(|| Box::pin(tokio::time::sleep(std::time::Duration::from_secs(30))));
    if !wants.borrow_and_update().is_empty() {
        r.restore().await;
    }
    loop {
        tokio::select! {
            changed = wants.changed() => {
                if changed.is_err() {
                    break;
                }
                let wanted: Vec<String> = wants.borrow_and_update().iter().map(|w| w.consumer.clone()).collect();
                let unwanted: Vec<String> = r.active.keys().filter(|c| !wanted.contains(c)).cloned().collect();
                for c in unwanted {
                    if let Some(a) = r.active.remove(&c) {
                        a.close(&r.shared, &c, "not enabled any more");
                    }
                }
                r.restore().await;
            }
            Some(req) = requests.recv() => {
                let answer = r.ensure(&req.consumer).await;
                match &answer {
                    Ok(n) => info!(consumer = %req.consumer, ports = n, "relays ready"),
                    Err(why) => warn!(consumer = %req.consumer, "relays not ready: {why}"),
                }
                let _asker_may_be_gone = req.reply.send(answer);
            }
            Some((consumer, pid)) = gone_rx.recv() => {
                if r.active.get(&consumer).is_some_and(|a| a.pid == pid) {
                    if let Some(a) = r.active.remove(&consumer) {
                        a.close(&r.shared, &consumer, "its pod is gone");
                    }
                }
            }
            () = async { if let Some(t) = leftovers.as_mut() { t.await } }, if leftovers.is_some() => {
                leftovers = None;
                r.drop_inherited();
            }
        }
        if r.inherited.is_empty() {
            leftovers = None;
        }
    }
    for (c, a) in std::mem::take(&mut r.active) {
        // Keep them in systemd's store: the next berth takes them back.
        a.watch.abort();
        for (_, (_, task)) in a.listeners {
            task.abort();
        }
        debug!(consumer = %c, "relays left to the next berth");
    }
}

/// The inode of a process's network namespace.
fn netns_inode(pid: u32) -> std::io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

impl<P: Podman + Clone + 'static, E: Engine> Relays<P, E> {
    fn want(&self, consumer: &str) -> Option<RelayWant> {
        self.wants
            .borrow()
            .iter()
            .find(|w| w.consumer == consumer)
            .cloned()
    }

    /// Makes relays for every wanted consumer that has none and whose pod runs (quietly: a
    /// pod that does not run yet gets them from its containers' hook). Listeners taken over
    /// from a previous berth that nobody claimed go then.
    async fn restore(&mut self) {
        let missing: Vec<String> = self
            .wants
            .borrow()
            .iter()
            .map(|w| w.consumer.clone())
            .filter(|c| !self.active.contains_key(c))
            .collect();
        for consumer in missing {
            match self.ensure(&consumer).await {
                Ok(n) => info!(consumer, ports = n, "relays restored"),
                Err(why) => debug!(consumer, "no relays yet: {why}"),
            }
        }
        self.drop_inherited();
    }

    fn drop_inherited(&mut self) {
        for (name, fd) in std::mem::take(&mut self.inherited) {
            drop(fd);
            let _gone = crate::sys::fd_store_remove(&name);
            debug!(name, "dropped a relay listener nobody claimed");
        }
    }

    /// The pid of the consumer's pod's infra process, if it runs.
    async fn infra_pid(&self, pod: &str) -> Result<u32, String> {
        let id = self
            .podman
            .pod_infra(pod)
            .await
            .map_err(|e| crate::engine::full_message(&e))?
            .ok_or_else(|| format!("its pod {pod} does not exist"))?;
        let inspect = self
            .podman
            .inspect(&id)
            .await
            .map_err(|e| crate::engine::full_message(&e))?
            .filter(|i| i.running && i.pid != 0)
            .ok_or_else(|| format!("its pod {pod} is not running"))?;
        Ok(inspect.pid)
    }

    /// Makes the consumer's relays listen in its pod's namespace, if they do not already.
    async fn ensure(&mut self, consumer: &str) -> Result<usize, String> {
        let want = self
            .want(consumer)
            .ok_or_else(|| format!("{consumer} is not an enabled service that uses others"))?;
        let pid = self.infra_pid(&want.pod).await?;
        let ns = netns_inode(pid).map_err(|e| format!("cannot read the pod's namespace: {e}"))?;
        if let Some(old) = self.active.remove(consumer) {
            if old.pid == pid && old.ns == ns {
                self.active.insert(consumer.to_string(), old);
            } else {
                old.close(&self.shared, consumer, "its pod was made anew");
            }
        }
        let mut helper: Option<Arc<Netns>> = None;
        let mut made: BTreeMap<u16, (String, JoinHandle<()>)> = BTreeMap::new();
        let have: Vec<u16> = self
            .active
            .get(consumer)
            .map(|a| a.listeners.keys().copied().collect())
            .unwrap_or_default();
        for p in want.ports.iter().filter(|p| !have.contains(&p.port)) {
            let name = fd_name(consumer, p.port, ns);
            let listener = match self.listener(&name, pid, p.port, &mut helper).await {
                Ok(l) => l,
                Err(why) => {
                    // None of this attempt's listeners stay: the next request starts over.
                    for (_, (name, task)) in made {
                        task.abort();
                        let _gone = crate::sys::fd_store_remove(&name);
                    }
                    return Err(why);
                }
            };
            let counters = self.shared.relay_counter(consumer, &p.service, p.port);
            let task = tokio::spawn(serve(
                listener,
                consumer.to_string(),
                p.port,
                self.wants.clone(),
                self.podman.clone(),
                self.engine.clone(),
                self.shared.clone(),
                counters,
            ));
            made.insert(p.port, (name, task));
        }
        let wanted: Vec<u16> = want.ports.iter().map(|p| p.port).collect();
        match self.active.get_mut(consumer) {
            Some(a) => {
                a.listeners.extend(made);
                let extra: Vec<u16> = a
                    .listeners
                    .keys()
                    .filter(|p| !wanted.contains(p))
                    .copied()
                    .collect();
                for port in extra {
                    if let Some((name, task)) = a.listeners.remove(&port) {
                        task.abort();
                        let _gone = crate::sys::fd_store_remove(&name);
                    }
                }
            }
            None => {
                let watch =
                    tokio::spawn(watch_exit(pid, consumer.to_string(), self.gone_tx.clone()));
                self.active.insert(
                    consumer.to_string(),
                    Active {
                        pid,
                        ns,
                        listeners: made,
                        watch,
                    },
                );
            }
        }
        Ok(wanted.len())
    }
}

impl<P: Podman + Clone + 'static, E: Engine> Relays<P, E> {
    /// The listener named `name`: taken back from systemd's store, else made inside the
    /// namespace of `pid` (starting its socket helper once per attempt) and handed to the store.
    async fn listener(
        &mut self,
        name: &str,
        pid: u32,
        port: u16,
        helper: &mut Option<Arc<Netns>>,
    ) -> Result<TcpListener, String> {
        if let Some(fd) = self.inherited.remove(name) {
            return ports::adopt(fd).map_err(|e| format!("cannot take back {name}: {e}"));
        }
        let ns = match helper {
            Some(h) => h.clone(),
            None => {
                let opened = tokio::task::spawn_blocking(move || Netns::open(pid))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot enter the pod's network namespace: {e}"))?;
                helper.insert(Arc::new(opened)).clone()
            }
        };
        let l = listen_inside(&ns, port)
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port} inside the pod: {e}"))?;
        if let Err(err) = crate::sys::fd_store(name, &[l.as_fd()]) {
            warn!(%err, port, "cannot hand a relay listener to systemd's store");
        }
        Ok(l)
    }
}

/// A listener on `127.0.0.1:port` of the namespace the helper serves.
async fn listen_inside(ns: &Netns, port: u16) -> std::io::Result<TcpListener> {
    ports::listen(ns.socket().await?, port)
}

/// Sends `(consumer, pid)` when process `pid` exits.
#[allow(unsafe_code)]
async fn watch_exit(pid: u32, consumer: String, gone: mpsc::UnboundedSender<(String, u32)>) {
    let exited = async {
        let raw = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
        // SAFETY: the AsyncFd owns the pidfd from here on; nothing else closes it.
        let fd = unsafe { AsyncFd::register(fd) }.ok()?;
        // A pidfd turns readable when its process exits.
        let _ready = fd.readable().await.ok()?;
        Some(())
    };
    if exited.await.is_none() {
        // No pidfd (an old kernel) or the process is already gone: the namespace check at
        // the next request makes new listeners then.
        debug!(pid, %consumer, "cannot watch the pod's infra process");
        return;
    }
    let _task_may_be_gone = gone.send((consumer, pid));
}

/// Accepts on one relay listener until aborted.
#[allow(clippy::too_many_arguments)]
async fn serve<P: Podman + Clone + 'static, E: Engine>(
    listener: TcpListener,
    consumer: String,
    port: u16,
    wants: watch::Receiver<Vec<RelayWant>>,
    podman: P,
    engine: E,
    shared: Arc<Shared>,
    counters: Arc<super::forward::Counters>,
) {
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let mut stop = ports::stopping(&shared);
    loop {
        if *stop.borrow() {
            // Kept in systemd's store: clients wait in the backlog for the next berth.
            std::future::pending::<()>().await;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => continue,
        };
        let client = match accepted {
            Ok((c, _)) => c,
            Err(err) => {
                warn!(%err, %consumer, port, "accept failed on a relay");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let target = wants
            .borrow()
            .iter()
            .find(|w| w.consumer == consumer)
            .and_then(|w| w.ports.iter().find(|p| p.port == port).cloned());
        match target {
            Some(RelayPort {
                spec: Some(spec), ..
            }) => ports::spawn_client(
                client,
                spec,
                podman.clone(),
                engine.clone(),
                shared.clone(),
                counters.clone(),
                waiting.clone(),
            ),
            other => {
                let service = other.map(|p| p.service).unwrap_or_default();
                let why = ConnError::Unavailable {
                    reason: format!("it is not enabled (berth enable {service})"),
                    service: service.clone(),
                };
                tokio::spawn(async move { ports::refuse(client, &service, &why).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_fd_names_are_told_apart_from_stable_ports() {
        let n = fd_name("open-webui", 11434, 4026532001);
        assert_eq!(n, "relay-open-webui-11434-4026532001");
        assert!(is_relay_fd(&n));
        assert!(!is_relay_fd("port-11434"));
    }

    #[test]
    fn a_namespace_is_known_by_its_inode() {
        let ours = netns_inode(std::process::id()).expect("own namespace");
        let again = netns_inode(std::process::id()).expect("own namespace");
        assert_eq!(ours, again);
        assert!(netns_inode(0).is_err(), "no process 0 in /proc");
    }
}
