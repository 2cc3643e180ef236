//! What a candidate catalog or policy would change on this VM (`berth catalog diff`). Pure:
//! two catalogs, the user's choices and the host's facts in, a list of changes out.
//!
//! A service's fate follows the engine's rules: its choice as policy lets it stand (refused
//! → off, required → on), and a service that is on restarts exactly when its rendered units
//! change (a changed stable port is the proxy's and restarts nothing).

use std::fmt;

use serde::Serialize;

use super::model::{Catalog, Service};
use crate::state::{Choice, UserState};
use crate::units::{self, RenderCtx};

/// The user's choice as policy lets it stand (the engine's rule, `engine::desired::choice`).
pub fn effective_choice(catalog: &Catalog, state: &UserState, name: &str) -> Choice {
    let policy = &catalog.policy;
    if policy.is_denied(name) || catalog.get(name).is_some_and(|s| s.refused.is_some()) {
        Choice::Off
    } else if policy.is_required(name) {
        Choice::On
    } else {
        state.choice(name, &policy.default_enabled)
    }
}

/// What would happen to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// New in the catalog, and on: installed and started.
    AddedStarted,
    /// New in the catalog, off.
    Added,
    /// Gone from the catalog while it was on: stopped, its units removed (volumes kept).
    RemovedStopped,
    /// Gone from the catalog, was off.
    Removed,
    /// Turned on by the candidate (required, default-enabled, no longer refused).
    Started,
    /// Turned off by the candidate (refused, denied): stopped, units removed.
    Stopped,
    /// On, and its units change: restarted.
    Restarted,
    /// Its definition changes but not what runs now (it is off, or only its stable port,
    /// description or origin changed).
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDiff {
    pub service: String,
    pub effect: Effect,
    /// What changed, in words.
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatalogDiff {
    pub services: Vec<ServiceDiff>,
    /// Rules of the policy that differ, by name.
    pub policy: Vec<String>,
}

impl CatalogDiff {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.policy.is_empty()
    }
}

fn units_of(svc: &Service, ctx: &RenderCtx) -> Vec<units::UnitFile> {
    units::render(svc, ctx)
}

/// What differs in a service's definition, in a few words.
fn what_changed(a: &Service, b: &Service) -> Vec<String> {
    let mut out = Vec::new();
    let ai: Vec<&str> = a.images().collect();
    let bi: Vec<&str> = b.images().collect();
    if ai != bi {
        out.push(format!("images {} → {}", ai.join(", "), bi.join(", ")));
    }
    let ap: Vec<u16> = a.ports().map(|p| p.host).collect();
    let bp: Vec<u16> = b.ports().map(|p| p.host).collect();
    if ap != bp {
        out.push(format!("stable ports {ap:?} → {bp:?}"));
    }
    let limits = |s: &Service| -> Vec<String> {
        s.containers
            .iter()
            .map(|c| {
                format!(
                    "{}: memory {}, cpus {}",
                    c.name,
                    c.memory.map_or("none".into(), super::policy::human_size),
                    c.cpus.map_or("none".into(), |n| n.to_string())
                )
            })
            .collect()
    };
    let (al, bl) = (limits(a), limits(b));
    if al != bl {
        let changed: Vec<String> = al
            .iter()
            .zip(&bl)
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("{x} → {}", y.split_once(": ").map_or(y.as_str(), |p| p.1)))
            .collect();
        out.push(format!("limits {}", changed.join("; ")));
    }
    if a.on_demand != b.on_demand {
        out.push(format!("on_demand {} → {}", a.on_demand, b.on_demand));
    }
    if a.refused != b.refused {
        out.push(match &b.refused {
            Some(r) => format!("refused: {r}"),
            None => "no longer refused".into(),
        });
    }
    if a.origin.file != b.origin.file {
        out.push(format!(
            "defined in {} → {}",
            a.origin.file.display(),
            b.origin.file.display()
        ));
    }
    out
}

