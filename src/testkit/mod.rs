//! In-memory edges for tests: a systemd user manager, a Podman, a filesystem and a clock that
//! live in memory and behave like the real ones where the engine looks. They make the engine's
//! unit tests run in milliseconds without systemd; the real edges are proven by the
//! integration tests in `tests/`.
//!
//! Each is cheap to clone; clones share one state, so a test keeps a clone to look inside and
//! to change the world behind the engine's back (a crash, a stopped Podman, a full disk).

mod clock;
mod files;
mod podman;
mod systemd;

pub use clock::ManualClock;
pub use files::MemFiles;
pub use podman::MemPodman;
pub use systemd::{Call, MemSystemd};

/// A lock that survives a panicking holder (tests assert while holding state).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
