//! Gathering: the actual state a pass plans against, and the facts a status refresh
//! projects. The only place besides `apply.rs` that asks the edges anything.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::{ContainerStatus, Event, ServiceStatus, Snapshot};
use tracing::{info, warn};

use super::inspect::{self, unit_key};
use super::view::{self, ServiceFacts};
use super::{Engine, EngineError};
use crate::clock::Clock;
use crate::files::{Files, UnitDirError};
use crate::plan::{Actual, Desired};
use crate::podman::{ContainerInspect, Podman, PodmanError};
use crate::state::Choice;
use crate::systemd::{Systemd, SystemdError, UnitState};
use crate::units;

/// The unit that gives Podman's API (socket-activated).
const PODMAN_SOCKET: &str = "podman.socket";
/// Log lines quoted in a failed service's reason.
const LOG_LINES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("cannot read berth's unit files")]
    Units(#[source] UnitDirError),
    #[error("cannot list the units of the systemd user manager")]
    Systemd(#[source] SystemdError),
    #[error("cannot ask Podman whether {image} is present")]
    Image {
        image: String,
        #[source]
        source: PodmanError,
    },
}

impl<S, P, F, C> Engine<S, P, F, C>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    F: Files,
    C: Clock,
{
    /// berth's units as systemd lists them (not berth's own), and Podman's socket unit (read
    /// on its own: systemd stops listing it once it is stopped and nothing refers to it).
    async fn list_units(
        &self,
    ) -> Result<(BTreeMap<String, UnitState>, Option<UnitState>), SystemdError> {
        let units = self
            .edges
            .systemd
            .list_units(&["berth-*"])
            .await?
            .into_iter()
            .filter(|u| u.name != "berth.service")
            .map(|u| (u.name.clone(), u))
            .collect();
        let socket = self
            .edges
            .systemd
            .unit_state(PODMAN_SOCKET)
            .await
            .ok()
            .flatten();
        Ok((units, socket))
    }

    /// The actual state for `desired`: unit files, loaded units, stale units (first pass
    /// only) and the presence of images of services that may start now.
    pub(super) async fn actual(&mut self, desired: &Desired) -> Result<Actual, GatherError> {
        let unit_files = self
            .units
            .list(&self.edges.files)
            .await
            .map_err(GatherError::Units)?;
        let (units, socket) = self.list_units().await.map_err(GatherError::Systemd)?;
        self.podman_socket(socket.as_ref()).await;
        let mut stale = BTreeSet::new();
        if self.check_stale {
            for name in unit_files.keys() {
                if units.contains_key(name)
                    && self.edges.systemd.needs_reload(name).await.unwrap_or(false)
                {
                    stale.insert(name.clone());
                }
            }
        }
        // Ask Podman about images only for services that may be started now.
        let mut images = BTreeMap::new();
        for d in desired.services.values() {
            if d.choice != Choice::On || d.blocked.is_some() {
                continue;
            }
            let main = d.units.first().map(|u| u.name.as_str()).unwrap_or_default();
            let running = units
                .get(main)
                .is_some_and(|u| u.is_active() || u.active == "activating");
            // A running service is asked about only when it is to restart, or its units
            // changed (new images are pulled before the swap).
            let changed = d
                .units
                .iter()
                .any(|u| unit_files.get(&u.name) != Some(&u.content));
            if running && !d.force && !changed {
                continue;
            }
            for image in &d.images {
                if images.contains_key(image) {
                    continue;
                }
                let present = match self.edges.podman.image_exists(image).await {
                    Ok(p) => {
                        self.podman_seen.error = None;
                        p
                    }
                    Err(source) => {
                        self.podman_unreachable(&source);
                        return Err(GatherError::Image {
                            image: image.clone(),
                            source,
                        });
                    }
                };
                if present {
                    self.pulls.present(image, &self.edges.files).await;
                }
                images.insert(image.clone(), present);
            }
        }
        Ok(Actual {
            unit_files,
            units,
            stale,
            images,
            pulls: self.pulls.states(),
        })
    }

    fn podman_unreachable(&mut self, err: &PodmanError) {
        if self.podman_seen.error.is_none() {
            warn!(%err, "Podman's API does not answer ({err}); services keep running");
        }
        self.podman_seen.error = Some(err.to_string());
    }

    /// What the state of `podman.socket` says about Podman's API, where that unit exists (a
    /// custom `CONTAINER_HOST` has none): stopped means unreachable at once, without waking
    /// the API service; active again clears an error once Podman answers.
    async fn podman_socket(&mut self, socket: Option<&UnitState>) {
        let Some(u) = socket.filter(|u| u.load == "loaded") else {
            return;
        };
        if u.is_active() {
            if self.podman_seen.error.is_some() {
                match self.edges.podman.ping().await {
                    Ok(v) => {
                        info!("Podman's API answers again");
                        self.podman_seen.version = Some(v);
                        self.podman_seen.error = None;
                    }
                    Err(e) => self.podman_unreachable(&e),
                }
            }
        } else {
            let why = format!(
                "Podman's API is not listening: {PODMAN_SOCKET} is {} (start it with `systemctl --user start {PODMAN_SOCKET}`)",
                u.active
            );
            if self.podman_seen.error.as_deref() != Some(why.as_str()) {
                warn!("{why}; services keep running");
            }
            self.podman_seen.error = Some(why);
        }
    }

    /// Inspects a container and keeps the answer with the state of its unit. With Podman
    /// away, the last answer stays the best knowledge.
    async fn inspect_fresh(
        &mut self,
        name: &str,
        unit: Option<&UnitState>,
    ) -> Option<ContainerInspect> {
        match self.edges.podman.inspect(name).await {
            Ok(i) => {
                self.podman_seen.error = None;
                self.inspected.keep(name, i.clone(), unit_key(unit));
                i
            }
            Err(err) => {
                self.podman_unreachable(&err);
                self.inspected.last(name)
            }
        }
    }

    /// The last lines of a failed service's container logs, read again only when its unit
    /// changed state since.
    async fn log_lines(&mut self, svc: &crate::catalog::Service, unit: &UnitState) -> Vec<String> {
        let key = format!("{}/{}", unit.active, unit.sub);
        if let Some((k, lines)) = self.log_tails.get(&svc.name) {
            if *k == key {
                return lines.clone();
            }
        }
        let mut lines = Vec::new();
        for c in &svc.containers {
            let path = self.paths.in_home(&units::log_file(svc, c));
            if let Ok(Some(bytes)) = self
                .edges
                .files
                .tail(&path, crate::health::LOG_TAIL_MAX as u64)
                .await
            {
                lines.extend(crate::health::log_lines(&bytes, LOG_LINES));
            }
        }
        self.log_tails
            .insert(svc.name.clone(), (key, lines.clone()));
        lines
    }

    /// Looks at every service (or one, inspected freshly), projects their statuses, and
    /// publishes what changed: events always, and after a look at all of them a snapshot.
    pub(super) async fn refresh(
        &mut self,
        only: Option<&str>,
    ) -> Result<Vec<ServiceStatus>, EngineError> {
        let catalog = self.catalog.current.clone();
        if let Some(name) = only {
            if !catalog.services.contains_key(name) {
                return Err(EngineError::UnknownService(name.into()));
            }
        }
        let (units, socket) = self
            .list_units()
            .await
            .map_err(|e| EngineError::Gather(super::full_message(&GatherError::Systemd(e))))?;
        self.podman_socket(socket.as_ref()).await;
        let mut facts: BTreeMap<String, ServiceFacts> = BTreeMap::new();
        let holds = self.rollouts.holds(&catalog);
        for (name, svc) in &catalog.services {
            let held = super::desired::held(svc, &holds);
            // A swap is judged on what the new containers say, never on a kept answer.
            let swapping = self.rollouts.is_pending(name);
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let main = units.get(&units::main_unit(name)).cloned();
            let look = main.as_ref().is_some_and(|u| u.active != "inactive") || only.is_some();
            let mut containers = Vec::new();
            for ctr in &svc.containers {
                let cname = units::container_name(svc, ctr);
                let cunit = units.get(&units::container_unit(svc, ctr));
                let inspect = if !look {
                    self.inspected.forget(&cname);
                    None
                } else if only.is_some() || swapping {
                    // Someone asks about this service now: always fresh.
                    self.inspect_fresh(&cname, cunit).await
                } else {
                    match self
                        .inspected
                        .fresh(&cname, &unit_key(cunit), inspect::max_age(ctr))
                    {
                        Some(kept) => kept,
                        None => self.inspect_fresh(&cname, cunit).await,
                    }
                };
                containers.push(ContainerStatus {
                    name: cname,
                    unit: units::container_unit(svc, ctr),
                    // The image it runs: a rollback's hold, else the catalog's.
                    image: held
                        .as_ref()
                        .and_then(|h| h.containers.iter().find(|c| c.name == ctr.name))
                        .map_or_else(|| ctr.image.clone(), |c| c.image.clone()),
                    state: inspect
                        .as_ref()
                        .map_or_else(|| "absent".to_string(), |i| i.status.clone()),
                    health: inspect.as_ref().and_then(|i| i.health.clone()),
                    started_at: inspect
                        .as_ref()
                        .filter(|i| i.running)
                        .map(|i| i.started_at.clone()),
                });
            }
            let result = match main.as_ref().map(|u| u.active.as_str()) {
                Some("failed" | "activating" | "active") => self
                    .edges
                    .systemd
                    .service_result(&units::main_unit(name))
                    .await
                    .ok(),
                _ => None,
            };
            let mut members = Vec::new();
            if svc.is_pod() && main.as_ref().is_some_and(|u| u.is_active()) {
                for ctr in &svc.containers {
                    let unit = units::container_unit(svc, ctr);
                    let active = units
                        .get(&unit)
                        .map_or_else(|| "inactive".to_string(), |u| u.active.clone());
                    let exec_main_status = if active == "failed" {
                        self.edges
                            .systemd
                            .exec_main_status(&unit)
                            .await
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    members.push(crate::gate::Member {
                        container: ctr.name.clone(),
                        active,
                        exec_main_status,
                    });
                }
            }
            let log_lines = match main.as_ref().filter(|u| u.active == "failed") {
                Some(u) => self.log_lines(svc, u).await,
                None => {
                    self.log_tails.remove(name);
                    Vec::new()
                }
            };
            facts.insert(
                name.clone(),
                ServiceFacts {
                    unit: main,
                    containers,
                    result,
                    log_lines,
                    members,
                },
            );
        }
        let pull_failures = self.pulls.failures();
        let bind_errors = self.proxy.bind_errors();
        let mut statuses = view::project(
            &view::Facts {
                catalog: &catalog,
                state: &self.state,
                awake: &self.intent.awake,
                services: &facts,
                probes: &self.probes.results,
                apply_errors: &self.apply_errors,
                bind_errors: &bind_errors,
                waiting: &self.waiting,
                pull_failures: &pull_failures,
                gpu_available: self.ctx.gpu_available(),
                remotes: self.remotes.results(),
            },
            only,
        );
        self.judge_swaps(&mut statuses).await;
        let now = self.now();
        for e in self.seen.observe(&mut statuses, only.is_none(), now) {
            self.emit(e);
        }
        self.proxy.set_unavailable(
            statuses
                .iter()
                .filter(|s| s.state == berth_proto::State::Failed)
                .map(|s| (s.name.clone(), s.reason.clone().unwrap_or_default()))
                .collect(),
            only,
        );
        if only.is_none() {
            let daemon = self.info().await;
            self.publish_daemon(&daemon);
            self.out
                .snapshot
                .send_replace(Some(std::sync::Arc::new(Snapshot {
                    taken_at: now,
                    daemon,
                    services: statuses.clone(),
                })));
        }
        Ok(statuses)
    }

    /// A daemon event when what the daemon says of itself changed (not its counters).
    fn publish_daemon(&mut self, daemon: &berth_proto::DaemonInfo) {
        let key = |d: &berth_proto::DaemonInfo| {
            let mut d = d.clone();
            d.counters = Default::default();
            d
        };
        let changed = self
            .last_info
            .as_ref()
            .is_none_or(|old| key(old) != key(daemon));
        if changed {
            if self.last_info.is_some() {
                self.emit(Event::Daemon {
                    daemon: daemon.clone(),
                });
            }
            self.last_info = Some(daemon.clone());
        }
    }

    /// The snapshot to start a subscriber with: every status as the events so far left it
    /// (a first look when there was none yet).
    pub(super) async fn current_snapshot(&mut self) -> std::sync::Arc<Snapshot> {
        if self.seen.statuses().is_empty() {
            if let Err(err) = self.refresh(None).await {
                warn!(%err, "cannot look at the services: {err}");
            }
        }
        std::sync::Arc::new(Snapshot {
            taken_at: self.now(),
            daemon: self.info().await,
            services: self.seen.statuses(),
        })
    }
}
