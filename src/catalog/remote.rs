//! The remote catalog's file: one TOML document with a `[remote]` header (serial, expiry) and
//! any number of `[[services]]`, each exactly the schema of one admin catalog file.
//!
//! Only the schema lives here; fetching and signature checks are `crate::remote`'s. A bundle
//! is a [`Source`] whose path is under [`REMOTE_PREFIX`]; its services are validated like
//! admin files' (same checks, same policy, file:line into the bundle), and it forms one layer
//! after the admin directory.
//!
//! ```toml
//! [remote]
//! serial = 42                          # must grow with every published catalog
//! expiry = "2027-01-31T00:00:00Z"      # RFC 3339; an expired catalog is refused
//!
//! [[services]]
//! name = "ollama"
//! description = "…"
//! [[services.containers]]
//! name = "ollama"
//! image = "registry.example/ollama/ollama:0.12.3"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::raw::RawService;
use super::validate::{self, ServiceSpans};
use super::{parse, Diagnostic, Policy, Service, Source};

/// Prefix under which the remote catalog is named in messages and origins.
pub const REMOTE_PREFIX: &str = "<remote>";

/// Whether a source path names the remote catalog.
pub fn is_remote(path: &Path) -> bool {
    path.starts_with(REMOTE_PREFIX)
}

/// The name a remote catalog fetched from `url` gets in messages: `<remote>/catalog.toml`.
pub fn source_path(url: &str) -> PathBuf {
    let last = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("catalog.toml");
    Path::new(REMOTE_PREFIX).join(last)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    #[allow(dead_code)] // read by `header`; here only so that it is a known field
    remote: RawHeader,
    #[serde(default)]
    services: Vec<RawService>,
}

/// Only the header: every other key is somebody else's business here.
#[derive(Debug, Deserialize)]
struct RawHeaderOnly {
    remote: Spanned<RawHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    serial: Spanned<i64>,
    expiry: Spanned<String>,
}

/// The signed facts of a remote catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub serial: u64,
    /// Unix seconds after which the catalog must not be taken.
    pub expiry: u64,
}

/// Reads the `[remote]` header, every problem with its line.
pub fn header(src: &Source) -> Result<Header, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let Some(raw) = parse::<RawHeaderOnly>(src, &mut diags) else {
        return Err(diags);
    };
    let h = raw.remote.get_ref();
    let serial = match u64::try_from(*h.serial.get_ref()) {
        Ok(s) if s > 0 => s,
        _ => {
            diags.push(src.diagnostic(
                Some(h.serial.span()),
                "remote.serial".into(),
                "must be a whole number above 0".into(),
            ));
            0
        }
    };
    let expiry = match crate::clock::parse_rfc3339(h.expiry.get_ref()) {
        Some(t) => t,
        None => {
            diags.push(src.diagnostic(
                Some(h.expiry.span()),
                "remote.expiry".into(),
                format!(
                    "{:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z",
                    h.expiry.get_ref()
                ),
            ));
            0
        }
    };
    if diags.is_empty() {
        Ok(Header { serial, expiry })
    } else {
        Err(diags)
    }
}

/// The bundle's services, validated like admin files (problems go to `diags`).
pub fn services(
    src: &Source,
    policy: &Policy,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Service, ServiceSpans)> {
    let Some(raw) = parse::<RawBundle>(src, diags) else {
        return Vec::new();
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for s in raw.services {
        let name = s.name.get_ref().clone();
        if !seen.insert(name.clone()) {
            diags.push(src.diagnostic(
                Some(s.name.span()),
                "name".into(),
                format!("service {name:?} is defined twice in this file"),
            ));
            continue;
        }
        out.extend(validate::service(src, s, policy, diags));
    }
    out
}
