//! Timing of berth's pure core over a large catalog: parsing and validating catalog files,
//! rendering units, and planning (converged and fresh worlds).
//!
//!     cargo bench --bench plan
//!
//! Goal of the issue: a plan over a 200-service catalog takes at most 5 ms. The catalog is
//! generated in memory as TOML text (a mix of single-container services and 3-container pods
//! with env, secrets, volumes, files, health checks and ports) and goes through the same
//! `catalog::from_sources` the daemon uses; desired and actual states are built the way the
//! reconciler builds them. Each measurement repeats many times and reports median and p99.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a few iterations only, as a
//! smoke test of the same code and assertions.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use berth::catalog::{self, Catalog, Source};
use berth::plan::{self, Action, Actual, Desired, DesiredService};
use berth::state::Choice;
use berth::systemd::UnitState;
use berth::units::{self, RenderCtx, UnitFile};

const SERVICES: usize = 200;
/// Every `POD_EVERY`th service is a 3-container pod; the rest run one container.
const POD_EVERY: usize = 3;
const GOAL_PLAN: Duration = Duration::from_millis(5);
/// A reload of the whole catalog (read, validate under a policy, render, plan): CPU time.
const GOAL_RELOAD: Duration = Duration::from_millis(20);

/// CPU time of this thread: a reload's cost, not the machine's load.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A policy that every rule of which applies to the generated catalog.
const POLICY: &str = "allowed_host_paths = [\"/shared\"]\nallowed_images = [\"docker.io/*\", \"ghcr.io/*\", \"quay.io/*\", \"localhost/*\", \"registry.example/*\"]\n\
required_services = [\"svc-001\"]\ndefault_enabled = [\"svc-002\"]\non_demand = [\"svc-004\"]\n\
[limits]\ncontainer_memory = \"2g\"\ncontainer_cpus = 2\n";

fn name_of(i: usize) -> String {
    format!("svc-{i:03}")
}

/// One catalog file. Host ports are unique across the catalog (two per service at most).
fn service_toml(i: usize) -> String {
    let name = name_of(i);
    let port = 20000 + 2 * i;
    let mut t = String::new();
    let _ = writeln!(t, "# generated for the plan benchmark\nname = \"{name}\"");
    let _ = writeln!(
        t,
        "description = \"Benchmark service {i} with a realistic amount of configuration\""
    );
    let _ = writeln!(t, "homepage = \"https://example.org/{name}\"");
    let _ = writeln!(t, "start_timeout = \"3m\"");
    // Some services use an earlier one (never a later one: no cycles).
    if i >= 10 && i.is_multiple_of(7) {
        let _ = writeln!(t, "uses = [\"{}\", \"{}\"]", name_of(i - 1), name_of(i / 2));
    }
    if i.is_multiple_of(POD_EVERY) {
        let _ = writeln!(t, "secrets = [\"db_password\", \"api_key\"]");
        pod_containers(&mut t, i, port);
    } else {
        if i.is_multiple_of(2) {
            let _ = writeln!(t, "shared = true\ngpu = \"optional\"");
        }
        let _ = writeln!(t, "secrets = [\"api_key\"]");
        single_container(&mut t, i, port);
    }
    t
}

fn env_block(t: &mut String, i: usize, extra: &[(&str, &str)]) {
    let _ = writeln!(t, "\n[containers.env]");
    let _ = writeln!(
        t,
        "TZ = \"UTC\"\nLOG_LEVEL = \"info\"\nWORKERS = \"{}\"",
        1 + i % 8
    );
    let _ = writeln!(t, "PUBLIC_URL = \"http://127.0.0.1:{}/\"", 20000 + 2 * i);
    let _ = writeln!(t, "GREETING = \"hello from service {i}, 100% generated\"");
    for (k, v) in extra {
        let _ = writeln!(t, "{k} = \"{v}\"");
    }
}

fn health(t: &mut String, cmd: &str) {
    let _ = writeln!(
        t,
        "\n[containers.health]\ncmd = \"{cmd}\"\ninterval = \"30s\"\ntimeout = \"5s\"\nretries = 3\nstart_period = \"1m\""
    );
}

