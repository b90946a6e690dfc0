//! The versioned snapshot cache.
//!
//! A [`Snapshot`] holds, for each node group, one immutable [`TypeSnapshot`] per resource type.
//! Everything is behind `Arc`: streams hold pointers, never copies. A new snapshot reuses the
//! previous one's `Arc<Resource>` for every resource whose content did not change and the
//! previous `Arc<TypeSnapshot>` for every type whose version did not change, so a stream can tell
//! "nothing changed for me" by pointer comparison and memory holds one copy of each resource.
//!
//! Versions are content hashes: the same input gives the same versions on every replica and
//! after a restart.
//!
//! The cache takes plain Envoy resources by group ([`GroupResources`]) and encodes each once,
//! when it is published.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use tokio::sync::watch;

use super::resources::{content_hash, version_string, Resource, ResourceType, TypeMap};

/// All resources of one type for one node group.
#[derive(Debug)]
pub struct TypeSnapshot {
    /// The resource type.
    pub ty: ResourceType,
    /// The version: a hash of every resource's name and content.
    pub version: String,
    /// The resources by name.
    pub resources: BTreeMap<Arc<str>, Arc<Resource>>,
    /// The version this one was built on, and what changed since: computed once here so that a
    /// stream that held the previous version looks only at the changed names.
    pub(crate) delta_from: Option<TypeDelta>,
}

/// The names that differ between two consecutive versions of one type.
#[derive(Debug)]
pub(crate) struct TypeDelta {
    /// The version the changes are counted from.
    pub(crate) previous_version: String,
    /// Added or modified.
    pub(crate) changed: Vec<Arc<str>>,
    /// Present in the previous version, absent from this one.
    pub(crate) removed: Vec<Arc<str>>,
}

impl TypeDelta {
    fn between(prev: &TypeSnapshot, next: &BTreeMap<Arc<str>, Arc<Resource>>) -> Self {
        let changed = next
            .iter()
            .filter(|(n, r)| prev.resources.get(*n).is_none_or(|o| !Arc::ptr_eq(o, r)))
            .map(|(n, _)| n.clone())
            .collect();
        let removed = prev
            .resources
            .keys()
            .filter(|n| !next.contains_key(*n))
            .cloned()
            .collect();
        TypeDelta {
            previous_version: prev.version.clone(),
            changed,
            removed,
        }
    }
}

impl TypeSnapshot {
    fn build(
        ty: ResourceType,
        resources: Vec<Resource>,
        previous: Option<&Arc<TypeSnapshot>>,
    ) -> Result<Arc<Self>, CacheError> {
        let mut map: BTreeMap<Arc<str>, Arc<Resource>> = BTreeMap::new();
        for r in resources {
            if map.contains_key(&r.name) {
                return Err(CacheError::DuplicateName {
                    ty,
                    name: r.name.to_string(),
                });
            }
            // Share the previous generation's copy when the content is the same.
            let shared = previous
                .and_then(|p| p.resources.get(&r.name))
                .filter(|old| old.version == r.version)
                .cloned()
                .unwrap_or_else(|| Arc::new(r));
            map.insert(shared.name.clone(), shared);
        }
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(map.len());
        for (name, r) in &map {
            let mut p = name.as_bytes().to_vec();
            p.push(0);
            p.extend_from_slice(&r.version.to_be_bytes());
            parts.push(p);
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let version = version_string(content_hash(&refs));
        if let Some(p) = previous {
            if p.version == version {
                return Ok(p.clone());
            }
        }
        let delta_from = previous.map(|p| TypeDelta::between(p, &map));
        Ok(Arc::new(TypeSnapshot {
            ty,
            version,
            resources: map,
            delta_from,
        }))
    }

    /// The key `Arc` for a name this snapshot holds, so subscriptions share the string.
    pub(crate) fn intern(&self, name: &str) -> Arc<str> {
        self.resources
            .get_key_value(name)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(name))
    }
}

/// The resources of one node group.
#[derive(Debug)]
pub struct GroupSnapshot {
    /// The group's name (matched against a client's `node.cluster`).
    pub name: String,
    /// One snapshot per type.
    pub types: TypeMap<Arc<TypeSnapshot>>,
}

