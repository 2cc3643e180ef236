//! Patch layers: a catalog file with `patch = true` changes a few fields of a service that an
//! earlier layer defined, instead of replacing the service whole. An admin who only mirrors
//! images (a local registry, or images built on the machine) writes
//!
//! ```toml
//! name = "n8n"
//! patch = true
//! [[containers]]
//! name = "n8n"                       # matched by name against the base's containers
//! image = "registry.example/n8n:2.41.3"
//! env = { N8N_LOG_LEVEL = "debug" }  # merged: these keys are set, the others are kept
//! ```
//!
//! and keeps every other field of the built-in entry, including its later fixes. A patch's
//! own fields are validated with the patch file's own file:line (images as strictly as in a
//! full entry, env names, secret references against the base's `secrets`); a container name
//! the base does not have, a patch without a base, or an unknown field is an error naming the
//! patch file's line. Each field a patch sets is recorded in [`Service::patched`], so where
//! a value came from stays known.
//!
//! Limits: only `image` and `env` can be patched; a later full definition of the same
//! service replaces it whole, patches before it included.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::model::{FieldOrigin, Service};
use super::validate::{check_image, secret_refs, valid_env_name};
use super::{Diagnostic, Source};

/// Just enough of a file to tell a patch from a full service.
#[derive(Debug, Deserialize)]
struct Peek {
    patch: Option<Spanned<bool>>,
}

