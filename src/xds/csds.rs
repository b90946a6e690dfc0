//! The Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`)
//! on the xDS port: each connected Envoy's per-resource status, as this server sees it.
//!
//! Nothing is kept per resource while streams run: a stream keeps, per type, its versions sent
//! and ACKed, its last NACK and a shared pointer to its subscribed names (see
//! [`TypeStatus`]). A CSDS request computes the per-resource view from those and the current
//! snapshot of the Envoy's node group:
//!
//! | condition (per type, then per resource) | `client_status` | `config_status` |
//! |---|---|---|
//! | the last response of the type was NACKed | `NACKED` (with `error_state`) | `ERROR` |
//! | the name is not in the snapshot | `DOES_NOT_EXIST` | as the type's state below |
//! | the ACKed version is the current one | `ACKED` | `SYNCED` |
//! | a response is sent and not yet answered | `REQUESTED` | `STALE` |
//! | an older version is ACKed, the current one not sent yet | `ACKED` | `NOT_SENT` |
//! | nothing sent yet | `REQUESTED` | `NOT_SENT` |
//!
//! The resources of a type are the subscribed names, plus every resource of the snapshot for a
//! wildcard subscription. `version_info` is the type version the Envoy last ACKed; `xds_config`
//! is the resource as the current snapshot holds it (left out with `exclude_resource_contents`).
//!
//! An Envoy is reported once per node (`node.id` and `node.cluster`), its streams merged: for a
//! type served on several of its streams (a reconnect racing the old stream), the newest wins.
//!
//! `node_matchers` (any one matching selects the node; none selects every node) support the
//! `node_id` string matcher: `exact`, `prefix`, `suffix`, `contains` and `safe_regex` (whole
//! string), with `ignore_case`. A matcher with `node_metadatas`, or another pattern kind, is
//! refused with `INVALID_ARGUMENT`.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{NodeMatcher, StringMatcher};
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::cache::{Cache, Snapshot};
use super::resources::ResourceType;
use super::status::{ClientStatus, ClientTable, SyncState, TypeStatus};

/// The CSDS service: reads the stream table and the cache, drives nothing.
#[derive(Clone)]
pub struct Csds {
    clients: Arc<ClientTable>,
    cache: Cache,
    shutdown: CancellationToken,
}

impl Csds {
    pub fn new(clients: Arc<ClientTable>, cache: Cache, shutdown: CancellationToken) -> Self {
        Csds {
            clients,
            cache,
            shutdown,
        }
    }

    /// The tonic service, to add to the xDS port's router.
    pub fn into_service(self) -> ClientStatusDiscoveryServiceServer<Csds> {
        ClientStatusDiscoveryServiceServer::new(self)
    }

    /// The answer to one request, computed now.
    pub fn answer(&self, req: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        let filter = NodeFilter::new(&req.node_matchers)?;
        let snapshot = self.cache.current();
        let streams = self.clients.snapshot();
        Ok(ClientStatusResponse {
            config: client_configs(&streams, snapshot.as_deref(), &filter, !req.exclude_resource_contents),
        })
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<StatusStream>, Status> {
        let this = self.clone();
        let stop = self.shutdown.clone().cancelled_owned();
        let out = request
            .into_inner()
            .map(move |req| req.and_then(|r| this.answer(&r)))
            .take_until(stop);
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        self.answer(request.get_ref()).map(Response::new)
    }
}

/// The request's node matchers, checked once.
struct NodeFilter {
    /// `None`: every node.
    any_of: Option<Vec<IdMatch>>,
}

enum IdMatch {
    Any,
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(regex::Regex),
}

impl NodeFilter {
    fn new(matchers: &[NodeMatcher]) -> Result<Self, Status> {
        if matchers.is_empty() {
            return Ok(NodeFilter { any_of: None });
        }
        let mut any_of = Vec::with_capacity(matchers.len());
        for m in matchers {
            if !m.node_metadatas.is_empty() {
                return Err(Status::invalid_argument(
                    "node_matchers: node_metadatas is not supported (match on node_id)",
                ));
            }
            any_of.push(match &m.node_id {
                None => IdMatch::Any,
                Some(s) => IdMatch::new(s)?,
            });
        }
        Ok(NodeFilter { any_of: Some(any_of) })
    }

