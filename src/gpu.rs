//! GPUs, as containers get them: through CDI (the Container Device Interface).
//!
//! Vendors' tools write CDI specs (`nvidia-ctk cdi generate`, AMD's and Intel's equivalents)
//! into `/etc/cdi` or `/var/run/cdi`, in YAML or JSON, under any file name. Podman hands a
//! device to a container by its fully qualified name, `KIND=NAME` (`nvidia.com/gpu=0`,
//! `nvidia.com/gpu=all`). berth reads every spec whose kind is a GPU (`…/gpu`), keeps the
//! devices whose device nodes exist on this machine (a spec left behind by an image build on
//! another machine names nodes that are not here), and gives a service that wants a GPU the
//! kind's `all` device where the spec has one, else each device. Model and memory come from
//! `nvidia-smi` where it is installed (CDI specs do not carry them).
//!
//! Pure parsing and selection here; [`detect`] does the reading (blocking: run it at start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_proto::GpuInfo;
use serde::Deserialize;

/// Where CDI specs live (the CDI specification's default directories).
pub const CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

#[derive(Debug, Deserialize)]
struct Spec {
    kind: String,
    #[serde(default)]
    devices: Vec<Device>,
}

#[derive(Debug, Deserialize)]
struct Device {
    name: String,
    #[serde(default, rename = "containerEdits")]
    edits: Edits,
}

#[derive(Debug, Default, Deserialize)]
struct Edits {
    #[serde(default, rename = "deviceNodes")]
    device_nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    path: String,
}

/// What a scan found: the GPUs, the devices to hand to containers, and specs that could not
/// be used (said in the log).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub gpus: Vec<GpuInfo>,
    /// `--device` values for a service that wants a GPU.
    pub devices: Vec<String>,
    pub problems: Vec<String>,
}

/// Parses one spec file's text (YAML, which JSON also is).
fn parse(text: &str) -> Result<Spec, String> {
    yaml_serde::from_str::<Spec>(text).map_err(|e| e.to_string())
}

