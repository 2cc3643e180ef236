//! berth: a per-user supervisor that runs services as rootless Podman containers under the
//! user's own systemd manager, reconciling a catalog and the user's choices onto systemd.
//!
//! The library holds all logic; `src/bin/` only parses arguments and calls in here.
//! Edges, each one narrow trait: [`systemd`] (D-Bus), [`podman`] (REST), [`files`] (unit files,
//! state, secrets, logs), [`clock`]. The planner in [`plan`] and the renderer in [`units`] are
//! pure; [`engine`] is the one task owning state. Wire types are in the `berth-proto` crate,
//! the API's client in `berth-client`.

pub mod api;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod files;
pub mod fsutil;
pub mod gate;
pub mod gpu;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod plan;
pub mod podman;
pub mod proxy;
pub mod push;
pub mod remote;
pub mod secret;
pub mod setup;
pub mod state;
pub mod sys;
pub mod systemd;
pub mod units;
pub mod watch;
pub mod web;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
