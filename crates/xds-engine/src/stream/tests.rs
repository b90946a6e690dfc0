//! The protocol's corner cases, one test each, on the state machines alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, Resource as PbResource};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

use super::*;
use crate::cache::{Cache, EncodedGroup, Snapshot};
use crate::names::Names;
use crate::resources::{Resource, ResourceType};
use crate::status::ClientStatus;
use crate::wire::{DeltaDiscoveryResponse, DiscoveryResponse};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

/// A group name and its resources: (type, name, one byte of body).
type GroupSpec<'a> = (&'a str, &'a [(ResourceType, &'a str, u8)]);

/// A snapshot builder: (type, name, content byte) triples for the default group.
struct World {
    cache: Cache,
}

impl World {
    fn new() -> Self {
        World { cache: Cache::new() }
    }

    fn publish(&self, items: &[(ResourceType, &str, u8)]) -> Arc<Snapshot> {
        self.publish_groups(&[("default", items)])
    }

    fn publish_groups(&self, groups: &[GroupSpec]) -> Arc<Snapshot> {
        let mut map = BTreeMap::new();
        for (g, items) in groups {
            let mut input = EncodedGroup::default();
            for (ty, name, b) in items.iter() {
                input[*ty].push(Resource::new(*ty, name, vec![*b]));
            }
            map.insert(g.to_string(), input);
        }
        self.cache
            .publish_encoded(map, "default", std::time::Instant::now())
            .expect("publish")
            .unwrap_or_else(|| self.cache.current().expect("current"))
    }
}

/// The name sets of a test's server.
fn status() -> Arc<NameSets> {
    Arc::default()
}

/// The time a test's input arrives (the machines only compare it with itself).
fn now() -> Instant {
    Instant::now()
}

/// A stream's status record, as the server folds it from the events.
fn fold(events: &[StreamEvent]) -> ClientStatus {
    let mut st = ClientStatus::new(1, "test", "ads");
    for e in events {
        st.apply(e, std::time::SystemTime::now());
    }
    st
}

fn node(cluster: &str) -> Option<Node> {
    Some(Node {
        id: "envoy-1".into(),
        cluster: cluster.into(),
        ..Default::default()
    })
}

fn sotw_req(ty: ResourceType, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node("default"),
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn nack(mut r: DiscoveryRequest, msg: &str) -> DiscoveryRequest {
    r.error_detail = Some(RpcStatus {
        code: 3,
        message: msg.into(),
        details: vec![],
    });
    r
}

/// Names of the resources in a SotW response, found by looking their bodies up in the snapshot
/// (so a test's resources need distinct bodies).
fn names_in(resp: &DiscoveryResponse, snap: &Snapshot) -> Vec<String> {
    let g = &snap.groups["default"];
    let ty = ResourceType::from_type_url(&resp.type_url).expect("known type");
    resp.resources
        .iter()
        .map(|b| {
            let any = Any::decode(b.clone()).expect("any");
            assert_eq!(any.type_url, ty.type_url());
            g.get(ty)
                .resources
                .values()
                .find(|r| r.body.as_ref() == any.value.as_slice())
                .map(|r| r.name.to_string())
                .or_else(|| {
                    ClusterLoadAssignment::decode(any.value.as_slice())
                        .ok()
                        .map(|c| format!("placeholder:{}", c.cluster_name))
                })
                .unwrap_or_else(|| "?".into())
        })
        .collect()
}

fn sotw(world: &World) -> SotwStream {
    let mut s = SotwStream::new(Scope::Ads, Limits::default(), status());
    s.on_snapshot(world.cache.current());
    s
}

/// A SotW stream subscribed to EDS `a`, `b` and `c` (all published), and its first response.
fn sotw_holding_abc(w: &World) -> (SotwStream, DiscoveryResponse) {
    w.publish(&[(EDS, "a", 1), (EDS, "b", 1), (EDS, "c", 1)]);
    let mut s = sotw(w);
    s.on_request(sotw_req(EDS, &["a", "b", "c"], "", ""), now())
        .expect("ok");
    let r = one(s.poll(now()));
    (s, r)
}

fn one(mut v: Vec<DiscoveryResponse>) -> DiscoveryResponse {
    assert_eq!(v.len(), 1, "expected exactly one response, got {v:?}");
    v.remove(0)
}

#[test]
fn sotw_first_wildcard_request_gets_every_cluster() {
    let w = World::new();
    let snap = w.publish(&[(CDS, "a", 1), (CDS, "b", 2)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let r = one(s.poll(now()));
    assert_eq!(r.type_url, CDS.type_url());
    assert_eq!(r.version_info, snap.groups["default"].get(CDS).version);
    assert_eq!(names_in(&r, &snap), vec!["a", "b"]);
    assert!(!r.nonce.is_empty());
    // Explicit "*" is a wildcard too.
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &["*"], "", ""), now()).expect("ok");
    assert_eq!(names_in(&one(s.poll(now())), &snap), vec!["a", "b"]);
}

#[test]
fn sotw_ack_is_recorded_and_nothing_is_resent() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = SotwStream::new(Scope::Ads, Limits::default(), status());
    s.on_snapshot(w.cache.current());
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let r = one(s.poll(now()));
    s.on_request(sotw_req(CDS, &[], &r.version_info, &r.nonce), now())
        .expect("ok");
    assert!(s.poll(now()).is_empty());
    let events = s.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::Acked { ty, version, .. } if *ty == CDS && *version == r.version_info)));
    assert_eq!(
        fold(&events).types["cds"].last_acked_version.as_deref(),
        Some(r.version_info.as_str())
    );
}

#[test]
fn nack_is_not_resent_until_content_changes() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = SotwStream::new(Scope::Ads, Limits::default(), status());
    s.on_snapshot(w.cache.current());
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let r1 = one(s.poll(now()));
    s.on_request(nack(sotw_req(CDS, &[], "", &r1.nonce), "bad cluster"), now())
        .expect("ok");
    assert!(s.poll(now()).is_empty(), "a NACKed version must not be re-sent");
    // Envoy's next requests carry the last accepted version (none): still nothing.
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty());
    let events = s.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, StreamEvent::Nacked { error, version, .. } if error == "bad cluster" && *version == r1.version_info)));
    {
        let g = fold(&events);
        let n = g.types["cds"].last_nack.as_ref().expect("nack recorded");
        assert_eq!(n.error, "bad cluster");
        assert_eq!(n.node_id, "envoy-1");
    }
    // New content goes out.
    let snap = w.publish(&[(CDS, "a", 2)]);
    s.on_snapshot(Some(snap.clone()));
    let r2 = one(s.poll(now()));
    assert_ne!(r2.version_info, r1.version_info);
    assert_eq!(names_in(&r2, &snap), vec!["a"]);
}

