//! Writing into a user's home as root without following the user's symlinks.
//!
//! `berth setup` runs as root and writes a few files below homes it does not own
//! (`~/.config/containers/storage.conf`, `~/.config/systemd/user/default.target.wants/…`). A
//! path walked by name could be redirected by a symlink the user planted (`~/.config ->
//! /etc`), making root write anywhere. Every step here therefore goes through directory file
//! descriptors opened with `O_NOFOLLOW`, and every directory on the way must belong to the user
//! (or be created for them). What is created is given to the user; the file's content is
//! written to a temporary name, synced and renamed over, like [`crate::fsutil::write_atomic`].
//!
//! Limits: the home directory itself is opened by its path (its parents are root's, such as
//! `/home`); a home owned by someone else than the user is refused.

use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid, CWD};

/// A user's home, opened once; paths given to its methods are relative to it.
#[derive(Debug)]
pub struct Home {
    path: PathBuf,
    fd: OwnedFd,
    uid: u32,
    gid: u32,
}

/// What a home operation found in the way.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}; refusing to write there as root", path.display())]
    Unsafe { path: PathBuf, why: String },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(rustix::io::Errno) -> HomeError + 'a {
    move |e| HomeError::Io {
        path: path.to_path_buf(),
        what,
        source: e.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

impl Home {
    /// Opens `path` (the home directory) for `uid`/`gid`; it must be a directory they own.
    pub fn open(path: &Path, uid: u32, gid: u32) -> Result<Home, HomeError> {
        let fd = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty())
            .map_err(io(path, "cannot open the home directory"))?;
        let st = rustix::fs::fstat(&fd).map_err(io(path, "cannot stat the home directory"))?;
        if st.st_uid != uid {
            return Err(HomeError::Unsafe {
                path: path.to_path_buf(),
                why: format!("owned by uid {}, not the user's uid {uid}", st.st_uid),
            });
        }
        Ok(Home {
            path: path.to_path_buf(),
            fd,
            uid,
            gid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)))
    }

    /// Splits `rel` into its directory components and file name; only plain names allowed.
    fn split<'a>(&self, rel: &'a Path) -> Result<(Vec<&'a OsStr>, &'a OsStr), HomeError> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                _ => {
                    return Err(HomeError::Unsafe {
                        path: self.path.join(rel),
                        why: "not a plain relative path".into(),
                    })
                }
            }
        }
        let name = parts.pop().ok_or_else(|| HomeError::Unsafe {
            path: self.path.join(rel),
            why: "empty path".into(),
        })?;
        Ok((parts, name))
    }

    /// Opens (creating when `create`) the directories of `dirs` one by one, never following a
    /// symlink. `None` when one is missing and `create` is false.
    fn walk(&self, dirs: &[&OsStr], create: bool) -> Result<Option<OwnedFd>, HomeError> {
        let mut cur = rustix::io::dup(&self.fd).map_err(io(&self.path, "cannot dup"))?;
        let mut here = self.path.clone();
        for d in dirs {
            here.push(d);
            let made = if create {
                match rustix::fs::mkdirat(&cur, *d, Mode::from_raw_mode(0o755)) {
                    Ok(()) => true,
                    Err(rustix::io::Errno::EXIST) => false,
                    Err(e) => return Err(io(&here, "cannot create directory")(e)),
                }
            } else {
                false
            };
            let next = match rustix::fs::openat(&cur, *d, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(HomeError::Unsafe {
                        path: here,
                        why: "is a symlink or not a directory".into(),
                    })
                }
                Err(e) => return Err(io(&here, "cannot open directory")(e)),
            };
            let st = rustix::fs::fstat(&next).map_err(io(&here, "cannot stat"))?;
            if made {
                let (u, g) = self.owner();
                rustix::fs::fchown(&next, u, g).map_err(io(&here, "cannot chown"))?;
            } else if st.st_uid != self.uid {
                return Err(HomeError::Unsafe {
                    path: here,
                    why: format!("owned by uid {}, not the user", st.st_uid),
                });
            }
            cur = next;
        }
        Ok(Some(cur))
    }

    /// The content of the regular file `rel`, or `None` when it does not exist.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>, HomeError> {
        let path = self.path.join(rel);
        let (dirs, name) = self.split(rel)?;
        let Some(dir) = self.walk(&dirs, false)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(HomeError::Unsafe {
                    path,
                    why: "is a symlink".into(),
                })
            }
            Err(e) => return Err(io(&path, "cannot open")(e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(io(&path, "cannot stat"))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(HomeError::Unsafe {
                path,
                why: "is not a regular file".into(),
            });
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut data)
            .map_err(|source| HomeError::Io {
                path,
                what: "cannot read",
                source,
            })?;
        Ok(Some(data))
    }

    /// The target of the symlink `rel`, `None` when nothing is there; an error when something
    /// other than a symlink is.
    pub fn read_link(&self, rel: &Path) -> Result<Option<PathBuf>, HomeError> {
        let path = self.path.join(rel);
        let (dirs, name) = self.split(rel)?;
        let Some(dir) = self.walk(&dirs, false)? else {
            return Ok(None);
        };
        match rustix::fs::readlinkat(&dir, name, Vec::new()) {
            Ok(t) => Ok(Some(PathBuf::from(OsStr::from_bytes(t.as_bytes())))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::INVAL) => Err(HomeError::Unsafe {
                path,
                why: "exists and is not a symlink".into(),
            }),
            Err(e) => Err(io(&path, "cannot read link")(e)),
        }
    }

    /// Writes `data` to `rel` atomically, owned by the user with `mode`, creating the
    /// directories on the way (owned by the user, 0755).
    pub fn write(&self, rel: &Path, data: &[u8], mode: u32) -> Result<(), HomeError> {
        let path = self.path.join(rel);
        let (dirs, name) = self.split(rel)?;
        let dir = self.walk(&dirs, true)?.ok_or_else(|| HomeError::Unsafe {
            path: path.clone(),
            why: "directory vanished".into(),
        })?;
        let tmp = tmp_name(name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, tmp.as_os_str(), flags, Mode::from_raw_mode(mode))
            .map_err(io(&path, "cannot create temporary file"))?;
        let result = (|| {
            let (u, g) = self.owner();
            rustix::fs::fchown(&fd, u, g).map_err(io(&path, "cannot chown"))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(io(&path, "cannot chmod"))?;
            let mut f = std::fs::File::from(fd);
            f.write_all(data)
                .and_then(|()| f.sync_all())
                .map_err(|source| HomeError::Io {
                    path: path.clone(),
                    what: "cannot write",
                    source,
                })?;
            self.commit(&dir, &tmp, name, &path)
        })();
        if result.is_err() {
            let _cleanup = rustix::fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty());
        }
        result
    }

    /// Makes `rel` a symlink to `target` (replacing a symlink already there), owned by the user.
    pub fn symlink(&self, rel: &Path, target: &Path) -> Result<(), HomeError> {
        let path = self.path.join(rel);
        let (dirs, name) = self.split(rel)?;
        let dir = self.walk(&dirs, true)?.ok_or_else(|| HomeError::Unsafe {
            path: path.clone(),
            why: "directory vanished".into(),
        })?;
        let tmp = tmp_name(name);
        rustix::fs::symlinkat(target, &dir, tmp.as_os_str())
            .map_err(io(&path, "cannot create symlink"))?;
        let result = (|| {
            let (u, g) = self.owner();
            rustix::fs::chownat(&dir, tmp.as_os_str(), u, g, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io(&path, "cannot chown symlink"))?;
            self.commit(&dir, &tmp, name, &path)
        })();
        if result.is_err() {
            let _cleanup = rustix::fs::unlinkat(&dir, tmp.as_os_str(), AtFlags::empty());
        }
        result
    }

    fn commit(
        &self,
        dir: &impl AsFd,
        tmp: &Path,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), HomeError> {
        rustix::fs::renameat(dir, tmp.as_os_str(), dir, name).map_err(io(path, "cannot rename"))?;
        rustix::fs::fsync(dir).map_err(io(path, "cannot sync directory"))
    }
}

fn tmp_name(name: &OsStr) -> PathBuf {
    PathBuf::from(format!(
        ".{}.berth-setup-{}",
        name.to_string_lossy(),
        std::process::id()
    ))
}
