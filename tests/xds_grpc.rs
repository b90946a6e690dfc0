//! The xDS services over real gRPC, with envoy-types' stock tonic clients: SotW and Delta ADS,
//! the per-type services, bad input, admin views.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use prost::Message;
use support::sotw::Sotw;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    _dir: tempfile::TempDir,
    assignment: std::path::PathBuf,
    server: voltha_xds::Running,
}

impl Setup {
    async fn new(initial: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let assignment = dir.path().join("assignment.json");
        std::fs::write(&assignment, initial).expect("write");
        let yaml = format!(
            r#"
default_group: nbi
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources: [{{ name: assignment, type: file, path: "{}", poll_interval: 20ms }}]
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
  - {{ name: portainer, protocol: http1, endpoints: {{ dns: ["portainer:9000"] }} }}
listeners:
  - {{ name: nbi, address: 127.0.0.1:50555, codec: http2, routes: [{{ prefix: /, cluster: voltha-grpc }}] }}
  - {{ name: front, address: 127.0.0.1:3000, routes: [{{ prefix: /docker, prefix_rewrite: /, cluster: portainer }}] }}
groups:
  - {{ name: nbi, listeners: [nbi] }}
  - {{ name: front-proxy, listeners: [front] }}
"#,
            assignment.display()
        );
        let server = start_server(&yaml).await;
        let s = Setup {
            _dir: dir,
            assignment,
            server,
        };
        s.wait_ready().await;
        s
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin_debug_addr)
    }

    async fn wait_ready(&self) {
        let url = self.admin("/readyz");
        wait_for(WAIT, "readiness", || {
            let url = url.clone();
            async move { (get_json(&url).await.0 == 200).then_some(()) }
        })
        .await;
    }

    async fn channel(&self) -> Channel {
        channel(self.server.xds_addr).await
    }

    fn write(&self, content: &str) {
        let tmp = self.assignment.with_extension("tmp");
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, &self.assignment).expect("rename");
    }
}

fn node(cluster: &str) -> Option<Node> {
    Some(Node {
        id: "test-envoy".into(),
        cluster: cluster.into(),
        ..Default::default()
    })
}

fn req(ty: &str, names: &[&str], prev: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node("nbi"),
        type_url: ty.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: prev.map(|p| p.version_info.clone()).unwrap_or_default(),
        response_nonce: prev.map(|p| p.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

fn cla(r: &DiscoveryResponse) -> Vec<ClusterLoadAssignment> {
    r.resources
        .iter()
        .map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).expect("cla"))
        .collect()
}

fn hosts(c: &ClusterLoadAssignment) -> Vec<String> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    c.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                Address::SocketAddress(s) => Some(s.address.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

const TWO: &str = r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}, "0003": null}"#;
const ONE: &str = r#"{"0001": {"id": "a", "host": "10.0.0.3"}}"#;

