//! The verification rules and one poll after another, against an in-memory server, an
//! engine that records what it is offered, and files in memory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_proto::{FetchAnswer, RemoteCatalogInfo};

use super::http::{Fetch, Fetched};
use super::verify::{verify, Kept, Keys, Refused, Verdict};
use super::{Engine, Remote, Settings};
use crate::catalog::Source;
use crate::testkit::MemFiles;

const URL: &str = "https://catalog.example/berth/catalog.toml";
const NOW: u64 = 1_800_000_000;
/// 2030-01-01T00:00:00Z, after NOW.
const LATER: &str = "2030-01-01T00:00:00Z";
/// 2020-01-01T00:00:00Z, before NOW.
const EARLIER: &str = "2020-01-01T00:00:00Z";

/// A signing key as an admin makes it (`minisign -G`, unencrypted here).
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

fn catalog(serial: u64, expiry: &str, port: u16) -> String {
    format!(
        r#"[remote]
serial = {serial}
expiry = "{expiry}"

[[services]]
name = "it-remote"
description = "from the remote catalog"
[[services.containers]]
name = "web"
image = "localhost/berth-demo:1"
[[services.containers.ports]]
name = "http"
host = {port}
container = 8080
"#
    )
}

fn keys(of: &[&Signer]) -> Keys {
    Keys::decode(&of.iter().map(|s| s.public()).collect::<Vec<_>>()).expect("keys")
}

fn kept(serial: u64, text: &str, signer: &Signer) -> Kept {
    Kept {
        url: URL.into(),
        serial,
        expiry: NOW + 3600,
        etag: None,
        saved_at: NOW - 60,
        catalog: text.into(),
        signature: String::from_utf8(signer.sign(text)).expect("utf-8"),
    }
}

