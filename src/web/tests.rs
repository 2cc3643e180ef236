//! The page's guard and flows against a whole daemon (in-memory edges) over real loopback
//! TCP, with raw requests so every header is the test's choice.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::daemon::tests::{Daemon, WEB};

/// One HTTP/1.1 request; the status, the head and the body of the answer.
async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")
}

fn post(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Logs in with a fresh link: the session cookie (`name=value`).
async fn login(d: &Daemon, addr: SocketAddr) -> String {
    let url = d.client.web_session("/").await.expect("login link");
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .expect("a link to the page");
    let (status, head, _) = http(addr, &get(addr, path, "")).await;
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().expect("name=value").to_string()
}

#[tokio::test]
async fn a_login_link_gives_a_session_that_can_act() {
    let d = Daemon::start_with(&[("it-web.toml", WEB)], true).await;
    let addr = d.web.expect("the page serves");
    let cookie = login(&d, addr).await;
    let (status, head, body) = http(addr, &get(addr, "/", &format!("Cookie: {cookie}\r\n"))).await;
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("<script src=\"/assets/app.js\""), "the page");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: DENY"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("access-control-allow"),
        "no CORS: {head}"
    );
    let origin = format!("Origin: http://{addr}\r\nCookie: {cookie}\r\n");
    let (status, head, body) =
        http(addr, &post(addr, "/api/services/it-web/enable", &origin)).await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(body.contains("start berth-it-web.service"), "{body}");
    let st = d.client.service("it-web").await.expect("status");
    assert_eq!(st.state, berth_proto::State::Running);
    d.stop().await;
}

#[tokio::test]
async fn the_guard_refuses_rebinding_cross_origin_and_sessionless_requests() {
    let d = Daemon::start_with(&[("it-web.toml", WEB)], true).await;
    let addr = d.web.expect("the page serves");
    let cookie = login(&d, addr).await;

    // DNS rebinding: the browser sends the attacker's name.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: evil.example:{}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    let (status, _, _) = http(addr, &req).await;
    assert_eq!(status, 421, "a foreign Host");

    // A page in another tab posts with its own origin, or with none.
    let evil = format!("Origin: http://evil.example\r\nCookie: {cookie}\r\n");
    let (status, _, _) = http(addr, &post(addr, "/api/services/it-web/enable", &evil)).await;
    assert_eq!(status, 403, "a cross-origin POST");
    let no_origin = format!("Cookie: {cookie}\r\n");
    let (status, _, _) = http(addr, &post(addr, "/api/services/it-web/enable", &no_origin)).await;
    assert_eq!(status, 403, "a POST without Origin");
    let cross =
        format!("Origin: http://{addr}\r\nSec-Fetch-Site: cross-site\r\nCookie: {cookie}\r\n");
    let (status, _, _) = http(addr, &post(addr, "/api/services/it-web/enable", &cross)).await;
    assert_eq!(status, 403, "the browser says cross-site");

    // Without the session secret, or with a guessed one.
    let own = format!("Origin: http://{addr}\r\n");
    let (status, _, _) = http(addr, &post(addr, "/api/services/it-web/enable", &own)).await;
    assert_eq!(status, 401, "a POST without the secret");
    let guessed = format!(
        "Origin: http://{addr}\r\nCookie: berth_session={}\r\n",
        "a".repeat(64)
    );
    let (status, _, _) = http(addr, &post(addr, "/api/services/it-web/enable", &guessed)).await;
    assert_eq!(status, 401, "a guessed secret");
    let (status, _, _) = http(addr, &get(addr, "/api/events", "")).await;
    assert_eq!(status, 401, "the event stream wants a session");
    let (status, _, body) = http(addr, &get(addr, "/", "")).await;
    assert_eq!(status, 401);
    assert!(body.contains("berth dashboard"), "{body}");

    // Login links: a guessed one, then a replayed one.
    let (status, _, body) = http(
        addr,
        &get(addr, &format!("/login?token={}", "0".repeat(64)), ""),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("not valid"), "{body}");
    let url = d.client.web_session("/").await.expect("link");
    let path = url
        .strip_prefix(&format!("http://{addr}"))
        .expect("a link")
        .to_string();
    assert_eq!(http(addr, &get(addr, &path, "")).await.0, 303, "first use");
    let (status, _, body) = http(addr, &get(addr, &path, "")).await;
    assert_eq!(status, 403, "a replay");
    assert!(body.contains("used already"), "{body}");

    assert_eq!(
        d.client.service("it-web").await.expect("status").choice,
        berth_proto::Choice::Off,
        "nothing refused changed anything"
    );
    d.stop().await;
}

#[tokio::test]
async fn another_local_user_is_refused_before_http() {
    let d = Daemon::start_with(&[], true).await;
    let addr = d.web.expect("the page serves");
    if crate::sys::uid() != 0 {
        // Connecting as another uid needs root (setpriv); scripts/test runs the unit tests
        // as root, so there this runs.
        use std::io::Write as _;
        // Past the harness's capture: scripts/test counts it as skipped.
        let _shown = writeln!(
            std::io::stdout(),
            "\nSKIP another_local_user_is_refused_before_http: not root, cannot connect as another user"
        );
        d.stop().await;
        return;
    }
    let o = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "-i",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .await
        .expect("setpriv curl");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.contains("belongs to another user; uid 65534 may not use it"),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn the_page_and_its_files_are_small() {
    let total: usize = super::page::ASSETS.iter().map(|(_, _, b)| b.len()).sum();
    assert!(
        total <= 100 * 1024,
        "the page's first load is {total} bytes"
    );
}
