//! The Consul source against the Consul KV API double (tests/support/consul.rs): every
//! scenario asserts the endpoints voltha-xds serves, and the double's request log shows the
//! source never busy-loops.

mod support;

use std::time::{Duration, Instant};

use support::consul::ConsulDouble;
use support::proxy::Proxy;
use support::*;

const KEY: &str = "service/voltha/data/core/assignment";
const WAIT: Duration = KV_WAIT;

const TWO: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const WITH_NULL: &str = r#"{"0001": null, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const OTHER: &str = r#"{"0001": {"id": "c", "host": "10.0.0.7"}}"#;

/// A Consul source on `addr` with short waits: `wait` 300 ms, quick backoff.
fn config(addr: &str, extra: &str) -> String {
    kv_config(&format!(
        r#"type: consul, address: "{addr}", wait: 1s, min_interval: 50ms, backoff: {{ initial: 50ms, max: 200ms }} {extra}"#
    ))
}

#[tokio::test]
async fn absent_key_then_written_changed_null_slot_malformed_and_deleted() {
    let consul = ConsulDouble::start().await;
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&[], "no cores while the key is absent").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
    // An absent key blocks like any other: a handful of queries per wait, not a busy loop.
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let n = consul.reads_since(KEY, t).len();
    assert!((1..=4).contains(&n), "{n} queries in 2.1 s with wait=1s");
    assert!(consul
        .reads_since(KEY, t)
        .iter()
        .all(|r| r.query.contains("index=") && r.query.contains("consistent")));

    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the written assignment").await;
    consul.put(KEY, WITH_NULL.as_bytes());
    s.wait_hosts(&["10.0.0.2"], "the null slot skipped").await;
    consul.put(KEY, br#"{"0001": {"host": "#);
    wait_for(WAIT, "the malformed value counted", || async {
        (s.errors("malformed_json").await == 1).then_some(())
    })
    .await;
    assert_eq!(s.hosts().await, Some(vec!["10.0.0.2".to_string()]), "last good served");
    assert_eq!(s.source_state().await, (200, "error".to_string()));
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "the fixed value").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
    // `{}` (10 bytes or fewer): no cores yet.
    consul.put(KEY, b"{}");
    s.wait_hosts(&[], "an empty assignment").await;
    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "cores again").await;
    // Deleted: the last good state stays, and the deletion is reported once.
    consul.delete(KEY);
    wait_for(WAIT, "the deletion reported", || async {
        (s.errors("deleted").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(s.errors("deleted").await, 1, "reported once, not on every query");
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    // Written again: followed.
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "the key written again").await;
}

#[tokio::test]
async fn an_idle_key_is_queried_once_per_wait() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment").await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let reads = consul.reads_since(KEY, t);
    assert!(
        (2..=5).contains(&reads.len()),
        "{} queries in 3.1 s with wait=1s",
        reads.len()
    );
    // Each blocks on the index of the previous answer.
    assert!(
        reads
            .iter()
            .all(|r| r.query.contains("index=2") && r.query.contains("wait=1000ms")),
        "{reads:?}"
    );
}

#[tokio::test]
async fn consul_out_of_reach_keeps_the_last_good_state_and_resumes() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let proxy = Proxy::start(consul.addr).await;
    let s = Server::start(&config(&proxy.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    proxy.cut();
    consul.put(KEY, OTHER.as_bytes());
    s.wait_state((200, "error"), "the outage reported, still ready").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]),
        "last good served"
    );
    let failures = s.errors("connect").await;
    assert!(
        (2..=15).contains(&failures),
        "{failures} connection failures: bounded by the backoff"
    );
    proxy.restore();
    s.wait_hosts(&["10.0.0.7"], "the write made meanwhile").await;
    s.wait_state((200, "ok"), "healthy again").await;
}

#[tokio::test]
async fn server_errors_are_counted_and_retried_with_backoff() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    consul.fail_with(Some(500));
    // The blocked query answers after its wait; then every query fails at once.
    wait_for(WAIT, "the 500s counted", || async {
        (s.errors("http_status").await >= 2).then_some(())
    })
    .await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = consul.reads_since(KEY, t).len();
    assert!((3..=15).contains(&n), "{n} queries in 1 s of 500s (backoff 50–200 ms)");
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    consul.fail_with(None);
    s.wait_state((200, "ok"), "healthy once Consul answers").await;
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "changes followed again").await;
}

#[tokio::test]
async fn an_index_reset_is_followed_not_waited_out() {
    let consul = ConsulDouble::start().await;
    for _ in 0..20 {
        consul.put("other/key", b"x");
    }
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    // The index goes back below what the source holds (22): without the reset rule the
    // source would block on 22 while the key changes at 4, 5, ...
    consul.reset_index(3);
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "a write after the index reset").await;
    assert!(
        consul.requests().iter().any(|r| r.query.contains("index=0")),
        "the source started over at 0"
    );
}

#[tokio::test]
async fn the_acl_token_is_sent_and_a_wrong_one_is_an_auth_error() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.require_token(Some("s3cret-token"));
    let dir = tempfile::tempdir().expect("tmp");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write");
    let ok = Server::start(&config(
        &consul.addr.to_string(),
        &format!(r#", token_file: "{}""#, token_file.display()),
    ))
    .await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment read with the token")
        .await;
    let reads = consul.reads_since(KEY, Instant::now() - Duration::from_secs(60));
    assert!(
        reads.iter().all(|r| r.token.as_deref() == Some("s3cret-token")),
        "{reads:?}"
    );

    let bad = Server::start(&config(&consul.addr.to_string(), ", token: wrong")).await;
    wait_for(WAIT, "the auth error", || async {
        (bad.errors("auth").await >= 1).then_some(())
    })
    .await;
    assert_eq!(
        bad.source_state().await,
        (503, "error".to_string()),
        "never read: not ready"
    );
}

#[tokio::test]
async fn a_slow_consul_is_waited_for() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.delay(Duration::from_millis(700));
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "a slow first answer").await;
    assert_eq!(s.errors("timeout").await, 0, "within the query timeout");
}

#[tokio::test]
async fn https_with_the_configured_ca() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let dir = tempfile::tempdir().expect("tmp");
    let pki = support::pki::Pki::create(dir.path());
    let front = support::pki::tls_front(&pki, consul.addr).await;
    let ok = Server::start(&config(
        &format!("https://{front}"),
        &format!(r#", ca_file: "{}""#, pki.ca.display()),
    ))
    .await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment over https")
        .await;
    consul.put(KEY, OTHER.as_bytes());
    ok.wait_hosts(&["10.0.0.7"], "a change over https").await;
    // Without the CA the certificate is not trusted: counted, never ready.
    let bad = Server::start(&config(&format!("https://{front}"), "")).await;
    wait_for(WAIT, "the TLS failure counted", || async {
        (bad.errors("connect").await >= 1).then_some(())
    })
    .await;
    assert_eq!(bad.source_state().await.0, 503);
}
