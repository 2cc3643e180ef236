//! The event stream (`GET /v1/events`): a snapshot first, then every change the daemon sees.

use serde::{Deserialize, Serialize};

use crate::{DaemonInfo, ServiceStatus, State};

/// One event. On the wire each is a server-sent event whose `event:` field is the `type` tag
/// and whose `data:` is this JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The whole picture: first on every stream, and again after a client fell behind (it
    /// replaces everything the client knew).
    Snapshot {
        daemon: DaemonInfo,
        services: Vec<ServiceStatus>,
    },
    /// A service's status changed: its state, reason, choice, containers or probe.
    Service {
        status: ServiceStatus,
        /// Its state before; `None` for a service the client had not seen (new in the
        /// catalog).
        from: Option<State>,
        /// Unix seconds.
        at: u64,
    },
    /// A service left the catalog.
    Removed { service: String, at: u64 },
    /// Progress of an image pull the daemon makes.
    Pull {
        image: String,
        /// The services waiting for it.
        services: Vec<String>,
        progress: PullProgress,
    },
    /// A reconcile pass could not do something (also visible in the service's reason).
    PassError {
        service: Option<String>,
        error: String,
        at: u64,
    },
    /// The daemon's own state changed: catalog in force or broken, Podman reachable or not.
    Daemon { daemon: DaemonInfo },
    /// A newer daemon's event this client does not know.
    #[serde(other)]
    Unknown,
}

impl Event {
    /// The SSE `event:` name of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Snapshot { .. } => "snapshot",
            Event::Service { .. } => "service",
            Event::Removed { .. } => "removed",
            Event::Pull { .. } => "pull",
            Event::PassError { .. } => "pass_error",
            Event::Daemon { .. } => "daemon",
            Event::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum PullProgress {
    Started,
    /// One line of Podman's progress (`Copying blob 1/3`, `Writing manifest`…).
    Line {
        text: String,
    },
    Done,
    Failed {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_type_and_unknown_ones_decode() {
        let e = Event::Removed {
            service: "n8n".into(),
            at: 5,
        };
        let json = serde_json::to_string(&e).expect("encode");
        assert_eq!(json, r#"{"type":"removed","service":"n8n","at":5}"#);
        assert_eq!(e.kind(), "removed");
        let future: Event =
            serde_json::from_str(r#"{"type":"quota","used":3}"#).expect("unknown event");
        assert_eq!(future, Event::Unknown);
        let pull = Event::Pull {
            image: "x".into(),
            services: vec!["a".into()],
            progress: PullProgress::Line {
                text: "Copying".into(),
            },
        };
        let back: Event =
            serde_json::from_str(&serde_json::to_string(&pull).expect("encode")).expect("decode");
        assert_eq!(back, pull);
    }
}
