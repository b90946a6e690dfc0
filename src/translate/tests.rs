//! Golden tests: the embedded default configuration with a known assignment, rendered as Envoy
//! JSON and compared with `tests/golden/*.json`. Run with `UPDATE_GOLDEN=1` to rewrite them
//! after an intended change, and review the diff.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};

use super::*;
use crate::model::{Backend, SourceData};
use crate::xds::resources::ResourceType;

/// One `assignment` source holding `hosts` (no port, no id).
pub(super) fn model(hosts: &[&str]) -> Model {
    let backends = hosts
        .iter()
        .map(|h| Backend {
            host: h.to_string(),
            port: None,
            id: None,
        })
        .collect();
    let mut m = Model::default();
    m.sources
        .insert("assignment".into(), Arc::new(SourceData::single(backends)));
    m
}

fn render(groups: &BTreeMap<String, GroupResources>) -> String {
    let mut out = serde_json::Map::new();
    for (name, g) in groups {
        let mut types = serde_json::Map::new();
        for ty in ResourceType::ALL {
            let bodies: Vec<Vec<u8>> = match ty {
                ResourceType::Cluster => g.clusters.iter().map(Message::encode_to_vec).collect(),
                ResourceType::Endpoint => g.endpoints.iter().map(Message::encode_to_vec).collect(),
                ResourceType::Listener => g.listeners.iter().map(Message::encode_to_vec).collect(),
                ResourceType::Route => g.routes.iter().map(Message::encode_to_vec).collect(),
            };
            let list: Vec<serde_json::Value> = bodies
                .iter()
                .map(|body| crate::envoy_json::to_json(ty.type_url(), body).expect("json"))
                .collect();
            types.insert(ty.short().into(), serde_json::Value::Array(list));
        }
        out.insert(name.clone(), serde_json::Value::Object(types));
    }
    let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(out)).expect("json");
    s.push('\n');
    // The transcoder's inline descriptor is long and pinned by its own test; elide it.
    let re_start = "\"protoDescriptorBin\": \"";
    if let Some(i) = s.find(re_start) {
        let j = s[i + re_start.len()..]
            .find('"')
            .map(|j| i + re_start.len() + j)
            .expect("end");
        s.replace_range(i + re_start.len()..j, "<voltha descriptor set>");
    }
    s
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        want == actual,
        "{} differs from the translation; run with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

#[test]
fn golden_voltha_default_profile() {
    let config = Config::embedded_default().expect("config");
    let groups = translate(&model(&["10.233.102.5", "10.233.102.6"]), &config).expect("translate");
    golden("voltha-default.json", &render(&groups));
}

#[test]
fn null_slots_and_no_cores_give_an_empty_assignment_not_a_missing_one() {
    let config = Config::embedded_default().expect("config");
    let groups = translate(&model(&[]), &config).expect("translate");
    let v = &groups["voltha"];
    assert_eq!(v.endpoints.len(), 2);
    assert!(v
        .endpoints
        .iter()
        .all(|c| c.endpoints.iter().all(|l| l.lb_endpoints.is_empty())));
}

#[test]
fn a_dns_host_in_the_assignment_makes_the_cluster_strict_dns() {
    let config = Config::embedded_default().expect("config");
    let groups = translate(&model(&["10.0.0.1", "vcore-1.voltha.svc"]), &config).expect("translate");
    let v = &groups["voltha"];
    assert!(v.endpoints.is_empty(), "no EDS for DNS clusters");
    for c in &v.clusters {
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        let la = c.load_assignment.as_ref().expect("inline endpoints");
        assert_eq!(la.endpoints[0].lb_endpoints.len(), 2);
    }
}

