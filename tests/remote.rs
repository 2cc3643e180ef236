//! The signed remote catalog against a real HTTPS server on 127.0.0.1 (hyper + tokio-rustls,
//! a certificate from a CA made here with rcgen and trusted through `ca_file`), a real
//! daemon, and the real systemd and Podman: a signed catalog adds a service that gets its
//! unit; tampered, wrongly keyed, replayed, rolled back, expired and invalid catalogs change
//! nothing;
//! an unchanged catalog costs a 304 without a body; the catalog keeps working with its
//! server down, across a daemon restart too.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SERVICE: &str = "it-remote";
/// The HTTPS server's port and the service's stable port (18241–18249 are this test's).
const SERVER_PORT: u16 = 18241;
const SERVICE_PORT: u16 = 18242;
const LATER: &str = "2099-01-01T00:00:00Z";
const EARLIER: &str = "2020-01-01T00:00:00Z";

/// What the server publishes, and what it saw.
#[derive(Debug, Default)]
struct Site {
    files: BTreeMap<String, Vec<u8>>,
    /// (path, If-None-Match sent, status answered, body bytes sent), in order.
    log: Vec<(String, Option<String>, u16, usize)>,
}

fn etag(data: &[u8]) -> String {
    // FNV-1a: enough to tell versions apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Counts the bytes a connection writes and reads (TLS records included).
struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTPS server on 127.0.0.1 with a certificate of a CA of its own.
struct Server {
    rt: tokio::runtime::Runtime,
    site: Arc<Mutex<Site>>,
    ca_pem: String,
    tls: Arc<rustls::ServerConfig>,
    accept: Option<tokio::task::JoinHandle<()>>,
    /// Bytes written to clients and read from them, TLS included.
    written: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl Server {
    fn new() -> Server {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(
            ca_params,
            rcgen::KeyPair::generate().expect("ca key"),
        )
        .expect("ca cert");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .signed_by(&key, &*ca)
            .expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .expect("server config");
        Server {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            site: Arc::default(),
            ca_pem: ca.pem(),
            tls: Arc::new(tls),
            accept: None,
            written: Arc::default(),
            read: Arc::default(),
        }
    }

    fn publish(&self, catalog: &str, signature: &[u8]) {
        let mut s = self.site.lock().expect("site");
        s.files
            .insert("/catalog.toml".into(), catalog.as_bytes().to_vec());
        s.files
            .insert("/catalog.toml.minisig".into(), signature.to_vec());
    }

    fn log(&self) -> Vec<(String, Option<String>, u16, usize)> {
        self.site.lock().expect("site").log.clone()
    }

    fn up(&mut self) {
        assert!(self.accept.is_none(), "already up");
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                [127, 0, 0, 1],
                SERVER_PORT,
            ))))
            .expect("bind the catalog server");
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let site = self.site.clone();
        let written = self.written.clone();
        let read = self.read.clone();
        self.accept = Some(self.rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, site) = (acceptor.clone(), site.clone());
                let (written, read) = (written.clone(), read.clone());
                tokio::spawn(async move {
                    let counted = Counted {
                        inner: tcp,
                        written,
                        read,
                    };
                    let Ok(tls) = acceptor.accept(counted).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let site = site.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&site, &req)) }
                    });
                    let _conn_end = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        }));
    }

    fn down(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
            let _aborted = self.rt.block_on(t);
        }
    }
}

fn answer(site: &Mutex<Site>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut s = site.lock().expect("site");
    let path = req.uri().path().to_string();
    let inm = req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, tag, body) = match s.files.get(&path) {
        None => (StatusCode::NOT_FOUND, None, Vec::new()),
        Some(data) => {
            let tag = etag(data);
            if inm.as_deref() == Some(tag.as_str()) {
                (StatusCode::NOT_MODIFIED, Some(tag), Vec::new())
            } else {
                (StatusCode::OK, Some(tag), data.clone())
            }
        }
    };
    s.log.push((path, inm, status.as_u16(), body.len()));
    let mut r = Response::builder().status(status);
    if let Some(t) = tag {
        r = r.header(hyper::header::ETAG, t);
    }
    r.body(Full::new(Bytes::from(body))).expect("response")
}

struct Signer(minisign::KeyPair);

