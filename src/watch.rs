//! The watcher of the admin's and the user's files: the catalog layers and the policy, and
//! `config.toml`. An IO edge with a narrow output: it only rings a [`Notify`] ("the layers may
//! have changed", "config.toml may have changed"); what changed, whether it validates and what
//! to restart is the engine's business (it compares the files' stamps, debounces, validates).
//! The engine's tests ring the same bell by hand.
//!
//! Two ways to notice, both always on:
//! - inotify (the `notify` crate) on every directory that exists: a local write is seen at
//!   once;
//! - polling every `poll` interval: a stat of each watched file. This is what sees changes on
//!   network filesystems, where inotify reports only what this machine did (CephFS, NFS: an
//!   admin writing into `/shared/berth/catalog.d` from another machine sends no event here),
//!   and directories that appear after the start. A poll is one `read_dir` and a `stat` per
//!   file: cheap enough to run everywhere rather than guess which mounts need it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// What to watch and whom to tell.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Directories whose `*.toml` files are catalog layers (`/etc/berth/catalog.d`,
    /// `~/.config/berth/catalog.d`).
    pub layer_dirs: Vec<PathBuf>,
    /// Single files that count as layers (`/etc/berth/policy.toml`).
    pub layer_files: Vec<PathBuf>,
    /// `/etc/berth/config.toml`.
    pub config: Option<PathBuf>,
    pub poll: Duration,
    /// Use inotify besides polling (config.toml `[reload] inotify`).
    pub inotify: bool,
}

type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stat(p: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(p)
        .and_then(|m| Ok((m.modified()?, m.len())))
        .ok()
}

/// The stamp of the layers (blocking): every `*.toml` of the directories, and the files.
fn layer_stamp(w: &Watch) -> Stamp {
    let mut out = Vec::new();
    for d in &w.layer_dirs {
        if let Ok(files) = crate::catalog::toml_files(d) {
            out.extend(files.into_iter().map(|f| {
                let s = stat(&f);
                (f, s)
            }));
        }
    }
    out.extend(w.layer_files.iter().map(|f| (f.clone(), stat(f))));
    out
}

/// Which bell an event rings: config.toml's, the layers', or none (reads, other files).
fn classify(w: &Watch, e: &::notify::Event) -> (bool, bool) {
    use ::notify::event::{AccessKind, AccessMode, EventKind};
    if matches!(e.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
        return (false, false);
    }
    let mut layers = false;
    let mut config = false;
    for p in &e.paths {
        if w.config.as_deref() == Some(p.as_path()) {
            config = true;
        } else if w.layer_files.iter().any(|f| f == p)
            || w.layer_dirs
                .iter()
                .any(|d| p.parent() == Some(d.as_path()) || p == d)
        {
            layers = true;
        }
    }
    (layers, config)
}