#[test]
fn versions_are_stable_for_the_same_input() {
    let config = Config::embedded_default().expect("config");
    let a = translate(&model(&["10.0.0.1", "10.0.0.2"]), &config).expect("a");
    let b = translate(&model(&["10.0.0.2", "10.0.0.1"]), &config).expect("b");
    assert_eq!(render(&a), render(&b));
    // The engine's versions: of every resource and of every type.
    let versions = |groups: &BTreeMap<String, GroupResources>| {
        let snap = crate::xds::cache::Cache::new()
            .publish(groups, "voltha", std::time::Instant::now())
            .expect("publish")
            .expect("published");
        let g = &snap.groups["voltha"];
        ResourceType::ALL
            .into_iter()
            .flat_map(|ty| {
                let ts = g.get(ty);
                let each: Vec<(String, u64)> = ts.resources.values().map(|r| (r.name.to_string(), r.version)).collect();
                std::iter::once((ts.version.clone(), 0)).chain(each)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&a), versions(&b));
}

#[test]
fn ring_hash_adds_a_header_hash_policy_to_routes() {
    let yaml = r#"
default_group: g
clusters:
  - { name: c, lb_policy: ring_hash, hash_header: x-device-id, endpoints: { static: ["10.0.0.1:1"] } }
listeners:
  - { name: l, address: 0.0.0.0:1, routes: [{ prefix: /, cluster: c, headers: [{ name: voltha_backend_name, exact: vcore1 }] }] }
groups: [{ name: g, listeners: [l] }]
"#;
    let config = Config::from_yaml(yaml).expect("config");
    let groups = translate(&Model::default(), &config).expect("translate");
    let json = render(&groups);
    assert!(json.contains("\"headerName\": \"x-device-id\""), "{json}");
    assert!(json.contains("\"RING_HASH\""), "{json}");
    assert!(json.contains("\"exact\": \"vcore1\""), "{json}");
}

#[test]
fn inconsistent_groups_are_refused() {
    let mut r = GroupResources::default();
    r.clusters.push(envoy_types::pb::envoy::config::cluster::v3::Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        ..Default::default()
    });
    let e = consistency::check("g", &r).expect_err("no assignment");
    assert!(
        e.to_string().contains("EDS cluster \"c\" has no load assignment"),
        "{e}"
    );
    let config = Config::embedded_default().expect("config");
    let mut groups = translate(&model(&[]), &config).expect("ok");
    let g = groups.get_mut("voltha").expect("voltha");
    g.routes.clear();
    let e = consistency::check("voltha", g).expect_err("missing routes");
    assert!(
        e.to_string()
            .contains("names route configuration \"voltha-grpc-routes\", which does not exist"),
        "{e}"
    );
    g.clusters.retain(|c| c.name != "voltha-grpc-RR");
    g.routes = translate(&model(&[]), &config).expect("ok")["voltha"].routes.clone();
    let e = consistency::check("voltha", g).expect_err("missing cluster");
    assert!(
        e.to_string()
            .contains("routes to cluster \"voltha-grpc-RR\", which does not exist"),
        "{e}"
    );
}

#[test]
fn transcoder_carries_the_voltha_descriptor_inline() {
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::http::grpc_json_transcoder::v3::{
        grpc_json_transcoder::DescriptorSet, GrpcJsonTranscoder,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_filter, HttpConnectionManager,
    };
    use prost::Message;
    let config = Config::embedded_default().expect("config");
    let groups = translate(&model(&[]), &config).expect("ok");
    let l = groups["voltha"]
        .listeners
        .iter()
        .find(|l| l.name == "voltha-rest")
        .expect("rest");
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!("hcm")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    let Some(http_filter::ConfigType::TypedConfig(t)) = &hcm.http_filters[0].config_type else {
        panic!("transcoder")
    };
    let t = GrpcJsonTranscoder::decode(t.value.as_slice()).expect("transcoder");
    assert_eq!(
        t.descriptor_set,
        Some(DescriptorSet::ProtoDescriptorBin(
            crate::proto::VOLTHA_DESCRIPTOR.to_vec()
        ))
    );
    // The descriptor keeps the HTTP rules the transcoder needs.
    let pool = prost_reflect::DescriptorPool::decode(crate::proto::VOLTHA_DESCRIPTOR).expect("pool");
    let m = pool
        .get_service_by_name("voltha.VolthaService")
        .expect("svc")
        .methods()
        .find(|m| m.name() == "ListDevices")
        .expect("m");
    let opts = m.options();
    let http = pool.get_extension_by_name("google.api.http").expect("ext");
    assert!(opts.has_extension(&http), "google.api.http option must survive");
}
