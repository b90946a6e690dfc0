//! A server with a known set of connected xDS clients, for the status views' tests (CSDS, the
//! status command, the status page). Included by path from those tests.
#![allow(dead_code)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use voltha_xds::xds::resources::ResourceType;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const WAIT: Duration = Duration::from_secs(10);

/// The error the NACKing client sends.
pub const NACK_ERROR: &str = "cluster voltha-grpc: rejected by the test <on purpose> & \"quoted\"";

/// A server fed by an assignment file (source `assignment`), groups `nbi` (default) and
/// `front-proxy`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub server: voltha_xds::Running,
}

impl Setup {
    pub async fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let assignment = dir.path().join("assignment.json");
        std::fs::write(
            &assignment,
            r#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#,
        )
        .expect("write");
        let yaml = format!(
            r#"
default_group: nbi
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources: [{{ name: assignment, type: file, path: "{}", poll_interval: 20ms }}]
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
  - {{ name: portainer, protocol: http1, endpoints: {{ dns: ["portainer:9000"] }} }}
listeners:
  - {{ name: nbi, address: "127.0.0.1:{}", codec: http2, routes: [{{ prefix: /, cluster: voltha-grpc }}] }}
  - {{ name: front, address: "127.0.0.1:{}", routes: [{{ prefix: /docker, prefix_rewrite: /, cluster: portainer }}] }}
groups:
  - {{ name: nbi, listeners: [nbi] }}
  - {{ name: front-proxy, listeners: [front] }}
"#,
            assignment.display(),
            super::support::free_port(),
            super::support::free_port(),
        );
        let server = super::support::start_server(&yaml).await;
        let s = Setup { dir, server };
        let url = s.admin("/readyz");
        super::support::wait_for(WAIT, "readiness", || {
            let url = url.clone();
            async move { (super::support::get_json(&url).await.0 == 200).then_some(()) }
        })
        .await;
        s
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin_debug_addr)
    }

    pub async fn channel(&self) -> Channel {
        super::support::channel(self.server.xds_addr).await
    }

    /// The current version of `ty` in `group`.
    pub fn version(&self, group: &str, ty: ResourceType) -> String {
        self.server.cache.current().expect("snapshot").groups[group]
            .get(ty)
            .version
            .clone()
    }
}

pub fn node(id: &str, cluster: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        cluster: cluster.into(),
        ..Default::default()
    })
}

/// A SotW ADS client that keeps its stream open, as one node.
pub struct Sotw {
    pub node_id: String,
    pub cluster: String,
    pub stream: super::support::sotw::Sotw,
}

impl Sotw {
    pub async fn open(ch: Channel, node_id: &str, cluster: &str) -> Sotw {
        Sotw {
            node_id: node_id.into(),
            cluster: cluster.into(),
            stream: super::support::sotw::Sotw::open(ch).await,
        }
    }

    pub fn req(&self, ty: &str, names: &[&str], prev: Option<&DiscoveryResponse>) -> DiscoveryRequest {
        DiscoveryRequest {
            node: node(&self.node_id, &self.cluster),
            type_url: ty.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: prev.map(|p| p.version_info.clone()).unwrap_or_default(),
            response_nonce: prev.map(|p| p.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub async fn next(&mut self) -> DiscoveryResponse {
        self.stream.next().await
    }

    /// Requests a type, waits for the response and ACKs it.
    pub async fn sync(&mut self, ty: &str, names: &[&str]) -> DiscoveryResponse {
        self.stream.send(self.req(ty, names, None)).await;
        let r = self.next().await;
        assert_eq!(r.type_url, ty);
        self.stream.send(self.req(ty, names, Some(&r))).await;
        r
    }

    /// Requests a type, waits for the response and NACKs it with [`NACK_ERROR`].
    pub async fn reject(&mut self, ty: &str, names: &[&str]) -> DiscoveryResponse {
        self.stream.send(self.req(ty, names, None)).await;
        let r = self.next().await;
        let mut nack = self.req(ty, names, None);
        nack.response_nonce = r.nonce.clone();
        nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: NACK_ERROR.into(),
            ..Default::default()
        });
        self.stream.send(nack).await;
        r
    }
}

/// A Delta ADS client that keeps its stream open.
pub struct Delta {
    pub node_id: String,
    pub cluster: String,
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    pub async fn open(ch: Channel, node_id: &str, cluster: &str) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let rx = AggregatedDiscoveryServiceClient::new(ch)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        Delta {
            node_id: node_id.into(),
            cluster: cluster.into(),
            tx,
            rx,
        }
    }

    pub async fn sync(&mut self, ty: &str, subscribe: &[&str]) -> DeltaDiscoveryResponse {
        let req = DeltaDiscoveryRequest {
            node: node(&self.node_id, &self.cluster),
            type_url: ty.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.tx.send(req).await.expect("send");
        let r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("stream open");
        assert_eq!(r.type_url, ty);
        let ack = DeltaDiscoveryRequest {
            node: node(&self.node_id, &self.cluster),
            type_url: ty.into(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        self.tx.send(ack).await.expect("ack");
        r
    }
}

/// The known set of connected clients:
/// - `olt-sotw-1` (group nbi, SotW): every type ACKed, RDS also asks for `missing-routes`;
/// - `olt-sotw-2` (group nbi, SotW): CDS NACKed with [`NACK_ERROR`], nothing else asked;
/// - `olt-delta-1` (cluster front-proxy, Delta): CDS and LDS ACKed.
pub struct Clients {
    pub sotw1: Sotw,
    pub sotw2: Sotw,
    pub delta1: Delta,
}

pub async fn connect_known_clients(s: &Setup) -> Clients {
    let mut sotw1 = Sotw::open(s.channel().await, "olt-sotw-1", "nbi").await;
    sotw1.sync(CDS, &[]).await;
    sotw1.sync(EDS, &["voltha-grpc"]).await;
    sotw1.sync(LDS, &[]).await;
    sotw1.sync(RDS, &["missing-routes", "nbi-routes"]).await;
    let mut sotw2 = Sotw::open(s.channel().await, "olt-sotw-2", "nbi").await;
    sotw2.reject(CDS, &[]).await;
    let mut delta1 = Delta::open(s.channel().await, "olt-delta-1", "front-proxy").await;
    delta1.sync(CDS, &["*"]).await;
    delta1.sync(LDS, &["*"]).await;
    Clients { sotw1, sotw2, delta1 }
}

/// Waits until `/debug/status` shows `want` as the states (cds, eds, lds, rds) of each node.
pub async fn wait_states(s: &Setup, want: &[(&str, [&str; 4])]) -> serde_json::Value {
    wait_states_for(s, want, WAIT).await
}

pub async fn wait_states_for(s: &Setup, want: &[(&str, [&str; 4])], limit: Duration) -> serde_json::Value {
    let url = s.admin("/debug/status");
    let want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(n, st)| (n.to_string(), st.iter().map(|x| x.to_string()).collect()))
        .collect();
    super::support::wait_for(limit, "the expected sync states", || {
        let url = url.clone();
        let want = want.clone();
        async move {
            let (_, v) = super::support::get_json(&url).await;
            let nodes = v["nodes"].as_array()?;
            let got: Vec<(String, Vec<String>)> = nodes
                .iter()
                .map(|n| {
                    let id = n["node_id"].as_str().unwrap_or_default().to_string();
                    let st = ["cds", "eds", "lds", "rds"]
                        .iter()
                        .map(|t| n["types"][t]["state"].as_str().unwrap_or_default().to_string())
                        .collect();
                    (id, st)
                })
                .collect();
            (got == want).then_some(v)
        }
    })
    .await
}