/// The changes from `old` to `new` for a user whose choices are `state`.
pub fn diff(old: &Catalog, new: &Catalog, state: &UserState, ctx: &RenderCtx) -> CatalogDiff {
    let mut out = CatalogDiff::default();
    let names: std::collections::BTreeSet<&String> =
        old.services.keys().chain(new.services.keys()).collect();
    for name in names {
        let (a, b) = (old.get(name), new.get(name));
        let ca = a.map(|_| effective_choice(old, state, name));
        let cb = b.map(|_| effective_choice(new, state, name));
        let on = |c: Option<Choice>| c.is_some_and(|c| c != Choice::Off);
        let (effect, detail) = match (a, b) {
            (None, None) => continue,
            (None, Some(s)) => {
                let e = if on(cb) {
                    Effect::AddedStarted
                } else {
                    Effect::Added
                };
                (e, format!("from {}", s.origin.file.display()))
            }
            (Some(s), None) => {
                let e = if on(ca) {
                    Effect::RemovedStopped
                } else {
                    Effect::Removed
                };
                (e, format!("was in {}", s.origin.file.display()))
            }
            (Some(x), Some(y)) => {
                let words = what_changed(x, y).join("; ");
                let units_differ = units_of(x, ctx) != units_of(y, ctx);
                match (on(ca), on(cb)) {
                    (false, true) => (Effect::Started, words),
                    (true, false) => (Effect::Stopped, words),
                    (true, true) if units_differ => (
                        Effect::Restarted,
                        if words.is_empty() {
                            "its units change".into()
                        } else {
                            words
                        },
                    ),
                    _ if units_differ || !words.is_empty() => (
                        Effect::Changed,
                        if words.is_empty() {
                            "its definition changes".into()
                        } else {
                            words
                        },
                    ),
                    _ => continue,
                }
            }
        };
        out.services.push(ServiceDiff {
            service: name.clone(),
            effect,
            detail,
        });
    }
    let a = serde_json::to_value(policy_rules(old)).unwrap_or_default();
    let b = serde_json::to_value(policy_rules(new)).unwrap_or_default();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in b {
            if a.get(k) != Some(v) {
                out.policy.push(format!(
                    "{k}: {} → {v}",
                    a.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// The policy's rules without their locations (a moved line is no change).
fn policy_rules(c: &Catalog) -> serde_json::Value {
    let mut v = serde_json::to_value(&c.policy).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("rules");
    }
    v
}

impl fmt::Display for CatalogDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no change on this VM");
        }
        for s in &self.services {
            let (mark, what) = match s.effect {
                Effect::AddedStarted => ("+", "added, would start"),
                Effect::Added => ("+", "added (off)"),
                Effect::RemovedStopped => ("-", "removed, would stop (its volumes are kept)"),
                Effect::Removed => ("-", "removed (was off)"),
                Effect::Started => ("^", "would start"),
                Effect::Stopped => ("v", "would stop and be turned off"),
                Effect::Restarted => ("~", "would restart"),
                Effect::Changed => ("~", "changed, nothing restarts"),
            };
            write!(f, "{mark} {:<20} {what}", s.service)?;
            if s.detail.is_empty() {
                writeln!(f)?;
            } else {
                writeln!(f, ": {}", s.detail)?;
            }
        }
        for p in &self.policy {
            writeln!(f, "policy {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    fn svc(name: &str, port: u16, image: &str) -> Source {
        Source::new(
            format!("/etc/berth/catalog.d/{name}.toml"),
            format!(
                "name = \"{name}\"\ndescription = \"x\"\n[[containers]]\nname = \"app\"\nimage = \"{image}\"\n[[containers.ports]]\nname = \"http\"\nhost = {port}\ncontainer = 80\n"
            ),
        )
    }

    fn cat(policy: &str, s: &[Source]) -> Catalog {
        from_sources(Some(&Source::new("/etc/berth/policy.toml", policy)), s).expect("valid")
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let old = cat(
            "",
            &[
                svc("same", 18001, "localhost/a:1"),
                svc("img", 18002, "localhost/a:1"),
                svc("port", 18003, "localhost/a:1"),
                svc("gone", 18004, "localhost/a:1"),
                svc("offgone", 18005, "localhost/a:1"),
                svc("req", 18007, "localhost/a:1"),
            ],
        );
        let new = cat(
            "required_services = [\"req\"]\n",
            &[
                svc("same", 18001, "localhost/a:1"),
                svc("img", 18002, "localhost/a:2"),
                svc("port", 18013, "localhost/a:1"),
                svc("new", 18006, "localhost/a:1"),
                svc("req", 18007, "localhost/a:1"),
            ],
        );
        let mut state = UserState::default();
        for s in ["same", "img", "port", "gone"] {
            state.set(s, Choice::On);
        }
        let d = diff(&old, &new, &state, &RenderCtx::default());
        let got: Vec<(&str, Effect)> = d
            .services
            .iter()
            .map(|s| (s.service.as_str(), s.effect.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("gone", Effect::RemovedStopped),
                ("img", Effect::Restarted),
                ("new", Effect::Added),
                ("offgone", Effect::Removed),
                ("port", Effect::Changed),
                ("req", Effect::Started),
            ]
        );
        assert!(d.services[1]
            .detail
            .contains("localhost/a:1 → localhost/a:2"));
        assert!(
            d.policy[0].starts_with("required_services: [] → [\"req\"]"),
            "{:?}",
            d.policy
        );
        let text = d.to_string();
        assert!(
            text.contains("~ img                  would restart: images"),
            "{text}"
        );
        assert!(diff(&old, &old, &state, &RenderCtx::default()).is_empty());
    }

    #[test]
    fn a_policy_refusing_an_image_stops_what_runs() {
        let old = cat("", &[svc("a", 18001, "docker.io/x/a:1")]);
        let new = cat(
            "allowed_images = [\"localhost/*\"]\n",
            &[svc("a", 18001, "docker.io/x/a:1")],
        );
        let mut state = UserState::default();
        state.set("a", Choice::On);
        let d = diff(&old, &new, &state, &RenderCtx::default());
        assert_eq!(d.services[0].effect, Effect::Stopped);
        assert!(d.services[0].detail.contains("allowed_images"), "{d:?}");
    }
}
