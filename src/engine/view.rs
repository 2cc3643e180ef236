//! The status of every service, projected from what the engine gathered. Pure: no IO, no
//! logging, no state of its own (`since` is filled in by the event tracker).

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::{ContainerStatus, Failure, PortStatus, ProbeStatus, ServiceStatus, State};

use super::desired;
use crate::catalog::Catalog;
use crate::health;
use crate::state::{Choice, UserState};
use crate::systemd::UnitState;
use crate::units;

/// What was gathered about one service.
#[derive(Debug, Clone, Default)]
pub(super) struct ServiceFacts {
    /// The main unit as systemd lists it; `None` when systemd has not loaded it.
    pub unit: Option<UnitState>,
    pub containers: Vec<ContainerStatus>,
    /// systemd's `Result` and `NRestarts` of the main unit, when it is failed or running.
    pub result: Option<(String, u32)>,
    /// The last lines of the containers' logs, read when the unit is failed.
    pub log_lines: Vec<String>,
    /// The member units of a pod (empty for a single container).
    pub members: Vec<crate::gate::Member>,
}

/// Everything the view is made from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts<'a> {
    pub catalog: &'a Catalog,
    pub state: &'a UserState,
    pub awake: &'a BTreeSet<String>,
    pub services: &'a BTreeMap<String, ServiceFacts>,
    pub probes: &'a BTreeMap<String, ProbeStatus>,
    /// What the last pass could not do, by service.
    pub apply_errors: &'a BTreeMap<String, String>,
    /// Stable ports the proxy cannot serve, by service.
    pub bind_errors: &'a BTreeMap<String, String>,
    /// The planner's reasons for wanted services that wait.
    pub waiting: &'a BTreeMap<String, String>,
    /// Images whose pull failed, image → Podman's reason.
    pub pull_failures: &'a BTreeMap<String, String>,
    /// A container can get a GPU here.
    pub gpu_available: bool,
    /// The last checks of the services the cloud provides, by name.
    pub remotes: &'a BTreeMap<String, berth_proto::RemoteServiceInfo>,
}

/// The statuses of every service (or only `only`), in catalog order.
pub(super) fn project(f: &Facts<'_>, only: Option<&str>) -> Vec<ServiceStatus> {
    let none = ServiceFacts::default();
    f.catalog
        .services
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
        .map(|(name, svc)| {
            let facts = f.services.get(name).unwrap_or(&none);
            one(f, name, svc, facts)
        })
        .collect()
}

fn one(
    f: &Facts<'_>,
    name: &str,
    svc: &crate::catalog::Service,
    facts: &ServiceFacts,
) -> ServiceStatus {
    let choice = desired::choice(f.catalog, f.state, name);
    let unit = facts.unit.as_ref();
    let (result, restarts) = facts
        .result
        .as_ref()
        .map_or((None, 0), |(r, n)| (Some(r.as_str()), *n));
    let probe = svc.probe.as_ref().and_then(|_| f.probes.get(name)).cloned();
    let (mut state, mut reason) = health::derive(health::Parts {
        choice,
        unit,
        containers: &facts.containers,
        probe: probe.as_ref(),
        result,
        restarts,
    });
    // A running pod is only as far as its members: one failed (its health gate timed out, or
    // it crashed past its restarts) fails the service, one still starting keeps it starting.
    if matches!(state, State::Running | State::Starting | State::Unhealthy) {
        match crate::gate::verdict(svc, &facts.members) {
            Some(crate::gate::Verdict::Failed(why)) => {
                state = State::Failed;
                reason = Some(why);
            }
            Some(crate::gate::Verdict::Starting(why)) if state == State::Running => {
                state = State::Starting;
                reason = Some(why);
            }
            _ => {}
        }
    }
    if state == State::Off {
        if let Some(why) = &svc.refused {
            reason = Some(format!("refused: {why}"));
        }
    }
    let mut failure = (state == State::Failed).then_some(Failure::Unit);
    let on_demand_idle = svc.on_demand
        && choice == Choice::On
        && !f.awake.contains(name)
        && matches!(state, State::Waiting | State::Stopped);
    if on_demand_idle {
        let ports: Vec<String> = svc.ports().map(|p| p.host.to_string()).collect();
        state = State::Idle;
        reason = Some(format!(
            "starts on the first connection to port {}",
            ports.join(", ")
        ));
    }
    if state == State::Failed && !facts.log_lines.is_empty() {
        // The end of the crashed container's log usually says why.
        let base = reason.unwrap_or_default();
        reason = Some(format!(
            "{base}; last log lines: {}",
            facts.log_lines.join(" | ")
        ));
    }
    let running = unit.is_some_and(|u| u.is_active() || u.active == "activating");
    let pull_failed = (choice == Choice::On && !running)
        .then(|| {
            svc.images()
                .find_map(|i| f.pull_failures.get(i).map(|e| (i, e)))
        })
        .flatten();
    // What the last pass could not do, a stable port berth cannot serve or an image it
    // cannot get outranks the coarse reason.
    if let Some(e) = f.apply_errors.get(name) {
        reason = Some(e.clone());
        if matches!(state, State::Waiting | State::Idle) {
            state = State::Failed;
            failure = Some(Failure::Unit);
        }
    } else if let Some(e) = f.bind_errors.get(name) {
        reason = Some(e.clone());
        state = State::Failed;
        failure = Some(Failure::Port);
    } else if let Some((image, why)) = pull_failed {
        reason = Some(format!("cannot pull {image}: {why}"));
        state = State::Failed;
        failure = Some(Failure::Pull);
    } else if let Some(w) = f.waiting.get(name) {
        // A failed unit keeps its own reason (crash count, last log lines); the planner's
        // "failed; `berth start` retries" says less.
        if state == State::Waiting {
            reason = Some(w.clone());
        }
    }
    let hint = (state == State::Failed).then(|| match failure {
        Some(Failure::Port) => format!("free the port, then `berth start {name}`"),
        _ => format!("berth start {name}"),
    });
    ServiceStatus {
        name: name.to_string(),
        description: svc.description.clone(),
        choice,
        state,
        reason,
        failure: if state == State::Failed {
            failure
        } else {
            None
        },
        hint,
        unit: units::main_unit(name),
        unit_state: unit.map_or_else(|| "absent".into(), |u| format!("{}/{}", u.active, u.sub)),
        ports: svc
            .ports()
            .map(|p| PortStatus {
                name: p.name.clone(),
                port: p.host,
                url: format!("http://127.0.0.1:{}/", p.host),
            })
            .collect(),
        containers: facts.containers.clone(),
        restarts,
        since: None,
        probe,
        locked: f.catalog.policy.is_required(name),
        note: remote_note(f, svc).or_else(|| {
            (svc.gpu == crate::catalog::Gpu::Optional && !f.gpu_available)
                .then(|| "runs on CPU: no GPU found (see `berth info`)".to_string())
        }),
        update: None,
    }
}

/// For a service that uses one the cloud provides: that it does not answer (its consumers
/// run, but what they use is not there).
fn remote_note(f: &Facts<'_>, svc: &crate::catalog::Service) -> Option<String> {
    svc.uses.iter().find_map(|u| {
        let r = f.remotes.get(u)?;
        (r.up == Some(false)).then(|| {
            format!(
                "the cloud's {u} at {} does not answer: {}",
                r.url,
                r.error.as_deref().unwrap_or("no answer")
            )
        })
    })
}
