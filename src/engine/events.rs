//! Transitions: each refresh's statuses compared with the last ones, as [`Event`]s. Pure; the
//! engine broadcasts what comes out, and notifications, journald lines, the cloud push and
//! every `/v1/events` client read that one stream.

use std::collections::BTreeMap;

use berth_proto::{Event, ServiceStatus, State};

/// What the last refresh showed, and since when each service is in its state.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    last: BTreeMap<String, ServiceStatus>,
}

/// Whether two statuses differ in anything a user or client would see: not in `since` or
/// in the timing of a probe that keeps its result.
fn differs(a: &ServiceStatus, b: &ServiceStatus) -> bool {
    let probe = |s: &ServiceStatus| s.probe.as_ref().map(|p| (p.ok, p.detail.clone()));
    a.choice != b.choice
        || a.state != b.state
        || a.reason != b.reason
        || a.failure != b.failure
        || a.hint != b.hint
        || a.unit_state != b.unit_state
        || a.containers != b.containers
        || a.restarts != b.restarts
        || a.ports != b.ports
        || a.locked != b.locked
        || a.description != b.description
        || probe(a) != probe(b)
        || a.update != b.update
}

impl Tracker {
    /// The statuses now: fills in `since` (the time of the last state change this daemon saw,
    /// `now` for a new one) and returns the events since the last call. With `complete`, a
    /// service missing from `now_statuses` left the catalog; otherwise only the given services
    /// were looked at.
    pub fn observe(
        &mut self,
        statuses: &mut [ServiceStatus],
        complete: bool,
        now: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for st in statuses.iter_mut() {
            match self.last.get(&st.name) {
                Some(old) => {
                    st.since = if old.state == st.state {
                        old.since
                    } else {
                        Some(now)
                    };
                    if differs(old, st) {
                        events.push(Event::Service {
                            status: st.clone(),
                            from: Some(old.state),
                            at: now,
                        });
                    }
                }
                None => {
                    st.since = Some(now);
                    if !self.last.is_empty() {
                        events.push(Event::Service {
                            status: st.clone(),
                            from: None,
                            at: now,
                        });
                    }
                }
            }
        }
        if complete {
            let names: std::collections::BTreeSet<&str> =
                statuses.iter().map(|s| s.name.as_str()).collect();
            let gone: Vec<String> = self
                .last
                .keys()
                .filter(|n| !names.contains(n.as_str()))
                .cloned()
                .collect();
            for service in gone {
                self.last.remove(&service);
                events.push(Event::Removed { service, at: now });
            }
        }
        for st in statuses.iter() {
            self.last.insert(st.name.clone(), st.clone());
        }
        events
    }

    /// Every status last seen, in name order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.last.values().cloned().collect()
    }

    /// The state a service was last seen in.
    pub fn state_of(&self, service: &str) -> Option<State> {
        self.last.get(service).map(|s| s.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::Choice;

    fn st(name: &str, state: State, reason: Option<&str>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            description: String::new(),
            choice: Choice::On,
            state,
            reason: reason.map(str::to_string),
            failure: None,
            hint: None,
            unit: format!("berth-{name}.service"),
            unit_state: "active/running".into(),
            ports: Vec::new(),
            containers: Vec::new(),
            restarts: 0,
            since: None,
            probe: None,
            locked: false,
            note: None,
            update: None,
        }
    }

    #[test]
    fn first_look_sets_since_and_says_nothing_then_every_change_is_an_event() {
        let mut t = Tracker::default();
        let mut first = vec![
            st("a", State::Starting, None),
            st("b", State::Running, None),
        ];
        assert!(t.observe(&mut first, true, 100).is_empty());
        assert_eq!(first[0].since, Some(100));

        // The same again: no event, since kept.
        let mut same = vec![
            st("a", State::Starting, None),
            st("b", State::Running, None),
        ];
        assert!(t.observe(&mut same, true, 105).is_empty());
        assert_eq!(same[0].since, Some(100));

        // A reason change is an event without a state change; since stays.
        let mut why = vec![
            st("a", State::Starting, Some("pulling")),
            st("b", State::Running, None),
        ];
        let ev = t.observe(&mut why, true, 106);
        assert!(
            matches!(&ev[..], [Event::Service { from: Some(State::Starting), status, at: 106 }] if status.state == State::Starting),
            "{ev:?}"
        );
        assert_eq!(why[0].since, Some(100));

        // A short failure between two looks is its own event, then recovery another.
        let mut failed = vec![
            st("a", State::Failed, Some("boom")),
            st("b", State::Running, None),
        ];
        let ev = t.observe(&mut failed, true, 110);
        assert_eq!(ev.len(), 1);
        assert_eq!(failed[0].since, Some(110));
        let mut back = vec![st("a", State::Running, None), st("b", State::Running, None)];
        let ev = t.observe(&mut back, true, 111);
        assert!(matches!(
            &ev[..],
            [Event::Service {
                from: Some(State::Failed),
                ..
            }]
        ));
    }

    #[test]
    fn a_partial_look_leaves_the_others_and_a_complete_one_reports_removals() {
        let mut t = Tracker::default();
        let mut all = vec![st("a", State::Running, None), st("b", State::Running, None)];
        t.observe(&mut all, true, 1);
        let mut only_a = vec![st("a", State::Running, None)];
        assert!(t.observe(&mut only_a, false, 2).is_empty(), "b not gone");
        let ev = t.observe(&mut only_a, true, 3);
        assert_eq!(
            ev,
            vec![Event::Removed {
                service: "b".into(),
                at: 3
            }]
        );
        let mut new = vec![st("a", State::Running, None), st("c", State::Off, None)];
        let ev = t.observe(&mut new, true, 4);
        assert!(
            matches!(&ev[..], [Event::Service { from: None, .. }]),
            "{ev:?}"
        );
        assert_eq!(t.state_of("c"), Some(State::Off));
    }
}
