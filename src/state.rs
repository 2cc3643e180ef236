//! The user's choices (`~/.local/state/berth/state.toml`) and generated secrets.
//!
//! Both are written atomically. A state file that cannot be parsed is an error, never
//! silently replaced: the caller stops, the running services keep running, the file is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::Files;

pub use berth_proto::Choice;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceChoice {
    pub choice: Option<Choice>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserState {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceChoice>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{col}: {message} (the file is kept as it is; fix or remove it)", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UserState {
    /// Parses a state file's text; a broken one is an error naming its line, never replaced.
    pub fn parse(path: &Path, text: &str) -> Result<Self, StateError> {
        toml::from_str(text).map_err(|e| {
            let src = crate::catalog::Source::new(path, text);
            let (line, col) = e.span().map_or((0, 0), |s| src.line_col(s.start));
            StateError::Parse {
                path: path.into(),
                line,
                col,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// The state file at `path`; an empty state when there is none.
    pub async fn load(files: &impl Files, path: &Path) -> Result<Self, StateError> {
        match files.read(path).await {
            Ok(None) => Ok(Self::default()),
            Ok(Some(bytes)) => Self::parse(path, &String::from_utf8_lossy(&bytes)),
            Err(source) => Err(StateError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// The file's text as berth writes it.
    pub fn to_text(&self) -> String {
        let mut text = String::from(
            "# berth: the services you chose. Written by berth; `berth enable/disable` change it.\n",
        );
        // A map of plain strings and enums always serializes.
        text.push_str(&toml::to_string(self).unwrap_or_default());
        text
    }

    /// Writes the state atomically, 0600.
    pub async fn save(&self, files: &impl Files, path: &Path) -> Result<(), StateError> {
        files
            .write(path, self.to_text().into_bytes(), 0o600)
            .await
            .map_err(|source| StateError::Write {
                path: path.into(),
                source,
            })
    }

    /// The user's choice, else the policy default, else off.
    pub fn choice(&self, service: &str, default_enabled: &[String]) -> Choice {
        match self.services.get(service).and_then(|c| c.choice) {
            Some(c) => c,
            None if default_enabled.iter().any(|d| d == service) => Choice::On,
            None => Choice::Off,
        }
    }

    pub fn set(&mut self, service: &str, choice: Choice) {
        self.services.entry(service.to_string()).or_default().choice = Some(choice);
    }
}

/// Secrets generated for services, one 0600 file per service in a 0700 directory.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    pub fn new(dir: PathBuf) -> Self {
        SecretStore { dir }
    }

    fn file(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.toml"))
    }

    /// The named secrets of a service, generating (and storing) any that do not exist yet.
    pub async fn ensure(
        &self,
        files: &impl Files,
        service: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StateError> {
        let path = self.file(service);
        let mut map: BTreeMap<String, String> = match files.read(&path).await {
            Ok(Some(bytes)) => {
                toml::from_str(&String::from_utf8_lossy(&bytes)).map_err(|e| StateError::Parse {
                    path: path.clone(),
                    line: 0,
                    col: 0,
                    message: e.message().trim().to_string(),
                })?
            }
            Ok(None) => BTreeMap::new(),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let missing: Vec<&String> = names.iter().filter(|n| !map.contains_key(*n)).collect();
        if !missing.is_empty() {
            for n in missing {
                map.insert(
                    n.clone(),
                    crate::secret::random_hex().map_err(|source| StateError::Read {
                        path: "/dev/urandom".into(),
                        source,
                    })?,
                );
            }
            let werr = |source| StateError::Write {
                path: path.clone(),
                source,
            };
            files.create_dir(&self.dir, 0o700).await.map_err(werr)?;
            let text = toml::to_string(&map).map_err(|e| werr(std::io::Error::other(e)))?;
            files
                .write(&path, text.into_bytes(), 0o600)
                .await
                .map_err(werr)?;
        }
        Ok(map)
    }
}

/// Replaces every `${secret.NAME}` in `text`.
pub fn substitute(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in secrets {
        out = out.replace(&format!("${{secret.{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::DiskFiles;
    use std::os::unix::fs::MetadataExt as _;

    #[tokio::test]
    async fn state_round_trip_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("berth/state.toml");
        let fs = DiskFiles;
        let mut s = UserState::load(&fs, &p)
            .await
            .expect("missing file is empty state");
        assert_eq!(s.choice("demo", &["demo".into()]), Choice::On);
        assert_eq!(s.choice("n8n", &[]), Choice::Off);
        s.set("demo", Choice::Off);
        s.set("n8n", Choice::Stopped);
        s.save(&fs, &p).await.expect("save");
        let back = UserState::load(&fs, &p).await.expect("load");
        assert_eq!(back, s);
        assert_eq!(back.choice("demo", &["demo".into()]), Choice::Off);
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn broken_state_names_line_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.toml");
        std::fs::write(&p, "[services.demo]\nchoice = \"maybe\"\n").expect("write");
        let e = UserState::load(&DiskFiles, &p).await.expect_err("broken");
        let msg = e.to_string();
        assert!(msg.contains("state.toml:2:"), "{msg}");
        assert!(std::fs::read_to_string(&p)
            .expect("still there")
            .contains("maybe"));
    }

    #[tokio::test]
    async fn secrets_are_generated_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::new(dir.path().join("secrets"));
        let fs = DiskFiles;
        let a = store
            .ensure(&fs, "svc", &["pw".into()])
            .await
            .expect("ensure");
        let b = store
            .ensure(&fs, "svc", &["pw".into(), "salt".into()])
            .await
            .expect("ensure again");
        assert_eq!(a["pw"], b["pw"], "existing secrets are kept");
        assert_eq!(b["salt"].len(), 64);
        assert_ne!(b["pw"], b["salt"]);
        let meta = std::fs::metadata(dir.path().join("secrets/svc.toml")).expect("meta");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            substitute("u:${secret.pw}@h", &b),
            format!("u:{}@h", b["pw"])
        );
    }
}
