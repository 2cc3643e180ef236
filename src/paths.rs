//! Where berth keeps things, following the XDG base directories.
//!
//! Generated service files (env files, mounted config files) live under
//! `$HOME/.local/share/berth/services/`, not `$XDG_DATA_HOME`, because unit files refer to them
//! through systemd's `%h` specifier, which knows only the home directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
    /// `$XDG_STATE_HOME/berth`: the user's choices and generated secrets.
    pub state_dir: PathBuf,
    /// Where berth writes its units: `$XDG_DATA_HOME/systemd/user`, a directory the user
    /// manager searches.
    pub unit_dir: PathBuf,
    /// `$XDG_RUNTIME_DIR/berth`: the API socket.
    pub runtime_dir: PathBuf,
    /// Admin configuration, `/etc/berth` (`BERTH_ETC_DIR` overrides, for tests).
    pub etc_dir: PathBuf,
    /// `$XDG_CONFIG_HOME/berth`: the user's own catalog layer (`catalog.d/`), where policy
    /// allows it.
    pub config_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error(
        "{0} is not set; berth runs inside a user session (is this a login shell of the user?)"
    )]
    Missing(&'static str),
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_CONFIG_HOME/berth` (or `~/.config/berth`) alone, for commands without a session.
pub fn user_config_dir() -> Option<PathBuf> {
    env_path("XDG_CONFIG_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".config")))
        .map(|c| c.join("berth"))
}

/// The user's state file alone (`$XDG_STATE_HOME/berth/state.toml`).
pub fn state_file() -> Option<PathBuf> {
    env_path("XDG_STATE_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".local/state")))
        .map(|s| s.join("berth/state.toml"))
}

impl Paths {
    pub fn from_env() -> Result<Self, PathsError> {
        let home = env_path("HOME").ok_or(PathsError::Missing("HOME"))?;
        let runtime = env_path("XDG_RUNTIME_DIR").ok_or(PathsError::Missing("XDG_RUNTIME_DIR"))?;
        let state = env_path("XDG_STATE_HOME").unwrap_or_else(|| home.join(".local/state"));
        let data = env_path("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
        let config = env_path("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        Ok(Paths {
            config_dir: config.join("berth"),
            state_dir: state.join("berth"),
            unit_dir: data.join("systemd/user"),
            runtime_dir: runtime.join("berth"),
            etc_dir: env_path("BERTH_ETC_DIR").unwrap_or_else(|| PathBuf::from("/etc/berth")),
            home,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.toml")
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.state_dir.join("secrets")
    }

    pub fn socket(&self) -> PathBuf {
        env_path("BERTH_SOCKET").unwrap_or_else(|| self.runtime_dir.join("api.sock"))
    }

    /// A home-relative path as rendered into units with `%h`.
    pub fn in_home(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }

    pub fn etc(&self) -> &Path {
        &self.etc_dir
    }

    /// The user's own catalog files live in `catalog.d/` below it.
    pub fn user_catalog(&self) -> &Path {
        &self.config_dir
    }
}
