//! The etcd source against a real etcd on loopback (Debian's `etcd-server`, installed by
//! scripts/test.sh): every scenario asserts the endpoints voltha-xds serves.

mod support;

use std::time::Duration;

use support::etcd::Etcd;
use support::proxy::Proxy;
use support::*;

const KEY: &str = "service/voltha/data/core/assignment";
const WAIT: Duration = KV_WAIT;

const TWO: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const WITH_NULL: &str = r#"{"0001": null, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
const OTHER: &str = r#"{"0001": {"id": "c", "host": "10.0.0.7"}}"#;

fn config(endpoint: &str, extra: &str) -> String {
    kv_config(&format!(
        r#"type: etcd, endpoints: ["{endpoint}"], dial_timeout: 1s, backoff: {{ initial: 50ms, max: 200ms }} {extra}"#
    ))
}

#[tokio::test]
async fn absent_key_then_written_changed_null_slot_malformed_and_deleted() {
    let etcd = Etcd::start().await;
    let s = Server::start(&config(&etcd.client.to_string(), "")).await;
    // Absent before any value: not ready, and no snapshot (no cluster served empty).
    wait_for(WAIT, "the absent key reported", || async {
        (s.errors("absent").await == 1).then_some(())
    })
    .await;
    assert_eq!(s.source_state().await, (503, "error".to_string()));
    assert_eq!(s.hosts().await, None);
    etcd.put(KEY, TWO);
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the written assignment").await;
    etcd.put(KEY, WITH_NULL);
    s.wait_hosts(&["10.0.0.2"], "the null slot skipped").await;
    // Malformed: counted, last good kept; then fixed.
    etcd.put(KEY, r#"{"0001": {"host": "#);
    wait_for(WAIT, "the malformed value counted", || async {
        (s.errors("malformed_json").await >= 1).then_some(())
    })
    .await;
    assert_eq!(s.hosts().await, Some(vec!["10.0.0.2".to_string()]));
    assert_eq!(s.source_state().await.1, "error");
    etcd.put(KEY, OTHER);
    s.wait_hosts(&["10.0.0.7"], "the fixed value").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
    // `{}`, well-formed: no cores.
    etcd.put(KEY, "{}");
    s.wait_hosts(&[], "an empty assignment").await;
    etcd.put(KEY, TWO);
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "cores again").await;
    // Deleted: the last good state stays, and the deletion is reported.
    etcd.del(KEY);
    wait_for(WAIT, "the deletion reported", || async {
        (s.errors("deleted").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
}

#[tokio::test]
async fn etcd_out_of_reach_keeps_the_last_good_state_and_replays_missed_writes() {
    let etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let proxy = Proxy::start(etcd.client).await;
    let s = Server::start(&config(&proxy.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    proxy.cut();
    // Two writes while voltha-xds cannot reach etcd: both are replayed, in order.
    etcd.put(KEY, WITH_NULL);
    etcd.put(KEY, OTHER);
    wait_for(WAIT, "the failures counted", || async {
        (s.source_state().await.1 == "error").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]),
        "last good served"
    );
    assert_eq!(
        s.source_state().await.0,
        200,
        "still ready: the last good state is served"
    );
    // Bounded retries: with backoff up to 200 ms, half a second is a handful of attempts.
    let failures = s.errors("connect").await + s.errors("grpc").await + s.errors("watch").await;
    assert!((1..=20).contains(&failures), "{failures} failures in about 0.5 s");
    proxy.restore();
    s.wait_hosts(&["10.0.0.7"], "the writes made meanwhile").await;
    assert_eq!(s.source_state().await, (200, "ok".to_string()));
}

/// Every session reads the key before it watches, so history compacted while etcd was out of
/// reach costs nothing: the value is read, and the watch starts after the read's revision (a
/// watch cancelled for compaction would read again, kind `compacted`).
#[tokio::test]
async fn a_compaction_while_out_of_reach_does_not_stop_the_value_being_read() {
    let etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let proxy = Proxy::start(etcd.client).await;
    let s = Server::start(&config(&proxy.addr.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    proxy.cut();
    etcd.put(KEY, WITH_NULL);
    etcd.put(KEY, OTHER);
    etcd.put("unrelated", "x");
    etcd.compact();
    proxy.restore();
    s.wait_hosts(&["10.0.0.7"], "the value read after the compaction").await;
    s.wait_state((200, "ok"), "the source healthy").await;
    assert_eq!(s.errors("compacted").await, 0, "the watch starts after the read");
    etcd.put(KEY, TWO);
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "a write after the compaction")
        .await;
}

#[tokio::test]
async fn etcd_restarted_on_the_same_data_is_followed_without_a_restart_of_ours() {
    let mut etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let s = Server::start(&config(&etcd.client.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    etcd.stop();
    wait_for(WAIT, "the outage noticed", || async {
        (s.source_state().await.1 == "error").then_some(())
    })
    .await;
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    etcd.resume().await;
    // Healthy again once the watch is back, before any new write.
    wait_for(WAIT, "the source healthy again", || async {
        (s.source_state().await == (200, "ok".to_string())).then_some(())
    })
    .await;
    etcd.put(KEY, OTHER);
    s.wait_hosts(&["10.0.0.7"], "a write after etcd came back").await;
}

#[tokio::test]
async fn user_and_password_are_used_and_a_wrong_password_is_an_auth_error() {
    let mut etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    etcd.enable_auth("voltha", "s3cret", KEY);
    let dir = tempfile::tempdir().expect("tmp");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").expect("write");
    let ok = Server::start(&config(
        &etcd.client.to_string(),
        &format!(r#", username: voltha, password_file: "{}""#, pw.display()),
    ))
    .await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment read as voltha")
        .await;
    etcd.put(KEY, OTHER);
    ok.wait_hosts(&["10.0.0.7"], "a change seen through an authenticated watch")
        .await;

    let bad = Server::start(&config(&etcd.client.to_string(), ", username: voltha, password: wrong")).await;
    wait_for(WAIT, "the auth error", || async {
        (bad.errors("auth").await >= 1).then_some(())
    })
    .await;
    let (code, _) = get_json(&bad.url("/readyz")).await;
    assert_eq!(code, 503, "never read: not ready");
    assert_eq!(bad.hosts().await, None, "no snapshot without a first read");
}

#[tokio::test]
async fn mutual_tls_with_the_configured_ca_and_client_certificate() {
    let etcd = Etcd::start_tls().await;
    etcd.put(KEY, TWO);
    let Some(pki) = &etcd.tls else { panic!("tls etcd") };
    let ok = Server::start(&config(
        &etcd.client.to_string(),
        &format!(
            r#", ca_file: "{}", cert_file: "{}", key_file: "{}""#,
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    ))
    .await;
    ok.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the assignment over mutual TLS")
        .await;
    etcd.put(KEY, OTHER);
    ok.wait_hosts(&["10.0.0.7"], "a change over the TLS watch").await;
    // Without a client certificate etcd refuses the connection: never ready, counted.
    let bad = Server::start(&config(
        &etcd.client.to_string(),
        &format!(r#", ca_file: "{}""#, pki.ca.display()),
    ))
    .await;
    wait_for(WAIT, "the refused connection counted", || async {
        let n = bad.errors("connect").await + bad.errors("grpc").await + bad.errors("tls").await;
        (n >= 1).then_some(())
    })
    .await;
    assert_eq!(get_json(&bad.url("/readyz")).await.0, 503);
}

/// etcd killed and started again empty on the same address: its revisions start again from 1.
/// The source must read the key again instead of waiting, silently, for the new store to
/// reach the revision it had seen.
async fn recreated(new_cluster: bool, kind: &str) {
    let mut etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let s = Server::start(&config(&etcd.client.to_string(), "")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    // The source sees the store's revision through the key's events: write the key itself.
    for i in 0..30 {
        etcd.put(KEY, if i % 2 == 0 { OTHER } else { TWO });
    }
    etcd.put(KEY, WITH_NULL);
    s.wait_hosts(&["10.0.0.2"], "the last write before etcd is re-created")
        .await;
    assert!(etcd.revision() > 30);
    etcd.recreate(new_cluster).await;
    assert!(etcd.revision() < 5, "a fresh store");
    etcd.put(KEY, OTHER);
    wait_for(
        Duration::from_secs(5),
        "the value written to the new etcd applied",
        || async { (s.hosts().await == Some(vec!["10.0.0.7".to_string()])).then_some(()) },
    )
    .await;
    s.wait_state((200, "ok"), "the source healthy").await;
    assert_eq!(s.errors(kind).await, 1, "{kind} counted once");
}

#[tokio::test]
async fn etcd_recreated_empty_on_the_same_address_is_read_again() {
    recreated(false, "revision_reset").await;
}

#[tokio::test]
async fn etcd_replaced_by_another_cluster_on_the_same_address_is_read_again() {
    recreated(true, "cluster_changed").await;
}

/// A value over `max_value_bytes`: refused (kind `too_large`), the last good state served.
/// Just over the cap it is decoded and checked; far over it, the gRPC client refuses the
/// message. etcd's own limit is 1.5 MiB a request, hence the small cap.
#[tokio::test]
async fn a_value_over_max_value_bytes_is_refused_and_the_last_good_state_kept() {
    let etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let s = Server::start(&config(&etcd.client.to_string(), ", max_value_bytes: 1024")).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    // Valid JSON, 2 KiB: only its size is wrong.
    let padded = format!("{OTHER}{}", " ".repeat(2048));
    etcd.put(KEY, &padded);
    wait_for(WAIT, "the value too large counted", || async {
        (s.errors("too_large").await == 1).then_some(())
    })
    .await;
    assert_eq!(s.source_state().await, (200, "error".to_string()));
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    // 300 KiB: over the cap plus the clients' headroom.
    let huge = format!("{OTHER}{}", " ".repeat(300 * 1024));
    etcd.put_stdin(KEY, huge.as_bytes());
    wait_for(WAIT, "the oversized message refused", || async {
        (s.errors("too_large").await >= 2).then_some(())
    })
    .await;
    assert_eq!(s.source_state().await, (200, "error".to_string()));
    assert_eq!(
        s.hosts().await,
        Some(vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()])
    );
    // A value within the cap is applied again.
    etcd.put(KEY, OTHER);
    s.wait_hosts(&["10.0.0.7"], "the next good value").await;
    s.wait_state((200, "ok"), "the source healthy").await;
}

/// A recovery is followed within about one probe interval, whatever the backoff's wait: with
/// a backoff of 10 s (a wait of 5 to 10 s after the outage is seen), a value written as etcd
/// comes back is served within 2.5 s.
#[tokio::test]
async fn a_recovery_is_followed_within_2s_whatever_the_backoff() {
    let mut etcd = Etcd::start().await;
    etcd.put(KEY, TWO);
    let yaml = kv_config(&format!(
        r#"type: etcd, endpoints: ["{}"], dial_timeout: 1s, backoff: {{ initial: 10s, max: 10s }}, probe_interval: 200ms"#,
        etcd.client
    ));
    let s = Server::start(&yaml).await;
    s.wait_hosts(&["10.0.0.1", "10.0.0.2"], "the initial assignment").await;
    etcd.stop();
    wait_for(WAIT, "the outage noticed", || async {
        (s.source_state().await.1 == "error").then_some(())
    })
    .await;
    // Probes find etcd down meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.resume().await;
    let back = std::time::Instant::now();
    etcd.put(KEY, OTHER);
    s.wait_hosts(&["10.0.0.7"], "the value written at the recovery").await;
    assert!(
        back.elapsed() < Duration::from_millis(2500),
        "applied {:?} after etcd came back",
        back.elapsed()
    );
}

/// `render` reads each source once; an absent key is an error there, as serve would not be
/// ready on it (not an empty assignment).
#[tokio::test]
async fn render_refuses_an_absent_key() {
    let etcd = Etcd::start().await;
    let config = voltha_xds::config::Config::from_yaml(&config(&etcd.client.to_string(), "")).expect("config");
    let e = voltha_xds::sources::read_once(&config)
        .await
        .expect_err("an absent key");
    assert!(e.contains("does not exist"), "{e}");
    etcd.put(KEY, TWO);
    let m = voltha_xds::sources::read_once(&config).await.expect("a good value");
    assert_eq!(m.sources.len(), 1);
}