fn single_container(t: &mut String, i: usize, port: usize) {
    let _ = writeln!(
        t,
        "\n[[containers]]\nname = \"app\"\nimage = \"docker.io/example/app{}:1.{}.0\"",
        i % 17,
        i % 5
    );
    let _ = writeln!(
        t,
        "command = [\"serve\", \"--port\", \"8080\", \"--data\", \"/data\"]"
    );
    let _ = writeln!(
        t,
        "init = true\nread_only = true\ntmpfs = [\"/tmp\", \"/run\"]"
    );
    let _ = writeln!(t, "user = \"1000:1000\"");
    env_block(
        t,
        i,
        &[
            ("API_KEY", "${secret.api_key}"),
            ("DATA_DIR", "/data"),
            ("CACHE_DIR", "/cache"),
        ],
    );
    let _ = writeln!(
        t,
        "\n[[containers.ports]]\nname = \"http\"\nhost = {port}\ncontainer = 8080"
    );
    let _ = writeln!(
        t,
        "\n[[containers.ports]]\nname = \"metrics\"\nhost = {}\ncontainer = 9090",
        port + 1
    );
    let _ = writeln!(
        t,
        "\n[[containers.volumes]]\nname = \"data\"\ntarget = \"/data\""
    );
    let _ = writeln!(
        t,
        "\n[[containers.volumes]]\nname = \"cache\"\ntarget = \"/cache\""
    );
    let _ = writeln!(
        t,
        "\n[[containers.volumes]]\nhost = \"/shared/models\"\ntarget = \"/models\"\nread_only = true"
    );
    let _ = writeln!(
        t,
        "\n[[containers.files]]\ntarget = \"/etc/app/config.yaml\"\ncontent = '''\nlisten: 0.0.0.0:8080\nworkers: {}\napi_key: ${{secret.api_key}}\n'''",
        1 + i % 8
    );
    health(t, "wget -q -O /dev/null http://127.0.0.1:8080/healthz");
}

fn pod_containers(t: &mut String, i: usize, port: usize) {
    // db
    let _ = writeln!(
        t,
        "\n[[containers]]\nname = \"db\"\nimage = \"docker.io/library/postgres:16.{}\"",
        i % 4
    );
    let _ = writeln!(
        t,
        "cap_add = [\"CHOWN\", \"DAC_OVERRIDE\", \"FOWNER\", \"SETUID\", \"SETGID\"]"
    );
    let _ = writeln!(
        t,
        "cap_add_reason = \"the entrypoint fixes ownership of the data directory, then drops to the postgres user\""
    );
    env_block(
        t,
        i,
        &[
            ("POSTGRES_USER", "app"),
            ("POSTGRES_DB", "app"),
            ("POSTGRES_PASSWORD", "${secret.db_password}"),
        ],
    );
    let _ = writeln!(
        t,
        "\n[[containers.volumes]]\nname = \"db\"\ntarget = \"/var/lib/postgresql/data\""
    );
    health(t, "pg_isready -U app -d app");
    // app
    let _ = writeln!(
        t,
        "\n[[containers]]\nname = \"app\"\nimage = \"ghcr.io/example/web{}:2.{}.1\"\nafter = [\"db\"]",
        i % 11,
        i % 3
    );
    let _ = writeln!(t, "init = true\nentrypoint = \"/usr/bin/web\"");
    env_block(
        t,
        i,
        &[
            (
                "DATABASE_URL",
                "postgres://app:${secret.db_password}@127.0.0.1:5432/app",
            ),
            ("API_KEY", "${secret.api_key}"),
            ("PORT", "3000"),
        ],
    );
    let _ = writeln!(
        t,
        "\n[[containers.ports]]\nname = \"http\"\nhost = {port}\ncontainer = 3000"
    );
    let _ = writeln!(
        t,
        "\n[[containers.volumes]]\nname = \"uploads\"\ntarget = \"/uploads\""
    );
    health(t, "wget -q -O /dev/null http://127.0.0.1:3000/api/health");
    // proxy
    let _ = writeln!(
        t,
        "\n[[containers]]\nname = \"proxy\"\nimage = \"docker.io/library/caddy:2.{}\"\nafter = [\"app\"]",
        i % 9
    );
    let _ = writeln!(
        t,
        "command = [\"caddy\", \"run\", \"--config\", \"/etc/caddy/Caddyfile\"]"
    );
    env_block(t, i, &[]);
    let _ = writeln!(
        t,
        "\n[[containers.ports]]\nname = \"https\"\nhost = {}\ncontainer = 8443",
        port + 1
    );
    let _ = writeln!(
        t,
        "\n[[containers.files]]\ntarget = \"/etc/caddy/Caddyfile\"\ncontent = '''\n:8443 {{\n  reverse_proxy 127.0.0.1:3000\n}}\n'''"
    );
}

fn sources() -> Vec<Source> {
    (0..SERVICES)
        .map(|i| Source::new(format!("catalog.d/{}.toml", name_of(i)), service_toml(i)))
        .collect()
}