    fn matches(&self, node_id: &str) -> bool {
        match &self.any_of {
            None => true,
            Some(ms) => ms.iter().any(|m| m.matches(node_id)),
        }
    }
}

impl IdMatch {
    fn new(s: &StringMatcher) -> Result<Self, Status> {
        let ic = s.ignore_case;
        let fold = |v: &str| if ic { v.to_lowercase() } else { v.to_string() };
        Ok(match &s.match_pattern {
            Some(MatchPattern::Exact(v)) => IdMatch::Exact(fold(v), ic),
            Some(MatchPattern::Prefix(v)) => IdMatch::Prefix(fold(v), ic),
            Some(MatchPattern::Suffix(v)) => IdMatch::Suffix(fold(v), ic),
            Some(MatchPattern::Contains(v)) => IdMatch::Contains(fold(v), ic),
            Some(MatchPattern::SafeRegex(r)) => {
                let re = regex::RegexBuilder::new(&format!("^(?:{})$", r.regex))
                    .case_insensitive(ic)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| Status::invalid_argument(format!("node_matchers: bad safe_regex: {e}")))?;
                IdMatch::Regex(re)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(Status::invalid_argument(
                    "node_matchers: custom string matchers are not supported",
                ))
            }
            None => return Err(Status::invalid_argument("node_matchers: node_id has no pattern")),
        })
    }

    fn matches(&self, id: &str) -> bool {
        let folded = |ic: bool| {
            if ic {
                std::borrow::Cow::Owned(id.to_lowercase())
            } else {
                std::borrow::Cow::Borrowed(id)
            }
        };
        match self {
            IdMatch::Any => true,
            IdMatch::Exact(v, ic) => folded(*ic) == v.as_str(),
            IdMatch::Prefix(v, ic) => folded(*ic).starts_with(v.as_str()),
            IdMatch::Suffix(v, ic) => folded(*ic).ends_with(v.as_str()),
            IdMatch::Contains(v, ic) => folded(*ic).contains(v.as_str()),
            IdMatch::Regex(re) => re.is_match(id),
        }
    }
}

/// One Envoy: its streams' statuses merged per type (newest stream wins).
pub struct MergedNode<'a> {
    pub node_id: &'a str,
    pub node_cluster: &'a str,
    pub group: Option<&'a str>,
    pub streams: Vec<&'a ClientStatus>,
    pub types: BTreeMap<ResourceType, &'a TypeStatus>,
}

/// Groups the streams by node (id and cluster), ordered by node id. Streams that have not
/// sent a request yet (no node known) are left out.
pub fn merge_nodes(streams: &[ClientStatus]) -> Vec<MergedNode<'_>> {
    let mut by_node: BTreeMap<(&str, &str), MergedNode<'_>> = BTreeMap::new();
    let mut ordered: Vec<&ClientStatus> = streams
        .iter()
        .filter(|s| !s.node_id.is_empty() || !s.types.is_empty())
        .collect();
    ordered.sort_by_key(|s| s.stream_id);
    for s in ordered {
        let n = by_node
            .entry((s.node_id.as_str(), s.node_cluster.as_str()))
            .or_insert_with(|| MergedNode {
                node_id: &s.node_id,
                node_cluster: &s.node_cluster,
                group: None,
                streams: Vec::new(),
                types: BTreeMap::new(),
            });
        n.streams.push(s);
        if s.group.is_some() {
            n.group = s.group.as_deref();
        }
        for ty in ResourceType::ALL {
            if let Some(t) = s.types.get(ty.short()) {
                // Streams come in id order: a later stream replaces an earlier one's view.
                n.types.insert(ty, t);
            }
        }
    }
    by_node.into_values().collect()
}

