//! Fan-out clusters (one per set of a source) and `cluster_header` routes, on the shipped
//! `config/voltha-kubernetes.yaml`.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::hash_policy, route_action::ClusterSpecifier,
};

use super::*;
use crate::model::{Backend, SourceData};

const SHIPPED: &str = include_str!("../../config/voltha-kubernetes.yaml");

fn b(ip: &str) -> Backend {
    Backend {
        host: ip.into(),
        port: Some(50057),
        id: Some(ip.into()),
    }
}

/// rw-cores with groups → sets; ro-cores in the default set.
fn model(groups: &[(&str, &[&str])], ro: &[&str]) -> Model {
    let mut sets: BTreeMap<String, Vec<Backend>> = BTreeMap::new();
    let mut all: Vec<Backend> = Vec::new();
    for (g, ips) in groups {
        sets.insert(g.to_string(), ips.iter().map(|ip| b(ip)).collect());
        all.extend(ips.iter().map(|ip| b(ip)));
    }
    all.sort();
    sets.insert(String::new(), all);
    let mut m = Model::default();
    m.sources.insert("rw-cores".into(), Arc::new(SourceData { sets }));
    m.sources.insert(
        "ro-cores".into(),
        Arc::new(SourceData::single(ro.iter().map(|ip| b(ip)).collect())),
    );
    m
}

fn hosts(g: &GroupResources, cluster: &str) -> Option<Vec<String>> {
    let cla = g.endpoints.iter().find(|c| c.cluster_name == cluster)?;
    Some(
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
                _ => None,
            })
            .filter_map(|a| match &a.address {
                Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                    Some(s.address.clone())
                }
                _ => None,
            })
            .collect(),
    )
}

#[test]
fn one_cluster_per_group_appears_and_disappears_with_its_set() {
    let config = Config::from_yaml(SHIPPED).expect("shipped config");
    let out = translate(
        &model(&[("1", &["10.0.1.1", "10.0.1.2"]), ("2", &["10.0.2.1"])], &["10.0.9.1"]),
        &config,
    )
    .expect("translates");
    let g = &out["voltha"];
    let names: Vec<&str> = g.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["ro_vcore", "rw_vcore", "vcore1", "vcore2"]);
    assert_eq!(hosts(g, "vcore1"), Some(vec!["10.0.1.1".into(), "10.0.1.2".into()]));
    assert_eq!(hosts(g, "vcore2"), Some(vec!["10.0.2.1".into()]));
    assert_eq!(hosts(g, "rw_vcore").map(|h| h.len()), Some(3));
    assert_eq!(hosts(g, "ro_vcore"), Some(vec!["10.0.9.1".into()]));
    // Members keep the definition's settings.
    let v1 = g.clusters.iter().find(|c| c.name == "vcore1").expect("vcore1");
    assert_eq!(
        v1.lb_policy,
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::RingHash as i32
    );

    // Group 2 goes away, group 3 (empty: its pods are not ready) appears.
    let out = translate(&model(&[("1", &["10.0.1.1"]), ("3", &[])], &[]), &config).expect("translates");
    let g = &out["voltha"];
    let names: Vec<&str> = g.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["ro_vcore", "rw_vcore", "vcore1", "vcore3"]);
    assert_eq!(hosts(g, "vcore3"), Some(vec![]));
    assert!(g.endpoints.iter().all(|c| c.cluster_name != "vcore2"));

    // No group at all: no members, and the group is still consistent.
    let out = translate(&model(&[], &[]), &config).expect("translates");
    assert_eq!(out["voltha"].clusters.len(), 2);
}

#[test]
fn the_binding_route_names_its_cluster_by_header_and_hashes_like_the_members() {
    let config = Config::from_yaml(SHIPPED).expect("shipped config");
    let out = translate(&model(&[("1", &["10.0.1.1"])], &[]), &config).expect("translates");
    let rc = &out["voltha"].routes[0];
    let routes = &rc.virtual_hosts[0].routes;
    let Some(Action::Route(first)) = &routes[0].action else {
        panic!("a route action");
    };
    assert_eq!(
        first.cluster_specifier,
        Some(ClusterSpecifier::ClusterHeader("voltha_backend_name".into()))
    );
    let hashed: Vec<String> = first
        .hash_policy
        .iter()
        .filter_map(|h| match &h.policy_specifier {
            Some(hash_policy::PolicySpecifier::Header(x)) => Some(x.header_name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(hashed, vec!["x-voltha-device-id"]);
    let m = routes[0].r#match.as_ref().expect("match");
    assert_eq!(m.headers[0].name, "voltha_backend_name");
    // A read-only route: round robin, no hash policy.
    let Some(Action::Route(ro)) = &routes[1].action else {
        panic!("a route action");
    };
    assert_eq!(ro.cluster_specifier, Some(ClusterSpecifier::Cluster("ro_vcore".into())));
    assert!(ro.hash_policy.is_empty());
}

#[test]
fn fan_out_members_colliding_are_refused_as_inconsistent() {
    // Two fan-outs with one template: valid (the names depend on the data), refused once a set
    // exists, and the last good snapshot stays served.
    let yaml = SHIPPED
        .replace(
            "  - name: ro_vcore\n",
            "  - { name: twin, fan_out: { name: \"vcore{}\" }, endpoints: { source: rw-cores } }\n  - name: ro_vcore\n",
        )
        .replace("clusters: [vcore]", "clusters: [vcore, twin]");
    let config = Config::from_yaml(&yaml).expect("valid");
    assert!(translate(&model(&[], &[]), &config).is_ok());
    let err = translate(&model(&[("1", &["10.0.1.1"])], &[]), &config).expect_err("collision");
    assert_eq!(err.reason(), "inconsistent");
    assert!(err.to_string().contains("two clusters named \"vcore1\""), "{err}");
}
