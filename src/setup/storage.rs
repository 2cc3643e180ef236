//! Podman's storage settings for rootless users: the overlay driver (Podman otherwise falls
//! back to `vfs` on some machines, copying every layer) and the shared read-only image store
//! that the image build fills, so preloaded images are present for every user at once.
//!
//! They go into each user's `~/.config/containers/storage.conf` and into
//! `/etc/skel/.config/containers/storage.conf` for users made later (cloud-init and `useradd
//! -m` copy `/etc/skel`). Not into `/etc/containers/storage.conf`: rootless Podman ignores the
//! system file's `additionalimagestores` (checked with Podman 4.3; upstream containers/storage
//! issue 2141, podman issue 19827) and did not take its driver either.
//!
//! A user's file that setup did not write is left alone when it lacks something; the step says
//! what is missing. The store is listed only when it exists on the machine.

use std::path::Path;

use super::users::User;
use super::{run_cmd, write, Command, HomeError, Options, Outcome, Report, Runner, SetupError};

/// Where Podman reads a rootless user's storage settings, relative to the home.
pub const USER_CONF: &str = ".config/containers/storage.conf";
/// Files the development scripts wrote before setup existed carry this marker: also ours.
const OLD_MARK: &str = "managed by berth scripts/lib/env.sh";

/// Native overlay for rootless users needs Linux 5.13 (Debian 11 has 5.10): before that,
/// fuse-overlayfs does the mounting.
fn needs_fuse(opts: &Options) -> bool {
    if !opts.live() {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) < (5, 13) && major > 0
}

/// The ids the build stored the shared store's files with (`berth-store-ids`, written by the
/// image step: `uid=1000 subid=100000 count=65536`): container root as `uid`, container ids
/// from 1 as `subid`…; `None` for a store without that file.
pub fn store_ids(opts: &Options) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(opts.at(&opts.image_store).join("berth-store-ids")).ok()?;
    let get = |k: &str| {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    Some((
        u32::try_from(get("uid")?).ok()?,
        get("subid")?,
        get("count")?,
    ))
}

/// Whether the shared store's files are owned the way `user`'s containers need them; the
/// reason when not. A rootless container sees files of ids outside its user namespace as
/// `nobody` and cannot write below them, so a store made for other ids breaks images (Podman
/// itself fails creating `/etc/mtab`); such a user gets no store and pulls its own images.
pub fn store_fits(opts: &Options, user: &User) -> Result<(), String> {
    let Some((uid, sub, count)) = store_ids(opts) else {
        return Ok(());
    };
    let ranges = ["/etc/subuid", "/etc/subgid"].map(|f| {
        std::fs::read_to_string(opts.at(f))
            .ok()
            .and_then(|t| super::subids::range_of(&t, user))
    });
    let want = Some((sub, count));
    if user.uid == uid && user.gid == uid && ranges[0] == want && ranges[1] == want {
        return Ok(());
    }
    Err(format!(
        "the shared image store {} holds files for uid/gid {uid} with subordinate ids \
         {sub}:{count}; {} has uid {} gid {} and {}: its containers would see those files as \
         nobody's, so the store is not listed for it (its images are pulled into its own \
         storage)",
        opts.image_store.display(),
        user.name,
        user.uid,
        user.gid,
        match ranges {
            [Some((a, b)), Some((c, d))] => format!("subuids {a}:{b}, subgids {c}:{d}"),
            _ => "no subordinate ids".into(),
        }
    ))
}

/// The storage.conf setup wants; `store` lists the shared image store.
pub fn content(opts: &Options) -> String {
    content_with(opts, store_present(opts))
}

fn content_with(opts: &Options, store: bool) -> String {
    let mut s = format!(
        "# {} (rootless Podman: overlay storage, berth's shared image store)\n\
         [storage]\ndriver = \"overlay\"\n",
        super::MARK
    );
    let fuse = needs_fuse(opts) && opts.at("/usr/bin/fuse-overlayfs").exists();
    if store || fuse {
        s.push_str("\n[storage.options]\n");
    }
    if store {
        s.push_str(&format!(
            "# Read-only images preloaded by the image build, shared by all users.\n\
             additionalimagestores = [\"{}\"]\n",
            opts.image_store.display()
        ));
    }
    if fuse {
        s.push_str("\n[storage.options.overlay]\nmount_program = \"/usr/bin/fuse-overlayfs\"\n");
    }
    s
}

/// A store the build made: Podman's image list of the overlay driver is there.
pub fn store_present(opts: &Options) -> bool {
    opts.at(&opts.image_store)
        .join("overlay-images/images.json")
        .is_file()
}

/// What a foreign storage.conf lacks, in words ("" when nothing).
fn lacks(text: &str, opts: &Options, store: bool) -> Vec<String> {
    let mut v = Vec::new();
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("it is not valid TOML ({})", e.message().trim())],
    };
    let storage = table.get("storage").and_then(|s| s.as_table());
    let driver = storage
        .and_then(|s| s.get("driver"))
        .and_then(|d| d.as_str());
    if driver != Some("overlay") {
        v.push("driver = \"overlay\"".into());
    }
    if store {
        let store = opts.image_store.to_string_lossy();
        let listed = storage
            .and_then(|s| s.get("options"))
            .and_then(|o| o.get("additionalimagestores"))
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&store)));
        if !listed {
            v.push(format!("additionalimagestores = [\"{store}\"]"));
        }
    }
    v
}

