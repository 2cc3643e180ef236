//! Raw catalog files → validated [`Service`]s, collecting every problem with its location.
//!
//! Checks that need one file run in [`service`]; checks across services (port clashes, unknown
//! or cyclic `uses`) run in [`across`] after layering, because an admin file may replace a
//! built-in service and so change what clashes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::model::{
    BackupMode, Container, FileMount, Gpu, Health, Origin, Policy, Port, Probe, Service, Volume,
    VolumeSource, SECRET_PREFIX,
};
use super::raw::{RawContainer, RawPolicy, RawService};
use super::{Diagnostic, Source};

/// Where a value sits in its file, kept for checks that run after layering.
#[derive(Debug, Clone)]
pub struct Loc {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// Locations of the values that cross-service checks may complain about.
#[derive(Debug, Clone, Default)]
pub struct ServiceSpans {
    pub ports: Vec<(u16, String, Option<Loc>)>,
    pub uses: Vec<(String, Option<Loc>)>,
}

struct Ctx<'a> {
    src: &'a Source,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(
        &mut self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) {
        self.diags
            .push(self.src.diagnostic(span, field.into(), msg.into()));
    }

    fn loc(&self, span: Range<usize>) -> Loc {
        let (line, col) = self.src.line_col(span.start);
        Loc {
            file: self.src.path.clone(),
            line,
            col,
        }
    }
}

pub use berth_proto::{valid_name, MAX_NAME};

pub fn valid_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parses "500ms", "30s", "5m", "2h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (ms, s, m or h)"
            ))
        }
    };
    Ok(d)
}

const MIB: u64 = 1024 * 1024;
/// Bounds of `shm_size`: below 1 MiB nothing useful fits; above 16 GiB is a typo on a desktop
/// VM (tmpfs pages count against the container's memory).
const SHM_MIN: u64 = MIB;
const SHM_MAX: u64 = 16 * 1024 * MIB;

/// Parses a size like Podman's `--shm-size`: a whole number with `k`, `m` or `g` (binary
/// units, optionally followed by `b`, any case), e.g. "256m", "1g", "512MB".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("size {s:?} needs a unit (k, m or g)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must start with a whole number"))?;
    let mult = match unit.strip_suffix('b').unwrap_or(unit) {
        "k" => 1024,
        "m" => MIB,
        "g" => 1024 * MIB,
        _ => return Err(format!("size {s:?} has unknown unit {unit:?} (k, m or g)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A fully qualified image reference with a pinned tag or digest.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace()) {
        return Err("image reference must be non-empty and without spaces".into());
    }
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (first, _) = name.split_once('/').ok_or_else(|| {
        format!("image {image:?} must name its registry (e.g. docker.io/{image})")
    })?;
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(format!(
            "image {image:?} must name its registry (e.g. docker.io/{image})"
        ));
    }
    if let Some(d) = digest {
        check_digest(image, d)?;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, t)| t);
    match tag {
        // A digest pins the image by itself; a tag beside it is only a label.
        None if digest.is_some() => {}
        None => return Err(format!("image {image:?} must pin a tag or digest")),
        Some("latest") if digest.is_none() => {
            return Err(format!(
                "image {image:?} uses the moving tag \"latest\"; pin a version"
            ))
        }
        Some(t)
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            return Err(format!("image {image:?} has a malformed tag"))
        }
        Some(_) => {}
    }
    let path = &name[..name.len() - tag.map_or(0, |t| t.len() + 1)];
    let repo = &path[first.len() + 1..];
    if repo.is_empty()
        || !repo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return Err(format!(
            "image {image:?} has a malformed repository (lowercase letters, digits, . _ - /)"
        ));
    }
    Ok(())
}

/// `sha256:` and 64 lowercase hex digits: the only digest Podman's registries use.
fn check_digest(image: &str, d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!(
            "image {image:?} has a malformed digest: it must be sha256:<64 hex digits>"
        ));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "image {image:?} has a malformed digest: sha256 wants 64 lowercase hex digits, found {} characters{}",
            hex.len(),
            if hex.bytes().all(|b| b.is_ascii_hexdigit()) { "" } else { " with non-hex ones" }
        ));
    }
    Ok(())
}

/// Whether an image reference is pinned by digest (`name@sha256:…`, `name:tag@sha256:…`):
/// such an image never changes, so `berth update` leaves it alone.
pub fn is_pinned(image: &str) -> bool {
    image.contains("@sha256:")
}

const CAPS: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// Lexically normal absolute path: starts with `/`, no `.` or `..` parts, and only characters
/// that need no quoting in a unit file or a Podman `--volume` argument.
fn normal_absolute(p: &str) -> bool {
    let path = Path::new(p);
    p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b))
        && path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The names inside every `${secret.NAME}` of `text`; `Err` on an unterminated reference.
pub fn secret_refs(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(SECRET_PREFIX) {
        let after = &rest[i + SECRET_PREFIX.len()..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${secret.…} reference".to_string())?;
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(out)
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

fn duration(
    cx: &mut Ctx<'_>,
    v: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                cx.err(span_of(s), field, e);
                default
            }
        },
    }
}

