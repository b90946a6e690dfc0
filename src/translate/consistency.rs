//! The consistency check a group must pass before its snapshot is published: every EDS cluster
//! has a load assignment, every listener's RDS name has a route configuration, every route's
//! cluster exists, and no two resources of a type share a name. A group that fails is refused
//! (the reconciler logs and counts it, and the last good snapshot keeps being served).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::route::v3::{route::Action, route_action::ClusterSpecifier};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::Message;

use super::{GroupResources, TranslateError};

pub(crate) fn check(group: &str, r: &GroupResources) -> Result<(), TranslateError> {
    let mut problems = Vec::new();
    let mut dup = |what: &str, names: Vec<&str>| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for n in names {
            if !seen.insert(n.to_string()) {
                problems.push(format!("two {what} named {n:?}"));
            }
        }
        seen
    };
    let clusters = dup("clusters", r.clusters.iter().map(|c| c.name.as_str()).collect());
    let assignments = dup(
        "load assignments",
        r.endpoints.iter().map(|c| c.cluster_name.as_str()).collect(),
    );
    let _ = dup("listeners", r.listeners.iter().map(|l| l.name.as_str()).collect());
    let routes = dup(
        "route configurations",
        r.routes.iter().map(|x| x.name.as_str()).collect(),
    );

    for c in &r.clusters {
        let eds =
            matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
        if eds {
            let name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            if !assignments.contains(name) {
                problems.push(format!("EDS cluster {:?} has no load assignment", c.name));
            }
        }
    }
    for l in &r.listeners {
        for fc in &l.filter_chains {
            for f in &fc.filters {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                if !any.type_url.ends_with("HttpConnectionManager") {
                    continue;
                }
                match HttpConnectionManager::decode(any.value.as_slice()) {
                    Ok(hcm) => {
                        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                            if !routes.contains(&rds.route_config_name) {
                                problems.push(format!(
                                    "listener {:?} names route configuration {:?}, which does not exist",
                                    l.name, rds.route_config_name
                                ));
                            }
                        }
                    }
                    Err(e) => problems.push(format!("listener {:?}: undecodable connection manager: {e}", l.name)),
                }
            }
        }
    }
    for rc in &r.routes {
        for vh in &rc.virtual_hosts {
            for route in &vh.routes {
                if let Some(Action::Route(a)) = &route.action {
                    if let Some(ClusterSpecifier::Cluster(c)) = &a.cluster_specifier {
                        if !clusters.contains(c) {
                            problems.push(format!(
                                "route configuration {:?} routes to cluster {c:?}, which does not exist",
                                rc.name
                            ));
                        }
                    }
                }
            }
        }
    }
    verdict(group, problems)
}

/// The group's problems as the check's answer: none is `Ok`.
pub(super) fn verdict(group: &str, problems: Vec<String>) -> Result<(), TranslateError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TranslateError::Inconsistent {
            group: group.to_string(),
            problems,
        })
    }
}
