//! Rendering systemd user units from a service (pure).
//!
//! Plain `podman run` units, no Quadlet: Ubuntu 22.04 ships Podman 3.4, which has none.
//! A single-container service is one unit, `berth-<svc>.service`. A service with several
//! containers is a pod: `berth-<svc>.service` owns the pod (and so the published ports) and
//! pulls in one unit per container, `berth-<svc>--<ctr>.service`, ordered by `after`; the
//! container units are bound to the pod unit, so starting or stopping `berth-<svc>.service`
//! starts or stops the whole service. `--` cannot occur in a valid name, so unit names of
//! different services never collide.
//!
//! Secrets never appear here: env values that use one go to a 0600 env file that the daemon
//! writes (see [`env_file`]), and the unit only names that file.

use std::fmt::Write as _;

use crate::catalog::{Container, Gpu, Service, VolumeSource};
use crate::gate;

/// Facts about the host that change what is rendered.
#[derive(Debug, Clone)]
pub struct RenderCtx {
    pub podman: String,
    /// The berth binary, for the hook that waits for the relays of a service that uses
    /// others (see [`relays_hook`]).
    pub berth: String,
    /// The daemon's API socket when it is not the usual one (`BERTH_SOCKET`), for that hook.
    pub api_socket: Option<String>,
    /// CDI devices for a service that wants a GPU (`nvidia.com/gpu=all`); none: no GPU.
    pub gpu_devices: Vec<String>,
    /// The GPUs behind them, for `berth info`, /metrics and the push report.
    pub gpus: Vec<berth_proto::GpuInfo>,
    /// `/shared` is mounted.
    pub shared_present: bool,
    /// Major version of the user's systemd; 0 when unknown. Newer versions get restart
    /// backoff (`RestartSteps=`, systemd 254+), older ones a fixed delay.
    pub systemd_version: u32,
}

impl RenderCtx {
    /// Whether a container can get a GPU here.
    pub fn gpu_available(&self) -> bool {
        !self.gpu_devices.is_empty()
    }
}