/// Validates one file. Returns `None` when it had errors (they are in `diags`).
pub fn service(
    src: &Source,
    raw: RawService,
    policy: &Policy,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Service, ServiceSpans)> {
    let before = diags.len();
    let mut cx = Ctx { src, diags };
    let mut spans = ServiceSpans::default();

    let name = raw.name.get_ref().clone();
    if !valid_name(&name) {
        cx.err(
            span_of(&raw.name),
            "name",
            format!("{name:?} is not a valid service name ([a-z][a-z0-9-]*, at most {MAX_NAME} characters)"),
        );
    } else if let Some(stem) = src
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        // The remote catalog holds many services in one file.
        .filter(|_| !super::remote::is_remote(&src.path))
    {
        if stem != name {
            cx.err(
                span_of(&raw.name),
                "name",
                format!("service {name:?} must live in a file named {name}.toml"),
            );
        }
    }
    let description = raw.description.get_ref().trim().to_string();
    if description.is_empty() || description.contains('\n') {
        cx.err(
            span_of(&raw.description),
            "description",
            "must be one non-empty line",
        );
    }
    let gpu = match raw.gpu.as_ref().map(|g| g.get_ref().as_str()) {
        None | Some("none") => Gpu::None,
        Some("optional") => Gpu::Optional,
        Some("required") => Gpu::Required,
        Some(other) => {
            cx.err(
                raw.gpu.as_ref().and_then(span_of),
                "gpu",
                format!("{other:?} is not one of none, optional, required"),
            );
            Gpu::None
        }
    };
    let idle_stop = duration(
        &mut cx,
        &raw.idle_stop,
        "idle_stop",
        Duration::from_secs(900),
    );
    let start_timeout = duration(
        &mut cx,
        &raw.start_timeout,
        "start_timeout",
        Duration::from_secs(120),
    );

    let mut secrets = Vec::new();
    for s in &raw.secrets {
        if !valid_secret_name(s.get_ref()) {
            cx.err(
                span_of(s),
                "secrets",
                format!("{:?} is not a valid secret name ([a-z0-9_]+)", s.get_ref()),
            );
        } else if secrets.contains(s.get_ref()) {
            cx.err(
                span_of(s),
                "secrets",
                format!("secret {:?} listed twice", s.get_ref()),
            );
        } else {
            secrets.push(s.get_ref().clone());
        }
    }

    let mut uses = Vec::new();
    for u in &raw.uses {
        if u.get_ref() == &name {
            cx.err(span_of(u), "uses", "a service cannot use itself");
        } else {
            uses.push(u.get_ref().clone());
            spans
                .uses
                .push((u.get_ref().clone(), Some(cx.loc(u.span()))));
        }
    }

    if raw.containers.is_empty() {
        cx.err(
            span_of(&raw.name),
            "containers",
            "a service needs at least one [[containers]] entry",
        );
    }
    let mut containers = Vec::new();
    let mut container_ports: HashMap<u16, String> = HashMap::new();
    let mut port_names = BTreeSet::new();
    for (i, rc) in raw.containers.iter().enumerate() {
        let field = format!("containers[{i}]");
        if let Some(c) = container(
            &mut cx,
            &field,
            rc.get_ref(),
            &secrets,
            policy,
            &mut spans,
            &mut container_ports,
            &mut port_names,
        ) {
            if containers.iter().any(|o: &Container| o.name == c.name) {
                cx.err(
                    span_of(&rc.get_ref().name),
                    format!("{field}.name"),
                    format!("container {:?} defined twice", c.name),
                );
            }
            containers.push(c);
        }
    }
    if raw.containers.len() > 1 {
        for (i, rc) in raw.containers.iter().enumerate() {
            if let Some(v) = &rc.get_ref().shm_size {
                cx.err(
                    span_of(v),
                    format!("containers[{i}].shm_size"),
                    "shm_size needs a service of one container: the containers of a pod share \
                     the pod's /dev/shm, which Podman 3.4 cannot size",
                );
            }
        }
    }
    // Every `after` names a sibling; order containers so each follows what it names.
    for (i, rc) in raw.containers.iter().enumerate() {
        for a in &rc.get_ref().after {
            if !containers.iter().any(|c| &c.name == a.get_ref()) {
                cx.err(
                    span_of(a),
                    format!("containers[{i}].after"),
                    format!("no container named {:?} in this service", a.get_ref()),
                );
            } else if a.get_ref() == rc.get_ref().name.get_ref() {
                cx.err(
                    span_of(a),
                    format!("containers[{i}].after"),
                    "a container cannot come after itself",
                );
            }
        }
    }
    let containers = if cx.diags.len() == before {
        match order_containers(containers) {
            Ok(c) => c,
            Err(cycle) => {
                cx.err(
                    raw.containers.first().map(|c| c.span()),
                    "containers.after",
                    format!("start order has a cycle: {}", cycle.join(" → ")),
                );
                Vec::new()
            }
        }
    } else {
        containers
    };

    let probe = raw.probe.as_ref().and_then(|rp| {
        let p = rp.get_ref();
        let port = containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .find(|x| &x.name == p.port.get_ref())
            .map(|x| x.host);
        if port.is_none() {
            cx.err(
                span_of(&p.port),
                "probe.port",
                format!("no port named {:?} in this service", p.port.get_ref()),
            );
        }
        if let Some(path) = &p.path {
            if !path.get_ref().starts_with('/')
                || path
                    .get_ref()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                cx.err(
                    span_of(path),
                    "probe.path",
                    "must start with / and contain no spaces",
                );
            }
        }
        let interval = duration(
            &mut cx,
            &p.interval,
            "probe.interval",
            Duration::from_secs(15),
        );
        let timeout = duration(&mut cx, &p.timeout, "probe.timeout", Duration::from_secs(5));
        port.map(|port| Probe {
            port,
            path: p.path.as_ref().map(|x| x.get_ref().clone()),
            interval,
            timeout,
        })
    });

    let backup = match raw.backup.as_ref() {
        None => BackupMode::default(),
        Some(b) => backup_mode(&mut cx, b, &containers),
    };

    if diags.len() > before {
        return None;
    }
    Some((
        Service {
            probe,
            backup,
            name,
            description,
            homepage: raw.homepage,
            on_demand: raw.on_demand,
            idle_stop,
            uses,
            shared: raw.shared,
            gpu,
            secrets,
            start_timeout,
            containers,
            origin: Origin {
                file: src.path.clone(),
                layer: src.layer,
                line: src.line_col(raw.name.span().start).0,
            },
            patched: Vec::new(),
            policy_set: Vec::new(),
            refused: None,
        },
        spans,
    ))
}

