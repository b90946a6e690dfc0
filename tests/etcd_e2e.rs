//! End to end from etcd to a real Envoy: the shipped `config/voltha-etcd.yaml` (moved to
//! loopback ports), a real etcd, fake cores, and Envoy bootstrapped by `voltha-xds bootstrap`.
//! Each new assignment written to etcd must reach gRPC calls through Envoy on the same Envoy
//! process and the same downstream HTTP/2 connection.
//!
//! It also measures, over 20 changes, the time from the etcd write to the first call served by
//! a core of the new assignment, and prints it:
//! `cargo test --release --test etcd_e2e -- --nocapture`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::*;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};

const KEY: &str = "service/voltha/data/core/assignment";
const CORES: [(&str, &str); 2] = [("vcore-a", "127.0.0.1"), ("vcore-b", "127.0.0.2")];
const CHANGES: usize = 20;

fn assignment(id: &str, host: &str) -> String {
    format!(r#"{{"0001": {{"id": "{id}", "host": "{host}"}}, "0002": null}}"#)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_written_to_etcd_reach_calls_through_envoy_without_a_restart() {
    let etcd = Etcd::start().await;
    let (grpc, rest, core_port, admin) = (free_port(), free_port(), free_port(), free_port());
    let mut cores = Vec::new();
    for (id, ip) in CORES {
        let addr: SocketAddr = format!("{ip}:{core_port}").parse().expect("addr");
        cores.push(fake_core(id, addr));
        wait_listening(addr).await;
    }
    etcd.put(KEY, &assignment(CORES[0].0, CORES[0].1));
    let yaml = include_str!("../config/voltha-etcd.yaml")
        .replace("0.0.0.0:50555", &format!("127.0.0.1:{grpc}"))
        .replace("0.0.0.0:8882", &format!("127.0.0.1:{rest}"))
        .replace("0.0.0.0:3000", &format!("127.0.0.1:{}", free_port()))
        .replace("port: 50556", &format!("port: {core_port}"))
        .replace(
            "    type: etcd\n",
            &format!("    type: etcd\n    endpoints: [\"{}\"]\n", etcd.client),
        );
    let server = start_server(&yaml).await;
    let bs = bootstrap(&BootstrapOptions {
        node_id: "etcd-e2e".into(),
        node_cluster: "voltha".into(),
        xds: server.xds_addr.to_string(),
        admin_port: admin,
        admin_address: "127.0.0.1".into(),
        delta: false,
        tls: None,
    })
    .expect("bootstrap");
    let dir = tempfile::tempdir().expect("tmp");
    let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);

    // One HTTP/2 connection to Envoy for the whole test.
    let ch = lazy_channel(grpc);
    let first = wait_for(Duration::from_secs(30), "a first call through Envoy", || {
        let ch = ch.clone();
        async move { which_core(ch).await.ok().filter(|c| c == CORES[0].0) }
    })
    .await;
    assert_eq!(first, CORES[0].0);
    let pid = envoy.pid();
    let cx = envoy.stat("http.ingress_http2.downstream_cx_total").await;
    assert_eq!(cx, Some(1));

    let mut after_write = Vec::new();
    let mut after_start = Vec::new();
    for i in 0..CHANGES {
        let (id, host) = CORES[(i + 1) % 2];
        let started = Instant::now();
        etcd.put(KEY, &assignment(id, host));
        let written = Instant::now();
        let deadline = written + Duration::from_secs(2);
        loop {
            if which_core(ch.clone()).await.ok().as_deref() == Some(id) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "change {i}: calls did not reach {id} within 2 s of the write"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        after_write.push(written.elapsed());
        after_start.push(started.elapsed());
    }
    assert_eq!(envoy.pid(), pid, "same Envoy process");
    assert_eq!(envoy.stat("server.hot_restart_epoch").await, Some(0));
    assert_eq!(
        envoy.stat("http.ingress_http2.downstream_cx_total").await,
        Some(1),
        "the HTTP/2 connection opened before the changes carried every call"
    );
    after_write.sort();
    after_start.sort();
    eprintln!(
        "etcd write acknowledged -> first call on a new core, {CHANGES} changes: p50 {:.1} ms, max {:.1} ms \
         (from before the etcdctl write: p50 {:.1} ms, max {:.1} ms)",
        percentile(&after_write, 0.5).as_secs_f64() * 1e3,
        percentile(&after_write, 1.0).as_secs_f64() * 1e3,
        percentile(&after_start, 0.5).as_secs_f64() * 1e3,
        percentile(&after_start, 1.0).as_secs_f64() * 1e3,
    );
    drop(cores);
}
