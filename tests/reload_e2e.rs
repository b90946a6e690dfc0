//! Configuration reload end to end with a real Envoy (see `envoy_e2e.rs`): a route and a
//! cluster added to the `--config` file are served by the same Envoy process over the same xDS
//! connection and the same downstream connection; a bad save in between changes nothing.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tonic::transport::Channel;
use voltha_xds::bootstrap::{bootstrap, BootstrapOptions};
use voltha_xds::config::Config;

const WAIT: Duration = Duration::from_secs(30);

/// The route added by the reload: health checks go to a cluster of their own (vcore-1).
const NEW_ROUTE: &str =
    "      - { prefix: /voltha.HealthService/GetHealthStatus, cluster: health-canary, timeout: none }\n";

async fn a_route_added_by_reload_is_served_on_the_same_connections(delta: bool) {
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc, rest, core_port, admin) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("assignment.json"), assignment(&["127.0.0.1"])).expect("write");
    let _cores: Vec<Proc> = [("vcore-0", "127.0.0.1"), ("vcore-1", "127.0.0.2")]
        .iter()
        .map(|(id, ip)| fake_core(id, format!("{ip}:{core_port}").parse().expect("addr")))
        .collect();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        wait_listening(format!("{ip}:{core_port}").parse::<SocketAddr>().expect("addr")).await;
    }
    let before = config_yaml(dir.path(), grpc, rest, core_port, "")
        .replace("server:\n", "server:\n  config_reload_interval: 100ms\n");
    let after = before
        .replacen("    routes: &voltha_routes\n", &format!("    routes: &voltha_routes\n{NEW_ROUTE}"), 1)
        .replacen(
            "clusters:\n",
            &format!(
                "clusters:\n  - {{ name: health-canary, protocol: http2, endpoints: {{ static: [\"127.0.0.2:{core_port}\"] }} }}\n"
            ),
            1,
        );
    assert_ne!(before, after);
    let path = dir.path().join("voltha-xds.yaml");
    std::fs::write(&path, &before).expect("write");
    let server = voltha_xds::start(
        Config::load(&path).unwrap_or_else(|e| panic!("{e}")),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("server starts");
    let triggers = voltha_xds::reload::trigger::spawn(
        server.reload.clone(),
        Some((path.clone(), std::fs::read(&path).expect("read"))),
        voltha_xds::reload::trigger::Hangup::install(),
        server.shutdown.clone(),
    )
    .await;
    let bs = bootstrap(&BootstrapOptions {
        tls: None,
        node_id: format!("reload-{}", if delta { "delta" } else { "sotw" }),
        node_cluster: "voltha".into(),
        xds: server.xds_addr.to_string(),
        admin_port: admin,
        admin_address: "127.0.0.1".into(),
        delta,
    })
    .expect("bootstrap");
    let envoy = Envoy::start(dir.path(), "envoy", &bs, admin);
    let held = Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let serving = |want: &'static str| {
        let (held, log) = (held.clone(), envoy.log.clone());
        async move {
            let got = tokio::time::timeout(WAIT, async {
                loop {
                    if which_core(held.clone()).await.is_ok_and(|c| c == want) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if got.is_err() {
                panic!(
                    "no call reached {want}; envoy log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    };
    serving("vcore-0").await;
    let pid = envoy.pid();
    let stat = |name: &'static str| {
        let e = &envoy;
        async move { e.stat(name).await.unwrap_or_else(|| panic!("no stat {name}")) }
    };
    let xds_cx = stat("cluster.voltha_xds.upstream_cx_total").await;
    let downstream_cx = stat("http.ingress_http2.downstream_cx_total").await;
    let lds_updates = stat("listener_manager.lds.update_success").await;
    assert_eq!(stat("control_plane.connected_state").await, 1);

    // A bad save (written in place: a check may also see it half written): kept out, nothing
    // reaches Envoy.
    std::fs::write(&path, "default_group: [unclosed\n").expect("write");
    wait_for(Duration::from_secs(10), "the bad save to be reported", || async {
        (server.metrics.config_reload_count("invalid") >= 1).then_some(())
    })
    .await;
    serving("vcore-0").await;

    // The good save: the new route and cluster are served.
    std::fs::write(&path, &after).expect("write");
    serving("vcore-1").await;
    assert_eq!(server.metrics.config_reload_count("ok"), 1);
    // Other calls still take the old routes to the assignment's core.
    let mut c = voltha_xds::proto::voltha::voltha_global_service_client::VolthaGlobalServiceClient::new(held.clone());
    let r = c.list_devices(()).await.expect("a call on an old route");
    assert_eq!(
        r.metadata().get("x-voltha-core").and_then(|v| v.to_str().ok()),
        Some("vcore-0")
    );

    // The same Envoy, never hot-restarted, on the same xDS connection, which stayed up; the
    // downstream HTTP/2 connection opened before the reload carried every call after it; and
    // the listeners were not replaced (only routes and clusters changed).
    assert_eq!(envoy.pid(), pid);
    assert_eq!(stat("server.hot_restart_epoch").await, 0);
    assert_eq!(stat("control_plane.connected_state").await, 1);
    assert_eq!(stat("cluster.voltha_xds.upstream_cx_total").await, xds_cx);
    assert_eq!(stat("http.ingress_http2.downstream_cx_total").await, downstream_cx);
    assert_eq!(stat("listener_manager.lds.update_success").await, lds_updates);
    assert_eq!(server.clients.len(), 1, "one stream, never replaced");
    server.stop(Duration::from_secs(5)).await;
    for t in triggers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_a_route_added_by_reload_is_served_without_restart_or_reconnect() {
    a_route_added_by_reload_is_served_on_the_same_connections(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_a_route_added_by_reload_is_served_without_restart_or_reconnect() {
    a_route_added_by_reload_is_served_on_the_same_connections(true).await;
}