/// `[backup]`: `mode = "stop" | "live" | "command"`; `command` needs `container` (one of the
/// service's) and a non-empty `command`, which the other modes do not take.
fn backup_mode(
    cx: &mut Ctx<'_>,
    b: &Spanned<crate::catalog::raw::RawBackup>,
    containers: &[Container],
) -> BackupMode {
    let raw = b.get_ref();
    let mode = raw.mode.get_ref().as_str();
    let extra = raw.container.is_some() || !raw.command.is_empty();
    match mode {
        "stop" | "live" if extra => {
            cx.err(
                span_of(&raw.mode),
                "backup.mode",
                format!("{mode:?} takes no container or command (only mode = \"command\" does)"),
            );
            BackupMode::default()
        }
        "stop" => BackupMode::Stop,
        "live" => BackupMode::Live,
        "command" => {
            let Some(c) = raw.container.as_ref() else {
                cx.err(
                    span_of(&raw.mode),
                    "backup.container",
                    "mode = \"command\" needs the container to run it in",
                );
                return BackupMode::default();
            };
            if !containers.iter().any(|x| x.name == *c.get_ref()) {
                cx.err(
                    span_of(c),
                    "backup.container",
                    format!("{:?} is not a container of this service", c.get_ref()),
                );
            }
            if raw.command.is_empty() {
                cx.err(
                    span_of(&raw.mode),
                    "backup.command",
                    "mode = \"command\" needs a command",
                );
            }
            BackupMode::Command {
                container: c.get_ref().clone(),
                command: raw.command.clone(),
            }
        }
        other => {
            cx.err(
                span_of(&raw.mode),
                "backup.mode",
                format!("{other:?} is not one of stop, live, command"),
            );
            BackupMode::default()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn container(
    cx: &mut Ctx<'_>,
    field: &str,
    rc: &RawContainer,
    secrets: &[String],
    policy: &Policy,
    spans: &mut ServiceSpans,
    container_ports: &mut HashMap<u16, String>,
    port_names: &mut BTreeSet<String>,
) -> Option<Container> {
    let before = cx.diags.len();
    let name = rc.name.get_ref().clone();
    if !valid_name(&name) {
        cx.err(
            span_of(&rc.name),
            format!("{field}.name"),
            format!("{name:?} is not a valid container name ([a-z][a-z0-9-]*)"),
        );
    }
    if let Err(e) = check_image(rc.image.get_ref()) {
        cx.err(span_of(&rc.image), format!("{field}.image"), e);
    }
    let mut env = BTreeMap::new();
    for (k, v) in &rc.env {
        if !valid_env_name(k) {
            cx.err(
                span_of(v),
                format!("{field}.env.{k}"),
                format!("{k:?} is not a valid variable name"),
            );
        }
        check_secret_refs(cx, v, &format!("{field}.env.{k}"), secrets);
        env.insert(k.clone(), v.get_ref().clone());
    }
    let mut cap_add = Vec::new();
    if let Some(caps) = &rc.cap_add {
        for c in caps.get_ref() {
            let norm = c.trim_start_matches("CAP_").to_ascii_uppercase();
            if !CAPS.contains(&norm.as_str()) {
                cx.err(
                    span_of(caps),
                    format!("{field}.cap_add"),
                    format!("unknown capability {c:?}"),
                );
            } else if norm == "SYS_ADMIN" {
                cx.err(
                    span_of(caps),
                    format!("{field}.cap_add"),
                    "SYS_ADMIN is not allowed: it amounts to --privileged",
                );
            } else {
                cap_add.push(norm);
            }
        }
        if !caps.get_ref().is_empty()
            && rc
                .cap_add_reason
                .as_deref()
                .is_none_or(|r| r.trim().is_empty())
        {
            cx.err(
                span_of(caps),
                format!("{field}.cap_add_reason"),
                "cap_add needs cap_add_reason saying why the image needs these capabilities",
            );
        }
    }
    let no_new_privileges = rc.no_new_privileges.as_ref().is_none_or(|b| *b.get_ref());
    if !no_new_privileges
        && rc
            .privileges_reason
            .as_deref()
            .is_none_or(|r| r.trim().is_empty())
    {
        cx.err(
            rc.no_new_privileges.as_ref().and_then(span_of),
            format!("{field}.privileges_reason"),
            "no_new_privileges = false needs privileges_reason",
        );
    }
    let mut tmpfs = Vec::new();
    for t in &rc.tmpfs {
        if !normal_absolute(t.get_ref()) {
            cx.err(
                span_of(t),
                format!("{field}.tmpfs"),
                format!("{:?} must be an absolute path", t.get_ref()),
            );
        }
        tmpfs.push(t.get_ref().clone());
    }
    let shm_size = rc
        .shm_size
        .as_ref()
        .and_then(|v| match parse_size(v.get_ref()) {
            Ok(n) if (SHM_MIN..=SHM_MAX).contains(&n) => Some(n),
            Ok(_) => {
                cx.err(
                    span_of(v),
                    format!("{field}.shm_size"),
                    format!("{:?} is outside 1m..=16g", v.get_ref()),
                );
                None
            }
            Err(e) => {
                cx.err(span_of(v), format!("{field}.shm_size"), e);
                None
            }
        });

    let mut ports = Vec::new();
    for (j, rp) in rc.ports.iter().enumerate() {
        let pf = format!("{field}.ports[{j}]");
        let p = rp.get_ref();
        let pname = p.name.get_ref().clone();
        if !valid_name(&pname) {
            cx.err(
                span_of(&p.name),
                format!("{pf}.name"),
                format!("{pname:?} is not a valid port name"),
            );
        } else if !port_names.insert(pname.clone()) {
            cx.err(
                span_of(&p.name),
                format!("{pf}.name"),
                format!("port name {pname:?} used twice in this service"),
            );
        }
        let host = *p.host.get_ref();
        let host_ok = host >= i64::from(policy.port_min) && host <= i64::from(policy.port_max);
        if !host_ok {
            cx.err(
                span_of(&p.host),
                format!("{pf}.host"),
                format!(
                    "port {host} is outside the allowed range {}..={}{}",
                    policy.port_min,
                    policy.port_max,
                    if host < 1024 {
                        " (privileged ports are not allowed)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let cport = *p.container.get_ref();
        let cport_ok = (1..=65535).contains(&cport);
        if !cport_ok {
            cx.err(
                span_of(&p.container),
                format!("{pf}.container"),
                format!("port {cport} is not in 1..=65535"),
            );
        }
        if host_ok && cport_ok {
            let (host, cport) = (host as u16, cport as u16);
            if let Some(other) = container_ports.insert(cport, name.clone()) {
                cx.err(
                    span_of(&p.container),
                    format!("{pf}.container"),
                    format!("container port {cport} is already used by container {other:?} of this service (they share one network namespace)"),
                );
            }
            spans
                .ports
                .push((host, pname.clone(), Some(cx.loc(p.host.span()))));
            ports.push(Port {
                name: pname,
                host,
                container: cport,
            });
        }
    }

    let mut volumes = Vec::new();
    let mut targets = BTreeSet::new();
    for (j, rv) in rc.volumes.iter().enumerate() {
        let vf = format!("{field}.volumes[{j}]");
        let v = rv.get_ref();
        if !normal_absolute(v.target.get_ref()) {
            cx.err(
                span_of(&v.target),
                format!("{vf}.target"),
                format!(
                    "{:?} must be an absolute path without . or ..",
                    v.target.get_ref()
                ),
            );
        }
        if !targets.insert(v.target.get_ref().clone()) {
            cx.err(
                span_of(&v.target),
                format!("{vf}.target"),
                "two mounts at the same target",
            );
        }
        let source = match (&v.name, &v.host) {
            (Some(n), None) => {
                if !valid_name(n.get_ref()) {
                    cx.err(
                        span_of(n),
                        format!("{vf}.name"),
                        format!("{:?} is not a valid volume name", n.get_ref()),
                    );
                }
                VolumeSource::Named(n.get_ref().clone())
            }
            (None, Some(h)) => {
                let hp = h.get_ref();
                if !normal_absolute(hp) {
                    cx.err(
                        span_of(h),
                        format!("{vf}.host"),
                        format!("{hp:?} must be an absolute path without . or .."),
                    );
                } else if !policy
                    .allowed_host_paths
                    .iter()
                    .any(|a| Path::new(hp).starts_with(a))
                {
                    cx.err(
                        span_of(h),
                        format!("{vf}.host"),
                        format!(
                            "host path {hp:?} is not allowed by policy (allowed: {})",
                            policy
                                .allowed_host_paths
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                VolumeSource::Host(PathBuf::from(hp))
            }
            _ => {
                cx.err(
                    Some(rv.span()),
                    &vf,
                    "a volume needs exactly one of `name` (Podman volume) or `host` (host path)",
                );
                continue;
            }
        };
        volumes.push(Volume {
            source,
            target: v.target.get_ref().clone(),
            read_only: v.read_only,
        });
    }
    let mut files = Vec::new();
    for (j, rf) in rc.files.iter().enumerate() {
        let ff = format!("{field}.files[{j}]");
        let f = rf.get_ref();
        if !normal_absolute(f.target.get_ref()) {
            cx.err(
                span_of(&f.target),
                format!("{ff}.target"),
                "must be an absolute path without . or ..",
            );
        }
        if !targets.insert(f.target.get_ref().clone()) {
            cx.err(
                span_of(&f.target),
                format!("{ff}.target"),
                "two mounts at the same target",
            );
        }
        check_secret_refs(cx, &f.content, &format!("{ff}.content"), secrets);
        files.push(FileMount {
            target: f.target.get_ref().clone(),
            content: f.content.get_ref().clone(),
        });
    }

    let health = rc.health.as_ref().map(|rh| {
        let h = rh.get_ref();
        if h.cmd.get_ref().trim().is_empty() {
            cx.err(
                span_of(&h.cmd),
                format!("{field}.health.cmd"),
                "must not be empty",
            );
        }
        let retries = match &h.retries {
            None => 3,
            Some(r) if (1..=100).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                cx.err(
                    span_of(r),
                    format!("{field}.health.retries"),
                    "must be in 1..=100",
                );
                3
            }
        };
        Health {
            cmd: h.cmd.get_ref().clone(),
            interval: duration(
                cx,
                &h.interval,
                &format!("{field}.health.interval"),
                Duration::from_secs(30),
            ),
            timeout: duration(
                cx,
                &h.timeout,
                &format!("{field}.health.timeout"),
                Duration::from_secs(5),
            ),
            retries,
            start_period: duration(
                cx,
                &h.start_period,
                &format!("{field}.health.start_period"),
                Duration::from_secs(60),
            ),
        }
    });

    let memory = rc.memory.as_ref().and_then(|m| {
        let f = format!("{field}.memory");
        memory_size(cx, m, &f)
    });
    let cpus = rc.cpus.as_ref().and_then(|c| {
        let f = format!("{field}.cpus");
        cpu_count(cx, c, &f)
    });

    if cx.diags.len() > before {
        return None;
    }
    Some(Container {
        memory,
        cpus,
        name,
        image: rc.image.get_ref().clone(),
        command: rc.command.clone(),
        entrypoint: rc.entrypoint.clone(),
        user: rc.user.clone(),
        after: rc.after.iter().map(|a| a.get_ref().clone()).collect(),
        env,
        cap_add,
        read_only: rc.read_only,
        init: rc.init,
        tmpfs,
        shm_size,
        no_new_privileges,
        ports,
        volumes,
        files,
        health,
    })
}

/// Bounds of memory limits: Podman refuses less than 6 MiB.
const MEMORY_MIN: u64 = 6 * MIB;
const MEMORY_MAX: u64 = 4096 * 1024 * MIB;

fn memory_size(cx: &mut Ctx<'_>, v: &Spanned<String>, field: &str) -> Option<u64> {
    match parse_size(v.get_ref()) {
        Ok(n) if (MEMORY_MIN..=MEMORY_MAX).contains(&n) => Some(n),
        Ok(_) => {
            cx.err(span_of(v), field, "must be in 6m..=4096g");
            None
        }
        Err(e) => {
            cx.err(span_of(v), field, e);
            None
        }
    }
}

fn cpu_count(cx: &mut Ctx<'_>, v: &Spanned<f64>, field: &str) -> Option<f64> {
    let n = *v.get_ref();
    if (0.01..=1024.0).contains(&n) {
        Some(n)
    } else {
        cx.err(span_of(v), field, "must be a number of CPUs in 0.01..=1024");
        None
    }
}

fn check_secret_refs(cx: &mut Ctx<'_>, v: &Spanned<String>, field: &str, secrets: &[String]) {
    match secret_refs(v.get_ref()) {
        Err(e) => cx.err(span_of(v), field, e),
        Ok(refs) => {
            for r in refs {
                if !secrets.iter().any(|s| s == r) {
                    cx.err(
                        span_of(v),
                        field,
                        format!("secret {r:?} is not listed in this service's `secrets`"),
                    );
                }
            }
        }
    }
}

/// Topological order by `after`, stable with respect to file order. `Err` names a cycle.
fn order_containers(mut pending: Vec<Container>) -> Result<Vec<Container>, Vec<String>> {
    let mut done: Vec<Container> = Vec::new();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|c| c.after.iter().all(|a| done.iter().any(|d| &d.name == a)));
        match ready {
            Some(i) => done.push(pending.remove(i)),
            None => return Err(pending.iter().map(|c| c.name.clone()).collect()),
        }
    }
    Ok(done)
}

/// Checks across the layered catalog, between services: port clashes (blamed on the service of the later layer, `order`
/// being the services in layer order), unknown `uses`, cycles.
pub fn across(
    services: &BTreeMap<String, Service>,
    spans: &BTreeMap<String, ServiceSpans>,
    order: &[String],
    diags: &mut Vec<Diagnostic>,
) {
    let mut owners: BTreeMap<u16, (String, String, Option<Loc>)> = BTreeMap::new();
    for (name, sp) in order.iter().filter_map(|n| spans.get(n).map(|sp| (n, sp))) {
        for (port, pname, loc) in &sp.ports {
            if let Some((other, opname, oloc)) = owners.get(port) {
                let at = oloc
                    .as_ref()
                    .map(|l| format!(" ({}:{}:{})", l.file.display(), l.line, l.col))
                    .unwrap_or_default();
                diags.push(Diagnostic::at(
                    loc.as_ref(),
                    &services[name].origin,
                    format!("ports.{pname}.host"),
                    format!(
                        "port {port} is already taken by service {other:?} port {opname:?}{at}"
                    ),
                ));
            } else {
                owners.insert(*port, (name.clone(), pname.clone(), loc.clone()));
            }
        }
        for (u, loc) in &sp.uses {
            if !services.contains_key(u) {
                diags.push(Diagnostic::at(
                    loc.as_ref(),
                    &services[name].origin,
                    "uses",
                    format!("unknown service {u:?}"),
                ));
            }
        }
    }
    // Inside a consumer's network namespace berth listens on each used service's stable port:
    // the consumer's own containers must not listen there too.
    for (name, svc) in services {
        for used in &svc.uses {
            let Some(u) = services.get(used) else {
                continue;
            };
            for up in u.ports() {
                for (ci, ctr) in svc.containers.iter().enumerate() {
                    for (pi, own) in ctr.ports.iter().enumerate() {
                        if own.container == up.host {
                            let loc = spans
                                .get(name)
                                .and_then(|sp| {
                                    sp.ports
                                        .iter()
                                        .find(|(h, n, _)| *h == own.host && n == &own.name)
                                })
                                .and_then(|(_, _, l)| l.clone());
                            diags.push(Diagnostic::at(
                                loc.as_ref(),
                                &svc.origin,
                                format!("containers[{ci}].ports[{pi}].container"),
                                format!(
                                    "container port {} clashes with port {:?} of service {used:?} ({}), which this service uses: berth listens on 127.0.0.1:{} inside its containers for it",
                                    own.container, up.name, u.origin.file.display(), up.host
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(cycle) = uses_cycle(services) {
        let first = &services[&cycle[0]];
        let loc = spans
            .get(&cycle[0])
            .and_then(|s| s.uses.first())
            .and_then(|u| u.1.clone());
        diags.push(Diagnostic::at(
            loc.as_ref(),
            &first.origin,
            "uses",
            format!("services use each other in a cycle: {}", cycle.join(" → ")),
        ));
    }
}

/// Where a container reaches a service it uses: its own loopback, where berth listens for it
/// on the used service's stable port and relays to that service (the same URL as on the
/// desktop).
pub const USED_SERVICE_HOST: &str = "127.0.0.1";

const SERVICE_PREFIX: &str = "${service.";

/// Replaces `${service.NAME.url}` (the service's first port) and `${service.NAME.PORT.url}` in
/// env values with the stable URL of that service as a container reaches it, or with the
/// cloud's URL for a service in `remote` (the policy's `[remote_services]`). The service must
/// be listed in `uses`.
pub fn resolve_service_refs(
    services: &mut BTreeMap<String, Service>,
    remote: &BTreeMap<String, super::model::RemoteService>,
    diags: &mut Vec<Diagnostic>,
) {
    let ports: BTreeMap<String, Vec<(String, u16)>> = services
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.ports().map(|p| (p.name.clone(), p.host)).collect(),
            )
        })
        .collect();
    for svc in services.values_mut() {
        let (name, file, uses) = (svc.name.clone(), svc.origin.clone(), svc.uses.clone());
        for (ci, ctr) in svc.containers.iter_mut().enumerate() {
            for (key, value) in ctr.env.iter_mut() {
                let mut out = String::new();
                let mut rest = value.as_str();
                while let Some(i) = rest.find(SERVICE_PREFIX) {
                    out.push_str(&rest[..i]);
                    let after = &rest[i + SERVICE_PREFIX.len()..];
                    let Some(end) = after.find('}') else {
                        diags.push(Diagnostic::at(
                            None,
                            &file,
                            format!("containers[{ci}].env.{key}"),
                            "unterminated ${service.…} reference".into(),
                        ));
                        break;
                    };
                    let parts: Vec<&str> = after[..end].split('.').collect();
                    let resolved = match parts.as_slice() {
                        [other, "url"] | [other, _, "url"] if !uses.iter().any(|u| u == other) => {
                            Err(format!("refers to service {other:?}, which is not in this service's `uses`"))
                        }
                        [other, "url"] => ports.get(*other).and_then(|p| p.first()).map(|p| p.1).ok_or(format!("service {other:?} has no port")),
                        [other, port, "url"] => ports
                            .get(*other)
                            .and_then(|p| p.iter().find(|(n, _)| n == port))
                            .map(|p| p.1)
                            .ok_or(format!("service {other:?} has no port named {port:?}")),
                        _ => Err(format!("${{service.{}}} is not a known reference (use ${{service.NAME.url}} or ${{service.NAME.PORT.url}})", &after[..end])),
                    };
                    let cloud = match parts.as_slice() {
                        [other, "url"] | [other, _, "url"] if resolved.is_ok() => {
                            remote.get(*other)
                        }
                        _ => None,
                    };
                    match resolved {
                        Ok(_) if cloud.is_some() => {
                            out.push_str(&cloud.map_or_else(String::new, |r| r.url.clone()))
                        }
                        Ok(port) => out.push_str(&format!("http://{USED_SERVICE_HOST}:{port}")),
                        Err(e) => diags.push(Diagnostic::at(
                            None,
                            &file,
                            format!("containers[{ci}].env.{key}"),
                            format!("{e} (in service {name:?})"),
                        )),
                    }
                    rest = &after[end + 1..];
                }
                out.push_str(rest);
                *value = out;
            }
        }
    }
}

/// A cycle in `uses`, as the list of services along it (first repeated at the end).
pub fn uses_cycle(services: &BTreeMap<String, Service>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        n: &str,
        services: &BTreeMap<String, Service>,
        marks: &mut HashMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Active => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c: Vec<String> = stack[start..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            Mark::New => {}
        }
        marks.insert(n.to_string(), Mark::Active);
        stack.push(n.to_string());
        if let Some(s) = services.get(n) {
            for u in &s.uses {
                if let Some(c) = visit(u, services, marks, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for n in services.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, services, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Validates `/etc/berth/policy.toml`.
pub fn policy(src: &Source, raw: RawPolicy, diags: &mut Vec<Diagnostic>) -> Policy {
    let mut cx = Ctx { src, diags };
    // Without the key the default (`/shared`) holds, as without a policy file; a list, even an
    // empty one, replaces it.
    let mut p = Policy::default();
    if raw.allowed_host_paths.is_some() {
        p.allowed_host_paths.clear();
    }
    for h in raw.allowed_host_paths.iter().flat_map(|l| l.get_ref()) {
        if !normal_absolute(h.get_ref()) || h.get_ref() == "/" {
            cx.err(
                span_of(h),
                "allowed_host_paths",
                format!("{:?} must be an absolute path below /", h.get_ref()),
            );
        } else {
            p.allowed_host_paths.push(PathBuf::from(h.get_ref()));
        }
    }
    for (v, field, slot) in [
        (&raw.port_min, "port_min", &mut p.port_min),
        (&raw.port_max, "port_max", &mut p.port_max),
    ] {
        if let Some(v) = v {
            if (1024..=65535).contains(v.get_ref()) {
                *slot = *v.get_ref() as u16;
            } else {
                cx.err(span_of(v), field, "must be in 1024..=65535");
            }
        }
    }
    if p.port_min > p.port_max {
        cx.err(
            raw.port_min.as_ref().and_then(span_of),
            "port_min",
            "must not exceed port_max",
        );
    }
    p.denied_services = raw
        .denied_services
        .iter()
        .map(|s| s.get_ref().clone())
        .collect();
    p.default_enabled = raw
        .default_enabled
        .iter()
        .map(|s| s.get_ref().clone())
        .collect();

    let mut rule = |cx: &Ctx<'_>, name: &str, span: Range<usize>| {
        let line = cx.src.line_col(span.start).0;
        p.rules.insert(
            name.to_string(),
            super::model::RuleLoc {
                file: cx.src.path.clone(),
                line,
            },
        );
    };
    if let Some(list) = &raw.allowed_host_paths {
        rule(&cx, "allowed_host_paths", list.span());
    }
    for (name, list) in [
        ("denied_services", &raw.denied_services),
        ("default_enabled", &raw.default_enabled),
        ("required_services", &raw.required_services),
        ("on_demand", &raw.on_demand),
    ] {
        if let Some(first) = list.first() {
            rule(&cx, name, first.span());
        }
    }
    for (name, v) in [("port_min", &raw.port_min), ("port_max", &raw.port_max)] {
        if let Some(v) = v {
            rule(&cx, name, v.span());
        }
    }
    if let Some(list) = &raw.allowed_images {
        rule(&cx, "allowed_images", list.span());
        for pat in list.get_ref() {
            let t = pat.get_ref();
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                cx.err(
                    span_of(pat),
                    "allowed_images",
                    format!("{t:?} must be an image pattern without spaces (`*` matches anything)"),
                );
            } else {
                p.allowed_images.push(t.clone());
            }
        }
        if list.get_ref().is_empty() {
            cx.err(
                span_of(list),
                "allowed_images",
                "an empty list would refuse every image; leave the key out to allow every image",
            );
        }
    }
    if let Some(u) = &raw.user_catalogs {
        rule(&cx, "user_catalogs", u.span());
        p.user_catalogs = *u.get_ref();
    }
    let names_ok = |cx: &mut Ctx<'_>, field: &str, list: &[Spanned<String>]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in list {
            if !valid_name(n.get_ref()) {
                cx.err(
                    span_of(n),
                    field,
                    format!("{:?} is not a service name", n.get_ref()),
                );
            } else if !out.contains(n.get_ref()) {
                out.push(n.get_ref().clone());
            }
        }
        out
    };
    p.required_services = names_ok(&mut cx, "required_services", &raw.required_services);
    p.on_demand = names_ok(&mut cx, "on_demand", &raw.on_demand);
    for r in &raw.required_services {
        if p.denied_services.contains(r.get_ref()) {
            cx.err(
                span_of(r),
                "required_services",
                format!(
                    "{:?} is also in denied_services: a service cannot be both",
                    r.get_ref()
                ),
            );
        }
    }
    if let Some(l) = &raw.limits {
        let l = l.get_ref();
        for (name, v, slot) in [
            (
                "limits.container_memory",
                &l.container_memory,
                &mut p.limits.container_memory,
            ),
            (
                "limits.user_memory",
                &l.user_memory,
                &mut p.limits.user_memory,
            ),
        ] {
            if let Some(v) = v {
                rule(&cx, name, v.span());
                *slot = memory_size(&mut cx, v, name);
            }
        }
        for (name, v, slot) in [
            (
                "limits.container_cpus",
                &l.container_cpus,
                &mut p.limits.container_cpus,
            ),
            ("limits.user_cpus", &l.user_cpus, &mut p.limits.user_cpus),
        ] {
            if let Some(v) = v {
                rule(&cx, name, v.span());
                *slot = cpu_count(&mut cx, v, name);
            }
        }
    }
    for (name, entry) in &raw.remote_services {
        let field = format!("remote_services.{name}");
        let line = cx.src.line_col(entry.span().start).0;
        p.rules.insert(
            field.clone(),
            super::model::RuleLoc {
                file: cx.src.path.clone(),
                line,
            },
        );
        if !valid_name(name) {
            cx.err(
                span_of(entry),
                &field,
                format!("{name:?} is not a service name"),
            );
            continue;
        }
        let r = entry.get_ref();
        let url = match remote_url(r.url.get_ref()) {
            Ok(u) => u,
            Err(e) => {
                cx.err(span_of(&r.url), format!("{field}.url"), e);
                continue;
            }
        };
        let path = r.health_path.as_ref().map_or("/", |h| h.get_ref().as_str());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let span = r.health_path.as_ref().and_then(span_of);
            cx.err(
                span,
                format!("{field}.health_path"),
                format!("{path:?} must be a path starting with /"),
            );
            continue;
        }
        let check_interval = duration(
            &mut cx,
            &r.check_interval,
            &format!("{field}.check_interval"),
            REMOTE_CHECK_INTERVAL,
        );
        if check_interval < Duration::from_secs(1) {
            let span = r.check_interval.as_ref().and_then(span_of);
            cx.err(
                span,
                format!("{field}.check_interval"),
                "must be at least 1s",
            );
        }
        let ca_file = match &r.ca_file {
            Some(c) if !normal_absolute(c.get_ref()) => {
                cx.err(
                    span_of(c),
                    format!("{field}.ca_file"),
                    format!("{:?} must be an absolute path", c.get_ref()),
                );
                continue;
            }
            Some(c) => Some(PathBuf::from(c.get_ref())),
            None => None,
        };
        if p.required_services.contains(name) {
            cx.err(
                span_of(entry),
                &field,
                format!("{name:?} is also in required_services: a service the cloud provides does not run here"),
            );
        }
        let health_url = format!("{url}{path}");
        p.remote_services.insert(
            name.clone(),
            super::model::RemoteService {
                url,
                health_url,
                check_interval,
                ca_file,
            },
        );
    }
    if let Some(b) = &raw.backup {
        let line = cx.src.line_col(b.span().start).0;
        p.rules.insert(
            "backup".into(),
            super::model::RuleLoc {
                file: cx.src.path.clone(),
                line,
            },
        );
        let b = b.get_ref();
        let every = duration(
            &mut cx,
            &Some(b.every.clone()),
            "backup.every",
            Duration::ZERO,
        );
        if every < Duration::from_secs(1) {
            cx.err(
                span_of(&b.every),
                "backup.every",
                "must be at least 1s (\"24h\" is daily)",
            );
        }
        let keep = match &b.keep {
            None => DEFAULT_BACKUP_KEEP,
            Some(k) if (1..=1000).contains(k.get_ref()) => *k.get_ref() as usize,
            Some(k) => {
                cx.err(span_of(k), "backup.keep", "must be in 1..=1000");
                DEFAULT_BACKUP_KEEP
            }
        };
        p.backup = Some(super::model::BackupPolicy { every, keep });
    }
    p
}

/// Backups kept per service when the policy's `[backup]` does not say.
pub const DEFAULT_BACKUP_KEEP: usize = 7;

/// How often a service the cloud provides is checked when its entry does not say.
pub const REMOTE_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The base URL of a service the cloud provides, without a trailing `/`: `http` or `https`, a
/// host, no credentials (they would end up in containers' environments and `berth catalog
/// show`), no query or fragment.
fn remote_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?} must start with https:// or http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{u:?} names no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{u:?} carries credentials: the URL is given to containers and shown to users; give the service's key to it another way"
        ));
    }
    if u.chars().any(|c| {
        c.is_whitespace() || c.is_control() || c == '?' || c == '#' || c == '"' || c == '\\'
    }) {
        return Err(format!(
            "{u:?} must be a plain URL (no spaces, quotes, query or fragment)"
        ));
    }
    Ok(u.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn images() {
        assert!(check_image("docker.io/n8nio/n8n:1.64.3").is_ok());
        assert!(check_image("localhost/berth-demo:1").is_ok());
        assert!(check_image("registry.example:5000/a/b:v1").is_ok());
        assert!(check_image(&format!("quay.io/x/y@sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_image(&format!("quay.io/x/y:1.2@sha256:{}", "0f".repeat(32))).is_ok());
        let short =
            check_image(&format!("quay.io/x/y@sha256:{}", "a".repeat(63))).expect_err("63 digits");
        assert!(
            short.contains("64 lowercase hex digits, found 63"),
            "{short}"
        );
        assert!(check_image(&format!("quay.io/x/y@sha256:{}", "A".repeat(64))).is_err());
        assert!(check_image(&format!("quay.io/x/y@sha256:{}", "g".repeat(64))).is_err());
        assert!(check_image(&format!("quay.io/x/y@md5:{}", "a".repeat(64))).is_err());
        assert!(check_image(&format!("quay.io/X/y@sha256:{}", "a".repeat(64))).is_err());
        assert!(
            check_image(&format!("x/y@sha256:{}", "a".repeat(64))).is_err(),
            "registry"
        );
        assert!(is_pinned(&format!(
            "quay.io/x/y:1@sha256:{}",
            "a".repeat(64)
        )));
        assert!(!is_pinned("quay.io/x/y:1"));
        assert!(
            check_image("n8nio/n8n:1.0").is_err(),
            "registry is required"
        );
        assert!(
            check_image("docker.io/n8nio/n8n").is_err(),
            "tag is required"
        );
        assert!(check_image("docker.io/n8nio/n8n:latest").is_err());
        assert!(check_image("docker.io/N8N/n8n:1").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("open-webui"));
        assert!(!valid_name("Open"));
        assert!(!valid_name("a--b"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a-"));
        assert!(!valid_name(&"a".repeat(33)));
    }

    #[test]
    fn secrets_refs() {
        assert_eq!(
            secret_refs("a${secret.x}b${secret.y_2}"),
            Ok(vec!["x", "y_2"])
        );
        assert!(secret_refs("${secret.x").is_err());
    }
}
