//! The directory where berth writes its unit files: the files edge of the reconciler.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::fsutil::{create_dir, write_atomic};
use crate::units::PREFIX;

/// berth's unit files. One real implementation over a directory the user manager searches.
pub trait UnitStore: Send + Sync {
    /// Every `berth-*.service` file: name → content.
    fn list(&self) -> std::io::Result<BTreeMap<String, String>>;
    fn write(&self, name: &str, content: &str) -> std::io::Result<()>;
    fn remove(&self, name: &str) -> std::io::Result<()>;
}

#[derive(Debug, Clone)]
pub struct UnitDir {
    pub dir: PathBuf,
}

impl UnitDir {
    pub fn new(dir: PathBuf) -> Self {
        UnitDir { dir }
    }
}

fn ours(name: &str) -> bool {
    name.starts_with(PREFIX)
        && name.ends_with(".service")
        && !name.contains('/')
        // berth's own unit is not a service berth manages.
        && name != "berth.service"
}

impl UnitStore for UnitDir {
    fn list(&self) -> std::io::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if ours(&name) && e.file_type()?.is_file() {
                out.insert(name, std::fs::read_to_string(e.path())?);
            }
        }
        Ok(out)
    }

    fn write(&self, name: &str, content: &str) -> std::io::Result<()> {
        if !ours(name) {
            return Err(std::io::Error::other(format!(
                "{name:?} is not a berth unit name"
            )));
        }
        create_dir(&self.dir, 0o755)?;
        write_atomic(&self.dir.join(name), content.as_bytes(), 0o644)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        if !ours(name) {
            return Err(std::io::Error::other(format!(
                "{name:?} is not a berth unit name"
            )));
        }
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_berth_units() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = UnitDir::new(d.path().join("systemd/user"));
        assert!(store.list().expect("empty").is_empty());
        store.write("berth-demo.service", "x").expect("write");
        std::fs::write(d.path().join("systemd/user/other.service"), "y").expect("other");
        std::fs::write(d.path().join("systemd/user/berth.service"), "z").expect("own");
        let l = store.list().expect("list");
        assert_eq!(l.keys().collect::<Vec<_>>(), ["berth-demo.service"]);
        assert!(store.write("../x.service", "x").is_err());
        store.remove("berth-demo.service").expect("remove");
        store
            .remove("berth-demo.service")
            .expect("remove twice is fine");
    }
}
