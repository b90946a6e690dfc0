//! The CSDS answer checked by decoding it with the stock messages: statuses, sharing of the
//! snapshot's bytes, the size limit, and the service's bounds under paused time.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;

use super::encode::{encode, merge_nodes, Encoded};
use super::filter::tests::exact;
use super::filter::NodeFilter;
use super::*;
use crate::cache::{Cache, EncodedGroup, Snapshot};
use crate::names::NameSets;
use crate::resources::{Resource, ResourceType};
use crate::status::{ClientStatus, ClientTable, Nack, TypeStatus};

/// The response's bytes as a client receives them, decoded with the stock message.
fn decode(enc: Encoded) -> ClientStatusResponse {
    let len = enc.len();
    let mut chunks = enc.into_chunks();
    let wire: Vec<u8> = std::iter::from_fn(|| chunks.next_chunk())
        .flat_map(|c| c.to_vec())
        .collect();
    assert_eq!(wire[0], 0, "not compressed");
    assert_eq!(u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize, len);
    assert_eq!(wire.len(), 5 + len);
    let msg = ClientStatusResponse::decode(&wire[5..]).expect("decodes as the stock message");
    // Nothing more and nothing less than the stock encoding of the same content.
    assert_eq!(msg.encoded_len(), len);
    msg
}

fn configs<S: std::borrow::Borrow<ClientStatus>>(
    streams: &[S],
    snapshot: Option<&Snapshot>,
    filter: &NodeFilter,
    contents: bool,
) -> Vec<ClientConfig> {
    decode(encode(streams, snapshot, filter, contents, usize::MAX).expect("no limit")).config
}

fn snapshot(clusters: &[(&str, u8)], routes: &[&str]) -> Arc<Snapshot> {
    let cache = Cache::new();
    let mut g = EncodedGroup::default();
    for (n, b) in clusters {
        g[ResourceType::Cluster].push(Resource::new(ResourceType::Cluster, n, vec![*b]));
    }
    for n in routes {
        g[ResourceType::Route].push(Resource::new(ResourceType::Route, n, vec![1]));
    }
    let groups = BTreeMap::from([("g".to_string(), g)]);
    cache
        .publish_encoded(groups, "g", std::time::Instant::now())
        .expect("ok")
        .expect("published")
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn stream(id: u64, node: &str) -> ClientStatus {
    let mut s = ClientStatus::new(id, "sotw", "ads");
    s.node_id = node.into();
    s.node_cluster = "g".into();
    s.group = Some("g".into());
    s
}

fn names(ns: &[&str]) -> crate::names::NameSet {
    NameSets::default().share(ns.iter().map(|n| Arc::from(*n)).collect())
}

fn acked(version: &str) -> TypeStatus {
    TypeStatus {
        subscribed: true,
        last_sent_version: Some(version.into()),
        last_sent_nonce: Some("1".into()),
        last_acked_version: Some(version.into()),
        last_ack_at: Some(SystemTime::now()),
        responses: 1,
        acks: 1,
        ..Default::default()
    }
}

fn statuses(c: &ClientConfig) -> Vec<(String, ClientResourceStatus, ConfigStatus)> {
    c.generic_xds_configs
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                ClientResourceStatus::try_from(g.client_status).expect("enum"),
                ConfigStatus::try_from(g.config_status).expect("enum"),
            )
        })
        .collect()
}

