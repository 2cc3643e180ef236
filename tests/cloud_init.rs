//! The example cloud-init user-data (`config/cloud-init/user-data.yaml`): cloud-init's own
//! schema check accepts it, and the admin files it stages are ones `berth setup` accepts
//! (validated the way setup validates them, against a temporary root).

use std::path::Path;
use std::process::Command;

const USER_DATA: &str = include_str!("../config/cloud-init/user-data.yaml");

/// Fails (or, with BERTH_SKIP_INTEGRATION=1, skips loudly) when a program is missing.
fn have(test: &str, bin: &str) -> bool {
    if Path::new(bin).is_file() {
        return true;
    }
    let why = format!("{bin} is missing");
    if std::env::var_os("BERTH_SKIP_INTEGRATION").is_some_and(|v| v == "1") {
        eprintln!("SKIP {test}: {why} (BERTH_SKIP_INTEGRATION=1)");
        return false;
    }
    panic!(
        "{test}: {why}. Run the tests through `scripts/test`, which installs Debian's \
         `cloud-init` package (its `schema` command and python3-yaml)."
    );
}

#[test]
fn example_user_data_passes_cloud_init_schema() {
    if !have(
        "example_user_data_passes_cloud_init_schema",
        "/usr/bin/cloud-init",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("user-data.yaml");
    std::fs::write(&file, USER_DATA).expect("write");
    let out = Command::new("/usr/bin/cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("run cloud-init schema");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cloud-init schema refused it:\n{text}"
    );
    assert!(text.contains("Valid cloud-config"), "{text}");

    // And a broken one is refused (the check can fail).
    std::fs::write(&file, "#cloud-config\nusers: 42\nruncmd: {}\n").expect("write");
    let out = Command::new("/usr/bin/cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("run cloud-init schema");
    assert!(
        !out.status.success(),
        "a broken user-data passed the schema check"
    );
}

#[test]
fn example_user_data_stages_admin_files_berth_setup_accepts() {
    if !have(
        "example_user_data_stages_admin_files_berth_setup_accepts",
        "/usr/bin/python3",
    ) {
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let staged = root.path().join("var/lib/berth/incoming");
    // write_files as cloud-init would write them, read with the YAML parser cloud-init uses.
    let script = r#"
import os, sys, yaml
root = sys.argv[1]
doc = yaml.safe_load(sys.stdin)
for f in doc["write_files"]:
    p = os.path.join(root, f["path"].lstrip("/"))
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "w").write(f.get("content", ""))
    print(f["path"])
cmd = doc["runcmd"][0]
print("RUNCMD " + " ".join(cmd))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(root.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(USER_DATA.as_bytes())
        .expect("feed");
    let out = child.wait_with_output().expect("python3");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python3 with yaml failed: {listing}");
    assert!(
        listing.contains(
            "RUNCMD /usr/local/bin/berth setup --user alice --admin-from /var/lib/berth/incoming"
        ),
        "{listing}"
    );

    let mut opts = berth::setup::Options::new(root.path());
    opts.admin_from = Some(staged.clone());
    let prepared = berth::setup::admin::prepare(&opts);
    assert!(
        prepared.is_ok(),
        "berth setup refuses the example's admin files: {prepared:?}"
    );

    // The staged catalog really is layered: a clash with a built-in port is refused.
    std::fs::write(
        staged.join("catalog.d/team-notes.toml"),
        USER_DATA_NOTES_CLASH,
    )
    .expect("write");
    let e = berth::setup::admin::prepare(&opts).expect_err("port clash");
    assert!(e.to_string().contains("team-notes.toml:"), "{e}");
}

const USER_DATA_NOTES_CLASH: &str = "name = \"team-notes\"\ndescription = \"x\"\n\n\
    [[containers]]\nname = \"web\"\nimage = \"localhost/berth-demo:1\"\n\n\
    [[containers.ports]]\nname = \"http\"\nhost = 18080\ncontainer = 8080\n";
