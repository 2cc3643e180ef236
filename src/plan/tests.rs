use super::*;

fn unit(name: &str, content: &str) -> UnitFile {
    UnitFile {
        name: name.into(),
        content: content.into(),
    }
}

fn state(name: &str, active: &str) -> (String, UnitState) {
    (
        name.into(),
        UnitState {
            name: name.into(),
            load: "loaded".into(),
            active: active.into(),
            sub: String::new(),
        },
    )
}

fn want(choice: Choice, units: Vec<UnitFile>) -> DesiredService {
    DesiredService {
        choice,
        units,
        images: vec!["localhost/demo:1".into()],
        uses: vec![],
        blocked: None,
        force: false,
        retry: false,
    }
}

fn desired(list: Vec<(&str, DesiredService)>) -> Desired {
    Desired {
        services: list.into_iter().map(|(n, d)| (n.to_string(), d)).collect(),
    }
}

fn names(p: &Plan) -> Vec<String> {
    p.actions.iter().map(|a| a.to_string()).collect()
}

#[test]
fn fresh_enable_writes_reloads_starts() {
    let d = desired(vec![(
        "demo",
        want(Choice::On, vec![unit("berth-demo.service", "A")]),
    )]);
    let mut a = Actual::default();
    a.images.insert("localhost/demo:1".into(), true);
    let p = plan(&d, &a);
    assert_eq!(
        names(&p),
        [
            "write unit berth-demo.service",
            "reload systemd",
            "write files of demo",
            "start berth-demo.service"
        ]
    );
}

#[test]
fn converged_world_gives_empty_plan() {
    let d = desired(vec![(
        "demo",
        want(Choice::On, vec![unit("berth-demo.service", "A")]),
    )]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "active")].into(),
        ..Actual::default()
    };
    let p = plan(&d, &a);
    assert!(p.is_empty(), "{p}");
}

#[test]
fn disable_stops_then_removes_and_reloads() {
    let d = desired(vec![(
        "demo",
        want(Choice::Off, vec![unit("berth-demo.service", "A")]),
    )]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "active")].into(),
        ..Actual::default()
    };
    assert_eq!(
        names(&plan(&d, &a)),
        [
            "stop berth-demo.service",
            "remove unit berth-demo.service",
            "reload systemd"
        ]
    );
}

#[test]
fn service_gone_from_catalog_is_removed() {
    let d = Desired::default();
    let a = Actual {
        unit_files: [
            ("berth-old.service".to_string(), "A".to_string()),
            ("berth-old--db.service".to_string(), "B".to_string()),
        ]
        .into(),
        units: [state("berth-old.service", "failed")].into(),
        ..Actual::default()
    };
    assert_eq!(
        names(&plan(&d, &a)),
        [
            "reset-failed berth-old.service",
            "remove unit berth-old--db.service",
            "remove unit berth-old.service",
            "reload systemd"
        ]
    );
}

#[test]
fn changed_unit_restarts_running_service() {
    let d = desired(vec![(
        "demo",
        want(Choice::On, vec![unit("berth-demo.service", "B")]),
    )]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "active")].into(),
        ..Actual::default()
    };
    assert_eq!(
        names(&plan(&d, &a)),
        [
            "write unit berth-demo.service",
            "reload systemd",
            "write files of demo",
            "restart berth-demo.service"
        ]
    );
}

#[test]
fn stale_unit_only_reloads() {
    let d = desired(vec![(
        "demo",
        want(Choice::On, vec![unit("berth-demo.service", "A")]),
    )]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "active")].into(),
        stale: ["berth-demo.service".to_string()].into(),
        ..Actual::default()
    };
    assert_eq!(names(&plan(&d, &a)), ["reload systemd"]);
}

#[test]
fn missing_image_pulls_and_waits_without_starting() {
    let d = desired(vec![(
        "demo",
        want(Choice::On, vec![unit("berth-demo.service", "A")]),
    )]);
    let mut a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        ..Actual::default()
    };
    a.images.insert("localhost/demo:1".into(), false);
    let p = plan(&d, &a);
    assert_eq!(names(&p), ["pull localhost/demo:1"]);
    assert!(p.waiting["demo"].contains("pulling"));

    a.pulls.insert(
        "localhost/demo:1".into(),
        PullState::Failed("no registry".into()),
    );
    let p = plan(&d, &a);
    assert!(p.is_empty(), "a failed pull is not retried by itself: {p}");
    assert!(
        p.waiting["demo"].contains("could not be pulled: no registry"),
        "{:?}",
        p.waiting
    );
}

#[test]
fn failed_unit_waits_for_user_then_retries_on_force() {
    let mut ds = want(Choice::On, vec![unit("berth-demo.service", "A")]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "failed")].into(),
        images: [("localhost/demo:1".to_string(), true)].into(),
        ..Actual::default()
    };
    let p = plan(&desired(vec![("demo", ds.clone())]), &a);
    assert!(p.is_empty());
    assert!(p.waiting["demo"].contains("failed"));
    ds.force = true;
    assert_eq!(
        names(&plan(&desired(vec![("demo", ds)]), &a)),
        [
            "write files of demo",
            "reset-failed berth-demo.service",
            "start berth-demo.service"
        ]
    );
}

