//! Container inspections kept between health refreshes.
//!
//! Asking Podman every refresh would wake its socket-activated API service (which exits after
//! 5 s idle) every 10 s. So an answer is reused while the container's unit keeps its
//! (ActiveState, SubState), up to the container's health-check interval (its health can only
//! change that often; at least every 30 s) or, without a health check, up to
//! [`MAX_AGE`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::catalog::Container;
use crate::podman::ContainerInspect;
use crate::systemd::UnitState;

/// How long the inspection of a container without a health check is reused while its unit
/// keeps its state.
pub(super) const MAX_AGE: Duration = Duration::from_secs(300);

/// What an inspection is kept against: the unit's (ActiveState, SubState).
pub(super) type UnitKey = Option<(String, String)>;

pub(super) fn unit_key(unit: Option<&UnitState>) -> UnitKey {
    unit.map(|u| (u.active.clone(), u.sub.clone()))
}

#[derive(Debug)]
struct Kept {
    inspect: Option<ContainerInspect>,
    unit: UnitKey,
    at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct InspectCache {
    kept: BTreeMap<String, Kept>,
}

/// How long an inspection of `ctr` stays good while its unit keeps its state.
pub(super) fn max_age(ctr: &Container) -> Duration {
    ctr.health.as_ref().map_or(MAX_AGE, |h| {
        h.interval
            .clamp(Duration::from_secs(1), Duration::from_secs(30))
    })
}

impl InspectCache {
    /// The kept answer for `name`, if it still holds for a unit in state `unit`.
    pub fn fresh(
        &self,
        name: &str,
        unit: &UnitKey,
        max_age: Duration,
    ) -> Option<Option<ContainerInspect>> {
        self.kept
            .get(name)
            .filter(|k| &k.unit == unit && k.at.elapsed() < max_age)
            .map(|k| k.inspect.clone())
    }

    /// The last answer for `name`, however old (the best knowledge while Podman is away).
    pub fn last(&self, name: &str) -> Option<ContainerInspect> {
        self.kept.get(name).and_then(|k| k.inspect.clone())
    }

    pub fn keep(&mut self, name: &str, inspect: Option<ContainerInspect>, unit: UnitKey) {
        self.kept.insert(
            name.to_string(),
            Kept {
                inspect,
                unit,
                at: Instant::now(),
            },
        );
    }

    pub fn forget(&mut self, name: &str) {
        self.kept.remove(name);
    }
}
