//! Who is reporting: the VM (cloud-init's instance data, else `/etc/machine-id`) and the user.
//!
//! cloud-init writes `/run/cloud-init/instance-data.json` (world-readable, sensitive keys
//! redacted) at boot from the cloud's metadata; on OpenStack its `v1.instance_id` is the Nova
//! instance UUID. berth reads only that file and never asks a metadata service itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::report::{Identity, IdentitySource, User, Vm};

/// cloud-init's standardized instance data.
pub const INSTANCE_DATA: &str = "/run/cloud-init/instance-data.json";
/// Overrides [`INSTANCE_DATA`] (tests, or an image that keeps it elsewhere).
pub const INSTANCE_DATA_ENV: &str = "BERTH_INSTANCE_DATA";

/// Where the identity is read from; tests point these at fixtures.
#[derive(Debug, Clone)]
pub struct Sources {
    pub instance_data: PathBuf,
    pub machine_id: PathBuf,
    pub hostname: PathBuf,
    pub passwd: PathBuf,
}

impl Sources {
    /// The real places, with `BERTH_INSTANCE_DATA` honoured.
    pub fn system() -> Sources {
        Sources {
            instance_data: std::env::var_os(INSTANCE_DATA_ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(INSTANCE_DATA), PathBuf::from),
            machine_id: PathBuf::from("/etc/machine-id"),
            hostname: PathBuf::from("/proc/sys/kernel/hostname"),
            passwd: PathBuf::from("/etc/passwd"),
        }
    }
}

/// The `v1` keys berth uses. cloud-init writes each key with underscores and, for older
/// readers, also with dashes (22.4 writes both into the same object), so both spellings are
/// read as separate fields and the underscore one wins: a serde alias would refuse the file as
/// a duplicate field.
#[derive(Debug, Default, Deserialize)]
struct V1 {
    instance_id: Option<String>,
    #[serde(rename = "instance-id")]
    instance_id_dashed: Option<String>,
    local_hostname: Option<String>,
    #[serde(rename = "local-hostname")]
    local_hostname_dashed: Option<String>,
    cloud_name: Option<String>,
    #[serde(rename = "cloud-name")]
    cloud_name_dashed: Option<String>,
    region: Option<String>,
    availability_zone: Option<String>,
    #[serde(rename = "availability-zone")]
    availability_zone_dashed: Option<String>,
}

impl V1 {
    /// One value per key: the underscore spelling, else the dashed one.
    fn merged(self) -> V1 {
        V1 {
            instance_id: non_empty(self.instance_id).or(non_empty(self.instance_id_dashed)),
            local_hostname: non_empty(self.local_hostname)
                .or(non_empty(self.local_hostname_dashed)),
            cloud_name: non_empty(self.cloud_name).or(non_empty(self.cloud_name_dashed)),
            region: self.region,
            availability_zone: non_empty(self.availability_zone)
                .or(non_empty(self.availability_zone_dashed)),
            ..V1::default()
        }
    }
}

#[derive(Debug, Deserialize)]
struct InstanceData {
    v1: V1,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn read_trimmed(path: &Path) -> Option<String> {
    non_empty(std::fs::read_to_string(path).ok())
}

/// Reads the identity of this VM and user. Never fails: missing sources fall back, in the end
/// to `unknown`, and the report's `vm.source` says which one was used.
pub fn read(src: &Sources, uid: u32, user_env: Option<String>) -> Identity {
    let hostname = read_trimmed(&src.hostname).unwrap_or_else(|| "unknown".into());
    let cloud = std::fs::read(&src.instance_data)
        .ok()
        .and_then(|b| match serde_json::from_slice::<InstanceData>(&b) {
            Ok(d) => Some(d.v1.merged()),
            Err(err) => {
                tracing::warn!(path = %src.instance_data.display(), %err, "cannot use cloud-init instance data");
                None
            }
        });
    let vm = match cloud {
        Some(v1) if non_empty(v1.instance_id.clone()).is_some() => Vm {
            instance_id: non_empty(v1.instance_id).unwrap_or_default(),
            hostname: non_empty(v1.local_hostname).unwrap_or(hostname),
            cloud_name: non_empty(v1.cloud_name),
            region: non_empty(v1.region),
            availability_zone: non_empty(v1.availability_zone),
            source: IdentitySource::CloudInit,
        },
        _ => Vm {
            instance_id: read_trimmed(&src.machine_id).unwrap_or_else(|| "unknown".into()),
            hostname,
            cloud_name: None,
            region: None,
            availability_zone: None,
            source: IdentitySource::MachineId,
        },
    };
    let name = non_empty(user_env)
        .or_else(|| passwd_name(&src.passwd, uid))
        .unwrap_or_else(|| uid.to_string());
    Identity {
        vm,
        user: User { name, uid },
    }
}

/// The login name of `uid` in a passwd file (local accounts; `$USER` covers the others).
fn passwd_name(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> Sources {
        std::fs::write(dir.join("hostname"), "box\n").expect("write");
        std::fs::write(dir.join("machine-id"), "0123abcd\n").expect("write");
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        )
        .expect("write");
        Sources {
            instance_data: dir.join("instance-data.json"),
            machine_id: dir.join("machine-id"),
            hostname: dir.join("hostname"),
            passwd: dir.join("passwd"),
        }
    }

