//! The local web page in a real browser: headless Chromium driven through its WebDriver
//! (chromedriver), against a real daemon, systemd user manager and rootless Podman.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{ClientBuilder, Locator};

const PAGE_PORT: u16 = 18215;
const SERVICE_PORT: u16 = 18216;
const DRIVER_PORT: u16 = 18217;

/// chromedriver, stopped by its PID when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _already_gone = self.0.kill();
        let _reaped = self.0.wait();
    }
}

fn which(cmd: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|c| c.is_file())
            .map(|c| c.display().to_string())
    })
}

/// The browser's capabilities: headless, no network beyond loopback needed, a profile of
/// its own.
fn capabilities(
    profile: &std::path::Path,
    chromium: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args }
    });
    caps.as_object().cloned().unwrap_or_default()
}

async fn wait_text(
    c: &fantoccini::Client,
    css: &str,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if f(&t) {
                    return Ok(t);
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what}: `{css}` never matched; last text {last:?}"))
}

#[test]
fn the_page_turns_a_service_on_follows_it_live_and_shows_its_logs() {
    let Some(_serial) = session("web_page") else {
        return;
    };
    let chromium = which("chromium").expect("no chromium: scripts/test installs Debian's chromium");
    let driver_bin = which("chromedriver")
        .expect("no chromedriver: scripts/test installs Debian's chromium-driver");
    let mut w = World::new(&["it-page"]);
    w.config(&format!("[web]\nlisten = \"127.0.0.1:{PAGE_PORT}\"\n"));
    w.catalog_file("it-page.toml", &web_service("it-page", SERVICE_PORT));
    w.start_daemon();
    let login = w.ok(&["dashboard", "--print"]).trim().to_string();
    assert!(
        login.starts_with(&format!("http://127.0.0.1:{PAGE_PORT}/login?token=")),
        "{login}"
    );

    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver(
        Command::new(driver_bin)
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(capabilities(profile.path(), &chromium));
        let mut c = None;
        for _ in 0..100 {
            match builder
                .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
                .await
            {
                Ok(client) => {
                    c = Some(client);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let c = c.ok_or("chromedriver did not answer within 10 s")?;
        let outcome = async {
            c.goto(&login)
                .await
                .map_err(|e| format!("open the login link: {e}"))?;
            let card = "article.card[data-name=\"it-page\"]";
            wait_text(&c, &format!("{card} .badge"), "the card", |t| {
                t.eq_ignore_ascii_case("off")
            })
            .await?;
            let url = c.current_url().await.map_err(|e| e.to_string())?;
            if url.path() != "/" {
                return Err(format!("after login the page is at {url}"));
            }
            // Turn it on: the switch is a label around the checkbox.
            c.find(Locator::Css(&format!("{card} .switch")))
                .await
                .map_err(|e| format!("the switch: {e}"))?
                .click()
                .await
                .map_err(|e| format!("click the switch: {e}"))?;
            // The badge turns running from the event stream, with no reload.
            wait_text(&c, &format!("{card} .badge"), "running", |t| {
                t.eq_ignore_ascii_case("running")
            })
            .await?;
            if unit_active("berth-it-page.service") != "active" {
                return Err("the page says running but the unit is not active".into());
            }
            // How long after the unit became active the page showed it (printed for
            // bench/page.sh; both clocks are this machine's wall clock).
            let seen = c
                .find(Locator::Css(card))
                .await
                .map_err(|e| e.to_string())?
                .attr("data-seen")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let seen_ms: Option<u64> = seen.strip_prefix("running@").and_then(|t| t.parse().ok());
            let active_us = unit_active_since_us("berth-it-page.service");
            if let (Some(seen), Some(active)) = (seen_ms, active_us) {
                println!(
                    "page latency: running shown {} ms after the unit became active",
                    seen as i64 - (active / 1000) as i64
                );
            }
            assert_page(SERVICE_PORT);
            // What README shows: the page as it is now. Saved where scripts/screenshots says
            // (BERTH_SCREENSHOT_DIR), and checked to be a real picture either way.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = c
                .screenshot()
                .await
                .map_err(|e| format!("screenshot: {e}"))?;
            if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 10_000 {
                return Err(format!(
                    "the screenshot is not a picture of a page ({} bytes)",
                    png.len()
                ));
            }
            if let Some(dir) = std::env::var_os("BERTH_SCREENSHOT_DIR") {
                let path = std::path::Path::new(&dir).join("page.png");
                std::fs::write(&path, &png)
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
            // Its logs, following: the request above is in them.
            c.find(Locator::Css(&format!("{card} .show-logs")))
                .await
                .map_err(|e| format!("the Logs button: {e}"))?
                .click()
                .await
                .map_err(|e| format!("click Logs: {e}"))?;
            wait_text(&c, "#logs-title", "the logs panel", |t| {
                t.contains("it-page")
            })
            .await?;
            wait_text(&c, "#logs-body", "a request in the logs", |t| {
                t.contains("response:200")
            })
            .await?;
            // A new request shows up while the panel follows.
            let before = c
                .find(Locator::Css("#logs-body"))
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?
                .matches("response:200")
                .count();
            assert_page(SERVICE_PORT);
            wait_text(&c, "#logs-body", "the followed log", |t| {
                t.matches("response:200").count() > before
            })
            .await?;
            Ok(())
        }
        .await;
        let _closed = c.close().await;
        outcome
    });
    drop(driver);
    if let Err(e) = result {
        panic!("{e}\ndaemon log:\n{}", w.daemon_log());
    }
    let _off = w.berth(&["disable", "it-page"]);
}