fn client_configs(
    streams: &[ClientStatus],
    snapshot: Option<&Snapshot>,
    filter: &NodeFilter,
    contents: bool,
) -> Vec<ClientConfig> {
    merge_nodes(streams)
        .into_iter()
        .filter(|n| filter.matches(n.node_id))
        .map(|n| {
            let group = snapshot.and_then(|s| match n.group {
                Some(g) => s.groups.get(g),
                None => s.group_for(n.node_cluster),
            });
            let mut generic = Vec::new();
            for (ty, ts) in &n.types {
                let current = group.map(|g| g.get(*ty));
                type_configs(*ty, ts, current.map(|c| &**c), contents, &mut generic);
            }
            ClientConfig {
                node: Some(Node {
                    id: n.node_id.to_string(),
                    cluster: n.node_cluster.to_string(),
                    ..Default::default()
                }),
                generic_xds_configs: generic,
                ..Default::default()
            }
        })
        .collect()
}

/// The per-resource entries of one type of one Envoy.
fn type_configs(
    ty: ResourceType,
    ts: &TypeStatus,
    current: Option<&super::cache::TypeSnapshot>,
    contents: bool,
    out: &mut Vec<GenericXdsConfig>,
) {
    let state = ts.sync_state(current.map(|c| c.version.as_str()));
    let mut names: BTreeSet<&str> = ts.name_set.iter().map(|n| &**n).collect();
    if ts.wildcard {
        if let Some(c) = current {
            names.extend(c.resources.keys().map(|k| &**k));
        }
    }
    let acked_at = ts.last_ack_at.map(timestamp);
    for name in names {
        let resource = current.and_then(|c| c.resources.get(name));
        let config_status = match state {
            SyncState::Nacked => ConfigStatus::Error,
            SyncState::Synced => ConfigStatus::Synced,
            SyncState::Stale if ts.in_flight() => ConfigStatus::Stale,
            SyncState::Stale | SyncState::NotSent => ConfigStatus::NotSent,
        };
        let client_status = match state {
            SyncState::Nacked => ClientResourceStatus::Nacked,
            _ if current.is_some() && resource.is_none() => ClientResourceStatus::DoesNotExist,
            SyncState::Synced => ClientResourceStatus::Acked,
            SyncState::Stale if ts.in_flight() => ClientResourceStatus::Requested,
            SyncState::Stale => ClientResourceStatus::Acked,
            SyncState::NotSent => ClientResourceStatus::Requested,
        };
        let error_state = match (&ts.last_nack, state) {
            (Some(n), SyncState::Nacked) => Some(UpdateFailureState {
                last_update_attempt: Some(timestamp(n.at)),
                details: n.error.clone(),
                version_info: n.version.clone(),
                ..Default::default()
            }),
            _ => None,
        };
        out.push(GenericXdsConfig {
            type_url: ty.type_url().to_string(),
            name: name.to_string(),
            version_info: ts.last_acked_version.clone().unwrap_or_default(),
            xds_config: resource.filter(|_| contents).map(|r| Any {
                type_url: ty.type_url().to_string(),
                value: r.body.to_vec(),
            }),
            last_updated: acked_at,
            config_status: config_status as i32,
            client_status: client_status as i32,
            error_state,
            is_static_resource: false,
        });
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::cache::GroupInput;
    use crate::xds::resources::Resource;
    use crate::xds::status::Nack;
    use crate::xds::stream::share_names;

    fn exact(id: &str) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(id.into())),
                ignore_case: false,
            }),
            node_metadatas: vec![],
        }
    }

    fn matcher(p: MatchPattern, ignore_case: bool) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                match_pattern: Some(p),
                ignore_case,
            }),
            node_metadatas: vec![],
        }
    }

    #[test]
    fn node_matchers_select_by_id_with_or_semantics() {
        let f = |ms: Vec<NodeMatcher>| NodeFilter::new(&ms).unwrap_or_else(|e| panic!("{e}"));
        assert!(f(vec![]).matches("anything"));
        let two = f(vec![exact("a"), matcher(MatchPattern::Prefix("olt-".into()), false)]);
        assert!(two.matches("a"));
        assert!(two.matches("olt-1"));
        assert!(!two.matches("ab"));
        assert!(!two.matches("OLT-1"));
        let ic = f(vec![matcher(MatchPattern::Prefix("OLT-".into()), true)]);
        assert!(ic.matches("olt-7"));
        let re = f(vec![matcher(
            MatchPattern::SafeRegex(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "olt-[0-9]+".into(),
                ..Default::default()
            }),
            false,
        )]);
        assert!(re.matches("olt-12"));
        assert!(!re.matches("olt-12x"), "safe_regex matches the whole id");
        assert!(f(vec![matcher(MatchPattern::Suffix("-b".into()), false)]).matches("a-b"));
        assert!(f(vec![matcher(MatchPattern::Contains("x".into()), false)]).matches("axb"));
        let meta = NodeMatcher {
            node_id: None,
            node_metadatas: vec![Default::default()],
        };
        let err = NodeFilter::new(&[meta]).err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("node_metadatas"), "{}", err.message());
    }

    fn snapshot(clusters: &[(&str, u8)], routes: &[&str]) -> Arc<Snapshot> {
        let cache = Cache::new();
        let mut g = GroupInput::default();
        for (n, b) in clusters {
            g.resources[0].push(Resource::new(ResourceType::Cluster, n, vec![*b]));
        }
        for n in routes {
            g.resources[3].push(Resource::new(ResourceType::Route, n, vec![1]));
        }
        let groups = BTreeMap::from([("g".to_string(), g)]);
        cache
            .publish(groups, "g", std::time::Instant::now())
            .expect("ok")
            .expect("published")
    }

    fn stream(id: u64, node: &str) -> ClientStatus {
        let mut s = ClientStatus::new(id, "sotw", "ads");
        s.node_id = node.into();
        s.node_cluster = "g".into();
        s.group = Some("g".into());
        s
    }

    fn names(ns: &[&str]) -> crate::xds::stream::NameSet {
        share_names(ns.iter().map(|n| Arc::from(*n)).collect())
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
            ty: "cds",
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
        let out = client_configs(&streams, Some(&snap), &all, true);
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
        let out = client_configs(&streams, Some(&snap), &only_b, false);
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
        let out = client_configs(&streams, Some(&snap), &NodeFilter::new(&[]).expect("f"), true);
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
        use crate::xds::stream::{Limits, Scope, SotwStream};
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
        let reg = table.register("sotw", "ads");
        let mut sm = SotwStream::new(Scope::Ads, Limits::default(), reg.status.clone());
        sm.on_snapshot(Some(snap.clone()));
        sm.on_request(req(ResourceType::Route, &["r1", "r2"], "", ""))
            .expect("ok");
        let rds = sm.poll().pop().expect("rds response");
        sm.on_request(req(ResourceType::Route, &["r1", "r2"], &rds.version_info, &rds.nonce))
            .expect("ack");
        sm.on_request(req(ResourceType::Cluster, &[], "", "")).expect("ok");
        let cds = sm.poll().pop().expect("cds response");
        let mut nack = req(ResourceType::Cluster, &[], "", &cds.nonce);
        nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
            message: "cluster c1: bad".into(),
            ..Default::default()
        });
        sm.on_request(nack).expect("nack");

        // A second Envoy reconnects claiming the current CDS version: nothing is sent.
        let reg2 = table.register("sotw", "ads");
        let mut sm2 = SotwStream::new(Scope::Ads, Limits::default(), reg2.status.clone());
        sm2.on_snapshot(Some(snap.clone()));
        let mut claim = req(ResourceType::Cluster, &[], &cds.version_info, "");
        if let Some(n) = claim.node.as_mut() {
            n.id = "envoy-2".into();
        }
        sm2.on_request(claim).expect("ok");
        assert!(sm2.poll().is_empty(), "it already holds the current version");

        let csds = Csds::new(table.clone(), Cache::new(), CancellationToken::new());
        // An empty cache: statuses are still reported (no snapshot to compare with).
        assert_eq!(
            csds.answer(&ClientStatusRequest::default()).expect("ok").config.len(),
            2
        );
        let all = NodeFilter::new(&[]).expect("f");
        let out = client_configs(&table.snapshot(), Some(&snap), &all, false);
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
        assert!(client_configs(&table.snapshot(), Some(&snap), &all, false).is_empty());
    }
}
