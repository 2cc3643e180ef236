use super::*;

fn one(text: &str) -> Result<Catalog, CatalogError> {
    from_sources(None, &[Source::new("/etc/berth/catalog.d/web.toml", text)])
}

fn diags(text: &str) -> Vec<Diagnostic> {
    match one(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

const GOOD: &str = r#"
name = "web"
description = "a web page"

[[containers]]
name = "app"
image = "localhost/web:1"
env = { A = "1" }

[[containers.ports]]
name = "http"
host = 18081
container = 8080
"#;

#[test]
fn good_file_parses() {
    let c = one(GOOD).expect("valid");
    let s = c.get("web").expect("web");
    assert_eq!(s.containers[0].ports[0].host, 18081);
    assert!(!s.is_pod());
}

#[test]
fn unknown_field_names_line_and_field() {
    let text = GOOD.replace(
        "description = \"a web page\"",
        "description = \"a web page\"\ncolour = \"red\"",
    );
    let d = diags(&text);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, 4, "{d:?}");
    assert!(d[0].message.contains("colour"), "{}", d[0]);
    assert!(
        d[0].to_string()
            .starts_with("/etc/berth/catalog.d/web.toml:4:1:"),
        "{}",
        d[0]
    );
}

#[test]
fn unknown_fields_do_not_hide_the_other_problems() {
    // README's example: an unknown field and a privileged port are reported together, and
    // every unknown field, not only the first.
    let text = GOOD
        .replace(
            "description = \"a web page\"",
            "description = \"a web page\"\ncolour = \"red\"",
        )
        .replace("host = 18081", "host = 80\nweight = 3");
    let d = diags(&text);
    let text_of: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(d.len(), 3, "{text_of:#?}");
    assert!(
        text_of[0].contains("web.toml:4:1: unknown field `colour`"),
        "{text_of:#?}"
    );
    assert!(
        text_of[1].contains("web.toml:14:1: unknown field `weight`"),
        "{text_of:#?}"
    );
    assert!(
        text_of[2].contains("web.toml:13:8: containers[0].ports[0].host: port 80"),
        "{text_of:#?}"
    );
}

#[test]
fn bad_toml_names_line() {
    let d = diags("name = \"web\"\ndescription = \n");
    assert_eq!(d[0].line, 2, "{d:?}");
}

#[test]
fn privileged_port_rejected_with_location() {
    let d = diags(&GOOD.replace("host = 18081", "host = 80"));
    assert_eq!(d[0].field, "containers[0].ports[0].host");
    assert_eq!((d[0].line, d[0].col), (12, 8), "{d:?}");
    assert!(d[0].message.contains("privileged"));
}

#[test]
fn port_clash_between_services_names_both() {
    let other = GOOD.replace("\"web\"", "\"web2\"");
    let e = from_sources(
        None,
        &[
            Source::new("a/web.toml", GOOD),
            Source::new("b/web2.toml", other),
        ],
    )
    .expect_err("clash");
    let d = e.diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    let text = d[0].to_string();
    assert!(text.starts_with("b/web2.toml:12:8:"), "{text}");
    assert!(
        text.contains("18081") && text.contains("a/web.toml:12:8"),
        "{text}"
    );
}

#[test]
fn uses_cycle_detected() {
    let a = GOOD.replace("name = \"web\"", "name = \"a\"\nuses = [\"b\"]");
    let b = GOOD
        .replace("name = \"web\"", "name = \"b\"\nuses = [\"a\"]")
        .replace("18081", "18082");
    let e = from_sources(None, &[Source::new("a.toml", a), Source::new("b.toml", b)])
        .expect_err("cycle");
    assert!(e.to_string().contains("cycle"), "{e}");
    assert!(e.to_string().contains("a.toml:3:9"), "{e}");
}

#[test]
fn unknown_use_detected() {
    let a = GOOD.replace("name = \"web\"", "name = \"web\"\nuses = [\"nope\"]");
    assert!(diags(&a)[0].message.contains("unknown service \"nope\""));
}

#[test]
fn after_cycle_and_order() {
    let text = r#"
name = "web"
description = "x"
[[containers]]
name = "app"
image = "localhost/a:1"
after = ["db"]
[[containers]]
name = "db"
image = "localhost/b:1"
"#;
    let c = one(text).expect("valid");
    let names: Vec<_> = c
        .get("web")
        .expect("web")
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["db", "app"]);
    let cyc = text.replace(
        "image = \"localhost/b:1\"",
        "image = \"localhost/b:1\"\nafter = [\"app\"]",
    );
    assert!(diags(&cyc)[0].message.contains("cycle"));
}