/// Whether `text` is meant as a patch (`patch = …` at the top level). `None` when it does not
/// parse; the full parse then reports the syntax error.
pub fn is_patch(text: &str) -> Option<bool> {
    toml::from_str::<Peek>(text).ok().map(|p| p.patch.is_some())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatch {
    pub name: Spanned<String>,
    pub patch: Spanned<bool>,
    #[serde(default)]
    pub containers: Vec<Spanned<RawContainerPatch>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainerPatch {
    pub name: Spanned<String>,
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
}

/// Parses and applies one patch file to `services` (the layers before it). Problems go to
/// `diags` and leave `services` unchanged.
pub fn apply(src: &Source, services: &mut BTreeMap<String, Service>, diags: &mut Vec<Diagnostic>) {
    let raw = match toml::from_str::<RawPatch>(&src.text) {
        Ok(r) => r,
        Err(e) => {
            diags.push(src.diagnostic(e.span(), String::new(), e.message().trim().to_string()));
            return;
        }
    };
    let before = diags.len();
    let mut err = |span: std::ops::Range<usize>, field: String, msg: String| {
        diags.push(src.diagnostic(Some(span), field, msg));
    };
    let name = raw.name.get_ref();
    if !*raw.patch.get_ref() {
        err(
            raw.patch.span(),
            "patch".into(),
            "must be true; leave it out for a full service definition".into(),
        );
    }
    if let Some(stem) = src.path.file_stem().and_then(|s| s.to_str()) {
        if stem != name {
            err(
                raw.name.span(),
                "name".into(),
                format!("a patch of service {name:?} must live in a file named {name}.toml"),
            );
        }
    }
    let Some(base) = services.get(name) else {
        if before > 0 {
            // The base may be a file that failed validation: its own error says why.
            return;
        }
        err(
            raw.name.span(),
            "name".into(),
            format!("no service {name:?} in the layers before this patch"),
        );
        return;
    };
    let mut patched = base.clone();
    let mut seen = Vec::new();
    for (i, rc) in raw.containers.iter().enumerate() {
        let rc = rc.get_ref();
        let field = format!("containers[{i}]");
        let cname = rc.name.get_ref();
        if seen.contains(cname) {
            err(
                rc.name.span(),
                format!("{field}.name"),
                format!("container {cname:?} patched twice in this file"),
            );
            continue;
        }
        seen.push(cname.clone());
        let Some(ctr) = patched.containers.iter_mut().find(|c| &c.name == cname) else {
            let known: Vec<&str> = base.containers.iter().map(|c| c.name.as_str()).collect();
            err(
                rc.name.span(),
                format!("{field}.name"),
                format!(
                    "service {name:?} ({}) has no container {cname:?} (it has: {})",
                    base.origin.file.display(),
                    known.join(", ")
                ),
            );
            continue;
        };
        if let Some(image) = &rc.image {
            match check_image(image.get_ref()) {
                Ok(()) => {
                    ctr.image = image.get_ref().clone();
                    patched
                        .patched
                        .push(origin(src, image, format!("containers.{cname}.image")));
                }
                Err(e) => err(image.span(), format!("{field}.image"), e),
            }
        }
        for (k, v) in &rc.env {
            let f = format!("{field}.env.{k}");
            if !valid_env_name(k) {
                err(v.span(), f, format!("{k:?} is not a valid variable name"));
                continue;
            }
            match secret_refs(v.get_ref()) {
                Err(e) => err(v.span(), f, e),
                Ok(refs) => {
                    if let Some(r) = refs.iter().find(|r| !base.secrets.iter().any(|s| s == *r)) {
                        err(
                            v.span(),
                            f,
                            format!(
                                "secret {r:?} is not listed in the `secrets` of service {name:?}"
                            ),
                        );
                    } else {
                        ctr.env.insert(k.clone(), v.get_ref().clone());
                        patched
                            .patched
                            .push(origin(src, v, format!("containers.{cname}.env.{k}")));
                    }
                }
            }
        }
    }
    if diags.len() == before {
        services.insert(name.clone(), patched);
    }
}

fn origin<T>(src: &Source, v: &Spanned<T>, field: String) -> FieldOrigin {
    let (line, col) = src.line_col(v.span().start);
    FieldOrigin {
        field,
        file: src.path.clone(),
        line,
        col,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_sources, Catalog, CatalogError, Source};

    const BASE: &str = r#"
name = "web"
description = "a web page"
secrets = ["pw"]

[[containers]]
name = "db"
image = "docker.io/library/postgres:16.9"
env = { POSTGRES_PASSWORD = "${secret.pw}", KEEP = "1" }

[[containers]]
name = "app"
image = "docker.io/example/app:1.0"
after = ["db"]
env = { MODE = "prod" }

[[containers.ports]]
name = "http"
host = 18081
container = 8080
"#;

    fn layered(patch: &str) -> Result<Catalog, CatalogError> {
        from_sources(
            None,
            &[
                Source::new("<built-in>/web.toml", BASE),
                Source::new("/etc/berth/catalog.d/web.toml", patch),
            ],
        )
    }

    fn errors(patch: &str) -> Vec<String> {
        match layered(patch) {
            Ok(_) => panic!("expected an error for:\n{patch}"),
            Err(e) => e.diagnostics().iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_patch_replaces_only_the_fields_it_names() {
        let c = layered(
            r#"
name = "web"
patch = true
[[containers]]
name = "app"
image = "localhost/app:1.0-local"
env = { MODE = "debug", EXTRA = "${secret.pw}" }
"#,
        )
        .expect("valid patch");
        let s = c.get("web").expect("test setup");
        let app = s
            .containers
            .iter()
            .find(|c| c.name == "app")
            .expect("test setup");
        let db = s
            .containers
            .iter()
            .find(|c| c.name == "db")
            .expect("test setup");
        assert_eq!(app.image, "localhost/app:1.0-local");
        assert_eq!(app.env["MODE"], "debug");
        assert_eq!(app.env["EXTRA"], "${secret.pw}");
        assert!(
            app.uses_secrets(),
            "a patched secret reference goes to the env file"
        );
        assert_eq!(db.image, "docker.io/library/postgres:16.9", "untouched");
        assert_eq!(db.env["KEEP"], "1");
        assert_eq!(
            app.ports[0].host, 18081,
            "everything else comes from the base"
        );
        assert_eq!(app.after, ["db"]);
        assert_eq!(s.origin.file.to_str(), Some("<built-in>/web.toml"));
        let fields: Vec<String> = s
            .patched
            .iter()
            .map(|o| format!("{} {}:{}", o.field, o.file.display(), o.line))
            .collect();
        assert_eq!(
            fields,
            [
                "containers.app.image /etc/berth/catalog.d/web.toml:6",
                "containers.app.env.EXTRA /etc/berth/catalog.d/web.toml:7",
                "containers.app.env.MODE /etc/berth/catalog.d/web.toml:7",
            ]
        );
    }

    #[test]
    fn an_unknown_container_names_the_patch_line() {
        let e = errors("name = \"web\"\npatch = true\n[[containers]]\nname = \"cache\"\nimage = \"localhost/c:1\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("/etc/berth/catalog.d/web.toml:4:8: containers[0].name: service \"web\" (<built-in>/web.toml) has no container \"cache\" (it has: db, app)"),
            "{e:?}"
        );
    }

    #[test]
    fn patched_fields_are_validated_at_the_patch_line() {
        let e = errors(
            "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\nimage = \"app:latest\"\nenv = { \"BAD NAME\" = \"x\", S = \"${secret.nope}\" }\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("/etc/berth/catalog.d/web.toml:5:9: containers[0].image: image \"app:latest\" must name its registry"), "{e:?}");
        assert!(
            e[1].contains(":6:") && e[1].contains("env.BAD NAME"),
            "{e:?}"
        );
        assert!(
            e[2].contains("secret \"nope\" is not listed in the `secrets` of service \"web\""),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_and_a_missing_base_are_errors() {
        let e = errors("name = \"web\"\npatch = true\nports = []\n");
        assert!(
            e[0].starts_with("/etc/berth/catalog.d/web.toml:3:1:")
                && e[0].contains("unknown field `ports`"),
            "{e:?}"
        );
        let e = errors(
            "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\ncommand = [\"x\"]\n",
        );
        assert!(
            e[0].contains(":5:1:") && e[0].contains("unknown field `command`"),
            "{e:?}"
        );
        let e = errors("name = \"web\"\npatch = false\n");
        assert!(e[0].contains(":2:9: patch: must be true"), "{e:?}");

        let alone = from_sources(
            None,
            &[Source::new(
                "/etc/berth/catalog.d/other.toml",
                "name = \"other\"\npatch = true\n",
            )],
        )
        .expect_err("no base");
        let d = alone.diagnostics()[0].to_string();
        assert!(
            d.contains(":1:8: name: no service \"other\" in the layers before this patch"),
            "{d}"
        );
    }

    #[test]
    fn a_later_full_definition_replaces_the_patched_service() {
        let c = from_sources(
            None,
            &[
                Source::new("<built-in>/web.toml", BASE),
                Source::new("/a/web.toml", "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\nimage = \"localhost/app:2\"\n"),
                Source::new("/b/web.toml", BASE.replace("docker.io/example/app:1.0", "docker.io/example/app:3.0")),
            ],
        )
        .expect("valid");
        let s = c.get("web").expect("test setup");
        assert_eq!(
            s.containers
                .iter()
                .find(|c| c.name == "app")
                .expect("test setup")
                .image,
            "docker.io/example/app:3.0"
        );
        assert!(s.patched.is_empty());
        assert_eq!(s.origin.file.to_str(), Some("/b/web.toml"));
    }
}
