//! `GET /debug/status`: one JSON document with what `voltha-xds status` and the status page
//! show: each connected Envoy's state per type against the current snapshot of its group, the
//! snapshot per group, recent pushes and NACKs, source health.
//!
//! The same types deserialize the document in the `status` command. Times are seconds since
//! the Unix epoch (`generated_at` is the server's clock, so ages are computed against it).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::xds::cache::Snapshot;
use crate::xds::csds::merge_nodes;
use crate::xds::resources::ResourceType;
use crate::xds::status::{ClientStatus, Nack, Push, SyncState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub(crate) generated_at: f64,
    pub(crate) ready: bool,
    /// The snapshot's generation; `None` before the first snapshot.
    pub(crate) generation: Option<u64>,
    pub(crate) default_group: Option<String>,
    pub(crate) groups: Vec<GroupView>,
    pub(crate) nodes: Vec<NodeView>,
    #[serde(default)]
    pub(crate) pushes: Vec<PushView>,
    #[serde(default)]
    pub(crate) nacks: Vec<NackView>,
    #[serde(default)]
    pub(crate) sources: Vec<SourceView>,
    /// Per group and cluster, the endpoints served now and the sources they came from.
    #[serde(default)]
    pub endpoints: Vec<super::endpoints::ClusterEndpointsView>,
    /// Push latency and time to ACK per minute over the last hour.
    #[serde(default)]
    pub latency: Vec<super::latency::LatencyPoint>,
    /// The running configuration's file and how its reloads went.
    #[serde(default)]
    pub config: Option<crate::reload::ConfigStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupView {
    pub(crate) name: String,
    pub(crate) version: String,
    /// Per type ("cds", "eds", "lds", "rds").
    pub(crate) types: BTreeMap<String, GroupTypeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupTypeView {
    pub(crate) version: String,
    pub(crate) resources: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeView {
    pub(crate) node_id: String,
    pub(crate) node_cluster: String,
    /// The node group it is served from.
    pub(crate) group: Option<String>,
    pub(crate) streams: Vec<StreamView>,
    /// Every type ("cds", "eds", "lds", "rds"), `NOT SENT` for those it has no stream for.
    pub(crate) types: BTreeMap<String, NodeTypeView>,
}

impl NodeView {
    /// The latest ACK over every type.
    pub(crate) fn last_ack_at(&self) -> Option<f64> {
        self.types.values().filter_map(|t| t.last_ack_at).reduce(f64::max)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StreamView {
    pub(crate) id: u64,
    pub(crate) api: String,
    pub(crate) service: String,
    pub(crate) connected_at: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeTypeView {
    pub(crate) state: SyncState,
    pub(crate) subscribed: bool,
    pub(crate) wildcard: bool,
    pub(crate) names: usize,
    pub(crate) sent_version: Option<String>,
    pub(crate) acked_version: Option<String>,
    /// The version the snapshot holds now for the node's group.
    pub(crate) current_version: Option<String>,
    pub(crate) last_sent_at: Option<f64>,
    pub(crate) last_ack_at: Option<f64>,
    /// The last NACK of this type (kept after later ACKs; `state` says whether it is current).
    pub(crate) nack: Option<NackView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NackView {
    pub(crate) node_id: String,
    pub(crate) node_cluster: String,
    #[serde(rename = "type")]
    pub(crate) ty: String,
    pub(crate) version: String,
    pub(crate) error: String,
    pub(crate) at: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PushView {
    pub(crate) at: f64,
    pub(crate) generation: u64,
    pub(crate) group: String,
    pub(crate) changed: Vec<String>,
    pub(crate) removed: bool,
    pub(crate) versions: BTreeMap<String, String>,
    pub(crate) resources: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SourceView {
    pub(crate) name: String,
    /// `starting`, `ok` or `error`.
    pub(crate) state: String,
    /// Whether it has data: delivered at least once, or carried over (below).
    pub(crate) delivered: bool,
    /// Its data is the last good data of the source it replaced on a reload; it has not
    /// delivered itself yet.
    #[serde(default)]
    pub(crate) carried_over: bool,
    pub(crate) last_success: Option<f64>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<f64>,
}

pub(crate) fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn nack_view(n: &Nack) -> NackView {
    NackView {
        node_id: n.node_id.clone(),
        node_cluster: n.node_cluster.clone(),
        ty: n.ty.short().to_string(),
        version: n.version.clone(),
        error: n.error.clone(),
        at: secs(n.at),
    }
}

/// The groups of `snapshot`, in name order.
pub(crate) fn groups(snapshot: Option<&Snapshot>) -> Vec<GroupView> {
    let Some(s) = snapshot else {
        return Vec::new();
    };
    s.groups
        .iter()
        .map(|(name, g)| GroupView {
            name: name.clone(),
            version: g.version(),
            types: ResourceType::ALL
                .into_iter()
                .map(|t| {
                    let ts = g.get(t);
                    (
                        t.short().to_string(),
                        GroupTypeView {
                            version: ts.version.clone(),
                            resources: ts.resources.len(),
                        },
                    )
                })
                .collect(),
        })
        .collect()
}

/// Every connected Envoy (streams merged per node) against `snapshot`.
pub(crate) fn nodes<S: std::borrow::Borrow<ClientStatus>>(streams: &[S], snapshot: Option<&Snapshot>) -> Vec<NodeView> {
    merge_nodes(streams)
        .into_iter()
        .map(|n| {
            let group = snapshot.and_then(|s| match n.group {
                Some(g) => s.groups.get(g),
                None => s.group_for(n.node_cluster),
            });
            let types = ResourceType::ALL
                .into_iter()
                .map(|ty| {
                    let current = group.map(|g| g.get(ty).version.clone());
                    let v = match n.types.get(&ty) {
                        Some(t) => NodeTypeView {
                            state: t.sync_state(current.as_deref()),
                            subscribed: t.subscribed,
                            wildcard: t.wildcard,
                            names: t.names,
                            sent_version: t.last_sent_version.clone(),
                            acked_version: t.last_acked_version.clone(),
                            current_version: current,
                            last_sent_at: t.last_sent_at.map(secs),
                            last_ack_at: t.last_ack_at.map(secs),
                            nack: t.last_nack.as_ref().map(nack_view),
                        },
                        None => NodeTypeView {
                            state: SyncState::NotSent,
                            subscribed: false,
                            wildcard: false,
                            names: 0,
                            sent_version: None,
                            acked_version: None,
                            current_version: current,
                            last_sent_at: None,
                            last_ack_at: None,
                            nack: None,
                        },
                    };
                    (ty.short().to_string(), v)
                })
                .collect();
            NodeView {
                node_id: n.node_id.to_string(),
                node_cluster: n.node_cluster.to_string(),
                group: group.map(|g| g.name.clone()).or_else(|| n.group.map(String::from)),
                streams: n
                    .streams
                    .iter()
                    .map(|s| StreamView {
                        id: s.stream_id,
                        api: s.api.to_string(),
                        service: s.service.to_string(),
                        connected_at: secs(s.connected_at),
                    })
                    .collect(),
                types,
            }
        })
        .collect()
}

pub(crate) fn nacks(recent: &[Nack]) -> Vec<NackView> {
    recent.iter().map(nack_view).collect()
}

pub(crate) fn pushes(recent: &[Push]) -> Vec<PushView> {
    recent
        .iter()
        .map(|p| PushView {
            at: secs(p.at),
            generation: p.generation,
            group: p.group.clone(),
            changed: p.changed.iter().map(|s| s.to_string()).collect(),
            removed: p.removed,
            versions: p.versions.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            resources: p.resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use crate::xds::cache::{Cache, GroupResources};
    use crate::xds::status::{PushLog, TypeStatus};

    /// Clusters named `n`, each made distinct by its connect timeout (`b` seconds).
    fn publish(cache: &Cache, groups: &[(&str, &[(&str, u8)])]) -> Arc<Snapshot> {
        let mut input = BTreeMap::new();
        for (g, clusters) in groups {
            let mut gi = GroupResources::default();
            for (n, b) in *clusters {
                gi.clusters.push(Cluster {
                    name: n.to_string(),
                    connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                        seconds: i64::from(*b),
                        nanos: 0,
                    }),
                    ..Default::default()
                });
            }
            input.insert(g.to_string(), gi);
        }
        cache
            .publish(&input, groups[0].0, std::time::Instant::now())
            .expect("ok")
            .expect("published")
    }

    #[test]
    fn node_states_against_the_group_snapshot() {
        let cache = Cache::new();
        let snap = publish(&cache, &[("nbi", &[("a", 1)]), ("front", &[("b", 1), ("c", 1)])]);
        let v = |g: &str| snap.groups[g].get(ResourceType::Cluster).version.clone();
        let mut s1 = ClientStatus::new(1, "sotw", "ads");
        s1.node_id = "olt-1".into();
        s1.node_cluster = "front".into();
        s1.group = Some("front".into());
        s1.types.insert(
            "cds",
            TypeStatus {
                subscribed: true,
                last_sent_version: Some(v("front")),
                last_acked_version: Some(v("front")),
                responses: 1,
                acks: 1,
                ..Default::default()
            },
        );
        // Same node in group nbi would be STALE with front's version.
        let mut s2 = s1.clone();
        s2.stream_id = 2;
        s2.node_id = "olt-2".into();
        s2.node_cluster = "nbi".into();
        s2.group = Some("nbi".into());
        let out = nodes(&[s2, s1], Some(&snap));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].node_id, "olt-1");
        assert_eq!(out[0].group.as_deref(), Some("front"));
        assert_eq!(out[0].types["cds"].state, SyncState::Synced);
        assert_eq!(out[0].types["eds"].state, SyncState::NotSent);
        assert_eq!(
            out[0].types["eds"].current_version,
            Some(snap.groups["front"].get(ResourceType::Endpoint).version.clone())
        );
        assert_eq!(out[1].types["cds"].state, SyncState::Stale);
        assert_eq!(out[1].types["cds"].current_version, Some(v("nbi")));

        let gs = groups(Some(&snap));
        assert_eq!(
            gs.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            vec!["front", "nbi"]
        );
        assert_eq!(gs[0].types["cds"].resources, 2);
        assert_eq!(gs[0].types["cds"].version, v("front"));
        assert!(groups(None).is_empty());
    }

    #[test]
    fn the_push_log_records_changed_types_per_group_and_is_bounded() {
        let cache = Cache::new();
        let log = PushLog::default();
        let s1 = publish(&cache, &[("nbi", &[("a", 1)]), ("front", &[("b", 1)])]);
        log.record(None, &s1, SystemTime::now());
        let s2 = publish(&cache, &[("nbi", &[("a", 2)]), ("front", &[("b", 1)])]);
        log.record(Some(&s1), &s2, SystemTime::now());
        let s3 = publish(&cache, &[("nbi", &[("a", 2)])]);
        log.record(Some(&s2), &s3, SystemTime::now());
        let p = pushes(&log.recent());
        let summary: Vec<(u64, &str, Vec<&str>, bool)> = p
            .iter()
            .map(|p| {
                (
                    p.generation,
                    p.group.as_str(),
                    p.changed.iter().map(|s| s.as_str()).collect(),
                    p.removed,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "front", vec!["cds", "eds", "lds", "rds"], false),
                (1, "nbi", vec!["cds", "eds", "lds", "rds"], false),
                (2, "nbi", vec!["cds"], false),
                (3, "front", vec![], true),
            ]
        );
        assert_eq!(
            p[2].versions["cds"],
            s2.groups["nbi"].get(ResourceType::Cluster).version
        );
        assert_eq!(p[2].resources["cds"], 1);

        let mut prev = s3;
        for i in 0..crate::xds::status::RECENT_PUSHES + 3 {
            let next = publish(&cache, &[("nbi", &[("a", (i % 200) as u8 + 3)])]);
            log.record(Some(&prev), &next, SystemTime::now());
            prev = next;
        }
        let recent = log.recent();
        assert_eq!(recent.len(), crate::xds::status::RECENT_PUSHES);
        assert_eq!(recent.last().map(|p| p.generation), Some(prev.generation));
    }
}