/// Watches until dropped (the task is aborted with the daemon's other tasks).
pub async fn run(w: Watch, layers: Arc<Notify>, config: Arc<Notify>) {
    let w = Arc::new(w);
    let handler = {
        let (w, layers, config) = (w.clone(), layers.clone(), config.clone());
        move |res: ::notify::Result<::notify::Event>| match res {
            Ok(e) => {
                let (l, c) = classify(&w, &e);
                if l {
                    layers.notify_one();
                }
                if c {
                    config.notify_one();
                }
            }
            Err(err) => debug!(%err, "file watch error"),
        }
    };
    let mut watcher = if w.inotify {
        match ::notify::recommended_watcher(handler) {
            Ok(x) => Some(x),
            Err(err) => {
                warn!(%err, "cannot watch files with inotify ({err}); polling only");
                None
            }
        }
    } else {
        None
    };
    // Directories watched so far: a directory made later is added at the next poll.
    let mut watched: Vec<PathBuf> = Vec::new();
    let dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = w.layer_dirs.clone();
        for f in w.layer_files.iter().chain(&w.config) {
            if let Some(p) = f.parent() {
                d.push(p.to_path_buf());
            }
        }
        d.sort();
        d.dedup();
        d
    };
    let config_stamp = |w: &Watch| w.config.as_deref().and_then(stat);
    let (mut last_layers, mut last_config) = {
        let w = w.clone();
        tokio::task::spawn_blocking(move || (layer_stamp(&w), config_stamp(&w)))
            .await
            .unwrap_or_default()
    };
    let mut tick = tokio::time::interval(w.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(poll = ?w.poll, inotify = watcher.is_some(), "watching the catalog layers, the policy and config.toml");
    loop {
        if let Some(watcher) = watcher.as_mut() {
            use ::notify::Watcher as _;
            for d in &dirs {
                if !watched.contains(d) && d.is_dir() {
                    match watcher.watch(d, ::notify::RecursiveMode::NonRecursive) {
                        Ok(()) => watched.push(d.clone()),
                        Err(err) => debug!(dir = %d.display(), %err, "cannot watch"),
                    }
                }
            }
        }
        tick.tick().await;
        let w2 = w.clone();
        let Ok((now_layers, now_config)) =
            tokio::task::spawn_blocking(move || (layer_stamp(&w2), config_stamp(&w2))).await
        else {
            continue;
        };
        // A file written within a tick of the kernel's coarse clock after the last poll
        // keeps its stamp: while a file is that fresh, the engine (which compares content)
        // is asked to look again.
        let fresh = now_layers
            .iter()
            .any(|(_, s)| s.is_some_and(|(t, _)| t.elapsed().is_ok_and(|age| age < 2 * w.poll)));
        if now_layers != last_layers || fresh {
            debug!("a poll found the layers changed");
            last_layers = now_layers;
            layers.notify_one();
        }
        if now_config != last_config {
            last_config = now_config;
            config.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(dir: &Path) -> Watch {
        Watch {
            layer_dirs: vec![dir.join("catalog.d")],
            layer_files: vec![dir.join("policy.toml")],
            config: Some(dir.join("config.toml")),
            poll: Duration::from_millis(50),
            inotify: true,
        }
    }

    async fn rung(n: &Notify) -> bool {
        tokio::time::timeout(Duration::from_secs(3), n.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_new_layer_file_and_a_config_change_ring_their_bells() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("catalog.d")).expect("mkdir");
        let (layers, config) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = tokio::spawn(run(watch(dir.path()), layers.clone(), config.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(dir.path().join("catalog.d/a.toml"), "x").expect("write");
        assert!(rung(&layers).await, "a new file rings the layers' bell");
        std::fs::write(dir.path().join("config.toml"), "[web]\n").expect("write");
        assert!(rung(&config).await, "config.toml rings its own bell");
        std::fs::write(dir.path().join("policy.toml"), "x = 1\n").expect("write");
        assert!(rung(&layers).await, "the policy is a layer");
        task.abort();
    }

    #[tokio::test]
    async fn a_directory_made_later_is_seen_by_polling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (layers, config) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = tokio::spawn(run(watch(dir.path()), layers.clone(), config.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::create_dir(dir.path().join("catalog.d")).expect("mkdir");
        std::fs::write(dir.path().join("catalog.d/b.toml"), "x").expect("write");
        assert!(rung(&layers).await);
        task.abort();
    }

    #[tokio::test]
    async fn polling_alone_sees_a_rewrite_of_the_same_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("catalog.d")).expect("mkdir");
        std::fs::write(dir.path().join("catalog.d/a.toml"), "one").expect("write");
        let (layers, config) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let mut w = watch(dir.path());
        w.inotify = false;
        let task = tokio::spawn(run(w, layers.clone(), config.clone()));
        // Once the file is no longer fresh (two polls old), polls are quiet.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _stored_permit =
            tokio::time::timeout(Duration::from_millis(10), layers.notified()).await;
        let quiet = tokio::time::timeout(Duration::from_millis(200), layers.notified()).await;
        assert!(quiet.is_err(), "no change, no bell");
        std::fs::write(dir.path().join("catalog.d/a.toml"), "two").expect("write");
        assert!(rung(&layers).await, "a poll sees the rewrite");
        task.abort();
    }

    #[test]
    fn reads_ring_nothing() {
        use ::notify::event::{AccessKind, AccessMode, EventKind};
        let w = watch(Path::new("/etc/berth"));
        let open = ::notify::Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any)))
            .add_path(PathBuf::from("/etc/berth/catalog.d/a.toml"));
        assert_eq!(classify(&w, &open), (false, false));
        let write = ::notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Write)))
            .add_path(PathBuf::from("/etc/berth/catalog.d/a.toml"));
        assert_eq!(classify(&w, &write), (true, false));
        let other = ::notify::Event::new(EventKind::Any).add_path(PathBuf::from("/etc/berth/x"));
        assert_eq!(classify(&w, &other), (false, false));
    }
}