#[tokio::test]
async fn sotw_ads_serves_every_type_and_pushes_an_assignment_change() {
    let s = Setup::new(TWO).await;
    let mut c = Sotw::open(s.channel().await).await;
    c.send(req(CDS, &[], None)).await;
    let cds = c.next().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cds.resources.len(), 1);
    // Every response names the server: `control_plane.identifier`.
    let id = cds
        .control_plane
        .as_ref()
        .map(|c| c.identifier.clone())
        .unwrap_or_default();
    assert!(
        id.starts_with(&format!("voltha-xds {} (", voltha_xds::build_info::VERSION)),
        "{id:?}"
    );
    c.send(req(CDS, &[], Some(&cds))).await;
    c.send(req(EDS, &["voltha-grpc"], None)).await;
    let eds = c.next().await;
    assert_eq!(hosts(&cla(&eds)[0]), vec!["10.0.0.1", "10.0.0.2"], "null slot skipped");
    c.send(req(EDS, &["voltha-grpc"], Some(&eds))).await;
    c.send(req(LDS, &[], None)).await;
    let lds = c.next().await;
    assert_eq!(lds.resources.len(), 1);
    c.send(req(LDS, &[], Some(&lds))).await;
    c.send(req(RDS, &["nbi-routes"], None)).await;
    let rds = c.next().await;
    assert_eq!(rds.resources.len(), 1);
    c.send(req(RDS, &["nbi-routes"], Some(&rds))).await;
    c.nothing_for(Duration::from_millis(300)).await;

    s.write(ONE);
    let eds2 = c.next().await;
    assert_eq!(eds2.type_url, EDS, "only EDS changes");
    assert_ne!(eds2.version_info, eds.version_info);
    assert_eq!(hosts(&cla(&eds2)[0]), vec!["10.0.0.3"]);
    assert_eq!(eds2.control_plane, cds.control_plane, "a push names the server too");
    c.send(req(EDS, &["voltha-grpc"], Some(&eds2))).await;
    c.nothing_for(Duration::from_millis(300)).await;

    let (_, clients) = get_json(&s.admin("/debug/clients")).await;
    let me = &clients["clients"][0];
    assert_eq!(me["node_id"], "test-envoy");
    assert_eq!(me["group"], "nbi");
    assert_eq!(me["types"]["eds"]["last_acked_version"], eds2.version_info.as_str());

    // The push is measured once for EDS only (the one type the change touched), the snapshot's
    // size is exposed, and the source's last success is a recent Unix time.
    let metrics = get_text(&s.admin("/metrics")).await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(value("voltha_xds_push_latency_seconds_count{type=\"eds\"}"), 1.0);
    assert!(!metrics.contains("voltha_xds_push_latency_seconds_count{type=\"cds\"}"));
    assert!(value("voltha_xds_push_latency_seconds_sum{type=\"eds\"}") < 10.0);
    assert_eq!(
        value("voltha_xds_snapshot_resources{group=\"nbi\",type=\"cds\"}"),
        cds.resources.len() as f64
    );
    assert!(value("voltha_xds_snapshot_bytes{group=\"nbi\",type=\"eds\"}") > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last = value("voltha_xds_source_last_success_timestamp_seconds{source=\"assignment\"}");
    assert!((now - last).abs() < 60.0, "last success {last}, now {now}");
}

#[tokio::test]
async fn node_cluster_picks_the_front_proxy_group() {
    let s = Setup::new(TWO).await;
    let mut c = Sotw::open(s.channel().await).await;
    let mut r = req(LDS, &[], None);
    r.node = node("front-proxy");
    c.send(r).await;
    let lds = c.next().await;
    let l =
        envoy_types::pb::envoy::config::listener::v3::Listener::decode(lds.resources[0].value.as_slice()).expect("l");
    assert_eq!(l.name, "front");
}

#[tokio::test]
async fn two_servers_with_the_same_input_hand_out_the_same_versions() {
    let a = Setup::new(TWO).await;
    let b = Setup::new(TWO).await;
    let mut versions = Vec::new();
    for s in [&a, &b] {
        let mut c = Sotw::open(s.channel().await).await;
        c.send(req(CDS, &[], None)).await;
        let cds = c.next().await;
        c.send(req(EDS, &["voltha-grpc"], None)).await;
        let eds = c.next().await;
        versions.push((cds.version_info, eds.version_info));
    }
    assert_eq!(versions[0], versions[1]);
    // A client that reconnects to the other replica with what it holds gets no update.
    let mut c = Sotw::open(b.channel().await).await;
    let mut r = req(CDS, &[], None);
    r.version_info = versions[0].0.clone();
    c.send(r).await;
    c.nothing_for(Duration::from_millis(300)).await;
}