#[test]
fn stale_nonce_is_ignored() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let r1 = one(s.poll(now()));
    s.on_request(sotw_req(CDS, &[], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    w.publish(&[(CDS, "a", 2)]);
    s.on_snapshot(w.cache.current());
    let r2 = one(s.poll(now()));
    // A request naming the old nonce (or garbage) neither ACKs r2 nor triggers anything.
    s.on_request(sotw_req(CDS, &["x"], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    s.on_request(sotw_req(CDS, &["x"], "", "garbage-nonce"), now())
        .expect("ok");
    assert!(s.poll(now()).is_empty());
    let events = s.take_events();
    assert_eq!(
        events.iter().filter(|e| matches!(e, StreamEvent::Stale { .. })).count(),
        2
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, StreamEvent::Acked { version, .. } if *version == r2.version_info)));
    // The real ACK still works.
    s.on_request(sotw_req(CDS, &[], &r2.version_info, &r2.nonce), now())
        .expect("ok");
    assert!(s.take_events().iter().any(|e| matches!(e, StreamEvent::Acked { .. })));
}

#[test]
fn nonces_are_per_type() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (LDS, "l", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    s.on_request(sotw_req(LDS, &[], "", ""), now()).expect("ok");
    let out = s.poll(now());
    assert_eq!(out.len(), 2);
    let (c, l) = (&out[0], &out[1]);
    // An LDS request carrying the CDS nonce is stale for LDS.
    s.on_request(sotw_req(LDS, &[], &l.version_info, &c.nonce), now())
        .expect("ok");
    assert!(matches!(s.take_events().last(), Some(StreamEvent::Stale { ty }) if *ty == LDS));
    s.on_request(sotw_req(LDS, &[], &l.version_info, &l.nonce), now())
        .expect("ok");
    assert!(matches!(s.take_events().last(), Some(StreamEvent::Acked { ty, .. }) if *ty == LDS));
}

#[test]
fn eds_sends_only_changed_resources() {
    let w = World::new();
    let (mut s, r1) = sotw_holding_abc(&w);
    assert_eq!(r1.resources.len(), 3);
    s.on_request(sotw_req(EDS, &["a", "b", "c"], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    let snap = w.publish(&[(EDS, "a", 1), (EDS, "b", 2), (EDS, "c", 1)]);
    s.on_snapshot(Some(snap.clone()));
    let r2 = one(s.poll(now()));
    assert_eq!(names_in(&r2, &snap), vec!["b"]);
    // A change to a resource the stream does not subscribe to sends nothing.
    s.on_request(sotw_req(EDS, &["a", "b", "c"], &r2.version_info, &r2.nonce), now())
        .expect("ok");
    w.publish(&[(EDS, "a", 1), (EDS, "b", 2), (EDS, "c", 1), (EDS, "d", 1)]);
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty());
}

#[test]
fn resubscribe_after_unsubscribe_is_answered_at_the_same_version() {
    let w = World::new();
    let snap = w.publish(&[(EDS, "a", 1), (EDS, "b", 2)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(EDS, &["a", "b"], "", ""), now()).expect("ok");
    let r1 = one(s.poll(now()));
    s.on_request(sotw_req(EDS, &["a", "b"], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    // Drop b (same nonce: an ACK was already given, this only changes the subscription).
    s.on_request(sotw_req(EDS, &["a"], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    assert!(s.poll(now()).is_empty());
    // Ask for b again: the version did not change, but b must be sent.
    s.on_request(sotw_req(EDS, &["a", "b"], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    let r2 = one(s.poll(now()));
    assert_eq!(names_in(&r2, &snap), vec!["b"]);
    assert_eq!(r2.version_info, r1.version_info);
}

#[test]
fn unknown_eds_and_rds_names_get_empty_placeholders() {
    let w = World::new();
    let snap = w.publish(&[(EDS, "a", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(EDS, &["a", "missing"], "", ""), now())
        .expect("ok");
    let r = one(s.poll(now()));
    assert_eq!(names_in(&r, &snap), vec!["a", "placeholder:missing"]);
    s.on_request(sotw_req(RDS, &["no-such-routes"], "", ""), now())
        .expect("ok");
    let r = one(s.poll(now()));
    assert_eq!(r.resources.len(), 1);
}

#[test]
fn reconnect_with_the_current_version_gets_no_spurious_update() {
    let w = World::new();
    let snap = w.publish(&[(CDS, "a", 1)]);
    let v = snap.groups["default"].get(CDS).version.clone();
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], &v, ""), now()).expect("ok");
    assert!(s.poll(now()).is_empty());
    // With an older version it is answered.
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "0000000000000000", ""), now())
        .expect("ok");
    assert_eq!(one(s.poll(now())).version_info, v);
}

#[test]
fn ads_pushes_cds_before_eds_and_lds_before_rds() {
    let w = World::new();
    let mut s = SotwStream::new(Scope::Ads, Limits::default(), status());
    // Requests arrive in the "wrong" order before any snapshot exists.
    s.on_request(sotw_req(RDS, &["r"], "", ""), now()).expect("ok");
    s.on_request(sotw_req(LDS, &[], "", ""), now()).expect("ok");
    s.on_request(sotw_req(EDS, &["c"], "", ""), now()).expect("ok");
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    assert!(s.poll(now()).is_empty(), "nothing before a snapshot exists");
    w.publish(&[(CDS, "c", 1), (EDS, "c", 1), (LDS, "l", 1), (RDS, "r", 1)]);
    s.on_snapshot(w.cache.current());
    let order: Vec<String> = s.poll(now()).into_iter().map(|r| r.type_url).collect();
    let want: Vec<String> = [CDS, EDS, LDS, RDS].iter().map(|t| t.type_url().to_string()).collect();
    assert_eq!(order, want);
}

#[test]
fn one_response_in_flight_per_type_and_newer_content_waits_for_the_ack() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let r1 = one(s.poll(now()));
    w.publish(&[(CDS, "a", 2)]);
    s.on_snapshot(w.cache.current());
    let snap3 = w.publish(&[(CDS, "a", 3)]);
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty(), "wait for the ACK of r1");
    s.on_request(sotw_req(CDS, &[], &r1.version_info, &r1.nonce), now())
        .expect("ok");
    let r2 = one(s.poll(now()));
    assert_eq!(
        r2.version_info,
        snap3.groups["default"].get(CDS).version,
        "coalesced to the newest"
    );
}

#[test]
fn node_is_required_first_and_optional_after() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = sotw(&w);
    let mut r = sotw_req(CDS, &[], "", "");
    r.node = None;
    assert_eq!(s.on_request(r.clone(), now()), Err(StreamError::MissingNode));
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    let resp = one(s.poll(now()));
    let mut ack = sotw_req(CDS, &[], &resp.version_info, &resp.nonce);
    ack.node = None;
    s.on_request(ack, now()).expect("later requests may omit node");
}

#[test]
fn node_cluster_selects_the_group_and_unknown_gets_the_default() {
    let w = World::new();
    w.publish_groups(&[
        ("default", &[(CDS, "nbi", 1)]),
        ("front-proxy", &[(CDS, "portainer", 1)]),
    ]);
    let snap = w.cache.current().expect("snap");
    for (cluster, want) in [("front-proxy", "portainer"), ("default", "nbi"), ("whatever", "nbi")] {
        let mut s = sotw(&w);
        let mut r = sotw_req(CDS, &[], "", "");
        r.node = node(cluster);
        s.on_request(r, now()).expect("ok");
        let resp = one(s.poll(now()));
        let group = snap.group_for(cluster).expect("group");
        let any = Any::decode(resp.resources[0].clone()).expect("any");
        let name = group
            .get(CDS)
            .resources
            .values()
            .find(|x| x.body.as_ref() == any.value.as_slice())
            .map(|x| x.name.to_string());
        assert_eq!(name.as_deref(), Some(want), "node.cluster {cluster}");
    }
}

#[test]
fn a_grpc_user_agent_selects_the_groups_twin_and_is_kept_cut_in_the_status() {
    let w = World::new();
    w.publish_groups(&[
        ("default", &[(LDS, "envoy-listener", 1)]),
        ("default/grpc", &[(LDS, "api-listener", 2)]),
    ]);
    for (agent, want) in [
        ("envoy", 1u8),
        ("gRPC Go", 2),
        ("gRPC C-core linux", 2),
        ("grpc", 1),
        ("", 1),
    ] {
        let mut s = sotw(&w);
        let mut r = sotw_req(LDS, &[], "", "");
        r.node = node("default");
        if let Some(n) = r.node.as_mut() {
            n.user_agent_name = agent.into();
        }
        s.on_request(r, now()).expect("ok");
        let resp = one(s.poll(now()));
        let any = Any::decode(resp.resources[0].clone()).expect("any");
        assert_eq!(any.value, vec![want], "user agent {agent:?}");
        let st = fold(&s.take_events());
        assert_eq!(st.user_agent_name, agent);
        assert_eq!(
            st.group.as_deref(),
            Some(if want == 2 { "default/grpc" } else { "default" })
        );
    }
    // A client-supplied name is kept at most 128 bytes, cut at a character boundary.
    let mut s = sotw(&w);
    let mut r = sotw_req(LDS, &[], "", "");
    r.node = node("default");
    if let Some(n) = r.node.as_mut() {
        n.user_agent_name = format!("gRPC {}", "é".repeat(10_000));
    }
    s.on_request(r, now()).expect("ok");
    let st = fold(&s.take_events());
    let kept = st.user_agent_name.clone();
    assert!(kept.len() <= 128 && kept.len() >= 126, "{}", kept.len());
    assert!(kept.starts_with("gRPC é"));
    assert_eq!(st.group.as_deref(), Some("default/grpc"));
}

#[test]
fn unknown_type_is_answered_once_and_its_ack_is_not_answered() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = sotw(&w);
    let url = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let mut r = sotw_req(CDS, &[], "", "");
    r.type_url = url.into();
    s.on_request(r.clone(), now()).expect("ok");
    let resp = one(s.poll(now()));
    assert_eq!(resp.type_url, url);
    assert!(resp.resources.is_empty());
    r.response_nonce = resp.nonce;
    s.on_request(r, now()).expect("ok");
    assert!(s.poll(now()).is_empty(), "no loop on the ACK");
    // An ADS request without a type is an error.
    let mut r = sotw_req(CDS, &[], "", "");
    r.type_url.clear();
    assert_eq!(s.on_request(r, now()), Err(StreamError::MissingTypeUrl));
}

#[test]
fn per_type_service_fills_in_its_type_and_refuses_others() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = SotwStream::new(Scope::Single(CDS), Limits::default(), status());
    s.on_snapshot(w.cache.current());
    let mut r = sotw_req(CDS, &[], "", "");
    r.type_url.clear();
    s.on_request(r, now()).expect("empty type_url means the service's type");
    assert_eq!(one(s.poll(now())).type_url, CDS.type_url());
    let r = sotw_req(EDS, &[], "", "");
    assert!(matches!(s.on_request(r, now()), Err(StreamError::WrongType { .. })));
}

#[test]
fn too_many_names_is_an_error_not_a_memory_blowup() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1)]);
    let mut s = SotwStream::new(Scope::Ads, Limits { max_names: 10 }, status());
    s.on_snapshot(w.cache.current());
    let names: Vec<String> = (0..11).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    assert!(matches!(
        s.on_request(sotw_req(EDS, &refs, "", ""), now()),
        Err(StreamError::TooManyNames { count: 11, .. })
    ));
}

