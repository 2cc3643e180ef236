//! The policy's rules that act on the layered catalog as a whole: which images may run, which
//! services are refused, forced on-demand or required, and the resource ceilings. They run
//! after layering, so an admin's patch of an image is held to the same rules as a full entry.
//!
//! A service that a rule refuses stays in the catalog, marked [`Service::refused`] with the
//! rule and its file:line: users see it and why, and it cannot be enabled. A policy whose own
//! lists name services the catalog does not have, or that requires a refused service, is an
//! error of the policy file (the catalog is rejected whole, like any broken file).
//!
//! Ceilings clamp: a container above the per-container ceiling (or without a limit of its
//! own) gets the ceiling, and the change is recorded in [`Service::policy_set`]. Clamping
//! rather than refusing keeps a built-in or admin entry usable when an administrator lowers a
//! ceiling; the user sees the limit in `berth catalog show --origin`.

use std::collections::BTreeMap;

use super::model::{FieldOrigin, Policy, Service};
use super::{Diagnostic, Source};

fn set_by(policy: &Policy, rule: &str, field: String) -> FieldOrigin {
    let (file, line) = policy
        .rules
        .get(rule)
        .map_or_else(Default::default, |l| (l.file.clone(), l.line));
    FieldOrigin {
        field,
        file,
        line,
        col: 0,
    }
}

/// Applies the policy's catalog-wide rules to the layered services.
pub fn apply(
    services: &mut BTreeMap<String, Service>,
    policy: &Policy,
    policy_src: Option<&Source>,
    diags: &mut Vec<Diagnostic>,
) {
    for svc in services.values_mut() {
        let bad_image = svc
            .images()
            .find(|i| !policy.image_allowed(i))
            .map(str::to_string);
        if let Some(r) = policy.remote_services.get(&svc.name) {
            svc.refused = Some(format!(
                "provided by the cloud at {} ({})",
                r.url,
                policy.rule(&format!("remote_services.{}", svc.name))
            ));
        } else if policy.is_denied(&svc.name) {
            svc.refused = Some(format!("denied by {}", policy.rule("denied_services")));
        } else if let Some(bad) = bad_image {
            svc.refused = Some(format!(
                "image {bad} is not allowed by {} (allowed: {})",
                policy.rule("allowed_images"),
                policy.allowed_images.join(", ")
            ));
        }
        if policy.on_demand.contains(&svc.name) && svc.ports().next().is_some() && !svc.on_demand {
            svc.on_demand = true;
            svc.policy_set
                .push(set_by(policy, "on_demand", "on_demand".into()));
        }
        let l = &policy.limits;
        for ctr in &mut svc.containers {
            if let Some(max) = l.container_memory {
                if ctr.memory.is_none_or(|m| m > max) {
                    ctr.memory = Some(max);
                    svc.policy_set.push(set_by(
                        policy,
                        "limits.container_memory",
                        format!("containers.{}.memory", ctr.name),
                    ));
                }
            }
            if let Some(max) = l.container_cpus {
                if ctr.cpus.is_none_or(|c| c > max) {
                    ctr.cpus = Some(max);
                    svc.policy_set.push(set_by(
                        policy,
                        "limits.container_cpus",
                        format!("containers.{}.cpus", ctr.name),
                    ));
                }
            }
        }
    }
    let Some(src) = policy_src else { return };
    let at = |rule: &str| policy.rules.get(rule).map_or((0, 0), |l| (l.line, 1));
    let mut err = |rule: &str, msg: String| {
        let (line, col) = at(rule);
        diags.push(Diagnostic {
            file: src.path.clone(),
            line,
            col,
            field: rule.to_string(),
            message: msg,
        });
    };
    for name in &policy.required_services {
        match services.get(name) {
            None => err("required_services", format!("unknown service {name:?}")),
            Some(s) => {
                if let Some(why) = &s.refused {
                    err(
                        "required_services",
                        format!("required service {name:?} is refused: {why}"),
                    );
                }
            }
        }
    }
    for name in &policy.on_demand {
        match services.get(name) {
            None => err("on_demand", format!("unknown service {name:?}")),
            Some(s) if s.ports().next().is_none() => err(
                "on_demand",
                format!("service {name:?} has no port: an on-demand service starts at the first connection to one"),
            ),
            Some(_) => {}
        }
    }
}

/// The per-user ceilings a set of services would pass: `Err` names the rule that refuses.
/// Containers without a limit count as nothing (set `limits.container_*` so every container
/// has one).
pub fn within_user_limits<'a>(
    policy: &Policy,
    services: impl Iterator<Item = &'a Service>,
) -> Result<(), String> {
    let (mut mem, mut cpus) = (0u64, 0f64);
    for s in services {
        for c in &s.containers {
            mem = mem.saturating_add(c.memory.unwrap_or(0));
            cpus += c.cpus.unwrap_or(0.0);
        }
    }
    if let Some(max) = policy.limits.user_memory {
        if mem > max {
            return Err(format!(
                "together the services turned on would claim {} of memory, above the {} of {}",
                human_size(mem),
                human_size(max),
                policy.rule("limits.user_memory")
            ));
        }
    }
    if let Some(max) = policy.limits.user_cpus {
        if cpus > max + 1e-9 {
            return Err(format!(
                "together the services turned on would claim {cpus} CPUs, above the {max} of {}",
                policy.rule("limits.user_cpus")
            ));
        }
    }
    Ok(())
}

/// Bytes in the largest binary unit that is exact (Podman's size syntax).
pub fn human_size(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        0 => "0".into(),
        n if n.is_multiple_of(K * K * K) => format!("{}g", n / (K * K * K)),
        n if n.is_multiple_of(K * K) => format!("{}m", n / (K * K)),
        n => format!("{}k", n.div_ceil(K)),
    }
}
