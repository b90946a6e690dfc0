//! `voltha-xds render`: what the server would serve, in the shape of Envoy's `/config_dump`
//! (`configs` of `ClustersConfigDump`, `EndpointsConfigDump`, `ListenersConfigDump` and
//! `RoutesConfigDump`, with the versions the server hands out and proto field names), so it
//! can be compared with what an Envoy holds.

use serde_json::{json, Map, Value};

use crate::envoy_json::to_json_with;
use crate::xds::cache::GroupSnapshot;
use crate::xds::resources::ResourceType;

/// One group's resources as Envoy's `/config_dump` would show them once it holds them all.
pub fn config_dump(g: &GroupSnapshot) -> Result<Value, String> {
    let each = |ty: ResourceType, wrap: &dyn Fn(&str, &str, Value) -> Value| -> Result<Vec<Value>, String> {
        let ts = g.get(ty);
        ts.resources
            .values()
            .map(|r| Ok(wrap(&ts.version, &r.name, to_json_with(ty.type_url(), &r.body, true)?)))
            .collect()
    };
    let clusters = each(
        ResourceType::Cluster,
        &|v, _, c| json!({ "version_info": v, "cluster": c }),
    )?;
    let endpoints = each(
        ResourceType::Endpoint,
        &|v, _, e| json!({ "version_info": v, "endpoint_config": e }),
    )?;
    let listeners = each(
        ResourceType::Listener,
        &|v, name, l| json!({ "name": name, "active_state": { "version_info": v, "listener": l } }),
    )?;
    let routes = each(
        ResourceType::Route,
        &|v, _, r| json!({ "version_info": v, "route_config": r }),
    )?;
    let typed = |t: &str, version: Option<&str>, key: &str, items: Vec<Value>| {
        let mut m = Map::new();
        m.insert(
            "@type".into(),
            Value::String(format!("type.googleapis.com/envoy.admin.v3.{t}")),
        );
        if let Some(v) = version {
            m.insert("version_info".into(), Value::String(v.to_string()));
        }
        m.insert(key.into(), Value::Array(items));
        Value::Object(m)
    };
    Ok(json!({ "configs": [
        typed("ClustersConfigDump", Some(&g.get(ResourceType::Cluster).version), "dynamic_active_clusters", clusters),
        typed("EndpointsConfigDump", None, "dynamic_endpoint_configs", endpoints),
        typed("ListenersConfigDump", Some(&g.get(ResourceType::Listener).version), "dynamic_listeners", listeners),
        typed("RoutesConfigDump", None, "dynamic_route_configs", routes),
    ]}))
}
