//! Making and restoring backups (see the module above): the volume copies go through
//! [`VolumeIo`] (Podman's CLI on the real machine), the service's stop and start through the
//! daemon's API, the files through `fsutil`'s atomic writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use berth_client::Client;
use berth_proto::{State, Verb};

use super::{check, dir_name, latest, volumes_of, Entry, Manifest, VolumeFile, FORMAT, MANIFEST};
use crate::catalog::{BackupMode, Service};
use crate::fsutil::{create_dir, write_atomic};

/// The volume operations a backup needs.
#[allow(async_fn_in_trait)]
pub trait VolumeIo {
    /// Where the volume's files are, or None when it does not exist.
    async fn mountpoint(&self, volume: &str) -> Result<Option<PathBuf>>;
    async fn create(&self, volume: &str) -> Result<()>;
    /// Writes the files under `mountpoint` into the tar `file`, owners as containers see them.
    async fn export(&self, mountpoint: &Path, file: &Path) -> Result<()>;
    /// Replaces what is under `mountpoint` with the tar `file`.
    async fn import(&self, mountpoint: &Path, file: &Path) -> Result<()>;
    /// Runs `command` in the running `container`.
    async fn exec(&self, container: &str, command: &[String]) -> Result<()>;
}

/// Podman's CLI: `podman unshare tar` copies with the ownership inside the user namespace
/// (Podman 3.0 to 5.x; `podman volume export` is 4.x only).
#[derive(Debug, Clone)]
pub struct PodmanCli {
    pub podman: PathBuf,
}

