//! Health-gated start order inside a pod: a container whose `after` names a sibling with a
//! health check starts only once that sibling's check passes, and a sibling that never
//! passes within the service's `start_timeout` fails the container with a reason that says
//! so, instead of a crash loop into systemd's restart budget. Pure: what units render and
//! how the engine reads the outcome.
//!
//! How it runs (rendered by [`crate::units`]): the container unit's `ExecStart=` is a small
//! `/bin/sh` loop over `podman healthcheck run NAME` (in Podman 3.4, 4.x and 5.x alike; `podman
//! wait --condition=healthy` does not exist on 3.4) that `exec`s the unchanged `podman run`
//! once every gated sibling answers healthy. On timeout the loop exits with
//! [`GATE_EXIT_BASE`]` + i` (`i` = the sibling's place in [`gated`]) and the unit lists those
//! codes in `RestartPreventExitStatus=`, so systemd leaves it `failed` at once. The loop is the
//! unit's main process on purpose: systemd checks `RestartPreventExitStatus=` against the main
//! process only — a failing `ExecStartPre=` is restarted regardless (checked on systemd 252:
//! the unit restarted 3 times in 4 s). The restart after a real crash waits again, so an
//! application never starts against a database that is restarting too.
//!
//! Limits: a gate only looks at siblings of the same pod (not at services in `uses`), and a
//! container with a health check that never passes holds its dependants for the whole
//! `start_timeout`.

use std::time::Duration;

use crate::catalog::{Container, Service};

/// The exit status of the gate when the sibling at place `i` never became healthy.
pub const GATE_EXIT_BASE: i32 = 190;
/// At most this many siblings gate one container (exit statuses 190..=198).
pub const MAX_GATED: usize = 9;
/// How often the gate asks a sibling's health check.
pub const POLL: Duration = Duration::from_secs(1);

/// The siblings that gate `ctr`: those in its `after` that have a health check, in `after`'s
/// order. Empty outside pods.
pub fn gated<'a>(svc: &'a Service, ctr: &Container) -> Vec<&'a Container> {
    if !svc.is_pod() {
        return Vec::new();
    }
    ctr.after
        .iter()
        .filter_map(|a| svc.containers.iter().find(|c| &c.name == a))
        .filter(|c| c.health.is_some())
        .take(MAX_GATED)
        .collect()
}

/// The exit statuses of a gate that timed out, for `RestartPreventExitStatus=`.
pub fn exit_codes(n: usize) -> Vec<i32> {
    (0..n.min(MAX_GATED))
        .map(|i| GATE_EXIT_BASE + i as i32)
        .collect()
}

/// How long the gate waits for all siblings together: the service's start timeout. The
/// unit's own `TimeoutStartSec=` is this plus [`START_MARGIN`], so the gate's clear failure
/// comes before systemd's generic timeout.
pub fn bound(svc: &Service) -> Duration {
    svc.start_timeout
}

/// Time left for `podman run` itself after the gate passed at the last moment.
pub const START_MARGIN: Duration = Duration::from_secs(30);

/// "2m", "90s", "1h": a duration as the catalog writes it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The shell loop run as `sh -c SCRIPT berth-health-gate PODMAN SECONDS SHOWN PREFIX NAME… --
/// COMMAND…`: waits for every `PREFIX-NAME` container to pass `podman healthcheck run`, then
/// `exec`s COMMAND; prints its progress to stderr (the journal). POSIX sh (dash), one line.
pub fn script() -> String {
    format!(
        "podman=$1; t=$2; shown=$3; prefix=$4; shift 4; i=0; start=$(date +%s); \
         while [ \"$1\" != -- ]; do \
         echo \"berth: waiting until $1 is healthy\" >&2; \
         until \"$podman\" healthcheck run \"$prefix$1\" >/dev/null 2>&1; do \
         if [ $(( $(date +%s) - start )) -ge \"$t\" ]; then \
         echo \"berth: $1 never became healthy within $shown\" >&2; exit $(({base} + i)); fi; \
         sleep {poll}; done; \
         echo \"berth: $1 is healthy after $(( $(date +%s) - start ))s\" >&2; \
         i=$((i + 1)); shift; done; shift; exec \"$@\"",
        base = GATE_EXIT_BASE,
        poll = POLL.as_secs(),
    )
}

/// Why a pod member's unit is failed, from its `ExecMainStatus`: the gate's own reason when
/// the status is one of the gate's codes for this container, `None` otherwise (an ordinary
/// crash, which the caller reports as such).
pub fn failure_reason(svc: &Service, ctr: &Container, exec_main_status: i32) -> Option<String> {
    let deps = gated(svc, ctr);
    let i = usize::try_from(exec_main_status.checked_sub(GATE_EXIT_BASE)?).ok()?;
    let dep = deps.get(i)?;
    Some(format!(
        "{} never became healthy within {}; {} was not started",
        dep.name,
        human(bound(svc)),
        ctr.name
    ))
}

/// A pod member's unit as the engine gathered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub container: String,
    /// systemd's `ActiveState` of the member's unit; `inactive` when systemd has not loaded it.
    pub active: String,
    /// `ExecMainStatus`, read only when the unit is `failed` (0 otherwise).
    pub exec_main_status: i32,
}

/// What the members of a pod whose main unit runs say about the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A member's unit failed: its health gate timed out, or it crashed past its restarts.
    Failed(String),
    /// A member is not up yet (waiting for its gate, or starting).
    Starting(String),
}