impl GroupSnapshot {
    /// The snapshot of type `ty`.
    pub fn get(&self, ty: ResourceType) -> &Arc<TypeSnapshot> {
        &self.types[ty]
    }

    /// One version string for the whole group (for logs and the admin API).
    pub fn version(&self) -> String {
        let parts: Vec<&[u8]> = self.types.values().map(|t| t.version.as_bytes()).collect();
        version_string(content_hash(&parts))
    }
}

/// The resources of every node group, as published by the reconciler.
#[derive(Debug)]
pub struct Snapshot {
    /// Every group, by name.
    pub groups: BTreeMap<String, Arc<GroupSnapshot>>,
    /// The group a client gets when no group is named after its `node.cluster`.
    pub default_group: String,
    /// Increases by one with every publication of this process (not part of any version).
    pub generation: u64,
    /// When the input change that led to this snapshot was first observed.
    pub observed_at: std::time::Instant,
}

impl Snapshot {
    /// The group an Envoy with this `node.cluster` gets: the group of that name, else the default.
    pub fn group_for(&self, node_cluster: &str) -> Option<&Arc<GroupSnapshot>> {
        self.groups
            .get(node_cluster)
            .or_else(|| self.groups.get(&self.default_group))
    }

    /// The group a client gets, given its `node.cluster` and `node.user_agent_name`: for a
    /// proxyless gRPC client ([`is_proxyless_grpc`]) the group `<G>/grpc` when the snapshot has
    /// one, where `G` is the group [`Snapshot::group_for`] picks; for anything else (and for a
    /// gRPC client whose group has no `/grpc` twin) the group `group_for` picks. An Envoy and a
    /// gRPC client in the same node cluster so get different resources under the same names
    /// (an Envoy listener and a gRPC API listener may both be called `voltha-grpc`).
    pub fn group_for_client(&self, node_cluster: &str, user_agent_name: &str) -> Option<&Arc<GroupSnapshot>> {
        let base = self.group_for(node_cluster)?;
        if is_proxyless_grpc(user_agent_name) {
            if let Some(g) = self.groups.get(&proxyless_group_name(&base.name)) {
                return Some(g);
            }
        }
        Some(base)
    }
}

/// What a group's twin for proxyless gRPC clients is named after it: `voltha` → `voltha/grpc`.
pub const PROXYLESS_GROUP_SUFFIX: &str = "/grpc";

/// The name of `group`'s twin for proxyless gRPC clients.
pub fn proxyless_group_name(group: &str) -> String {
    format!("{group}{PROXYLESS_GROUP_SUFFIX}")
}

/// Whether a `node.user_agent_name` is a gRPC library's: every gRPC implementation sends
/// `gRPC <language>` (`gRPC Go`, `gRPC Java`, `gRPC C-core <platform>`); Envoy sends `envoy`.
pub fn is_proxyless_grpc(user_agent_name: &str) -> bool {
    user_agent_name == "gRPC" || user_agent_name.starts_with("gRPC ")
}

/// The Envoy resources of one node group, as handed to [`Cache::publish`]. Each is named by
/// its own name field (`name`, or `cluster_name` for a load assignment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupResources {
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
}

/// One group's resources encoded, by type, before they become a snapshot.
pub(crate) type EncodedGroup = TypeMap<Vec<Resource>>;

impl GroupResources {
    /// Encodes every resource once.
    fn encode(&self) -> EncodedGroup {
        fn each<M: Message>(ty: ResourceType, items: &[M], name: impl Fn(&M) -> &str) -> Vec<Resource> {
            items
                .iter()
                .map(|m| Resource::new(ty, name(m), m.encode_to_vec()))
                .collect()
        }
        TypeMap::from_fn(|ty| match ty {
            ResourceType::Cluster => each(ty, &self.clusters, |c| &c.name),
            ResourceType::Endpoint => each(ty, &self.endpoints, |c| &c.cluster_name),
            ResourceType::Listener => each(ty, &self.listeners, |l| &l.name),
            ResourceType::Route => each(ty, &self.routes, |r| &r.name),
        })
    }
}

