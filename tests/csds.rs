//! CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) on the xDS port, with
//! envoy-types' stock tonic client against a known set of connected xDS clients.

#[path = "support/status_clients.rs"]
mod status_clients;
mod support;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{NodeMatcher, StringMatcher};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{ClientConfig, ClientStatusRequest, ConfigStatus};
use status_clients::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use voltha_xds::xds::resources::ResourceType;

type Row = (String, String, ClientResourceStatus, ConfigStatus, String);

/// Per node id: (type short name, resource name, client status, config status, version_info).
fn rows(configs: &[ClientConfig]) -> BTreeMap<String, Vec<Row>> {
    configs
        .iter()
        .map(|c| {
            let id = c.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            let rows = c
                .generic_xds_configs
                .iter()
                .map(|g| {
                    let ty = ResourceType::from_type_url(&g.type_url)
                        .map(|t| t.short())
                        .unwrap_or("?");
                    (
                        ty.to_string(),
                        g.name.clone(),
                        ClientResourceStatus::try_from(g.client_status).expect("client status"),
                        ConfigStatus::try_from(g.config_status).expect("config status"),
                        g.version_info.clone(),
                    )
                })
                .collect();
            (id, rows)
        })
        .collect()
}

fn id_matcher(p: MatchPattern) -> NodeMatcher {
    NodeMatcher {
        node_id: Some(StringMatcher {
            match_pattern: Some(p),
            ignore_case: false,
        }),
        node_metadatas: vec![],
    }
}

async fn fetch(s: &Setup, req: ClientStatusRequest) -> Result<Vec<ClientConfig>, tonic::Status> {
    ClientStatusDiscoveryServiceClient::new(s.channel().await)
        .fetch_client_status(req)
        .await
        .map(|r| r.into_inner().config)
}

#[tokio::test]
async fn csds_reports_each_envoy_per_resource_with_versions_acks_nacks_and_missing_names() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;

    let configs = fetch(&s, ClientStatusRequest::default()).await.expect("fetch");
    let got = rows(&configs);
    let v = |g: &str, t: ResourceType| s.version(g, t);
    use ClientResourceStatus as C;
    use ConfigStatus as S;
    let row = |ty: ResourceType, name: &str, c: C, st: S, version: String| -> Row {
        (ty.short().to_string(), name.to_string(), c, st, version)
    };
    assert_eq!(
        got["olt-sotw-1"],
        vec![
            row(
                ResourceType::Cluster,
                "voltha-grpc",
                C::Acked,
                S::Synced,
                v("nbi", ResourceType::Cluster)
            ),
            row(
                ResourceType::Endpoint,
                "voltha-grpc",
                C::Acked,
                S::Synced,
                v("nbi", ResourceType::Endpoint)
            ),
            row(
                ResourceType::Listener,
                "nbi",
                C::Acked,
                S::Synced,
                v("nbi", ResourceType::Listener)
            ),
            row(
                ResourceType::Route,
                "missing-routes",
                C::DoesNotExist,
                S::Synced,
                v("nbi", ResourceType::Route)
            ),
            row(
                ResourceType::Route,
                "nbi-routes",
                C::Acked,
                S::Synced,
                v("nbi", ResourceType::Route)
            ),
        ]
    );
    assert_eq!(
        got["olt-sotw-2"],
        vec![row(
            ResourceType::Cluster,
            "voltha-grpc",
            C::Nacked,
            S::Error,
            String::new()
        )]
    );
    assert_eq!(
        got["olt-delta-1"],
        vec![
            row(
                ResourceType::Cluster,
                "portainer",
                C::Acked,
                S::Synced,
                v("front-proxy", ResourceType::Cluster)
            ),
            row(
                ResourceType::Listener,
                "front",
                C::Acked,
                S::Synced,
                v("front-proxy", ResourceType::Listener)
            ),
        ]
    );
    assert_eq!(got.len(), 3);

    // The node, the NACK's details and the resource contents.
    let sotw2 = configs
        .iter()
        .find(|c| c.node.as_ref().is_some_and(|n| n.id == "olt-sotw-2"))
        .expect("olt-sotw-2");
    assert_eq!(sotw2.node.as_ref().map(|n| n.cluster.as_str()), Some("nbi"));
    let err = sotw2.generic_xds_configs[0].error_state.as_ref().expect("error_state");
    assert_eq!(err.details, NACK_ERROR);
    assert_eq!(err.version_info, v("nbi", ResourceType::Cluster));
    assert!(err.last_update_attempt.is_some());
    let sotw1 = configs
        .iter()
        .find(|c| c.node.as_ref().is_some_and(|n| n.id == "olt-sotw-1"))
        .expect("olt-sotw-1");
    let cluster = sotw1.generic_xds_configs[0].xds_config.as_ref().expect("contents");
    assert_eq!(cluster.type_url, ResourceType::Cluster.type_url());
    assert!(!cluster.value.is_empty());
    assert!(sotw1.generic_xds_configs[0].last_updated.is_some());
    assert!(
        sotw1.generic_xds_configs[3].xds_config.is_none(),
        "a missing name has no contents"
    );

    let lean = fetch(
        &s,
        ClientStatusRequest {
            exclude_resource_contents: true,
            ..Default::default()
        },
    )
    .await
    .expect("fetch");
    assert!(lean
        .iter()
        .flat_map(|c| &c.generic_xds_configs)
        .all(|g| g.xds_config.is_none()));
    assert_eq!(rows(&lean), got, "the same statuses without contents");
}