/// The first failed member decides, else the first member that is not active yet; `None`
/// when every member is active or the service is not a pod. Pure; for the engine's view.
pub fn verdict(svc: &Service, members: &[Member]) -> Option<Verdict> {
    if !svc.is_pod() {
        return None;
    }
    let ctr = |m: &Member| svc.containers.iter().find(|c| c.name == m.container);
    if let Some((m, c)) = members
        .iter()
        .filter(|m| m.active == "failed")
        .find_map(|m| ctr(m).map(|c| (m, c)))
    {
        return Some(Verdict::Failed(member_failed(svc, c, m.exec_main_status)));
    }
    members
        .iter()
        .find(|m| m.active != "active")
        .map(|m| Verdict::Starting(format!("{} is starting", m.container)))
}

/// The reason of a pod whose member unit `ctr` is `failed` while the pod itself runs: the
/// gate's reason, or the member's exit status. For the engine's status view.
pub fn member_failed(svc: &Service, ctr: &Container, exec_main_status: i32) -> String {
    failure_reason(svc, ctr, exec_main_status).unwrap_or_else(|| {
        format!(
            "container {} failed (exit status {exec_main_status}); berth start retries",
            ctr.name
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    fn svc(text: &str) -> Service {
        let c = from_sources(None, &[Source::new("t/app.toml", text)]).expect("valid");
        c.services.into_values().next().expect("one service")
    }

    const POD: &str = r#"
name = "app"
description = "x"
start_timeout = "2m"
[[containers]]
name = "web"
image = "localhost/web:1"
after = ["cache", "db"]
[[containers]]
name = "db"
image = "localhost/db:1"
[containers.health]
cmd = "pg_isready"
[[containers]]
name = "cache"
image = "localhost/cache:1"
"#;

    #[test]
    fn only_siblings_with_a_health_check_gate() {
        let s = svc(POD);
        let web = s
            .containers
            .iter()
            .find(|c| c.name == "web")
            .expect("test setup");
        let names: Vec<_> = gated(&s, web).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["db"], "cache has no health check");
        let db = s
            .containers
            .iter()
            .find(|c| c.name == "db")
            .expect("test setup");
        assert!(gated(&s, db).is_empty());
    }

    #[test]
    fn the_reason_names_the_dependency_and_the_bound() {
        let s = svc(POD);
        let web = s
            .containers
            .iter()
            .find(|c| c.name == "web")
            .expect("test setup");
        assert_eq!(
            failure_reason(&s, web, GATE_EXIT_BASE).as_deref(),
            Some("db never became healthy within 2m; web was not started")
        );
        assert_eq!(
            failure_reason(&s, web, GATE_EXIT_BASE + 1),
            None,
            "one gate only"
        );
        assert_eq!(failure_reason(&s, web, 1), None);
        assert_eq!(failure_reason(&s, web, -1), None);
        assert_eq!(
            member_failed(&s, web, 3),
            "container web failed (exit status 3); berth start retries"
        );
    }

    #[test]
    fn members_decide_a_running_pod_failed_or_still_starting() {
        let s = svc(POD);
        let m = |c: &str, a: &str, code: i32| Member {
            container: c.into(),
            active: a.into(),
            exec_main_status: code,
        };
        let all_up = [
            m("db", "active", 0),
            m("cache", "active", 0),
            m("web", "active", 0),
        ];
        assert_eq!(verdict(&s, &all_up), None);
        assert_eq!(
            verdict(
                &s,
                &[
                    m("db", "active", 0),
                    m("cache", "active", 0),
                    m("web", "activating", 0)
                ]
            ),
            Some(Verdict::Starting("web is starting".into()))
        );
        assert_eq!(
            verdict(
                &s,
                &[
                    m("db", "activating", 0),
                    m("cache", "active", 0),
                    m("web", "failed", GATE_EXIT_BASE)
                ]
            ),
            Some(Verdict::Failed(
                "db never became healthy within 2m; web was not started".into()
            )),
            "a failure outranks a member still starting"
        );
        assert_eq!(
            verdict(
                &s,
                &[
                    m("db", "failed", 1),
                    m("cache", "active", 0),
                    m("web", "active", 0)
                ]
            ),
            Some(Verdict::Failed(
                "container db failed (exit status 1); berth start retries".into()
            ))
        );
    }

    #[test]
    fn durations_read_like_the_catalog() {
        assert_eq!(human(Duration::from_secs(120)), "2m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(exit_codes(2), [190, 191]);
        assert_eq!(exit_codes(20).len(), MAX_GATED);
    }

    /// The loop is real shell: run it with a fake podman that turns healthy on its third call.
    #[test]
    fn the_script_waits_then_execs_and_times_out_with_the_code() {
        let dir = tempfile::tempdir().expect("test setup");
        let fake = dir.path().join("podman");
        let count = dir.path().join("count");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nn=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
                 [ \"$1 $2 $3\" = \"healthcheck run berth-app--db\" ] || exit 125\n[ $n -ge 3 ]\n",
                c = count.display()
            ),
        )
        .expect("test setup");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("test setup");
        let run = |t: &str| {
            std::process::Command::new("/bin/sh")
                .args(["-c", &script(), "berth-health-gate"])
                .arg(&fake)
                .args([t, "2m", "berth-app--", "db", "--", "echo", "started", "ok"])
                .output()
                .expect("test setup")
        };
        let o = run("30");
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "started ok\n");
        assert!(String::from_utf8_lossy(&o.stderr).contains("db is healthy after"));

        std::fs::write(&count, "-100").expect("test setup");
        let o = run("1");
        assert_eq!(o.status.code(), Some(GATE_EXIT_BASE), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("db never became healthy within 2m"));
        assert!(o.stdout.is_empty(), "the command must not run");
    }
}