#[test]
fn per_resource_status_from_stream_state_and_snapshot() {
    let snap = snapshot(&[("c1", 1), ("c2", 2)], &["r1"]);
    let g = &snap.groups["g"];
    let cds_v = g.get(ResourceType::Cluster).version.clone();
    let rds_v = g.get(ResourceType::Route).version.clone();

    // a: CDS wildcard ACKed at the current version; RDS names r1 and a missing r2, ACKed.
    let mut a = stream(1, "a");
    let mut cds = acked(&cds_v);
    cds.wildcard = true;
    a.types.insert("cds", cds);
    let mut rds = acked(&rds_v);
    rds.name_set = names(&["r1", "r2"]);
    a.types.insert("rds", rds);

    // b: CDS NACKed; RDS sent, not answered yet.
    let mut b = stream(2, "b");
    let mut cds = acked("old");
    cds.wildcard = true;
    cds.last_sent_version = Some(cds_v.clone());
    cds.last_sent_nonce = Some("2".into());
    cds.responses = 2;
    cds.nacks = 1;
    cds.last_nack = Some(Nack {
        node_id: "b".into(),
        node_cluster: "g".into(),
        ty: ResourceType::Cluster,
        version: cds_v.clone(),
        nonce: "2".into(),
        error: "bad cluster c2".into(),
        at: SystemTime::now(),
    });
    b.types.insert("cds", cds);
    let mut rds = acked("old");
    rds.name_set = names(&["r1"]);
    rds.last_sent_version = Some(rds_v.clone());
    rds.responses = 2;
    b.types.insert("rds", rds);

    let streams = vec![a, b];
    let all = NodeFilter::new(&[]).expect("filter");
    let out = configs(&streams, Some(&snap), &all, true);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].node.as_ref().map(|n| n.id.as_str()), Some("a"));
    use ClientResourceStatus as C;
    use ConfigStatus as S;
    assert_eq!(
        statuses(&out[0]),
        vec![
            ("c1".into(), C::Acked, S::Synced),
            ("c2".into(), C::Acked, S::Synced),
            ("r1".into(), C::Acked, S::Synced),
            ("r2".into(), C::DoesNotExist, S::Synced),
        ]
    );
    assert_eq!(out[0].generic_xds_configs[0].version_info, cds_v);
    assert!(out[0].generic_xds_configs[0].xds_config.is_some());
    assert!(out[0].generic_xds_configs[3].xds_config.is_none());
    assert_eq!(
        statuses(&out[1]),
        vec![
            ("c1".into(), C::Nacked, S::Error),
            ("c2".into(), C::Nacked, S::Error),
            ("r1".into(), C::Requested, S::Stale),
        ]
    );
    let err = out[1].generic_xds_configs[0].error_state.as_ref().expect("error state");
    assert_eq!(err.details, "bad cluster c2");
    assert_eq!(err.version_info, cds_v);
    assert_eq!(
        out[1].generic_xds_configs[0].version_info, "old",
        "the last accepted version"
    );

    // Without contents; a filter picks one node.
    let only_b = NodeFilter::new(&[exact("b")]).expect("filter");
    let out = configs(&streams, Some(&snap), &only_b, false);
    assert_eq!(out.len(), 1);
    assert!(out[0].generic_xds_configs.iter().all(|g| g.xds_config.is_none()));
}

#[test]
fn an_envoy_with_several_streams_is_reported_once_and_the_newest_stream_wins() {
    let snap = snapshot(&[("c1", 1)], &[]);
    let cds_v = snap.groups["g"].get(ResourceType::Cluster).version.clone();
    let mut old = stream(1, "e");
    let mut cds = acked("older");
    cds.wildcard = true;
    old.types.insert("cds", cds);
    let mut eds_stream = stream(2, "e");
    eds_stream.service = "eds";
    let mut eds = TypeStatus {
        subscribed: true,
        ..Default::default()
    };
    eds.name_set = names(&["c1"]);
    eds_stream.types.insert("eds", eds);
    let mut new = stream(3, "e");
    let mut cds = acked(&cds_v);
    cds.wildcard = true;
    new.types.insert("cds", cds);
    let streams = vec![new, old, eds_stream, stream(4, "")];
    let merged = merge_nodes(&streams);
    assert_eq!(merged.len(), 1, "the stream with no node yet is left out");
    assert_eq!(merged[0].streams.len(), 3);
    let out = configs(&streams, Some(&snap), &NodeFilter::new(&[]).expect("f"), true);
    assert_eq!(out.len(), 1);
    use ClientResourceStatus as C;
    use ConfigStatus as S;
    assert_eq!(
        statuses(&out[0]),
        vec![
            ("c1".into(), C::Acked, S::Synced),
            ("c1".into(), C::DoesNotExist, S::NotSent),
        ]
    );
    assert_eq!(
        out[0].generic_xds_configs[1].type_url,
        ResourceType::Endpoint.type_url()
    );
}