fn ours(text: &str) -> bool {
    text.contains(super::MARK) || text.contains(OLD_MARK)
}

/// `/etc/skel`'s copy, for users created after this run.
pub fn skel(opts: &Options, report: &mut Report) -> Result<(), SetupError> {
    let path = opts.at("/etc/skel").join(USER_CONF);
    let want = content(opts);
    let have = super::read_opt(&path)?;
    match have {
        Some(h) if h == want => {
            report.push(
                "storage",
                None,
                Outcome::Already,
                format!("{} is set", shown(opts, &path)),
            );
        }
        Some(h) if !ours(&h) => {
            report.push(
                "storage",
                None,
                Outcome::Skipped,
                format!(
                    "{} was not written by berth; left as it is",
                    shown(opts, &path)
                ),
            );
        }
        _ => {
            write(&path, want.as_bytes(), 0o644)?;
            report.push(
                "storage",
                None,
                Outcome::Done,
                format!("wrote {} for new users", shown(opts, &path)),
            );
        }
    }
    Ok(())
}

fn shown(opts: &Options, path: &Path) -> String {
    match path.strip_prefix(&opts.root) {
        Ok(p) => format!("/{}", p.display()),
        Err(_) => path.display().to_string(),
    }
}

fn home_err<'a>(user: &'a User, what: &'static str) -> impl FnOnce(HomeError) -> SetupError + 'a {
    move |source| SetupError::Home {
        user: user.name.clone(),
        what,
        source,
    }
}

/// The user's own storage.conf.
pub fn user(opts: &Options, user: &User, report: &mut Report) -> Result<(), SetupError> {
    let home = super::home::Home::open(&opts.at(&user.home), user.uid, user.gid)
        .map_err(home_err(user, "storage.conf"))?;
    let rel = Path::new(USER_CONF);
    let fits = if store_present(opts) {
        store_fits(opts, user)
    } else {
        Ok(())
    };
    if let Err(why) = &fits {
        report.push("store", Some(&user.name), Outcome::Skipped, why.clone());
    }
    let want = content_with(opts, store_present(opts) && fits.is_ok());
    let have = home.read(rel).map_err(home_err(user, "storage.conf"))?;
    let shown = format!("~{}/{USER_CONF}", user.name);
    match have {
        Some(h) if h == want.as_bytes() => {
            report.push(
                "storage",
                Some(&user.name),
                Outcome::Already,
                format!("{shown} is set"),
            );
            return Ok(());
        }
        Some(h) if !ours(&String::from_utf8_lossy(&h)) => {
            let missing = lacks(
                &String::from_utf8_lossy(&h),
                opts,
                fits.is_ok() && store_present(opts),
            );
            let detail = if missing.is_empty() {
                format!("{shown} (not berth's) already has what berth needs")
            } else {
                format!(
                    "{shown} was not written by berth and lacks {}; left as it is",
                    missing.join(", ")
                )
            };
            let outcome = if missing.is_empty() {
                Outcome::Already
            } else {
                Outcome::Skipped
            };
            report.push("storage", Some(&user.name), outcome, detail);
            return Ok(());
        }
        _ => {}
    }
    // Changing the driver of existing storage breaks it: a user whose images already live in
    // vfs storage keeps it, and is told why the shared store does not apply.
    let storage = opts.at(&user.home).join(".local/share/containers/storage");
    if storage.join("vfs").is_dir() && !storage.join("overlay").is_dir() {
        report.push(
            "storage",
            Some(&user.name),
            Outcome::Skipped,
            format!(
                "{} uses the vfs driver; switching would lose its images, so {shown} is left \
                 as it is (the shared image store needs overlay)",
                storage.display()
            ),
        );
        return Ok(());
    }
    home.write(rel, want.as_bytes(), 0o644)
        .map_err(home_err(user, "storage.conf"))?;
    report.push(
        "storage",
        Some(&user.name),
        Outcome::Done,
        format!("wrote {shown}"),
    );
    Ok(())
}

/// After new subordinate ids, Podman's storage of the user must pick up the new mapping.
pub fn migrate(
    opts: &Options,
    runner: &dyn Runner,
    user: &User,
    report: &mut Report,
) -> Result<(), SetupError> {
    if !opts.at(&user.home).join(".local/share/containers").is_dir() {
        return Ok(());
    }
    if !opts.live() {
        report.push(
            "podman",
            Some(&user.name),
            Outcome::Skipped,
            "new subordinate ids: run `podman system migrate` as the user on the machine".into(),
        );
        return Ok(());
    }
    let mut cmd = Command::new("podman", &["system", "migrate"]);
    cmd.as_user = Some((user.uid, user.gid, user.home.clone()));
    run_cmd(runner, cmd)?;
    report.push(
        "podman",
        Some(&user.name),
        Outcome::Done,
        "podman system migrate (new subordinate ids)".into(),
    );
    Ok(())
}