#[test]
fn secrets_must_be_declared() {
    let t = GOOD.replace("A = \"1\"", "A = \"${secret.pw}\"");
    assert!(diags(&t)[0].message.contains("\"pw\""));
    let ok = t.replace(
        "description = \"a web page\"",
        "description = \"a web page\"\nsecrets = [\"pw\"]",
    );
    assert!(one(&ok).expect("valid").get("web").expect("web").containers[0].uses_secrets());
}

#[test]
fn host_paths_follow_policy() {
    let t = format!("{GOOD}\n[[containers.volumes]]\nhost = \"/etc\"\ntarget = \"/x\"\n");
    assert!(diags(&t)[0].message.contains("not allowed by policy"));
    let t = format!("{GOOD}\n[[containers.volumes]]\nhost = \"/shared/team\"\ntarget = \"/x\"\n");
    assert!(one(&t).is_ok());
}

#[test]
fn cap_add_needs_reason_and_no_sys_admin() {
    let t = GOOD.replace("env = { A = \"1\" }", "cap_add = [\"CHOWN\"]");
    assert!(diags(&t)[0].field.ends_with("cap_add_reason"));
    let t = GOOD.replace(
        "env = { A = \"1\" }",
        "cap_add = [\"SYS_ADMIN\"]\ncap_add_reason = \"x\"",
    );
    assert!(diags(&t)[0].message.contains("SYS_ADMIN"));
}

#[test]
fn file_name_must_match_service() {
    let e = from_sources(None, &[Source::new("x/other.toml", GOOD)]).expect_err("mismatch");
    assert!(e.to_string().contains("web.toml"), "{e}");
}

#[test]
fn later_layer_replaces_builtin_service() {
    let over = GOOD.replace("18081", "18082");
    let c = from_sources(
        None,
        &[
            Source::new("a/web.toml", GOOD),
            Source::new("b/web.toml", over),
        ],
    )
    .expect("valid");
    assert_eq!(
        c.get("web").expect("web").containers[0].ports[0].host,
        18082
    );
}

#[test]
fn policy_port_range_applies() {
    let policy = Source::new("/etc/berth/policy.toml", "port_min = 20000\n");
    let e = from_sources(Some(&policy), &[Source::new("web.toml", GOOD)]).expect_err("range");
    assert!(
        e.to_string()
            .contains("outside the allowed range 20000..=65535"),
        "{e}"
    );
}

#[test]
fn builtin_catalog_is_valid() {
    let c = load(&Layers {
        builtin: true,
        policy: None,
        files: vec![],
    })
    .expect("built-in catalog valid");
    for name in [
        "demo",
        "n8n",
        "ollama",
        "qdrant",
        "open-webui",
        "langfuse",
        "flowise",
        "searxng",
        "gitlab-ce",
        "appflowy",
        "affine",
        "openproject",
        "supabase",
    ] {
        assert!(c.get(name).is_some(), "built-in catalog lacks {name}");
    }
}

#[test]
fn a_container_port_on_a_used_services_stable_port_is_refused_naming_both() {
    let api = GOOD.replace("\"web\"", "\"api\"").replace("18081", "18090");
    // The client's container listens on 18090 itself: berth's relay to api needs it.
    let client = GOOD
        .replace("name = \"web\"", "name = \"client\"\nuses = [\"api\"]")
        .replace("18081", "18091")
        .replace("container = 8080", "container = 18090");
    assert!(client.contains("container = 18090"), "{client}");
    let e = from_sources(
        None,
        &[
            Source::new("a/api.toml", api.clone()),
            Source::new("c/client.toml", client),
        ],
    )
    .expect_err("clash");
    let text = e.to_string();
    assert!(text.contains("c/client.toml"), "{text}");
    assert!(text.contains("container port 18090"), "{text}");
    assert!(text.contains("service \"api\""), "{text}");
    assert!(text.contains("a/api.toml"), "{text}");
}

