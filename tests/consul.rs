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
    // Absent before any value: not ready, and no snapshot (no cluster served empty).
    wait_for(WAIT, "the absent key reported", || async {
        (s.errors("absent").await == 1).then_some(())
    })
    .await;
    assert_eq!(s.source_state().await, (503, "error".to_string()));
    assert_eq!(s.hosts().await, None, "no snapshot while not ready");
    // An absent key blocks like any other: a handful of queries per wait, not a busy loop.
    // Three queries after `t`: the second and third each wait for the previous one's `wait`.
    let t = Instant::now();
    wait_for(WAIT, "three blocking queries on the absent key", || async {
        (consul.reads_since(KEY, t).len() >= 3).then_some(())
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "three queries in {:?} with wait=1s: not blocking",
        t.elapsed()
    );
    assert!(consul
        .reads_since(KEY, t)
        .iter()
        .all(|r| r.query.contains("index=") && r.query.contains("consistent")));

    assert_eq!(s.errors("absent").await, 1, "reported once, not on every query");
    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the written assignment").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
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
    // `{}`, well-formed: no cores.
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
    // Two more queries see the key still absent: no second report.
    let t = Instant::now();
    wait_for(WAIT, "two more queries on the deleted key", || async {
        (consul.reads_since(KEY, t).len() >= 2).then_some(())
    })
    .await;
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
    // Three queries after `t`: the second and third each wait for the previous one's `wait`.
    let t = Instant::now();
    let reads = wait_for(WAIT, "three blocking queries on the idle key", || async {
        let r = consul.reads_since(KEY, t);
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "three queries in {:?} with wait=1s: not blocking",
        t.elapsed()
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
    // Three more failures, paced by the backoff (50 ms, then 200 ms ceilings, each waited at
    // least half): at least 150 ms, and no burst of retries while they come.
    let t = Instant::now();
    let before = s.errors("connect").await;
    let failures = wait_for(WAIT, "three more connection failures", || async {
        let n = s.errors("connect").await;
        (n >= before + 3).then_some(n)
    })
    .await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "three retries in {took:?}: not paced by the backoff"
    );
    assert!(failures <= 15, "{failures} connection failures: bounded by the backoff");
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]),
        "last good served"
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
    // Three more queries: after two failures, each retry waits 100–200 ms (the backoff's
    // ceiling is 200 ms from the third failure on), so the third comes at least 200 ms after
    // the first; and no burst of queries while they come.
    let t = Instant::now();
    let reads = wait_for(WAIT, "three queries answered 500", || async {
        let r = consul.reads_since(KEY, t);
        (r.len() >= 3).then_some(r)
    })
    .await;
    let spread = reads[2].at - reads[0].at;
    assert!(
        spread >= Duration::from_millis(200),
        "three queries within {spread:?} of 500s: not paced by the backoff (50–200 ms)"
    );
    assert!(reads.len() <= 15, "{} queries: a burst", reads.len());
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
    wait_for(WAIT, "the TLS failure counted as tls", || async {
        (bad.errors("tls").await >= 1).then_some(())
    })
    .await;
    assert_eq!(bad.source_state().await.0, 503);
}

/// The values that must never empty the cluster, with the kind each is counted as. An empty
/// value is stored as such (the KV answer's `Value` is `null`).
const BAD: [(&str, &str); 6] = [
    ("{not json", "malformed_json"),
    ("", "empty"),
    ("   ", "empty"),
    ("null", "wrong_shape"),
    ("{", "malformed_json"),
    (r#"{"0001": 5}"#, "wrong_shape"),
];

#[tokio::test]
async fn short_or_malformed_values_keep_the_last_good_state() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    for (v, kind) in BAD {
        let before = s.errors(kind).await;
        consul.put(KEY, v.as_bytes());
        wait_for(WAIT, &format!("{v:?} counted as {kind}"), || async {
            (s.errors(kind).await == before + 1).then_some(())
        })
        .await;
        assert_eq!(
            s.hosts().await,
            Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]),
            "{v:?} must not remove the cores"
        );
        assert_eq!(s.source_state().await, (200, "error".to_string()), "{v:?}");
        let (_, status) = get_json(&s.url("/debug/status")).await;
        assert_eq!(status["sources"][0]["state"], "error", "{v:?}: {status}");
        consul.put(KEY, OTHER.as_bytes());
        s.wait_hosts(&["10.0.0.7"], "a good value after the bad one").await;
        s.wait_state((200, "ok"), "healthy again").await;
        consul.put(KEY, TWO.as_bytes());
        s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment again").await;
    }
    // Only a well-formed value empties it.
    consul.put(KEY, br#"{"0001": null, "0002": null}"#);
    s.wait_hosts(&[], "all slots null").await;
}

#[tokio::test]
async fn a_malformed_value_at_start_is_not_ready() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, b"{");
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    wait_for(WAIT, "the malformed value counted", || async {
        (s.errors("malformed_json").await == 1).then_some(())
    })
    .await;
    assert_eq!(s.source_state().await, (503, "error".to_string()));
    assert_eq!(s.hosts().await, None, "no snapshot, no empty cluster");
    consul.put(KEY, TWO.as_bytes());
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the first good value").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
}

