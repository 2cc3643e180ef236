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
    reload: Option<RawReload>,
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

/// Where the page listens unless config.toml says otherwise.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:7380";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub metrics: MetricsConfig,
    pub push: Option<PushConfig>,
    pub notifications: bool,
    pub web: WebConfig,
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
