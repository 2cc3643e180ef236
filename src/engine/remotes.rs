//! Health checks of the services the cloud provides (the policy's `[remote_services]`): each
//! due one runs in its own task (one HTTP GET of its health URL, bounded by a timeout), and
//! the result comes back to the engine. A service answers when it sends any status below 500:
//! an API that wants a key says 401 and is still there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_proto::RemoteServiceInfo;
use tokio::sync::mpsc;

use crate::catalog::Catalog;

/// How long one check may take, connecting included.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A check that finished.
#[derive(Debug)]
pub(super) struct RemoteDone {
    pub name: String,
    pub url: String,
    pub result: Result<(), String>,
    pub at: u64,
}

#[derive(Debug)]
pub(super) struct RemoteChecks {
    results: BTreeMap<String, RemoteServiceInfo>,
    checking: BTreeSet<String>,
    tx: mpsc::UnboundedSender<RemoteDone>,
}

impl RemoteChecks {
    pub fn new(tx: mpsc::UnboundedSender<RemoteDone>) -> Self {
        RemoteChecks {
            results: BTreeMap::new(),
            checking: BTreeSet::new(),
            tx,
        }
    }

    /// A check finished; whether it changed whether the service is up.
    pub fn done(&mut self, d: RemoteDone) -> bool {
        self.checking.remove(&d.name);
        let up = d.result.is_ok();
        let changed = self
            .results
            .get(&d.name)
            .is_none_or(|old| old.up != Some(up));
        self.results.insert(
            d.name.clone(),
            RemoteServiceInfo {
                name: d.name,
                url: d.url,
                up: Some(up),
                error: d.result.err(),
                checked: Some(d.at),
            },
        );
        changed
    }

    /// Starts the checks that are due: those never checked, and those whose interval passed
    /// since their last result. Results of services the policy no longer names are dropped.
    pub fn start_due(&mut self, catalog: &Catalog, now: u64) {
        let remotes = &catalog.policy.remote_services;
        self.results
            .retain(|name, r| remotes.get(name).is_some_and(|cfg| cfg.url == r.url));
        for (name, cfg) in remotes {
            if self.checking.contains(name) {
                continue;
            }
            let due = self
                .results
                .get(name)
                .and_then(|r| r.checked)
                .is_none_or(|at| now.saturating_sub(at) >= cfg.check_interval.as_secs().max(1));
            if !due {
                continue;
            }
            self.checking.insert(name.clone());
            let tx = self.tx.clone();
            let (name, url, health, ca) = (
                name.clone(),
                cfg.url.clone(),
                cfg.health_url.clone(),
                cfg.ca_file.clone(),
            );
            tokio::spawn(async move {
                let result = crate::remote::http::answers(&health, ca.as_deref(), CHECK_TIMEOUT)
                    .await
                    .map(|_status| ());
                let _engine_gone = tx.send(RemoteDone {
                    name,
                    url,
                    result,
                    at: now,
                });
            });
        }
    }

    /// Every service the policy says the cloud provides, with its last check.
    pub fn infos(&self, catalog: &Catalog) -> Vec<RemoteServiceInfo> {
        catalog
            .policy
            .remote_services
            .iter()
            .map(|(name, cfg)| {
                self.results
                    .get(name)
                    .cloned()
                    .unwrap_or(RemoteServiceInfo {
                        name: name.clone(),
                        url: cfg.url.clone(),
                        ..RemoteServiceInfo::default()
                    })
            })
            .collect()
    }

    /// Last results by service, for the status view.
    pub fn results(&self) -> &BTreeMap<String, RemoteServiceInfo> {
        &self.results
    }
}