// ---------------------------------------------------------------- Delta

fn delta_req(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node("default"),
        type_url: ty.type_url().into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn delta(world: &World) -> DeltaStream {
    let mut s = DeltaStream::new(Scope::Ads, Limits::default(), status());
    s.on_snapshot(world.cache.current());
    s
}

fn one_d(mut v: Vec<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    assert_eq!(v.len(), 1, "expected exactly one response, got {v:?}");
    v.remove(0)
}

/// (name, version) of each resource in a delta response.
fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
    r.resources
        .iter()
        .map(|b| {
            let res = PbResource::decode(b.clone()).expect("resource");
            (res.name, res.version)
        })
        .collect()
}

fn just_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    delta_names(r).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn delta_wildcard_sends_everything_then_only_changes_and_removals() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (CDS, "b", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(CDS, &[], &[], ""), now())
        .expect("legacy wildcard");
    let r1 = one_d(s.poll(now()));
    assert_eq!(just_names(&r1), vec!["a", "b"]);
    s.on_request(delta_req(CDS, &[], &[], &r1.nonce), now()).expect("ack");
    w.publish(&[(CDS, "a", 2), (CDS, "c", 1)]);
    s.on_snapshot(w.cache.current());
    let r2 = one_d(s.poll(now()));
    assert_eq!(just_names(&r2), vec!["a", "c"]);
    assert_eq!(r2.removed_resources, vec!["b"]);
}

#[test]
fn delta_initial_resource_versions_are_not_resent() {
    let w = World::new();
    let snap = w.publish(&[(CDS, "a", 1), (CDS, "b", 1)]);
    let va = snap.groups["default"].get(CDS).resources["a"].version_string();
    let mut s = delta(&w);
    let mut r = delta_req(CDS, &["*"], &[], "");
    r.initial_resource_versions = [
        ("a".to_string(), va),
        ("gone".to_string(), "0123456789abcdef".to_string()),
    ]
    .into();
    s.on_request(r, now()).expect("ok");
    let resp = one_d(s.poll(now()));
    assert_eq!(just_names(&resp), vec!["b"], "a is held at the current version");
    assert_eq!(resp.removed_resources, vec!["gone"]);
}