impl Default for RenderCtx {
    fn default() -> Self {
        RenderCtx {
            podman: "/usr/bin/podman".into(),
            berth: "/usr/local/bin/berth".into(),
            api_socket: None,
            gpu_devices: Vec::new(),
            gpus: Vec::new(),
            shared_present: false,
            systemd_version: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub name: String,
    pub content: String,
}

pub const PREFIX: &str = "berth-";
pub const LABEL_SERVICE: &str = "io.berth.service";
pub const LABEL_CONTAINER: &str = "io.berth.container";
pub const LABEL_UNIT: &str = "io.berth.unit";

/// The unit that starts and stops the whole service.
pub fn main_unit(service: &str) -> String {
    format!("{PREFIX}{service}.service")
}

/// The service a berth unit belongs to, if `unit` is one of berth's.
pub fn service_of_unit(unit: &str) -> Option<&str> {
    let stem = unit.strip_prefix(PREFIX)?.strip_suffix(".service")?;
    Some(stem.split_once("--").map_or(stem, |(s, _)| s))
}

pub fn container_unit(svc: &Service, ctr: &Container) -> String {
    if svc.is_pod() {
        format!("{PREFIX}{}--{}.service", svc.name, ctr.name)
    } else {
        main_unit(&svc.name)
    }
}

pub fn container_name(svc: &Service, ctr: &Container) -> String {
    container_unit(svc, ctr)
        .trim_end_matches(".service")
        .to_string()
}

pub fn pod_name(svc: &Service) -> String {
    format!("{PREFIX}{}", svc.name)
}

pub fn volume_name(svc: &Service, volume: &str) -> String {
    format!("{PREFIX}{}-{volume}", svc.name)
}

/// Directory (relative to the home directory) holding a service's generated files.
pub fn service_dir_rel(service: &str) -> String {
    format!(".local/share/berth/services/{service}")
}

/// Home-relative path of a container's secret env file, if it needs one.
pub fn env_file(svc: &Service, ctr: &Container) -> Option<String> {
    ctr.uses_secrets()
        .then(|| format!("{}/env/{}.env", service_dir_rel(&svc.name), ctr.name))
}

/// Home-relative path of a container's log file (Podman's k8s-file driver). It outlives the
/// container, so the reason of a crash can quote its last lines.
pub fn log_file(svc: &Service, ctr: &Container) -> String {
    format!("{}/logs/{}.log", service_dir_rel(&svc.name), ctr.name)
}

/// Home-relative path of the `index`th file mount of a container.
pub fn file_mount_path(svc: &Service, ctr: &Container, index: usize) -> String {
    format!("{}/files/{}/{index}", service_dir_rel(&svc.name), ctr.name)
}

/// One argument of an Exec line.
enum Arg {
    /// Written as is; may use systemd specifiers such as `%t`.
    Raw(String),
    /// Quoted and escaped so systemd passes it through unchanged.
    Lit(String),
}

fn raw(s: impl Into<String>) -> Arg {
    Arg::Raw(s.into())
}
fn lit(s: impl Into<String>) -> Arg {
    Arg::Lit(s.into())
}

/// Quotes a literal for an Exec line: systemd expands `%` specifiers and `$` variables and
/// splits on whitespace, so those are escaped.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@+".contains(&b));
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn exec(args: &[Arg]) -> String {
    let parts: Vec<String> = args
        .iter()
        .map(|a| match a {
            Arg::Raw(s) => s.clone(),
            Arg::Lit(s) => quote(s),
        })
        .collect();
    parts.join(" ")
}

/// A byte count as Podman's size syntax, in the largest binary unit that is exact.
fn size_arg(n: u64) -> String {
    const K: u64 = 1024;
    match n {
        n if n.is_multiple_of(K * K * K) => format!("{}g", n / (K * K * K)),
        n if n.is_multiple_of(K * K) => format!("{}m", n / (K * K)),
        n => format!("{}k", n.div_ceil(K)),
    }
}

/// CPUs as a whole percentage of one CPU, for `CPUQuota=` (at least 1%).
fn cpu_percent(c: f64) -> u64 {
    // Bounded by validation to 0.01..=1024 CPUs.
    ((c * 100.0).round() as u64).max(1)
}

/// CPUs for `--cpus`: at most two decimals, no trailing zeros.
fn cpus_arg(c: f64) -> String {
    let s = format!("{:.2}", (c * 100.0).round() / 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// Restart policy shared by pod and container units: bounded by the start limit in the
/// [Unit] section (5 starts in 5 minutes, then the unit stays failed until someone acts).
fn restart_policy(out: &mut String, ctx: &RenderCtx) {
    let _ = writeln!(out, "Restart=on-failure\nRestartSec=5");
    if ctx.systemd_version >= 254 {
        let _ = writeln!(out, "RestartSteps=4\nRestartMaxDelaySec=60");
    }
}

fn header(out: &mut String, svc: &Service, what: &str) {
    let mut patches: Vec<String> = svc
        .patched
        .iter()
        .map(|p| p.file.display().to_string())
        .collect();
    patches.dedup();
    let patched = if patches.is_empty() {
        String::new()
    } else {
        format!(" patched by {}", patches.join(", "))
    };
    let _ = writeln!(
        out,
        "# Generated by berth from {}{patched}; edits are overwritten.",
        svc.origin.file.display()
    );
    let _ = writeln!(out, "[Unit]");
    let _ = writeln!(
        out,
        "Description=berth: {}{what}",
        svc.description.replace('%', "%%")
    );
    if let Some(h) = &svc.homepage {
        if h.starts_with("http://") || h.starts_with("https://") {
            let _ = writeln!(out, "Documentation={}", h.replace('%', "%%"));
        }
    }
    let _ = writeln!(out, "X-Berth-Service={}", svc.name);
}

/// Units of the services this one uses: started first when both are wanted.
fn uses_after(svc: &Service) -> Vec<String> {
    svc.uses.iter().map(|u| main_unit(u)).collect()
}

fn labels(svc: &Service, unit: &str, ctr: Option<&Container>) -> Vec<Arg> {
    let mut v = vec![
        raw("--label"),
        lit(format!("{LABEL_SERVICE}={}", svc.name)),
        raw("--label"),
        lit(format!("{LABEL_UNIT}={unit}")),
    ];
    if let Some(c) = ctr {
        v.push(raw("--label"));
        v.push(lit(format!("{LABEL_CONTAINER}={}", c.name)));
    }
    v
}

/// Before a container of a service that uses others starts, berth must listen inside the
/// pod's network namespace on each used service's stable port: the application may connect
/// once, at its start. This hook asks the daemon for that and returns when the listeners are
/// there (bounded by the unit's start timeout); without berth it fails, and the unit with it.
fn relays_hook(svc: &Service, ctx: &RenderCtx) -> Option<String> {
    (!svc.uses.is_empty()).then(|| {
        let mut args = vec![raw(&ctx.berth), raw("relays-ready")];
        if let Some(socket) = &ctx.api_socket {
            args.push(raw("--socket"));
            args.push(lit(socket));
        }
        args.push(lit(&svc.name));
        exec(&args)
    })
}

/// Publishes container ports on random loopback ports: the stable port belongs to berth's
/// proxy, which forwards to whatever Podman picked.
fn port_args(ports: impl Iterator<Item = (u16, u16)>) -> Vec<Arg> {
    ports
        .flat_map(|(_stable, ctr)| [raw("-p"), lit(format!("127.0.0.1::{ctr}"))])
        .collect()
}

/// Renders every unit of a service, the main unit first.
pub fn render(svc: &Service, ctx: &RenderCtx) -> Vec<UnitFile> {
    if svc.is_pod() {
        let mut v = vec![render_pod(svc, ctx)];
        v.extend(svc.containers.iter().map(|c| render_container(svc, c, ctx)));
        v
    } else {
        svc.containers
            .iter()
            .map(|c| render_container(svc, c, ctx))
            .collect()
    }
}

fn render_pod(svc: &Service, ctx: &RenderCtx) -> UnitFile {
    let unit = main_unit(&svc.name);
    let pod = pod_name(svc);
    let members: Vec<String> = svc
        .containers
        .iter()
        .map(|c| container_unit(svc, c))
        .collect();
    let mut out = String::new();
    header(&mut out, svc, " (pod)");
    let _ = writeln!(out, "Wants={}", members.join(" "));
    let _ = writeln!(out, "Before={}", members.join(" "));
    let after = uses_after(svc);
    if !after.is_empty() {
        let _ = writeln!(out, "After={}", after.join(" "));
    }
    let _ = writeln!(out, "StartLimitIntervalSec=300\nStartLimitBurst=5\n");
    let _ = writeln!(out, "[Service]");
    let _ = writeln!(out, "Type=forking");
    let _ = writeln!(out, "Environment=PODMAN_SYSTEMD_UNIT=%n");
    restart_policy(&mut out, ctx);
    let _ = writeln!(out, "TimeoutStartSec={}", secs(svc.start_timeout));
    let _ = writeln!(out, "TimeoutStopSec=70");
    let pid = format!("%t/{pod}.pod.pid");
    let id = format!("%t/{pod}.pod-id");
    let mut create = vec![
        raw(&ctx.podman),
        raw("pod"),
        raw("create"),
        raw("--replace"),
        raw("--name"),
        lit(&pod),
        raw(format!("--infra-conmon-pidfile={pid}")),
        raw(format!("--pod-id-file={id}")),
    ];
    create.extend(labels(svc, &unit, None));
    create.extend(port_args(svc.ports().map(|p| (p.host, p.container))));
    let _ = writeln!(out, "ExecStartPre=/bin/rm -f {pid} {id}");
    let _ = writeln!(out, "ExecStartPre={}", exec(&create));
    let _ = writeln!(out, "ExecStart={} pod start --pod-id-file={id}", ctx.podman);
    let _ = writeln!(
        out,
        "ExecStop={} pod stop --ignore -t 10 --pod-id-file={id}",
        ctx.podman
    );
    let _ = writeln!(
        out,
        "ExecStopPost={} pod rm --ignore -f --pod-id-file={id}",
        ctx.podman
    );
    let _ = writeln!(out, "PIDFile={pid}");
    UnitFile {
        name: unit,
        content: out,
    }
}

fn render_container(svc: &Service, ctr: &Container, ctx: &RenderCtx) -> UnitFile {
    let unit = container_unit(svc, ctr);
    let mut out = String::new();
    if svc.is_pod() {
        header(&mut out, svc, &format!(" ({})", ctr.name));
        let main = main_unit(&svc.name);
        let _ = writeln!(out, "BindsTo={main}");
        let mut after = vec![main];
        after.extend(
            ctr.after
                .iter()
                .map(|a| format!("{PREFIX}{}--{a}.service", svc.name)),
        );
        let _ = writeln!(out, "After={}", after.join(" "));
    } else {
        header(&mut out, svc, "");
        let after = uses_after(svc);
        if !after.is_empty() {
            let _ = writeln!(out, "After={}", after.join(" "));
        }
    }
    let _ = writeln!(out, "StartLimitIntervalSec=300\nStartLimitBurst=5\n");
    let _ = writeln!(out, "[Service]");
    let _ = writeln!(out, "Type=notify\nNotifyAccess=all");
    let _ = writeln!(out, "Environment=PODMAN_SYSTEMD_UNIT=%n");
    restart_policy(&mut out, ctx);
    let _ = writeln!(out, "SuccessExitStatus=137 143");
    let gated = gate::gated(svc, ctr);
    if gated.is_empty() {
        let _ = writeln!(out, "TimeoutStartSec={}", secs(svc.start_timeout));
    } else {
        // A gate that timed out fails the unit for good; see crate::gate.
        let codes: Vec<String> = gate::exit_codes(gated.len())
            .iter()
            .map(|c| c.to_string())
            .collect();
        let _ = writeln!(out, "RestartPreventExitStatus={}", codes.join(" "));
        let _ = writeln!(
            out,
            "TimeoutStartSec={}",
            secs(gate::bound(svc) + gate::START_MARGIN)
        );
    }
    let _ = writeln!(out, "TimeoutStopSec=70");
    // The container's own cgroup is Podman's (`--memory`, `--cpus` below); these bound what
    // runs in the unit's cgroup, so no process of the service escapes its ceiling.
    if let Some(m) = ctr.memory {
        let _ = writeln!(out, "MemoryMax={m}");
    }
    if let Some(c) = ctr.cpus {
        let _ = writeln!(out, "CPUQuota={}%", cpu_percent(c));
    }
    let cid = "%t/%n.ctr-id";
    let _ = writeln!(out, "ExecStartPre=/bin/rm -f {cid}");
    if let Some(hook) = relays_hook(svc, ctx) {
        let _ = writeln!(out, "ExecStartPre={hook}");
    }
    let mut start = Vec::new();
    if !gated.is_empty() {
        start.extend([
            raw("/bin/sh"),
            raw("-c"),
            lit(gate::script()),
            raw("berth-health-gate"),
            raw(&ctx.podman),
            raw(gate::bound(svc).as_secs().max(1).to_string()),
            raw(gate::human(gate::bound(svc))),
            lit(format!("{PREFIX}{}--", svc.name)),
        ]);
        start.extend(gated.iter().map(|c| lit(&c.name)));
        start.push(raw("--"));
    }
    start.extend(run_args(svc, ctr, ctx, &unit, cid));
    let _ = writeln!(out, "ExecStart={}", exec(&start));
    let _ = writeln!(
        out,
        "ExecStop={} stop --ignore -t 10 --cidfile={cid}",
        ctx.podman
    );
    let _ = writeln!(
        out,
        "ExecStopPost={} rm -f --ignore --cidfile={cid}",
        ctx.podman
    );
    UnitFile {
        name: unit,
        content: out,
    }
}

fn run_args(svc: &Service, ctr: &Container, ctx: &RenderCtx, unit: &str, cid: &str) -> Vec<Arg> {
    let mut a = vec![
        raw(&ctx.podman),
        raw("run"),
        raw(format!("--cidfile={cid}")),
        raw("--cgroups=no-conmon"),
        raw("--sdnotify=conmon"),
        raw("--replace"),
        raw("--detach"),
        raw("--pull=never"),
        raw("--name"),
        lit(container_name(svc, ctr)),
    ];
    a.extend(labels(svc, unit, Some(ctr)));
    if svc.is_pod() {
        a.push(raw(format!("--pod-id-file=%t/{}.pod-id", pod_name(svc))));
    } else {
        a.extend(port_args(ctr.ports.iter().map(|p| (p.host, p.container))));
    }
    a.push(raw("--log-driver=k8s-file"));
    a.push(raw(format!("--log-opt=path=%h/{}", log_file(svc, ctr))));
    a.push(raw("--log-opt=max-size=8mb"));
    a.push(raw("--cap-drop=all"));
    for c in &ctr.cap_add {
        a.push(raw(format!("--cap-add={c}")));
    }
    if ctr.no_new_privileges {
        a.push(raw("--security-opt=no-new-privileges"));
    }
    if ctr.read_only {
        a.push(raw("--read-only"));
    }
    if ctr.init {
        a.push(raw("--init"));
    }
    if let Some(n) = ctr.shm_size {
        a.push(raw(format!("--shm-size={}", size_arg(n))));
    }
    if let Some(m) = ctr.memory {
        a.push(raw(format!("--memory={}", size_arg(m))));
    }
    if let Some(c) = ctr.cpus {
        a.push(raw(format!("--cpus={}", cpus_arg(c))));
    }
    for t in &ctr.tmpfs {
        a.push(raw("--tmpfs"));
        a.push(lit(t));
    }
    if let Some(u) = &ctr.user {
        a.push(raw("--user"));
        a.push(lit(u));
    }
    for (k, v) in &ctr.env {
        if !v.contains(crate::catalog::SECRET_PREFIX) {
            a.push(raw("--env"));
            a.push(lit(format!("{k}={v}")));
        }
    }
    if let Some(f) = env_file(svc, ctr) {
        a.push(raw(format!("--env-file=%h/{f}")));
    }
    for v in &ctr.volumes {
        let src = match &v.source {
            VolumeSource::Named(n) => volume_name(svc, n),
            VolumeSource::Host(p) => p.display().to_string(),
        };
        let ro = if v.read_only { ":ro" } else { "" };
        a.push(raw("--volume"));
        a.push(lit(format!("{src}:{}{ro}", v.target)));
    }
    for (i, f) in ctr.files.iter().enumerate() {
        a.push(raw("--volume"));
        a.push(raw(format!(
            "%h/{}:{}:ro",
            file_mount_path(svc, ctr, i),
            f.target
        )));
    }
    if svc.shared && ctx.shared_present {
        a.push(raw("--volume"));
        a.push(lit("/shared:/shared"));
    }
    if svc.gpu != Gpu::None {
        for d in &ctx.gpu_devices {
            a.push(raw("--device"));
            a.push(lit(d));
        }
    }
    if let Some(h) = &ctr.health {
        a.push(raw("--health-cmd"));
        a.push(lit(&h.cmd));
        a.push(raw(format!("--health-interval={}", secs(h.interval))));
        a.push(raw(format!("--health-timeout={}", secs(h.timeout))));
        a.push(raw(format!("--health-retries={}", h.retries)));
        a.push(raw(format!(
            "--health-start-period={}",
            secs(h.start_period)
        )));
    }
    if let Some(e) = &ctr.entrypoint {
        a.push(raw("--entrypoint"));
        a.push(lit(e));
    }
    a.push(lit(&ctr.image));
    a.extend(ctr.command.iter().map(lit));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    fn svc(text: &str) -> Service {
        let c = from_sources(None, &[Source::new("t/web.toml", text)]).expect("valid");
        c.services.into_values().next().expect("one service")
    }

    const WEB: &str = r#"
name = "web"
description = "A 100% web page"
secrets = ["pw"]
[[containers]]
name = "app"
image = "localhost/web:1"
command = ["sh", "-c", "echo $HOME && sleep 1"]
env = { PLAIN = "a b", SECRET_URL = "x://u:${secret.pw}@h" }
[[containers.ports]]
name = "http"
host = 18081
container = 8080
[[containers.volumes]]
name = "data"
target = "/data"
"#;

    #[test]
    fn single_container_unit() {
        let units = render(&svc(WEB), &RenderCtx::default());
        assert_eq!(units.len(), 1);
        let u = &units[0];
        assert_eq!(u.name, "berth-web.service");
        assert!(u.content.contains("Description=berth: A 100%% web page"));
        assert!(u.content.contains("-p 127.0.0.1::8080"));
        assert!(u.content.contains("--volume berth-web-data:/data"));
        assert!(u.content.contains("--env \"PLAIN=a b\""));
        assert!(u.content.contains("--cap-drop=all"));
        assert!(u.content.contains("--security-opt=no-new-privileges"));
        assert!(u.content.contains("--label io.berth.service=web"));
        assert!(
            u.content.contains("\"echo $$HOME && sleep 1\""),
            "{}",
            u.content
        );
        assert!(
            !u.content.contains("SECRET_URL"),
            "secrets stay out of units"
        );
        assert!(u
            .content
            .contains("--env-file=%h/.local/share/berth/services/web/env/app.env"));
        assert!(!u.content.contains("--privileged"));
    }

    #[test]
    fn pod_units_are_ordered_and_bound() {
        let text = r#"
name = "web"
description = "x"
[[containers]]
name = "app"
image = "localhost/a:1"
after = ["db"]
[[containers.ports]]
name = "http"
host = 18081
container = 8080
[[containers]]
name = "db"
image = "localhost/b:1"
"#;
        let units = render(&svc(text), &RenderCtx::default());
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "berth-web.service",
                "berth-web--db.service",
                "berth-web--app.service"
            ]
        );
        assert!(units[0].content.contains("-p 127.0.0.1::8080"));
        assert!(units[0]
            .content
            .contains("Wants=berth-web--db.service berth-web--app.service"));
        assert!(units[2].content.contains("BindsTo=berth-web.service"));
        assert!(units[2]
            .content
            .contains("After=berth-web.service berth-web--db.service"));
        assert!(
            !units[2].content.contains("-p 127"),
            "ports belong to the pod"
        );
        assert_eq!(service_of_unit("berth-web--db.service"), Some("web"));
        assert_eq!(service_of_unit("berth-web.service"), Some("web"));
        assert_eq!(service_of_unit("other.service"), None);
    }

    #[test]
    fn a_service_that_uses_others_runs_as_a_pod_whose_containers_wait_for_the_relays() {
        let api = WEB
            .replace("name = \"web\"", "name = \"api\"")
            .replace("18081", "18090");
        let client = WEB
            .replace("name = \"web\"", "name = \"web\"\nuses = [\"api\"]")
            .replace("PLAIN = \"a b\"", "PLAIN = \"${service.api.url}\"");
        let c = from_sources(
            None,
            &[
                Source::new("t/api.toml", api),
                Source::new("t/web.toml", client),
            ],
        )
        .expect("valid");
        let ctx = RenderCtx {
            berth: "/opt/berth/bin/berth".into(),
            ..RenderCtx::default()
        };
        let units = render(c.get("web").expect("web"), &ctx);
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["berth-web.service", "berth-web--app.service"]);
        let (pod, app) = (&units[0].content, &units[1].content);
        assert!(pod.contains("After=berth-api.service"), "{pod}");
        assert!(
            pod.contains("-p 127.0.0.1::8080"),
            "the pod publishes: {pod}"
        );
        let hook = "ExecStartPre=/opt/berth/bin/berth relays-ready web";
        let start = app.find("ExecStart=").expect("ExecStart");
        let pre = app
            .find(hook)
            .unwrap_or_else(|| panic!("no relays hook: {app}"));
        assert!(pre < start, "the hook runs before the container: {app}");
        assert!(app.contains("--env PLAIN=http://127.0.0.1:18090"), "{app}");
        for u in &units {
            assert!(
                !u.content.contains("allow_host_loopback") && !u.content.contains("slirp4netns"),
                "no view of the host's loopback: {}",
                u.content
            );
        }
        // A service that uses nothing has no hook.
        let alone = render(c.get("api").expect("api"), &ctx);
        assert!(alone.iter().all(|u| !u.content.contains("relays-ready")));
    }

    #[test]
    fn a_service_that_can_use_a_gpu_gets_every_cdi_device_found() {
        let text = WEB.replace(
            "description = \"A 100% web page\"",
            "description = \"x\"\ngpu = \"optional\"",
        );
        let ctx = RenderCtx {
            gpu_devices: vec!["nvidia.com/gpu=0".into(), "amd.com/gpu=0".into()],
            ..RenderCtx::default()
        };
        let u = &render(&svc(&text), &ctx)[0];
        assert!(
            u.content
                .contains(" --device nvidia.com/gpu=0 --device amd.com/gpu=0 "),
            "{}",
            u.content
        );
        let none = &render(&svc(&text), &RenderCtx::default())[0];
        assert!(!none.content.contains("--device"), "no GPU here: CPU");
        let plain = &render(&svc(WEB), &ctx)[0];
        assert!(
            !plain.content.contains("--device"),
            "a service that wants none gets none"
        );
    }

    #[test]
    fn shm_size_is_passed_to_podman() {
        let text = WEB.replace(
            "image = \"localhost/web:1\"",
            "image = \"localhost/web:1\"\nshm_size = \"256m\"",
        );
        let u = &render(&svc(&text), &RenderCtx::default())[0];
        assert!(u.content.contains(" --shm-size=256m "), "{}", u.content);
        let u = &render(&svc(WEB), &RenderCtx::default())[0];
        assert!(
            !u.content.contains("--shm-size"),
            "Podman's default unless asked"
        );
        assert_eq!(size_arg(1024 * 1024 * 1024), "1g");
        assert_eq!(size_arg(1536 * 1024), "1536k");
    }

    const GATED: &str = r#"
name = "web"
description = "x"
start_timeout = "2m"
[[containers]]
name = "app"
image = "localhost/a:1"
after = ["db", "cache"]
[[containers.ports]]
name = "http"
host = 18081
container = 8080
[[containers]]
name = "db"
image = "localhost/b:1"
[containers.health]
cmd = "pg_isready -h 127.0.0.1"
[[containers]]
name = "cache"
image = "localhost/c:1"
after = ["db"]
[containers.health]
cmd = "redis-cli ping"
"#;

    #[test]
    fn after_a_container_with_a_health_check_waits_for_it() {
        let units = render(&svc(GATED), &RenderCtx::default());
        let app = units
            .iter()
            .find(|u| u.name == "berth-web--app.service")
            .expect("test setup");
        let start = app
            .content
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("test setup");
        assert!(
            start.starts_with("ExecStart=/bin/sh -c \""),
            "the gate is the main process: {start}"
        );
        assert!(
            start.contains(
                " berth-health-gate /usr/bin/podman 120 2m berth-web-- db cache -- /usr/bin/podman run "
            ),
            "{start}"
        );
        assert!(
            start.contains("$$(date +%%s)"),
            "shell text escaped for systemd: {start}"
        );
        assert!(app.content.contains("\nRestartPreventExitStatus=190 191\n"));
        assert!(
            app.content.contains("\nTimeoutStartSec=150s\n"),
            "the gate's bound plus time for podman run: {}",
            app.content
        );
        assert!(app
            .content
            .contains("After=berth-web.service berth-web--db.service berth-web--cache.service"));

        let db = units
            .iter()
            .find(|u| u.name == "berth-web--db.service")
            .expect("test setup");
        assert!(
            db.content.contains("ExecStart=/usr/bin/podman run "),
            "nothing to wait for"
        );
        assert!(!db.content.contains("RestartPreventExitStatus"));
        assert!(db.content.contains("TimeoutStartSec=120s"));
    }

    #[test]
    fn after_a_container_without_a_health_check_is_order_only() {
        let text = GATED.replace(
            "[containers.health]\ncmd = \"pg_isready -h 127.0.0.1\"\n",
            "",
        );
        let units = render(&svc(&text), &RenderCtx::default());
        let app = units
            .iter()
            .find(|u| u.name == "berth-web--app.service")
            .expect("test setup");
        assert!(
            app.content.contains(" berth-web-- cache -- "),
            "only cache has a check now: {}",
            app.content
        );
        assert!(app.content.contains("RestartPreventExitStatus=190\n"));
    }

    #[test]
    fn patched_units_name_the_patch_file() {
        let c = from_sources(
            None,
            &[
                Source::new("<built-in>/web.toml", WEB),
                Source::new(
                    "/etc/berth/catalog.d/web.toml",
                    "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\nimage = \"localhost/web:2\"\n",
                ),
            ],
        )
        .expect("valid");
        let u = &render(c.get("web").expect("test setup"), &RenderCtx::default())[0];
        assert!(u.content.starts_with(
            "# Generated by berth from <built-in>/web.toml patched by /etc/berth/catalog.d/web.toml; edits are overwritten.\n"
        ), "{}", u.content);
        assert!(u.content.contains(" localhost/web:2 "), "{}", u.content);
    }

    #[test]
    fn resource_limits_reach_podman_and_systemd() {
        let text = WEB.replace(
            "image = \"localhost/web:1\"",
            "image = \"localhost/web:1\"\nmemory = \"512m\"\ncpus = 1.5",
        );
        let u = &render(&svc(&text), &RenderCtx::default())[0];
        assert!(u.content.contains(" --memory=512m "), "{}", u.content);
        assert!(u.content.contains(" --cpus=1.5 "), "{}", u.content);
        assert!(
            u.content.contains("\nMemoryMax=536870912\n"),
            "{}",
            u.content
        );
        assert!(u.content.contains("\nCPUQuota=150%\n"), "{}", u.content);
        let plain = &render(&svc(WEB), &RenderCtx::default())[0];
        assert!(
            !plain.content.contains("--memory") && !plain.content.contains("MemoryMax"),
            "no limit unless asked: units of services without limits stay as they were"
        );
        assert_eq!(cpus_arg(2.0), "2");
        assert_eq!(cpus_arg(0.25), "0.25");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("50%"), "\"50%%\"");
        assert_eq!(quote("${X}"), "\"$${X}\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quote(""), "\"\"");
    }
}