#[derive(Debug, thiserror::Error)]
/// Why a publication was refused (the previous snapshot stays).
pub enum CacheError {
    #[error("two {} resources are named {name:?}", ty.short())]
    /// Two resources of one type in one group share a name.
    DuplicateName {
        /// Their type.
        ty: ResourceType,
        /// Their name.
        name: String,
    },
    #[error("the default group {0:?} has no resources")]
    /// The default group is not among the published groups.
    NoDefaultGroup(String),
}

/// Holds the current snapshot and tells every stream when it changes.
#[derive(Clone)]
pub struct Cache {
    tx: Arc<watch::Sender<Option<Arc<Snapshot>>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// An empty cache: no snapshot until the first publication.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(None);
        Cache { tx: Arc::new(tx) }
    }

    /// A receiver told of every new snapshot (`None` before the first).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.tx.subscribe()
    }

    /// The current snapshot, if one was published.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.tx.borrow().clone()
    }

    /// Encodes per-group resources, builds a snapshot and publishes it if any group's content
    /// changed. Returns the published snapshot, or `None` when nothing changed.
    pub fn publish(
        &self,
        groups: &BTreeMap<String, GroupResources>,
        default_group: &str,
        observed_at: std::time::Instant,
    ) -> Result<Option<Arc<Snapshot>>, CacheError> {
        if !groups.contains_key(default_group) {
            return Err(CacheError::NoDefaultGroup(default_group.to_string()));
        }
        let encoded = groups.iter().map(|(name, g)| (name.clone(), g.encode())).collect();
        self.publish_encoded(encoded, default_group, observed_at)
    }

    /// [`Cache::publish`] of resources already encoded.
    pub(crate) fn publish_encoded(
        &self,
        groups: BTreeMap<String, EncodedGroup>,
        default_group: &str,
        observed_at: std::time::Instant,
    ) -> Result<Option<Arc<Snapshot>>, CacheError> {
        if !groups.contains_key(default_group) {
            return Err(CacheError::NoDefaultGroup(default_group.to_string()));
        }
        let previous = self.current();
        let mut built = BTreeMap::new();
        for (name, mut input) in groups {
            let prev_group = previous.as_ref().and_then(|p| p.groups.get(&name));
            let types = TypeMap::try_from_fn(|ty| {
                TypeSnapshot::build(ty, std::mem::take(&mut input[ty]), prev_group.map(|g| g.get(ty)))
            })?;
            let group = match prev_group {
                Some(pg) if pg.types.values().zip(types.values()).all(|(a, b)| Arc::ptr_eq(a, b)) => pg.clone(),
                _ => Arc::new(GroupSnapshot {
                    name: name.clone(),
                    types,
                }),
            };
            built.insert(name, group);
        }
        if let Some(p) = &previous {
            let same = p.default_group == default_group
                && p.groups.len() == built.len()
                && p.groups
                    .iter()
                    .zip(&built)
                    .all(|((an, a), (bn, b))| an == bn && Arc::ptr_eq(a, b));
            if same {
                return Ok(None);
            }
        }
        let snap = Arc::new(Snapshot {
            groups: built,
            default_group: default_group.to_string(),
            generation: previous.as_ref().map_or(1, |p| p.generation + 1),
            observed_at,
        });
        self.tx.send_replace(Some(snap.clone()));
        Ok(Some(snap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(clusters: &[(&str, u8)]) -> BTreeMap<String, EncodedGroup> {
        let mut g = EncodedGroup::default();
        for (n, b) in clusters {
            g[ResourceType::Cluster].push(Resource::new(ResourceType::Cluster, n, vec![*b]));
        }
        BTreeMap::from([("default".to_string(), g)])
    }

    #[test]
    fn same_content_is_not_republished_and_versions_are_reproducible() {
        let cache = Cache::new();
        let now = std::time::Instant::now();
        let s1 = cache
            .publish_encoded(input(&[("a", 1), ("b", 2)]), "default", now)
            .expect("ok")
            .expect("published");
        assert!(cache
            .publish_encoded(input(&[("b", 2), ("a", 1)]), "default", now)
            .expect("ok")
            .is_none());
        // A second cache (another replica, or a restart) hands out the same versions.
        let other = Cache::new();
        let s2 = other
            .publish_encoded(input(&[("a", 1), ("b", 2)]), "default", now)
            .expect("ok")
            .expect("published");
        let v = |s: &Snapshot| s.groups["default"].get(ResourceType::Cluster).version.clone();
        assert_eq!(v(&s1), v(&s2));
    }

    #[test]
    fn unchanged_resources_and_types_are_shared_between_generations() {
        let cache = Cache::new();
        let now = std::time::Instant::now();
        let s1 = cache
            .publish_encoded(input(&[("a", 1), ("b", 2)]), "default", now)
            .expect("ok")
            .expect("published");
        let s2 = cache
            .publish_encoded(input(&[("a", 1), ("b", 3)]), "default", now)
            .expect("ok")
            .expect("published");
        let c1 = s1.groups["default"].get(ResourceType::Cluster);
        let c2 = s2.groups["default"].get(ResourceType::Cluster);
        assert_ne!(c1.version, c2.version);
        assert!(Arc::ptr_eq(&c1.resources["a"], &c2.resources["a"]));
        assert!(!Arc::ptr_eq(&c1.resources["b"], &c2.resources["b"]));
        let d = c2.delta_from.as_ref().expect("delta");
        assert_eq!(d.previous_version, c1.version);
        assert_eq!(d.changed.iter().map(|n| &**n).collect::<Vec<_>>(), vec!["b"]);
        assert!(d.removed.is_empty());
        // Types that did not change keep their Arc.
        assert!(Arc::ptr_eq(
            s1.groups["default"].get(ResourceType::Listener),
            s2.groups["default"].get(ResourceType::Listener)
        ));
        assert_eq!(s2.generation, 2);
    }

    #[test]
    fn duplicate_names_and_missing_default_group_are_refused() {
        let cache = Cache::new();
        let now = std::time::Instant::now();
        assert!(matches!(
            cache.publish_encoded(input(&[("a", 1), ("a", 2)]), "default", now),
            Err(CacheError::DuplicateName { .. })
        ));
        assert!(matches!(
            cache.publish_encoded(input(&[("a", 1)]), "other", now),
            Err(CacheError::NoDefaultGroup(_))
        ));
        assert!(cache.current().is_none());
    }

    #[test]
    fn a_grpc_client_gets_its_groups_grpc_twin_and_an_envoy_never_does() {
        let cache = Cache::new();
        let mut groups = input(&[("envoy-cluster", 1)]);
        let mut twin = EncodedGroup::default();
        twin[ResourceType::Cluster].push(Resource::new(ResourceType::Cluster, "grpc-cluster", vec![2]));
        groups.insert("default/grpc".into(), twin);
        groups.insert("other".into(), EncodedGroup::default());
        let s = cache
            .publish_encoded(groups, "default", std::time::Instant::now())
            .expect("ok")
            .expect("published");
        let name = |g: Option<&Arc<GroupSnapshot>>| g.map(|g| g.name.clone());
        assert_eq!(name(s.group_for_client("default", "envoy")), Some("default".into()));
        assert_eq!(name(s.group_for_client("default", "")), Some("default".into()));
        assert_eq!(
            name(s.group_for_client("default", "gRPC Go")),
            Some("default/grpc".into())
        );
        assert_eq!(name(s.group_for_client("default", "gRPC")), Some("default/grpc".into()));
        // An unknown cluster falls back to the default group, and so to its twin.
        assert_eq!(
            name(s.group_for_client("nope", "gRPC C-core linux")),
            Some("default/grpc".into())
        );
        // A group without a twin serves gRPC clients as it serves Envoys.
        assert_eq!(name(s.group_for_client("other", "gRPC Java")), Some("other".into()));
        // Not gRPC: a name that merely starts with the letters.
        assert_eq!(name(s.group_for_client("default", "gRPCish")), Some("default".into()));
        assert_eq!(name(s.group_for_client("default", "grpc-go")), Some("default".into()));
    }

    #[test]
    fn unknown_node_cluster_gets_the_default_group() {
        let cache = Cache::new();
        let mut groups = input(&[("a", 1)]);
        groups.insert("front-proxy".into(), EncodedGroup::default());
        let s = cache
            .publish_encoded(groups, "default", std::time::Instant::now())
            .expect("ok")
            .expect("published");
        assert_eq!(s.group_for("front-proxy").map(|g| g.name.as_str()), Some("front-proxy"));
        assert_eq!(s.group_for("anything").map(|g| g.name.as_str()), Some("default"));
    }
}
