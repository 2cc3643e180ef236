//! The administrator's daemon settings, `/etc/berth/config.toml`: where health goes beyond the
//! VM. Absent file = defaults (nothing listens on the network, nothing is pushed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{validate::parse_duration, Diagnostic, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    metrics: Option<RawMetrics>,
    push: Option<RawPush>,
    #[serde(default)]
    notifications: Option<RawNotifications>,
    web: Option<RawWeb>,
    backup: Option<RawBackupConfig>,
    remote_catalog: Option<RawRemoteCatalog>,
    reload: Option<RawReload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackupConfig {
    dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteCatalog {
    url: Spanned<String>,
    public_keys: Spanned<Vec<Spanned<String>>>,
    poll_interval: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    /// How often the catalog layers, the policy and config.toml are polled (besides inotify).
    poll_interval: Option<Spanned<String>>,
    /// Use inotify besides polling (default true); false polls only.
    inotify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPush {
    url: Spanned<String>,
    bearer_token_file: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    spool_max_reports: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    enabled: Option<bool>,
}

/// Settings of the optional network endpoint for the cloud's Prometheus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address to listen on besides the API socket (needs a bearer token unless loopback).
    pub listen: Option<SocketAddr>,
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    pub url: String,
    pub bearer_token_file: Option<PathBuf>,
    pub interval: Duration,
    pub spool_max_reports: usize,
}

/// The local web page (the dashboard): on or off, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub enabled: bool,
    /// A loopback address: the page is the user's own and drives their services.
    pub listen: SocketAddr,
}

/// The signed remote catalog (`[remote_catalog]`; see `crate::remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCatalogConfig {
    /// `https://…/catalog.toml`; its minisign signature is at the same URL plus `.minisig`.
    pub url: String,
    /// Minisign public keys (the base64 line of `minisign.pub`); a catalog signed by any one
    /// of them is taken.
    pub public_keys: Vec<String>,
    /// Time between polls (each wait is jittered by up to a tenth either way).
    pub poll_interval: Duration,
    /// A PEM file of the CA that signed the server's certificate: then only that CA is trusted
    /// for the catalog's server. Without it, the system's CA store.
    pub ca_file: Option<PathBuf>,
}

/// How often the remote catalog is polled unless config.toml says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Where the page listens unless config.toml says otherwise.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:7380";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub metrics: MetricsConfig,
    pub push: Option<PushConfig>,
    pub notifications: bool,
    pub web: WebConfig,
    /// `[backup] dir`: where `berth backup` writes (`~` is the user's home); None: the user's
    /// folder on /shared, else a local one (see `backup`).
    pub backup_dir: Option<PathBuf>,
    pub remote_catalog: Option<RemoteCatalogConfig>,
    /// How often the watched files are polled: what sees changes on network filesystems.
    pub poll_interval: Duration,
    /// Whether inotify is used besides polling.
    pub inotify: bool,
}

