//! State changes as log lines: one entry per transition, read from the engine's event stream.
//! Under systemd they go to journald natively, with the fields `BERTH_SERVICE`, `BERTH_UNIT`,
//! `BERTH_STATE`, `BERTH_FROM` and `BERTH_REASON` for Loki/Promtail to label; the message
//! itself says the same in words, reason included, for whoever reads `journalctl` plainly.

use berth_proto::{Event, State};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// The message of a transition's entry: `demo: starting → failed (cannot pull …)`.
pub fn message(service: &str, from: Option<State>, to: State, reason: Option<&str>) -> String {
    let from = from.map_or_else(|| "new".to_string(), |f| f.as_str().to_string());
    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    format!("{service}: {from} → {}{why}", to.as_str())
}

/// Logs every transition until the stream ends.
pub async fn run(mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(Event::Service { status, from, .. }) if from != Some(status.state) => {
                let reason = status.reason.as_deref();
                info!(
                    service = %status.name,
                    unit = %status.unit,
                    state = status.state.as_str(),
                    from = from.map_or("new", State::as_str),
                    reason = reason.unwrap_or(""),
                    "{}",
                    message(&status.name, from, status.state, reason)
                );
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "{n} state changes went unlogged (the log fell behind)"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_the_transition_and_its_reason() {
        assert_eq!(
            message(
                "demo",
                Some(State::Starting),
                State::Failed,
                Some("cannot pull x: no route")
            ),
            "demo: starting → failed (cannot pull x: no route)"
        );
        assert_eq!(message("n8n", None, State::Off, None), "n8n: new → off");
    }
}