/// Real state machines feed the table: subscribe, ACK, NACK, and a reconnect that claims
/// the current version (nothing sent, yet in sync).
#[test]
fn state_machines_feed_csds() {
    use crate::stream::{Limits, Scope, SotwStream};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    let snap = snapshot(&[("c1", 1)], &["r1"]);
    let table = Arc::new(ClientTable::default());
    let req = |ty: ResourceType, names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
        node: Some(Node {
            id: "envoy-1".into(),
            cluster: "g".into(),
            ..Default::default()
        }),
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    // The server's part: fold the machine's events into the stream's record.
    let fold = |reg: &crate::status::Registration, events: Vec<crate::stream::StreamEvent>| {
        reg.update(|st| {
            for e in &events {
                st.apply(e, std::time::SystemTime::now());
            }
        });
    };
    let names = Arc::new(NameSets::default());
    let reg = table.register("sotw", "ads");
    let mut sm = SotwStream::new(Scope::Ads, Limits::default(), names.clone());
    sm.on_snapshot(Some(snap.clone()));
    sm.on_request(req(ResourceType::Route, &["r1", "r2"], "", ""), now())
        .expect("ok");
    let rds = sm.poll(now()).pop().expect("rds response");
    sm.on_request(
        req(ResourceType::Route, &["r1", "r2"], &rds.version_info, &rds.nonce),
        now(),
    )
    .expect("ack");
    sm.on_request(req(ResourceType::Cluster, &[], "", ""), now())
        .expect("ok");
    let cds = sm.poll(now()).pop().expect("cds response");
    let mut nack = req(ResourceType::Cluster, &[], "", &cds.nonce);
    nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
        message: "cluster c1: bad".into(),
        ..Default::default()
    });
    sm.on_request(nack, now()).expect("nack");
    fold(&reg, sm.take_events());

    // A second Envoy reconnects claiming the current CDS version: nothing is sent.
    let reg2 = table.register("sotw", "ads");
    let mut sm2 = SotwStream::new(Scope::Ads, Limits::default(), names);
    sm2.on_snapshot(Some(snap.clone()));
    let mut claim = req(ResourceType::Cluster, &[], &cds.version_info, "");
    if let Some(n) = claim.node.as_mut() {
        n.id = "envoy-2".into();
    }
    sm2.on_request(claim, now()).expect("ok");
    assert!(sm2.poll(now()).is_empty(), "it already holds the current version");
    fold(&reg2, sm2.take_events());

    // An empty cache: statuses are still reported (no snapshot to compare with).
    assert_eq!(
        configs(&table.snapshot(), None, &NodeFilter::new(&[]).expect("f"), true).len(),
        2
    );
    let all = NodeFilter::new(&[]).expect("f");
    let out = configs(&table.snapshot(), Some(&snap), &all, false);
    use ClientResourceStatus as C;
    use ConfigStatus as S;
    assert_eq!(
        statuses(&out[0]),
        vec![
            ("c1".into(), C::Nacked, S::Error),
            ("r1".into(), C::Acked, S::Synced),
            ("r2".into(), C::DoesNotExist, S::Synced),
        ]
    );
    assert_eq!(
        out[0].generic_xds_configs[0]
            .error_state
            .as_ref()
            .map(|e| e.details.as_str()),
        Some("cluster c1: bad")
    );
    assert_eq!(out[1].node.as_ref().map(|n| n.id.as_str()), Some("envoy-2"));
    assert_eq!(statuses(&out[1]), vec![("c1".into(), C::Acked, S::Synced)]);
    assert_eq!(out[1].generic_xds_configs[0].version_info, cds.version_info);
    drop((reg, reg2));
    assert!(configs(&table.snapshot(), Some(&snap), &all, false).is_empty());
}

/// A group `g` with a cluster `big` of 5,000 bytes and a cluster `small`; three Envoys hold
/// every cluster (wildcard CDS, ACKed).
fn three_envoys_on_a_big_cluster() -> (Arc<Snapshot>, Vec<ClientStatus>) {
    let cache = Cache::new();
    let mut g = EncodedGroup::default();
    g[ResourceType::Cluster].push(Resource::new(ResourceType::Cluster, "big", vec![7; 5000]));
    g[ResourceType::Cluster].push(Resource::new(ResourceType::Cluster, "small", vec![1; 10]));
    let snap = cache
        .publish_encoded(BTreeMap::from([("g".to_string(), g)]), "g", std::time::Instant::now())
        .expect("ok")
        .expect("published");
    let version = snap.groups["g"].get(ResourceType::Cluster).version.clone();
    let streams = (1..=3)
        .map(|i| {
            let mut s = stream(i, &format!("envoy-{i}"));
            let mut cds = acked(&version);
            cds.wildcard = true;
            s.types.insert("cds", cds);
            s
        })
        .collect();
    (snap, streams)
}