#[test]
fn service_urls_resolve_only_for_used_services() {
    let api = GOOD.replace("\"web\"", "\"api\"").replace("18081", "18090");
    let client = GOOD
        .replace("name = \"web\"", "name = \"client\"\nuses = [\"api\"]")
        .replace(
            "A = \"1\"",
            "A = \"${service.api.url}/v1\", B = \"${service.api.http.url}\"",
        )
        .replace("18081", "18091");
    let c = from_sources(
        None,
        &[
            Source::new("a/api.toml", api.clone()),
            Source::new("c/client.toml", client.clone()),
        ],
    )
    .expect("valid");
    let env = &c.get("client").expect("client").containers[0].env;
    assert_eq!(env["A"], "http://127.0.0.1:18090/v1");
    assert_eq!(env["B"], "http://127.0.0.1:18090");
    let not_used = client.replace("uses = [\"api\"]\n", "");
    let e = from_sources(
        None,
        &[
            Source::new("a/api.toml", api.clone()),
            Source::new("c/client.toml", not_used),
        ],
    )
    .expect_err("api not in uses");
    assert!(
        e.to_string().contains("not in this service's `uses`"),
        "{e}"
    );
    let bad_port = client.replace("${service.api.http.url}", "${service.api.grpc.url}");
    let e = from_sources(
        None,
        &[
            Source::new("a/api.toml", api),
            Source::new("c/client.toml", bad_port),
        ],
    )
    .expect_err("no such port");
    assert!(e.to_string().contains("no port named \"grpc\""), "{e}");
}

#[test]
fn shm_size_is_a_size_within_bounds() {
    let with = |v: &str| {
        GOOD.replace(
            "image = \"localhost/web:1\"",
            &format!("image = \"localhost/web:1\"\nshm_size = {v}"),
        )
    };
    let c = one(&with("\"256m\"")).expect("valid");
    assert_eq!(
        c.get("web").expect("test setup").containers[0].shm_size,
        Some(256 << 20)
    );
    assert_eq!(
        one(&with("\"1GB\""))
            .expect("valid")
            .get("web")
            .expect("test setup")
            .containers[0]
            .shm_size,
        Some(1 << 30)
    );
    for (bad, msg) in [
        ("\"256\"", "needs a unit"),
        ("\"256x\"", "unknown unit"),
        ("\"512k\"", "outside 1m..=16g"),
        ("\"64g\"", "outside 1m..=16g"),
    ] {
        let d = diags(&with(bad));
        assert_eq!(d.len(), 1, "{bad}: {d:?}");
        assert_eq!(d[0].line, 8, "{d:?}");
        assert_eq!(d[0].field, "containers[0].shm_size");
        assert!(d[0].message.contains(msg), "{bad}: {}", d[0]);
    }
}

#[test]
fn shm_size_is_refused_in_a_pod() {
    let text = format!(
        "{GOOD}\n[[containers]]\nname = \"db\"\nimage = \"localhost/db:1\"\nshm_size = \"256m\"\n"
    );
    let d = diags(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, "containers[1].shm_size");
    assert_eq!(d[0].line, 18, "{d:?}");
    assert!(d[0].message.contains("Podman 3.4 cannot size"), "{}", d[0]);
}

#[test]
fn backup_modes_are_validated_with_their_fields() {
    let with = |b: &str| {
        from_sources(
            None,
            &[Source::new(
                "t/web.toml",
                GOOD.replacen("[[containers]]", &format!("{b}\n[[containers]]"), 1),
            )],
        )
    };
    let c = with("").expect("no [backup]");
    assert_eq!(
        c.get("web").expect("web").backup,
        crate::catalog::BackupMode::Stop
    );
    let c = with("[backup]\nmode = \"live\"").expect("live");
    assert_eq!(
        c.get("web").expect("web").backup,
        crate::catalog::BackupMode::Live
    );
    let e = with("[backup]\nmode = \"snapshot\"").expect_err("unknown mode");
    assert!(e.to_string().contains("backup.mode"), "{e}");
    assert!(
        e.to_string().contains("t/web.toml:"),
        "names the file and line: {e}"
    );
    let e = with("[backup]\nmode = \"command\"\ncontainer = \"nope\"\ncommand = [\"true\"]")
        .expect_err("no such container");
    assert!(e.to_string().contains("backup.container"), "{e}");
    let e =
        with("[backup]\nmode = \"live\"\ncommand = [\"true\"]").expect_err("command without mode");
    assert!(
        e.to_string().contains("takes no container or command"),
        "{e}"
    );
    let e = with("[backup]\nmode = \"stop\"\nwhen = \"daily\"").expect_err("unknown field");
    assert!(e.to_string().contains("when"), "{e}");
}
