//! What the world should look like, from the catalog, policy and the user's choices. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Catalog, Gpu};
use crate::plan::{Desired, DesiredService};
use crate::proxy::ports::PortSpec;
use crate::proxy::relays::{RelayPort, RelayWant};
use crate::state::{Choice, UserState};
use crate::units::{self, RenderCtx};

/// The user's choice as policy lets it stand: a denied or refused service is off, a required
/// one on.
pub(super) fn choice(catalog: &Catalog, state: &UserState, name: &str) -> Choice {
    crate::catalog::diff::effective_choice(catalog, state, name)
}

/// What the user asked for beyond their choices, consumed by the next pass.
#[derive(Debug, Default)]
pub(super) struct Intent {
    /// Restart even if running (`berth restart`).
    pub force: BTreeSet<String>,
    /// Start if not running and retry if failed, never restart (`enable`, `start`, a client
    /// connecting to an on-demand service).
    pub retry: BTreeSet<String>,
    /// On-demand services that were asked for and not idle since.
    pub awake: BTreeSet<String>,
}

/// Why a service must not start, whatever the user chose.
pub(super) fn blocked(svc: &crate::catalog::Service, ctx: &RenderCtx) -> Option<String> {
    (svc.gpu == Gpu::Required && !ctx.gpu_available())
        .then(|| "needs a GPU and none was found".to_string())
}

/// Images a rollback holds services on: service → container → image id (see `rollouts.rs`).
pub(super) type Holds = BTreeMap<String, BTreeMap<String, String>>;

/// `svc` with the images a rollback holds it on in place of the catalog's.
pub(super) fn held(
    svc: &crate::catalog::Service,
    holds: &Holds,
) -> Option<crate::catalog::Service> {
    let hold = holds.get(&svc.name)?;
    let mut svc = svc.clone();
    for c in &mut svc.containers {
        if let Some(id) = hold.get(&c.name) {
            c.image = id.clone();
        }
    }
    Some(svc)
}

pub(super) fn desired(
    catalog: &Catalog,
    state: &UserState,
    intent: &Intent,
    ctx: &RenderCtx,
    holds: &Holds,
) -> Desired {
    let mut services = BTreeMap::new();
    for (name, svc) in &catalog.services {
        let held = held(svc, holds);
        let svc = held.as_ref().unwrap_or(svc);
        let mut choice = choice(catalog, state, name);
        // An on-demand service runs only between a connection and its idle stop.
        if svc.on_demand && choice == Choice::On && !intent.awake.contains(name) {
            choice = Choice::Stopped;
        }
        services.insert(
            name.clone(),
            DesiredService {
                choice,
                // Units of a service that is off are never read by the planner.
                units: if choice == Choice::Off {
                    Vec::new()
                } else {
                    units::render(svc, ctx)
                },
                images: svc.images().map(str::to_string).collect(),
                uses: svc.uses.clone(),
                blocked: blocked(svc, ctx),
                force: intent.force.contains(name),
                retry: intent.retry.contains(name),
            },
        );
    }
    Desired { services }
}

/// The stable ports the proxy should serve: every port of every service the user wants
/// (on-demand ones included, running or not).
pub(super) fn port_specs(catalog: &Catalog, state: &UserState) -> Vec<PortSpec> {
    let mut specs = Vec::new();
    for (name, svc) in &catalog.services {
        if choice(catalog, state, name) != Choice::On {
            continue;
        }
        for ctr in &svc.containers {
            for p in &ctr.ports {
                specs.push(PortSpec {
                    service: name.clone(),
                    name: p.name.clone(),
                    port: p.host,
                    container_port: p.container,
                    container: units::container_name(svc, &svc.containers[0]),
                    on_demand: svc.on_demand,
                    idle_stop: svc.idle_stop,
                    start_wait: svc.start_timeout,
                });
            }
        }
    }
    specs
}

/// The relays the proxy should make inside consumers' pods: for every enabled service that
/// uses others, each used service's ports (served as `specs` serves them, or refused while
/// that service is not enabled).
pub(super) fn relay_wants(
    catalog: &Catalog,
    state: &UserState,
    specs: &[PortSpec],
) -> Vec<RelayWant> {
    let mut wants = Vec::new();
    for (name, svc) in &catalog.services {
        if svc.uses.is_empty() || choice(catalog, state, name) != Choice::On {
            continue;
        }
        let mut ports = Vec::new();
        for used in &svc.uses {
            let Some(u) = catalog.services.get(used) else {
                continue;
            };
            // The cloud provides it: the consumer has its URL and needs no relay.
            if catalog.policy.remote_services.contains_key(used) {
                continue;
            }
            for p in u.ports() {
                ports.push(RelayPort {
                    service: used.clone(),
                    port: p.host,
                    spec: specs
                        .iter()
                        .find(|s| s.service == *used && s.port == p.host)
                        .cloned(),
                });
            }
        }
        wants.push(RelayWant {
            consumer: name.clone(),
            pod: units::pod_name(svc),
            ports,
        });
    }
    wants
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    fn service(name: &str, port: u16, extra: &str) -> String {
        format!(
            "name = \"{name}\"\ndescription = \"x\"\n{extra}\n[[containers]]\nname = \"app\"\nimage = \"localhost/x:1\"\n[[containers.ports]]\nname = \"http\"\nhost = {port}\ncontainer = 8080\n"
        )
    }

    /// `web` uses `api` and `cache`.
    fn web_using_api_and_cache() -> [Source; 3] {
        [
            Source::new("t/api.toml", service("api", 18090, "")),
            Source::new("t/cache.toml", service("cache", 18092, "")),
            Source::new(
                "t/web.toml",
                service("web", 18091, "uses = [\"api\", \"cache\"]"),
            ),
        ]
    }

    #[test]
    fn relays_follow_enabled_consumers_and_say_which_used_services_are_off() {
        let c = from_sources(None, &web_using_api_and_cache()).expect("valid");
        let mut state = UserState::default();
        assert!(relay_wants(&c, &state, &[]).is_empty(), "web is off");
        state.set("web", Choice::On);
        state.set("api", Choice::On);
        let specs = port_specs(&c, &state);
        let wants = relay_wants(&c, &state, &specs);
        assert_eq!(wants.len(), 1);
        let w = &wants[0];
        assert_eq!((w.consumer.as_str(), w.pod.as_str()), ("web", "berth-web"));
        let ports: Vec<_> = w
            .ports
            .iter()
            .map(|p| (p.service.as_str(), p.port, p.spec.is_some()))
            .collect();
        assert_eq!(ports, [("api", 18090, true), ("cache", 18092, false)]);
    }

    #[test]
    fn a_service_the_cloud_provides_gets_no_relay() {
        let policy = Source::new(
            "/etc/berth/policy.toml",
            "[remote_services.api]\nurl = \"http://10.0.0.5:11434\"\n",
        );
        let c = from_sources(Some(&policy), &web_using_api_and_cache()).expect("valid");
        let mut state = UserState::default();
        state.set("web", Choice::On);
        state.set("cache", Choice::On);
        let specs = port_specs(&c, &state);
        let wants = relay_wants(&c, &state, &specs);
        let ports: Vec<_> = wants[0].ports.iter().map(|p| p.service.as_str()).collect();
        assert_eq!(
            ports,
            ["cache"],
            "the cloud's api is reached at its own URL"
        );
    }
}