/// `initial_resource_versions` entries for names the first request does not subscribe to are
/// not kept: 200,000 of them on one stream used to stay for the stream's life.
#[test]
fn delta_initial_versions_of_names_not_subscribed_are_not_kept() {
    let w = World::new();
    let snap = w.publish(&[(EDS, "a", 1), (EDS, "b", 1)]);
    let va = snap.groups["default"].get(EDS).resources["a"].version_string();
    let mut s = delta(&w);
    let mut r = delta_req(EDS, &["a"], &[], "");
    r.initial_resource_versions = (0..5_000)
        .map(|i| (format!("never-subscribed-{i}"), "0123456789abcdef".to_string()))
        .collect();
    r.initial_resource_versions.insert("a".into(), va);
    s.on_request(r, now()).expect("ok");
    assert_eq!(s.held_count(EDS), 1, "only the subscribed name is kept");
    let resp = one_d(s.poll(now()));
    assert!(resp.resources.is_empty(), "a is held at the current version");
    assert!(resp.removed_resources.is_empty());
    assert_eq!(s.held_count(EDS), 1);
    // Subscribing to b later sends it: nothing said about b was kept.
    s.on_request(delta_req(EDS, &["b"], &[], &resp.nonce), now())
        .expect("ok");
    assert_eq!(just_names(&one_d(s.poll(now()))), vec!["b"]);
    assert_eq!(s.held_count(EDS), 2);
}

/// Under a wildcard the client may hold anything of the type: every entry counts, and those
/// gone are removed (then forgotten).
#[test]
fn delta_initial_versions_under_a_wildcard_are_kept_until_compared() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1)]);
    let mut s = delta(&w);
    let mut r = delta_req(EDS, &["*"], &[], "");
    r.initial_resource_versions = (0..100)
        .map(|i| (format!("old-{i:03}"), "0123456789abcdef".to_string()))
        .collect();
    s.on_request(r, now()).expect("ok");
    assert_eq!(s.held_count(EDS), 100);
    let resp = one_d(s.poll(now()));
    assert_eq!(just_names(&resp), vec!["a"]);
    assert_eq!(resp.removed_resources.len(), 100);
    assert_eq!(s.held_count(EDS), 1);
}

#[test]
fn delta_initial_versions_over_the_limit_end_the_stream_and_are_not_stored() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = DeltaStream::new(Scope::Ads, Limits { max_names: 10 }, status());
    s.on_snapshot(w.cache.current());
    let mut r = delta_req(CDS, &["*"], &[], "");
    r.initial_resource_versions = (0..11)
        .map(|i| (format!("c{i}"), "0123456789abcdef".to_string()))
        .collect();
    assert_eq!(
        s.on_request(r.clone(), now()),
        Err(StreamError::TooManyInitialVersions {
            ty: "cds",
            count: 11,
            limit: 10
        })
    );
    assert_eq!(s.held_count(CDS), 0);
    // At the limit: accepted.
    r.initial_resource_versions.remove("c0");
    s.on_request(r, now()).expect("ten entries");
    assert_eq!(s.held_count(CDS), 10);
}

#[test]
fn delta_first_request_is_answered_even_when_empty() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(CDS, &["*"], &[], ""), now()).expect("ok");
    let r = one_d(s.poll(now()));
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert_eq!(r.type_url, CDS.type_url());
}

#[test]
fn delta_subscribe_and_unsubscribe_apply_whatever_the_nonce() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1), (EDS, "b", 1), (EDS, "c", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(EDS, &["a", "b"], &[], ""), now()).expect("ok");
    let r1 = one_d(s.poll(now()));
    assert_eq!(just_names(&r1), vec!["a", "b"]);
    // Before the ACK, subscribe c and drop b in one request with a stale nonce.
    s.on_request(delta_req(EDS, &["c"], &["b"], "stale"), now())
        .expect("ok");
    assert!(s.poll(now()).is_empty(), "r1 is still in flight");
    s.on_request(delta_req(EDS, &[], &[], &r1.nonce), now()).expect("ack");
    let r2 = one_d(s.poll(now()));
    assert_eq!(just_names(&r2), vec!["c"]);
    s.on_request(delta_req(EDS, &[], &[], &r2.nonce), now()).expect("ack");
    // Asking for b again resends it although it did not change.
    s.on_request(delta_req(EDS, &["b"], &[], ""), now()).expect("ok");
    assert_eq!(just_names(&one_d(s.poll(now()))), vec!["b"]);
}

#[test]
fn delta_nack_is_not_resent_until_content_changes() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(CDS, &["*"], &[], ""), now()).expect("ok");
    let r1 = one_d(s.poll(now()));
    let mut n = delta_req(CDS, &[], &[], &r1.nonce);
    n.error_detail = Some(RpcStatus {
        code: 3,
        message: "no".into(),
        details: vec![],
    });
    s.on_request(n, now()).expect("ok");
    assert!(s.poll(now()).is_empty());
    assert!(s.take_events().iter().any(|e| matches!(e, StreamEvent::Nacked { .. })));
    w.publish(&[(CDS, "a", 2)]);
    s.on_snapshot(w.cache.current());
    assert_eq!(just_names(&one_d(s.poll(now()))), vec!["a"]);
}

#[test]
fn delta_unknown_named_eds_gets_placeholder_and_wildcard_can_be_left() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (CDS, "b", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(EDS, &["nope"], &[], ""), now()).expect("ok");
    let r = one_d(s.poll(now()));
    assert_eq!(just_names(&r), vec!["nope"]);
    s.on_request(delta_req(EDS, &[], &[], &r.nonce), now()).expect("ack");
    // Wildcard CDS plus an explicit name; leaving the wildcard keeps only that name.
    s.on_request(delta_req(CDS, &["*", "a"], &[], ""), now()).expect("ok");
    let r = one_d(s.poll(now()));
    assert_eq!(just_names(&r), vec!["a", "b"]);
    s.on_request(delta_req(CDS, &[], &["*"], &r.nonce), now()).expect("ok");
    assert!(s.poll(now()).is_empty());
    w.publish(&[(CDS, "a", 1), (CDS, "b", 2)]);
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty(), "b is no longer subscribed");
    w.publish(&[(CDS, "a", 3), (CDS, "b", 2)]);
    s.on_snapshot(w.cache.current());
    assert_eq!(just_names(&one_d(s.poll(now()))), vec!["a"]);
}

#[test]
fn delta_incremental_path_matches_full_comparison_across_skipped_versions() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1), (EDS, "b", 1), (EDS, "c", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(EDS, &["a", "b", "c"], &[], ""), now())
        .expect("ok");
    let r = one_d(s.poll(now()));
    // Two snapshots while r is in flight: the stream skips a version.
    w.publish(&[(EDS, "a", 2), (EDS, "b", 1), (EDS, "c", 1)]);
    s.on_snapshot(w.cache.current());
    w.publish(&[(EDS, "a", 2), (EDS, "b", 2), (EDS, "c", 1)]);
    s.on_snapshot(w.cache.current());
    s.on_request(delta_req(EDS, &[], &[], &r.nonce), now()).expect("ack");
    let r2 = one_d(s.poll(now()));
    assert_eq!(just_names(&r2), vec!["a", "b"]);
}

