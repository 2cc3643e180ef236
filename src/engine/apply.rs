//! One pass: gather, plan, apply. An action that fails marks its service with the reason and
//! skips the rest of that service only; a failed daemon-reload stops the pass (nothing after
//! it means anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use berth_proto::{Event, PassReport, Plan, Verb};
use tracing::{info, warn, Instrument as _};

use super::{desired, Engine, EngineError, JOB_WAIT};
use crate::catalog::SECRET_PREFIX;
use crate::clock::Clock;
use crate::files::{Files, UnitDirError};
use crate::plan::{self, Action};
use crate::podman::Podman;
use crate::state::{substitute, Choice, StateError};
use crate::systemd::{JobOutcome, Systemd, SystemdError};
use crate::units;

/// Why one action failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Units(#[from] UnitDirError),
    #[error("cannot write {}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the secrets")]
    Secrets(#[source] StateError),
    #[error("{unit} did not start: job {result}{detail}; see `berth logs {service}`")]
    Job {
        service: String,
        unit: String,
        result: String,
        detail: String,
    },
}

impl<S, P, F, C> Engine<S, P, F, C>
where
    S: Systemd + 'static,
    P: Podman + Clone + 'static,
    F: Files,
    C: Clock,
{
    fn loaded(&self) -> bool {
        !self.catalog.hold
    }

    fn not_loaded(&self) -> EngineError {
        EngineError::Catalog(format!(
            "berth applies nothing until the catalog is fixed: {}",
            self.catalog.error.clone().unwrap_or_default()
        ))
    }

    /// Tells the proxy which stable ports to serve.
    pub(super) fn publish_specs(&self) {
        let specs = desired::port_specs(&self.catalog.current, &self.state);
        let relays = desired::relay_wants(&self.catalog.current, &self.state, &specs);
        self.out.relays.send_if_modified(|old| {
            if *old == relays {
                false
            } else {
                *old = relays;
                true
            }
        });
        self.out.specs.send_if_modified(|old| {
            if *old == specs {
                false
            } else {
                *old = specs;
                true
            }
        });
    }

    /// Computes the plan without applying it.
    pub(super) async fn plan(&mut self) -> Result<Plan, EngineError> {
        if !self.loaded() {
            return Err(self.not_loaded());
        }
        let want = desired::desired(
            &self.catalog.current,
            &self.state,
            &self.intent,
            &self.ctx,
            &self.rollouts.holds(&self.catalog.current),
        );
        let actual = self
            .actual(&want)
            .await
            .map_err(|e| EngineError::Gather(super::full_message(&e)))?;
        Ok(plan::plan(&want, &actual))
    }

    /// One pass: gather, plan, apply.
    pub(super) async fn pass(&mut self) -> PassReport {
        let started = std::time::Instant::now();
        let mut report = self.pass_inner().await;
        report.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let now = self.now();
        for (service, errors) in &report.service_errors {
            for error in errors {
                self.emit(Event::PassError {
                    service: Some(service.clone()),
                    error: error.clone(),
                    at: now,
                });
            }
        }
        for error in &report.general_errors {
            self.emit(Event::PassError {
                service: None,
                error: error.clone(),
                at: now,
            });
        }
        report
    }

    async fn pass_inner(&mut self) -> PassReport {
        self.counters.passes += 1;
        if self.first_pass {
            // On-demand services found running (berth restarted under them) stay up until
            // their idle time passes without a connection.
            if let Ok(units) = self.edges.systemd.list_units(&["berth-*"]).await {
                for u in units.iter().filter(|u| u.is_active()) {
                    if let Some(s) = units::service_of_unit(&u.name) {
                        if self.catalog.current.get(s).is_some_and(|svc| svc.on_demand) {
                            self.intent.awake.insert(s.to_string());
                        }
                    }
                }
            }
            self.first_pass = false;
        }
        self.publish_specs();
        let mut report = PassReport::default();
        if !self.loaded() {
            report.general_error(format!(
                "not applying anything: {}",
                self.catalog.error.clone().unwrap_or_default()
            ));
            return report;
        }
        let want = desired::desired(
            &self.catalog.current,
            &self.state,
            &self.intent,
            &self.ctx,
            &self.rollouts.holds(&self.catalog.current),
        );
        let actual = match self.actual(&want).await {
            Ok(a) => a,
            Err(e) => {
                let msg = super::full_message(&e);
                warn!(err = %msg, "cannot read the actual state: {msg}");
                report.general_error(msg);
                return report;
            }
        };
        self.check_stale = false;
        let plan = plan::plan(&want, &actual);
        // What restarting services run now is kept before they restart onto other images.
        self.begin_swaps(&plan).await;
        // A forced (re)start or a retry is consumed by planning it once.
        self.intent.force.clear();
        self.intent.retry.clear();
        self.waiting = plan.waiting.clone();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for action in &plan.actions {
            if let Some(s) = action.service() {
                if failed.contains(s) {
                    continue;
                }
            }
            let span = tracing::info_span!("apply", action = %action);
            match self.apply(action).instrument(span.clone()).await {
                Ok(()) => {
                    span.in_scope(|| info!("{action}: done"));
                    if let Some(s) = action.service() {
                        if matches!(
                            action,
                            Action::Start { .. } | Action::Restart { .. } | Action::Stop { .. }
                        ) {
                            self.apply_errors.remove(s);
                        }
                    }
                    report.applied.push(action.to_string());
                }
                Err(e) => {
                    let msg = super::full_message(&e);
                    span.in_scope(|| warn!(err = %msg, "{action} failed: {msg}"));
                    let text = format!("{action}: {msg}");
                    match action.service() {
                        Some(s) => {
                            report.service_error(s, text);
                            failed.insert(s.to_string());
                            self.apply_errors.insert(s.to_string(), msg);
                        }
                        None => {
                            report.general_error(text);
                            break;
                        }
                    }
                }
            }
        }
        report.waiting = self.waiting.clone();
        report
    }

    async fn apply(&mut self, action: &Action) -> Result<(), ApplyError> {
        let sd = &self.edges.systemd;
        match action {
            Action::Stop { unit, .. } => {
                self.counters.systemd_writes += 1;
                sd.stop(unit, JOB_WAIT).await?;
                Ok(())
            }
            Action::ResetFailed { unit, .. } => {
                self.counters.systemd_writes += 1;
                Ok(sd.reset_failed(unit).await?)
            }
            Action::RemoveUnit { unit, .. } => {
                self.counters.file_writes += 1;
                Ok(self.units.remove(&self.edges.files, unit).await?)
            }
            Action::WriteUnit { unit, content, .. } => {
                self.counters.file_writes += 1;
                Ok(self.units.write(&self.edges.files, unit, content).await?)
            }
            Action::DaemonReload => {
                self.counters.systemd_writes += 1;
                Ok(sd.daemon_reload().await?)
            }
            Action::Pull { image, service } => {
                self.counters.podman_writes += 1;
                let services: Vec<String> = self
                    .catalog
                    .current
                    .services
                    .values()
                    .filter(|s| s.images().any(|i| i == image))
                    .map(|s| s.name.clone())
                    .collect();
                let services = if services.is_empty() {
                    vec![service.clone()]
                } else {
                    services
                };
                self.pulls
                    .start(image, services, &self.edges.podman, &self.out.events);
                Ok(())
            }
            Action::PrepareFiles { service } => self.prepare_files(service).await,
            Action::Start { service, unit } | Action::Restart { service, unit } => {
                self.counters.systemd_writes += 1;
                let outcome = if matches!(action, Action::Start { .. }) {
                    sd.start(unit, JOB_WAIT).await?
                } else {
                    sd.restart(unit, JOB_WAIT).await?
                };
                match outcome {
                    JobOutcome::Finished(r) if r == "done" => Ok(()),
                    JobOutcome::Pending => Ok(()),
                    JobOutcome::Finished(result) => {
                        let detail = match sd.service_result(unit).await {
                            Ok((res, _)) => format!(" ({res})"),
                            Err(_) => String::new(),
                        };
                        Err(ApplyError::Job {
                            service: service.clone(),
                            unit: unit.clone(),
                            result,
                            detail,
                        })
                    }
                }
            }
        }
    }

    /// Writes a service's env files (with secrets) and mounted files, only where they differ.
    async fn prepare_files(&mut self, service: &str) -> Result<(), ApplyError> {
        let catalog = self.catalog.current.clone();
        let Some(svc) = catalog.get(service) else {
            return Ok(());
        };
        let secrets = if svc.secrets.is_empty() {
            BTreeMap::new()
        } else {
            self.secrets
                .ensure(&self.edges.files, service, &svc.secrets)
                .await
                .map_err(ApplyError::Secrets)?
        };
        for ctr in &svc.containers {
            // Podman's log driver does not create the directory of its file.
            let log = self.paths.in_home(&units::log_file(svc, ctr));
            if let Some(dir) = log.parent() {
                if !self.edges.files.is_dir(dir).await {
                    self.counters.file_writes += 1;
                    self.edges
                        .files
                        .create_dir(dir, 0o700)
                        .await
                        .map_err(|source| ApplyError::File {
                            path: dir.to_path_buf(),
                            source,
                        })?;
                }
            }
            if let Some(rel) = units::env_file(svc, ctr) {
                let mut text = String::from(
                    "# Generated by berth: secrets for this container. Keep private.\n",
                );
                for (k, v) in &ctr.env {
                    if v.contains(SECRET_PREFIX) {
                        // Podman env files are KEY=VALUE lines, taken literally.
                        text.push_str(&format!("{k}={}\n", substitute(v, &secrets)));
                    }
                }
                self.write_file(&self.paths.in_home(&rel), &text, 0o600)
                    .await?;
            }
            for (i, f) in ctr.files.iter().enumerate() {
                let path = self.paths.in_home(&units::file_mount_path(svc, ctr, i));
                let content = substitute(&f.content, &secrets);
                // Containers often read config files as an unprivileged user of their own
                // user namespace; files without secrets are world-readable, secret ones not.
                let mode = if f.uses_secrets() { 0o600 } else { 0o644 };
                self.write_file(&path, &content, mode).await?;
            }
        }
        Ok(())
    }

    async fn write_file(&mut self, path: &Path, text: &str, mode: u32) -> Result<(), ApplyError> {
        let err = |source| ApplyError::File {
            path: path.to_path_buf(),
            source,
        };
        if self
            .edges
            .files
            .read(path)
            .await
            .map_err(err)?
            .is_some_and(|old| old == text.as_bytes())
        {
            return Ok(());
        }
        self.counters.file_writes += 1;
        self.edges
            .files
            .write(path, text.as_bytes().to_vec(), mode)
            .await
            .map_err(err)
    }

    /// Records a user's verb: the choice it stands for (kept on disk) and what the next pass
    /// must do beyond the choice. `enable` and `start` never restart a running service.
    pub(super) async fn act(&mut self, service: &str, verb: Verb) -> Result<(), EngineError> {
        if !self.loaded() {
            return Err(self.not_loaded());
        }
        let catalog = self.catalog.current.clone();
        let Some(svc) = catalog.get(service) else {
            return Err(EngineError::UnknownService(service.into()));
        };
        let choice = match verb {
            Verb::Enable | Verb::Start | Verb::Restart => Choice::On,
            Verb::Disable => Choice::Off,
            Verb::Stop => Choice::Stopped,
        };
        if choice != Choice::Off {
            if let Some(reason) = &svc.refused {
                return Err(EngineError::Refused {
                    service: service.into(),
                    reason: reason.clone(),
                });
            }
        }
        if choice != Choice::On && catalog.policy.is_required(service) {
            return Err(EngineError::Required {
                service: service.into(),
                rule: catalog.policy.rule("required_services"),
            });
        }
        let current = desired::choice(&catalog, &self.state, service);
        if choice == Choice::On && current != Choice::On {
            // The per-user ceilings count every service that is on, this one included.
            let on = catalog.services.values().filter(|s| {
                s.name == service || desired::choice(&catalog, &self.state, &s.name) == Choice::On
            });
            if let Err(reason) = crate::catalog::policy::within_user_limits(&catalog.policy, on) {
                return Err(EngineError::Refused {
                    service: service.into(),
                    reason,
                });
            }
        }
        if matches!(verb, Verb::Stop | Verb::Restart) && current == Choice::Off {
            // Stopping or restarting a service that is not enabled is a mistake worth naming.
            return Err(EngineError::NotEnabled(service.into()));
        }
        if self.state.choice(service, &catalog.policy.default_enabled) != choice
            || !self.state.services.contains_key(service)
        {
            let mut next = self.state.clone();
            next.set(service, choice);
            next.save(&self.edges.files, &self.paths.state_file())
                .await
                .map_err(EngineError::State)?;
            self.counters.file_writes += 1;
            self.state = next;
        }
        if choice == Choice::On {
            match verb {
                Verb::Restart => {
                    self.intent.force.insert(service.into());
                }
                _ => {
                    self.intent.retry.insert(service.into());
                }
            }
            // A user acting retries failed pulls and clears what the last pass could not do.
            let images: Vec<String> = svc.images().map(str::to_string).collect();
            self.pulls.forget(&images, &self.edges.files).await;
            self.apply_errors.remove(service);
        }
        Ok(())
    }

    /// A client connected to an on-demand service: wake it and retry it if it failed, but
    /// never restart one that runs (clients may arrive in a burst).
    pub(super) async fn demand(&mut self, service: &str) -> Result<(), EngineError> {
        if !self
            .catalog
            .current
            .get(service)
            .is_some_and(|s| s.on_demand)
        {
            return Err(EngineError::NotOnDemand(service.into()));
        }
        self.intent.awake.insert(service.to_string());
        self.intent.retry.insert(service.to_string());
        let images: Vec<String> = self
            .catalog
            .current
            .get(service)
            .map(|s| s.images().map(str::to_string).collect())
            .unwrap_or_default();
        self.pulls.forget(&images, &self.edges.files).await;
        self.apply_errors.remove(service);
        // The proxy waits for this start now, not for the failure it was told of before.
        self.proxy.set_unavailable(BTreeMap::new(), Some(service));
        let report = self.pass().await;
        match report.errors_of(service) {
            None => Ok(()),
            Some(reason) => Err(EngineError::CannotStart {
                service: service.into(),
                reason,
            }),
        }
    }
}