fn load(sources: &[Source]) -> Catalog {
    match catalog::from_sources(None, sources) {
        Ok(c) => c,
        Err(e) => panic!("the generated catalog is invalid: {e}"),
    }
}

fn render_all(c: &Catalog, ctx: &RenderCtx) -> Vec<Vec<UnitFile>> {
    c.services.values().map(|s| units::render(s, ctx)).collect()
}

/// Desired state as the reconciler builds it: every service enabled.
fn build_desired(c: &Catalog, ctx: &RenderCtx) -> Desired {
    let services = c
        .services
        .iter()
        .map(|(name, svc)| {
            (
                name.clone(),
                DesiredService {
                    choice: Choice::On,
                    units: units::render(svc, ctx),
                    images: svc.images().map(str::to_string).collect(),
                    uses: svc.uses.clone(),
                    blocked: None,
                    force: false,
                    retry: false,
                },
            )
        })
        .collect();
    Desired { services }
}

fn loaded(name: &str) -> (String, UnitState) {
    (
        name.to_string(),
        UnitState {
            name: name.to_string(),
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
        },
    )
}

/// Everything in place and running: every unit file matches, every unit is active. Like the
/// reconciler, images are not asked about for running services.
fn converged(d: &Desired) -> Actual {
    let mut a = Actual::default();
    for s in d.services.values() {
        for u in &s.units {
            a.unit_files.insert(u.name.clone(), u.content.clone());
            a.units.extend([loaded(&u.name)]);
        }
    }
    a
}

/// Nothing installed yet; the images are present locally.
fn fresh(d: &Desired) -> Actual {
    let mut a = Actual::default();
    for s in d.services.values() {
        for i in &s.images {
            a.images.insert(i.clone(), true);
        }
    }
    a
}

#[derive(Debug)]
struct Row {
    what: &'static str,
    iters: usize,
    median: Duration,
    p99: Duration,
    goal: Option<Duration>,
}

/// [`measure`] in this thread's CPU time.
fn measure_cpu<T>(
    what: &'static str,
    goal: Option<Duration>,
    warmup: usize,
    iters: usize,
    budget: Duration,
    mut f: impl FnMut() -> T,
) -> Row {
    for _ in 0..warmup {
        black_box(f());
    }
    let mut times = Vec::with_capacity(iters);
    let started = Instant::now();
    for n in 0..iters {
        let t = cpu_now();
        let out = f();
        times.push(cpu_now().saturating_sub(t));
        black_box(out);
        if n >= 20 && started.elapsed() > budget {
            break;
        }
    }
    row(what, goal, times)
}

fn row(what: &'static str, goal: Option<Duration>, mut times: Vec<Duration>) -> Row {
    times.sort_unstable();
    let pick = |q: f64| {
        // Nearest rank.
        let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
        times[rank - 1]
    };
    Row {
        what,
        iters: times.len(),
        median: pick(0.5),
        p99: pick(0.99),
        goal,
    }
}