#[test]
fn equal_subscriptions_share_one_name_set() {
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| Arc::<str>::from(*n))
            .collect::<std::collections::BTreeSet<_>>()
    };
    let sets = NameSets::default();
    let a = sets.share(set(&["x-shared-1", "x-shared-2"]));
    let b = sets.share(set(&["x-shared-2", "x-shared-1"]));
    let c = sets.share(set(&["x-shared-1"]));
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    drop((a, b));
    // Once no stream holds it, a new equal set is a fresh one (weak entries).
    let d = sets.share(set(&["x-shared-1", "x-shared-2"]));
    assert_eq!(Arc::strong_count(&d), 1);
}

#[test]
fn sotw_ads_routes_do_not_run_ahead_of_clusters_waiting_for_an_ack() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (RDS, "r", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    s.on_request(sotw_req(RDS, &["r"], "", ""), now()).expect("ok");
    let first = s.poll(now());
    assert_eq!(first.len(), 2);
    let (cds1, rds1) = (&first[0], &first[1]);
    s.on_request(sotw_req(RDS, &["r"], &rds1.version_info, &rds1.nonce), now())
        .expect("ack rds");
    // V2 adds cluster "x" and a route to it while CDS V1 is not yet ACKed.
    let v2 = w.publish(&[(CDS, "a", 1), (CDS, "x", 1), (RDS, "r", 2)]);
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty(), "RDS V2 must wait for CDS V2");
    s.on_request(sotw_req(CDS, &[], &cds1.version_info, &cds1.nonce), now())
        .expect("ack cds");
    let order: Vec<(String, String)> = s
        .poll(now())
        .into_iter()
        .map(|r| (r.type_url, r.version_info))
        .collect();
    let g = &v2.groups["default"];
    assert_eq!(
        order,
        vec![
            (CDS.type_url().to_string(), g.get(CDS).version.clone()),
            (RDS.type_url().to_string(), g.get(RDS).version.clone())
        ]
    );
}

#[test]
fn delta_ads_routes_do_not_run_ahead_of_clusters_waiting_for_an_ack() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (RDS, "r", 1)]);
    let mut s = delta(&w);
    s.on_request(delta_req(CDS, &["*"], &[], ""), now()).expect("ok");
    s.on_request(delta_req(RDS, &["r"], &[], ""), now()).expect("ok");
    let first = s.poll(now());
    assert_eq!(first.len(), 2);
    let (cds1, rds1) = (first[0].nonce.clone(), first[1].nonce.clone());
    s.on_request(delta_req(RDS, &[], &[], &rds1), now()).expect("ack rds");
    w.publish(&[(CDS, "a", 1), (CDS, "x", 1), (RDS, "r", 2)]);
    s.on_snapshot(w.cache.current());
    assert!(s.poll(now()).is_empty(), "RDS must wait for the CDS ACK");
    s.on_request(delta_req(CDS, &[], &[], &cds1), now()).expect("ack cds");
    let out = s.poll(now());
    let types: Vec<&str> = out.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, vec![CDS.type_url(), RDS.type_url()]);
    assert_eq!(
        delta_names(&out[0]).iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        vec!["x"]
    );
}

#[test]
fn a_type_waiting_for_an_ack_of_the_current_version_holds_nothing_back() {
    let w = World::new();
    w.publish(&[(CDS, "a", 1), (RDS, "r", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(CDS, &[], "", ""), now()).expect("ok");
    assert_eq!(s.poll(now()).len(), 1);
    // CDS V1 is in flight and is the current version: RDS goes out at once.
    s.on_request(sotw_req(RDS, &["r"], "", ""), now()).expect("ok");
    assert_eq!(one(s.poll(now())).type_url, RDS.type_url());
}

#[test]
fn a_long_nack_text_is_cut_at_a_character() {
    let detail = |m: &str| {
        Some(RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        })
    };
    let t = super::error_text(&detail(&"é".repeat(5000))).expect("text");
    assert!(t.len() <= super::MAX_ERROR_TEXT + 32, "{}", t.len());
    assert!(t.starts_with("éé") && t.ends_with("… (10000 bytes in all)"), "{t}");
    assert_eq!(super::error_text(&detail("short")).as_deref(), Some("short"));
    assert_eq!(super::error_text(&detail("")).as_deref(), Some("(code 3, no message)"));
}

#[test]
fn an_ack_repeating_the_held_names_is_decoded_without_them_and_keeps_the_subscription() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1), (EDS, "b", 1), (EDS, "c", 1)]);
    let mut s = sotw(&w);
    let raw = |r: DiscoveryRequest| r.encode_to_vec();
    // Nothing held yet: the names are decoded.
    let first = s
        .decode(&raw(sotw_req(EDS, &["a", "b", "c"], "", "")))
        .expect("decodes");
    assert_eq!(first.resource_names, vec!["a", "b", "c"]);
    s.on_request(first, now()).expect("ok");
    let r1 = one(s.poll(now()));
    // The ACK repeats them: decoded without them, and the ACK is taken as one.
    let ack = s
        .decode(&raw(sotw_req(EDS, &["a", "b", "c"], &r1.version_info, &r1.nonce)))
        .expect("decodes");
    assert!(ack.resource_names.is_empty(), "{:?}", ack.resource_names);
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        (r1.version_info.as_str(), r1.nonce.as_str())
    );
    assert_eq!(ack.node, node("default"));
    s.on_request(ack, now()).expect("ok");
    assert!(s
        .take_events()
        .iter()
        .any(|e| matches!(e, StreamEvent::Acked { ty, .. } if *ty == EDS)));
    assert!(s.poll(now()).is_empty());
    // The held subscription is intact: a change to b is pushed.
    let snap = w.publish(&[(EDS, "a", 1), (EDS, "b", 2), (EDS, "c", 1)]);
    s.on_snapshot(Some(snap.clone()));
    let r2 = one(s.poll(now()));
    assert_eq!(names_in(&r2, &snap), vec!["b"]);

    // The same names in another order (Envoy does not sort its list): decoded without them.
    let unsorted = s
        .decode(&raw(sotw_req(EDS, &["c", "a", "b"], "", "x")))
        .expect("decodes");
    assert!(unsorted.resource_names.is_empty());
    // Other lists are decoded in full: fewer names, a duplicate in place of a name, a duplicate
    // more, a wildcard, one name more.
    for names in [
        &["a", "c"][..],
        &["a", "a", "c"],
        &["c", "b", "a", "b"],
        &["*", "a", "b", "c"],
        &["a", "b", "c", "d"],
    ] {
        let got = s.decode(&raw(sotw_req(EDS, names, "", "x"))).expect("decodes");
        assert_eq!(got.resource_names, names, "{names:?}");
    }
    // The held names, but split around other fields: decoded in full, still the same list.
    let mut split = raw(sotw_req(EDS, &["a", "b"], "", "x"));
    split.extend_from_slice(&[0x1a, 0x01, b'c']);
    let got = s.decode(&split).expect("decodes");
    assert_eq!(got.resource_names, vec!["a", "b", "c"]);
    // Another type's request is not compared with EDS's names.
    let cds = s
        .decode(&raw(sotw_req(CDS, &["a", "b", "c"], "", "")))
        .expect("decodes");
    assert_eq!(cds.resource_names, vec!["a", "b", "c"]);

    // Dropping b is seen (full decode), and b asked for again is sent again.
    let ack2 = s
        .decode(&raw(sotw_req(EDS, &["a", "b", "c"], &r2.version_info, &r2.nonce)))
        .expect("decodes");
    assert!(ack2.resource_names.is_empty());
    s.on_request(ack2, now()).expect("ok");
    let drop_b = s
        .decode(&raw(sotw_req(EDS, &["a", "c"], &r2.version_info, &r2.nonce)))
        .expect("decodes");
    s.on_request(drop_b, now()).expect("ok");
    assert!(s.poll(now()).is_empty());
    let again = s
        .decode(&raw(sotw_req(EDS, &["a", "b", "c"], &r2.version_info, &r2.nonce)))
        .expect("decodes");
    assert_eq!(
        again.resource_names,
        vec!["a", "b", "c"],
        "held is [a, c] now: decoded in full"
    );
    s.on_request(again, now()).expect("ok");
    assert_eq!(names_in(&one(s.poll(now())), &snap), vec!["b"]);
}