/// Finds the GPUs in the specs `files` (path, text); `node_exists` says whether a device
/// node is present.
pub fn scan(files: &[(PathBuf, String)], node_exists: &dyn Fn(&str) -> bool) -> Scan {
    let mut out = Scan::default();
    // kind → (devices with present nodes, whether an `all` device is usable)
    let mut kinds: BTreeMap<String, (Vec<(String, PathBuf)>, bool)> = BTreeMap::new();
    for (path, text) in files {
        let spec = match parse(text) {
            Ok(s) => s,
            Err(e) => {
                out.problems.push(format!(
                    "{}: not a CDI spec berth can read: {e}",
                    path.display()
                ));
                continue;
            }
        };
        if !spec.kind.ends_with("/gpu") {
            continue;
        }
        let entry = kinds.entry(spec.kind.clone()).or_default();
        for d in &spec.devices {
            let nodes = &d.edits.device_nodes;
            let present = !nodes.is_empty() && nodes.iter().all(|n| node_exists(&n.path));
            if !present {
                if !nodes.is_empty() {
                    out.problems.push(format!(
                        "{}: {}={} names device nodes that are not here ({})",
                        path.display(),
                        spec.kind,
                        d.name,
                        nodes
                            .iter()
                            .map(|n| n.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                continue;
            }
            if d.name == "all" {
                entry.1 = true;
            } else {
                entry.0.push((d.name.clone(), path.clone()));
            }
        }
    }
    for (kind, (devices, all)) in kinds {
        // The same GPU is often listed twice, by index and by UUID: count indexes when any.
        let by_index: Vec<&(String, PathBuf)> = devices
            .iter()
            .filter(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        let listed: Vec<&(String, PathBuf)> = if by_index.is_empty() {
            devices.iter().collect()
        } else {
            by_index
        };
        for (name, spec) in &listed {
            out.gpus.push(GpuInfo {
                device: format!("{kind}={name}"),
                model: None,
                memory_mib: None,
                spec: spec.display().to_string(),
            });
        }
        if all {
            out.devices.push(format!("{kind}=all"));
        } else {
            out.devices
                .extend(listed.iter().map(|(n, _)| format!("{kind}={n}")));
        }
    }
    out
}

/// Adds model and memory from `nvidia-smi --query-gpu=index,name,memory.total
/// --format=csv,noheader,nounits` output to the NVIDIA GPUs listed by index.
pub fn add_nvidia_smi(gpus: &mut [GpuInfo], csv: &str) {
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [index, name, mem] = f[..] else { continue };
        let device = format!("nvidia.com/gpu={index}");
        if let Some(g) = gpus.iter_mut().find(|g| g.device == device) {
            g.model = Some(name.to_string());
            g.memory_mib = mem.parse().ok();
        }
    }
}

/// Reads the CDI specs in `dirs` and asks `nvidia-smi` (if installed; bounded to 5 s) for
/// models. Blocking.
pub fn detect(dirs: &[&Path]) -> Scan {
    let mut files = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        paths.sort();
        for p in paths {
            match std::fs::read_to_string(&p) {
                Ok(t) => files.push((p, t)),
                Err(e) => tracing::warn!(path = %p.display(), %e, "cannot read CDI spec"),
            }
        }
    }
    let mut scan = scan(&files, &|p| Path::new(p).exists());
    if scan
        .gpus
        .iter()
        .any(|g| g.device.starts_with("nvidia.com/gpu="))
    {
        if let Some(csv) = nvidia_smi() {
            add_nvidia_smi(&mut scan.gpus, &csv);
        }
    }
    scan
}

fn nvidia_smi() -> Option<String> {
    let mut child = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() > until => {
                let _gone = child.kill();
                let _reaped = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `nvidia-ctk cdi generate` writes (abridged): by index, by UUID, and `all`.
    const NVIDIA_YAML: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
containerEdits:
  deviceNodes:
  - path: /dev/nvidiactl
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache]
"#;

    const AMD_JSON: &str = r#"{"cdiVersion":"0.6.0","kind":"amd.com/gpu","devices":[
        {"name":"0","containerEdits":{"deviceNodes":[{"path":"/dev/dri/renderD128"},{"path":"/dev/kfd"}]}}]}"#;

    const NOT_GPU: &str = "cdiVersion: 0.5.0\nkind: vendor.com/nic\ndevices:\n- name: a\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nic0\n";

    fn here(nodes: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |p| nodes.contains(&p)
    }

    #[test]
    fn nvidia_specs_under_any_name_give_one_gpu_and_the_all_device() {
        let files = vec![(
            PathBuf::from("/etc/cdi/generated-by-ctk.yaml"),
            NVIDIA_YAML.to_string(),
        )];
        let s = scan(&files, &here(&["/dev/nvidia0"]));
        assert_eq!(s.devices, ["nvidia.com/gpu=all"]);
        let names: Vec<&str> = s.gpus.iter().map(|g| g.device.as_str()).collect();
        assert_eq!(names, ["nvidia.com/gpu=0"], "one GPU, not one per alias");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
    }

    #[test]
    fn json_specs_of_other_vendors_count_and_other_kinds_do_not() {
        let files = vec![
            (PathBuf::from("/var/run/cdi/amd.json"), AMD_JSON.to_string()),
            (PathBuf::from("/etc/cdi/nic.yaml"), NOT_GPU.to_string()),
        ];
        let s = scan(
            &files,
            &here(&["/dev/dri/renderD128", "/dev/kfd", "/dev/nic0"]),
        );
        assert_eq!(s.devices, ["amd.com/gpu=0"], "no `all`: each device");
        assert_eq!(s.gpus.len(), 1);
    }

    #[test]
    fn a_spec_whose_nodes_are_missing_gives_no_gpu_and_says_why() {
        let files = vec![(
            PathBuf::from("/etc/cdi/nvidia.yaml"),
            NVIDIA_YAML.to_string(),
        )];
        let s = scan(&files, &here(&[]));
        assert!(s.gpus.is_empty() && s.devices.is_empty(), "{s:?}");
        assert!(
            s.problems
                .iter()
                .any(|p| p.contains("/dev/nvidia0") && p.contains("not here")),
            "{:?}",
            s.problems
        );
        let broken = vec![(PathBuf::from("/etc/cdi/x.yaml"), "kind: [".to_string())];
        let s = scan(&broken, &here(&[]));
        assert!(
            s.problems[0].starts_with("/etc/cdi/x.yaml: not a CDI spec"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn nvidia_smi_names_the_model_and_memory() {
        let files = vec![(
            PathBuf::from("/etc/cdi/nvidia.yaml"),
            NVIDIA_YAML.to_string(),
        )];
        let mut s = scan(&files, &here(&["/dev/nvidia0"]));
        add_nvidia_smi(&mut s.gpus, "0, NVIDIA L4, 23034\n");
        assert_eq!(s.gpus[0].model.as_deref(), Some("NVIDIA L4"));
        assert_eq!(s.gpus[0].memory_mib, Some(23034));
    }
}
