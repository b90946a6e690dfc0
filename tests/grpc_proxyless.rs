//! Proxyless gRPC end to end: a real gRPC xDS client (Python grpcio's built-in xDS resolver,
//! `pip install grpcio` into `.venv/` by `scripts/test.sh`, or `PYTHON_BIN`) bootstrapped by
//! `voltha-xds bootstrap --grpc`, dialing `xds:///voltha-grpc` with no Envoy in between, against
//! the shipped configurations and fake cores on loopback. Each fake core answers with its own
//! id (`x-voltha-core`), so every assertion names the core that served the call.

#[path = "support/grpc_client.rs"]
mod grpc_client;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use grpc_client::GrpcClient;
use serde_json::Value;
use support::kube_api::{core_pod, KubeApi};
use support::*;
use voltha_xds::bootstrap::{bootstrap, grpc_bootstrap, BootstrapOptions};

const TARGET: &str = "xds:///voltha-grpc";
const HEALTH: &str = "/voltha.HealthService/GetHealthStatus";

fn options(node_id: &str, xds: SocketAddr) -> BootstrapOptions {
    BootstrapOptions {
        node_id: node_id.into(),
        node_cluster: "voltha".into(),
        xds: xds.to_string(),
        admin_port: 0,
        admin_address: "127.0.0.1".into(),
        delta: false,
        tls: None,
    }
}

/// The stream of node `node_id` in `/debug/clients`.
async fn client_of(server: &voltha_xds::Running, node_id: &str) -> Option<Value> {
    let (_, v) = get_json(&format!("http://{}/debug/clients", server.admin_debug_addr)).await;
    v["clients"]
        .as_array()?
        .iter()
        .find(|c| c["node_id"] == node_id)
        .cloned()
}

/// The embedded default profile with a temporary assignment file and three fake cores.
struct DefaultProfile {
    dir: tempfile::TempDir,
    server: voltha_xds::Running,
    _cores: Vec<Proc>,
    grpc_port: u16,
    yaml: String,
}

const CORES: [(&str, &str); 3] = [
    ("vcore-0", "127.0.0.1"),
    ("vcore-1", "127.0.0.2"),
    ("vcore-2", "127.0.0.3"),
];

impl DefaultProfile {
    async fn start(hosts: &[&str]) -> DefaultProfile {
        let dir = tempfile::tempdir().expect("tmp");
        let (grpc_port, rest, core_port) = (free_port(), free_port(), free_port());
        std::fs::write(dir.path().join("assignment.json"), assignment(hosts)).expect("write");
        let mut cores = Vec::new();
        for (id, ip) in CORES {
            cores.push(fake_core(id, format!("{ip}:{core_port}").parse().expect("addr")));
        }
        for (_, ip) in CORES {
            wait_listening(format!("{ip}:{core_port}").parse().expect("addr")).await;
        }
        let yaml = config_yaml(dir.path(), grpc_port, rest, core_port, "");
        let server = start_server(&yaml).await;
        DefaultProfile {
            dir,
            server,
            _cores: cores,
            grpc_port,
            yaml,
        }
    }

    fn write_assignment(&self, hosts: &[&str]) {
        let tmp = self.dir.path().join("assignment.tmp");
        std::fs::write(&tmp, assignment(hosts)).expect("write");
        std::fs::rename(&tmp, self.dir.path().join("assignment.json")).expect("rename");
    }

    fn client(&self, node_id: &str) -> GrpcClient {
        let bs = grpc_bootstrap(&options(node_id, self.server.xds_addr)).expect("bootstrap --grpc");
        GrpcClient::start(self.dir.path(), node_id, &bs, TARGET)
    }
}