#[tokio::test]
async fn a_recovery_is_followed_within_2s_whatever_the_backoff_has_grown_to() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let proxy = Proxy::start(consul.addr).await;
    // Backoff ceilings 1, 2, 4, 6 s: from the 4th failed query on, the wait before the next
    // one is 3 to 6 s (jitter in the upper half), longer than the 2 s allowed.
    let s = Server::start(&kv_config(&format!(
        r#"type: consul, address: "{}", wait: 1s, min_interval: 50ms, backoff: {{ initial: 1s, max: 6s }}"#,
        proxy.addr
    )))
    .await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    let cut = Instant::now();
    proxy.cut();
    wait_for(Duration::from_secs(20), "four failed queries", || async {
        (s.errors("connect").await >= 4).then_some(())
    })
    .await;
    let outage = cut.elapsed();
    // Consul is back, with a value written at its recovery.
    consul.put(KEY, OTHER.as_bytes());
    proxy.restore();
    let back = Instant::now();
    s.wait_hosts(&["10.0.0.7"], "the value written at recovery").await;
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "applied {took:?} after Consul answered again"
    );
    assert_eq!(s.errors("connect").await, 4, "no failed query after the recovery");
    // The probes were cheap and paced: about one per probe_interval (500 ms) of the outage.
    let probes = consul.probes_since(cut).len();
    let bound = (outage + took).as_millis() / 500 + 2;
    assert!((1..=bound as usize).contains(&probes), "{probes} probes in {outage:?}");
    s.wait_state((200, "ok"), "healthy again").await;
}

#[tokio::test]
async fn a_zero_index_blocks_on_1_instead_of_polling() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.zero_index(true);
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment").await;
    let t = Instant::now();
    // Three queries that started after t, each held for its wait (1 s).
    wait_for(Duration::from_secs(10), "three queries at index 1", || async {
        (consul.reads_since(KEY, t).len() >= 3).then_some(())
    })
    .await;
    let took = t.elapsed();
    let reads = consul.reads_since(KEY, t);
    assert!(
        reads.iter().all(|r| r.query.starts_with("index=1&")),
        "every query blocks at index 1: {reads:?}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "3 queries in {took:?}: they did not block"
    );
    // Still followed: a write is seen at the latest when the wait ends.
    consul.put(KEY, OTHER.as_bytes());
    s.wait_hosts(&["10.0.0.7"], "a write under the zero index").await;
}

#[tokio::test]
async fn a_body_that_stalls_is_a_timeout() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    consul.stall_body(Some(Duration::from_secs(30)));
    // wait 1s: each query times out after 1s + 1s/16 + 5s.
    let s = Server::start(&config(&consul.addr.to_string(), "")).await;
    wait_for(WAIT, "the stalled body counted as a timeout", || async {
        (s.errors("timeout").await >= 1).then_some(())
    })
    .await;
    assert_eq!(s.errors("connect").await, 0, "a stall is not a connection failure");
    assert_eq!(s.source_state().await, (503, "error".to_string()));
    consul.stall_body(None);
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the answer once it no longer stalls")
        .await;
}

#[tokio::test]
async fn an_oversized_value_is_too_large_and_the_last_good_state_stays() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&config(&consul.addr.to_string(), ", max_value_bytes: 65536")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    // A well-formed value, padded over the limit: refused for its size alone. The double
    // sends it chunked (no Content-Length), so the limit holds while it streams in.
    let big = format!("{OTHER}{}", " ".repeat(300 << 10));
    consul.put(KEY, big.as_bytes());
    wait_for(WAIT, "the value counted as too large", || async {
        (s.errors("too_large").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    assert_eq!(s.source_state().await, (200, "error".to_string()));
    // Just under the limit: accepted.
    let fits = format!("{WITH_NULL}{}", " ".repeat(65536 - WITH_NULL.len()));
    consul.put(KEY, fits.as_bytes());
    s.wait_hosts(&["10.0.0.2"], "a value at the limit").await;
    assert_eq!(s.errors("too_large").await, 1);
}

#[tokio::test]
async fn a_leaderless_consul_is_probed_and_followed_once_it_has_a_leader() {
    let consul = ConsulDouble::start().await;
    consul.put(KEY, TWO.as_bytes());
    let s = Server::start(&kv_config(&format!(
        r#"type: consul, address: "{}", wait: 1s, min_interval: 50ms, backoff: {{ initial: 1s, max: 6s }}"#,
        consul.addr
    )))
    .await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    // An election: KV reads answer 500 "No cluster leader", the probe answers "".
    consul.set_leader("");
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "four failed queries", || async {
        (s.errors("http_status").await >= 4).then_some(())
    })
    .await;
    // The queries kept the backoff's pace; the probes, not counted, went on in between.
    assert!(
        consul.reads_since(KEY, t).len() <= 5,
        "{:?}",
        consul.reads_since(KEY, t)
    );
    assert!(!consul.probes_since(t).is_empty());
    consul.put(KEY, OTHER.as_bytes());
    consul.set_leader("127.0.0.1:8300");
    let back = Instant::now();
    s.wait_hosts(&["10.0.0.7"], "the value once a leader is elected").await;
    let took = back.elapsed();
    assert!(took < Duration::from_secs(2), "applied {took:?} after the election");
}
