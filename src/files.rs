//! The files edge: every file the engine reads or writes (unit files, the user's state,
//! secrets, env and config files of services, container log tails, the last good catalog)
//! goes through [`Files`].
//!
//! The real implementation, [`DiskFiles`], does each operation on tokio's blocking pool: a
//! write fsyncs twice (file and directory), and the engine's thread also serves the API and,
//! in the single-threaded daemon, forwards every proxied connection — an fsync there would
//! stall them all. Tests use an in-memory implementation (`testkit::MemFiles`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{create_dir, write_atomic};
use crate::units::PREFIX;

/// What the engine needs of a filesystem.
pub trait Files: Send + Sync + 'static {
    /// The whole content of a file; `None` when it does not exist.
    fn read(&self, path: &Path) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    /// At most the last `max` bytes of a file; `None` when it does not exist. Reads from the
    /// end: a container log may be megabytes.
    fn tail(
        &self,
        path: &Path,
        max: u64,
    ) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    /// Replaces a file atomically (temp file, fsync, rename, fsync of the directory) with
    /// exactly `mode`, creating missing parent directories with mode 0700.
    fn write(
        &self,
        path: &Path,
        data: Vec<u8>,
        mode: u32,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Removes a file; a missing one is fine.
    fn remove(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
    /// Creates a directory and its parents; the last one gets `mode`.
    fn create_dir(&self, path: &Path, mode: u32) -> impl Future<Output = io::Result<()>> + Send;
    /// Whether a directory exists.
    fn is_dir(&self, path: &Path) -> impl Future<Output = bool> + Send;
    /// The names of the regular files in a directory (empty when it does not exist).
    fn list(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send;
}

/// The real filesystem, each call on the blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFiles;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("file task did not finish: {e}")))?
}

fn missing_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The last `max` bytes of the file at `path`.
pub fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

impl Files for DiskFiles {
    async fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let p = path.to_path_buf();
        blocking(move || missing_is_none(std::fs::read(&p))).await
    }

    async fn tail(&self, path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
        let p = path.to_path_buf();
        blocking(move || missing_is_none(read_tail(&p, max))).await
    }

    async fn write(&self, path: &Path, data: Vec<u8>, mode: u32) -> io::Result<()> {
        let p = path.to_path_buf();
        blocking(move || {
            if let Some(dir) = p.parent() {
                if !dir.is_dir() {
                    create_dir(dir, 0o700)?;
                }
            }
            write_atomic(&p, &data, mode)
        })
        .await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let p = path.to_path_buf();
        blocking(move || match std::fs::remove_file(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
        .await
    }

    async fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let p = path.to_path_buf();
        blocking(move || create_dir(&p, mode)).await
    }

    async fn is_dir(&self, path: &Path) -> bool {
        let p = path.to_path_buf();
        blocking(move || Ok(p.is_dir())).await.unwrap_or(false)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = dir.to_path_buf();
        blocking(move || {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for e in rd {
                let e = e?;
                if e.file_type()?.is_file() {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

/// Whether `name` is a unit file berth manages (not berth's own unit, nothing with a path).
pub fn is_berth_unit(name: &str) -> bool {
    name.starts_with(PREFIX)
        && name.ends_with(".service")
        && !name.contains('/')
        && name != "berth.service"
}

/// The directory where berth writes its unit files, one the user manager searches.
#[derive(Debug, Clone)]
pub struct UnitDir {
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UnitDirError {
    #[error("{name:?} is not a berth unit name")]
    NotOurs { name: String },
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UnitDir {
    pub fn new(dir: PathBuf) -> Self {
        UnitDir { dir }
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, UnitDirError> {
        if is_berth_unit(name) {
            Ok(self.dir.join(name))
        } else {
            Err(UnitDirError::NotOurs { name: name.into() })
        }
    }

    /// Every `berth-*.service` file: name → content.
    pub async fn list(&self, files: &impl Files) -> Result<BTreeMap<String, String>, UnitDirError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| UnitDirError::Io { what, path, source }
        };
        let mut out = BTreeMap::new();
        for name in files.list(&self.dir).await.map_err(io("read", &self.dir))? {
            if !is_berth_unit(&name) {
                continue;
            }
            let path = self.dir.join(&name);
            // A file removed between the listing and the read is simply not there.
            if let Some(bytes) = files.read(&path).await.map_err(io("read", &path))? {
                out.insert(name, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        Ok(out)
    }

    pub async fn write(
        &self,
        files: &impl Files,
        name: &str,
        content: &str,
    ) -> Result<(), UnitDirError> {
        let path = self.path_of(name)?;
        if !files.is_dir(&self.dir).await {
            files
                .create_dir(&self.dir, 0o755)
                .await
                .map_err(|source| UnitDirError::Io {
                    what: "create",
                    path: self.dir.clone(),
                    source,
                })?;
        }
        files
            .write(&path, content.as_bytes().to_vec(), 0o644)
            .await
            .map_err(|source| UnitDirError::Io {
                what: "write",
                path,
                source,
            })
    }

    pub async fn remove(&self, files: &impl Files, name: &str) -> Result<(), UnitDirError> {
        let path = self.path_of(name)?;
        files
            .remove(&path)
            .await
            .map_err(|source| UnitDirError::Io {
                what: "remove",
                path,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[tokio::test]
    async fn unit_dir_lists_only_berth_units() {
        let d = tempfile::tempdir().expect("tempdir");
        let units = UnitDir::new(d.path().join("systemd/user"));
        let fs = DiskFiles;
        assert!(units.list(&fs).await.expect("empty").is_empty());
        units
            .write(&fs, "berth-demo.service", "x")
            .await
            .expect("write");
        std::fs::write(d.path().join("systemd/user/other.service"), "y").expect("other");
        std::fs::write(d.path().join("systemd/user/berth.service"), "z").expect("own");
        let l = units.list(&fs).await.expect("list");
        assert_eq!(l.keys().collect::<Vec<_>>(), ["berth-demo.service"]);
        assert!(units.write(&fs, "../x.service", "x").await.is_err());
        units
            .remove(&fs, "berth-demo.service")
            .await
            .expect("remove");
        units
            .remove(&fs, "berth-demo.service")
            .await
            .expect("remove twice is fine");
    }

    #[tokio::test]
    async fn tail_reads_only_the_end_and_writes_are_atomic_with_their_mode() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("deep/dir/log");
        let fs = DiskFiles;
        assert_eq!(fs.tail(&p, 4).await.expect("missing"), None);
        fs.write(&p, b"0123456789".to_vec(), 0o600)
            .await
            .expect("write");
        assert_eq!(fs.tail(&p, 4).await.expect("tail"), Some(b"6789".to_vec()));
        assert_eq!(
            fs.tail(&p, 100).await.expect("tail"),
            Some(b"0123456789".to_vec())
        );
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(d.path().join("deep/dir"))
                .expect("dir")
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            fs.list(d.path().join("deep/dir").as_path())
                .await
                .expect("list"),
            ["log"]
        );
    }
}
