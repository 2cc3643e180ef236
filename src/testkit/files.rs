use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::lock;
use crate::files::Files;

#[derive(Debug, Default)]
struct Fs {
    files: BTreeMap<PathBuf, (Vec<u8>, u32)>,
    dirs: BTreeMap<PathBuf, u32>,
    /// Writes fail with this error kind while set (a full disk, a read-only home).
    fail_writes: Option<io::ErrorKind>,
    writes: u64,
}

/// A filesystem in memory. Writes are atomic by construction; directories exist once a file
/// is written below them or they are created.
#[derive(Debug, Clone, Default)]
pub struct MemFiles(Arc<Mutex<Fs>>);

impl MemFiles {
    pub fn new() -> Self {
        MemFiles::default()
    }

    /// Puts a file in place without counting it as a write (the world before the test).
    pub fn put(&self, path: impl Into<PathBuf>, data: impl Into<Vec<u8>>) {
        lock(&self.0)
            .files
            .insert(path.into(), (data.into(), 0o644));
    }

    pub fn get(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        lock(&self.0)
            .files
            .get(path.as_ref())
            .map(|(d, _)| d.clone())
    }

    pub fn text(&self, path: impl AsRef<Path>) -> Option<String> {
        self.get(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn mode(&self, path: impl AsRef<Path>) -> Option<u32> {
        lock(&self.0).files.get(path.as_ref()).map(|(_, m)| *m)
    }

    /// Every file below `dir`, by path.
    pub fn below(&self, dir: impl AsRef<Path>) -> Vec<PathBuf> {
        lock(&self.0)
            .files
            .keys()
            .filter(|p| p.starts_with(dir.as_ref()))
            .cloned()
            .collect()
    }

    /// Writes counted so far (the engine's no-op passes must not add any).
    pub fn writes(&self) -> u64 {
        lock(&self.0).writes
    }

    /// Makes every write fail with `kind` (or succeed again with `None`).
    pub fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        lock(&self.0).fail_writes = kind;
    }
}

impl Files for MemFiles {
    async fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.get(path))
    }

    async fn tail(&self, path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.get(path).map(|d| {
            let start = d
                .len()
                .saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
            d[start..].to_vec()
        }))
    }

    async fn write(&self, path: &Path, data: Vec<u8>, mode: u32) -> io::Result<()> {
        let mut fs = lock(&self.0);
        if let Some(kind) = fs.fail_writes {
            return Err(io::Error::new(kind, "writes fail in this test"));
        }
        fs.writes += 1;
        if let Some(dir) = path.parent() {
            fs.dirs.entry(dir.to_path_buf()).or_insert(0o700);
        }
        fs.files.insert(path.to_path_buf(), (data, mode));
        Ok(())
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = lock(&self.0);
        if fs.files.remove(path).is_some() {
            fs.writes += 1;
        }
        Ok(())
    }

    async fn create_dir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut fs = lock(&self.0);
        if let Some(kind) = fs.fail_writes {
            return Err(io::Error::new(kind, "writes fail in this test"));
        }
        fs.dirs.insert(path.to_path_buf(), mode);
        Ok(())
    }

    async fn is_dir(&self, path: &Path) -> bool {
        let fs = lock(&self.0);
        fs.dirs.contains_key(path) || fs.files.keys().any(|f| f.starts_with(path) && f != path)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(lock(&self.0)
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
}