#[test]
fn contents_are_the_snapshots_own_bytes_for_every_envoy() {
    let (snap, streams) = three_envoys_on_a_big_cluster();
    let all = NodeFilter::new(&[]).expect("f");
    let clusters = &snap.groups["g"].get(ResourceType::Cluster).resources;
    let big = clusters["big"].any.clone();
    let small = clusters["small"].any.clone();
    let enc = encode(&streams, Some(&snap), &all, true, usize::MAX).expect("fits");
    let same = |a: &Bytes, b: &Bytes| a.as_ptr() == b.as_ptr() && a.len() == b.len();
    // Each Envoy's entry refers to the snapshot's encoded `Any`: no copy, no re-encoding.
    assert_eq!(enc.pieces().iter().filter(|p| same(p, &big)).count(), 3);
    assert_eq!(enc.pieces().iter().filter(|p| same(p, &small)).count(), 3);
    // What the response holds of its own is the small fields only.
    let own: usize = enc
        .pieces()
        .iter()
        .filter(|p| !same(p, &big) && !same(p, &small))
        .map(Bytes::len)
        .sum();
    assert!(own < 2000, "{own} bytes of small fields for 6 entries");

    // The large resource also leaves as those bytes (HTTP/2 DATA), not as a copy.
    let len = enc.len();
    let mut chunks = enc.into_chunks();
    let chunks: Vec<Bytes> = std::iter::from_fn(|| chunks.next_chunk()).collect();
    assert_eq!(chunks.iter().filter(|c| same(c, &big)).count(), 3);
    assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), 5 + len);

    let got = configs(&streams, Some(&snap), &all, true);
    assert_eq!(got.len(), 3);
    for c in &got {
        let any = c.generic_xds_configs[0].xds_config.as_ref().expect("contents");
        assert_eq!(any.type_url, ResourceType::Cluster.type_url());
        assert_eq!(any.value, vec![7; 5000]);
        assert_eq!(c.generic_xds_configs[0].name, "big");
    }
}

#[test]
fn a_response_over_the_limit_is_refused_before_it_is_built() {
    let (snap, streams) = three_envoys_on_a_big_cluster();
    let all = NodeFilter::new(&[]).expect("f");
    let len = encode(&streams, Some(&snap), &all, true, usize::MAX)
        .expect("fits")
        .len();
    assert!(len > 15_000, "{len}");
    assert_eq!(
        encode(&streams, Some(&snap), &all, true, len)
            .expect("at the limit")
            .len(),
        len
    );
    let err = encode(&streams, Some(&snap), &all, true, len - 1)
        .err()
        .expect("over the limit");
    assert_eq!(err.nodes, 3);
    // Narrowed, the same request fits: without contents, or for one Envoy.
    assert!(encode(&streams, Some(&snap), &all, false, 1024).is_ok());
    let one = NodeFilter::new(&[exact("envoy-2")]).expect("f");
    assert!(encode(&streams, Some(&snap), &one, true, len / 2).is_ok());
}

// The service: its bounds, driven through its tower interface.

const FETCH: &str = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus";
const STREAM: &str = "/envoy.service.status.v3.ClientStatusDiscoveryService/StreamClientStatus";

fn server(csds: CsdsLimits, max_streams: usize) -> XdsServer {
    XdsServer::new(Cache::new())
        .with_csds(csds)
        .with_max_streams(max_streams)
}

fn grpc_body(reqs: &[ClientStatusRequest]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = reqs
        .iter()
        .map(|r| {
            let m = r.encode_to_vec();
            let mut out = vec![0u8];
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(&m);
            Ok(Frame::data(Bytes::from(out)))
        })
        .collect();
    Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)))
}

async fn call(csds: &mut Csds, path: &str, body: Body) -> http::Response<Body> {
    let req = http::Request::builder().uri(path).body(body).expect("request");
    match csds.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// The status of a response refused before its body (a trailers-only response).
fn refused(r: &http::Response<Body>) -> Option<Status> {
    Status::from_header_map(r.headers())
}

/// Takes whole gRPC messages out of `buf`.
fn messages(buf: &mut Vec<u8>) -> Vec<ClientStatusResponse> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        out.push(ClientStatusResponse::decode(&buf[5..5 + len]).expect("decodes"));
        buf.drain(..5 + len);
    }
    out
}

fn one_envoy(s: &XdsServer) -> crate::status::Registration {
    let reg = s.clients.register("sotw", "ads");
    reg.update(|st| st.node_id = "envoy-1".into());
    reg
}

