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
use crate::config::{Config, LbPolicy, ListenerConfig, Timeout};

pub fn route_config_name(listener: &str) -> String {
    format!("{listener}-routes")
}

pub fn route_configuration(l: &ListenerConfig, config: &Config) -> RouteConfiguration {
    let routes = l
        .routes
        .iter()
        .map(|r| {
            let path_specifier = match (&r.prefix, &r.path) {
                (_, Some(p)) => PathSpecifier::Path(p.clone()),
                (Some(p), None) => PathSpecifier::Prefix(p.clone()),
                (None, None) => PathSpecifier::Prefix("/".into()),
            };
            let headers = r
                .headers
                .iter()
                .map(|h| HeaderMatcher {
                    name: h.name.clone(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(match (&h.exact, &h.prefix) {
                            (Some(e), _) => MatchPattern::Exact(e.clone()),
                            (None, Some(p)) => MatchPattern::Prefix(p.clone()),
                            (None, None) => MatchPattern::Prefix(String::new()),
                        }),
                        ignore_case: false,
                    })),
                    ..Default::default()
                })
                .collect();
            let hash_policy = config
                .cluster(&r.cluster)
                .filter(|c| matches!(c.lb_policy, LbPolicy::RingHash | LbPolicy::Maglev))
                .and_then(|c| c.hash_header.clone())
                .map(|header_name| {
                    vec![HashPolicy {
                        policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                            header_name,
                            ..Default::default()
                        })),
                        ..Default::default()
                    }]
                })
                .unwrap_or_default();
            Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(path_specifier),
                    headers,
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(r.cluster.clone())),
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
