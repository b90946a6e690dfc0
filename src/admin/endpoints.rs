//! Which backends (VOLTHA cores) are behind which cluster right now, per node group: read from
//! the current snapshot's resources (EDS load assignments, and the load assignment inline in a
//! DNS-resolved cluster), each endpoint matched to the sources whose last good data lists it.
//! An endpoint no source lists comes from the configuration (`static` or `dns`).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::model::{SourceData, DEFAULT_SET};
use crate::xds::cache::Snapshot;
use crate::xds::resources::ResourceType;

/// Endpoints listed per cluster; past it the list is cut and `total` still counts them all.
pub(crate) const MAX_ENDPOINTS_SHOWN: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEndpointsView {
    pub group: String,
    pub cluster: String,
    /// `eds` (a load assignment sent over EDS) or `dns` (inline in the cluster; Envoy
    /// resolves the names).
    pub discovery: String,
    pub endpoints: Vec<EndpointView>,
    /// Endpoints in all; `endpoints` holds at most [`MAX_ENDPOINTS_SHOWN`].
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub address: String,
    pub port: u32,
    /// The sources (`name`, or `name/set` for a named set) whose data lists this backend (with
    /// this port, else without a port); empty when it comes from the configuration.
    pub sources: Vec<String>,
    /// The backend's identity in its source (a VOLTHA core id), when it has one.
    pub id: Option<String>,
}

/// A source's backends by host: (source label, port, id).
type ByHost<'a> = BTreeMap<&'a str, Vec<(String, Option<u16>, Option<&'a str>)>>;

fn by_host<'a>(sources: &'a [(String, Arc<SourceData>)]) -> ByHost<'a> {
    let mut m: ByHost<'a> = BTreeMap::new();
    for (name, data) in sources {
        for (set, backends) in &data.sets {
            let label = if set == DEFAULT_SET {
                name.clone()
            } else {
                format!("{name}/{set}")
            };
            for b in backends {
                m.entry(b.host.as_str())
                    .or_default()
                    .push((label.clone(), b.port, b.id.as_deref()));
            }
        }
    }
    m
}

fn endpoints_of(cla: &ClusterLoadAssignment, hosts: &ByHost<'_>) -> (Vec<EndpointView>, usize) {
    let mut out = Vec::new();
    let mut total = 0;
    for e in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            continue;
        };
        let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
            continue;
        };
        total += 1;
        if out.len() >= MAX_ENDPOINTS_SHOWN {
            continue;
        }
        let port = match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => p,
            _ => 0,
        };
        // A backend listed with this port, else one listed without a port (it took the
        // cluster's).
        let listed = hosts.get(sa.address.as_str()).map(Vec::as_slice).unwrap_or_default();
        let exact: Vec<_> = listed.iter().filter(|b| b.1.map(u32::from) == Some(port)).collect();
        let matching = if exact.is_empty() {
            listed.iter().filter(|b| b.1.is_none()).collect()
        } else {
            exact
        };
        let mut sources: Vec<String> = Vec::new();
        let mut id = None;
        for (label, _, bid) in matching {
            if !sources.contains(label) {
                sources.push(label.clone());
            }
            id = id.or(bid.map(String::from));
        }
        out.push(EndpointView {
            address: sa.address.clone(),
            port,
            sources,
            id,
        });
    }
    (out, total)
}

