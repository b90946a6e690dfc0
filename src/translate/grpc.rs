//! Resources for proxyless gRPC clients: a group's `grpc_services` become its twin group
//! `<group>/grpc`, which the engine serves to clients whose `node.user_agent_name` is a gRPC
//! library's (`gRPC Go`, `gRPC C-core …`). Only what gRPC's xDS client accepts is built:
//!
//! - LDS: an API listener per service, named after the `xds:///` target, whose
//!   `HttpConnectionManager` names its route configuration over RDS (or holds it inline), with
//!   the router as its only HTTP filter (A39).
//! - RDS: path prefix / exact path and header matches, a cluster per route, hash policy on the
//!   ring-hash cluster's header (A42), `max_stream_duration` for a route timeout (A31; gRPC
//!   ignores `timeout`), Envoy's default 15 s when the route sets none. gRPC has no `cluster_header`: such a route becomes one route per fan-out
//!   member, with an exact match of the header on the member's name, then the original match
//!   with `non_forwarding_action`, so that a value naming no member fails (UNAVAILABLE, as on
//!   Envoy) rather than falling through to the next routes.
//! - CDS: EDS clusters over ADS, `ROUND_ROBIN` or `RING_HASH` (A27, A42), nothing else.
//! - EDS: the same endpoints as the Envoy group's, always as a load assignment, IP addresses
//!   only: a source host that is a DNS name (Envoy resolves it) is left out of the twin's
//!   assignment, since gRPC's client would reject the whole assignment (C-core) or dial the name
//!   (Go). [`dropped_hosts`] names what was left out, for the reconciler to count and log.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as PbLb,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action,
    route_action::{hash_policy, ClusterSpecifier, HashPolicy, MaxStreamDuration},
    route_match::PathSpecifier,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};

use super::cluster::ads_config_source;
use super::route::route_config_name;
use super::{any, duration, GroupResources, TranslateError};
use crate::config::{
    ClusterConfig, Config, GroupConfig, GrpcServiceConfig, HeaderMatchConfig, LbPolicy, RouteConfig, RouteConfigMode,
    Timeout,
};
use crate::model::{Model, DEFAULT_SET};

/// The twin group of `g` for proxyless gRPC clients, or `None` when `g` lists no gRPC service.
pub(crate) fn group(g: &GroupConfig, config: &Config, model: &Model) -> Result<Option<GroupResources>, TranslateError> {
    build(g, config, model, &mut Vec::new())
}

/// A host left out of a twin group's load assignment because it is not an IP address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DroppedHost {
    /// The twin group, `<group>/grpc`.
    pub(crate) group: String,
    pub(crate) cluster: String,
    pub(crate) host: String,
}

/// Every source host the twin groups leave out of their load assignments (not an IP address),
/// sorted. Runs the twins' translation again: call it once per published snapshot, not per build.
pub(crate) fn dropped_hosts(config: &Config, model: &Model) -> Vec<DroppedHost> {
    let mut out = Vec::new();
    for g in &config.groups {
        let mut drops = Vec::new();
        if build(g, config, model, &mut drops).is_ok() {
            let group = crate::xds::cache::proxyless_group_name(&g.name);
            out.extend(drops.into_iter().map(|(cluster, host)| DroppedHost {
                group: group.clone(),
                cluster,
                host,
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The twin group, and in `drops` the (cluster, host) pairs left out of its assignments.
fn build(
    g: &GroupConfig,
    config: &Config,
    model: &Model,
    drops: &mut Vec<(String, String)>,
) -> Result<Option<GroupResources>, TranslateError> {
    if g.grpc_services.is_empty() {
        return Ok(None);
    }
    let mut res = GroupResources::default();
    let mut cluster_names = BTreeSet::new();
    for name in &g.grpc_services {
        let s = config
            .grpc_service(name)
            .ok_or_else(|| TranslateError::Config(format!("unknown grpc service {name:?}")))?;
        let rc = route_configuration(s, config, model)?;
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                if let Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(c)),
                    ..
                })) = &r.action
                {
                    cluster_names.insert(c.clone());
                }
            }
        }
        match s.route_config {
            RouteConfigMode::Rds => {
                res.listeners.push(api_listener(s, None));
                res.routes.push(rc);
            }
            RouteConfigMode::Inline => res.listeners.push(api_listener(s, Some(rc))),
        }
    }
    for c in fan_out_definitions(config) {
        for (cluster, cla) in super::cluster::clusters(c, model)? {
            if cluster_names.remove(&cluster.name) {
                push_cluster(&mut res, c, cluster, cla, drops);
            }
        }
    }
    for name in cluster_names {
        let c = config
            .cluster(&name)
            .ok_or_else(|| TranslateError::Config(format!("unknown cluster {name:?}")))?;
        let (cluster, cla) = super::cluster::cluster(c, model)?;
        push_cluster(&mut res, c, cluster, cla, drops);
    }
    res.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    res.endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    Ok(Some(res))
}

