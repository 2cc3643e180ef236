//! The planner: desired state and actual state in, an ordered list of actions out. Pure.
//!
//! Order of a plan: stop what must stop, then change unit files, reload systemd once, then
//! pull missing images, then start or restart (services a service `uses` first). An empty plan
//! means the world already matches; applying it writes nothing.

use std::collections::{BTreeMap, BTreeSet};

pub use berth_proto::{Action, Plan};

use crate::state::Choice;
use crate::systemd::UnitState;
use crate::units::{self, UnitFile};

/// What one service should look like.
#[derive(Debug, Clone)]
pub struct DesiredService {
    pub choice: Choice,
    /// Rendered units, main unit first.
    pub units: Vec<UnitFile>,
    pub images: Vec<String>,
    pub uses: Vec<String>,
    /// Why this service must not start (policy, a required GPU that is missing…).
    pub blocked: Option<String>,
    /// The user just asked to (re)start it: restart even if active, retry even if failed.
    pub force: bool,
    /// A client connected to it (on demand): retry it if failed, leave it be if it runs.
    pub retry: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub services: BTreeMap<String, DesiredService>,
}

/// What a pull of an image looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    Running,
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct Actual {
    /// berth's unit files on disk: name → content.
    pub unit_files: BTreeMap<String, String>,
    /// berth's units loaded in systemd.
    pub units: BTreeMap<String, UnitState>,
    /// Units whose file changed since systemd loaded it.
    pub stale: BTreeSet<String>,
    /// Presence of the images asked about (only those of services that may start).
    pub images: BTreeMap<String, bool>,
    pub pulls: BTreeMap<String, PullState>,
}

fn active_or_starting(u: Option<&UnitState>) -> bool {
    u.is_some_and(|u| matches!(u.active.as_str(), "active" | "reloading" | "activating"))
}

/// Services ordered so that each comes after the services it uses (cycles are rejected by
/// catalog validation; any left are broken by name order).
fn start_order(desired: &Desired) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit<'a>(n: &'a str, d: &'a Desired, seen: &mut BTreeSet<&'a str>, out: &mut Vec<&'a str>) {
        if !seen.insert(n) {
            return;
        }
        if let Some(s) = d.services.get(n) {
            for u in &s.uses {
                visit(u, d, seen, out);
            }
            out.push(n);
        }
    }
    for n in desired.services.keys() {
        visit(n, desired, &mut seen, &mut out);
    }
    out
}