/// Every cluster of every group of `snapshot` with its endpoints, in group then cluster order.
pub(crate) fn cluster_endpoints(
    snapshot: Option<&Snapshot>,
    sources: &[(String, Arc<SourceData>)],
) -> Vec<ClusterEndpointsView> {
    let Some(s) = snapshot else {
        return Vec::new();
    };
    let hosts = by_host(sources);
    let mut out = Vec::new();
    for (group, g) in &s.groups {
        let eds = &g.get(ResourceType::Endpoint).resources;
        for r in g.get(ResourceType::Cluster).resources.values() {
            let Ok(c) = Cluster::decode(r.body.as_ref()) else {
                continue;
            };
            let (discovery, cla) = match &c.load_assignment {
                Some(inline) => ("dns", Some(inline.clone())),
                None => {
                    let name = c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.as_str())
                        .filter(|n| !n.is_empty())
                        .unwrap_or(c.name.as_str());
                    let cla = eds
                        .get(name)
                        .and_then(|e| ClusterLoadAssignment::decode(e.body.as_ref()).ok());
                    ("eds", cla)
                }
            };
            let (endpoints, total) = cla.as_ref().map(|c| endpoints_of(c, &hosts)).unwrap_or_default();
            out.push(ClusterEndpointsView {
                group: group.clone(),
                cluster: c.name.clone(),
                discovery: discovery.to_string(),
                endpoints,
                total,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::{Backend, Model};

    fn backend(host: &str, port: Option<u16>, id: &str) -> Backend {
        Backend {
            host: host.into(),
            port,
            id: Some(id.into()),
        }
    }

    #[test]
    fn endpoints_by_group_and_cluster_with_their_sources() {
        let config = Config::from_yaml(
            r#"
default_group: nbi
sources:
  - { name: cores, type: file, path: /nonexistent, format: voltha_assignment }
  - { name: sets, type: file, path: /nonexistent, format: endpoints }
clusters:
  - { name: voltha-grpc, endpoints: { source: cores, port: 50556 } }
  - { name: rw, endpoints: { source: sets, set: rw } }
  - { name: fixed, endpoints: { static: ["127.0.0.1:9000"] } }
  - { name: portainer, protocol: http1, endpoints: { dns: ["portainer:9000"] } }
listeners:
  - { name: nbi, address: "127.0.0.1:50555", routes: [{ prefix: /, cluster: voltha-grpc }, { prefix: /rw, cluster: rw }, { prefix: /f, cluster: fixed }] }
  - { name: front, address: "127.0.0.1:3000", routes: [{ prefix: /, cluster: portainer }] }
groups: [{ name: nbi, listeners: [nbi] }, { name: front, listeners: [front] }]
"#,
        )
        .expect("config");
        let cores = SourceData::single(vec![
            backend("10.0.0.1", None, "core-a"),
            backend("10.0.0.2", None, "core-b"),
        ]);
        let sets = SourceData {
            sets: BTreeMap::from([(
                "rw".to_string(),
                vec![
                    // The same host as a core, on another port: not that core.
                    Backend {
                        host: "10.0.0.1".into(),
                        port: Some(7000),
                        id: None,
                    },
                ],
            )]),
        };
        let sources = vec![
            ("cores".to_string(), Arc::new(cores)),
            ("sets".to_string(), Arc::new(sets)),
        ];
        let model = Model {
            sources: sources.iter().cloned().collect(),
        };
        let cache = crate::xds::cache::Cache::new();
        crate::reconcile::build_snapshot(&config, &model, &cache, std::time::Instant::now()).expect("snapshot");
        let snap = cache.current().expect("published");
        let v = cluster_endpoints(Some(&snap), &sources);
        let row = |g: &str, c: &str| {
            v.iter()
                .find(|x| x.group == g && x.cluster == c)
                .unwrap_or_else(|| panic!("no {g}/{c} in {v:?}"))
        };
        let ep = |a: &str, port: u32, sources: &[&str], id: Option<&str>| EndpointView {
            address: a.into(),
            port,
            sources: sources.iter().map(|s| s.to_string()).collect(),
            id: id.map(String::from),
        };
        let grpc = row("nbi", "voltha-grpc");
        assert_eq!((grpc.discovery.as_str(), grpc.total), ("eds", 2));
        assert_eq!(
            grpc.endpoints,
            vec![
                ep("10.0.0.1", 50556, &["cores"], Some("core-a")),
                ep("10.0.0.2", 50556, &["cores"], Some("core-b"))
            ]
        );
        assert_eq!(
            row("nbi", "rw").endpoints,
            vec![ep("10.0.0.1", 7000, &["sets/rw"], None)]
        );
        assert_eq!(row("nbi", "fixed").endpoints, vec![ep("127.0.0.1", 9000, &[], None)]);
        let dns = row("front", "portainer");
        assert_eq!(dns.discovery, "dns");
        assert_eq!(dns.endpoints, vec![ep("portainer", 9000, &[], None)]);
        assert!(
            v.iter().all(|x| x.group != "front" || x.cluster == "portainer"),
            "{v:?}"
        );
        assert!(cluster_endpoints(None, &sources).is_empty());
    }

    #[test]
    fn the_list_is_cut_and_the_total_kept() {
        let many: Vec<Backend> = (0..300u32)
            .map(|i| backend(&format!("10.1.{}.{}", i / 256, i % 256), None, &format!("c{i}")))
            .collect();
        let config = Config::from_yaml(
            r#"
default_group: g
sources: [{ name: cores, type: file, path: /nonexistent }]
clusters: [{ name: c, endpoints: { source: cores, port: 1 } }]
listeners: [{ name: l, address: "127.0.0.1:1", routes: [{ prefix: /, cluster: c }] }]
groups: [{ name: g, listeners: [l] }]
"#,
        )
        .expect("config");
        let sources = vec![("cores".to_string(), Arc::new(SourceData::single(many)))];
        let model = Model {
            sources: sources.iter().cloned().collect(),
        };
        let cache = crate::xds::cache::Cache::new();
        crate::reconcile::build_snapshot(&config, &model, &cache, std::time::Instant::now()).expect("snapshot");
        let v = cluster_endpoints(cache.current().as_deref(), &sources);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].total, v[0].endpoints.len()), (300, MAX_ENDPOINTS_SHOWN));
    }
}
