//! The stable localhost ports: listeners berth owns, forwarding with splice(2) to the port
//! Podman published for a container, starting on-demand services at their first connection.

pub mod forward;
pub mod netns;
pub mod owner;
pub mod ports;
pub mod relays;
mod splice;
