//! The Consul source over TLS with client authentication (the Consul double behind a mutual
//! TLS front, tests/support/pki.rs), the server name its certificate is checked against, and
//! files that change under a running source: a rotated token file, rotated or broken client
//! certificates.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::consul::ConsulDouble;
use support::pki::Pki;
use support::*;

const KEY: &str = "service/voltha/data/core/assignment";
const WAIT: Duration = KV_WAIT;

const TWO: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const OTHER: &str = r#"{"0001": {"id": "c", "host": "10.0.0.7"}}"#;
const THIRD: &str = r#"{"0001": {"id": "d", "host": "10.0.0.9"}}"#;

fn config(addr: &str, extra: &str) -> String {
    kv_config(&format!(
        r#"type: consul, address: "{addr}", wait: 1s, min_interval: 50ms, probe_interval: 100ms, backoff: {{ initial: 50ms, max: 200ms }} {extra}"#
    ))
}

fn tls_keys(pki: &Pki, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        r#", ca_file: "{}", cert_file: "{}", key_file: "{}""#,
        pki.ca.display(),
        cert.display(),
        key.display()
    )
}

/// The source's last error on `/readyz`.
async fn last_error(s: &Server) -> String {
    let (_, v) = get_json(&s.url("/readyz")).await;
    v["sources"]["assignment"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// With the CA, a client certificate and its key, the source reads and follows the key over
/// mutual TLS. Without the client certificate the handshake is refused: counted as `tls`, with
/// the reason in the message, and the source is never ready.
#[tokio::test]
async fn a_client_certificate_is_required_and_works() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let (front, refused) = consul.serve_mtls(&pki).await;
    let url = format!("https://{front}");

    let ok = Server::start(&config(&url, &tls_keys(&pki, &pki.client_cert, &pki.client_key))).await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment over mutual TLS")
        .await;
    consul.put(KEY, OTHER.as_bytes());
    ok.wait_hosts(&["10.0.0.7"], "a change over mutual TLS").await;
    assert_eq!(ok.errors("tls").await, 0);
    assert_eq!(refused.load(Ordering::Relaxed), 0);

    let bad = Server::start(&config(&url, &format!(r#", ca_file: "{}""#, pki.ca.display()))).await;
    wait_for(WAIT, "the refused handshake counted as tls", || async {
        (bad.errors("tls").await >= 1).then_some(())
    })
    .await;
    assert_eq!(bad.source_state().await, (503, "error".to_string()));
    let e = last_error(&bad).await;
    assert!(e.contains("Consul at https://127.0.0.1:"), "{e}");
    assert!(refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        bad.errors("connect").await,
        0,
        "a TLS refusal is not a connection failure"
    );
}

/// The certificate is checked against `tls_server_name`, not the address: the double's
/// certificate names `localhost` (and 127.0.0.1), so `localhost` works and another name fails,
/// saying the certificate is not valid for it.
#[tokio::test]
async fn the_server_name_is_checked_and_a_wrong_one_fails_clearly() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let (front, _) = consul.serve_mtls(&pki).await;
    let url = format!("https://{front}");
    let keys = tls_keys(&pki, &pki.client_cert, &pki.client_key);

    let ok = Server::start(&config(&url, &format!("{keys}, tls_server_name: localhost"))).await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment with the right name")
        .await;

    let wrong = Server::start(&config(&url, &format!("{keys}, tls_server_name: consul.wrong.example"))).await;
    wait_for(WAIT, "the wrong name reported", || async {
        (!last_error(&wrong).await.is_empty()).then_some(())
    })
    .await;
    let e = last_error(&wrong).await;
    assert!(wrong.errors("tls").await >= 1, "not counted as tls: {e}");
    assert_eq!(wrong.source_state().await, (503, "error".to_string()));
    assert!(
        e.contains("invalid peer certificate") && e.contains("not valid for name \"consul.wrong.example\""),
        "the message says why: {e}"
    );
}

/// A token file written with a new token is used on the next request, without a restart: the
/// old token is refused right after the rotation, and no request fails.
#[tokio::test]
async fn a_rotated_token_file_is_used_on_the_next_request() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.require_token(Some("token-one"));
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one\n").expect("write");
    let s = Server::start(&config(
        &consul.addr.to_string(),
        &format!(r#", token_file: "{}""#, token_file.display()),
    ))
    .await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment with the first token")
        .await;

    // Rotation: Consul accepts both tokens, the file gets the new one, a change is read.
    consul.also_accept(Some("token-two"));
    std::fs::write(&token_file, "token-two\n").expect("write");
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "the change after the rotation").await;
    let rotated = Instant::now();
    // The old token is revoked: the queries since carry the new one and are answered.
    consul.require_token(Some("token-two"));
    consul.also_accept(None);
    consul.put(KEY, THIRD.as_bytes());
    s.wait_hosts(&["10.0.0.9"], "a change read with the new token").await;
    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the next change read with the new token")
        .await;
    assert_eq!(s.errors("auth").await, 0, "a request went out with the old token");
    let reads = consul.reads_since(KEY, rotated);
    assert!(reads.len() >= 2, "{reads:?}");
    assert!(
        reads.iter().all(|r| r.token.as_deref() == Some("token-two")),
        "{reads:?}"
    );

    // A token file that is emptied (a rotation half-way) keeps the token in use: counted,
    // and the next write is still read.
    std::fs::write(&token_file, "").expect("write");
    wait_for(WAIT, "the empty token file counted", || async {
        (s.errors("token_file").await >= 1).then_some(())
    })
    .await;
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "a change read with the kept token").await;
    assert_eq!(s.errors("auth").await, 0);
}

/// Client certificate files replaced with garbage under a running source: the error is
/// counted and shown, and the source goes on with the client it had (the served endpoints stay
/// and later changes are still read). A good new pair is picked up.
#[tokio::test]
async fn broken_certificate_files_keep_the_last_good_client() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let (front, _) = consul.serve_mtls(&pki).await;
    let cert = dir.path().join("mine.pem");
    let key = dir.path().join("mine-key.pem");
    std::fs::copy(&pki.client_cert, &cert).expect("copy");
    std::fs::copy(&pki.client_key, &key).expect("copy");
    let s = Server::start(&config(&format!("https://{front}"), &tls_keys(&pki, &cert, &key))).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment").await;

    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    wait_for(WAIT, "the broken certificate counted", || async {
        (s.errors("tls").await >= 1).then_some(())
    })
    .await;
    let e = last_error(&s).await;
    assert!(
        e.contains(&cert.display().to_string()),
        "the message names the file: {e}"
    );
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "a change read with the previous client")
        .await;
    s.wait_state((200, "ok"), "healthy again with the previous client")
        .await;
    let counted = s.errors("tls").await;

    // A key that does not match the certificate is refused the same way.
    std::fs::copy(&pki.client_cert, &cert).expect("copy");
    std::fs::copy(&pki.server_key, &key).expect("copy");
    wait_for(WAIT, "the mismatched key counted", || async {
        (s.errors("tls").await > counted).then_some(())
    })
    .await;
    consul.put(KEY, THIRD.as_bytes());
    s.wait_hosts(&["10.0.0.9"], "a change read with the previous client")
        .await;

    // The good pair again: used, and no more errors.
    std::fs::copy(&pki.client_key, &key).expect("copy");
    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "a change with the restored pair")
        .await;
    let after = s.errors("tls").await;
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "another change").await;
    assert_eq!(s.errors("tls").await, after);
}

