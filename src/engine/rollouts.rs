//! Image updates with rollback.
//!
//! A swap happens when a running service restarts onto an image other than the one its
//! containers run: the catalog names another image (the planner pulls it first), or
//! `berth update` found that a tag now names a newer image. Before the restart berth keeps
//! the image ids the containers ran (`rollouts.toml` in the state directory, written
//! atomically, so a restart of the daemon in the middle still knows them). The new containers
//! then have a window to become healthy: their health checks' start period and one more
//! check, or, without a health check, [`DEFAULT_WINDOW`] for the service's probe to pass or,
//! without a probe, for its first port to answer. A service that fails, or is not healthy
//! when the window closes, is rolled back: its units run the previous image ids again.
//!
//! A rollback holds: the service stays on the previous images while the catalog names the
//! images that failed. Another image in the catalog, or `berth update NAME`, lets go of it;
//! nothing retries the bad image by itself.
//!
//! The decisions ([`hold_of`], [`window`], [`judge`]) are pure; the engine glue below asks
//! Podman for image ids and carries them out.
//!
//! Limits: images of the `localhost/` registry are built on the machine and never pulled by
//! `berth update` (Podman would look for a registry on localhost); their tag is compared as
//! it is. A rollback needs the previous image to be still in local storage (berth does not
//! prune images).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::{
    ServiceStatus, State, UpdateAnswer, UpdateOutcome, UpdateResult, UpdateState, UpdateStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::desired::Holds;
use super::{Engine, EngineError};
use crate::catalog::validate::is_pinned;
use crate::catalog::{Catalog, Service};
use crate::clock::Clock;
use crate::files::Files;
use crate::plan::{Action, Plan};
use crate::podman::Podman;
use crate::state::Choice;
use crate::systemd::Systemd;
use crate::units;

/// How long a service without a health check has to run with its probe passing (or its port
/// answering) after a swap.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// How long berth waits for a port to answer when it checks one.
const PORT_CHECK: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Phase {
    /// The new images run; their window is open.
    Pending,
    /// They became healthy.
    Done,
    /// They did not: the previous images run again.
    RolledBack,
    /// A rollback the user let go of (`berth update NAME`).
    Released,
}

/// The last swap of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub phase: Phase,
    /// Container → the image id it ran before the swap: what a rollback returns to.
    pub from: BTreeMap<String, String>,
    /// Container → the image the swap went to, as the catalog names it.
    pub to: BTreeMap<String, String>,
    /// Container → the id `to` named at the swap.
    #[serde(default)]
    pub to_ids: BTreeMap<String, String>,
    /// Unix seconds of the last change of phase.
    pub at: u64,
    /// Unix seconds at which the window of a pending swap closes.
    pub deadline: u64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub rollbacks: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    #[serde(default)]
    services: BTreeMap<String, Record>,
}

/// What a swap's window shows so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Wait,
    Healthy,
    RollBack(String),
}

/// The images a rollback holds `svc` on: the previous ids, while the catalog still names the
/// images that failed.
pub(super) fn hold_of(rec: &Record, svc: &Service) -> Option<BTreeMap<String, String>> {
    if rec.phase != Phase::RolledBack || rec.from.is_empty() {
        return None;
    }
    let same = rec.to.iter().all(|(ctr, image)| {
        svc.containers
            .iter()
            .any(|c| &c.name == ctr && &c.image == image)
    });
    same.then(|| rec.from.clone())
}

/// How long the new containers of `svc` have to become healthy: the longest start period of
/// its health checks plus one check interval (or `retries` intervals without a start period);
/// [`DEFAULT_WINDOW`] without a health check.
pub(super) fn window(svc: &Service) -> Duration {
    svc.containers
        .iter()
        .filter_map(|c| c.health.as_ref())
        .map(|h| {
            if h.start_period.is_zero() {
                h.interval * h.retries.max(1) + h.timeout
            } else {
                h.start_period + h.interval + h.timeout
            }
        })
        .max()
        .unwrap_or(DEFAULT_WINDOW)
}

