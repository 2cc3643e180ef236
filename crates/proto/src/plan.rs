//! A reconcile plan as the API shows it (`berth plan`): the ordered actions and why wanted
//! services wait.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Stop {
        service: String,
        unit: String,
    },
    ResetFailed {
        service: String,
        unit: String,
    },
    RemoveUnit {
        service: String,
        unit: String,
    },
    WriteUnit {
        service: String,
        unit: String,
        /// The unit file's text; kept out of the API's answers.
        #[serde(skip_serializing, default)]
        content: String,
    },
    DaemonReload,
    Pull {
        service: String,
        image: String,
    },
    /// Write the service's env files (secrets) and mounted config files.
    PrepareFiles {
        service: String,
    },
    Start {
        service: String,
        unit: String,
    },
    Restart {
        service: String,
        unit: String,
    },
}

impl Action {
    pub fn service(&self) -> Option<&str> {
        match self {
            Action::DaemonReload => None,
            Action::Stop { service, .. }
            | Action::ResetFailed { service, .. }
            | Action::RemoveUnit { service, .. }
            | Action::WriteUnit { service, .. }
            | Action::Pull { service, .. }
            | Action::PrepareFiles { service }
            | Action::Start { service, .. }
            | Action::Restart { service, .. } => Some(service),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Stop { unit, .. } => write!(f, "stop {unit}"),
            Action::ResetFailed { unit, .. } => write!(f, "reset-failed {unit}"),
            Action::RemoveUnit { unit, .. } => write!(f, "remove unit {unit}"),
            Action::WriteUnit { unit, .. } => write!(f, "write unit {unit}"),
            Action::DaemonReload => write!(f, "reload systemd"),
            Action::Pull { image, .. } => write!(f, "pull {image}"),
            Action::PrepareFiles { service } => write!(f, "write files of {service}"),
            Action::Start { unit, .. } => write!(f, "start {unit}"),
            Action::Restart { unit, .. } => write!(f, "restart {unit}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Why a wanted service is not (yet) being started.
    pub waiting: BTreeMap<String, String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            writeln!(f, "nothing to do")?;
        }
        for (i, a) in self.actions.iter().enumerate() {
            writeln!(f, "{:>3}. {a}", i + 1)?;
        }
        for (s, why) in &self.waiting {
            writeln!(f, "  {s}: {why}")?;
        }
        Ok(())
    }
}