/// The default poll of the watched files.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Self {
        Config {
            metrics: MetricsConfig {
                listen: None,
                bearer_token_file: None,
            },
            push: None,
            notifications: true,
            web: WebConfig {
                enabled: true,
                listen: SocketAddr::from(([127, 0, 0, 1], 7380)),
            },
            backup_dir: None,
            remote_catalog: None,
            poll_interval: DEFAULT_POLL,
            inotify: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&Source::new(path, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    pub fn parse(src: &Source) -> Result<Config, ConfigError> {
        let mut diags = Vec::new();
        let Some(raw) = crate::catalog::parse::<RawConfig>(src, &mut diags) else {
            return Err(ConfigError::Invalid(diags));
        };
        let mut cfg = Config::default();
        if let Some(m) = raw.metrics {
            if let Some(l) = &m.listen {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(a) => cfg.metrics.listen = Some(a),
                    Err(_) => diags.push(src.diagnostic(
                        Some(l.span()),
                        "metrics.listen".into(),
                        format!("{:?} is not an address like 127.0.0.1:9469", l.get_ref()),
                    )),
                }
            }
            cfg.metrics.bearer_token_file = m
                .bearer_token_file
                .as_ref()
                .map(|p| PathBuf::from(p.get_ref()));
            if let (Some(a), None) = (cfg.metrics.listen, &cfg.metrics.bearer_token_file) {
                if !a.ip().is_loopback() {
                    let span = m.listen.as_ref().map(|l| l.span());
                    diags.push(src.diagnostic(
                        span,
                        "metrics.bearer_token_file".into(),
                        "a non-loopback metrics address needs bearer_token_file".into(),
                    ));
                }
            }
        }
        if let Some(p) = raw.push {
            let url = p.url.get_ref().clone();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                diags.push(src.diagnostic(
                    Some(p.url.span()),
                    "push.url".into(),
                    "must start with http:// or https://".into(),
                ));
            }
            let interval = match &p.interval {
                None => Duration::from_secs(300),
                Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
                    diags.push(src.diagnostic(Some(s.span()), "push.interval".into(), e));
                    Duration::from_secs(300)
                }),
            };
            let spool_max_reports = match &p.spool_max_reports {
                None => 1000,
                Some(n) if (1..=100_000).contains(n.get_ref()) => *n.get_ref() as usize,
                Some(n) => {
                    diags.push(src.diagnostic(
                        Some(n.span()),
                        "push.spool_max_reports".into(),
                        "must be in 1..=100000".into(),
                    ));
                    1000
                }
            };
            cfg.push = Some(PushConfig {
                url,
                bearer_token_file: p
                    .bearer_token_file
                    .as_ref()
                    .map(|f| PathBuf::from(f.get_ref())),
                interval,
                spool_max_reports,
            });
        }
        if let Some(n) = raw.notifications {
            cfg.notifications = n.enabled.unwrap_or(true);
        }
        if let Some(w) = raw.web {
            cfg.web.enabled = w.enabled.unwrap_or(true);
            if let Some(l) = &w.listen {
                match l.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.ip().is_loopback() => cfg.web.listen = a,
                    Ok(_) => diags.push(src.diagnostic(
                        Some(l.span()),
                        "web.listen".into(),
                        "the page drives the user's services: it listens on a loopback address only (127.0.0.1:PORT)".into(),
                    )),
                    Err(_) => diags.push(src.diagnostic(
                        Some(l.span()),
                        "web.listen".into(),
                        format!("{:?} is not an address like {DEFAULT_WEB_LISTEN}", l.get_ref()),
                    )),
                }
            }
        }
        if let Some(d) = raw.backup.and_then(|b| b.dir) {
            let text = d.get_ref();
            if text.starts_with('/') || text.starts_with("~/") {
                cfg.backup_dir = Some(PathBuf::from(text));
            } else {
                diags.push(src.diagnostic(
                    Some(d.span()),
                    "backup.dir".into(),
                    format!("{text:?} must be an absolute path or start with ~/"),
                ));
            }
        }
        if let Some(r) = raw.remote_catalog {
            cfg.remote_catalog = remote_catalog(src, r, &mut diags);
        }
        if let Some(r) = raw.reload {
            cfg.inotify = r.inotify.unwrap_or(true);
            if let Some(p) = &r.poll_interval {
                match parse_duration(p.get_ref()) {
                    Ok(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(3600) => {
                        cfg.poll_interval = d
                    }
                    Ok(_) => diags.push(src.diagnostic(
                        Some(p.span()),
                        "reload.poll_interval".into(),
                        "must be in 100ms..=1h".into(),
                    )),
                    Err(e) => {
                        diags.push(src.diagnostic(Some(p.span()), "reload.poll_interval".into(), e))
                    }
                }
            }
        }
        if diags.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(diags))
        }
    }
}

fn remote_catalog(
    src: &Source,
    r: RawRemoteCatalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<RemoteCatalogConfig> {
    let before = diags.len();
    let url = r.url.get_ref().clone();
    let valid_url = url
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && url.parse::<hyper::Uri>().is_ok();
    if !valid_url {
        diags.push(src.diagnostic(
            Some(r.url.span()),
            "remote_catalog.url".into(),
            "must be an https:// URL (the catalog changes what runs here: plain http is refused)"
                .into(),
        ));
    }
    if r.public_keys.get_ref().is_empty() {
        diags.push(src.diagnostic(
            Some(r.public_keys.span()),
            "remote_catalog.public_keys".into(),
            "needs at least one minisign public key".into(),
        ));
    }
    let mut public_keys = Vec::new();
    for (i, k) in r.public_keys.get_ref().iter().enumerate() {
        let key = k.get_ref().trim();
        match minisign_verify::PublicKey::from_base64(key) {
            Ok(_) => public_keys.push(key.to_string()),
            Err(e) => diags.push(src.diagnostic(
                Some(k.span()),
                format!("remote_catalog.public_keys[{i}]"),
                format!("not a minisign public key (the base64 line of minisign.pub): {e}"),
            )),
        }
    }
    let poll_interval = match &r.poll_interval {
        None => DEFAULT_POLL_INTERVAL,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => d,
            Ok(_) => {
                diags.push(src.diagnostic(
                    Some(s.span()),
                    "remote_catalog.poll_interval".into(),
                    "must be at least 1s".into(),
                ));
                DEFAULT_POLL_INTERVAL
            }
            Err(e) => {
                diags.push(src.diagnostic(
                    Some(s.span()),
                    "remote_catalog.poll_interval".into(),
                    e,
                ));
                DEFAULT_POLL_INTERVAL
            }
        },
    };
    let ca_file = r.ca_file.as_ref().map(|f| PathBuf::from(f.get_ref()));
    if let (Some(f), Some(p)) = (&r.ca_file, &ca_file) {
        if !p.is_absolute() {
            diags.push(src.diagnostic(
                Some(f.span()),
                "remote_catalog.ca_file".into(),
                "must be an absolute path".into(),
            ));
        }
    }
    (diags.len() == before).then_some(RemoteCatalogConfig {
        url,
        public_keys,
        poll_interval,
        ca_file,
    })
}

