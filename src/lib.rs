//! berth: a per-user supervisor that runs services as rootless Podman containers under the
//! user's own systemd manager, reconciling a catalog and the user's choices onto systemd.
//!
//! The library holds all logic; `src/bin/` only parses arguments and calls in here.
//! Edges: [`systemd`] (D-Bus), [`podman`] (REST), [`unitdir`] (unit files). The planner in
//! [`plan`] and the renderer in [`units`] are pure; [`reconcile`] is the one task owning state.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod gate;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod plan;
pub mod podman;
pub mod proxy;
pub mod push;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod unitdir;
pub mod units;