impl Signer {
    fn new() -> Signer {
        Signer(minisign::KeyPair::generate_unencrypted_keypair().expect("keypair"))
    }

    fn public(&self) -> String {
        self.0.pk.to_base64()
    }

    fn sign(&self, data: &str) -> Vec<u8> {
        minisign::sign(
            None,
            &self.0.sk,
            std::io::Cursor::new(data.as_bytes()),
            Some("berth remote catalog"),
            None,
        )
        .expect("sign")
        .into_string()
        .into_bytes()
    }
}

/// The admin's own tool, as README tells them: a key made and catalogs signed with the
/// `minisign` program (Debian's package; scripts/test-env installs it).
struct MinisignTool {
    dir: std::path::PathBuf,
}

impl MinisignTool {
    fn new(dir: &std::path::Path) -> MinisignTool {
        let dir = dir.join("admin-keys");
        std::fs::create_dir_all(&dir).expect("key dir");
        let o = std::process::Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(dir.join("catalog.pub"))
            .arg("-s")
            .arg(dir.join("catalog.key"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run minisign ({e}): install the minisign package (scripts/test-env does)")
            });
        assert!(o.status.success(), "minisign -G: {}", text(&o));
        MinisignTool { dir }
    }

    /// The key's base64 line, as config.toml wants it.
    fn public(&self) -> String {
        let pub_file = std::fs::read_to_string(self.dir.join("catalog.pub")).expect("catalog.pub");
        pub_file
            .lines()
            .nth(1)
            .expect("key line")
            .trim()
            .to_string()
    }

    /// `minisign -S -m catalog.toml`: the `.minisig` it writes.
    fn sign(&self, catalog: &str) -> Vec<u8> {
        let file = self.dir.join("catalog.toml");
        std::fs::write(&file, catalog).expect("catalog.toml");
        let o = std::process::Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(self.dir.join("catalog.key"))
            .arg("-m")
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("minisign -S");
        assert!(o.status.success(), "minisign -S: {}", text(&o));
        std::fs::read(self.dir.join("catalog.toml.minisig")).expect("catalog.toml.minisig")
    }
}

/// A remote catalog with `serial` holding the test's service (and its `description`).
fn bundle(serial: u64, expiry: &str, description: &str) -> String {
    let svc = web_service(SERVICE, SERVICE_PORT)
        .replace("integration test page", description)
        .replace("[[containers", "[[services.containers");
    format!("[remote]\nserial = {serial}\nexpiry = \"{expiry}\"\n\n[[services]]\n{svc}")
}

