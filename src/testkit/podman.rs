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
    /// Image ids by reference (a tag moved by [`MemPodman::tag`]); an image without one has
    /// the id `id-<reference>`.
    ids: BTreeMap<String, String>,
    /// Health of every container that runs an image id (over the health by container name).
    image_health: BTreeMap<String, String>,
    /// The image id each container start resolved to: (container, start) → id.
    resolved: BTreeMap<(String, u64), String>,
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

    /// Points `image` at the image `id` (a re-tag, or a pull that brought a new image).
    pub fn tag(&self, image: &str, id: &str) {
        let mut p = lock(&self.state);
        p.images.insert(image.to_string());
        p.images.insert(id.to_string());
        p.ids.insert(image.into(), id.into());
    }

    fn id_of(p: &Pod, image: &str) -> String {
        p.ids.get(image).cloned().unwrap_or_else(|| {
            if image.starts_with("id-") {
                image.to_string()
            } else {
                format!("id-{image}")
            }
        })
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

    /// Every container running the image `id` reports `health` (a new image that never
    /// passes its health check).
    pub fn set_image_health(&self, id: &str, health: &str) {
        lock(&self.state)
            .image_health
            .insert(id.into(), health.into());
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

    async fn image_id(&self, image: &str) -> Result<Option<String>, PodmanError> {
        self.check("image inspect")?;
        let p = lock(&self.state);
        Ok(p.images.contains(image).then(|| Self::id_of(&p, image)))
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
        if self.systemd.active(&unit) != "active" {
            lock(&self.state).inspects += 1;
            return Ok(None);
        }
        // The image a start ran: the reference in the unit, resolved once per start (a tag
        // moved later does not change a running container).
        let content = self.systemd.loaded(&unit).unwrap_or_default();
        let (health, image, image_id) = {
            let mut p = lock(&self.state);
            p.inspects += 1;
            let image = content
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .find(|w| p.images.contains(*w))
                .unwrap_or_default()
                .to_string();
            let id = Self::id_of(&p, &image);
            let image_id = p
                .resolved
                .entry((name.to_string(), starts))
                .or_insert(id)
                .clone();
            let health = p
                .image_health
                .get(&image_id)
                .or_else(|| p.health.get(name))
                .cloned();
            (health, image, image_id)
        };
        Ok(Some(ContainerInspect {
            id: format!("{name}-{starts}"),
            name: name.to_string(),
            image,
            image_id,
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
