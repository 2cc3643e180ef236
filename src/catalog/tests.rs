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
fn a_policy_without_allowed_host_paths_keeps_the_shared_default_and_a_list_replaces_it() {
    let shared =
        format!("{GOOD}\n[[containers.volumes]]\nhost = \"/shared/team\"\ntarget = \"/x\"\n");
    let src = |t: &str| [Source::new("a/web.toml", t.to_string())];
    // A policy about something else: /shared stays allowed.
    assert!(with_policy("port_min = 2000\n", &src(&shared)).is_ok());
    // An explicit list is exactly what is allowed; an empty one allows nothing, naming its line.
    let e = with_policy("\nallowed_host_paths = []\n", &src(&shared)).expect_err("none allowed");
    assert!(e.to_string().contains("not allowed by policy"), "{e}");
    let c = with_policy("\nallowed_host_paths = []\n", &src(GOOD)).expect("valid");
    assert_eq!(
        c.policy.rule("allowed_host_paths"),
        "policy rule `allowed_host_paths` (/etc/berth/policy.toml:2)"
    );
    assert!(with_policy("allowed_host_paths = [\"/data\"]\n", &src(&shared)).is_err());
    let data = shared.replace("/shared/team", "/data/x");
    assert!(with_policy("allowed_host_paths = [\"/data\"]\n", &src(&data)).is_ok());
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
        remote: vec![],
        user: vec![],
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

/// Supabase's kong and studio each sign the anon and service_role keys from the one JWT
/// secret (a TOML file cannot sign a JWT). Kong only accepts the keys Studio sends if both
/// sign byte-for-byte the same header and claims.
#[test]
fn supabase_kong_and_studio_sign_the_same_api_keys() {
    let c = load(&Layers {
        builtin: true,
        policy: None,
        files: vec![],
        remote: vec![],
        user: vec![],
    })
    .expect("built-in catalog valid");
    let s = c.get("supabase").expect("supabase");
    let file = |ctr: &str, target: &str| {
        s.containers
            .iter()
            .find(|c| c.name == ctr)
            .and_then(|c| c.files.iter().find(|f| f.target == target))
            .map(|f| f.content.clone())
            .unwrap_or_else(|| panic!("{ctr} has no file {target}"))
    };
    let kong = file("kong", "/home/kong/berth-start.sh");
    let studio = file("studio", "/app/berth-api-key.js");
    for part in [
        r#"{"alg":"HS256","typ":"JWT"}"#,
        r#""iss":"supabase","iat":1767225600,"exp":2524608000}"#,
    ] {
        assert!(kong.contains(part), "kong lacks {part}");
        assert!(studio.contains(part), "studio lacks {part}");
    }
    // The keys are made from the generated secret, never written into the catalog.
    for ctr in &s.containers {
        assert!(
            ctr.files.iter().all(|f| !f.content.contains("eyJhbGci")),
            "{} has a literal JWT",
            ctr.name
        );
        assert!(
            ctr.env.values().all(|v| !v.contains("eyJhbGci")),
            "{} has a literal JWT",
            ctr.name
        );
    }
    let studio_ctr = s
        .containers
        .iter()
        .find(|c| c.name == "studio")
        .expect("studio");
    assert_eq!(studio_ctr.env["AUTH_JWT_SECRET"], "${secret.jwt_secret}");
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

/// `client` uses `api` through `${service.api.url}` (env A) and `${service.api.http.url}` (B).
fn api_and_client() -> [Source; 2] {
    let api = GOOD.replace("\"web\"", "\"api\"").replace("18081", "18090");
    let client = GOOD
        .replace("name = \"web\"", "name = \"client\"\nuses = [\"api\"]")
        .replace(
            "A = \"1\"",
            "A = \"${service.api.url}/v1\", B = \"${service.api.http.url}\"",
        )
        .replace("18081", "18091");
    [
        Source::new("a/api.toml", api),
        Source::new("c/client.toml", client),
    ]
}

#[test]
fn service_urls_resolve_only_for_used_services() {
    let [api, client] = api_and_client().map(|s| s.text);
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

// ---- policy rules -------------------------------------------------------------------------

const POLICY: &str = "/etc/berth/policy.toml";

fn with_policy(policy: &str, sources: &[Source]) -> Result<Catalog, CatalogError> {
    from_sources(Some(&Source::new(POLICY, policy)), sources)
}

fn web_with_image(image: &str) -> String {
    GOOD.replace("localhost/web:1", image)
}

#[test]
fn an_image_outside_the_allowed_patterns_refuses_its_service_naming_the_rule() {
    let policy = "# images\n\nallowed_images = [\"registry.corp/*\", \"localhost/berth-*\"]\n";
    let c = with_policy(
        policy,
        &[Source::new("/etc/berth/catalog.d/web.toml", GOOD)],
    )
    .expect("a refusal is not an error of the catalog");
    let why = c
        .get("web")
        .expect("kept")
        .refused
        .clone()
        .expect("refused");
    assert!(
        why.contains("image localhost/web:1 is not allowed"),
        "{why}"
    );
    assert!(
        why.contains("policy rule `allowed_images` (/etc/berth/policy.toml:3)"),
        "{why}"
    );
    let ok = with_policy(
        policy,
        &[Source::new(
            "/etc/berth/catalog.d/web.toml",
            web_with_image("registry.corp/team/web:2"),
        )],
    )
    .expect("valid");
    assert_eq!(ok.get("web").expect("web").refused, None);
}

#[test]
fn a_patched_image_is_held_to_the_same_rule() {
    let patch = "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\nimage = \"docker.io/evil/web:1\"\n";
    let c = with_policy(
        "allowed_images = [\"localhost/*\"]\n",
        &[
            Source::new("<built-in>/web.toml", GOOD),
            Source::new("/etc/berth/catalog.d/web.toml", patch),
        ],
    )
    .expect("valid");
    let why = c.get("web").expect("web").refused.clone().expect("refused");
    assert!(why.contains("docker.io/evil/web:1"), "{why}");
}

#[test]
fn glob_patterns() {
    assert!(glob("docker.io/library/*", "docker.io/library/postgres:16"));
    assert!(glob("*", "anything"));
    assert!(glob("quay.io/*/minio:*", "quay.io/minio/minio:RELEASE.1"));
    assert!(!glob("quay.io/*/minio:*", "quay.io/minio/mc:1"));
    assert!(glob("localhost/web:1", "localhost/web:1"));
    assert!(!glob("localhost/web:1", "localhost/web:10"));
    assert!(!glob("a*a", "a"), "the two ends may not overlap");
}

#[test]
fn required_services_are_locked_and_must_exist_and_not_be_refused() {
    let c = with_policy(
        "required_services = [\"web\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect("valid");
    assert!(c.policy.is_required("web"));
    assert_eq!(
        c.policy.rule("required_services"),
        "policy rule `required_services` (/etc/berth/policy.toml:1)"
    );
    let e = with_policy(
        "\nrequired_services = [\"nosuch\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect_err("unknown");
    assert_eq!(e.diagnostics()[0].line, 2, "{e}");
    assert!(e.to_string().contains("unknown service \"nosuch\""), "{e}");
    let e = with_policy(
        "required_services = [\"web\"]\nallowed_images = [\"registry.corp/*\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect_err("required but refused");
    assert!(
        e.to_string()
            .contains("policy.toml:1:1: required_services: required service \"web\" is refused"),
        "{e}"
    );
    let e = with_policy(
        "required_services = [\"web\"]\ndenied_services = [\"web\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect_err("both");
    assert!(e.to_string().contains("also in denied_services"), "{e}");
}

#[test]
fn denied_services_are_refused_with_the_rule() {
    let c = with_policy(
        "denied_services = [\"web\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect("valid");
    let why = c.get("web").expect("web").refused.clone().expect("refused");
    assert_eq!(
        why,
        "denied by policy rule `denied_services` (/etc/berth/policy.toml:1)"
    );
}

#[test]
fn on_demand_is_forced_for_named_services_with_a_port() {
    let c = with_policy(
        "on_demand = [\"web\"]\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect("valid");
    let s = c.get("web").expect("web");
    assert!(s.on_demand);
    assert_eq!(s.policy_set[0].field, "on_demand");
    assert_eq!(
        (s.policy_set[0].file.as_path(), s.policy_set[0].line),
        (Path::new(POLICY), 1)
    );
    let portless = GOOD
        .split("[[containers.ports]]")
        .next()
        .expect("test setup")
        .to_string();
    let e = with_policy(
        "on_demand = [\"web\"]\n",
        &[Source::new("a/web.toml", portless)],
    )
    .expect_err("no port");
    assert!(
        e.to_string()
            .contains("policy.toml:1:1: on_demand: service \"web\" has no port"),
        "{e}"
    );
}

#[test]
fn ceilings_clamp_containers_and_record_the_rule() {
    let big = GOOD.replace(
        "image = \"localhost/web:1\"",
        "image = \"localhost/web:1\"\nmemory = \"8g\"\ncpus = 4",
    );
    let policy = "[limits]\ncontainer_memory = \"2g\"\ncontainer_cpus = 1.5\n";
    let c = with_policy(policy, &[Source::new("a/web.toml", big)]).expect("valid");
    let s = c.get("web").expect("web");
    assert_eq!(s.containers[0].memory, Some(2 << 30));
    assert_eq!(s.containers[0].cpus, Some(1.5));
    let fields: Vec<(&str, usize)> = s
        .policy_set
        .iter()
        .map(|f| (f.field.as_str(), f.line))
        .collect();
    assert_eq!(
        fields,
        [("containers.app.memory", 2), ("containers.app.cpus", 3)]
    );
    // Without limits of its own a container gets the ceiling; below it, its own stays.
    let c = with_policy(policy, &[Source::new("a/web.toml", GOOD)]).expect("valid");
    assert_eq!(
        c.get("web").expect("web").containers[0].memory,
        Some(2 << 30)
    );
    let small = GOOD.replace(
        "image = \"localhost/web:1\"",
        "image = \"localhost/web:1\"\nmemory = \"256m\"",
    );
    let c = with_policy(policy, &[Source::new("a/web.toml", small)]).expect("valid");
    assert_eq!(
        c.get("web").expect("web").containers[0].memory,
        Some(256 << 20)
    );
}

#[test]
fn user_ceilings_count_every_service_that_is_on() {
    let a = GOOD.replace(
        "image = \"localhost/web:1\"",
        "image = \"localhost/web:1\"\nmemory = \"3g\"",
    );
    let b = a.replace("\"web\"", "\"web2\"").replace("18081", "18082");
    let c = with_policy(
        "[limits]\nuser_memory = \"4g\"\n",
        &[Source::new("a/web.toml", a), Source::new("a/web2.toml", b)],
    )
    .expect("valid");
    let one = [c.get("web").expect("web")];
    assert!(policy::within_user_limits(&c.policy, one.into_iter()).is_ok());
    let both = c.services.values();
    let e = policy::within_user_limits(&c.policy, both).expect_err("6g > 4g");
    assert!(e.contains("6g of memory, above the 4g of policy rule `limits.user_memory` (/etc/berth/policy.toml:2)"), "{e}");
}

#[test]
fn bad_policy_values_name_their_line() {
    for (text, line, field) in [
        ("allowed_images = []\n", 1, "allowed_images"),
        ("allowed_images = [\"a b\"]\n", 1, "allowed_images"),
        (
            "\n[limits]\ncontainer_memory = \"1k\"\n",
            3,
            "limits.container_memory",
        ),
        ("[limits]\nuser_cpus = 0\n", 2, "limits.user_cpus"),
        ("[limits]\nswap = \"1g\"\n", 2, ""),
        (
            "required_services = [\"Bad Name\"]\n",
            1,
            "required_services",
        ),
        ("user_catalogs = \"yes\"\n", 1, ""),
    ] {
        let e = with_policy(text, &[Source::new("a/web.toml", GOOD)]).expect_err(text);
        let d = &e.diagnostics()[0];
        assert_eq!((d.line, d.field.as_str()), (line, field), "{text}: {e}");
    }
}

#[test]
fn container_limits_are_validated() {
    let with = |v: &str| {
        GOOD.replace(
            "image = \"localhost/web:1\"",
            &format!("image = \"localhost/web:1\"\n{v}"),
        )
    };
    assert!(one(&with("memory = \"1g\"\ncpus = 0.5")).is_ok());
    let d = diags(&with("memory = \"1m\""));
    assert_eq!(
        (d[0].line, d[0].field.as_str()),
        (8, "containers[0].memory"),
        "{d:?}"
    );
    let d = diags(&with("cpus = -1"));
    assert_eq!(
        (d[0].line, d[0].field.as_str()),
        (8, "containers[0].cpus"),
        "{d:?}"
    );
}

fn user_file(name: &str, text: String) -> Source {
    Source::new(format!("/home/u/.config/berth/catalog.d/{name}.toml"), text).in_layer(Layer::User)
}

#[test]
fn user_catalogs_are_read_only_where_policy_allows() {
    let mine = GOOD
        .replace("\"web\"", "\"mine\"")
        .replace("18081", "18099");
    let c = from_sources(None, &[user_file("mine", mine.clone())]).expect("valid");
    assert!(c.get("mine").is_none(), "not read by default");
    assert!(c.ignored[0].contains("mine.toml: not read: policy rule `user_catalogs` (the default) does not allow user catalogs"), "{:?}", c.ignored);
    let c = with_policy("user_catalogs = true\n", &[user_file("mine", mine)]).expect("valid");
    let s = c.get("mine").expect("read");
    assert_eq!(s.origin.layer, Layer::User);
    assert_eq!(s.origin.line, 2);
    assert!(c.ignored.is_empty());
}

#[test]
fn a_users_entry_may_not_replace_a_required_service_and_is_held_to_the_image_rule() {
    let policy =
        "user_catalogs = true\nrequired_services = [\"web\"]\nallowed_images = [\"localhost/*\"]\n";
    let theirs = GOOD.replace("18081", "18082");
    let c = with_policy(
        policy,
        &[
            Source::new("/etc/berth/catalog.d/web.toml", GOOD),
            user_file("web", theirs),
        ],
    )
    .expect("valid");
    assert_eq!(c.get("web").expect("web").origin.layer, Layer::Admin);
    assert!(
        c.ignored[0]
            .contains("required by policy rule `required_services` (/etc/berth/policy.toml:2)"),
        "{:?}",
        c.ignored
    );
    let other = web_with_image("docker.io/x/y:1")
        .replace("\"web\"", "\"mine\"")
        .replace("18081", "18099");
    let c = with_policy(
        policy,
        &[
            Source::new("/etc/berth/catalog.d/web.toml", GOOD),
            user_file("mine", other),
        ],
    )
    .expect("valid");
    let why = c
        .get("mine")
        .expect("mine")
        .refused
        .clone()
        .expect("refused");
    assert!(
        why.contains("allowed_images` (/etc/berth/policy.toml:3)"),
        "{why}"
    );
}

// ---- the parsers against random input -----------------------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Slots of a catalog file, each one of: absent, good, or bad in some way (the first is
    /// good). One choice
    /// per slot keeps keys unique, so random files get past the TOML syntax into the checks
    /// behind it (ports, images, references, patches, the policy's rules).
    const SERVICE_SLOTS: &[&[&str]] = &[
        &[
            "name = \"web\"",
            "name = \"web\"",
            "name = \"Web!\"",
            "name = \"other\"",
            "",
        ],
        &["description = \"a page\"", "description = \"\"", ""],
        &["", "patch = true", "patch = false"],
        &["", "on_demand = true"],
        &["", "uses = [\"web\"]", "uses = [\"nosuch\"]"],
        &["", "gpu = \"optional\"", "gpu = \"maybe\""],
        &["", "idle_stop = \"5m\"", "idle_stop = \"5x\""],
        &[
            "",
            "secrets = [\"pw\"]",
            "secrets = [\"pw\", \"pw\"]",
            "secrets = [\"P W\"]",
        ],
        &["", "colour = \"red\""],
        &["[[containers]]", "[[containers]]", ""],
        &["name = \"app\"", "name = \"app\"", "name = \"-x\"", ""],
        &[
            "image = \"localhost/web:1\"",
            "image = \"docker.io/x/y:latest\"",
            "image = \"nope\"",
            "image = \"registry.corp/a/b:2\"",
            "",
        ],
        &[
            "",
            "memory = \"512m\"",
            "memory = \"1k\"",
            "memory = \"9g\"",
        ],
        &["", "cpus = 1.5", "cpus = -3", "cpus = \"two\"", "cpus = 4"],
        &["", "shm_size = \"64m\"", "shm_size = \"1k\""],
        &[
            "",
            "env = { A = \"${secret.pw}\" }",
            "env = { B = \"${service.web.url}\" }",
            "env = { \"1x\" = \"v\" }",
            "env = { C = \"${secret.pw\" }",
        ],
        &["", "after = [\"app\"]", "after = [\"db\"]"],
        &[
            "",
            "cap_add = [\"SYS_ADMIN\"]",
            "cap_add = [\"CHOWN\"]\ncap_add_reason = \"x\"",
            "cap_add = [\"CHOWN\"]",
        ],
        &["", "weight = 1"],
        &["[[containers.ports]]", "[[containers.ports]]", ""],
        &["name = \"http\"", ""],
        &[
            "host = 18081",
            "host = 80",
            "host = 99999",
            "host = \"x\"",
            "",
        ],
        &["container = 8080", ""],
        &[
            "",
            "[[containers.volumes]]\nhost = \"/etc\"\ntarget = \"/data\"",
            "[[containers.volumes]]\nname = \"d\"\ntarget = \"/data\"",
            "[[containers.volumes]]\ntarget = \"rel\"",
        ],
        &[
            "",
            "[containers.health]\ncmd = \"true\"",
            "[containers.health]\ncmd = \"\"\nretries = 0",
        ],
        &[
            "",
            "[[containers]]\nname = \"db\"\nimage = \"localhost/db:1\"",
            "[[containers]]\nname = \"app\"\nimage = \"localhost/db:1\"",
        ],
        &[
            "",
            "[probe]\nport = \"http\"",
            "[probe]\nport = \"nope\"\npath = \"x y\"",
        ],
        &["", "", "", "= broken", "[[", "name = [1, 2"],
    ];

    const POLICY_SLOTS: &[&[&str]] = &[
        &[
            "",
            "allowed_host_paths = [\"/shared\"]",
            "allowed_host_paths = [\"/\"]",
        ],
        &["", "port_min = 2000", "port_min = 100"],
        &["", "port_max = 30000", "port_max = 1500"],
        &[
            "",
            "denied_services = [\"web\"]",
            "denied_services = [\"nosuch\"]",
        ],
        &[
            "",
            "default_enabled = [\"web\"]",
            "default_enabled = [\"nosuch\"]",
        ],
        &[
            "",
            "required_services = [\"web\"]",
            "required_services = [\"Nope\"]",
            "required_services = [\"nosuch\"]",
        ],
        &["", "on_demand = [\"web\"]", "on_demand = [\"nosuch\"]"],
        &[
            "",
            "allowed_images = [\"localhost/*\"]",
            "allowed_images = []",
            "allowed_images = [\"registry.corp/*\"]",
        ],
        &["", "user_catalogs = true", "user_catalogs = 1"],
        &["", "bogus = 1"],
        &[
            "",
            "[limits]\ncontainer_memory = \"1g\"\ncontainer_cpus = 0.5",
            "[limits]\ncontainer_memory = \"1\"",
            "[limits]\nuser_memory = \"2g\"\nuser_cpus = 1",
            "[limits]\nuser_cpus = 100000",
        ],
        &["", "", "[[x"],
    ];

    pub fn file(slots: &'static [&'static [&'static str]]) -> impl Strategy<Value = String> {
        // Mostly the first (good) choice: a file with one or two problems reaches more
        // checks than one with twenty.
        let picks: Vec<_> = slots
            .iter()
            .map(|alts| prop_oneof![6 => Just(alts[0]), 1 => proptest::sample::select(*alts)])
            .collect();
        prop_oneof![
            8 => picks.prop_map(|l| l.join("\n")),
            1 => "\\PC{0,200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

        /// No input panics, and every rejection names a line of a file it read.
        #[test]
        fn any_catalog_and_policy_is_accepted_or_rejected_with_lines(
            svc in file(SERVICE_SLOTS),
            policy in file(POLICY_SLOTS),
            user in file(SERVICE_SLOTS),
        ) {
            let policy = Source::new("/etc/berth/policy.toml", policy);
            let files = [
                Source::new("<built-in>/web.toml", GOOD),
                Source::new("/etc/berth/catalog.d/web.toml", svc),
                Source::new("/home/u/.config/berth/catalog.d/web.toml", user).in_layer(Layer::User),
            ];
            if let Err(e) = from_sources(Some(&policy), &files) {
                let d = e.diagnostics();
                prop_assert!(!d.is_empty(), "a rejection says why");
                for d in d {
                    prop_assert!(d.line > 0, "no line: {d}");
                    prop_assert!(
                        d.file == policy.path || files.iter().any(|f| f.path == d.file),
                        "names a file it read: {d}"
                    );
                }
            }
        }
    }

    /// The generator reaches past the syntax: some files pass, many fail in their fields.
    #[test]
    fn the_generator_reaches_the_checks_behind_the_syntax() {
        use proptest::strategy::ValueTree;
        let mut r = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut deep) = (0, 0);
        for _ in 0..400 {
            let s = file(SERVICE_SLOTS)
                .new_tree(&mut r)
                .expect("tree")
                .current();
            let p = file(POLICY_SLOTS).new_tree(&mut r).expect("tree").current();
            match from_sources(
                Some(&Source::new("/etc/berth/policy.toml", p)),
                &[Source::new("/etc/berth/catalog.d/web.toml", s)],
            ) {
                Ok(_) => ok += 1,
                Err(e) if e.diagnostics().iter().any(|d| !d.field.is_empty()) => deep += 1,
                Err(_) => {}
            }
        }
        assert!(
            ok >= 5 && deep >= 100,
            "accepted {ok}, rejected in a field {deep}"
        );
    }
}

#[test]
fn the_example_policy_validates_against_the_built_in_catalog() {
    let policy = Source::new(
        "config/policy.example.toml",
        include_str!("../../config/policy.example.toml"),
    );
    let c = from_sources(Some(&policy), &builtin_sources()).expect("the example is valid");
    assert!(c.policy.is_required("demo"));
    assert!(c.get("openproject").expect("built-in").on_demand);
    assert!(c.get("gitlab-ce").expect("built-in").refused.is_some());
    assert!(c
        .get("ollama")
        .expect("built-in")
        .refused
        .as_deref()
        .is_some_and(|r| r.starts_with("provided by the cloud")));
    assert_eq!(
        c.get("open-webui").expect("built-in").containers[0].env["OLLAMA_BASE_URL"],
        "https://ollama.gpu.cloud.example"
    );
    assert!(c.services.values().all(|s| s
        .containers
        .iter()
        .all(|k| k.memory.is_some_and(|m| m <= 8 << 30))));
}

// ---- services the cloud provides ---------------------------------------------------------

#[test]
fn a_remote_service_gives_its_consumers_the_clouds_url_and_is_not_offered_locally() {
    let policy = "# the GPU nodes\n[remote_services.api]\nurl = \"https://llm.cloud.example/ollama/\"\nhealth_path = \"/api/version\"\n";
    let c = with_policy(policy, &api_and_client()).expect("valid");
    let env = &c.get("client").expect("client").containers[0].env;
    assert_eq!(env["A"], "https://llm.cloud.example/ollama/v1");
    assert_eq!(env["B"], "https://llm.cloud.example/ollama");
    let r = &c.policy.remote_services["api"];
    assert_eq!(r.health_url, "https://llm.cloud.example/ollama/api/version");
    assert_eq!(r.check_interval, validate::REMOTE_CHECK_INTERVAL);
    let why = c
        .get("api")
        .expect("kept")
        .refused
        .clone()
        .expect("refused");
    assert_eq!(
        why,
        "provided by the cloud at https://llm.cloud.example/ollama (policy rule `remote_services.api` (/etc/berth/policy.toml:2))"
    );
    assert_eq!(c.get("client").expect("client").refused, None);
}

#[test]
fn remote_service_entries_are_checked_with_their_line() {
    let cases = [
        (
            "[remote_services.api]\nurl = \"https://user:pw@llm.example\"\n",
            2,
            "remote_services.api.url",
            "carries credentials",
        ),
        (
            "[remote_services.api]\nurl = \"ftp://llm.example\"\n",
            2,
            "remote_services.api.url",
            "must start with https:// or http://",
        ),
        (
            "[remote_services.api]\nurl = \"https://llm.example\"\nhealth_path = \"api\"\n",
            3,
            "remote_services.api.health_path",
            "must be a path starting with /",
        ),
        (
            "[remote_services.api]\nurl = \"https://llm.example\"\ncheck_interval = \"10\"\n",
            3,
            "remote_services.api.check_interval",
            "",
        ),
        (
            "\n[remote_services.nosuch]\nurl = \"https://llm.example\"\n",
            2,
            "remote_services.nosuch",
            "unknown service \"nosuch\"",
        ),
        (
            "required_services = [\"api\"]\n[remote_services.api]\nurl = \"https://llm.example\"\n",
            2,
            "remote_services.api",
            "also in required_services",
        ),
        (
            "[remote_services.api]\nurl = \"https://llm.example\"\ntoken = \"x\"\n",
            3,
            "",
            "token",
        ),
    ];
    for (policy, line, field, text) in cases {
        let e = with_policy(policy, &api_and_client()).expect_err(policy);
        let d = &e.diagnostics()[0];
        assert_eq!(d.file, PathBuf::from(POLICY), "{policy}: {e}");
        assert_eq!(d.line, line, "{policy}: {e}");
        if !field.is_empty() {
            assert_eq!(d.field, field, "{policy}: {e}");
        }
        assert!(e.to_string().contains(text), "{policy}: {e}");
    }
}

#[test]
fn a_backup_schedule_is_read_and_checked_with_its_line() {
    let c = with_policy(
        "[backup]\nevery = \"24h\"\nkeep = 3\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect("valid");
    assert_eq!(
        c.policy.backup,
        Some(BackupPolicy {
            every: std::time::Duration::from_secs(86_400),
            keep: 3
        })
    );
    let c = with_policy(
        "[backup]\nevery = \"1h\"\n",
        &[Source::new("a/web.toml", GOOD)],
    )
    .expect("valid");
    assert_eq!(
        c.policy.backup.map(|b| b.keep),
        Some(validate::DEFAULT_BACKUP_KEEP)
    );
    assert!(with_policy("", &[Source::new("a/web.toml", GOOD)])
        .expect("valid")
        .policy
        .backup
        .is_none());
    for (policy, line, needle) in [
        ("[backup]\nevery = \"0s\"\n", 2, "at least 1s"),
        ("[backup]\nevery = \"daily\"\n", 2, "backup.every"),
        ("[backup]\nevery = \"1h\"\nkeep = 0\n", 3, "1..=1000"),
        ("[backup]\nevery = \"1h\"\nat = \"02:00\"\n", 3, "at"),
        ("[backup]\nkeep = 2\n", 1, "every"),
    ] {
        let e = with_policy(policy, &[Source::new("a/web.toml", GOOD)]).expect_err(policy);
        assert_eq!(e.diagnostics()[0].line, line, "{policy}: {e}");
        assert!(e.to_string().contains(needle), "{policy}: {e}");
    }
}

// ---- digest pinning -----------------------------------------------------------------------

#[test]
fn a_malformed_digest_names_file_line_and_field() {
    let e = one(&web_with_image(&format!(
        "registry.corp/web@sha256:{}",
        "a".repeat(40)
    )))
    .expect_err("short digest");
    let msg = e.to_string();
    assert!(
        msg.contains("/etc/berth/catalog.d/web.toml:7:")
            && msg.contains("containers[0].image")
            && msg.contains("64 lowercase hex digits, found 40"),
        "{msg}"
    );
    let e = one(&web_with_image(&format!(
        "registry.corp/web:2@sha512:{}",
        "a".repeat(64)
    )))
    .expect_err("other algorithm");
    assert!(
        e.to_string().contains("must be sha256:<64 hex digits>"),
        "{e}"
    );
}

#[test]
fn pinned_images_are_kept_as_written_and_held_to_the_allowed_patterns() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    for image in [
        format!("registry.corp/team/web@{digest}"),
        format!("registry.corp/team/web:2.1@{digest}"),
    ] {
        let c = one(&web_with_image(&image)).expect("valid");
        assert_eq!(c.get("web").expect("web").containers[0].image, image);
    }
    let policy = "allowed_images = [\"registry.corp/*\"]\n";
    let refused = with_policy(
        policy,
        &[Source::new(
            "/etc/berth/catalog.d/web.toml",
            web_with_image(&format!("docker.io/evil/web@{digest}")),
        )],
    )
    .expect("a refusal is not an error of the catalog");
    let why = refused
        .get("web")
        .expect("kept")
        .refused
        .clone()
        .expect("refused");
    assert!(
        why.contains(&format!("image docker.io/evil/web@{digest} is not allowed"))
            && why.contains("policy rule `allowed_images` (/etc/berth/policy.toml:1)"),
        "{why}"
    );
    let ok = with_policy(
        policy,
        &[Source::new(
            "/etc/berth/catalog.d/web.toml",
            web_with_image(&format!("registry.corp/team/web:2.1@{digest}")),
        )],
    )
    .expect("valid");
    assert_eq!(ok.get("web").expect("web").refused, None);
}