fn fan_out_definitions(config: &Config) -> impl Iterator<Item = &ClusterConfig> {
    config.clusters.iter().filter(|c| c.fan_out.is_some())
}

/// A gRPC cluster from the Envoy cluster built for the same configuration: EDS over ADS, with
/// the load assignment Envoy gets (over EDS, or inline when Envoy resolves names itself).
fn push_cluster(
    res: &mut GroupResources,
    c: &ClusterConfig,
    mut envoy: Cluster,
    cla: Option<envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>,
    drops: &mut Vec<(String, String)>,
) {
    let mut cla = cla.or_else(|| envoy.load_assignment.take()).unwrap_or_default();
    // EDS endpoints must be IP addresses: gRPC C-core rejects the whole assignment for one name,
    // grpc-go dials it as is. Envoy's group keeps the name (Envoy resolves it, STRICT_DNS).
    for l in &mut cla.endpoints {
        l.lb_endpoints.retain(|e| match endpoint_host(e) {
            Some(h) if h.parse::<std::net::IpAddr>().is_err() => {
                drops.push((envoy.name.clone(), h.to_string()));
                false
            }
            _ => true,
        });
    }
    // gRPC's client skips a locality without a weight (A27): each gets weight 1 and an empty
    // `Locality` (Envoy's group, unchanged, leaves both out).
    for l in &mut cla.endpoints {
        l.load_balancing_weight = Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 });
        l.locality.get_or_insert_with(Default::default);
    }
    res.clusters.push(Cluster {
        name: envoy.name.clone(),
        connect_timeout: Some(duration(c.connect_timeout.0)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        lb_policy: match c.lb_policy {
            LbPolicy::RingHash => PbLb::RingHash,
            // Validation admits only round_robin and ring_hash for a gRPC service's clusters.
            _ => PbLb::RoundRobin,
        } as i32,
        ..Default::default()
    });
    res.endpoints
        .push(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
            cluster_name: envoy.name,
            ..cla
        });
}