/// The real binary reads the TLS settings from Consul's own variables: a configuration that
/// names only the source type reaches the double over mutual TLS with `CONSUL_HTTP_ADDR`,
/// `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME` and
/// `CONSUL_HTTP_TOKEN_FILE`.
#[tokio::test]
async fn the_binary_reads_consuls_variables() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.require_token(Some("env-token"));
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::create(dir.path());
    let (front, _) = consul.serve_mtls(&pki).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "env-token").expect("write");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, kv_config("type: consul, wait: 1s")).expect("write");
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_voltha-xds"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .args(["--xds-listen", "127.0.0.1:0", "--admin-debug-listen", "127.0.0.1:0"])
        .args(["--admin-listen", &admin.to_string()])
        .env("CONSUL_HTTP_ADDR", front.to_string())
        .env("CONSUL_CACERT", &pki.ca)
        .env("CONSUL_CLIENT_CERT", &pki.client_cert)
        .env("CONSUL_CLIENT_KEY", &pki.client_key)
        .env("CONSUL_TLS_SERVER_NAME", "localhost")
        .env("CONSUL_HTTP_TOKEN_FILE", &token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("voltha-xds starts");
    let _proc = Proc {
        child,
        name: "voltha-xds".into(),
    };
    let (code, v) = wait_for(WAIT, "ready on the assignment read over mutual TLS", || async {
        let r = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
        let code = r.status().as_u16();
        let v: serde_json::Value = r.json().await.ok()?;
        (code == 200).then_some((code, v))
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["sources"]["assignment"]["state"], "ok", "{v}");
    let reads = consul.reads_since(KEY, Instant::now() - Duration::from_secs(60));
    assert!(
        !reads.is_empty() && reads.iter().all(|r| r.token.as_deref() == Some("env-token")),
        "{reads:?}"
    );
}