pub fn plan(desired: &Desired, actual: &Actual) -> Plan {
    let mut stops = Vec::new();
    let mut files = Vec::new();
    let mut pulls = Vec::new();
    let mut starts: BTreeMap<&str, Vec<Action>> = BTreeMap::new();
    let mut waiting = BTreeMap::new();
    let mut reload = false;

    // Unit files grouped by service once: looking them up per service would scan every file
    // for every service.
    let mut files_of: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for f in actual.unit_files.keys() {
        if let Some(s) = units::service_of_unit(f) {
            files_of.entry(s).or_default().push(f);
        }
    }
    // Services that exist on disk or in systemd but are no longer wanted.
    let mut present: BTreeSet<&str> = BTreeSet::new();
    for name in actual.unit_files.keys().chain(actual.units.keys()) {
        if let Some(s) = units::service_of_unit(name) {
            present.insert(s);
        }
    }
    for svc in present {
        let wanted = desired
            .services
            .get(svc)
            .is_some_and(|d| d.choice != Choice::Off);
        if wanted {
            continue;
        }
        let main = units::main_unit(svc);
        let state = actual.units.get(&main);
        if active_or_starting(state) {
            stops.push(Action::Stop {
                service: svc.into(),
                unit: main.clone(),
            });
        } else if state.is_some_and(|u| u.active == "failed") {
            stops.push(Action::ResetFailed {
                service: svc.into(),
                unit: main.clone(),
            });
        }
        for unit in files_of.get(svc).into_iter().flatten() {
            files.push(Action::RemoveUnit {
                service: svc.into(),
                unit: (*unit).clone(),
            });
            reload = true;
        }
    }

    for (name, d) in &desired.services {
        if d.choice == Choice::Off {
            continue;
        }
        // A running service whose images changed keeps running on the old ones until the new
        // ones are here: pull first, swap after (its unit files are written then).
        let running_now = d
            .units
            .first()
            .is_some_and(|m| actual.units.get(&m.name).is_some_and(|u| u.is_active()));
        if running_now
            && d.choice == Choice::On
            && d.blocked.is_none()
            && d.units
                .iter()
                .any(|u| actual.unit_files.get(&u.name) != Some(&u.content))
        {
            let mut why = Vec::new();
            for image in d
                .images
                .iter()
                .filter(|i| actual.images.get(*i) == Some(&false))
            {
                match actual.pulls.get(image) {
                    Some(PullState::Failed(e)) if !d.force && !d.retry => why.push(format!(
                        "the new image {image} could not be pulled: {e}; the old one keeps running"
                    )),
                    Some(PullState::Running) => why.push(format!("pulling {image}")),
                    _ => {
                        pulls.push(Action::Pull {
                            service: name.clone(),
                            image: image.clone(),
                        });
                        why.push(format!("pulling {image}"));
                    }
                }
            }
            if !why.is_empty() {
                waiting.insert(name.clone(), why.join("; "));
                continue;
            }
        }
        let mut changed = false;
        for u in &d.units {
            if actual.unit_files.get(&u.name) != Some(&u.content) {
                files.push(Action::WriteUnit {
                    service: name.clone(),
                    unit: u.name.clone(),
                    content: u.content.clone(),
                });
                changed = true;
            }
            if actual.stale.contains(&u.name) {
                reload = true;
            }
        }
        for unit in files_of.get(name.as_str()).into_iter().flatten() {
            if !d.units.iter().any(|u| &u.name == *unit) {
                files.push(Action::RemoveUnit {
                    service: name.clone(),
                    unit: (*unit).clone(),
                });
                changed = true;
            }
        }
        reload |= changed;

        let Some(main) = d.units.first().map(|u| u.name.clone()) else {
            continue;
        };
        let state = actual.units.get(&main);
        let running = state.is_some_and(|u| u.is_active());
        if d.choice == Choice::Stopped {
            if active_or_starting(state) {
                stops.push(Action::Stop {
                    service: name.clone(),
                    unit: main,
                });
            }
            continue;
        }
        if let Some(why) = &d.blocked {
            waiting.insert(name.clone(), why.clone());
            continue;
        }
        if running && !changed && !d.force {
            // `berth start` of a running pod whose member a health gate (or a crash loop) left
            // failed: start that member again, not the whole pod.
            if d.retry {
                let mut acts = Vec::new();
                for u in d.units.iter().skip(1) {
                    if actual
                        .units
                        .get(&u.name)
                        .is_some_and(|s| s.active == "failed")
                    {
                        acts.push(Action::ResetFailed {
                            service: name.clone(),
                            unit: u.name.clone(),
                        });
                        acts.push(Action::Start {
                            service: name.clone(),
                            unit: u.name.clone(),
                        });
                    }
                }
                if !acts.is_empty() {
                    starts.insert(name.as_str(), acts);
                }
            }
            continue;
        }
        if state.is_some_and(|u| u.active == "activating" || u.active == "deactivating") && !d.force
        {
            continue;
        }
        let failed = state.is_some_and(|u| u.active == "failed");
        if failed && !d.force && !d.retry && !changed {
            waiting.insert(name.clone(), "failed; `berth start` retries".into());
            continue;
        }
        if !running {
            let missing: Vec<&String> = d
                .images
                .iter()
                .filter(|i| actual.images.get(*i) == Some(&false))
                .collect();
            if !missing.is_empty() {
                let mut why = Vec::new();
                for image in missing {
                    match actual.pulls.get(image) {
                        Some(PullState::Running) => why.push(format!("pulling {image}")),
                        Some(PullState::Failed(e)) if !d.force && !d.retry => why.push(format!(
                            "image {image} is not present and could not be pulled: {e}"
                        )),
                        _ => {
                            pulls.push(Action::Pull {
                                service: name.clone(),
                                image: image.clone(),
                            });
                            why.push(format!("pulling {image}"));
                        }
                    }
                }
                waiting.insert(name.clone(), why.join("; "));
                continue;
            }
        }
        let mut acts = vec![Action::PrepareFiles {
            service: name.clone(),
        }];
        if failed {
            acts.push(Action::ResetFailed {
                service: name.clone(),
                unit: main.clone(),
            });
        }
        // A pod member left failed by an earlier start (its health gate timed out) would
        // read as this start's failure until its own start job runs.
        for u in d.units.iter().skip(1) {
            if actual
                .units
                .get(&u.name)
                .is_some_and(|s| s.active == "failed")
            {
                acts.push(Action::ResetFailed {
                    service: name.clone(),
                    unit: u.name.clone(),
                });
            }
        }
        acts.push(if running {
            Action::Restart {
                service: name.clone(),
                unit: main,
            }
        } else {
            Action::Start {
                service: name.clone(),
                unit: main,
            }
        });
        starts.insert(name.as_str(), acts);
    }

    let mut actions = stops;
    actions.extend(files);
    if reload {
        actions.push(Action::DaemonReload);
    }
    actions.extend(pulls);
    for name in start_order(desired) {
        if let Some(a) = starts.remove(name) {
            actions.extend(a);
        }
    }
    Plan { actions, waiting }
}

#[cfg(test)]
mod tests;
