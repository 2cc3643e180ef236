//! `berth-tray`: started by the desktop session (XDG autostart); see the crate's docs.

use std::path::PathBuf;

use berth_client::Client;
use berth_tray::app::{self, Settings};

const USAGE: &str = "usage: berth-tray [--socket PATH]

berth's tray icon: your services, their state, and quick actions.
  --socket PATH   berth's API socket (default: $BERTH_SOCKET, else $XDG_RUNTIME_DIR/berth/api.sock)
Environment: BERTH_TRAY_OPEN names the program that opens links (default: xdg-open).";

fn main() -> std::process::ExitCode {
    let mut socket: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => match args.next() {
                Some(p) => socket = Some(PathBuf::from(p)),
                None => return fail("--socket needs a path"),
            },
            "--version" | "-V" => {
                println!("berth-tray {}", env!("CARGO_PKG_VERSION"));
                return std::process::ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let client = match socket {
        Some(s) => Client::new(&s),
        None => match Client::from_env() {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        },
    };
    let opener = std::env::var("BERTH_TRAY_OPEN")
        .ok()
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "xdg-open".into());
    // One thread: the tray waits on two sockets and does very little.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(app::run(Settings { client, opener })) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                msg.push_str(&format!(": {c}"));
                cur = c.source();
            }
            fail(&msg)
        }
    }
}

fn fail(msg: &str) -> std::process::ExitCode {
    eprintln!("berth-tray: error: {msg}");
    std::process::ExitCode::FAILURE
}
