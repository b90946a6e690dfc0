//! The twin groups for proxyless gRPC clients, on the shipped configurations.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as PbLb};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::hash_policy, route_action::ClusterSpecifier,
    route_match::PathSpecifier, Route,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;

use super::super::{translate, GroupResources};
use crate::config::Config;
use crate::model::{Backend, Model, SourceData};

use crate::translate::tests::model as assignment;

fn hcm(g: &GroupResources, listener: &str) -> HttpConnectionManager {
    let l = g.listeners.iter().find(|l| l.name == listener).expect("listener");
    assert!(
        l.address.is_none() && l.filter_chains.is_empty(),
        "an API listener only"
    );
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .expect("api_listener");
    assert!(any.type_url.ends_with("HttpConnectionManager"));
    HttpConnectionManager::decode(any.value.as_slice()).expect("hcm")
}

fn cluster_of(r: &Route) -> String {
    match &r.action {
        Some(Action::Route(a)) => match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_default_profile_twin_has_an_api_listener_the_same_routes_and_eds_clusters() {
    let config = Config::embedded_default().expect("config");
    let groups = translate(&assignment(&["10.0.0.1", "10.0.0.2"]), &config).expect("translate");
    let twin = &groups["voltha/grpc"];
    let h = hcm(twin, "voltha-grpc");
    assert_eq!(h.http_filters.len(), 1);
    assert_eq!(h.http_filters[0].name, "envoy.filters.http.router");
    match &h.route_specifier {
        Some(RouteSpecifier::Rds(r)) => assert_eq!(r.route_config_name, "voltha-grpc-routes"),
        other => panic!("{other:?}"),
    }
    assert_eq!(twin.listeners.len(), 1);
    assert_eq!(twin.routes.len(), 1);
    let envoy_routes = &groups["voltha"].routes[0].virtual_hosts[0].routes;
    let grpc_routes = &twin.routes[0].virtual_hosts[0].routes;
    assert_eq!(grpc_routes.len(), envoy_routes.len());
    for (g, e) in grpc_routes.iter().zip(envoy_routes) {
        assert_eq!(g.r#match, e.r#match, "same matches, in the same order");
        assert_eq!(cluster_of(g), cluster_of(e));
        let Some(Action::Route(a)) = &g.action else { panic!() };
        assert!(
            a.timeout.is_none() && a.max_stream_duration.is_none(),
            "timeout: none sets nothing"
        );
    }
    let names: Vec<&str> = twin.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["voltha-grpc", "voltha-grpc-RR"]);
    for c in &twin.clusters {
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        assert_eq!(c.lb_policy, PbLb::RoundRobin as i32);
        assert!(c.typed_extension_protocol_options.is_empty(), "only what gRPC reads");
    }
    for cla in &twin.endpoints {
        assert_eq!(cla.endpoints.len(), 1);
        assert_eq!(
            cla.endpoints[0].load_balancing_weight.as_ref().map(|w| w.value),
            Some(1)
        );
        assert!(cla.endpoints[0].locality.is_some());
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
    }
    // The front proxy lists no service: no twin.
    assert!(!groups.contains_key("front-proxy/grpc"));
}

/// Every source of `config` with cores in two sets ("1", "2") and the default set holding both.
fn every_source_ready(config: &Config) -> Model {
    let b = |ip: &str| Backend {
        host: ip.into(),
        port: Some(50057),
        id: Some(ip.into()),
    };
    let mut m = Model::default();
    for s in &config.sources {
        let mut sets = BTreeMap::new();
        sets.insert("1".to_string(), vec![b("10.0.1.1")]);
        sets.insert("2".to_string(), vec![b("10.0.2.1")]);
        sets.insert(String::new(), vec![b("10.0.1.1"), b("10.0.2.1")]);
        m.sources.insert(s.name().to_string(), Arc::new(SourceData { sets }));
    }
    m
}

#[test]
fn envoy_groups_are_the_same_with_and_without_grpc_services_in_every_shipped_config() {
    let shipped = [
        (
            "voltha-xds.yaml (the embedded default)",
            crate::config::EMBEDDED_DEFAULT,
        ),
        ("voltha-consul.yaml", include_str!("../../config/voltha-consul.yaml")),
        ("voltha-etcd.yaml", include_str!("../../config/voltha-etcd.yaml")),
        (
            "voltha-kubernetes.yaml",
            include_str!("../../config/voltha-kubernetes.yaml"),
        ),
    ];
    for (file, text) in shipped {
        let with = Config::from_yaml(text).expect("config");
        let mut without = with.clone();
        let mut twins = 0;
        for g in &mut without.groups {
            twins += usize::from(!g.grpc_services.is_empty());
            g.grpc_services.clear();
        }
        without.grpc_services.clear();
        assert!(twins > 0, "{file} serves proxyless gRPC clients");
        let m = every_source_ready(&with);
        let a = translate(&m, &with).unwrap_or_else(|e| panic!("{file}: {e}"));
        let b = translate(&m, &without).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(a.len(), b.len() + twins, "{file}: one twin per group with services");
        for (name, g) in &b {
            assert_eq!(a.get(name), Some(g), "{file}: Envoy's group {name} is unchanged");
        }
    }
}

#[test]
fn a_dns_host_is_left_out_of_the_grpc_assignment_while_envoy_resolves_it() {
    let config = Config::embedded_default().expect("config");
    let model = assignment(&["10.0.0.1", "core.voltha.svc", "::1"]);
    let groups = translate(&model, &config).expect("translate");
    assert!(groups["voltha"].endpoints.is_empty(), "Envoy: STRICT_DNS, inline");
    let envoy_hosts = groups["voltha"].clusters[0]
        .load_assignment
        .as_ref()
        .map(|c| c.endpoints[0].lb_endpoints.len());
    assert_eq!(envoy_hosts, Some(3), "Envoy keeps the name");
    let twin = &groups["voltha/grpc"];
    assert_eq!(twin.endpoints.len(), 2, "gRPC: EDS");
    for cla in &twin.endpoints {
        let hosts: Vec<_> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .filter_map(super::endpoint_host)
            .collect();
        assert_eq!(hosts, ["10.0.0.1", "::1"], "{}: IP addresses only", cla.cluster_name);
    }
    for c in &twin.clusters {
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        assert!(c.load_assignment.is_none());
    }
    let dropped = super::dropped_hosts(&config, &model);
    let got: Vec<_> = dropped
        .iter()
        .map(|d| (d.group.as_str(), d.cluster.as_str(), d.host.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("voltha/grpc", "voltha-grpc", "core.voltha.svc"),
            ("voltha/grpc", "voltha-grpc-RR", "core.voltha.svc"),
        ]
    );
    assert!(super::dropped_hosts(&config, &assignment(&["10.0.0.1"])).is_empty());
}

#[test]
fn kubernetes_binding_route_becomes_one_route_per_group_with_ring_hash() {
    let config = Config::from_yaml(include_str!("../../config/voltha-kubernetes.yaml")).expect("config");
    let b = |ip: &str| Backend {
        host: ip.into(),
        port: Some(50057),
        id: None,
    };
    let mut sets = BTreeMap::new();
    sets.insert("1".to_string(), vec![b("10.0.1.1"), b("10.0.1.2")]);
    sets.insert("2".to_string(), vec![b("10.0.2.1")]);
    sets.insert(String::new(), vec![b("10.0.1.1"), b("10.0.1.2"), b("10.0.2.1")]);
    let mut m = Model::default();
    m.sources.insert("rw-cores".into(), Arc::new(SourceData { sets }));
    m.sources
        .insert("ro-cores".into(), Arc::new(SourceData::single(vec![b("10.0.9.1")])));
    let groups = translate(&m, &config).expect("translate");
    let twin = &groups["voltha/grpc"];
    let routes = &twin.routes[0].virtual_hosts[0].routes;
    // afrouter's binding route (one, cluster_header) became vcore1 and vcore2, first.
    assert_eq!(cluster_of(&routes[0]), "vcore1");
    assert_eq!(cluster_of(&routes[1]), "vcore2");
    for (r, member) in routes[..2].iter().zip(["vcore1", "vcore2"]) {
        let m = r.r#match.as_ref().expect("match");
        assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/voltha.".into())));
        let pins: Vec<_> = m
            .headers
            .iter()
            .map(|h| match &h.header_match_specifier {
                Some(HeaderMatchSpecifier::StringMatch(s)) => (h.name.as_str(), s.match_pattern.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            pins,
            [
                ("voltha_backend_name", Some(MatchPattern::Prefix("vcore".into()))),
                ("voltha_backend_name", Some(MatchPattern::Exact(member.into()))),
            ]
        );
        let Some(Action::Route(a)) = &r.action else { panic!() };
        match a.hash_policy.first().and_then(|p| p.policy_specifier.as_ref()) {
            Some(hash_policy::PolicySpecifier::Header(h)) => assert_eq!(h.header_name, "x-voltha-device-id"),
            other => panic!("{other:?}"),
        }
    }
    // Then the original match, ending there: a value naming no group does not fall through.
    let stop = &routes[2];
    assert!(
        matches!(stop.action, Some(Action::NonForwardingAction(_))),
        "{:?}",
        stop.action
    );
    let m = stop.r#match.as_ref().expect("match");
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/voltha.".into())));
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, "voltha_backend_name");
    assert_eq!(
        m.headers[0].header_match_specifier,
        Some(HeaderMatchSpecifier::StringMatch(
            envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(MatchPattern::Prefix("vcore".into())),
                ignore_case: false,
            }
        ))
    );
    assert_eq!(routes.len(), 3 + 27 + 1, "the read-only routes and rw_vcore follow");
    assert_eq!(cluster_of(&routes[3]), "ro_vcore");
    assert_eq!(cluster_of(routes.last().expect("last")), "rw_vcore");
    let policy = |name: &str| twin.clusters.iter().find(|c| c.name == name).map(|c| c.lb_policy);
    assert_eq!(policy("vcore1"), Some(PbLb::RingHash as i32));
    assert_eq!(policy("vcore2"), Some(PbLb::RingHash as i32));
    assert_eq!(policy("rw_vcore"), Some(PbLb::RingHash as i32));
    assert_eq!(policy("ro_vcore"), Some(PbLb::RoundRobin as i32));
    assert_eq!(twin.clusters.len(), 4);
}

#[test]
fn timeouts_become_max_stream_duration_and_inline_route_configs_need_no_rds() {
    let yaml = r#"
default_group: g
sources: [{ name: assignment, type: file, path: /x }]
clusters: [{ name: c, endpoints: { source: assignment, port: 9 } }]
grpc_services:
  - name: svc
    route_config: inline
    domains: [svc]
    routes:
      - { prefix: /a, cluster: c, timeout: 1500ms }
      - { prefix: /b, cluster: c }
      - { prefix: /c, cluster: c, timeout: none }
groups: [{ name: g, grpc_services: [svc] }]
"#;
    let config = Config::from_yaml(yaml).expect("config");
    let groups = translate(&assignment(&["10.0.0.1"]), &config).expect("translate");
    let twin = &groups["g/grpc"];
    assert!(twin.routes.is_empty(), "no RDS resource");
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm(twin, "svc").route_specifier else {
        panic!("inline route configuration")
    };
    assert_eq!(rc.virtual_hosts[0].domains, ["svc"]);
    let Some(Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    let d = a
        .max_stream_duration
        .as_ref()
        .and_then(|m| m.max_stream_duration.as_ref())
        .expect("duration");
    assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    assert!(a.timeout.is_none());
    // No timeout: Envoy's default, 15 s, for gRPC clients too. `none`: no limit.
    let limit = |i: usize| match &rc.virtual_hosts[0].routes[i].action {
        Some(Action::Route(a)) => a
            .max_stream_duration
            .as_ref()
            .and_then(|m| m.max_stream_duration.as_ref())
            .map(|d| (d.seconds, d.nanos)),
        other => panic!("{other:?}"),
    };
    assert_eq!(limit(1), Some((15, 0)));
    assert_eq!(limit(2), None);
    let envoy = Config::from_yaml(include_str!("../../config/voltha-xds.yaml")).expect("config");
    let envoy = translate(&assignment(&["10.0.0.1"]), &envoy).expect("translate");
    assert!(
        envoy["voltha"].routes[0].virtual_hosts[0]
            .routes
            .iter()
            .all(|r| matches!(&r.action, Some(Action::Route(a)) if a.max_stream_duration.is_none())),
        "Envoy's routes are unchanged"
    );
    // The group itself has no listener and no cluster: Envoys of g get nothing.
    assert!(groups["g"].listeners.is_empty() && groups["g"].clusters.is_empty());
}