#[test]
fn a_malformed_request_fails_to_decode_on_either_path() {
    let w = World::new();
    w.publish(&[(EDS, "a", 1)]);
    let mut s = sotw(&w);
    s.on_request(sotw_req(EDS, &["a"], "", ""), now()).expect("ok");
    let r = one(s.poll(now()));
    let good = sotw_req(EDS, &["a"], &r.version_info, &r.nonce).encode_to_vec();
    // Truncated: the wire reader stops, the full decode reports the error.
    let mut cut = good.clone();
    cut.push(0x0a);
    assert!(s.decode(&cut).is_err());
    assert!(DiscoveryRequest::decode(cut.as_slice()).is_err());
    // The names match but the node is garbage: the decode without names reports it.
    let mut bad_node = good.clone();
    bad_node.extend_from_slice(&[0x12, 0x01, 0xff]);
    assert!(DiscoveryRequest::decode(bad_node.as_slice()).is_err());
    assert!(s.decode(&bad_node).is_err());
    // Not a message at all.
    assert!(s.decode(&[0xff, 0xff, 0xff]).is_err());
    // The held name, but as a varint, a fixed32 or a fixed64 field 3: not a string.
    let empty_ack = sotw_req(EDS, &[], &r.version_info, &r.nonce).encode_to_vec();
    for field in [
        &[0x18, 0x61][..],
        &[0x1d, b'a', 0, 0, 0],
        &[0x19, b'a', 0, 0, 0, 0, 0, 0, 0],
    ] {
        let mut bad = empty_ack.clone();
        bad.extend_from_slice(field);
        assert!(DiscoveryRequest::decode(bad.as_slice()).is_err(), "{field:?}");
        assert!(s.decode(&bad).is_err(), "{field:?}");
    }
    // A varint with bits past 64 ahead of a good ACK's names.
    let mut long = vec![0x9a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0x01, b'a'];
    long.extend_from_slice(&good);
    assert!(DiscoveryRequest::decode(long.as_slice()).is_err());
    assert!(s.decode(&long).is_err());
    // Whatever the bytes, both paths agree on whether they decode.
    for at in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut m = good.clone();
            m[at] ^= flip;
            assert_eq!(
                s.decode(&m).is_ok(),
                DiscoveryRequest::decode(m.as_slice()).is_ok(),
                "byte {at} ^ {flip:#x}"
            );
        }
        assert_eq!(
            s.decode(&good[..at]).is_ok(),
            DiscoveryRequest::decode(&good[..at]).is_ok(),
            "cut at {at}"
        );
    }
    // The stream still takes a good ACK afterwards.
    let ack = s.decode(&good).expect("decodes");
    s.on_request(ack, now()).expect("ok");
    assert!(s.poll(now()).is_empty());
}