/// The contract: a client bootstrapped with `--node-cluster voltha` reaches the assignment's
/// cores through `xds:///voltha-grpc`; an assignment change moves its calls within a second on
/// the same channel and the same xDS stream; an Envoy of the same node cluster keeps its own
/// group and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_reaches_the_cores_and_follows_an_assignment_change_on_one_channel() {
    let d = DefaultProfile::start(&["127.0.0.1"]).await;
    let envoy_admin = free_port();
    let envoy = Envoy::start(
        d.dir.path(),
        "envoy",
        &bootstrap(&BootstrapOptions {
            admin_port: envoy_admin,
            ..options("envoy-1", d.server.xds_addr)
        })
        .expect("bootstrap"),
        envoy_admin,
    );
    let mut c = d.client("grpc-1");
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;
    // CreateDevice goes through its own route to voltha-grpc-RR: the same cores.
    assert_eq!(
        c.call("/voltha.VolthaGlobalService/CreateDevice", &[]).await,
        Ok("vcore-0".into())
    );

    // Both clients are node cluster voltha; each is served its own group.
    let g = client_of(&d.server, "grpc-1").await.expect("the gRPC client's stream");
    assert_eq!(g["node_cluster"], "voltha");
    assert_eq!(g["group"], "voltha/grpc", "{g}");
    assert!(
        g["user_agent_name"].as_str().is_some_and(|a| a.starts_with("gRPC ")),
        "{g}"
    );
    let stream_before = g["stream_id"].clone();
    let e = wait_for(Duration::from_secs(30), "Envoy's stream", || {
        let s = &d.server;
        async move { client_of(s, "envoy-1").await.filter(|e| e["group"].is_string()) }
    })
    .await;
    assert_eq!(e["group"], "voltha", "{e}");
    assert_eq!(e["user_agent_name"], "envoy", "{e}");
    let envoy_ch = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", d.grpc_port))
        .expect("uri")
        .connect_lazy();
    wait_for(Duration::from_secs(30), "Envoy to serve vcore-0", || {
        let ch = envoy_ch.clone();
        async move { (which_core(ch).await.ok()? == "vcore-0").then_some(()) }
    })
    .await;

    // The change: vcore-0 leaves, vcore-2 takes over. Same channel, within a second.
    d.write_assignment(&["127.0.0.3"]);
    let took = c.wait_reached(Duration::from_secs(5), HEALTH, &[], &["vcore-2"]).await;
    assert!(took < Duration::from_secs(1), "the change took {took:?}");
    for _ in 0..20 {
        assert_eq!(c.health().await, Ok("vcore-2".into()));
    }
    let g = client_of(&d.server, "grpc-1").await.expect("stream");
    assert_eq!(g["stream_id"], stream_before, "the xDS stream was not reopened: {g}");
    assert!(g["types"]["eds"]["acks"].as_u64() >= Some(2), "{g}");
    assert_eq!(g["types"]["eds"]["nacks"], 0, "{g}");
    wait_for(Duration::from_secs(30), "Envoy to serve vcore-2", || {
        let ch = envoy_ch.clone();
        async move { (which_core(ch).await.ok()? == "vcore-2").then_some(()) }
    })
    .await;
    drop(envoy);
}

/// A source host that is a DNS name (Envoy resolves it) is left out of the gRPC clients'
/// assignment and counted: the client moves to the assignment's IP hosts, no NACK. Then one
/// IPv6 address written two ways is sent once: gRPC refuses an assignment with a duplicate
/// endpoint address (it NACKed this one when the server sent the address twice), and the
/// client takes it, no NACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_hosts_are_left_out_and_an_address_written_two_ways_is_sent_once_to_grpc_clients() {
    let d = DefaultProfile::start(&["127.0.0.1"]).await;
    let mut c = d.client("grpc-eds");
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;

    d.write_assignment(&["127.0.0.2", "vcore-x.voltha.invalid"]);
    c.wait_reached(Duration::from_secs(5), HEALTH, &[], &["vcore-1"]).await;
    for _ in 0..10 {
        assert_eq!(c.health().await, Ok("vcore-1".into()));
    }
    let g = client_of(&d.server, "grpc-eds").await.expect("stream");
    assert_eq!(g["types"]["eds"]["nacks"], 0, "the name is not sent: {g}");
    assert_eq!(
        metric(
            d.server.admin_addr,
            "voltha_xds_grpc_hosts_dropped{group=\"voltha/grpc\"}"
        )
        .await,
        2.0,
        "one name in each of the two clusters"
    );

    d.write_assignment(&["127.0.0.3", "::3", "0:0::3"]);
    c.wait_reached(Duration::from_secs(5), HEALTH, &[], &["vcore-2"]).await;
    let g = wait_for(Duration::from_secs(10), "the assignment ACKed", || {
        let s = &d.server;
        async move {
            client_of(s, "grpc-eds")
                .await
                .filter(|g| g["types"]["eds"]["last_acked_version"] == g["types"]["eds"]["last_sent_version"])
        }
    })
    .await;
    assert_eq!(g["types"]["eds"]["nacks"], 0, "{g}");
    assert!(g["types"]["eds"]["last_nack"].is_null(), "{g}");
    assert_eq!(
        metric(
            d.server.admin_addr,
            "voltha_xds_grpc_hosts_dropped{group=\"voltha/grpc\"}"
        )
        .await,
        0.0
    );
}

