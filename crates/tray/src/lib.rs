//! berth's tray icon: a StatusNotifierItem whose icon shows the overall health of the user's
//! services and whose menu lists every service with its state, reason and quick actions. A
//! client of berth's API only (never of systemd or Podman), live from the event stream.
//!
//! `model` is the pure part (what to show for what the tray knows), `icon` draws the icon,
//! `app` is the edge: D-Bus through ksni, the API through berth-client, `xdg-open`.

pub mod app;
pub mod icon;
pub mod model;