#[test]
fn a_good_catalog_passes_and_names_its_header() {
    let admin = Signer::new();
    let text = catalog(7, LATER, 18241);
    match verify(
        URL,
        text.as_bytes(),
        &admin.sign(&text),
        &keys(&[&admin]),
        None,
        NOW,
    ) {
        Ok(Verdict::New { header, text: t }) => {
            assert_eq!(header.serial, 7);
            assert_eq!(header.expiry, 1_893_456_000);
            assert_eq!(t, text);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn any_configured_key_may_sign() {
    let (old, new) = (Signer::new(), Signer::new());
    let text = catalog(7, LATER, 18241);
    let r = verify(
        URL,
        text.as_bytes(),
        &new.sign(&text),
        &keys(&[&old, &new]),
        None,
        NOW,
    );
    assert!(matches!(r, Ok(Verdict::New { .. })), "{r:?}");
}

#[test]
fn tampered_content_is_a_bad_signature() {
    let admin = Signer::new();
    let text = catalog(7, LATER, 18241);
    let sig = admin.sign(&text);
    let tampered = text.replace("localhost/berth-demo:1", "evil.example/miner:1");
    let r = verify(URL, tampered.as_bytes(), &sig, &keys(&[&admin]), None, NOW);
    assert_eq!(r, Err(Refused::BadSignature));
    // A single byte is enough.
    let r = verify(
        URL,
        format!("{text} ").as_bytes(),
        &sig,
        &keys(&[&admin]),
        None,
        NOW,
    );
    assert_eq!(r, Err(Refused::BadSignature));
}

#[test]
fn a_signature_by_another_key_is_an_unknown_key() {
    let (admin, stranger) = (Signer::new(), Signer::new());
    let text = catalog(7, LATER, 18241);
    let r = verify(
        URL,
        text.as_bytes(),
        &stranger.sign(&text),
        &keys(&[&admin]),
        None,
        NOW,
    );
    assert_eq!(r, Err(Refused::UnknownKey(1)));
    assert!(Refused::UnknownKey(1).to_string().contains("public_keys"));
}

#[test]
fn garbage_instead_of_a_signature_is_refused() {
    let admin = Signer::new();
    let text = catalog(7, LATER, 18241);
    let r = verify(
        URL,
        text.as_bytes(),
        b"<html>not found</html>",
        &keys(&[&admin]),
        None,
        NOW,
    );
    assert!(matches!(r, Err(Refused::SignatureFile(_))), "{r:?}");
}

#[test]
fn an_older_serial_is_a_rollback() {
    let admin = Signer::new();
    let in_force = kept(8, &catalog(8, LATER, 18241), &admin);
    let old = catalog(7, LATER, 18242);
    let r = verify(
        URL,
        old.as_bytes(),
        &admin.sign(&old),
        &keys(&[&admin]),
        Some(&in_force),
        NOW,
    );
    assert_eq!(
        r,
        Err(Refused::Older {
            new: 7,
            in_force: 8
        })
    );
}

#[test]
fn an_equal_serial_with_other_content_is_a_replay() {
    let admin = Signer::new();
    let in_force = kept(8, &catalog(8, LATER, 18241), &admin);
    let other = catalog(8, LATER, 18242);
    let r = verify(
        URL,
        other.as_bytes(),
        &admin.sign(&other),
        &keys(&[&admin]),
        Some(&in_force),
        NOW,
    );
    assert_eq!(r, Err(Refused::SameSerialDiffers(8)));
    // The same bytes again are simply the catalog in force.
    let same = catalog(8, LATER, 18241);
    let r = verify(
        URL,
        same.as_bytes(),
        &admin.sign(&same),
        &keys(&[&admin]),
        Some(&in_force),
        NOW,
    );
    assert_eq!(r, Ok(Verdict::Same));
}

#[test]
fn an_expired_catalog_is_refused() {
    let admin = Signer::new();
    let text = catalog(9, EARLIER, 18241);
    let r = verify(
        URL,
        text.as_bytes(),
        &admin.sign(&text),
        &keys(&[&admin]),
        None,
        NOW,
    );
    assert!(
        matches!(&r, Err(Refused::Expired { serial: 9, expired }) if expired.starts_with("2020-01-01")),
        "{r:?}"
    );
}

#[test]
fn a_broken_header_names_its_line() {
    let admin = Signer::new();
    for (text, want) in [
        (
            "[[services]]\nname = \"x\"\n".to_string(),
            "missing field `remote`",
        ),
        (
            "[remote]\nserial = 0\nexpiry = \"2030-01-01T00:00:00Z\"\n".to_string(),
            "catalog.toml:2:10: remote.serial",
        ),
        (
            "[remote]\nserial = 3\nexpiry = \"soon\"\n".to_string(),
            "catalog.toml:3:10: remote.expiry",
        ),
    ] {
        let r = verify(
            URL,
            text.as_bytes(),
            &admin.sign(&text),
            &keys(&[&admin]),
            None,
            NOW,
        );
        match r {
            Err(Refused::Header(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn the_bundle_is_validated_like_admin_files_with_its_own_lines() {
    // An unknown field on line 8 of the bundle, a privileged port on line 14.
    let text = catalog(3, LATER, 80).replace(
        "[[services.containers]]",
        "colour = \"red\"\n[[services.containers]]",
    );
    let src = Source::new(crate::catalog::remote::source_path(URL), text);
    let mut files = crate::catalog::builtin_sources();
    files.push(src);
    let e = crate::catalog::from_sources(None, &files).expect_err("invalid");
    let msg = e.to_string();
    assert!(
        msg.contains("<remote>/catalog.toml:8:1: unknown field `colour`"),
        "{msg}"
    );
    assert!(
        msg.contains("<remote>/catalog.toml:14:8: containers[0].ports[0].host"),
        "{msg}"
    );
}

#[test]
fn a_service_twice_in_the_bundle_names_the_second() {
    let one = catalog(3, LATER, 18241);
    let services = &one[one.find("[[services]]").expect("services")..];
    let text = format!("{one}\n{}", services.replace("18241", "18248"));
    let src = Source::new(crate::catalog::remote::source_path(URL), text);
    let e = crate::catalog::from_sources(None, &[src]).expect_err("twice");
    assert!(
        e.to_string()
            .contains("<remote>/catalog.toml:17:8: name: service \"it-remote\" is defined twice"),
        "{e}"
    );
}

#[test]
fn a_bundle_clashing_with_a_built_in_port_is_blamed() {
    // demo's stable port is 18080.
    let src = Source::new(
        crate::catalog::remote::source_path(URL),
        catalog(3, LATER, 18080),
    );
    let mut files = crate::catalog::builtin_sources();
    files.push(src);
    let e = crate::catalog::from_sources(None, &files).expect_err("clash");
    assert!(
        e.to_string()
            .contains("<remote>/catalog.toml:13:8: ports.http.host"),
        "{e}"
    );
}

/// A server in memory: the catalog and its signature, with ETags, and every request seen.
#[derive(Debug, Clone, Default)]
struct MemServer(Arc<Mutex<Served>>);

#[derive(Debug, Default)]
struct Served {
    catalog: String,
    signature: Vec<u8>,
    down: bool,
    /// The If-None-Match of every request.
    asked: Vec<Option<String>>,
    bodies: usize,
}

impl MemServer {
    fn publish(&self, text: &str, sig: Vec<u8>) {
        let mut s = self.0.lock().expect("lock");
        s.catalog = text.into();
        s.signature = sig;
    }

    fn etag(text: &str) -> String {
        format!(
            "\"{}-{}\"",
            text.len(),
            text.bytes().map(u64::from).sum::<u64>()
        )
    }
}

impl Fetch for MemServer {
    async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, String> {
        let mut s = self.0.lock().expect("lock");
        s.asked.push(etag.map(str::to_string));
        if s.down {
            return Err("connection refused".into());
        }
        let current = Self::etag(&s.catalog);
        if etag == Some(current.as_str()) {
            return Ok(Fetched::NotModified);
        }
        s.bodies += 1;
        Ok(Fetched::Changed {
            catalog: s.catalog.clone().into_bytes(),
            signature: s.signature.clone(),
            etag: Some(current),
        })
    }
}

/// An engine that takes or refuses what it is offered, and remembers it.
#[derive(Debug, Clone, Default)]
struct FakeEngine(Arc<Mutex<Offers>>);

#[derive(Debug, Default)]
struct Offers {
    offered: Vec<(String, bool)>,
    refuse: Option<String>,
    seen: Vec<RemoteCatalogInfo>,
}

impl Engine for FakeEngine {
    async fn offer(&self, source: Source, dry_run: bool) -> Result<FetchAnswer, String> {
        let mut o = self.0.lock().expect("lock");
        o.offered.push((source.text.clone(), dry_run));
        match &o.refuse {
            Some(e) => Err(e.clone()),
            None => Ok(FetchAnswer {
                added: vec!["it-remote".into()],
                ..FetchAnswer::default()
            }),
        }
    }

    async fn seen(&self, info: RemoteCatalogInfo) {
        self.0.lock().expect("lock").seen.push(info);
    }
}

fn settings(keys: Keys) -> Settings {
    Settings {
        url: URL.into(),
        keys,
        poll_interval: std::time::Duration::from_secs(900),
        kept_path: PathBuf::from("/home/u/.local/state/berth/remote-catalog.json"),
    }
}

#[tokio::test]
async fn a_good_catalog_is_offered_kept_and_then_asked_for_with_its_etag() {
    let admin = Signer::new();
    let (server, engine, files) = (MemServer::default(), FakeEngine::default(), MemFiles::new());
    let v1 = catalog(1, LATER, 18241);
    server.publish(&v1, admin.sign(&v1));
    let mut r = Remote::load(
        settings(keys(&[&admin])),
        server.clone(),
        files.clone(),
        NOW,
    )
    .await;
    assert!(r.in_force().is_none());

    let a = r.poll(&engine, false, NOW).await.expect("applied");
    assert_eq!(
        (a.serial, a.unchanged, a.added.clone()),
        (Some(1), false, vec!["it-remote".to_string()])
    );
    assert_eq!(r.in_force().map(|s| s.text), Some(v1.clone()));
    let kept: Kept =
        serde_json::from_slice(&files.get(&r.settings.kept_path).expect("kept on disk"))
            .expect("kept json");
    assert_eq!((kept.serial, kept.catalog.as_str()), (1, v1.as_str()));
    assert_eq!(files.mode(&r.settings.kept_path), Some(0o600));
    assert_eq!(kept.etag, Some(MemServer::etag(&v1)));

    // Unchanged: the second poll sends the ETag, gets a 304 and offers nothing.
    let a = r.poll(&engine, false, NOW + 900).await.expect("unchanged");
    assert!(a.unchanged, "{a:?}");
    {
        let s = server.0.lock().expect("lock");
        assert_eq!(s.asked, vec![None, Some(MemServer::etag(&v1))]);
        assert_eq!(s.bodies, 1, "no body for an unchanged catalog");
    }
    assert_eq!(engine.0.lock().expect("lock").offered.len(), 1);
    assert_eq!(r.info().not_modified_total, 1);
    assert_eq!(r.info().last_success, Some(NOW + 900));
    assert_eq!(r.info().serial, Some(1));

    // The next start uses the kept copy.
    let again = Remote::load(
        settings(keys(&[&admin])),
        server.clone(),
        files.clone(),
        NOW,
    )
    .await;
    assert_eq!(again.in_force().map(|s| s.text), Some(v1));
}

#[tokio::test]
async fn refused_catalogs_change_nothing_and_are_counted() {
    let admin = Signer::new();
    let stranger = Signer::new();
    let (server, engine, files) = (MemServer::default(), FakeEngine::default(), MemFiles::new());
    let v2 = catalog(2, LATER, 18241);
    server.publish(&v2, admin.sign(&v2));
    let mut r = Remote::load(
        settings(keys(&[&admin])),
        server.clone(),
        files.clone(),
        NOW,
    )
    .await;
    r.poll(&engine, false, NOW).await.expect("v2 applied");
    let kept_before = files.get(&r.settings.kept_path);

    let tampered = v2.replace("18241", "18242");
    let older = catalog(1, LATER, 18243);
    let replay = catalog(2, LATER, 18244);
    let expired = catalog(3, EARLIER, 18245);
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("bad signature", tampered.clone(), admin.sign(&v2)),
        (
            "unknown key",
            catalog(3, LATER, 18246),
            stranger.sign(&catalog(3, LATER, 18246)),
        ),
        ("older than serial 2", older.clone(), admin.sign(&older)),
        (
            "serial 2 is the serial in force",
            replay.clone(),
            admin.sign(&replay),
        ),
        ("expired", expired.clone(), admin.sign(&expired)),
    ];
    for (i, (want, text, sig)) in cases.into_iter().enumerate() {
        server.publish(&text, sig);
        let e = r.poll(&engine, false, NOW + 10).await.expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(r.info().error.as_deref(), Some(e.as_str()));
        assert_eq!(r.info().failures_total, i as u64 + 1);
        assert_eq!(r.info().serial, Some(2), "serial in force unchanged");
        assert_eq!(r.in_force().map(|s| s.text), Some(v2.clone()));
        assert_eq!(
            files.get(&r.settings.kept_path),
            kept_before,
            "kept copy untouched"
        );
    }
    assert_eq!(
        engine.0.lock().expect("lock").offered.len(),
        1,
        "none of them reached the engine"
    );

    // Server down: the catalog in force stays, the failure is reported.
    server.0.lock().expect("lock").down = true;
    let e = r.poll(&engine, false, NOW + 20).await.expect_err("down");
    assert!(e.contains("connection refused"), "{e}");
    assert_eq!(r.in_force().map(|s| s.text), Some(v2.clone()));

    // A catalog the engine's validation refuses is not kept either.
    server.0.lock().expect("lock").down = false;
    let v3 = catalog(3, LATER, 18247);
    server.publish(&v3, admin.sign(&v3));
    engine.0.lock().expect("lock").refuse = Some("<remote>/catalog.toml:14:8: port clash".into());
    let e = r.poll(&engine, false, NOW + 30).await.expect_err("invalid");
    assert!(
        e.contains("serial 3 does not validate") && e.contains(":14:8"),
        "{e}"
    );
    assert_eq!(files.get(&r.settings.kept_path), kept_before);

    // Fixed: it goes through, and the error is gone.
    engine.0.lock().expect("lock").refuse = None;
    r.poll(&engine, false, NOW + 40).await.expect("v3 applied");
    assert_eq!(r.info().error, None);
    assert_eq!(r.info().serial, Some(3));
}

#[tokio::test]
async fn a_dry_run_verifies_and_offers_but_keeps_nothing() {
    let admin = Signer::new();
    let (server, engine, files) = (MemServer::default(), FakeEngine::default(), MemFiles::new());
    let v1 = catalog(1, LATER, 18241);
    server.publish(&v1, admin.sign(&v1));
    let mut r = Remote::load(
        settings(keys(&[&admin])),
        server.clone(),
        files.clone(),
        NOW,
    )
    .await;
    let a = r.poll(&engine, true, NOW).await.expect("dry run");
    assert!(a.dry_run && !a.unchanged && a.serial == Some(1), "{a:?}");
    assert_eq!(
        engine.0.lock().expect("lock").offered,
        vec![(v1.clone(), true)]
    );
    assert!(r.in_force().is_none());
    assert!(files.get(&r.settings.kept_path).is_none());
    assert_eq!(
        r.info().last_attempt,
        None,
        "a dry run leaves the status alone"
    );
    // A refused one is refused in a dry run too.
    let tampered = v1.replace("18241", "18249");
    server.publish(&tampered, admin.sign(&v1));
    let e = r.poll(&engine, true, NOW).await.expect_err("tampered");
    assert!(e.contains("bad signature"), "{e}");
}

#[tokio::test]
async fn a_kept_copy_whose_key_was_taken_out_is_not_used() {
    let (old, new) = (Signer::new(), Signer::new());
    let files = MemFiles::new();
    let text = catalog(4, LATER, 18241);
    let k = kept(4, &text, &old);
    let path = settings(keys(&[&old])).kept_path;
    files.put(&path, serde_json::to_vec(&k).expect("json"));
    let r = Remote::load(
        settings(keys(&[&old, &new])),
        MemServer::default(),
        files.clone(),
        NOW,
    )
    .await;
    assert_eq!(r.in_force().map(|s| s.text), Some(text.clone()));
    let r = Remote::load(
        settings(keys(&[&new])),
        MemServer::default(),
        files.clone(),
        NOW,
    )
    .await;
    assert!(r.in_force().is_none(), "the old key is no longer trusted");
    // The serial is the signed text's, whatever the file says beside it.
    let edited = Kept {
        serial: 99,
        ..k.clone()
    };
    files.put(&path, serde_json::to_vec(&edited).expect("json"));
    let r = Remote::load(
        settings(keys(&[&old])),
        MemServer::default(),
        files.clone(),
        NOW,
    )
    .await;
    assert_eq!(r.info().serial, Some(4));
    // An expired kept copy still serves, and says so.
    let stale = kept(5, &catalog(5, EARLIER, 18241), &old);
    files.put(&path, serde_json::to_vec(&stale).expect("json"));
    let r = Remote::load(settings(keys(&[&old])), MemServer::default(), files, NOW).await;
    assert!(r.in_force().is_some());
    assert!(
        r.info()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("expired")),
        "{:?}",
        r.info()
    );
}

#[test]
fn jitter_stays_within_a_tenth() {
    let base = std::time::Duration::from_secs(900);
    for _ in 0..200 {
        let j = super::jittered(base);
        assert!(j >= base.mul_f64(0.9) && j <= base.mul_f64(1.1), "{j:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_task_polls_at_once_then_every_interval_and_on_demand() {
    let admin = Signer::new();
    let (server, engine, files) = (MemServer::default(), FakeEngine::default(), MemFiles::new());
    let v1 = catalog(1, LATER, 18241);
    server.publish(&v1, admin.sign(&v1));
    let r = Remote::load(settings(keys(&[&admin])), server.clone(), files, NOW).await;
    let (handle, task) = super::spawn(r, engine.clone());
    // 2000 s of (virtual) time at 900 s ± 90 s: the first poll at once, then two more.
    tokio::time::sleep(std::time::Duration::from_secs(2000)).await;
    assert_eq!(server.0.lock().expect("lock").asked.len(), 3);
    // On demand, between the scheduled ones.
    let a = handle.fetch(false).await.expect("fetch");
    assert!(a.unchanged, "{a:?}");
    assert_eq!(server.0.lock().expect("lock").asked.len(), 4);
    let seen = engine.0.lock().expect("lock").seen.clone();
    assert_eq!(
        seen.first().map(|i| i.serial),
        Some(None),
        "the status before any poll"
    );
    assert_eq!(seen.last().map(|i| i.serial), Some(Some(1)));
    assert_eq!(seen.last().map(|i| i.not_modified_total), Some(3));
    drop(handle);
    task.await.expect("the task ends with its last handle");
}