/// `bootstrap --grpc` asks for `ignore_resource_deletion` (gRFC A53): a reload that drops the
/// service the client uses (renamed here; its route configuration inline, since A53 covers
/// listeners and clusters only) leaves the client on its last good listener and clusters,
/// calling the same core, instead of failing its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_the_service_leaves_the_grpc_client_its_last_good_state() {
    let d = DefaultProfile::start(&["127.0.0.1"]).await;
    let inline = |name: &str| {
        d.yaml
            .replace(
                "grpc_services:\n  - name: voltha-grpc\n    routes: *voltha_routes\n",
                &format!("grpc_services:\n  - name: {name}\n    route_config: inline\n    routes: *voltha_routes\n"),
            )
            .replace("grpc_services: [voltha-grpc]", &format!("grpc_services: [{name}]"))
    };
    let path = d.dir.path().join("config.yaml");
    let reload = |yaml: String| {
        std::fs::write(&path, yaml).expect("write");
        d.server.reload.reload_file(&path, voltha_xds::reload::Trigger::Request)
    };
    assert_eq!(reload(inline("voltha-grpc")).await.result(), "ok");
    let mut c = d.client("grpc-a53");
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;
    let lds_before = client_of(&d.server, "grpc-a53").await.expect("stream")["types"]["lds"]["responses"]
        .as_u64()
        .expect("lds responses");
    assert_eq!(reload(inline("voltha-grpc-v2")).await.result(), "ok");
    // The client is sent an LDS response without voltha-grpc, and keeps what it had.
    wait_for(Duration::from_secs(10), "the LDS response without the service", || {
        let s = &d.server;
        async move {
            client_of(s, "grpc-a53")
                .await
                .filter(|g| g["types"]["lds"]["responses"].as_u64() > Some(lds_before))
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(c.health().await, Ok("vcore-0".into()), "{}", c.log_tail());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let g = client_of(&d.server, "grpc-a53").await.expect("stream");
    assert_eq!(g["types"]["lds"]["nacks"], 0, "{g}");
}

/// The Kubernetes profile: `voltha_backend_name: vcore2` reaches affinity group 2 (gRPC has no
/// cluster_header; one route per group), `vcore9` fails UNAVAILABLE, read-only methods reach the read-only cores, and a
/// device id header sticks to one core of the ring-hash cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_profile_binding_header_read_only_routes_and_device_affinity() {
    const K8S_CORES: [(&str, &str, &str, &str); 6] = [
        ("rw-1a", "rw-core1-a", "127.0.0.11", "1"),
        ("rw-1b", "rw-core1-b", "127.0.0.12", "1"),
        ("rw-2a", "rw-core2-a", "127.0.0.21", "2"),
        ("rw-2b", "rw-core2-b", "127.0.0.22", "2"),
        ("ro-0", "ro-core-0", "127.0.0.31", ""),
        ("ro-1", "ro-core-1", "127.0.0.32", ""),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    let core_port = free_port();
    let mut cores = Vec::new();
    for (id, _, ip, _) in K8S_CORES {
        cores.push(fake_core(id, format!("{ip}:{core_port}").parse().expect("addr")));
    }
    for (_, _, ip, _) in K8S_CORES {
        wait_listening(format!("{ip}:{core_port}").parse().expect("addr")).await;
    }
    let api = KubeApi::start().await;
    for (_, pod, ip, group) in K8S_CORES {
        let p = if group.is_empty() {
            core_pod(pod, ip, core_port, &[("app", "ro-core")])
        } else {
            core_pod(pod, ip, core_port, &[("app", "rw-core"), ("affinity-group", group)])
        };
        api.apply("voltha", p);
    }
    let yaml = include_str!("../config/voltha-kubernetes.yaml")
        .replace(
            "    type: kubernetes\n",
            &format!("    type: kubernetes\n    api_server: \"{}\"\n", api.url()),
        )
        .replace("port: 50057", &format!("port: {core_port}"))
        .replace("0.0.0.0:55555", &format!("127.0.0.1:{}", free_port()));
    let server = start_server(&yaml).await;
    let bs = grpc_bootstrap(&options("grpc-k8s", server.xds_addr)).expect("bootstrap --grpc");
    let mut c = GrpcClient::start(dir.path(), "grpc-k8s", &bs, TARGET);

    let group2 = ["rw-2a", "rw-2b"];
    c.wait_reached(
        Duration::from_secs(30),
        HEALTH,
        &[("voltha_backend_name", "vcore2")],
        &group2,
    )
    .await;
    for _ in 0..20 {
        let core = c.call(HEALTH, &[("voltha_backend_name", "vcore2")]).await;
        assert!(core.as_deref().is_ok_and(|k| group2.contains(&k)), "{core:?}");
        let core = c.call(HEALTH, &[("voltha_backend_name", "vcore1")]).await;
        assert!(
            core.as_deref().is_ok_and(|k| ["rw-1a", "rw-1b"].contains(&k)),
            "{core:?}"
        );
    }
    // A group that does not exist fails UNAVAILABLE, as on Envoy (no such cluster), instead
    // of falling through to rw_vcore.
    let core = c.call(HEALTH, &[("voltha_backend_name", "vcore9")]).await;
    assert!(
        core.as_deref().is_err_and(|e| e.starts_with("err UNAVAILABLE")),
        "{core:?}"
    );
    // read_only methods go to the read-only cores.
    for _ in 0..10 {
        let core = c.call("/voltha.VolthaService/ListDevices", &[]).await;
        assert!(core.as_deref().is_ok_and(|k| k.starts_with("ro-")), "{core:?}");
    }
    // A device id sticks to one read-write core; over many ids, more than one core is used.
    let mut used = std::collections::BTreeSet::new();
    for dev in 0..16 {
        let id = format!("0001{dev:012x}");
        let first = c
            .call(HEALTH, &[("x-voltha-device-id", &id)])
            .await
            .unwrap_or_else(|e| panic!("{e}; client log:\n{}", c.log_tail()));
        assert!(first.starts_with("rw-"), "{first}");
        for _ in 0..5 {
            assert_eq!(
                c.call(HEALTH, &[("x-voltha-device-id", &id)]).await,
                Ok(first.clone()),
                "device {id}"
            );
        }
        used.insert(first);
    }
    assert!(used.len() > 1, "every device id hashed to {used:?}");
    let g = client_of(&server, "grpc-k8s").await.expect("stream");
    assert_eq!(g["group"], "voltha/grpc", "{g}");
    for ty in ["lds", "rds", "cds", "eds"] {
        assert_eq!(g["types"][ty]["nacks"], 0, "{ty}: {g}");
    }
    drop(cores);
}

/// `bootstrap --grpc --tls-ca --tls-cert --tls-key`: gRPC's `tls` channel credentials (gRFC
/// A65) reach a server that requires mutual TLS, and the calls reach the cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_bootstrapped_with_tls_reaches_a_mutual_tls_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = support::pki::Pki::create(dir.path());
    let (grpc_port, rest, core_port) = (free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("assignment.json"), assignment(&["127.0.0.1"])).expect("write");
    let _core = fake_core("vcore-0", format!("127.0.0.1:{core_port}").parse().expect("addr"));
    wait_listening(format!("127.0.0.1:{core_port}").parse().expect("addr")).await;
    let yaml = config_yaml(dir.path(), grpc_port, rest, core_port, "").replacen(
        "server:\n",
        &format!(
            "server:\n  tls: {{ cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
        1,
    );
    let server = start_server(&yaml).await;
    let tls = |client: bool| voltha_xds::bootstrap::BootstrapTls {
        ca: pki.ca.display().to_string(),
        client: client.then(|| {
            (
                pki.client_cert.display().to_string(),
                pki.client_key.display().to_string(),
            )
        }),
    };
    let bs = grpc_bootstrap(&BootstrapOptions {
        tls: Some(tls(true)),
        ..options("grpc-mtls", server.xds_addr)
    })
    .expect("bootstrap --grpc --tls-*");
    let mut c = GrpcClient::start(dir.path(), "grpc-mtls", &bs, TARGET);
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;
    assert_eq!(
        client_of(&server, "grpc-mtls").await.map(|g| g["group"].clone()),
        Some("voltha/grpc".into())
    );
    // Without a client certificate the server refuses the handshake: no xDS, no calls.
    let bs = grpc_bootstrap(&BootstrapOptions {
        tls: Some(tls(false)),
        ..options("grpc-no-cert", server.xds_addr)
    })
    .expect("bootstrap");
    let mut refused = GrpcClient::start(dir.path(), "grpc-no-cert", &bs, TARGET);
    let r = refused.health().await;
    assert!(r.as_deref().is_err_and(|e| e.starts_with("err UNAVAILABLE")), "{r:?}");
    assert!(client_of(&server, "grpc-no-cert").await.is_none());
}

/// The shipped configuration `shipped`, moved to loopback ports and `core_port`.
fn shipped_on_loopback(shipped: &str, core_port: u16) -> String {
    shipped
        .replace("0.0.0.0:50555", &format!("127.0.0.1:{}", free_port()))
        .replace("0.0.0.0:8882", &format!("127.0.0.1:{}", free_port()))
        .replace("0.0.0.0:3000", &format!("127.0.0.1:{}", free_port()))
        .replace("port: 50556", &format!("port: {core_port}"))
}

/// The Consul and etcd profiles, with their node cluster: a gRPC client reaches the core the
/// key names, and follows a new value of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_and_etcd_profiles_serve_grpc_clients_too() {
    const KEY: &str = "service/voltha/data/core/assignment";
    // Generous: the default profile's test holds the one-second bound; this one is about the
    // profiles, and runs beside other tests on a busy machine.
    const KV_CHANGE: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().expect("tmp");
    let core_port = free_port();
    let mut cores = Vec::new();
    for (id, ip) in CORES {
        cores.push(fake_core(id, format!("{ip}:{core_port}").parse().expect("addr")));
    }
    for (_, ip) in CORES {
        wait_listening(format!("{ip}:{core_port}").parse().expect("addr")).await;
    }

    let consul = support::consul::ConsulDouble::start().await;
    consul.put(KEY, assignment(&["127.0.0.1"]).as_bytes());
    let yaml = shipped_on_loopback(include_str!("../config/voltha-consul.yaml"), core_port).replace(
        "    type: consul\n",
        &format!("    type: consul\n    address: \"{}\"\n", consul.addr),
    );
    let server = start_server(&yaml).await;
    let bs = grpc_bootstrap(&options("grpc-consul", server.xds_addr)).expect("bootstrap");
    let mut c = GrpcClient::start(dir.path(), "grpc-consul", &bs, TARGET);
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;
    consul.put(KEY, assignment(&["127.0.0.2"]).as_bytes());
    c.wait_reached(KV_CHANGE, HEALTH, &[], &["vcore-1"]).await;
    drop(c);

    let etcd = support::etcd::Etcd::start().await;
    etcd.put(KEY, &assignment(&["127.0.0.2"]));
    let yaml = shipped_on_loopback(include_str!("../config/voltha-etcd.yaml"), core_port).replace(
        "    type: etcd\n",
        &format!("    type: etcd\n    endpoints: [\"{}\"]\n", etcd.client),
    );
    let server = start_server(&yaml).await;
    let bs = grpc_bootstrap(&options("grpc-etcd", server.xds_addr)).expect("bootstrap");
    let mut c = GrpcClient::start(dir.path(), "grpc-etcd", &bs, TARGET);
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-1"]).await;
    etcd.put(KEY, &assignment(&["127.0.0.3"]));
    c.wait_reached(KV_CHANGE, HEALTH, &[], &["vcore-2"]).await;
    let g = client_of(&server, "grpc-etcd").await.expect("stream");
    assert_eq!(g["group"], "voltha/grpc", "{g}");
}

/// `route_config: inline`: the route configuration rides in the API listener, and the client
/// never asks RDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_route_configuration_needs_no_rds() {
    let dir = tempfile::tempdir().expect("tmp");
    let (grpc_port, rest, core_port) = (free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("assignment.json"), assignment(&["127.0.0.1"])).expect("write");
    let _core = fake_core("vcore-0", format!("127.0.0.1:{core_port}").parse().expect("addr"));
    wait_listening(format!("127.0.0.1:{core_port}").parse().expect("addr")).await;
    let shipped = "grpc_services:\n  - name: voltha-grpc\n    routes: *voltha_routes\n";
    let yaml = config_yaml(dir.path(), grpc_port, rest, core_port, "");
    assert!(yaml.contains(shipped));
    let yaml = yaml.replace(
        shipped,
        "grpc_services:\n  - name: voltha-grpc\n    route_config: inline\n    routes: *voltha_routes\n",
    );
    let server = start_server(&yaml).await;
    let bs = grpc_bootstrap(&options("grpc-inline", server.xds_addr)).expect("bootstrap");
    let mut c = GrpcClient::start(dir.path(), "grpc-inline", &bs, TARGET);
    c.wait_reached(Duration::from_secs(30), HEALTH, &[], &["vcore-0"]).await;
    assert_eq!(
        c.call("/voltha.VolthaGlobalService/CreateDevice", &[]).await,
        Ok("vcore-0".into())
    );
    let g = client_of(&server, "grpc-inline").await.expect("stream");
    assert!(g["types"].get("rds").is_none(), "RDS never asked: {g}");
    assert_eq!(g["types"]["lds"]["nacks"], 0, "{g}");
}