fn dreq(ty: &str, sub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node("nbi"),
        type_url: ty.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

async fn next_delta(rx: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(WAIT, rx.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open")
}

#[tokio::test]
async fn delta_ads_serves_changes_and_resumes_without_resending() {
    let s = Setup::new(TWO).await;
    let (tx, rx) = mpsc::channel(16);
    let mut rx = AggregatedDiscoveryServiceClient::new(s.channel().await)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(dreq(CDS, &["*"], "")).await.expect("send");
    let cds = next_delta(&mut rx).await;
    assert_eq!(
        cds.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["voltha-grpc"]
    );
    assert!(
        cds.control_plane
            .as_ref()
            .is_some_and(|c| c.identifier.starts_with("voltha-xds ")),
        "{:?}",
        cds.control_plane
    );
    tx.send(dreq(CDS, &[], &cds.nonce)).await.expect("ack");
    tx.send(dreq(EDS, &["voltha-grpc"], "")).await.expect("send");
    let eds = next_delta(&mut rx).await;
    let held: Vec<(String, String)> = eds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    tx.send(dreq(EDS, &[], &eds.nonce)).await.expect("ack");
    s.write(ONE);
    let eds2 = next_delta(&mut rx).await;
    assert_eq!(eds2.type_url, EDS);
    let c =
        ClusterLoadAssignment::decode(eds2.resources[0].resource.as_ref().expect("any").value.as_slice()).expect("cla");
    assert_eq!(hosts(&c), vec!["10.0.0.3"]);
    drop(tx);

    // Reconnect holding the current EDS version: nothing is re-sent but the (empty) first answer.
    let (tx, rx2) = mpsc::channel(16);
    let mut rx2 = AggregatedDiscoveryServiceClient::new(s.channel().await)
        .delta_aggregated_resources(ReceiverStream::new(rx2))
        .await
        .expect("stream")
        .into_inner();
    let mut r = dreq(EDS, &["voltha-grpc"], "");
    r.initial_resource_versions = [("voltha-grpc".to_string(), eds2.resources[0].version.clone())].into();
    tx.send(r).await.expect("send");
    let again = next_delta(&mut rx2).await;
    assert!(again.resources.is_empty(), "held resource re-sent: {again:?}");
    // Holding the old version, it gets the new one.
    let mut r = dreq(EDS, &["voltha-grpc"], "");
    r.type_url = EDS.into();
    r.initial_resource_versions = held.into_iter().collect();
    let (tx3, rx3) = mpsc::channel(16);
    let mut rx3 = AggregatedDiscoveryServiceClient::new(s.channel().await)
        .delta_aggregated_resources(ReceiverStream::new(rx3))
        .await
        .expect("stream")
        .into_inner();
    tx3.send(r).await.expect("send");
    assert_eq!(next_delta(&mut rx3).await.resources.len(), 1);
}

#[tokio::test]
async fn per_type_services_stream_and_fetch() {
    let s = Setup::new(TWO).await;
    let mut cds = ClusterDiscoveryServiceClient::new(s.channel().await);
    let got = cds
        .fetch_clusters(req("", &[], None))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(got.type_url, CDS);
    assert_eq!(got.resources.len(), 1);
    let (tx, rx) = mpsc::channel(4);
    tx.send(req(CDS, &[], None)).await.expect("send");
    let mut st = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let r = tokio::time::timeout(WAIT, st.message())
        .await
        .expect("time")
        .expect("ok")
        .expect("msg");
    assert_eq!(r.version_info, got.version_info);
    let mut eds = EndpointDiscoveryServiceClient::new(s.channel().await);
    let e = eds
        .fetch_endpoints(req(EDS, &["voltha-grpc", "nope"], None))
        .await
        .expect("fetch")
        .into_inner();
    let names: Vec<String> = cla(&e).into_iter().map(|c| c.cluster_name).collect();
    assert_eq!(
        names,
        vec!["nope", "voltha-grpc"],
        "unknown names get an empty assignment"
    );
    // The wrong type on a per-type service is refused clearly.
    let err = eds.fetch_endpoints(req(CDS, &[], None)).await.expect_err("wrong type");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("serves"), "{}", err.message());
}

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_server_keeps_serving() {
    let s = Setup::new(TWO).await;
    // No node on the first request.
    let mut c = Sotw::open(s.channel().await).await;
    let mut r = req(CDS, &[], None);
    r.node = None;
    c.send(r).await;
    let e = tokio::time::timeout(WAIT, c.rx.message())
        .await
        .expect("time")
        .expect_err("error");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("node"), "{}", e.message());
    // No type URL on ADS.
    let mut c = Sotw::open(s.channel().await).await;
    c.send(req("", &[], None)).await;
    let e = tokio::time::timeout(WAIT, c.rx.message())
        .await
        .expect("time")
        .expect_err("error");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Unknown type: an empty answer once; garbage nonce ignored.
    let mut c = Sotw::open(s.channel().await).await;
    c.send(req(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        &["x"],
        None,
    ))
    .await;
    let r = c.next().await;
    assert!(r.resources.is_empty());
    let mut g = req(CDS, &[], None);
    g.response_nonce = "\u{0}garbage\u{ffff}".into();
    c.send(g).await;
    // That was the first CDS request with a nonce we never sent: stale for a new type? The
    // type has no state yet, so it counts as the first request and is answered.
    let cds = c.next().await;
    assert_eq!(cds.type_url, CDS);
    // A huge but allowed name list.
    let names: Vec<String> = (0..20_000).map(|i| format!("cluster-{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    c.send(req(EDS, &refs, None)).await;
    let e = c.next().await;
    assert_eq!(e.resources.len(), 20_000);
    // A request over the size limit ends that stream with an error, nothing else.
    let mut c2 = Sotw::open(s.channel().await).await;
    let big: Vec<String> = (0..300_000)
        .map(|i| format!("a-rather-long-cluster-name-{i:08}"))
        .collect();
    let refs: Vec<&str> = big.iter().map(|s| s.as_str()).collect();
    c2.send(req(EDS, &refs, None)).await;
    let e = tokio::time::timeout(WAIT, c2.rx.message())
        .await
        .expect("time")
        .expect_err("too big");
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal
        ),
        "{e:?}"
    );
    // The server still serves.
    let mut ok = Sotw::open(s.channel().await).await;
    ok.send(req(CDS, &[], None)).await;
    assert_eq!(ok.next().await.resources.len(), 1);
    let metrics = get_text(&s.admin("/metrics")).await;
    assert!(metrics.contains("voltha_xds_bad_requests_total 3"), "{metrics}");
    assert!(
        metrics.contains("voltha_xds_unknown_type_requests_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_malformed_assignment_is_counted_and_the_last_good_state_is_served() {
    let s = Setup::new(TWO).await;
    let (_, snap1) = get_json(&s.admin("/debug/snapshot")).await;
    s.write(r#"{"0001": {"host": "#);
    let metrics_url = s.admin("/metrics");
    wait_for(WAIT, "the error to be counted", || {
        let u = metrics_url.clone();
        async move {
            get_text(&u)
                .await
                .contains("voltha_xds_source_errors_total{source=\"assignment\",kind=\"malformed_json\"} 1")
                .then_some(())
        }
    })
    .await;
    let (code, ready) = get_json(&s.admin("/readyz")).await;
    assert_eq!(code, 200, "still ready: it has a last good state");
    assert_eq!(ready["sources"]["assignment"]["state"], "error");
    assert!(ready["sources"]["assignment"]["last_error"]
        .as_str()
        .unwrap_or("")
        .contains("not valid JSON"));
    let (_, snap2) = get_json(&s.admin("/debug/snapshot")).await;
    assert_eq!(snap1["generation"], snap2["generation"]);
    // Wrong shape: also refused.
    s.write(r#"{"0001": {"host": ["10.0.0.9"]}}"#);
    wait_for(WAIT, "the shape error", || {
        let u = metrics_url.clone();
        async move { get_text(&u).await.contains("kind=\"wrong_shape\"} 1").then_some(()) }
    })
    .await;
    // Fixed: served again.
    s.write(ONE);
    let url = s.admin("/debug/snapshot");
    wait_for(WAIT, "the fixed assignment", || {
        let u = url.clone();
        async move {
            let (_, v) = get_json(&u).await;
            v["groups"]["nbi"]["types"]["eds"]
                .to_string()
                .contains("10.0.0.3")
                .then_some(())
        }
    })
    .await;
    let (_, ready) = get_json(&s.admin("/readyz")).await;
    assert_eq!(ready["sources"]["assignment"]["state"], "ok");
}

#[tokio::test]
async fn a_deleted_file_keeps_the_cores_an_empty_object_removes_them_and_streams_are_forgotten() {
    let s = Setup::new(TWO).await;
    let url = s.admin("/debug/snapshot");
    let eds_hosts = || {
        let u = url.clone();
        async move {
            let (_, v) = get_json(&u).await;
            let eds = &v["groups"]["nbi"]["types"]["eds"]["resources"][0];
            assert_eq!(eds["clusterName"], "voltha-grpc");
            eds.get("endpoints")
                .and_then(|e| e[0].get("lbEndpoints"))
                .and_then(|l| l.as_array())
                .map_or(0, |l| l.len())
        }
    };
    // Deleted: an error, and the last good state stays (as for a deleted KV key).
    std::fs::remove_file(&s.assignment).expect("rm");
    let metrics = s.admin("/metrics");
    wait_for(WAIT, "the deletion counted", || {
        let u = metrics.clone();
        async move {
            get_text(&u)
                .await
                .contains("voltha_xds_source_errors_total{source=\"assignment\",kind=\"deleted\"} 1")
                .then_some(())
        }
    })
    .await;
    assert_eq!(eds_hosts().await, 2, "a deleted file must not remove the cores");
    let (code, ready) = get_json(&s.admin("/readyz")).await;
    assert_eq!(
        (code, ready["sources"]["assignment"]["state"].as_str()),
        (200, Some("error"))
    );
    // Only a well-formed empty value empties the cluster.
    std::fs::write(&s.assignment, "{}").expect("write");
    wait_for(WAIT, "empty endpoints", || async {
        (eds_hosts().await == 0).then_some(())
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut c = Sotw::open(s.channel().await).await;
        c.send(req(CDS, &[], None)).await;
        c.next().await;
        streams.push(c);
    }
    let (_, v) = get_json(&s.admin("/debug/clients")).await;
    assert_eq!(v["clients"].as_array().map(|a| a.len()), Some(5));
    drop(streams);
    let curl = s.admin("/debug/clients");
    wait_for(WAIT, "streams to be forgotten", || {
        let u = curl.clone();
        async move { (get_json(&u).await.1["clients"].as_array().map(|a| a.len()) == Some(0)).then_some(()) }
    })
    .await;
    let metrics = get_text(&s.admin("/metrics")).await;
    let open: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("voltha_xds_streams{"))
        .collect();
    assert!(open.iter().any(|l| l.contains("service=\"ads\"")), "{open:?}");
    assert!(
        open.iter().all(|l| l.ends_with(" 0")),
        "streams still counted: {open:?}"
    );
}

#[tokio::test]
async fn admin_health_and_snapshot_views() {
    let s = Setup::new(TWO).await;
    assert_eq!(get_text(&s.admin("/healthz")).await, "ok\n");
    let (code, v) = get_json(&s.admin("/debug/snapshot?group=front-proxy")).await;
    assert_eq!(code, 200);
    let cds = &v["groups"]["front-proxy"]["types"]["cds"]["resources"];
    assert_eq!(cds[0]["name"], "portainer");
    assert_eq!(cds[0]["type"], "STRICT_DNS");
    assert!(v["groups"].get("nbi").is_none());
    let (code, _) = get_json(&s.admin("/debug/snapshot?group=nope")).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_config_without_sources_serves_its_static_resources() {
    let yaml = r#"
clusters:
  - { name: portainer, protocol: http1, endpoints: { dns: ["portainer:9000"] } }
  - { name: core, endpoints: { static: ["127.0.0.1:50556"] } }
listeners:
  - { name: front, address: 127.0.0.1:3000, routes: [{ prefix: /docker, prefix_rewrite: /, cluster: portainer }, { prefix: /, cluster: core }] }
groups:
  - { name: only, listeners: [front] }
default_group: only
sources: []
"#;
    let server = start_server(yaml).await;
    let ready = format!("http://{}/readyz", server.admin_addr);
    wait_for(WAIT, "readiness without sources", || {
        let url = ready.clone();
        async move { (get_json(&url).await.0 == 200).then_some(()) }
    })
    .await;
    let ch = channel(server.xds_addr).await;
    let mut s = Sotw::open(ch).await;
    s.send(req(CDS, &[], None)).await;
    let cds = s.next().await;
    assert_eq!(cds.resources.len(), 2);
    s.send(req(EDS, &["core"], None)).await;
    let eds = s.next().await;
    assert_eq!(hosts(&cla(&eds)[0]), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn an_unreadable_source_file_is_reported_once_not_on_every_poll() {
    let dir = tempfile::tempdir().expect("tmp");
    // A directory where the file should be: every read fails the same way.
    let path = dir.path().join("assignment.json");
    std::fs::create_dir(&path).expect("mkdir");
    let yaml = format!(
        r#"
sources: [{{ name: assignment, type: file, path: "{}", poll_interval: 10ms }}]
clusters:
  - {{ name: core, endpoints: {{ source: assignment, port: 50556 }} }}
listeners:
  - {{ name: nbi, address: 127.0.0.1:50555, codec: http2, routes: [{{ prefix: /, cluster: core }}] }}
groups: [{{ name: only, listeners: [nbi] }}]
default_group: only
"#,
        path.display()
    );
    let server = start_server(&yaml).await;
    let metrics_url = format!("http://{}/metrics", server.admin_addr);
    let line = "voltha_xds_source_errors_total{source=\"assignment\",kind=\"read\"} 1";
    wait_for(WAIT, "the read error counted", || {
        let url = metrics_url.clone();
        async move { get_text(&url).await.contains(line).then_some(()) }
    })
    .await;
    // Twenty more polls later, still one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = get_text(&metrics_url).await;
    assert!(m.contains(line), "{m}");
    // Not ready: the source never delivered.
    let (code, _) = get_json(&format!("http://{}/readyz", server.admin_addr)).await;
    assert_eq!(code, 503);
}

#[tokio::test]
async fn sotw_nack_stale_nonce_and_resubscribe_over_grpc() {
    let s = Setup::new(TWO).await;
    let mut c = Sotw::open(s.channel().await).await;
    c.send(req(CDS, &[], None)).await;
    let cds = c.next().await;
    // NACK: the previous accepted version (none), the nonce, an error. Not answered, recorded.
    let mut nack = req(CDS, &[], None);
    nack.response_nonce = cds.nonce.clone();
    nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: 3,
        message: "cluster rejected by test".into(),
        ..Default::default()
    });
    c.send(nack).await;
    c.nothing_for(Duration::from_millis(300)).await;
    let (_, clients) = get_json(&s.admin("/debug/clients")).await;
    let text = clients.to_string();
    assert!(text.contains("cluster rejected by test"), "{text}");
    // A stale nonce is ignored.
    let mut stale = req(EDS, &["voltha-grpc"], None);
    stale.response_nonce = "not-a-nonce-we-sent".into();
    c.send(req(EDS, &["voltha-grpc"], None)).await;
    let eds = c.next().await;
    c.send(req(EDS, &["voltha-grpc"], Some(&eds))).await;
    c.send(stale).await;
    c.nothing_for(Duration::from_millis(300)).await;
    // Unsubscribe (nothing to answer), then ask again at the same version: answered again.
    c.send(req(EDS, &[], Some(&eds))).await;
    c.nothing_for(Duration::from_millis(300)).await;
    c.send(req(EDS, &["voltha-grpc"], Some(&eds))).await;
    let again = c.next().await;
    assert_eq!(again.version_info, eds.version_info, "same version");
    assert_eq!(hosts(&cla(&again)[0]), vec!["10.0.0.1", "10.0.0.2"]);
}

#[tokio::test]
async fn delta_unsubscribe_and_resubscribe_over_grpc() {
    let s = Setup::new(TWO).await;
    let (tx, rx) = mpsc::channel(16);
    let mut rx = AggregatedDiscoveryServiceClient::new(s.channel().await)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(dreq(EDS, &["voltha-grpc"], "")).await.expect("send");
    let eds = next_delta(&mut rx).await;
    assert_eq!(eds.resources.len(), 1);
    let mut unsub = dreq(EDS, &[], &eds.nonce);
    unsub.resource_names_unsubscribe = vec!["voltha-grpc".into()];
    tx.send(unsub).await.expect("send");
    // A change to an unsubscribed resource is not sent.
    s.write(ONE);
    if let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(400), rx.message()).await {
        panic!("nothing expected after unsubscribe, got {r:?}");
    }
    tx.send(dreq(EDS, &["voltha-grpc"], "")).await.expect("resubscribe");
    let again = next_delta(&mut rx).await;
    let c = ClusterLoadAssignment::decode(again.resources[0].resource.as_ref().expect("any").value.as_slice())
        .expect("cla");
    assert_eq!(hosts(&c), vec!["10.0.0.3"]);
}

#[tokio::test]
async fn per_type_delta_listener_and_route_services() {
    use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
    let s = Setup::new(TWO).await;
    // Delta LDS on its own service.
    let (tx, rx) = mpsc::channel(4);
    tx.send(dreq(LDS, &["*"], "")).await.expect("send");
    let mut lds = ListenerDiscoveryServiceClient::new(s.channel().await)
        .delta_listeners(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let l = next_delta(&mut lds).await;
    assert_eq!(
        l.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["nbi"]
    );
    // SotW RDS on its own service, then a fetch.
    let mut rds = RouteDiscoveryServiceClient::new(s.channel().await);
    let (tx2, rx2) = mpsc::channel(4);
    tx2.send(req(RDS, &["nbi-routes"], None)).await.expect("send");
    let mut st = rds
        .stream_routes(ReceiverStream::new(rx2))
        .await
        .expect("stream")
        .into_inner();
    let r = tokio::time::timeout(WAIT, st.message())
        .await
        .expect("time")
        .expect("ok")
        .expect("open");
    assert_eq!(r.type_url, RDS);
    assert_eq!(r.resources.len(), 1);
    let f = rds
        .fetch_routes(req(RDS, &["nbi-routes"], None))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(f.resources, r.resources);
    // A type URL that does not belong to the service is refused on a per-type stream.
    let (tx3, rx3) = mpsc::channel(4);
    tx3.send(dreq(CDS, &["*"], "")).await.expect("send");
    let mut wrong = ListenerDiscoveryServiceClient::new(s.channel().await)
        .delta_listeners(ReceiverStream::new(rx3))
        .await
        .expect("stream")
        .into_inner();
    let e = tokio::time::timeout(WAIT, wrong.message())
        .await
        .expect("time")
        .expect_err("wrong type");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn a_refused_snapshot_leaves_the_last_good_one_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sets.json");
    std::fs::write(&path, r#"{"cores": ["10.0.0.1:80"]}"#).expect("write");
    // No `port` on the cluster: a host without one cannot be served.
    let yaml = format!(
        r#"
debounce: {{ quiet: 10ms, max_delay: 100ms }}
sources: [{{ name: s, type: file, format: endpoints, path: "{}", poll_interval: 10ms }}]
clusters:
  - {{ name: core, endpoints: {{ source: s, set: cores }} }}
listeners:
  - {{ name: nbi, address: 127.0.0.1:50555, codec: http2, routes: [{{ prefix: /, cluster: core }}] }}
groups: [{{ name: only, listeners: [nbi] }}]
default_group: only
"#,
        path.display()
    );
    let server = start_server(&yaml).await;
    let url = |p: &str| format!("http://{}{p}", server.admin_debug_addr);
    let served = |want: &'static str| {
        let u = url("/debug/snapshot");
        async move {
            let (_, v) = get_json(&u).await;
            v["groups"]["only"]["types"]["eds"]
                .to_string()
                .contains(want)
                .then_some(())
        }
    };
    wait_for(WAIT, "the first snapshot", || served("10.0.0.1")).await;
    let (_, before) = get_json(&url("/debug/snapshot")).await;
    std::fs::write(&path, r#"{"cores": ["10.0.0.2"]}"#).expect("write");
    wait_for(WAIT, "the refusal counted", || {
        let u = url("/metrics");
        async move {
            get_text(&u)
                .await
                .contains("voltha_xds_snapshot_rejections_total{reason=\"no_port\"} 1")
                .then_some(())
        }
    })
    .await;
    let (_, after) = get_json(&url("/debug/snapshot")).await;
    assert_eq!(
        after["groups"]["only"], before["groups"]["only"],
        "the last good snapshot is still served"
    );
    // A stream opened now gets the last good endpoints.
    let ch = channel(server.xds_addr).await;
    let mut c = Sotw::open(ch).await;
    let mut r = req(EDS, &["core"], None);
    r.node = node("only");
    c.send(r).await;
    assert_eq!(hosts(&cla(&c.next().await)[0]), vec!["10.0.0.1"]);
    // Fixed input: served again.
    std::fs::write(&path, r#"{"cores": ["10.0.0.2:80"]}"#).expect("write");
    wait_for(WAIT, "the fixed input", || served("10.0.0.2")).await;
}

#[tokio::test]
async fn stop_ends_open_streams_and_returns_well_before_its_deadline() {
    let s = Setup::new(TWO).await;
    let mut c = Sotw::open(s.channel().await).await;
    c.send(req(CDS, &[], None)).await;
    let _ = c.next().await;
    let xds = s.server.xds_addr;
    let Setup { server, _dir, .. } = s;
    let t0 = std::time::Instant::now();
    server.stop(Duration::from_secs(10)).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "stop took {:?}", t0.elapsed());
    // The open stream ends: a status or the end of the stream, not silence.
    let end = tokio::time::timeout(Duration::from_secs(5), c.rx.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "no more responses after stop: {end:?}");
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(xds).await.is_err(),
        "xDS port still accepting"
    );
}