/// The verdict on a pending swap from the service's state now. `ready` says whether what
/// proves health beyond the state holds (health checks healthy, the probe passing or the port
/// answering).
pub(super) fn judge(
    rec: &Record,
    state: State,
    reason: Option<&str>,
    ready: bool,
    now: u64,
) -> Verdict {
    if rec.phase != Phase::Pending {
        return Verdict::Wait;
    }
    let why = || reason.map(|r| format!(": {r}")).unwrap_or_default();
    match state {
        State::Running if ready => Verdict::Healthy,
        State::Failed => Verdict::RollBack(format!("the new container failed{}", why())),
        _ if now >= rec.deadline => Verdict::RollBack(format!(
            "not healthy within {}s of the swap ({state}{})",
            rec.deadline.saturating_sub(rec.at),
            why()
        )),
        _ => Verdict::Wait,
    }
}

/// `sha256:0123456789abcdef…` → `0123456789ab`, as Podman shows ids.
pub fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() > 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex[..12].to_string()
    } else {
        hex.to_string()
    }
}

fn ids(m: &BTreeMap<String, String>) -> String {
    m.values()
        .map(|i| short_id(i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Images berth pulls when asked to update: not those pinned by digest (they never change),
/// nor those of the `localhost/` registry (built on this machine; there is none to pull from).
fn pullable(image: &str) -> bool {
    !is_pinned(image) && image.split('/').next() != Some("localhost")
}

/// Swaps and rollbacks of every service, kept on disk.
#[derive(Debug)]
pub(super) struct Rollouts {
    records: BTreeMap<String, Record>,
    path: PathBuf,
    /// A rollback or an update needs a pass (the engine's loop runs it).
    pub pass_due: bool,
}

impl Rollouts {
    /// The records kept from before; a broken file is logged and set aside (a rollback then
    /// lacks the previous image, nothing else).
    pub async fn load(files: &impl Files, path: PathBuf) -> Self {
        let records = match files.read(&path).await {
            Ok(Some(b)) => match toml::from_str::<Kept>(&String::from_utf8_lossy(&b)) {
                Ok(k) => k.services,
                Err(e) => {
                    warn!(path = %path.display(), err = %e.message(), "cannot read the image updates; previous images are not known");
                    BTreeMap::new()
                }
            },
            Ok(None) => BTreeMap::new(),
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot read the image updates; previous images are not known");
                BTreeMap::new()
            }
        };
        Rollouts {
            records,
            path,
            pass_due: false,
        }
    }

    async fn save(&self, files: &impl Files) {
        let kept = Kept {
            services: self.records.clone(),
        };
        let text = format!(
            "# berth: image updates of services and the images a rollback returned to.\n{}",
            toml::to_string(&kept).unwrap_or_default()
        );
        if let Err(err) = files.write(&self.path, text.into_bytes(), 0o600).await {
            warn!(path = %self.path.display(), %err, "cannot keep the image updates");
        }
    }

    pub fn get(&self, service: &str) -> Option<&Record> {
        self.records.get(service)
    }

    /// Every hold in force for `catalog` (see [`hold_of`]).
    pub fn holds(&self, catalog: &Catalog) -> Holds {
        self.records
            .iter()
            .filter_map(|(name, rec)| {
                let svc = catalog.get(name)?;
                Some((name.clone(), hold_of(rec, svc)?))
            })
            .collect()
    }

    pub fn is_pending(&self, service: &str) -> bool {
        self.records
            .get(service)
            .is_some_and(|r| r.phase == Phase::Pending)
    }

    pub fn any_pending(&self) -> bool {
        self.records.values().any(|r| r.phase == Phase::Pending)
    }

    /// The update as a client sees it.
    pub fn status(&self, service: &str) -> Option<UpdateStatus> {
        let r = self.records.get(service)?;
        let state = match r.phase {
            Phase::Pending => UpdateState::Updating,
            Phase::Done => UpdateState::Updated,
            Phase::RolledBack => UpdateState::RolledBack,
            // Let go of: what shows is the rollback, until the next swap.
            Phase::Released if r.rollbacks > 0 => UpdateState::RolledBack,
            Phase::Released => UpdateState::Updated,
        };
        Some(UpdateStatus {
            state,
            from: r.from.values().cloned().collect(),
            to: r.to.values().cloned().collect(),
            reason: r.reason.clone(),
            at: r.at,
            rollbacks: r.rollbacks,
        })
    }

    pub async fn begin(&mut self, service: &str, mut rec: Record, files: &impl Files) {
        rec.rollbacks = self.records.get(service).map_or(0, |r| r.rollbacks);
        self.records.insert(service.to_string(), rec);
        self.save(files).await;
    }

    /// Sets the phase (and reason) of a service's record.
    async fn settle(
        &mut self,
        service: &str,
        phase: Phase,
        reason: Option<String>,
        now: u64,
        files: &impl Files,
    ) {
        if let Some(r) = self.records.get_mut(service) {
            if phase == Phase::RolledBack {
                r.rollbacks += 1;
            }
            r.phase = phase;
            r.reason = reason;
            r.at = now;
            self.save(files).await;
        }
    }

    /// The user asked to update: a rollback stops holding the service. Whether one did.
    pub async fn release(&mut self, service: &str, now: u64, files: &impl Files) -> bool {
        let Some(r) = self
            .records
            .get(service)
            .filter(|r| r.phase == Phase::RolledBack)
        else {
            return false;
        };
        let reason = r.reason.clone();
        self.settle(service, Phase::Released, reason, now, files)
            .await;
        true
    }
}

/// One `berth update` waiting for its services.
#[derive(Debug)]
pub(super) struct UpdateRequest {
    /// In the order asked; `None` until the service's outcome is known.
    outcomes: Vec<(String, Option<UpdateOutcome>)>,
    /// Service → images still being pulled for it.
    pulls: BTreeMap<String, BTreeSet<String>>,
    /// Service → why a pull failed.
    failed: BTreeMap<String, String>,
    /// Services whose images were compared (and a swap begun where they differed).
    compared: BTreeSet<String>,
    reply: oneshot::Sender<Result<UpdateAnswer, EngineError>>,
}

fn outcome(service: &str, result: UpdateResult, message: String) -> Option<UpdateOutcome> {
    Some(UpdateOutcome {
        service: service.to_string(),
        result,
        message,
    })
}

impl<S, P, F, C> Engine<S, P, F, C>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    F: Files,
    C: Clock,
{
    /// The image ids the containers of `svc` run now (container → id); None when one does not
    /// run.
    async fn running_ids(&mut self, svc: &Service) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for c in &svc.containers {
            let name = units::container_name(svc, c);
            match self.edges.podman.inspect(&name).await {
                Ok(Some(i)) if i.running && !i.image_id.is_empty() => {
                    out.insert(c.name.clone(), i.image_id);
                }
                Ok(_) => return None,
                Err(err) => {
                    warn!(service = %svc.name, %err, "cannot inspect {name}: {err}");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The ids the images of `svc` name now (container → id); None when one is missing.
    async fn target_ids(&self, svc: &Service) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for c in &svc.containers {
            match self.edges.podman.image_id(&c.image).await {
                Ok(Some(id)) => {
                    out.insert(c.name.clone(), id);
                }
                Ok(None) => return None,
                Err(err) => {
                    warn!(service = %svc.name, %err, "cannot inspect image {}: {err}", c.image);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Before a pass restarts running services: each that restarts onto other images than it
    /// runs begins a swap, with what it runs now kept for a rollback.
    pub(super) async fn begin_swaps(&mut self, plan: &Plan) {
        let catalog = self.catalog.current.clone();
        let holds = self.rollouts.holds(&catalog);
        for action in &plan.actions {
            let Action::Restart { service, .. } = action else {
                continue;
            };
            let Some(svc) = catalog.get(service) else {
                continue;
            };
            // Going back to held images is a rollback, not a swap.
            if holds.contains_key(service) {
                continue;
            }
            let to: BTreeMap<String, String> = svc
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone()))
                .collect();
            if self
                .rollouts
                .get(service)
                .is_some_and(|r| r.phase == Phase::Pending && r.to == to)
            {
                continue; // begun already (by `berth update`)
            }
            let Some(from) = self.running_ids(svc).await else {
                continue;
            };
            let Some(to_ids) = self.target_ids(svc).await else {
                continue;
            };
            if from == to_ids {
                continue;
            }
            self.begin_swap(svc, from, to, to_ids).await;
        }
    }

    async fn begin_swap(
        &mut self,
        svc: &Service,
        from: BTreeMap<String, String>,
        to: BTreeMap<String, String>,
        to_ids: BTreeMap<String, String>,
    ) {
        let now = self.now();
        let window = window(svc);
        info!(service = %svc.name, "{}: swapping {} for {} ({}); {}s to become healthy", svc.name, ids(&from), ids(&to_ids), to.values().cloned().collect::<Vec<_>>().join(", "), window.as_secs());
        let rec = Record {
            phase: Phase::Pending,
            from,
            to,
            to_ids,
            at: now,
            deadline: now + window.as_secs(),
            reason: None,
            rollbacks: 0,
        };
        self.rollouts.begin(&svc.name, rec, &self.edges.files).await;
    }

    /// Whether the first port of `svc` answers on the container's published port.
    async fn port_answers(&self, svc: &Service) -> bool {
        let Some((ctr, port)) = svc
            .containers
            .iter()
            .find_map(|c| c.ports.first().map(|p| (c, p.container)))
        else {
            return true; // nothing to ask: running is all there is
        };
        let name = units::container_name(svc, ctr);
        let Some(host) = self
            .inspected
            .last(&name)
            .and_then(|i| i.ports.get(&port).copied())
        else {
            return false;
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], host));
        matches!(
            tokio::time::timeout(PORT_CHECK, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        )
    }

    /// After a refresh: judges pending swaps from the statuses, rolls back those that failed,
    /// and puts every service's update (and a rollback's reason) into its status.
    pub(super) async fn judge_swaps(&mut self, statuses: &mut [ServiceStatus]) {
        let catalog = self.catalog.current.clone();
        let now = self.now();
        for st in statuses.iter() {
            let Some(rec) = self.rollouts.get(&st.name).cloned() else {
                continue;
            };
            if rec.phase != Phase::Pending {
                continue;
            }
            let Some(svc) = catalog.get(&st.name) else {
                continue;
            };
            if desired_choice(&catalog, &self.state, &st.name) != Choice::On {
                // Turned off or stopped during its window: nothing left to judge.
                self.rollouts
                    .settle(&st.name, Phase::Done, None, now, &self.edges.files)
                    .await;
                continue;
            }
            let has_health = svc.containers.iter().any(|c| c.health.is_some());
            let ready = if has_health {
                st.containers
                    .iter()
                    .all(|c| c.health.as_deref() != Some("starting"))
                    && st
                        .containers
                        .iter()
                        .zip(&svc.containers)
                        .filter(|(_, c)| c.health.is_some())
                        .all(|(s, _)| s.health.as_deref() == Some("healthy"))
            } else if svc.probe.is_some() {
                self.probes
                    .results
                    .get(&st.name)
                    .is_some_and(|p| p.ok && p.at >= rec.at)
            } else {
                st.state == State::Running && self.port_answers(svc).await
            };
            match judge(&rec, st.state, st.reason.as_deref(), ready, now) {
                Verdict::Wait => {}
                Verdict::Healthy => {
                    info!(service = %st.name, "{}: updated to {}", st.name, ids(&rec.to_ids));
                    self.rollouts
                        .settle(&st.name, Phase::Done, None, now, &self.edges.files)
                        .await;
                }
                Verdict::RollBack(why) => {
                    warn!(service = %st.name, reason = %why, "{}: rolling back to {}: {why}", st.name, ids(&rec.from));
                    self.rollouts
                        .settle(
                            &st.name,
                            Phase::RolledBack,
                            Some(why),
                            now,
                            &self.edges.files,
                        )
                        .await;
                    self.intent.force.insert(st.name.clone());
                    self.rollouts.pass_due = true;
                }
            }
        }
        for st in statuses.iter_mut() {
            st.update = self.rollouts.status(&st.name);
            if let Some(u) = &st.update {
                if u.state == UpdateState::RolledBack
                    && st.reason.is_none()
                    && self
                        .rollouts
                        .get(&st.name)
                        .is_some_and(|r| r.phase == Phase::RolledBack)
                {
                    st.reason = Some(format!(
                        "rolled back to the previous image: {}",
                        u.reason
                            .as_deref()
                            .unwrap_or("the new one did not become healthy")
                    ));
                }
            }
        }
        self.progress_updates().await;
    }

    /// `berth update [NAME]`: pulls what can be pulled, then compares; the answer goes out
    /// once every service has its outcome (a swap's after its window).
    pub(super) async fn update(
        &mut self,
        service: Option<String>,
        reply: oneshot::Sender<Result<UpdateAnswer, EngineError>>,
    ) {
        if self.catalog.hold {
            let _caller_may_have_left = reply.send(Err(EngineError::Catalog(format!(
                "berth applies nothing until the catalog is fixed: {}",
                self.catalog.error.clone().unwrap_or_default()
            ))));
            return;
        }
        let catalog = self.catalog.current.clone();
        let targets: Vec<String> = match &service {
            Some(name) => {
                if catalog.get(name).is_none() {
                    let _caller_may_have_left =
                        reply.send(Err(EngineError::UnknownService(name.clone())));
                    return;
                }
                vec![name.clone()]
            }
            None => catalog
                .services
                .keys()
                .filter(|n| desired_choice(&catalog, &self.state, n) == Choice::On)
                .cloned()
                .collect(),
        };
        let mut req = UpdateRequest {
            outcomes: Vec::new(),
            pulls: BTreeMap::new(),
            failed: BTreeMap::new(),
            compared: BTreeSet::new(),
            reply,
        };
        for name in targets {
            let Some(svc) = catalog.get(&name) else {
                continue;
            };
            let pinned: Vec<&str> = svc.images().filter(|i| is_pinned(i)).collect();
            if pinned.len() == svc.containers.len() {
                let msg = format!("pinned to {}; nothing to update", pinned.join(", "));
                req.outcomes
                    .push((name, outcome(&svc.name, UpdateResult::Pinned, msg)));
                continue;
            }
            if desired_choice(&catalog, &self.state, &name) != Choice::On {
                let _caller_may_have_left = req.reply.send(Err(EngineError::NotEnabled(name)));
                return;
            }
            let images: Vec<String> = svc
                .images()
                .filter(|i| pullable(i))
                .map(str::to_string)
                .collect();
            self.pulls.forget(&images, &self.edges.files).await;
            for image in &images {
                self.pulls.start(
                    image,
                    vec![name.clone()],
                    &self.edges.podman,
                    &self.out.events,
                );
                req.pulls
                    .entry(name.clone())
                    .or_default()
                    .insert(image.clone());
            }
            req.outcomes.push((name, None));
        }
        self.updates.push(req);
        self.progress_updates().await;
    }

    /// A pull ended: the updates waiting for it go on.
    pub(super) async fn update_pulled(&mut self, image: &str, result: &Result<(), String>) {
        for req in &mut self.updates {
            for (service, images) in &mut req.pulls {
                if images.remove(image) {
                    if let Err(e) = result {
                        req.failed
                            .insert(service.clone(), format!("cannot pull {image}: {e}"));
                    }
                }
            }
        }
        self.progress_updates().await;
    }

    /// Moves every waiting update as far as it goes, and answers those that are complete.
    async fn progress_updates(&mut self) {
        let catalog = self.catalog.current.clone();
        let mut reqs = std::mem::take(&mut self.updates);
        for req in &mut reqs {
            for i in 0..req.outcomes.len() {
                if req.outcomes[i].1.is_some() {
                    continue;
                }
                let name = req.outcomes[i].0.clone();
                if req.pulls.get(&name).is_some_and(|p| !p.is_empty()) {
                    continue;
                }
                if let Some(e) = req.failed.get(&name) {
                    req.outcomes[i].1 = outcome(&name, UpdateResult::Failed, e.clone());
                    continue;
                }
                let Some(svc) = catalog.get(&name) else {
                    req.outcomes[i].1 = outcome(
                        &name,
                        UpdateResult::Failed,
                        "left the catalog during the update".into(),
                    );
                    continue;
                };
                if req.compared.insert(name.clone()) {
                    req.outcomes[i].1 = self.compare(svc).await;
                    continue;
                }
                // A swap is under way: its record says how it ended.
                req.outcomes[i].1 = match self.rollouts.get(&name) {
                    Some(r) if r.phase == Phase::Pending => None,
                    Some(r) if r.phase == Phase::Done => outcome(
                        &name,
                        UpdateResult::Updated,
                        format!(
                            "updated from {} to {} ({})",
                            ids(&r.from),
                            ids(&r.to_ids),
                            r.to.values().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    Some(r) => outcome(
                        &name,
                        UpdateResult::RolledBack,
                        format!(
                            "rolled back to {}: {}",
                            ids(&r.from),
                            r.reason
                                .as_deref()
                                .unwrap_or("the new image did not become healthy")
                        ),
                    ),
                    None => outcome(&name, UpdateResult::Failed, "the swap was lost".into()),
                };
            }
        }
        for req in reqs {
            if req.outcomes.iter().all(|(_, o)| o.is_some()) {
                let answer = UpdateAnswer {
                    services: req.outcomes.into_iter().filter_map(|(_, o)| o).collect(),
                };
                let _caller_may_have_left = req.reply.send(Ok(answer));
            } else {
                self.updates.push(req);
            }
        }
    }

    /// Compares what `svc` runs with what its tags name now: equal is an outcome; different
    /// begins a swap (the outcome comes when its window ends).
    async fn compare(&mut self, svc: &Service) -> Option<UpdateOutcome> {
        let name = &svc.name;
        // The user asked: a rollback stops holding the service (only now that its images
        // are pulled, so that the pass that follows swaps onto them).
        let now = self.now();
        if self.rollouts.release(name, now, &self.edges.files).await {
            // Its units name the catalog's images again.
            self.rollouts.pass_due = true;
        }
        let Some(to_ids) = self.target_ids(svc).await else {
            return outcome(
                name,
                UpdateResult::Failed,
                format!("an image of {name} is not in local storage"),
            );
        };
        let Some(from) = self.running_ids(svc).await else {
            return outcome(
                name,
                UpdateResult::NotRunning,
                format!("{name} is not running; it starts on {}", ids(&to_ids)),
            );
        };
        if from == to_ids {
            let images: Vec<String> = svc
                .containers
                .iter()
                .map(|c| format!("{} is {}", c.image, short_id(&to_ids[&c.name])))
                .collect();
            return outcome(
                name,
                UpdateResult::Current,
                format!("already current: {}", images.join(", ")),
            );
        }
        let to = svc
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect();
        self.begin_swap(svc, from, to, to_ids).await;
        self.intent.force.insert(name.clone());
        self.rollouts.pass_due = true;
        None
    }
}

fn desired_choice(catalog: &Catalog, state: &crate::state::UserState, name: &str) -> Choice {
    super::desired::choice(catalog, state, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(phase: Phase) -> Record {
        Record {
            phase,
            from: [("web".to_string(), "sha256:old".to_string())].into(),
            to: [("web".to_string(), "localhost/x:2".to_string())].into(),
            to_ids: [("web".to_string(), "sha256:new".to_string())].into(),
            at: 100,
            deadline: 110,
            reason: None,
            rollbacks: 0,
        }
    }

    #[test]
    fn judge_waits_then_rolls_back_at_the_deadline() {
        let r = rec(Phase::Pending);
        assert_eq!(judge(&r, State::Starting, None, false, 105), Verdict::Wait);
        assert_eq!(judge(&r, State::Running, None, true, 105), Verdict::Healthy);
        assert_eq!(
            judge(&r, State::Running, None, false, 109),
            Verdict::Wait,
            "running but not yet proven healthy"
        );
        let Verdict::RollBack(why) = judge(
            &r,
            State::Unhealthy,
            Some("health check of web fails"),
            false,
            110,
        ) else {
            panic!("deadline passed");
        };
        assert_eq!(
            why,
            "not healthy within 10s of the swap (unhealthy: health check of web fails)"
        );
        assert!(matches!(
            judge(&r, State::Failed, Some("unit failed"), false, 101),
            Verdict::RollBack(w) if w == "the new container failed: unit failed"
        ));
        assert_eq!(
            judge(&rec(Phase::RolledBack), State::Failed, None, false, 200),
            Verdict::Wait,
            "only pending swaps are judged"
        );
    }

    #[test]
    fn short_ids_are_podmans() {
        assert_eq!(
            short_id(&format!("sha256:{}", "ab".repeat(32))),
            "abababababab"
        );
        assert_eq!(short_id(&"0123456789abcdef".repeat(4)), "0123456789ab");
        assert_eq!(short_id("id-x"), "id-x");
        assert!(pullable("docker.io/a/b:1"));
        assert!(!pullable("localhost/a:1"));
        assert!(!pullable(&format!(
            "docker.io/a/b@sha256:{}",
            "a".repeat(64)
        )));
    }
}
