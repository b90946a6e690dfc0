//! Two replicas given the same input, and one real Envoy that moves from one to the other (as in
//! a rolling update): the versions are the same, so Envoy sees no update at all.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::proxy::Proxy;
use support::*;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};

/// Envoy's counters that move on any configuration change it applies.
const CHANGE_STATS: [&str; 8] = [
    "cluster_manager.cds.version",
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_modified",
    "cluster_manager.cluster_removed",
    "listener_manager.lds.version",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
];

async fn change_stats(envoy: &Envoy) -> Vec<(&'static str, Option<u64>)> {
    let mut v = Vec::new();
    for s in CHANGE_STATS {
        v.push((s, envoy.stat(s).await));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_moving_between_replicas_gets_no_update() {
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, rest, core_port, admin) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("assignment.json"), assignment(&["127.0.0.1"])).expect("write");
    let core: SocketAddr = format!("127.0.0.1:{core_port}").parse().expect("addr");
    let _core = fake_core("vcore-0", core);
    wait_listening(core).await;
    let yaml = config_yaml(dir.path(), grpc, rest, core_port, "");
    let a = start_server(&yaml).await;
    let b = start_server(&yaml).await;
    let proxy = Proxy::start(a.xds_addr).await;
    let bs = bootstrap(&BootstrapOptions {
        node_id: "replica-envoy".into(),
        node_cluster: "voltha".into(),
        xds: proxy.addr.to_string(),
        admin_port: admin,
        admin_address: "127.0.0.1".into(),
        delta: false,
        tls: None,
    })
    .expect("bootstrap");
    let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);
    let ch = lazy_channel(grpc);
    wait_for(Duration::from_secs(30), "a call through Envoy", || {
        let ch = ch.clone();
        async move { which_core(ch).await.ok().filter(|c| c == "vcore-0") }
    })
    .await;

    // Same input, same versions, on both replicas.
    let versions = |r: &voltha_xds::Running| {
        let s = r.cache.current().expect("snapshot");
        s.groups
            .values()
            .map(|g| (g.name.clone(), g.version()))
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&a), versions(&b));
    // Envoy has ACKed everything from A.
    let acked = |admin: SocketAddr| async move {
        let (_, v) = get_json(&format!("http://{admin}/debug/clients")).await;
        let c = v["clients"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["node_id"] == "replica-envoy").cloned())?;
        let types = ["cds", "eds", "lds", "rds"];
        types
            .iter()
            .all(|t| !c["types"][t]["last_acked_version"].is_null())
            .then(|| types.map(|t| c["types"][t]["last_acked_version"].clone()))
    };
    let from_a = wait_for(Duration::from_secs(10), "Envoy to ACK every type from A", || {
        acked(a.admin_debug_addr)
    })
    .await;
    let before = change_stats(&envoy).await;
    let cx_before = envoy.stat("cluster.voltha_xds.upstream_cx_total").await;

    // A goes away (rolling update); Envoy reconnects through the same address and lands on B.
    proxy.retarget(b.xds_addr);
    a.stop(Duration::from_secs(5)).await;
    let from_b = wait_for(Duration::from_secs(30), "Envoy to reconnect to B and ACK", || {
        acked(b.admin_debug_addr)
    })
    .await;
    assert_eq!(from_a, from_b, "B's versions differ from A's");
    // B resumed the stream at the versions Envoy holds: it sent nothing.
    let (_, v) = get_json(&format!("http://{}/debug/clients", b.admin_debug_addr)).await;
    for t in ["cds", "eds", "lds", "rds"] {
        assert_eq!(v["clients"][0]["types"][t]["responses"], 0, "B sent {t}: {v}");
    }
    assert!(
        envoy.stat("cluster.voltha_xds.upstream_cx_total").await > cx_before,
        "Envoy never reconnected"
    );
    assert_eq!(envoy.stat("control_plane.connected_state").await, Some(1));
    // Envoy applied nothing: no cluster or listener added, modified or removed, same versions.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(change_stats(&envoy).await, before);
    assert_eq!(which_core(ch.clone()).await.ok().as_deref(), Some("vcore-0"));
    b.stop(Duration::from_secs(5)).await;
}