impl PodmanCli {
    async fn run(&self, args: &[&std::ffi::OsStr], what: &str) -> Result<String> {
        let out = tokio::process::Command::new(&self.podman)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("{what}: cannot run {}", self.podman.display()))?;
        if !out.status.success() {
            bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

impl VolumeIo for PodmanCli {
    async fn mountpoint(&self, volume: &str) -> Result<Option<PathBuf>> {
        let exists = tokio::process::Command::new(&self.podman)
            .args(["volume", "exists", volume])
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("cannot run {}", self.podman.display()))?;
        if !exists.success() {
            return Ok(None);
        }
        let mp = self
            .run(
                &[
                    os("volume"),
                    os("inspect"),
                    os("--format"),
                    os("{{.Mountpoint}}"),
                    os(volume),
                ],
                &format!("inspect volume {volume}"),
            )
            .await?;
        Ok(Some(PathBuf::from(mp)))
    }

    async fn create(&self, volume: &str) -> Result<()> {
        self.run(
            &[os("volume"), os("create"), os(volume)],
            &format!("create volume {volume}"),
        )
        .await
        .map(|_| ())
    }

    async fn export(&self, mountpoint: &Path, file: &Path) -> Result<()> {
        self.run(
            &[
                os("unshare"),
                os("tar"),
                os("--numeric-owner"),
                os("-C"),
                mountpoint.as_os_str(),
                os("-cpf"),
                file.as_os_str(),
                os("."),
            ],
            &format!("copy {}", mountpoint.display()),
        )
        .await
        .map(|_| ())
    }

    async fn import(&self, mountpoint: &Path, file: &Path) -> Result<()> {
        self.run(
            &[
                os("unshare"),
                os("sh"),
                os("-c"),
                os(r#"find "$1" -mindepth 1 -delete && tar --numeric-owner -C "$1" -xpf "$2""#),
                os("berth-restore"),
                mountpoint.as_os_str(),
                file.as_os_str(),
            ],
            &format!("restore into {}", mountpoint.display()),
        )
        .await
        .map(|_| ())
    }

    async fn exec(&self, container: &str, command: &[String]) -> Result<()> {
        let mut args = vec![os("exec"), os(container)];
        args.extend(command.iter().map(|c| os(c)));
        self.run(&args, &format!("backup command in {container}"))
            .await
            .map(|_| ())
    }
}

/// Where a backup run reads and writes.
#[derive(Debug, Clone)]
pub struct Places {
    pub root: PathBuf,
    /// Whether the root outlives the VM (as far as berth can tell).
    pub lasting: bool,
    /// berth's secrets directory (one `<service>.toml` per service).
    pub secrets_dir: PathBuf,
}

fn running(st: State) -> bool {
    matches!(st, State::Running | State::Starting | State::Unhealthy)
}

/// Waits until the daemon reports the service stopped (at most 90 s).
async fn wait_stopped(c: &Client, name: &str) -> Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let st = c.service(name).await?;
        if matches!(
            st.state,
            State::Stopped | State::Off | State::Idle | State::Failed
        ) {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            bail!("{name} did not stop within 90 s (it is {:?})", st.state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Backs `svc` up under `places.root`; returns the backup's directory.
pub async fn backup(
    c: &Client,
    io: &impl VolumeIo,
    svc: &Service,
    places: &Places,
    now_rfc3339: &str,
) -> Result<PathBuf> {
    let (named, left_out) = volumes_of(svc);
    let secrets_file = places.secrets_dir.join(format!("{}.toml", svc.name));
    let has_secrets = secrets_file.is_file();
    if named.is_empty() && !has_secrets {
        bail!(
            "{} keeps no data berth could back up (no volumes, no secrets)",
            svc.name
        );
    }
    let was_running = running(c.service(&svc.name).await?.state);
    let mut stopped_here = false;
    let consistency = match (&svc.backup, was_running) {
        (_, false) => "stopped",
        (BackupMode::Stop, true) => {
            eprintln!("stopping {} for a consistent copy", svc.name);
            c.act(&svc.name, Verb::Stop).await?;
            stopped_here = true;
            wait_stopped(c, &svc.name).await?;
            "stopped"
        }
        (BackupMode::Live, true) => "live",
        (BackupMode::Command { container, command }, true) => {
            let ctr = svc
                .containers
                .iter()
                .find(|x| x.name == *container)
                .ok_or_else(|| anyhow!("no container {container:?}"))?;
            io.exec(&crate::units::container_name(svc, ctr), command)
                .await?;
            "after-command"
        }
    };
    let made = copy(
        io,
        svc,
        places,
        now_rfc3339,
        &named,
        left_out,
        has_secrets,
        consistency,
    )
    .await;
    if stopped_here {
        eprintln!("starting {} again", svc.name);
        c.act(&svc.name, Verb::Start)
            .await
            .with_context(|| format!("start {} again after the copy", svc.name))?;
    }
    made
}

#[allow(clippy::too_many_arguments)]
async fn copy(
    io: &impl VolumeIo,
    svc: &Service,
    places: &Places,
    now: &str,
    named: &[(String, String)],
    left_out: Vec<String>,
    has_secrets: bool,
    consistency: &str,
) -> Result<PathBuf> {
    create_dir(&places.root, 0o700).with_context(|| format!("create {}", places.root.display()))?;
    let dir = places.root.join(dir_name(&svc.name, now));
    let vol_dir = dir.join("volumes");
    create_dir(&dir, 0o700).with_context(|| format!("create {}", dir.display()))?;
    create_dir(&vol_dir, 0o700).with_context(|| format!("create {}", vol_dir.display()))?;
    let mut volumes = Vec::new();
    for (name, podman) in named {
        let Some(mp) = io.mountpoint(podman).await? else {
            eprintln!(
                "  {name}: volume {podman} does not exist yet (never started?); nothing to copy"
            );
            continue;
        };
        let rel = format!("volumes/{name}.tar");
        let file = dir.join(&rel);
        io.export(&mp, &file).await?;
        let bytes = std::fs::metadata(&file)
            .with_context(|| format!("read {}", file.display()))?
            .len();
        eprintln!("  {name}: {bytes} bytes");
        volumes.push(VolumeFile {
            name: name.clone(),
            podman: podman.clone(),
            file: rel,
            bytes,
        });
    }
    if has_secrets {
        let from = places.secrets_dir.join(format!("{}.toml", svc.name));
        let text = std::fs::read(&from).with_context(|| format!("read {}", from.display()))?;
        write_atomic(&dir.join("secrets.toml"), &text, 0o600).context("write secrets.toml")?;
    }
    let manifest = Manifest {
        format: FORMAT,
        service: svc.name.clone(),
        created: now.to_string(),
        berth_version: env!("CARGO_PKG_VERSION").to_string(),
        entry: Entry {
            origin: svc.origin.file.display().to_string(),
            images: svc.images().map(str::to_string).collect(),
        },
        consistency: consistency.to_string(),
        volumes,
        secrets: has_secrets,
        left_out,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    // Last: a backup without its manifest is unfinished and never restored.
    write_atomic(&dir.join(MANIFEST), &json, 0o600).context("write the manifest")?;
    Ok(dir)
}

/// Reads every backup directory under `root` with its manifest (None where it has none or an
/// unreadable one).
pub fn list(root: &Path) -> Result<Vec<(String, Option<Manifest>)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("read {}", root.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let m = std::fs::read(e.path().join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
        out.push((name, m));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The backup to restore: `from` itself when it is one, else the newest of `svc` under `from`
/// (or the root).
pub fn find(service: &str, from: Option<&Path>, root: &Path) -> Result<(PathBuf, Manifest)> {
    if let Some(f) = from {
        if f.join(MANIFEST).is_file() {
            let b = std::fs::read(f.join(MANIFEST))
                .with_context(|| format!("read {}", f.join(MANIFEST).display()))?;
            let m: Manifest = serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is not a berth backup manifest",
                    f.join(MANIFEST).display()
                )
            })?;
            return Ok((f.to_path_buf(), m));
        }
    }
    let dir = from.unwrap_or(root);
    let entries = list(dir)?;
    let (name, m) = latest(service, &entries)
        .ok_or_else(|| anyhow!("no complete backup of {service} in {}", dir.display()))?;
    let m = m.clone().ok_or_else(|| anyhow!("{name} has no manifest"))?;
    Ok((dir.join(name), m))
}

/// Restores `svc` from the backup in `dir`; starts it after (unless `no_start`, or it was
/// running before: then it runs again).
pub async fn restore(
    c: &Client,
    io: &impl VolumeIo,
    svc: &Service,
    dir: &Path,
    m: &Manifest,
    places: &Places,
    no_start: bool,
) -> Result<()> {
    check(m, &svc.name).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    // Every file is there and whole before anything changes.
    for v in &m.volumes {
        let f = dir.join(&v.file);
        let len = std::fs::metadata(&f)
            .with_context(|| format!("{}: {} is missing", dir.display(), v.file))?
            .len();
        if len != v.bytes {
            bail!(
                "{}: {} has {len} bytes, the manifest says {}: not restoring from a damaged backup",
                dir.display(),
                v.file,
                v.bytes
            );
        }
    }
    let st = c.service(&svc.name).await?;
    let was_running = running(st.state);
    if was_running {
        eprintln!("stopping {} to restore its data", svc.name);
        c.act(&svc.name, Verb::Stop).await?;
        wait_stopped(c, &svc.name).await?;
    }
    if m.secrets {
        let text = std::fs::read(dir.join("secrets.toml"))
            .with_context(|| format!("read {}", dir.join("secrets.toml").display()))?;
        create_dir(&places.secrets_dir, 0o700)?;
        write_atomic(
            &places.secrets_dir.join(format!("{}.toml", svc.name)),
            &text,
            0o600,
        )
        .context("restore the service's secrets")?;
    }
    // Restored into the volumes today's entry names (the same unless one was renamed).
    let (named, _) = volumes_of(svc);
    for v in &m.volumes {
        let podman = named
            .iter()
            .find(|(n, _)| *n == v.name)
            .map_or_else(|| v.podman.clone(), |(_, p)| p.clone());
        let mp = match io.mountpoint(&podman).await? {
            Some(mp) => mp,
            None => {
                io.create(&podman).await?;
                io.mountpoint(&podman)
                    .await?
                    .ok_or_else(|| anyhow!("volume {podman} was created but is not there"))?
            }
        };
        io.import(&mp, &dir.join(&v.file)).await?;
        eprintln!("  {}: restored {} bytes", v.name, v.bytes);
    }
    if was_running {
        c.act(&svc.name, Verb::Start).await?;
    } else if !no_start {
        c.act(&svc.name, Verb::Enable).await?;
    }
    Ok(())
}