fn setup(w: &World, server: &Server, keys: &[String]) {
    let ca = w.dir.path().join("catalog-ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("ca file");
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    w.config(&format!(
        "[web]\nenabled = false\n\n[remote_catalog]\nurl = \"https://127.0.0.1:{SERVER_PORT}/catalog.toml\"\n\
         public_keys = [{}]\npoll_interval = \"1h\"\nca_file = \"{}\"\n",
        keys.join(", "),
        path_str(&ca)
    ));
}

fn remote_info(w: &World) -> serde_json::Value {
    w.info()["remote_catalog"].clone()
}

fn wait_serial(w: &World, serial: u64) {
    let ok = wait_for(Duration::from_secs(15), || {
        (remote_info(w)["serial"] == serial).then_some(())
    });
    assert!(
        ok.is_some(),
        "remote catalog serial {serial} never in force: {}\n{}",
        remote_info(w),
        w.daemon_log()
    );
}

fn started_at() -> String {
    inspect(&format!("berth-{SERVICE}"), "{{.State.StartedAt}}").expect("container")
}

#[test]
fn a_signed_catalog_adds_a_service_and_refused_ones_change_nothing() {
    let Some(_session) = session("a_signed_catalog_adds_a_service_and_refused_ones_change_nothing")
    else {
        return;
    };
    let mut w = World::new(&[SERVICE]);
    let (admin, stranger) = (Signer::new(), Signer::new());
    let mut server = Server::new();
    let v1 = bundle(1, LATER, "from the remote catalog");
    server.publish(&v1, &admin.sign(&v1));
    server.up();
    setup(&w, &server, &[admin.public()]);

    // The admin checks the file before signing it.
    let file = w.dir.path().join("catalog.toml");
    std::fs::write(&file, &v1).expect("catalog.toml");
    let out = w.ok(&["catalog", "validate", "--remote", path_str(&file)]);
    assert!(out.contains("ok: remote catalog serial 1"), "{out}");
    std::fs::write(&file, v1.replace(&SERVICE_PORT.to_string(), "80")).expect("catalog.toml");
    let o = w.berth(&["catalog", "validate", "--remote", path_str(&file)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("catalog.toml:16:8: containers[0].ports[0].host"),
        "{}",
        text(&o)
    );

    // The daemon fetches at start: the service is in the catalog and gets its unit.
    w.start_daemon();
    wait_serial(&w, 1);
    w.ok(&["enable", SERVICE]);
    assert_eq!(unit_active(&format!("berth-{SERVICE}.service")), "active");
    assert_page(SERVICE_PORT);
    let status = w.status(SERVICE);
    assert_eq!(status["description"], "from the remote catalog", "{status}");

    // Unchanged: one request, answered 304, no body, no signature fetched. Ten times, for
    // the figures README gives.
    let mut took = Vec::new();
    let (written, read) = (
        server.written.load(Ordering::Relaxed),
        server.read.load(Ordering::Relaxed),
    );
    for round in 0..10 {
        let before = server.log().len();
        let t = Instant::now();
        let out = w.ok(&["catalog", "fetch"]);
        took.push(t.elapsed());
        assert!(out.contains("unchanged (serial 1 in force)"), "{out}");
        let log = server.log();
        assert_eq!(
            log[before..],
            [(
                "/catalog.toml".to_string(),
                Some(etag(v1.as_bytes())),
                304,
                0
            )],
            "round {round}: {log:?}"
        );
    }
    took.sort();
    println!(
        "unchanged poll (10 rounds): 1 request each, 304, 0 body bytes; per poll on the wire \
         (TLS handshake included) {} bytes to berth, {} bytes from berth; `berth catalog fetch` \
         median {} ms, max {} ms",
        (server.written.load(Ordering::Relaxed) - written) / 10,
        (server.read.load(Ordering::Relaxed) - read) / 10,
        took[5].as_millis(),
        took[9].as_millis()
    );
    assert_eq!(remote_info(&w)["not_modified_total"], 10);

    // A newer serial is taken (the same service: nothing restarts).
    let start = started_at();
    let v2 = bundle(2, LATER, "from the remote catalog");
    server.publish(&v2, &admin.sign(&v2));
    let out = w.ok(&["catalog", "fetch"]);
    assert!(out.contains("in force: remote catalog serial 2"), "{out}");
    assert_eq!(remote_info(&w)["serial"], 2);

    // Each of these is refused, reported, and changes nothing.
    let tampered = v2.replace("from the remote catalog", "tampered");
    let keyed = bundle(3, LATER, "wrong key");
    let older = bundle(1, LATER, "rolled back");
    let replay = bundle(2, LATER, "replayed");
    let expired = bundle(3, EARLIER, "expired");
    let invalid = bundle(3, LATER, "invalid").replace(&SERVICE_PORT.to_string(), "80");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("bad signature", &tampered, admin.sign(&v2)),
        ("unknown key", &keyed, stranger.sign(&keyed)),
        (
            "serial 1 is older than serial 2",
            &older,
            admin.sign(&older),
        ),
        (
            "serial 2 is the serial in force but the catalog differs",
            &replay,
            admin.sign(&replay),
        ),
        ("expired at 2020-01-01", &expired, admin.sign(&expired)),
        (
            "serial 3 does not validate as a catalog layer: 1 problem in the catalog:\n  \
             <remote>/catalog.toml:16:8: containers[0].ports[0].host",
            &invalid,
            admin.sign(&invalid),
        ),
    ];
    for (i, (want, text, sig)) in cases.iter().enumerate() {
        server.publish(text, sig);
        let o = w.berth(&["catalog", "fetch"]);
        assert!(
            !o.status.success(),
            "{want}: accepted:\n{}",
            common::text(&o)
        );
        assert!(
            common::text(&o).contains(want),
            "{want}: {}",
            common::text(&o)
        );
        let info = remote_info(&w);
        assert_eq!(info["serial"], 2, "{info}");
        assert_eq!(info["failures_total"], i as u64 + 1, "{info}");
        assert!(
            info["error"].as_str().is_some_and(|e| e.contains(want)),
            "{info}"
        );
        let ls = w.berth(&["ls"]);
        assert!(
            common::text(&ls).contains("warning: remote catalog: "),
            "{}",
            common::text(&ls)
        );
        assert_eq!(w.status(SERVICE)["description"], "from the remote catalog");
    }
    let m = w.metrics();
    assert_eq!(metric(&m, "berth_remote_catalog_serial"), Some(2), "{m}");
    assert_eq!(
        metric(&m, "berth_remote_catalog_fetch_failures_total"),
        Some(6),
        "{m}"
    );
    assert_eq!(metric(&m, "berth_remote_catalog_error"), Some(1), "{m}");
    assert_eq!(started_at(), start, "the service was not restarted");
    assert_page(SERVICE_PORT);

    // A dry run of a good one says what it would change and changes nothing.
    let v3 = bundle(3, LATER, "changed by serial 3");
    server.publish(&v3, &admin.sign(&v3));
    let out = w.ok(&["catalog", "fetch", "--dry-run"]);
    assert!(
        out.contains("would put in force remote catalog serial 3"),
        "{out}"
    );
    assert!(out.contains(&format!("changed: {SERVICE}")), "{out}");
    assert_eq!(remote_info(&w)["serial"], 2);
    assert_eq!(w.status(SERVICE)["description"], "from the remote catalog");
    // And for real: the error line goes.
    w.ok(&["catalog", "fetch"]);
    let info = remote_info(&w);
    assert_eq!(
        (info["serial"].clone(), info["error"].clone()),
        (3.into(), serde_json::Value::Null)
    );
    assert_eq!(w.status(SERVICE)["description"], "changed by serial 3");
    server.down();
}

#[test]
fn the_remote_catalog_keeps_working_with_its_server_down_and_across_a_restart() {
    let Some(_session) =
        session("the_remote_catalog_keeps_working_with_its_server_down_and_across_a_restart")
    else {
        return;
    };
    let mut w = World::new(&[SERVICE]);
    // Signed with the standard minisign program this time, as an admin would.
    let admin = MinisignTool::new(w.dir.path());
    let mut server = Server::new();
    let v1 = bundle(1, LATER, "from the remote catalog");
    server.publish(&v1, &admin.sign(&v1));
    server.up();
    setup(&w, &server, &[admin.public()]);
    w.start_daemon();
    wait_serial(&w, 1);
    w.ok(&["enable", SERVICE]);
    assert_page(SERVICE_PORT);
    let start = started_at();

    server.down();
    let o = w.berth(&["catalog", "fetch"]);
    assert!(!o.status.success());
    assert!(
        common::text(&o).contains("cannot fetch"),
        "{}",
        common::text(&o)
    );
    assert_page(SERVICE_PORT);
    assert_eq!(remote_info(&w)["serial"], 1);

    // A new daemon with the server still down: the kept copy is in force from the start.
    w.stop_daemon();
    w.start_daemon();
    let ls = w.ok(&["ls"]);
    assert!(ls.contains(SERVICE), "{ls}");
    let info = remote_info(&w);
    assert_eq!(info["serial"], 1, "{info}");
    let failed = wait_for(Duration::from_secs(15), || {
        let e = remote_info(&w)["error"].as_str().map(str::to_string)?;
        e.contains("cannot fetch").then_some(e)
    });
    assert!(
        failed.is_some(),
        "the first poll's failure is reported: {}",
        remote_info(&w)
    );
    assert_eq!(unit_active(&format!("berth-{SERVICE}.service")), "active");
    assert_page(SERVICE_PORT);
    assert_eq!(
        started_at(),
        start,
        "neither the outage nor the restart restarted it"
    );

    // The server is back: the next fetch is a 304 (the ETag was kept on disk).
    server.up();
    let before = server.log().len();
    let out = w.ok(&["catalog", "fetch"]);
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(server.log()[before..].len(), 1);
    assert_eq!(server.log()[before].2, 304);
    assert_eq!(remote_info(&w)["error"], serde_json::Value::Null);
    server.down();
}