/// Runs `f` `warmup` times untimed, then up to `iters` times (stopping early once `budget` is
/// spent, after at least 20 runs), timing each run.
fn measure<T>(
    what: &'static str,
    goal: Option<Duration>,
    warmup: usize,
    iters: usize,
    budget: Duration,
    mut f: impl FnMut() -> T,
) -> Row {
    for _ in 0..warmup {
        black_box(f());
    }
    let mut times = Vec::with_capacity(iters);
    let started = Instant::now();
    for n in 0..iters {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        black_box(out);
        if n >= 20 && started.elapsed() > budget {
            break;
        }
    }
    row(what, goal, times)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) is a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (warmup, scale, budget) = if full {
        (10, 1, Duration::from_secs(8))
    } else {
        (1, 0, Duration::from_secs(2))
    };
    let iters = |n: usize| if scale == 0 { 3 } else { n };
    let ctx = RenderCtx::default();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let v: Vec<&str> = l.split_whitespace().take(3).collect();
            (v.len() == 3).then(|| v.join(" "))
        })
        .unwrap_or_else(|| "unknown".into());

    let srcs = sources();
    let bytes: usize = srcs.iter().map(|s| s.text.len()).sum();
    let cat = load(&srcs);
    assert_eq!(cat.services.len(), SERVICES);
    let pods = cat.services.values().filter(|s| s.is_pod()).count();
    let desired = build_desired(&cat, &ctx);
    let unit_count: usize = desired.services.values().map(|s| s.units.len()).sum();
    let unit_bytes: usize = desired
        .services
        .values()
        .flat_map(|s| s.units.iter().map(|u| u.content.len()))
        .sum();
    let conv = converged(&desired);
    let empty = fresh(&desired);

    // What the plans must be, checked once before timing anything.
    let p = plan::plan(&desired, &conv);
    assert!(
        p.actions.is_empty() && p.waiting.is_empty(),
        "a converged world must plan nothing, got:\n{p}"
    );
    let p = plan::plan(&desired, &empty);
    let writes = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::WriteUnit { .. }))
        .count();
    let starts = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Start { .. }))
        .count();
    let reloads = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::DaemonReload))
        .count();
    assert_eq!(writes, unit_count, "a fresh world writes every unit");
    assert_eq!(starts, SERVICES, "a fresh world starts every service");
    assert_eq!(reloads, 1, "one daemon-reload");
    assert!(p.waiting.is_empty(), "{:?}", p.waiting);
    let fresh_actions = p.actions.len();

    println!(
        "berth plan benchmark: {SERVICES} services ({pods} pods of 3 containers, {} single), \
         {} KiB of TOML, {unit_count} units ({} KiB)",
        SERVICES - pods,
        bytes / 1024,
        unit_bytes / 1024
    );
    if !full {
        println!("(smoke run: pass --bench, as `cargo bench` does, for real figures)");
    }

    // The files on disk, as a reload reads them: the admin layer and a policy.
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path();
    std::fs::create_dir_all(etc.join("catalog.d")).expect("catalog.d");
    for s in &srcs {
        let name = s.path.file_name().expect("file name");
        std::fs::write(etc.join("catalog.d").join(name), &s.text).expect("write");
    }
    std::fs::write(etc.join("policy.toml"), POLICY).expect("policy");
    let reload = || {
        let mut layers = catalog::Layers::standard(etc).expect("layers");
        layers.builtin = false;
        let c = catalog::load(&layers).expect("the generated catalog validates");
        plan::plan(&build_desired(&c, &ctx), &conv)
    };
    assert!(
        catalog::load(&{
            let mut l = catalog::Layers::standard(etc).expect("layers");
            l.builtin = false;
            l
        })
        .expect("valid")
        .get("svc-004")
        .is_some_and(|s| s.on_demand),
        "the policy applies"
    );

    let rows = vec![
        measure_cpu(
            "reload: read+validate+policy+plan (CPU)",
            Some(GOAL_RELOAD),
            warmup.min(3),
            iters(200),
            budget,
            reload,
        ),
        measure(
            "catalog parse+validate (200 files)",
            None,
            warmup.min(3),
            iters(200),
            budget,
            || load(&srcs),
        ),
        measure(
            "render all units",
            None,
            warmup,
            iters(1000),
            budget,
            || render_all(&cat, &ctx),
        ),
        measure(
            "plan, converged (empty plan)",
            Some(GOAL_PLAN),
            warmup,
            iters(2000),
            budget,
            || plan::plan(&desired, &conv),
        ),
        measure(
            "plan, fresh world",
            Some(GOAL_PLAN),
            warmup,
            iters(2000),
            budget,
            || plan::plan(&desired, &empty),
        ),
        measure(
            "build desired + plan, converged",
            Some(GOAL_PLAN),
            warmup,
            iters(1000),
            budget,
            || plan::plan(&build_desired(&cat, &ctx), &conv),
        ),
    ];

    println!();
    println!(
        "{:<36} {:>7} {:>12} {:>12} {:>10}  ok?",
        "measurement", "iters", "median", "p99", "goal"
    );
    println!("{}", "-".repeat(86));
    let mut all_ok = true;
    for r in &rows {
        let (goal, ok) = match r.goal {
            // A smoke run is unoptimised and too short to judge anything.
            Some(g) if !full => (format!("≤ {} ms", g.as_millis()), "n/a"),
            Some(g) => {
                all_ok &= r.median <= g;
                let ok = if r.p99 <= g {
                    "yes"
                } else if r.median <= g {
                    "median only"
                } else {
                    "NO"
                };
                (format!("≤ {} ms", g.as_millis()), ok)
            }
            None => ("—".to_string(), ""),
        };
        println!(
            "{:<36} {:>7} {:>12} {:>12} {:>10}  {ok}",
            r.what,
            r.iters,
            ms(r.median),
            ms(r.p99),
            goal
        );
    }
    println!();
    println!(
        "fresh plan: {fresh_actions} actions ({writes} unit writes, 1 reload, {starts} starts)"
    );
    println!(
        "ok?: yes = median and p99 within the goal; \"median only\" = p99 over it (on a busy \
         machine p99 mostly measures preemption; load average before: {loadavg})"
    );
    if full && !all_ok {
        println!("GOAL MISSED (median over the goal)");
    }
}
