//! berth's own HTTP/TCP probes (`[probe]` in the catalog): which are due, run each in its own
//! task against the container's published port (probing the stable port would count as use of
//! an on-demand service and keep it awake), results back to the engine.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::{ProbeStatus, State};
use tokio::sync::mpsc;

use super::events::Tracker;
use super::inspect::InspectCache;
use crate::catalog::Catalog;
use crate::health;
use crate::podman::Podman;
use crate::units;

/// A probe that finished.
#[derive(Debug)]
pub(super) struct ProbeDone {
    pub service: String,
    pub status: ProbeStatus,
}

#[derive(Debug)]
pub(super) struct Probes {
    pub results: BTreeMap<String, ProbeStatus>,
    probing: BTreeSet<String>,
    tx: mpsc::UnboundedSender<ProbeDone>,
}

impl Probes {
    pub fn new(tx: mpsc::UnboundedSender<ProbeDone>) -> Self {
        Probes {
            results: BTreeMap::new(),
            probing: BTreeSet::new(),
            tx,
        }
    }

    /// A probe finished; whether its result differs from the last one's.
    pub fn done(&mut self, d: ProbeDone) -> bool {
        self.probing.remove(&d.service);
        let changed = self
            .results
            .get(&d.service)
            .is_none_or(|old| old.ok != d.status.ok);
        self.results.insert(d.service, d.status);
        changed
    }

    /// Starts the probes that are due, each in its own task: those of services that run (as
    /// the last refresh saw them) whose interval passed since their last result.
    pub fn start_due<P: Podman + Clone + 'static>(
        &mut self,
        catalog: &Catalog,
        seen: &Tracker,
        inspected: &InspectCache,
        podman: &P,
        now: u64,
    ) {
        for (name, svc) in &catalog.services {
            let Some(p) = &svc.probe else { continue };
            let running = seen
                .state_of(name)
                .is_some_and(|s| matches!(s, State::Running | State::Unhealthy | State::Starting));
            if !running {
                self.results.remove(name);
                continue;
            }
            if self.probing.contains(name) {
                continue;
            }
            let due = self
                .results
                .get(name)
                .is_none_or(|last| now.saturating_sub(last.at) >= p.interval.as_secs());
            let Some(container_port) = svc.ports().find(|x| x.host == p.port).map(|x| x.container)
            else {
                continue;
            };
            if !due {
                continue;
            }
            self.probing.insert(name.clone());
            let container = units::container_name(svc, &svc.containers[0]);
            // The published port as the last refresh saw it; Podman is asked only without one.
            let known = inspected
                .last(&container)
                .filter(|i| i.running && i.ports.contains_key(&container_port));
            let (p, service, tx, podman) =
                (p.clone(), name.clone(), self.tx.clone(), podman.clone());
            tokio::spawn(async move {
                let inspect = match known {
                    Some(i) => Ok(Some(i)),
                    None => podman.inspect(&container).await,
                };
                let failed = |detail: String| ProbeStatus {
                    ok: false,
                    seconds: 0.0,
                    detail,
                    at: now,
                };
                let status = match inspect {
                    Ok(Some(i)) => match i.ports.get(&container_port) {
                        Some(host) => {
                            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *host));
                            health::probe(&p, addr, now).await
                        }
                        None => failed(format!("container port {container_port} is not published")),
                    },
                    Ok(None) => failed("container not found".into()),
                    Err(e) => failed(format!("cannot ask Podman: {e}")),
                };
                if tx.send(ProbeDone { service, status }).is_err() {
                    tracing::debug!("engine gone before a probe finished");
                }
            });
        }
    }
}
