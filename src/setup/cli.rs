//! The `berth setup` command: arguments, the run, and its report on stdout.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::{Options, RealRunner};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A user to set up (repeatable). Default: every regular user of the machine, which
    /// includes cloud-init's default user; with none, only the machine-wide settings.
    #[arg(long = "user", value_name = "NAME")]
    pub users: Vec<String>,
    /// Create named users that do not exist yet (useradd -m) instead of refusing.
    #[arg(long)]
    pub create_users: bool,
    /// Do not enable berth's user unit (a test user whose tests start berth themselves).
    #[arg(long)]
    pub no_unit: bool,
    /// Only the machine-wide settings, for no user (image builds).
    #[arg(long, conflicts_with_all = ["users", "create_users"])]
    pub machine_only: bool,
    /// Validate the admin files in DIR (config.toml, policy.toml, catalog.d/*.toml) over the
    /// ones in /etc/berth and put them in place; a bad one changes nothing.
    #[arg(long, value_name = "DIR")]
    pub admin_from: Option<PathBuf>,
    /// The shared read-only image store to list in users' storage.conf (where it exists).
    #[arg(long, value_name = "DIR", default_value = super::IMAGE_STORE)]
    pub image_store: PathBuf,
    /// Work on the machine whose root filesystem is DIR (an image being built).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    if !args.root.is_absolute() || !args.image_store.is_absolute() {
        bail!("--root and --image-store take absolute paths");
    }
    if crate::sys::uid() != 0 {
        bail!("berth setup needs root (it edits /etc/subuid, users' homes and /etc/berth)");
    }
    let mut opts = Options::new(args.root);
    opts.users = args.users;
    opts.create_users = args.create_users;
    opts.machine_only = args.machine_only;
    opts.enable_unit = !args.no_unit;
    opts.admin_from = args.admin_from;
    opts.image_store = args.image_store;
    let report = match super::run(&opts, &RealRunner) {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                // The caller parses stdout: say what failed there too, with the locations.
                let diagnostics = match &e {
                    super::SetupError::Invalid(d) => d.clone(),
                    _ => Vec::new(),
                };
                let answer = serde_json::json!({
                    "changed_nothing": e.changed_nothing(),
                    "error": e.to_string(),
                    "diagnostics": diagnostics,
                });
                println!("{}", serde_json::to_string_pretty(&answer)?);
            }
            return Err(e.into());
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