/// The address (host) of an endpoint.
fn endpoint_host(e: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> Option<&str> {
    use envoy_types::pb::envoy::config::core::v3::address;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    match &e.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
            address::Address::SocketAddress(sa) => Some(sa.address.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn api_listener(s: &GrpcServiceConfig, inline: Option<RouteConfiguration>) -> Listener {
    let route_specifier = match inline {
        Some(rc) => RouteSpecifier::RouteConfig(rc),
        None => RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config_name(&s.name),
        }),
    };
    let hcm = HttpConnectionManager {
        stat_prefix: s.name.clone(),
        route_specifier: Some(route_specifier),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: s.name.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    }
}

/// The service's routes, in order. A `cluster_header` route becomes one route per fan-out
/// member that exists now (sets of the sources), each matching the header's value exactly.
pub(crate) fn route_configuration(
    s: &GrpcServiceConfig,
    config: &Config,
    model: &Model,
) -> Result<RouteConfiguration, TranslateError> {
    let mut routes = Vec::new();
    for r in &s.routes {
        match &r.cluster_header {
            None => routes.push(route(r, &r.cluster, &[], config)),
            Some(header) => {
                for c in fan_out_definitions(config) {
                    let (Some(fan), Some(src)) = (&c.fan_out, &c.endpoints.source) else {
                        continue;
                    };
                    let data = model
                        .sources
                        .get(src)
                        .ok_or_else(|| TranslateError::MissingSource(src.clone()))?;
                    for set in data.sets.keys().filter(|set| set.as_str() != DEFAULT_SET) {
                        let member = fan.member(set);
                        let pin = HeaderMatchConfig {
                            name: header.clone(),
                            exact: Some(member.clone()),
                            prefix: None,
                        };
                        routes.push(route(r, &member, std::slice::from_ref(&pin), config));
                    }
                }
                // A value that names no member: Envoy answers UNAVAILABLE (no such cluster), so
                // the original match ends here too instead of falling through to later routes.
                // gRPC fails a call whose route is not a forwarding one with UNAVAILABLE.
                let mut stop = route(r, "", &[], config);
                stop.action = Some(Action::NonForwardingAction(Default::default()));
                routes.push(stop);
            }
        }
    }
    Ok(RouteConfiguration {
        name: route_config_name(&s.name),
        virtual_hosts: vec![VirtualHost {
            name: s.name.clone(),
            domains: s.domains.clone(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn route(r: &RouteConfig, cluster: &str, extra: &[HeaderMatchConfig], config: &Config) -> Route {
    let path_specifier = match (&r.prefix, &r.path) {
        (_, Some(p)) => PathSpecifier::Path(p.clone()),
        (Some(p), None) => PathSpecifier::Prefix(p.clone()),
        (None, None) => PathSpecifier::Prefix("/".into()),
    };
    let headers = r
        .headers
        .iter()
        .chain(extra)
        .map(super::route::header_matcher)
        .collect();
    // The cluster (or, for a fan-out member, its definition) decides the hash header.
    let def = config.cluster(cluster).or_else(|| {
        fan_out_definitions(config).find(|c| c.fan_out.as_ref().is_some_and(|f| matches_template(&f.name, cluster)))
    });
    let hash_policy = def
        .filter(|c| c.lb_policy == LbPolicy::RingHash)
        .and_then(|c| c.hash_header.clone())
        .map(|header_name| HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name,
                ..Default::default()
            })),
            ..Default::default()
        })
        .into_iter()
        .collect();
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            hash_policy,
            max_stream_duration: match r.timeout {
                Some(Timeout::After(d)) => Some(MaxStreamDuration {
                    max_stream_duration: Some(duration(d)),
                    ..Default::default()
                }),
                // Envoy's route timeout defaults to 15 s; gRPC's max_stream_duration to none.
                None => Some(MaxStreamDuration {
                    max_stream_duration: Some(duration(ENVOY_DEFAULT_ROUTE_TIMEOUT)),
                    ..Default::default()
                }),
                Some(Timeout::None) => None,
            },
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Envoy's route timeout when a route sets none; a gRPC route without `timeout` gets it as its
/// `max_stream_duration`, so that both kinds of client give up on a call at the same time.
pub(crate) const ENVOY_DEFAULT_ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether `name` is a member of the fan-out template `tpl` (`vcore{}` and `vcore2`).
fn matches_template(tpl: &str, name: &str) -> bool {
    match tpl.split_once("{}") {
        Some((pre, post)) => name.len() > pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post),
        None => tpl == name,
    }
}

/// The twin group's own consistency rule, beside `consistency::check`: every API listener's RDS
/// name has a route configuration.
pub(crate) fn check(group: &str, r: &GroupResources) -> Result<(), TranslateError> {
    use prost::Message;
    let routes: BTreeSet<&str> = r.routes.iter().map(|x| x.name.as_str()).collect();
    let mut problems = Vec::new();
    for l in &r.listeners {
        let Some(any) = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()) else {
            continue;
        };
        match HttpConnectionManager::decode(any.value.as_slice()) {
            Ok(hcm) => {
                if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                    if !routes.contains(rds.route_config_name.as_str()) {
                        problems.push(format!(
                            "API listener {:?} names route configuration {:?}, which does not exist",
                            l.name, rds.route_config_name
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!(
                "API listener {:?}: undecodable connection manager: {e}",
                l.name
            )),
        }
    }
    super::consistency::verdict(group, problems)
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;