#[tokio::test(start_paused = true)]
async fn a_stream_flood_is_answered_at_the_configured_rate() {
    let limits = CsdsLimits {
        stream_requests_per_second: 2.0,
        stream_burst: 3,
        ..Default::default()
    };
    let s = server(limits, 10);
    let _reg = one_envoy(&s);
    let mut csds = Csds::new(s.clone());
    let flood = vec![ClientStatusRequest::default(); 100];
    let mut body = call(&mut csds, STREAM, grpc_body(&flood)).await.into_body();
    let start = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let mut at = Vec::new();
    while at.len() < 7 {
        let frame = body.frame().await.expect("open").expect("no error");
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            for m in messages(&mut buf) {
                assert_eq!(m.config.len(), 1);
                at.push(start.elapsed().as_millis() as u64);
            }
        }
    }
    // A burst of 3, then one every 500 ms: 7 answers in 2 s, not 100.
    let want = [0, 0, 0, 500, 1000, 1500, 2000];
    for (got, want) in at.iter().zip(want) {
        assert!((want..=want + 5).contains(got), "answers at {at:?} ms, want {want:?}");
    }
    assert!(s
        .metrics
        .render("voltha_xds")
        .contains("voltha_xds_csds_rate_limited_total 4"));
}

#[tokio::test(start_paused = true)]
async fn answers_in_flight_are_capped_fetches_refused_and_stream_requests_wait() {
    let limits = CsdsLimits {
        max_concurrent_requests: 2,
        ..Default::default()
    };
    let s = server(limits, 10);
    let _reg = one_envoy(&s);
    let mut csds = Csds::new(s.clone());
    let req = [ClientStatusRequest::default()];
    // Two answers not yet read by their clients hold both slots.
    let a = call(&mut csds, FETCH, grpc_body(&req)).await;
    let b = call(&mut csds, FETCH, grpc_body(&req)).await;
    assert!(refused(&a).is_none() && refused(&b).is_none());
    let c = call(&mut csds, FETCH, grpc_body(&req)).await;
    let status = refused(&c).expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("server.csds.max_concurrent_requests"),
        "{}",
        status.message()
    );
    assert!(s
        .metrics
        .render("voltha_xds")
        .contains("voltha_xds_csds_requests_total{result=\"busy\"} 1"));
    assert!(s
        .metrics
        .render("voltha_xds")
        .contains("voltha_xds_csds_responses_in_flight 2"));

    // A stream's request waits for a slot instead.
    let mut stream = call(&mut csds, STREAM, grpc_body(&req)).await.into_body();
    let waited = tokio::time::timeout(Duration::from_secs(5), stream.frame()).await;
    assert!(waited.is_err(), "answered while both slots were held");
    // One answer is read: its slot goes to the stream.
    let got = a.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(messages(&mut got.to_vec()).len(), 1);
    let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
        .await
        .expect("answered once a slot is free")
        .expect("open")
        .expect("ok");
    assert!(frame.is_data());
    // A client that goes away frees its slot too.
    drop(b);
    drop(stream);
    tokio::task::yield_now().await;
    let d = call(&mut csds, FETCH, grpc_body(&req)).await;
    assert!(refused(&d).is_none(), "{:?}", refused(&d));
}

#[tokio::test]
async fn csds_calls_hold_max_streams_slots() {
    let s = server(CsdsLimits::default(), 1);
    let mut csds = Csds::new(s.clone());
    let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let open = Body::new(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let held = call(&mut csds, STREAM, open).await;
    assert!(refused(&held).is_none());
    // The only slot is the CSDS stream's: an xDS stream and a fetch are refused.
    let status = s.stream_slot().expect_err("no slot left");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let fetch = call(&mut csds, FETCH, grpc_body(&[ClientStatusRequest::default()])).await;
    let status = refused(&fetch).expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("server.max_streams"), "{}", status.message());
    assert!(s
        .metrics
        .render("voltha_xds")
        .contains("voltha_xds_streams{api=\"csds\",service=\"csds\"} 1"));
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() {
    let s = server(CsdsLimits::default(), 10);
    let mut csds = Csds::new(s.clone());
    // Field 1 (node_matchers, a message) sent as a varint.
    let garbage = Body::new(http_body_util::Full::new(Bytes::from_static(&[
        0, 0, 0, 0, 2, 0x08, 0x01,
    ])));
    let r = call(&mut csds, FETCH, garbage).await;
    let status = refused(&r).expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("undecodable"), "{}", status.message());
}
