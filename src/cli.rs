//! The `berth` command line: argument parsing and one function per command. Commands other
//! than `daemon`, `render` and `catalog validate` are clients of the daemon's API.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use berth_client::{Client, PullEnd};
use berth_proto::{DaemonInfo, PassReport, ServiceStatus, State, Verb};

use crate::catalog::{self, Layers};
use crate::clock::{format_age, format_unix, now_unix, parse_rfc3339};
use crate::units;

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Run your AI services as rootless Podman containers under your own systemd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon (normally started by systemd as berth.service).
    Daemon,
    /// List services and their states.
    Ls {
        #[arg(long)]
        json: bool,
        /// Keep the list on screen and redraw it at every change (from the event stream).
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Show one service in detail.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Enable a service: pull its images (showing progress), install and start it.
    Enable {
        name: String,
        /// Do not pull missing images from here (the daemon still pulls them).
        #[arg(long)]
        no_pull: bool,
        #[command(flatten)]
        settle: Settle,
    },
    /// Disable a service: stop it and remove its units. Its data volumes are kept.
    Disable { name: String },
    /// Start a service (and enable it).
    Start {
        name: String,
        #[command(flatten)]
        settle: Settle,
    },
    /// Stop a service and keep it stopped until started again.
    Stop { name: String },
    /// Restart a service.
    Restart {
        name: String,
        #[command(flatten)]
        settle: Settle,
    },
    /// Open the local web page (the dashboard) in your browser, logged in.
    Dashboard {
        /// Print the one-time login link instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// Open it on this service's logs.
        #[arg(long, value_name = "NAME")]
        logs: Option<String>,
    },
    /// Show a service's container logs.
    Logs {
        name: String,
        /// Keep following new lines.
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end to show first.
        #[arg(short = 'n', long, default_value_t = 100)]
        tail: usize,
    },
    /// Pull a service's images, showing progress.
    Pull { name: String },
    /// Update services' images: pull, and where a tag now names a newer image, swap to it
    /// (rolled back if it does not become healthy). Without NAME: every enabled service.
    Update {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print what the daemon would change now, without changing it.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon for a reconcile pass now and print what it did.
    Reconcile {
        #[arg(long)]
        json: bool,
    },
    /// Re-read the catalog and policy (a broken catalog is rejected; the old one stays).
    Reload,
    /// Show the daemon's version, Podman version, catalog and write counters.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Back up services' volumes and secrets, so their data outlives the VM (default: every
    /// enabled service that keeps data). See README "Backups".
    Backup {
        names: Vec<String>,
        /// Where to write (default: `[backup] dir` of config.toml, else
        /// /shared/users/USER/backups, else ~/.local/share/berth/backups).
        #[arg(long)]
        to: Option<PathBuf>,
        /// As the daemon runs it on the policy's schedule (`[backup] every`): every enabled
        /// service with data, then only the newest `[backup] keep` backups of each are kept.
        #[arg(long, conflicts_with = "names")]
        scheduled: bool,
    },
    /// Restore a service's volumes and secrets from its newest backup (or the backup or
    /// folder given with --from), then start it.
    Restore {
        name: String,
        #[arg(long)]
        from: Option<PathBuf>,
        /// Restore the data only; leave the service as it is.
        #[arg(long)]
        no_start: bool,
    },
    /// Write the units of the catalog's services into DIR (for image builders).
    Render {
        #[arg(long)]
        out: PathBuf,
        /// Only these services (default: all).
        names: Vec<String>,
    },
    /// As root: prepare the machine and users for berth (first boot, image builds).
    Setup(crate::setup::cli::Args),
    /// Catalog tools.
    Catalog {
        #[command(subcommand)]
        command: CatalogCmd,
    },
    /// Benchmark and debug tool: forward one port with exactly the daemon's forwarding code
    /// (splice, half-close, counters), until stopped.
    #[command(hide = true)]
    Forward {
        /// Address to listen on, e.g. 127.0.0.1:18080.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Address every accepted connection is forwarded to.
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// Internal: the daemon's helper inside a container's network namespace (see
    /// `proxy::netns`). Serves the socket pair on stdin.
    #[command(hide = true, name = "netns-sockets")]
    NetnsSockets,
    /// Internal: run by the units of a service that uses others before its containers start;
    /// returns once berth listens inside the service's pod for the services it uses (see
    /// `proxy::relays`). Waits for a daemon that is starting, at most `--wait` seconds.
    #[command(hide = true, name = "relays-ready")]
    RelaysReady {
        name: String,
        /// The daemon's API socket, when not the usual one.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

/// How long `enable`, `start` and `restart` watch a service that came up, so that a container
/// crashing a moment after its start is reported as such and not as running.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Settle {
    /// Seconds to watch the service after it started (0: do not watch).
    #[arg(long = "settle", value_name = "SECS", default_value_t = 3)]
    secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Validate catalog files as a layer over the built-in catalog and /etc/berth/catalog.d.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Validate the files alone, without the other layers.
        #[arg(long)]
        alone: bool,
        /// The file is a remote catalog (a `[remote]` header and `[[services]]`), checked as
        /// the layer after /etc/berth/catalog.d, before you sign it.
        #[arg(long)]
        remote: bool,
    },
    /// Fetch the remote catalog now (config.toml [remote_catalog]) and apply it if it is
    /// newer, verified and valid.
    Fetch {
        /// Verify it and show what it would change, without applying or keeping it.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the catalog as this user gets it: every service and the layer it came from.
    Show {
        /// Only this service.
        name: Option<String>,
        /// Where every service and field came from: layer and file:line, patches, the
        /// policy's rules.
        #[arg(long)]
        origin: bool,
        #[arg(long)]
        json: bool,
    },
    /// What candidate catalog files or a candidate policy would change on this VM (services
    /// added, removed, restarted, stopped), without changing anything.
    Diff {
        /// A candidate policy.toml, in place of /etc/berth/policy.toml.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Candidate catalog files: each replaces the admin file of the same name (or is added
        /// to the admin layer).
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Asks the daemon for a consumer's relays, again while it is not there yet (berth and the
/// service's units start side by side at boot).
async fn relays_ready(name: &str, socket: Option<&Path>, wait: Duration) -> Result<()> {
    let until = std::time::Instant::now() + wait;
    loop {
        let c = match socket {
            Some(s) => Ok(Client::new(s)),
            None => client(),
        };
        let answer = match c {
            Ok(c) => c.relays_ready(name).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => {
                println!("berth listens inside {name}'s pod for {} port(s)", r.ports);
                return Ok(());
            }
            Err(e) if std::time::Instant::now() < until => {
                tracing::debug!("relays for {name} not ready yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(format!("relays for {name}"))),
        }
    }
}

fn client() -> Result<Client> {
    Ok(Client::from_env()?)
}

/// Rejects names that could not be services before they reach a URL.
fn check_name(name: &str) -> Result<()> {
    if !catalog::validate::valid_name(name) {
        bail!("{name:?} is not a service name (see `berth ls`)");
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Daemon => {
            let shutdown = async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            crate::daemon::start(shutdown).await.context("berth daemon")
        }
        Cmd::Ls { json, watch } => {
            if watch {
                ls_watch().await
            } else {
                ls(json).await
            }
        }
        Cmd::Status { name, json } => status(&name, json).await,
        Cmd::Enable {
            name,
            no_pull,
            settle,
        } => {
            check_name(&name)?;
            // A failed pull still records the choice: the daemon keeps the reason on display
            // and the service starts once its image arrives.
            let pulled = if no_pull {
                Ok(())
            } else {
                pull(&name, true).await
            };
            // A failed pull leaves the service failed (pull) with the reason on display; the
            // enable says so once, through the daemon's word on the service.
            let enabled = act(&name, Verb::Enable, settle).await;
            match (pulled, enabled) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(e),
                (Ok(()), Ok(())) => Ok(()),
            }
        }
        Cmd::Disable { name } => act(&name, Verb::Disable, NO_SETTLE).await,
        Cmd::Start { name, settle } => act(&name, Verb::Start, settle).await,
        Cmd::Stop { name } => act(&name, Verb::Stop, NO_SETTLE).await,
        Cmd::Restart { name, settle } => act(&name, Verb::Restart, settle).await,
        Cmd::Logs { name, follow, tail } => {
            check_name(&name)?;
            let mut out = std::io::stdout().lock();
            client()?
                .logs(&name, follow, tail, |l| {
                    let _stdout_closed = writeln!(out, "{l}").and_then(|_| out.flush());
                })
                .await?;
            Ok(())
        }
        Cmd::Pull { name } => pull(&name, false).await,
        Cmd::Update { name, json } => update(name.as_deref(), json).await,
        Cmd::Dashboard { print, logs } => dashboard(print, logs.as_deref()).await,
        Cmd::Plan { json } => {
            let p = client()?.plan().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{p}");
            }
            Ok(())
        }
        Cmd::Reconcile { json } => {
            let r = client()?.reconcile().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_report(&r);
            }
            if !r.errors.is_empty() {
                bail!("{} action(s) failed", r.errors.len());
            }
            Ok(())
        }
        Cmd::Reload => {
            let r = client()?.reload().await?;
            println!("catalog reloaded: {} services", r.services);
            Ok(())
        }
        Cmd::Info { json } => {
            let i = client()?.daemon().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!("berth {} (pid {})", i.version, i.pid);
                println!(
                    "podman {}",
                    i.podman_version.as_deref().unwrap_or("unreachable")
                );
                if let Some(e) = &i.podman_error {
                    println!("podman error: {e}");
                }
                if i.gpus.is_empty() {
                    println!("gpus: none (services that can use one run on CPU)");
                }
                if let Some(b) = &i.backup_schedule {
                    let at = |t: Option<u64>| {
                        t.map_or_else(|| "never".to_string(), crate::clock::format_rfc3339)
                    };
                    println!(
                        "scheduled backups: every {} s, keeping {}; last good {}, next {}{}",
                        b.every,
                        b.keep,
                        at(b.last_success),
                        at(b.next),
                        b.error
                            .as_ref()
                            .map(|e| format!("; the last run failed: {e}"))
                            .unwrap_or_default()
                    );
                }
                for r in &i.remote_services {
                    let how = match (r.up, &r.error) {
                        (None, _) => "not checked yet".to_string(),
                        (Some(true), _) => "answers".to_string(),
                        (Some(false), e) => {
                            format!("does not answer: {}", e.as_deref().unwrap_or("no answer"))
                        }
                    };
                    println!("remote service: {} at {} ({how})", r.name, r.url);
                }
                for g in &i.gpus {
                    let mem = g
                        .memory_mib
                        .map(|m| format!(", {m} MiB"))
                        .unwrap_or_default();
                    println!(
                        "gpu: {} ({}{mem}; {})",
                        g.device,
                        g.model.as_deref().unwrap_or("model unknown"),
                        g.spec
                    );
                }
                match (&i.web_url, &i.web_error) {
                    (Some(u), _) => println!("web page: {u} (`berth dashboard` opens it)"),
                    (None, Some(e)) => println!("web page: {e}"),
                    (None, None) => {}
                }
                println!(
                    "catalog: {} services (serial {})",
                    i.catalog_services, i.catalog_serial
                );
                if let Some(e) = &i.catalog_error {
                    println!("catalog error: {e}");
                    if let Some(f) = &i.catalog_in_force {
                        println!("in force meanwhile: {f}");
                    }
                }
                if let Some(r) = &i.remote_catalog {
                    let serial = r
                        .serial
                        .map_or_else(|| "none yet".to_string(), |s| format!("serial {s}"));
                    let good = r.last_success.map_or_else(|| "never".to_string(), when);
                    println!(
                        "remote catalog: {} ({serial}; last good fetch {good})",
                        r.url
                    );
                    if let Some(e) = &r.error {
                        println!("remote catalog error: {e}");
                    }
                }
                if let Some(e) = &i.config_error {
                    println!("config error: {e} (the settings it started with stay)");
                }
                let c = &i.counters;
                println!(
                    "passes {}, systemd writes {}, podman writes {}, file writes {}",
                    c.passes, c.systemd_writes, c.podman_writes, c.file_writes
                );
            }
            Ok(())
        }
        Cmd::Render { out, names } => render(&out, &names),
        Cmd::Backup {
            names,
            to,
            scheduled,
        } => backup(&names, to, scheduled).await,
        Cmd::Restore {
            name,
            from,
            no_start,
        } => restore(&name, from.as_deref(), no_start).await,
        Cmd::Catalog {
            command:
                CatalogCmd::Validate {
                    paths,
                    alone,
                    remote,
                },
        } => {
            if remote {
                validate_remote(&paths, alone)
            } else {
                validate(&paths, alone)
            }
        }
        Cmd::Catalog {
            command: CatalogCmd::Fetch { dry_run, json },
        } => {
            let a = client()?.fetch_catalog(dry_run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print_fetch(&a);
            }
            Ok(())
        }
        Cmd::Catalog {
            command: CatalogCmd::Show { name, origin, json },
        } => show(name.as_deref(), origin, json),
        Cmd::Catalog {
            command:
                CatalogCmd::Diff {
                    policy,
                    paths,
                    json,
                },
        } => diff(policy.as_deref(), &paths, json).await,
        Cmd::Setup(args) => crate::setup::cli::run(args),
        Cmd::NetnsSockets => crate::proxy::netns::serve_helper().context("netns-sockets helper"),
        Cmd::RelaysReady { name, socket, wait } => {
            relays_ready(&name, socket.as_deref(), Duration::from_secs(wait)).await
        }
        Cmd::Forward { listen, to } => crate::proxy::forward::run_forward(listen, to)
            .await
            .with_context(|| format!("forward {listen} to {to}")),
    }
}

fn print_fetch(a: &berth_proto::FetchAnswer) {
    let serial = a
        .serial
        .map_or_else(|| "none".to_string(), |s| s.to_string());
    if a.unchanged {
        println!("remote catalog unchanged (serial {serial} in force)");
        return;
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "{} remote catalog serial {serial}",
        if a.dry_run {
            "dry run: verified, would put in force"
        } else {
            "in force:"
        }
    );
    println!("  added:   {}", list(&a.added));
    println!("  changed: {}", list(&a.changed));
    println!("  removed: {}", list(&a.removed));
}

fn print_report(r: &PassReport) {
    if r.applied.is_empty() && r.errors.is_empty() {
        println!("nothing to do");
    }
    for a in &r.applied {
        println!("  {a}");
    }
    for e in &r.errors {
        println!("  error: {e}");
    }
    for (s, w) in &r.waiting {
        println!("  {s}: {w}");
    }
}

async fn pull(name: &str, quiet_when_present: bool) -> Result<()> {
    check_name(name)?;
    let mut err = std::io::stderr().lock();
    let end = client()?
        .pull(name, |l| {
            if !(quiet_when_present && l.ends_with(": present")) {
                let _stderr_closed = writeln!(err, "{l}");
            }
        })
        .await?;
    match end {
        PullEnd::Done => Ok(()),
        PullEnd::Failed(e) => bail!("{e}"),
    }
}

/// `berth update [NAME]`: one line per service; fails when an update failed or was rolled
/// back.
async fn update(name: Option<&str>, json: bool) -> Result<()> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let c = client()?;
    // Progress on stderr while the daemon works: its pulls, and each swap as it begins. A
    // daemon without an event stream only loses the progress.
    let mut events = c.events().await.ok();
    let asked = c.update(name);
    tokio::pin!(asked);
    let a = loop {
        let Some(ev) = events.as_mut() else {
            break asked.await?;
        };
        tokio::select! {
            r = &mut asked => break r?,
            e = ev.next() => match e {
                Some(Ok(e)) => update_progress(&e, name),
                _ => events = None,
            },
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else if a.services.is_empty() {
        println!("no enabled services to update");
    }
    let mut bad = Vec::new();
    for o in &a.services {
        if !json {
            println!("{}: {}", o.service, o.message);
        }
        if matches!(
            o.result,
            berth_proto::UpdateResult::RolledBack | berth_proto::UpdateResult::Failed
        ) {
            bad.push(o.service.as_str());
        }
    }
    if !bad.is_empty() {
        bail!("not updated: {}", bad.join(", "));
    }
    Ok(())
}

/// One line of `berth update`'s progress for an event of the daemon, about `only` or any.
fn update_progress(e: &berth_proto::Event, only: Option<&str>) {
    use berth_proto::{Event, PullProgress};
    let ours = |s: &str| only.is_none_or(|o| o == s);
    match e {
        Event::Pull {
            image,
            services,
            progress,
        } if services.iter().any(|s| ours(s)) => match progress {
            PullProgress::Started => eprintln!("pulling {image}"),
            PullProgress::Line { text } => eprintln!("  {text}"),
            PullProgress::Done => eprintln!("pulled {image}"),
            PullProgress::Failed { error } => eprintln!("pull of {image} failed: {error}"),
        },
        Event::Service { status, .. } if ours(&status.name) => {
            if let Some(u) = status
                .update
                .as_ref()
                .filter(|u| u.state == berth_proto::UpdateState::Updating)
            {
                eprintln!(
                    "{}: swapped to {}; waiting for it to become healthy ({})",
                    status.name,
                    u.to.join(", "),
                    status.state
                );
            }
        }
        _ => {}
    }
}

const NO_SETTLE: Settle = Settle { secs: 0 };

async fn act(name: &str, verb: Verb, settle: Settle) -> Result<()> {
    check_name(name)?;
    let c = client()?;
    let r: PassReport = c.act(name, verb).await?;
    for a in &r.applied {
        println!("  {a}");
    }
    let mut st = c.service(name).await?;
    if settle.secs > 0 && matches!(st.state, State::Running | State::Starting) {
        st = watch_settle(&c, name, st, Duration::from_secs(settle.secs)).await?;
    }
    print_one_line(&st);
    if let Some(errors) = r.errors_of(name) {
        bail!("{errors}");
    }
    let ok = match verb {
        Verb::Disable => matches!(st.state, State::Off | State::Stopping),
        Verb::Stop => matches!(st.state, State::Stopped | State::Stopping),
        // An on-demand service is ready when idle: it starts at its first connection.
        Verb::Enable | Verb::Start | Verb::Restart => matches!(
            st.state,
            State::Running | State::Starting | State::Unhealthy | State::Idle
        ),
    };
    if !ok {
        let hint = st
            .hint
            .as_deref()
            .map(|h| format!("; to retry: {h}"))
            .unwrap_or_default();
        bail!(
            "{name} is {}{}{hint}",
            st.state.as_str(),
            st.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Watches a service that just came up for `window`: returns its status at the end, or as soon
/// as it crashed (a restart by systemd, or failed), in which case the last log lines are shown.
async fn watch_settle(
    c: &Client,
    name: &str,
    first: ServiceStatus,
    window: Duration,
) -> Result<ServiceStatus> {
    let until = tokio::time::Instant::now() + window;
    let mut st = first;
    let restarts = st.restarts;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        st = c.service(name).await?;
        let crashed = st.restarts > restarts
            || st.state == State::Failed
            || st.unit_state.ends_with("/auto-restart");
        if crashed {
            print_one_line(&st);
            let mut lines = Vec::new();
            let _logs_are_a_hint = c.logs(name, false, 10, |l| lines.push(l.to_string())).await;
            if !lines.is_empty() {
                eprintln!("last log lines of {name}:\n  {}", lines.join("\n  "));
            }
            bail!(
                "{name} crashed right after it started{}",
                st.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(st)
}

fn print_one_line(st: &ServiceStatus) {
    let urls: Vec<&str> = st.ports.iter().map(|p| p.url.as_str()).collect();
    let mut line = format!("{}: {}", st.name, st.state.as_str());
    if matches!(
        st.state,
        State::Running | State::Starting | State::Unhealthy
    ) && !urls.is_empty()
    {
        line.push_str(&format!(" — {}", urls.join(" ")));
    }
    if let Some(r) = &st.reason {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(h) = &st.hint {
        line.push_str(&format!("; to retry: {h}"));
    }
    if let Some(n) = &st.note {
        line.push_str(&format!(" [{n}]"));
    }
    println!("{line}");
}

async fn ls(json: bool) -> Result<()> {
    let c = client()?;
    let list = c.services().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let info = c.daemon().await?;
    warn_about(&info);
    print!("{}", table(&list));
    Ok(())
}

/// The service list as `berth ls` prints it.
fn table(list: &[ServiceStatus]) -> String {
    let mut out = format!(
        "{:<14} {:<9} {:<10} {:<22} REASON\n",
        "NAME", "CHOICE", "STATE", "PORTS"
    );
    for s in list {
        let ports: Vec<String> = s.ports.iter().map(|p| p.port.to_string()).collect();
        out.push_str(&format!(
            "{:<14} {:<9} {:<10} {:<22} {}\n",
            s.name,
            s.choice.as_str(),
            s.state.as_str(),
            ports.join(","),
            match (&s.reason, &s.note) {
                (Some(r), Some(n)) => format!("{r} [{n}]"),
                (Some(r), None) => r.clone(),
                (None, Some(n)) => format!("[{n}]"),
                (None, None) => String::new(),
            }
        ));
    }
    out
}

/// `berth ls --watch`: the list, redrawn at every event, until the daemon goes away.
async fn ls_watch() -> Result<()> {
    use std::io::IsTerminal as _;
    let c = client()?;
    let mut events = c.events().await?;
    let mut picture = berth_proto::Snapshot {
        taken_at: 0,
        daemon: c.daemon().await?,
        services: Vec::new(),
    };
    let clear = std::io::stdout().is_terminal();
    while let Some(e) = events.next().await {
        if !picture.apply(&e?) {
            continue;
        }
        let mut out = std::io::stdout().lock();
        if clear {
            // Home and clear: one screen that changes in place.
            let _stdout_closed = write!(out, "\x1b[H\x1b[2J");
        } else {
            let _stdout_closed = writeln!(out);
        }
        let _stdout_closed = write!(out, "{}", table(&picture.services));
        let _stdout_closed = out.flush();
    }
    bail!("the berth daemon closed the event stream (it stopped)")
}

/// `berth dashboard`: a login link from the daemon, opened with `xdg-open`.
async fn dashboard(print: bool, logs: Option<&str>) -> Result<()> {
    let path = match logs {
        Some(name) => {
            check_name(name)?;
            format!("/services/{name}/logs")
        }
        None => "/".to_string(),
    };
    let url = client()?.web_session(&path).await?;
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if print || !graphical {
        // The link works once and for two minutes.
        println!("{url}");
        return Ok(());
    }
    let status = std::process::Command::new("xdg-open")
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .status()
        .context("run xdg-open (or use `berth dashboard --print`)")?;
    if !status.success() {
        bail!("xdg-open failed ({status}); `berth dashboard --print` prints the link instead");
    }
    Ok(())
}

/// What is wrong with the daemon's catalog or Podman, on stderr before a listing.
fn warn_about(info: &DaemonInfo) {
    if let Some(e) = &info.catalog_error {
        let in_force = info
            .catalog_in_force
            .as_deref()
            .unwrap_or("the catalog in force before");
        eprintln!("warning: {e}\nin force meanwhile: {in_force}\n");
    }
    if let Some(e) = &info.config_error {
        eprintln!("warning: {e}\nthe daemon keeps the settings it started with\n");
    }
    if let Some(e) = &info.podman_error {
        eprintln!("warning: {e}; services keep running, container details may be old\n");
    }
    if let Some(e) = info.remote_catalog.as_ref().and_then(|r| r.error.as_ref()) {
        eprintln!("warning: remote catalog: {e}\n");
    }
}

/// `2026-12-01 20:43:10 UTC (5 min ago)`.
fn when(unix: u64) -> String {
    format!(
        "{} ({} ago)",
        format_unix(unix),
        format_age(now_unix().saturating_sub(unix))
    )
}

async fn status(name: &str, json: bool) -> Result<()> {
    check_name(name)?;
    let st: ServiceStatus = client()?.service(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!("{} — {}", st.name, st.description);
    println!("  choice:  {}", st.choice);
    match st.since {
        Some(t) => println!("  state:   {} since {}", st.state.as_str(), when(t)),
        None => println!("  state:   {}", st.state.as_str()),
    }
    if let Some(r) = &st.reason {
        println!("  reason:  {r}");
    }
    if let Some(h) = &st.hint {
        println!("  retry:   {h}");
    }
    let unit_state = if st.unit_state == "absent" {
        "not loaded: stopped, or never started".to_string()
    } else {
        st.unit_state.clone()
    };
    println!("  unit:    {} ({unit_state})", st.unit);
    if let Some(u) = &st.update {
        let to = u.to.join(", ");
        let line = match u.state {
            berth_proto::UpdateState::Updating => format!("updating to {to}, waiting for it to become healthy"),
            berth_proto::UpdateState::Updated => format!("updated to {to} {}", when(u.at)),
            berth_proto::UpdateState::RolledBack => format!(
                "rolled back {} from {to}: {}; it stays on the previous image until the catalog names another or `berth update {}`",
                when(u.at),
                u.reason.as_deref().unwrap_or("not healthy"),
                st.name
            ),
        };
        println!("  update:  {line}");
        if u.rollbacks > 0 {
            println!("  rollbacks: {}", u.rollbacks);
        }
    }
    if st.restarts > 0 {
        println!("  restarts by systemd: {}", st.restarts);
    }
    for p in &st.ports {
        println!("  port:    {} {}", p.name, p.url);
    }
    for c in &st.containers {
        let state = if c.state == "absent" {
            "not there"
        } else {
            c.state.as_str()
        };
        let since = c
            .started_at
            .as_deref()
            .map(|t| match parse_rfc3339(t) {
                Some(u) => format!(", started {}", when(u)),
                None => format!(", started {t}"),
            })
            .unwrap_or_default();
        println!(
            "  container {}: {state}{}{since}  [{}]",
            c.name,
            c.health
                .as_deref()
                .map(|h| format!(", {h}"))
                .unwrap_or_default(),
            c.image
        );
    }
    if let Some(p) = &st.probe {
        println!(
            "  probe:   {} ({}, {})",
            if p.ok { "ok" } else { "failing" },
            p.detail,
            when(p.at)
        );
    }
    Ok(())
}

fn etc_dir() -> PathBuf {
    std::env::var_os("BERTH_ETC_DIR").map_or_else(|| PathBuf::from("/etc/berth"), PathBuf::from)
}

/// Where backups go and where berth's secrets are (see `backup`).
fn backup_places(to: Option<PathBuf>) -> Result<crate::backup::run::Places> {
    let paths = crate::paths::Paths::from_env()?;
    let config = crate::config::Config::load(&etc_dir().join("config.toml"))?;
    let expand = |p: PathBuf| match p.strip_prefix("~") {
        Ok(rest) => paths.home.join(rest),
        Err(_) => p,
    };
    let user = std::env::var("USER").unwrap_or_default();
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| paths.home.join(".local/share"));
    let configured = to.or(config.backup_dir).map(expand);
    let (root, lasting) = crate::backup::default_root(
        configured.as_deref(),
        &Path::new("/shared/users").join(&user),
        &data_home,
    );
    Ok(crate::backup::run::Places {
        root,
        lasting,
        secrets_dir: paths.secrets_dir(),
    })
}

fn podman_cli() -> crate::backup::run::PodmanCli {
    crate::backup::run::PodmanCli {
        podman: PathBuf::from(crate::daemon::podman_path()),
    }
}

async fn backup(names: &[String], to: Option<PathBuf>, scheduled: bool) -> Result<()> {
    let cat = catalog::load(&Layers::standard(&etc_dir())?)?;
    let places = backup_places(to)?;
    let c = client()?;
    let chosen: Vec<String> = if names.is_empty() {
        c.services()
            .await?
            .into_iter()
            .filter(|s| s.choice == berth_proto::Choice::On)
            .filter(|s| {
                cat.get(&s.name).is_some_and(|svc| {
                    !crate::backup::volumes_of(svc).0.is_empty()
                        || places
                            .secrets_dir
                            .join(format!("{}.toml", s.name))
                            .is_file()
                })
            })
            .map(|s| s.name)
            .collect()
    } else {
        names.to_vec()
    };
    if chosen.is_empty() {
        println!("nothing to back up: no enabled service keeps data");
        return Ok(());
    }
    if !places.lasting {
        eprintln!(
            "note: {} is on this VM and goes with it; set [backup] dir in config.toml or mount /shared",
            places.root.display()
        );
    }
    let io = podman_cli();
    let mut failed = 0;
    for name in &chosen {
        check_name(name)?;
        let Some(svc) = cat.get(name) else {
            bail!("unknown service {name:?}");
        };
        println!("{name}:");
        let now = crate::clock::format_rfc3339(crate::clock::now_unix());
        match crate::backup::run::backup(&c, &io, svc, &places, &now).await {
            Ok(dir) => {
                println!("  backed up to {}", dir.display());
                if scheduled {
                    let keep = cat
                        .policy
                        .backup
                        .as_ref()
                        .map_or(crate::catalog::validate::DEFAULT_BACKUP_KEEP, |b| b.keep);
                    prune_backups(&places.root, name, keep)?;
                }
            }
            Err(e) => {
                eprintln!("  backup of {name} failed: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} backups failed", chosen.len());
    }
    Ok(())
}

/// Removes the oldest complete backups of `name` under `root` so that `keep` stay.
fn prune_backups(root: &Path, name: &str, keep: usize) -> Result<()> {
    let entries = crate::backup::run::list(root)?;
    for dir in crate::backup::to_prune(name, &entries, keep) {
        let path = root.join(&dir);
        std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        println!("  removed {dir} (keeping the newest {keep})");
    }
    Ok(())
}

async fn restore(name: &str, from: Option<&Path>, no_start: bool) -> Result<()> {
    check_name(name)?;
    let cat = catalog::load(&Layers::standard(&etc_dir())?)?;
    let svc = cat
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("unknown service {name:?}"))?;
    let places = backup_places(None)?;
    let (dir, m) = crate::backup::run::find(name, from, &places.root)?;
    println!(
        "restoring {name} from {} (made {})",
        dir.display(),
        m.created
    );
    let c = client()?;
    crate::backup::run::restore(&c, &podman_cli(), svc, &dir, &m, &places, no_start).await?;
    let st = c.service(name).await?;
    print_one_line(&st);
    Ok(())
}

fn render(out: &Path, names: &[String]) -> Result<()> {
    let layers = user_layers()?;
    let cat = catalog::load(&layers)?;
    for n in names {
        if cat.get(n).is_none() {
            bail!("unknown service {n:?}");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let ctx = crate::units::RenderCtx::default();
    let mut count = 0;
    for (name, svc) in &cat.services {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        for u in units::render(svc, &ctx) {
            let p = out.join(&u.name);
            crate::fsutil::write_atomic(&p, u.content.as_bytes(), 0o644)
                .with_context(|| format!("write {}", p.display()))?;
            count += 1;
        }
    }
    println!("wrote {count} units to {}", out.display());
    Ok(())
}

/// The layers files are validated over: none with `alone`, else the built-in and admin ones.
fn validation_layers(alone: bool) -> Result<Layers> {
    Ok(if alone {
        Layers {
            builtin: false,
            policy: None,
            files: Vec::new(),
            remote: Vec::new(),
            user: Vec::new(),
        }
    } else {
        Layers::standard(&etc_dir())?
    })
}

fn validate(paths: &[PathBuf], alone: bool) -> Result<()> {
    let mut layers = validation_layers(alone)?;
    // The given files come last, so they replace same-named services of the other layers.
    layers
        .files
        .retain(|f| !paths.iter().any(|p| same_file(p, f)));
    layers.files.extend(paths.iter().cloned());
    let cat = catalog::load(&layers)?;
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    println!(
        "ok: {} file(s) valid ({} services in the combined catalog)",
        names.len(),
        cat.services.len()
    );
    Ok(())
}

/// `berth catalog validate --remote FILE`: the header and every service, as the daemon would
/// check the fetched file (the signature aside).
fn validate_remote(paths: &[PathBuf], alone: bool) -> Result<()> {
    let [path] = paths else {
        bail!("--remote checks one remote catalog file at a time");
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let src = catalog::Source::new(catalog::remote::source_path(&path.to_string_lossy()), text);
    let header = catalog::remote::header(&src).map_err(catalog::CatalogError::Invalid)?;
    let layers = validation_layers(alone)?;
    let mut read = catalog::read_layers(&layers);
    if !read.unreadable.is_empty() {
        return Err(catalog::CatalogError::Invalid(read.unreadable).into());
    }
    read.files.push(src);
    let cat = catalog::from_sources(read.policy.as_ref(), &read.files)?;
    let mine = cat
        .services
        .values()
        .filter(|s| catalog::remote::is_remote(&s.origin.file))
        .count();
    println!(
        "ok: remote catalog serial {}, expires {}; {mine} services in it, {} in the combined catalog",
        header.serial,
        format_unix(header.expiry),
        cat.services.len()
    );
    if header.expiry <= now_unix() {
        bail!("it has expired already: berth would refuse it");
    }
    Ok(())
}

/// The layers as the daemon reads them for this user (built-in, admin, the user's own).
fn user_layers() -> Result<Layers> {
    Ok(match crate::paths::user_config_dir() {
        Some(dir) => Layers::with_user(&etc_dir(), &dir)?,
        None => Layers::standard(&etc_dir())?,
    })
}

fn show(name: Option<&str>, origin: bool, json: bool) -> Result<()> {
    let cat = catalog::load(&user_layers()?)?;
    if let Some(n) = name {
        if cat.get(n).is_none() {
            bail!("unknown service {n:?} (see `berth catalog show`)");
        }
    }
    let services: Vec<&catalog::Service> = cat
        .services
        .values()
        .filter(|s| name.is_none_or(|n| n == s.name))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "serial": cat.serial,
                "services": services,
                "ignored": cat.ignored,
            }))?
        );
        return Ok(());
    }
    print!("{}", catalog::show::text(&cat, &services, origin));
    Ok(())
}

async fn diff(policy: Option<&Path>, paths: &[PathBuf], json: bool) -> Result<()> {
    let now = user_layers()?;
    let old = catalog::load(&now).context("the catalog in force on this VM does not validate")?;
    let mut cand = now.clone();
    cand.files.retain(|f| {
        !paths
            .iter()
            .any(|p| same_file(p, f) || p.file_name() == f.file_name())
    });
    cand.files.extend(paths.iter().cloned());
    cand.files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if let Some(p) = policy {
        cand.policy = Some(p.to_path_buf());
    }
    let new = catalog::load(&cand)?;
    let state = match crate::paths::state_file() {
        Some(p) => crate::state::UserState::load(&crate::files::DiskFiles, &p).await?,
        None => crate::state::UserState::default(),
    };
    let ctx = crate::daemon::detect_render_ctx();
    let d = catalog::diff::diff(&old, &new, &state, &ctx);
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{d}");
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