#[test]
fn the_wire_reader_splits_fields_and_stops_at_malformed_bytes() {
    let fields = |b: &[u8]| {
        super::wire::fields(b)
            .map(|f| f.map(|f| (f.tag, f.whole.to_vec(), f.payload.to_vec())))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        fields(&[0x08, 0x96, 0x01, 0x1a, 0x02, b'h', b'i']),
        vec![
            Some((1, vec![0x08, 0x96, 0x01], vec![0x96, 0x01])),
            Some((3, vec![0x1a, 0x02, b'h', b'i'], b"hi".to_vec()))
        ]
    );
    assert_eq!(
        fields(&[0x0d, 1, 2, 3, 4]),
        vec![Some((1, vec![0x0d, 1, 2, 3, 4], vec![1, 2, 3, 4]))]
    );
    assert_eq!(fields(&[]), vec![]);
    assert_eq!(fields(&[0x08]), vec![None], "varint cut short");
    assert_eq!(fields(&[0x1a, 0x05, b'h']), vec![None], "length past the end");
    assert_eq!(fields(&[0x00, 0x01]), vec![None], "field number 0");
    assert_eq!(fields(&[0x0b]), vec![None], "groups are not read");
    assert_eq!(
        fields(&[0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]),
        vec![None],
        "a 10th varint byte over 1"
    );
    assert_eq!(
        fields(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00]),
        vec![None],
        "a key over 32 bits"
    );
    assert_eq!(
        super::wire::fields(&[0x1d, 1, 2, 3, 4])
            .map(|f| f.map(|f| f.wire_type))
            .collect::<Vec<_>>(),
        vec![Some(5)]
    );
    assert_eq!(
        fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        vec![None],
        "varint over 10 bytes"
    );
    assert_eq!(
        fields(&[0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        vec![None],
        "a length no buffer holds"
    );
}

#[test]
fn a_repeated_subscription_in_the_clients_own_order_is_matched_by_the_kept_positions() {
    use super::sotw::same_set_in_any_order;
    let held = Names::new(["a", "b", "c", "d"].into_iter().map(Arc::from).collect());
    let list = |ns: &[&'static str]| ns.iter().map(|n| n.as_bytes()).collect::<Vec<&[u8]>>();
    let mut order = None;
    // An unsorted list: sorted once, matched, its order kept (its k-th name is held's order[k]-th).
    assert!(same_set_in_any_order(&held, &list(&["c", "a", "d", "b"]), &mut order));
    assert_eq!(order.as_deref(), Some(&[2u16, 0, 3, 1][..]));
    // The same order again: matched by the kept order, which stays.
    assert!(same_set_in_any_order(&held, &list(&["c", "a", "d", "b"]), &mut order));
    assert_eq!(order.as_deref(), Some(&[2u16, 0, 3, 1][..]));
    // In the kept order but one name differs, or a name twice in place of another: no match,
    // whichever path looks at it, and the kept positions are not changed by a failed match.
    for names in [&["c", "a", "d", "x"][..], &["c", "a", "d", "a"], &["c", "c", "d", "b"]] {
        assert!(!same_set_in_any_order(&held, &list(names), &mut order), "{names:?}");
        assert_eq!(order.as_deref(), Some(&[2u16, 0, 3, 1][..]), "{names:?}");
    }
    // Fewer or more names: no match.
    assert!(!same_set_in_any_order(&held, &list(&["c", "a", "d"]), &mut order));
    assert!(!same_set_in_any_order(
        &held,
        &list(&["c", "a", "d", "b", "e"]),
        &mut order
    ));
    // Another order of the same names: matched, and it becomes the kept one.
    assert!(same_set_in_any_order(&held, &list(&["d", "c", "a", "b"]), &mut order));
    assert_eq!(order.as_deref(), Some(&[3u16, 2, 0, 1][..]));
    // A sorted list: matched in the held order, nothing kept.
    assert!(same_set_in_any_order(&held, &list(&["a", "b", "c", "d"]), &mut order));
    assert!(order.is_none());
    // Sorted but not the held set: no match, and a kept order stays.
    assert!(same_set_in_any_order(&held, &list(&["d", "c", "a", "b"]), &mut order));
    assert!(!same_set_in_any_order(&held, &list(&["a", "b", "c", "e"]), &mut order));
    assert_eq!(order.as_deref(), Some(&[3u16, 2, 0, 1][..]));
}

#[test]
fn the_largest_subscriptions_are_matched_in_any_order_too() {
    use super::sotw::same_set_in_any_order;
    // 65,536 names: the most that 16-bit places can number (0 to 65,535). One more, and the
    // slices are sorted each time instead, with no order kept.
    for n in [65_536usize, 65_537] {
        let all: Vec<String> = (0..n).map(|i| format!("n{i:06}")).collect();
        let held = Names::new(all.iter().map(|s| Arc::from(s.as_str())).collect());
        let mut reversed: Vec<&[u8]> = all.iter().map(|s| s.as_bytes()).collect();
        reversed.reverse();
        let mut order = None;
        assert!(same_set_in_any_order(&held, &reversed, &mut order), "{n}");
        assert_eq!(order.is_some(), n == 65_536, "{n}");
        // Again (through the kept order at 65,536), and with one name replaced: no match.
        assert!(same_set_in_any_order(&held, &reversed, &mut order), "{n}");
        let other = b"x".to_vec();
        reversed[n / 2] = &other;
        assert!(!same_set_in_any_order(&held, &reversed, &mut order), "{n}");
    }
}

#[test]
fn names_too_long_for_the_short_form_are_matched_as_well_in_any_order() {
    let w = World::new();
    let long = "l".repeat(200);
    w.publish(&[(EDS, "a", 1), (EDS, &long, 1), (EDS, "c", 1)]);
    let mut s = sotw(&w);
    let raw = |r: DiscoveryRequest| r.encode_to_vec();
    s.on_request(sotw_req(EDS, &["a", &long, "c"], "", ""), now())
        .expect("ok");
    let r = one(s.poll(now()));
    // Short and long names mixed, in an order that is not sorted (the long name needs a
    // two-byte length, read by the general field reader in the middle of the run).
    for order in [
        [long.as_str(), "c", "a"],
        ["c", long.as_str(), "a"],
        ["c", "a", long.as_str()],
    ] {
        let ack = s
            .decode(&raw(sotw_req(EDS, &order, &r.version_info, &r.nonce)))
            .expect("decodes");
        assert!(ack.resource_names.is_empty(), "{order:?}: {:?}", ack.resource_names);
    }
    // Names of 127 and 128 bytes, the last with a one-byte length and the first with two.
    let (n127, n128) = ("p".repeat(127), "q".repeat(128));
    w.publish(&[
        (EDS, "a", 1),
        (EDS, &long, 1),
        (EDS, "c", 1),
        (EDS, &n127, 1),
        (EDS, &n128, 1),
    ]);
    let mut s = sotw(&w);
    let all = [n128.as_str(), "c", &n127, "a", &long];
    s.on_request(sotw_req(EDS, &all, "", ""), now()).expect("ok");
    let r = one(s.poll(now()));
    let ack = s
        .decode(&raw(sotw_req(EDS, &all, &r.version_info, &r.nonce)))
        .expect("decodes");
    assert!(ack.resource_names.is_empty(), "{:?}", ack.resource_names);
    // A long name in place of another, or the long name cut short: decoded in full.
    let other = "m".repeat(200);
    for order in [[other.as_str(), "c", "a"], [&long[..199], "c", "a"]] {
        let got = s
            .decode(&raw(sotw_req(EDS, &order, &r.version_info, &r.nonce)))
            .expect("decodes");
        assert_eq!(got.resource_names, order);
    }
}

#[test]
fn a_name_set_laid_end_to_end_gives_back_each_name_in_order() {
    let names = Names::new(["ccc", "a", "bb", ""].into_iter().map(Arc::from).collect());
    let flat = names.flat().expect("laid out");
    let got: Vec<&[u8]> = (0..names.len()).map(|i| flat.get(i).expect("in range")).collect();
    assert_eq!(got, vec![&b""[..], b"a", b"bb", b"ccc"]);
    assert_eq!(flat.get(4), None);
    let empty = Names::new(Default::default());
    assert_eq!(empty.flat().expect("laid out").get(0), None);
}

#[test]
fn short_names_are_equal_only_when_every_byte_is() {
    use super::sotw::same_bytes;
    let a: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    for n in 0..=a.len() {
        let x = &a[..n];
        // A copy, so that equal bytes at another address are compared.
        let copy = x.to_vec();
        assert!(same_bytes(x, &copy), "{n}");
        for at in 0..n {
            let mut y = x.to_vec();
            y[at] ^= 0x20;
            assert!(!same_bytes(x, &y), "length {n}, byte {at}");
        }
        if n > 0 {
            assert!(!same_bytes(x, &a[..n - 1]), "{n} against {}", n - 1);
            assert!(!same_bytes(&a[..n - 1], x), "{} against {n}", n - 1);
        }
    }
}

#[test]
fn an_ack_in_the_kept_order_is_taken_as_a_repeat_only_when_it_is_one() {
    // Names of the lengths around each width the comparison reads at once.
    let held: Vec<String> = [1usize, 3, 4, 7, 8, 9, 16, 17, 31, 32, 33]
        .iter()
        .enumerate()
        .map(|(i, &n)| format!("{}{}", char::from(b'a' + i as u8), "x".repeat(n - 1)))
        .collect();
    let w = World::new();
    let set: Vec<(ResourceType, &str, u8)> = held.iter().map(|n| (EDS, n.as_str(), 1)).collect();
    w.publish(&set);
    let mut s = sotw(&w);
    // The client's order: not sorted.
    let mut order: Vec<&str> = held.iter().map(String::as_str).collect();
    order.reverse();
    order.swap(2, 7);
    s.on_request(sotw_req(EDS, &order, "", ""), now()).expect("ok");
    let r = one(s.poll(now()));
    let good = sotw_req(EDS, &order, &r.version_info, &r.nonce).encode_to_vec();
    // The first ACK keeps the order, the second is matched through it.
    assert!(s.repeats_in_kept_order(&good).is_none(), "no order kept yet");
    for _ in 0..2 {
        let ack = s.decode(&good).expect("decodes");
        assert!(ack.resource_names.is_empty(), "{:?}", ack.resource_names);
        s.on_request(ack, now()).expect("ok");
    }
    let fast = |s: &SotwStream, m: &[u8]| s.repeats_in_kept_order(m).map(|(ty, _)| ty);
    assert_eq!(fast(&s, &good), Some(EDS), "the kept order is used");
    let mut sorted_held = held.clone();
    sorted_held.sort();
    // Whatever the bytes: both decodes agree on whether they decode, and a request taken as a
    // repeat lists the held names exactly, each once.
    let check = |s: &mut SotwStream, m: &[u8], what: &str| {
        let full = DiscoveryRequest::decode(m);
        let got = s.decode(m);
        assert_eq!(got.is_ok(), full.is_ok(), "{what}");
        if let (Ok(got), Ok(full)) = (got, full) {
            if got.resource_names.is_empty() && !full.resource_names.is_empty() {
                let mut names = full.resource_names.clone();
                names.sort();
                assert_eq!(names, sorted_held, "{what}: taken as a repeat");
                assert_eq!(full.type_url, EDS.type_url(), "{what}");
                // Every other field as the full decode reads it.
                let rest = DiscoveryRequest {
                    resource_names: Vec::new(),
                    ..full
                };
                assert_eq!(*got, rest, "{what}");
            } else {
                assert_eq!(got.resource_names, full.resource_names, "{what}");
            }
        }
    };
    for at in 0..good.len() {
        for flip in [0x01u8, 0x20, 0x80, 0xff] {
            let mut m = good.clone();
            m[at] ^= flip;
            check(&mut s, &m, &format!("byte {at} ^ {flip:#x}"));
        }
        check(&mut s, &good[..at], &format!("cut at {at}"));
    }
    // The kept order still holds: the good ACK is a repeat.
    assert_eq!(fast(&s, &good), Some(EDS));
    assert!(s.decode(&good).expect("decodes").resource_names.is_empty());
    // The request as an encoder writes it, with `names` (raw name fields) between the node
    // and the type: fields 1, 2, 3, 4, 5.
    let with_names = |names: &[u8]| {
        let mut m = DiscoveryRequest {
            version_info: r.version_info.clone(),
            node: node("default"),
            ..Default::default()
        }
        .encode_to_vec();
        m.extend_from_slice(names);
        let after = DiscoveryRequest {
            type_url: EDS.type_url().to_string(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        m.extend_from_slice(&after.encode_to_vec());
        m
    };
    let field = |key: &[u8], n: &str| [key, &[n.len() as u8], n.as_bytes()].concat();
    let usual: Vec<u8> = order.iter().flat_map(|n| field(&[0x1a], n)).collect();
    assert_eq!(with_names(&usual), good, "the fields in an encoder's order");
    // One name in the run with its key written in two bytes (0x9a 0x00, still field 3): not
    // the usual form, so the one pass gives up, and the general way still finds the held set.
    let mut mixed: Vec<u8> = order[..5].iter().flat_map(|n| field(&[0x1a], n)).collect();
    mixed.extend(field(&[0x9a, 0x00], order[5]));
    mixed.extend(order[6..].iter().flat_map(|n| field(&[0x1a], n)));
    let two_byte_key = with_names(&mixed);
    assert_eq!(fast(&s, &two_byte_key), None);
    let ack = s.decode(&two_byte_key).expect("decodes");
    assert!(ack.resource_names.is_empty(), "{:?}", ack.resource_names);
    assert_eq!(ack.version_info, r.version_info);
    // A name in that form before the usual run: one name more than held, decoded in full.
    let before = with_names(&[field(&[0x9a, 0x00], "q"), usual.clone()].concat());
    assert_eq!(fast(&s, &before), None);
    let got = s.decode(&before).expect("decodes");
    let mut want = vec!["q"];
    want.extend(&order);
    assert_eq!(got.resource_names, want);
    // The same names in the kept order for another type: not compared with EDS's.
    let cds = s
        .decode(&sotw_req(CDS, &order, &r.version_info, &r.nonce).encode_to_vec())
        .expect("decodes");
    assert_eq!(cds.resource_names, order);
    // The held names in the kept order, then after the other fields one name more (a new one,
    // or one of them again): not a repeat, decoded in full.
    for extra in ["q", order[0]] {
        let mut more = good.clone();
        more.extend_from_slice(&[0x1a, extra.len() as u8]);
        more.extend_from_slice(extra.as_bytes());
        assert_eq!(fast(&s, &more), None, "{extra}");
        let got = s.decode(&more).expect("decodes");
        let mut want: Vec<&str> = order.clone();
        want.push(extra);
        assert_eq!(got.resource_names, want, "{extra}");
    }
    // One name swapped for another of the same length, in the kept order: decoded in full.
    let mut other = order.clone();
    let swapped = format!("z{}", &other[4][1..]);
    other[4] = &swapped;
    let swapped_req = sotw_req(EDS, &other, &r.version_info, &r.nonce).encode_to_vec();
    assert_eq!(fast(&s, &swapped_req), None);
    let got = s.decode(&swapped_req).expect("decodes");
    assert_eq!(got.resource_names, other);
}

#[test]
fn a_client_that_lists_its_names_sorted_is_matched_in_one_pass_too() {
    let w = World::new();
    let (mut s, r) = sotw_holding_abc(&w);
    let sorted = sotw_req(EDS, &["a", "b", "c"], &r.version_info, &r.nonce).encode_to_vec();
    // No order kept: the held set's own order is tried, and matches.
    assert_eq!(s.repeats_in_kept_order(&sorted).map(|(ty, _)| ty), Some(EDS));
    assert!(s.decode(&sorted).expect("decodes").resource_names.is_empty());
    // Another order is not taken for it.
    let unsorted = sotw_req(EDS, &["b", "a", "c"], &r.version_info, &r.nonce).encode_to_vec();
    assert_eq!(s.repeats_in_kept_order(&unsorted), None);
    assert!(s.decode(&unsorted).expect("decodes").resource_names.is_empty());
    // Once that order is kept, it is the one tried.
    assert_eq!(s.repeats_in_kept_order(&unsorted).map(|(ty, _)| ty), Some(EDS));
    assert_eq!(s.repeats_in_kept_order(&sorted), None);
}
