use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::{lock, MemSystemd};
use crate::podman::{ContainerInspect, ContainerStats, ContainerSummary, Podman, PodmanError};

#[derive(Debug, Default)]
struct Pod {
    images: BTreeSet<String>,
    /// Pulls of these images fail with the message.
    failing: BTreeMap<String, String>,
    pulls: Vec<String>,
    /// While set, pulls wait for it before they finish.
    gate: Option<Arc<Notify>>,
    down: bool,
    health: BTreeMap<String, String>,
    inspects: u64,
}

/// A Podman in memory. Containers are what berth's units run: a container `berth-x` exists
/// and runs while the unit `berth-x.service` of the linked [`MemSystemd`] is active (the unit
/// removes it when it stops).
#[derive(Debug, Clone)]
pub struct MemPodman {
    state: Arc<Mutex<Pod>>,
    systemd: MemSystemd,
}

fn unreachable_api(what: &str) -> PodmanError {
    PodmanError::Transport {
        what: what.to_string(),
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )),
    }
}

impl MemPodman {
    pub fn new(systemd: &MemSystemd) -> Self {
        MemPodman {
            state: Arc::new(Mutex::new(Pod::default())),
            systemd: systemd.clone(),
        }
    }

    /// Puts images in local storage (built or preloaded).
    pub fn add_images<'a>(&self, images: impl IntoIterator<Item = &'a str>) {
        lock(&self.state)
            .images
            .extend(images.into_iter().map(str::to_string));
    }

    pub fn has_image(&self, image: &str) -> bool {
        lock(&self.state).images.contains(image)
    }

    /// Makes pulls of `image` fail with `message` (or succeed with `None`).
    pub fn fail_pulls(&self, image: &str, message: Option<&str>) {
        let mut p = lock(&self.state);
        match message {
            Some(m) => {
                p.failing.insert(image.into(), m.into());
            }
            None => {
                p.failing.remove(image);
            }
        }
    }

    /// Every pull asked for, in order.
    pub fn pulls(&self) -> Vec<String> {
        lock(&self.state).pulls.clone()
    }

    /// Holds pulls until the returned notifier is notified.
    pub fn hold_pulls(&self) -> Arc<Notify> {
        let g = Arc::new(Notify::new());
        lock(&self.state).gate = Some(g.clone());
        g
    }

    /// The API stops answering (or answers again).
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    pub fn set_health(&self, container: &str, health: &str) {
        lock(&self.state)
            .health
            .insert(container.into(), health.into());
    }

    /// Inspections answered so far (a steady service must not cost one per refresh).
    pub fn inspects(&self) -> u64 {
        lock(&self.state).inspects
    }

    fn check(&self, what: &str) -> Result<(), PodmanError> {
        if lock(&self.state).down {
            Err(unreachable_api(what))
        } else {
            Ok(())
        }
    }
}

impl Podman for MemPodman {
    async fn ping(&self) -> Result<String, PodmanError> {
        self.check("ping")?;
        Ok("5.4.2".into())
    }

    async fn image_exists(&self, image: &str) -> Result<bool, PodmanError> {
        self.check("image exists")?;
        Ok(self.has_image(image))
    }

    async fn pull(&self, image: &str, progress: mpsc::Sender<String>) -> Result<(), PodmanError> {
        self.check("pull")?;
        let gate = {
            let mut p = lock(&self.state);
            p.pulls.push(image.to_string());
            p.gate.clone()
        };
        let _listener_may_be_gone = progress.send(format!("Trying to pull {image}...")).await;
        if let Some(g) = gate {
            g.notified().await;
        }
        let mut p = lock(&self.state);
        if let Some(message) = p.failing.get(image) {
            return Err(PodmanError::Pull {
                image: image.into(),
                message: message.clone(),
            });
        }
        p.images.insert(image.to_string());
        Ok(())
    }

    async fn list_by_label(
        &self,
        _key: &str,
        _value: Option<&str>,
    ) -> Result<Vec<ContainerSummary>, PodmanError> {
        self.check("list")?;
        Ok(Vec::new())
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspect>, PodmanError> {
        self.check("inspect")?;
        let unit = format!("{name}.service");
        let starts = self.systemd.starts(&unit);
        let health = {
            let mut p = lock(&self.state);
            p.inspects += 1;
            p.health.get(name).cloned()
        };
        if self.systemd.active(&unit) != "active" {
            return Ok(None);
        }
        Ok(Some(ContainerInspect {
            id: format!("{name}-{starts}"),
            name: name.to_string(),
            image: String::new(),
            status: "running".into(),
            running: true,
            started_at: format!("2026-12-01T00:00:{:02}Z", starts % 60),
            exit_code: 0,
            error: String::new(),
            health,
            failing_streak: 0,
            last_health_output: None,
            labels: BTreeMap::new(),
            restart_count: 0,
            ports: BTreeMap::new(),
            pid: 0,
        }))
    }

    async fn logs_tail(&self, _name: &str, _tail: usize) -> Result<Vec<String>, PodmanError> {
        self.check("logs")?;
        Ok(Vec::new())
    }

    async fn logs_follow(
        &self,
        _name: &str,
        _tail: usize,
        _out: mpsc::Sender<String>,
    ) -> Result<(), PodmanError> {
        self.check("logs")?;
        Ok(())
    }

    async fn volume_exists(&self, _name: &str) -> Result<bool, PodmanError> {
        self.check("volume exists")?;
        Ok(false)
    }

    /// A pod `berth-x` exists while its unit `berth-x.service` is active.
    async fn pod_infra(&self, pod: &str) -> Result<Option<String>, PodmanError> {
        self.check("inspect pod")?;
        Ok((self.systemd.active(&format!("{pod}.service")) == "active")
            .then(|| format!("{pod}-infra")))
    }

    async fn stats(&self, names: &[String]) -> Result<Vec<ContainerStats>, PodmanError> {
        self.check("stats")?;
        Ok(names
            .iter()
            .filter(|n| self.systemd.active(&format!("{n}.service")) == "active")
            .map(|n| ContainerStats {
                name: n.clone(),
                cpu_percent: 1.5,
                mem_bytes: 20 << 20,
                mem_limit_bytes: 4 << 30,
            })
            .collect())
    }
}
