//! `berth catalog show`: the layered catalog in words, and with `--origin` where every service
//! and field came from (layer and file:line; fields a patch or the policy set name their own
//! file:line, every other field is the service's file's).

use std::fmt::Write as _;

use super::model::{Catalog, Service};
use super::policy::human_size;

fn place(file: &std::path::Path, line: usize) -> String {
    if line > 0 {
        format!("{}:{line}", file.display())
    } else {
        file.display().to_string()
    }
}

/// The text of `services` (a subset of `cat`).
pub fn text(cat: &Catalog, services: &[&Service], origin: bool) -> String {
    let mut out = String::new();
    for s in services {
        let ports: Vec<String> = s.ports().map(|p| p.host.to_string()).collect();
        let _ = write!(
            out,
            "{:<20} {:<8} {}",
            s.name,
            s.origin.layer.as_str(),
            s.description
        );
        if !ports.is_empty() {
            let _ = write!(out, " [port {}]", ports.join(", "));
        }
        if cat.policy.is_required(&s.name) {
            let _ = write!(out, " (required)");
        }
        if s.on_demand {
            let _ = write!(out, " (on demand)");
        }
        let _ = writeln!(out);
        if let Some(r) = &s.refused {
            let _ = writeln!(out, "  refused: {r}");
        }
        if !origin {
            continue;
        }
        let _ = writeln!(
            out,
            "  from:    {} layer, {}",
            s.origin.layer.as_str(),
            place(&s.origin.file, s.origin.line)
        );
        for c in &s.containers {
            let mut limits = Vec::new();
            if let Some(m) = c.memory {
                limits.push(format!("memory {}", human_size(m)));
            }
            if let Some(n) = c.cpus {
                limits.push(format!("cpus {n}"));
            }
            let lim = if limits.is_empty() {
                String::new()
            } else {
                format!(" ({})", limits.join(", "))
            };
            let _ = writeln!(out, "  container {}: {}{lim}", c.name, c.image);
        }
        for p in &s.patched {
            let _ = writeln!(
                out,
                "  {:<30} patched by {}",
                p.field,
                place(&p.file, p.line)
            );
        }
        for p in &s.policy_set {
            let _ = writeln!(
                out,
                "  {:<30} set by the policy, {}",
                p.field,
                place(&p.file, p.line)
            );
        }
        let _ = writeln!(out, "  every other field: {}", s.origin.file.display());
    }
    for i in &cat.ignored {
        let _ = writeln!(out, "ignored: {i}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{from_sources, Source};

    #[test]
    fn origins_name_layer_file_and_line_of_the_service_its_patches_and_the_policy() {
        let base = "name = \"web\"\ndescription = \"a page\"\n[[containers]]\nname = \"app\"\nimage = \"localhost/web:1\"\n[[containers.ports]]\nname = \"http\"\nhost = 18081\ncontainer = 80\n";
        let patch = "name = \"web\"\npatch = true\n[[containers]]\nname = \"app\"\nimage = \"localhost/web:2\"\n";
        let cat = from_sources(
            Some(&Source::new(
                "/etc/berth/policy.toml",
                "required_services = [\"web\"]\n[limits]\ncontainer_memory = \"1g\"\n",
            )),
            &[
                Source::new("<built-in>/web.toml", base),
                Source::new("/etc/berth/catalog.d/web.toml", patch),
            ],
        )
        .expect("valid");
        let s: Vec<&Service> = cat.services.values().collect();
        let t = text(&cat, &s, true);
        assert!(
            t.starts_with("web                  built-in a page [port 18081] (required)\n"),
            "{t}"
        );
        assert!(
            t.contains("  from:    built-in layer, <built-in>/web.toml:1\n"),
            "{t}"
        );
        assert!(
            t.contains("  container app: localhost/web:2 (memory 1g)\n"),
            "{t}"
        );
        assert!(
            t.contains("containers.app.image           patched by /etc/berth/catalog.d/web.toml:5"),
            "{t}"
        );
        assert!(
            t.contains(
                "containers.app.memory          set by the policy, /etc/berth/policy.toml:3"
            ),
            "{t}"
        );
        let short = text(&cat, &s, false);
        assert_eq!(short.lines().count(), 1, "{short}");
    }
}