    #[test]
    fn cloud_init_instance_data_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = sources(dir.path());
        std::fs::write(
            &src.instance_data,
            r#"{"base64_encoded_keys": [], "v1": {"cloud_name": "openstack",
                "instance_id": "b7e4c1d2-0000-4000-8000-000000000001",
                "local_hostname": "ws-alice", "region": "RegionOne",
                "availability_zone": "nova", "platform": "openstack"}}"#,
        )
        .expect("write");
        let id = read(&src, 1000, None);
        assert_eq!(id.vm.instance_id, "b7e4c1d2-0000-4000-8000-000000000001");
        assert_eq!(id.vm.hostname, "ws-alice");
        assert_eq!(id.vm.region.as_deref(), Some("RegionOne"));
        assert_eq!(id.vm.availability_zone.as_deref(), Some("nova"));
        assert_eq!(id.vm.cloud_name.as_deref(), Some("openstack"));
        assert_eq!(id.vm.source, IdentitySource::CloudInit);
        assert_eq!(id.user.name, "alice", "from passwd");
        assert_eq!(read(&src, 1000, Some("bob".into())).user.name, "bob");
    }

    /// Regression: cloud-init 22.4.2 (Debian 12) writes `availability_zone` and
    /// `availability-zone` side by side; berth refused the whole file as a duplicate field and
    /// reported the machine-id instead of the instance. Recorded from the boot check's VM.
    #[test]
    fn both_spellings_of_cloud_init_22_4_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut src = sources(dir.path());
        src.instance_data = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/push/testdata/instance-data-nocloud-22.4.2.json");
        let id = read(&src, 1000, None);
        assert_eq!(id.vm.source, IdentitySource::CloudInit);
        assert!(id.vm.instance_id.starts_with("berth-check-"), "{:?}", id.vm);
        assert_eq!(id.vm.hostname, "ws-alice");
        // NoCloud has no cloud name of its own: cloud-init says "unknown".
        assert_eq!(id.vm.cloud_name.as_deref(), Some("unknown"));

        // Only the dashed spelling (early releases) still counts.
        std::fs::write(
            dir.path().join("old.json"),
            r#"{"v1": {"instance-id": "i-old", "local-hostname": "h", "availability-zone": "z"}}"#,
        )
        .expect("write");
        src.instance_data = dir.path().join("old.json");
        let id = read(&src, 1000, None);
        assert_eq!(id.vm.instance_id, "i-old");
        assert_eq!(id.vm.availability_zone.as_deref(), Some("z"));
    }

    #[test]
    fn falls_back_to_machine_id_and_hostname() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = sources(dir.path());
        let id = read(&src, 4242, None);
        assert_eq!(id.vm.instance_id, "0123abcd");
        assert_eq!(id.vm.hostname, "box");
        assert_eq!(id.vm.source, IdentitySource::MachineId);
        assert_eq!(id.user.name, "4242", "no name known");

        // Broken or incomplete instance data falls back too.
        std::fs::write(&src.instance_data, "{not json").expect("write");
        assert_eq!(read(&src, 0, None).vm.source, IdentitySource::MachineId);
        std::fs::write(&src.instance_data, r#"{"v1": {"instance_id": ""}}"#).expect("write");
        assert_eq!(read(&src, 0, None).vm.source, IdentitySource::MachineId);
        assert_eq!(read(&src, 0, None).user.name, "root");
    }
}
