//! Route configurations: one per listener, named `<listener>-routes`, served over RDS.

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    route::Action,
    route_action::{hash_policy, ClusterSpecifier, HashPolicy},
    route_match::PathSpecifier,
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

use super::duration;
use crate::config::{Config, HeaderMatchConfig, LbPolicy, ListenerConfig, Timeout};

pub(crate) fn route_config_name(listener: &str) -> String {
    format!("{listener}-routes")
}

pub(crate) fn route_configuration(l: &ListenerConfig, config: &Config) -> RouteConfiguration {
    let routes = l
        .routes
        .iter()
        .map(|r| {
            let path_specifier = match (&r.prefix, &r.path) {
                (_, Some(p)) => PathSpecifier::Path(p.clone()),
                (Some(p), None) => PathSpecifier::Prefix(p.clone()),
                (None, None) => PathSpecifier::Prefix("/".into()),
            };
            let headers = r.headers.iter().map(header_matcher).collect();
            // A route to a named cluster hashes on that cluster's hash_header. A cluster_header
            // route may reach any fan-out member, so it hashes on theirs.
            let mut hash_headers: Vec<String> = config
                .clusters
                .iter()
                .filter(|c| {
                    if r.cluster_header.is_some() {
                        c.fan_out.is_some()
                    } else {
                        c.name == r.cluster
                    }
                })
                .filter(|c| matches!(c.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev))
                .filter_map(|c| c.hash_header.clone())
                .collect();
            hash_headers.sort();
            hash_headers.dedup();
            let hash_policy = hash_headers
                .into_iter()
                .map(|header_name| HashPolicy {
                    policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                        header_name,
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect();
            let cluster_specifier = match &r.cluster_header {
                Some(h) => ClusterSpecifier::ClusterHeader(h.clone()),
                None => ClusterSpecifier::Cluster(r.cluster.clone()),
            };
            Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path_specifier),
                    headers,
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(cluster_specifier),
                    prefix_rewrite: r.prefix_rewrite.clone().unwrap_or_default(),
                    timeout: r.timeout.map(|t| match t {
                        Timeout::None => duration(std::time::Duration::ZERO),
                        Timeout::After(d) => duration(d),
                    }),
                    hash_policy,
                    ..Default::default()
                })),
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: route_config_name(&l.name),
        virtual_hosts: vec![VirtualHost {
            name: l.name.clone(),
            domains: l.domains.clone(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A header match as Envoy and gRPC read it: a case-sensitive exact or prefix string match.
pub(super) fn header_matcher(h: &HeaderMatchConfig) -> HeaderMatcher {
    HeaderMatcher {
        name: h.name.clone(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(match (&h.exact, &h.prefix) {
                (Some(e), _) => MatchPattern::Exact(e.clone()),
                (None, Some(p)) => MatchPattern::Prefix(p.clone()),
                // Validation refuses a match with neither.
                (None, None) => MatchPattern::Prefix(String::new()),
            }),
            ignore_case: false,
        })),
        ..Default::default()
    }
}