/// Reads a bearer token file: trimmed, non-empty.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let t = std::fs::read_to_string(path)?.trim().to_string();
    if t.is_empty() {
        return Err(std::io::Error::other(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(&Source::new("/etc/berth/config.toml", t))
    }

    #[test]
    fn defaults_and_full() {
        assert_eq!(parse("").expect("empty"), Config::default());
        let c = parse(
            "[metrics]\nlisten = \"0.0.0.0:9469\"\nbearer_token_file = \"/etc/berth/metrics.token\"\n\
             [push]\nurl = \"https://fleet.example/v1/health\"\ninterval = \"1m\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.metrics.listen,
            Some("0.0.0.0:9469".parse().expect("addr"))
        );
        let p = c.push.expect("push");
        assert_eq!(p.interval, Duration::from_secs(60));
        assert_eq!(p.spool_max_reports, 1000);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse("[metrics]\nlisten = \"0.0.0.0:9469\"\n").expect_err("token needed");
        assert!(
            e.to_string()
                .contains("config.toml:2:10: metrics.bearer_token_file"),
            "{e}"
        );
        let e = parse("[push]\nurl = \"ftp://x\"\n").expect_err("scheme");
        assert!(e.to_string().contains(":2:7: push.url"), "{e}");
        let e = parse("[metric]\n").expect_err("unknown");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    #[test]
    fn remote_catalog_settings() {
        let c = parse(&format!(
            "[remote_catalog]\nurl = \"https://cat.example/berth/catalog.toml\"\npublic_keys = [\"{KEY}\"]\n"
        ))
        .expect("valid");
        let r = c.remote_catalog.expect("remote");
        assert_eq!(r.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(r.public_keys, vec![KEY.to_string()]);
        assert_eq!(r.ca_file, None);
        let c = parse(&format!(
            "[remote_catalog]\nurl = \"https://127.0.0.1:18241/c.toml\"\npublic_keys = [\"{KEY}\"]\npoll_interval = \"2s\"\nca_file = \"/etc/berth/ca.pem\"\n"
        ))
        .expect("valid");
        let r = c.remote_catalog.expect("remote");
        assert_eq!(r.poll_interval, Duration::from_secs(2));
        assert_eq!(r.ca_file, Some(PathBuf::from("/etc/berth/ca.pem")));

        let e = parse(&format!(
            "[remote_catalog]\nurl = \"http://cat.example/c.toml\"\npublic_keys = [\"{KEY}\"]\n"
        ))
        .expect_err("plain http");
        assert!(
            e.to_string()
                .contains("config.toml:2:7: remote_catalog.url"),
            "{e}"
        );
        let e = parse(
            "[remote_catalog]\nurl = \"https://c.example/c.toml\"\npublic_keys = [\"RWQnope\"]\n",
        )
        .expect_err("bad key");
        assert!(
            e.to_string()
                .contains(":3:16: remote_catalog.public_keys[0]"),
            "{e}"
        );
        let e = parse("[remote_catalog]\nurl = \"https://c.example/c.toml\"\npublic_keys = []\n")
            .expect_err("no key");
        assert!(
            e.to_string().contains(":3:15: remote_catalog.public_keys"),
            "{e}"
        );
        let e = parse(&format!(
            "[remote_catalog]\nurl = \"https://c.example/c.toml\"\npublic_keys = [\"{KEY}\"]\nsignature = \"x\"\n"
        ))
        .expect_err("unknown field");
        assert!(
            e.to_string().contains(":4:1: unknown field `signature`"),
            "{e}"
        );
    }

    #[test]
    fn reload_settings() {
        let c = parse("[reload]\npoll_interval = \"500ms\"\ninotify = false\n").expect("valid");
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert!(!c.inotify);
        let e = parse("[reload]\npoll_interval = \"1ms\"\n").expect_err("too fast");
        assert!(e.to_string().contains(":2:17: reload.poll_interval"), "{e}");
    }

    #[test]
    fn the_page_listens_on_loopback_only() {
        let c = parse("[web]\nlisten = \"127.0.0.1:7400\"\n").expect("valid");
        assert_eq!(c.web.listen.port(), 7400);
        assert!(c.web.enabled);
        assert!(!parse("[web]\nenabled = false\n").expect("off").web.enabled);
        let e = parse("[web]\nlisten = \"0.0.0.0:7380\"\n").expect_err("not loopback");
        assert!(e.to_string().contains(":2:10: web.listen"), "{e}");
    }
}