#[tokio::test]
async fn node_matchers_select_envoys_and_unsupported_ones_are_refused() {
    let s = Setup::new().await;
    let _clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;
    let ids = |cs: Vec<ClientConfig>| -> Vec<String> { cs.into_iter().filter_map(|c| c.node.map(|n| n.id)).collect() };
    let req = |ms: Vec<NodeMatcher>| ClientStatusRequest {
        node_matchers: ms,
        ..Default::default()
    };
    let prefix = fetch(&s, req(vec![id_matcher(MatchPattern::Prefix("olt-sotw-".into()))]))
        .await
        .expect("prefix");
    assert_eq!(ids(prefix), vec!["olt-sotw-1", "olt-sotw-2"]);
    let either = fetch(
        &s,
        req(vec![
            id_matcher(MatchPattern::Exact("olt-delta-1".into())),
            id_matcher(MatchPattern::Exact("olt-sotw-2".into())),
        ]),
    )
    .await
    .expect("exact");
    assert_eq!(ids(either), vec!["olt-delta-1", "olt-sotw-2"], "matchers are ORed");
    let none = fetch(&s, req(vec![id_matcher(MatchPattern::Exact("nobody".into()))]))
        .await
        .expect("none");
    assert!(none.is_empty());
    let err = fetch(
        &s,
        req(vec![NodeMatcher {
            node_id: None,
            node_metadatas: vec![Default::default()],
        }]),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node_metadatas"), "{}", err.message());
}

#[tokio::test]
async fn stream_client_status_answers_each_request_and_sees_envoys_leave() {
    let s = Setup::new().await;
    let clients = connect_known_clients(&s).await;
    wait_states(
        &s,
        &[
            ("olt-delta-1", ["SYNCED", "NOT SENT", "SYNCED", "NOT SENT"]),
            ("olt-sotw-1", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("olt-sotw-2", ["NACKED", "NOT SENT", "NOT SENT", "NOT SENT"]),
        ],
    )
    .await;
    let (tx, rx) = mpsc::channel(4);
    let mut answers = ClientStatusDiscoveryServiceClient::new(s.channel().await)
        .stream_client_status(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(WAIT, answers.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open")
            .config
    };
    tx.send(ClientStatusRequest::default()).await.expect("send");
    assert_eq!(next().await.len(), 3);

    // The Delta client leaves: a later request no longer reports it.
    drop(clients.delta1);
    support::wait_for(WAIT, "the Delta stream to end", || async {
        (s.server.clients.snapshot().iter().all(|c| c.node_id != "olt-delta-1")).then_some(())
    })
    .await;
    tx.send(ClientStatusRequest::default()).await.expect("send");
    let ids: Vec<String> = next().await.into_iter().filter_map(|c| c.node.map(|n| n.id)).collect();
    assert_eq!(ids, vec!["olt-sotw-1", "olt-sotw-2"]);

    // A bad request ends the stream with its error.
    tx.send(ClientStatusRequest {
        node_matchers: vec![NodeMatcher {
            node_id: Some(StringMatcher::default()),
            node_metadatas: vec![],
        }],
        ..Default::default()
    })
    .await
    .expect("send");
    let err = tokio::time::timeout(WAIT, answers.message())
        .await
        .expect("in time")
        .expect_err("an error");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// An Envoy that uses the per-type services (one stream per type) is one CSDS entry.
#[tokio::test]
async fn an_envoy_on_per_type_streams_is_reported_once() {
    let s = Setup::new().await;
    let node = node("olt-split", "nbi");
    let req = |names: &[&str], prev: Option<(&str, &str)>| DiscoveryRequest {
        node: node.clone(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: prev.map(|p| p.0.to_string()).unwrap_or_default(),
        response_nonce: prev.map(|p| p.1.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let (ctx, crx) = mpsc::channel(4);
    let mut cds = ClusterDiscoveryServiceClient::new(s.channel().await)
        .stream_clusters(ReceiverStream::new(crx))
        .await
        .expect("cds stream")
        .into_inner();
    ctx.send(req(&[], None)).await.expect("send");
    let c = tokio::time::timeout(WAIT, cds.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    ctx.send(req(&[], Some((&c.version_info, &c.nonce))))
        .await
        .expect("ack");
    let (etx, erx) = mpsc::channel(4);
    let mut eds = EndpointDiscoveryServiceClient::new(s.channel().await)
        .stream_endpoints(ReceiverStream::new(erx))
        .await
        .expect("eds stream")
        .into_inner();
    etx.send(req(&["voltha-grpc"], None)).await.expect("send");
    let e = tokio::time::timeout(WAIT, eds.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open");
    etx.send(req(&["voltha-grpc"], Some((&e.version_info, &e.nonce))))
        .await
        .expect("ack");
    wait_states(&s, &[("olt-split", ["SYNCED", "SYNCED", "NOT SENT", "NOT SENT"])]).await;

    let configs = fetch(&s, ClientStatusRequest::default()).await.expect("fetch");
    assert_eq!(configs.len(), 1);
    let got = rows(&configs);
    let types: Vec<&str> = got["olt-split"].iter().map(|r| r.0.as_str()).collect();
    assert_eq!(types, vec!["cds", "eds"]);
    assert!(got["olt-split"].iter().all(|r| r.2 == ClientResourceStatus::Acked));
}

/// A real Envoy (`$ENVOY_BIN`, else `.venv/bin/envoy`): once it has ACKed everything, CSDS
/// says ACKED and SYNCED for each of its resources, for SotW and for Delta.
#[tokio::test]
async fn a_real_envoy_is_reported_acked_once_it_holds_the_snapshot() {
    let s = Setup::new().await;
    let mut envoys = Vec::new();
    for (id, delta) in [("envoy-sotw", false), ("envoy-delta", true)] {
        let admin_port = support::free_port();
        let yaml = voltha_xds::bootstrap::bootstrap(&voltha_xds::bootstrap::BootstrapOptions {
            node_id: id.into(),
            node_cluster: "nbi".into(),
            xds: s.server.xds_addr.to_string(),
            admin_port,
            admin_address: "127.0.0.1".into(),
            delta,
            tls: None,
        })
        .expect("bootstrap");
        envoys.push(support::Envoy::start(s.dir.path(), id, &yaml, admin_port));
    }
    wait_states_for(
        &s,
        &[
            ("envoy-delta", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
            ("envoy-sotw", ["SYNCED", "SYNCED", "SYNCED", "SYNCED"]),
        ],
        std::time::Duration::from_secs(60),
    )
    .await;
    let got = rows(&fetch(&s, ClientStatusRequest::default()).await.expect("fetch"));
    for id in ["envoy-delta", "envoy-sotw"] {
        let names: Vec<(String, String)> = got[id].iter().map(|r| (r.0.clone(), r.1.clone())).collect();
        assert_eq!(
            names,
            vec![
                ("cds".to_string(), "voltha-grpc".to_string()),
                ("eds".into(), "voltha-grpc".into()),
                ("lds".into(), "nbi".into()),
                ("rds".into(), "nbi-routes".into()),
            ],
            "{id}: {:?}\n{}",
            got[id],
            envoys.iter().map(|e| e.log_text()).collect::<String>()
        );
        for r in &got[id] {
            assert_eq!(
                (r.2, r.3),
                (ClientResourceStatus::Acked, ConfigStatus::Synced),
                "{id} {r:?}"
            );
            let ty = ResourceType::ALL.into_iter().find(|t| t.short() == r.0).expect("type");
            assert_eq!(r.4, s.version("nbi", ty), "{id} {r:?}");
        }
    }
}

/// A push the Envoy has not answered yet is STALE (REQUESTED in CSDS, with the version it
/// holds), and SYNCED once ACKed.
#[tokio::test]
async fn an_unanswered_push_is_stale_until_acked() {
    let s = Setup::new().await;
    let mut c = Sotw::open(s.channel().await, "olt-slow", "nbi").await;
    c.sync(CDS, &[]).await;
    let eds = c.sync(EDS, &["voltha-grpc"]).await;
    wait_states(&s, &[("olt-slow", ["SYNCED", "SYNCED", "NOT SENT", "NOT SENT"])]).await;

    let path = s.dir.path().join("assignment.json");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, r#"{"0001": {"id": "a", "host": "10.0.0.9"}}"#).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let pushed = c.next().await;
    assert_eq!(pushed.type_url, EDS);
    assert_ne!(pushed.version_info, eds.version_info);
    let v = wait_states(&s, &[("olt-slow", ["SYNCED", "STALE", "NOT SENT", "NOT SENT"])]).await;
    let t = &v["nodes"][0]["types"]["eds"];
    assert_eq!(t["acked_version"], eds.version_info.as_str());
    assert_eq!(t["sent_version"], pushed.version_info.as_str());
    assert_eq!(t["current_version"], pushed.version_info.as_str());
    let got = rows(&fetch(&s, ClientStatusRequest::default()).await.expect("fetch"));
    assert_eq!(
        got["olt-slow"][1],
        (
            "eds".to_string(),
            "voltha-grpc".to_string(),
            ClientResourceStatus::Requested,
            ConfigStatus::Stale,
            eds.version_info.clone()
        )
    );

    c.stream.send(c.req(EDS, &["voltha-grpc"], Some(&pushed))).await;
    wait_states(&s, &[("olt-slow", ["SYNCED", "SYNCED", "NOT SENT", "NOT SENT"])]).await;
    let got = rows(&fetch(&s, ClientStatusRequest::default()).await.expect("fetch"));
    assert_eq!(got["olt-slow"][1].2, ClientResourceStatus::Acked);
    assert_eq!(got["olt-slow"][1].4, pushed.version_info);
}