#[test]
fn a_connection_retries_a_failed_unit_but_never_restarts_a_running_one() {
    let mut ds = want(Choice::On, vec![unit("berth-demo.service", "A")]);
    ds.retry = true;
    let mut a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "failed")].into(),
        images: [("localhost/demo:1".to_string(), true)].into(),
        ..Actual::default()
    };
    assert_eq!(
        names(&plan(&desired(vec![("demo", ds.clone())]), &a)),
        [
            "write files of demo",
            "reset-failed berth-demo.service",
            "start berth-demo.service"
        ]
    );
    for running in ["active", "activating"] {
        a.units = [state("berth-demo.service", running)].into();
        let p = plan(&desired(vec![("demo", ds.clone())]), &a);
        assert!(p.is_empty(), "{running}: {:?}", names(&p));
    }
}

#[test]
fn stopped_choice_keeps_units_and_stops() {
    let d = desired(vec![(
        "demo",
        want(Choice::Stopped, vec![unit("berth-demo.service", "A")]),
    )]);
    let a = Actual {
        unit_files: [("berth-demo.service".to_string(), "A".to_string())].into(),
        units: [state("berth-demo.service", "active")].into(),
        ..Actual::default()
    };
    assert_eq!(names(&plan(&d, &a)), ["stop berth-demo.service"]);
}

#[test]
fn used_services_start_first() {
    let mut web = want(Choice::On, vec![unit("berth-a-web.service", "A")]);
    web.uses = vec!["z-llm".into()];
    let llm = want(Choice::On, vec![unit("berth-z-llm.service", "B")]);
    let mut a = Actual::default();
    a.images.insert("localhost/demo:1".into(), true);
    let p = plan(&desired(vec![("a-web", web), ("z-llm", llm)]), &a);
    let starts: Vec<_> = names(&p)
        .into_iter()
        .filter(|n| n.starts_with("start"))
        .collect();
    assert_eq!(
        starts,
        ["start berth-z-llm.service", "start berth-a-web.service"]
    );
}

#[test]
fn blocked_service_is_not_started() {
    let mut d = want(Choice::On, vec![unit("berth-demo.service", "A")]);
    d.blocked = Some("needs a GPU".into());
    let p = plan(&desired(vec![("demo", d)]), &Actual::default());
    assert_eq!(
        names(&p),
        ["write unit berth-demo.service", "reload systemd"]
    );
    assert_eq!(p.waiting["demo"], "needs a GPU");
}

#[test]
fn a_restart_of_a_pod_resets_its_members_left_failed_by_a_health_gate() {
    let mut ds = want(
        Choice::On,
        vec![
            unit("berth-app.service", "P"),
            unit("berth-app--db.service", "D"),
            unit("berth-app--web.service", "W"),
        ],
    );
    ds.force = true;
    let a = Actual {
        unit_files: [
            ("berth-app.service".to_string(), "P".to_string()),
            ("berth-app--db.service".to_string(), "D".to_string()),
            ("berth-app--web.service".to_string(), "W".to_string()),
        ]
        .into(),
        units: [
            state("berth-app.service", "active"),
            state("berth-app--db.service", "active"),
            state("berth-app--web.service", "failed"),
        ]
        .into(),
        images: [("localhost/demo:1".to_string(), true)].into(),
        ..Actual::default()
    };
    assert_eq!(
        names(&plan(&desired(vec![("app", ds)]), &a)),
        [
            "write files of app",
            "reset-failed berth-app--web.service",
            "restart berth-app.service"
        ]
    );
}

#[test]
fn a_retry_of_a_running_pod_starts_only_its_failed_member() {
    let mut ds = want(
        Choice::On,
        vec![
            unit("berth-app.service", "P"),
            unit("berth-app--db.service", "D"),
            unit("berth-app--web.service", "W"),
        ],
    );
    let a = Actual {
        unit_files: [
            ("berth-app.service".to_string(), "P".to_string()),
            ("berth-app--db.service".to_string(), "D".to_string()),
            ("berth-app--web.service".to_string(), "W".to_string()),
        ]
        .into(),
        units: [
            state("berth-app.service", "active"),
            state("berth-app--db.service", "active"),
            state("berth-app--web.service", "failed"),
        ]
        .into(),
        images: [("localhost/demo:1".to_string(), true)].into(),
        ..Actual::default()
    };
    assert!(
        plan(&desired(vec![("app", ds.clone())]), &a).is_empty(),
        "nothing without the user asking"
    );
    ds.retry = true;
    assert_eq!(
        names(&plan(&desired(vec![("app", ds)]), &a)),
        [
            "reset-failed berth-app--web.service",
            "start berth-app--web.service"
        ]
    );
}
