//! Resource types served over xDS and the encoded form of one resource.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3 as pb;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

/// The four resource types voltha-xds serves, in the order ADS pushes them
/// (clusters before endpoints, listeners before routes: make before break).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoint,
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
}

impl ResourceType {
    /// Push order over ADS.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL (`type.googleapis.com/...`).
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type of a type URL, if served.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name used in logs, metrics and the admin API.
    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }

    /// CDS and LDS are wildcard types: an empty first subscription means "everything", and a
    /// SotW response must carry the full set.
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

/// One value per resource type, in push order ([`ResourceType::ALL`]): indexed by type, never
/// by number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeMap<T>([T; 4]);

impl<T> TypeMap<T> {
    /// The value of each type, `f(ty)`.
    pub fn from_fn(mut f: impl FnMut(ResourceType) -> T) -> Self {
        TypeMap(ResourceType::ALL.map(&mut f))
    }

    /// Each type and its value, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(self.0.iter())
    }

    /// The values, in push order.
    pub fn values(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// The value of each type, `f(ty)`, or the first error.
    pub fn try_from_fn<E>(f: impl FnMut(ResourceType) -> Result<T, E>) -> Result<Self, E> {
        let [c, e, l, r] = ResourceType::ALL.map(f);
        Ok(TypeMap([c?, e?, l?, r?]))
    }
}

impl<T> std::ops::Index<ResourceType> for TypeMap<T> {
    type Output = T;
    fn index(&self, ty: ResourceType) -> &T {
        &self.0[ty as usize]
    }
}

impl<T> std::ops::IndexMut<ResourceType> for TypeMap<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        &mut self.0[ty as usize]
    }
}

impl<'a, T> IntoIterator for &'a TypeMap<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Formats a resource or type version for the wire.
pub fn version_string(v: u64) -> String {
    format!("{v:016x}")
}

/// Parses a version this server handed out; anything else is `None` (never equal to ours).
pub(crate) fn parse_version(s: &str) -> Option<u64> {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// The first 8 bytes of a SHA-256, as a number: a content version that is the same on every
/// replica and across restarts for the same bytes.
pub(crate) fn content_hash(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// One resource, encoded once: as an `Any` (SotW) and as a delta `Resource` (Delta).
#[derive(Debug)]
pub struct Resource {
    /// The resource's name.
    pub name: Arc<str>,
    /// The resource's type.
    pub ty: ResourceType,
    /// Content version: a hash of the encoded resource.
    pub version: u64,
    /// The resource message itself (the `Any`'s value).
    pub body: Bytes,
    /// Encoded `google.protobuf.Any`.
    pub any: Bytes,
    /// Encoded `envoy.service.discovery.v3.Resource`.
    pub delta: Bytes,
}

impl Resource {
    /// A resource of type `ty` named `name`, `body` its encoded message.
    pub(crate) fn new(ty: ResourceType, name: &str, body: Vec<u8>) -> Self {
        let version = content_hash(&[ty.type_url().as_bytes(), &body]);
        let any = Any {
            type_url: ty.type_url().to_string(),
            value: body,
        };
        let delta = pb::Resource {
            name: name.to_string(),
            version: version_string(version),
            resource: Some(any.clone()),
            ..Default::default()
        };
        Resource {
            name: Arc::from(name),
            ty,
            version,
            any: Bytes::from(any.encode_to_vec()),
            delta: Bytes::from(delta.encode_to_vec()),
            body: Bytes::from(any.value),
        }
    }

    /// The answer for a requested EDS or RDS name that the snapshot does not hold: an empty
    /// load assignment or an empty route configuration. Without it Envoy keeps the cluster or
    /// listener warming until `initial_fetch_timeout` (15 s by default).
    pub(crate) fn placeholder(ty: ResourceType, name: &str) -> Option<Self> {
        let body = match ty {
            ResourceType::Endpoint => ClusterLoadAssignment {
                cluster_name: name.to_string(),
                ..Default::default()
            }
            .encode_to_vec(),
            ResourceType::Route => RouteConfiguration {
                name: name.to_string(),
                ..Default::default()
            }
            .encode_to_vec(),
            ResourceType::Cluster | ResourceType::Listener => return None,
        };
        Some(Self::new(ty, name, body))
    }

    /// The resource's own version (a hash of its content).
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_unknown_is_none() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"),
            None
        );
        assert_eq!(ResourceType::from_type_url(""), None);
    }

    #[test]
    fn a_type_map_is_indexed_by_type_and_iterates_in_push_order() {
        let mut m: TypeMap<Vec<&str>> = TypeMap::default();
        m[ResourceType::Route].push("r");
        m[ResourceType::Cluster].push("c");
        let order: Vec<(ResourceType, usize)> = m.iter().map(|(t, v)| (t, v.len())).collect();
        assert_eq!(
            order,
            vec![
                (ResourceType::Cluster, 1),
                (ResourceType::Endpoint, 0),
                (ResourceType::Listener, 0),
                (ResourceType::Route, 1)
            ]
        );
        assert_eq!(m[ResourceType::Route], vec!["r"]);
        let shorts = TypeMap::from_fn(ResourceType::short);
        assert_eq!(
            shorts.values().copied().collect::<Vec<_>>(),
            vec!["cds", "eds", "lds", "rds"]
        );
        let failed: Result<TypeMap<u8>, ResourceType> =
            TypeMap::try_from_fn(|t| if t == ResourceType::Listener { Err(t) } else { Ok(1) });
        assert_eq!(failed, Err(ResourceType::Listener));
    }

    #[test]
    fn versions_depend_on_content_only() {
        let a = Resource::new(ResourceType::Cluster, "a", vec![1, 2, 3]);
        let b = Resource::new(ResourceType::Cluster, "a", vec![1, 2, 3]);
        let c = Resource::new(ResourceType::Cluster, "a", vec![1, 2, 4]);
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert_eq!(parse_version(&a.version_string()), Some(a.version));
        assert_eq!(parse_version("not-ours"), None);
    }

    #[test]
    fn placeholders_exist_only_for_named_types() {
        let p = Resource::placeholder(ResourceType::Endpoint, "c1").expect("eds placeholder");
        let cla = ClusterLoadAssignment::decode(p.body.clone()).expect("decode");
        assert_eq!(cla.cluster_name, "c1");
        assert!(cla.endpoints.is_empty());
        assert!(Resource::placeholder(ResourceType::Route, "r").is_some());
        assert!(Resource::placeholder(ResourceType::Cluster, "c").is_none());
        assert!(Resource::placeholder(ResourceType::Listener, "l").is_none());
    }
}
