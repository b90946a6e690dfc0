//! `translate(&Model, &Config)`: the pure function from what the inputs say to the Envoy
//! resources of every node group. No I/O (except reading a configured transcoder descriptor
//! file), no clocks. This is where VOLTHA's knowledge lives; golden tests pin its output.
//!
//! Per group: one listener per configured listener, one route configuration per listener
//! (`<listener>-routes`, served over RDS), the clusters its routes name plus its extra ones, and
//! a load assignment per EDS cluster (possibly empty: a cluster with no endpoints still gets
//! its assignment, so Envoy does not wait for one). A group with `grpc_services` also gets its
//! twin `<group>/grpc` for proxyless gRPC clients (`grpc.rs`).

pub(crate) mod cluster;
pub(crate) mod consistency;
pub(crate) mod grpc;
pub(crate) mod listener;
pub(crate) mod route;

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::config::Config;
use crate::model::Model;
/// The typed resources of one node group: what `translate` gives the engine, which encodes them.
pub use crate::xds::cache::GroupResources;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranslateError {
    #[error("source {0:?} has not delivered yet")]
    MissingSource(String),
    #[error("cluster {cluster:?}: host {host:?} has no port and the cluster sets none")]
    NoPort { cluster: String, host: String },
    #[error("{0}")]
    Config(String),
    #[error("group {group:?} is inconsistent: {}", problems.join("; "))]
    Inconsistent { group: String, problems: Vec<String> },
}

impl TranslateError {
    pub fn reason(&self) -> &'static str {
        match self {
            TranslateError::MissingSource(_) => "source_not_ready",
            TranslateError::NoPort { .. } => "no_port",
            TranslateError::Config(_) => "config",
            TranslateError::Inconsistent { .. } => "inconsistent",
        }
    }
}

/// Translates the model into every group's resources and checks each group's consistency.
pub fn translate(model: &Model, config: &Config) -> Result<BTreeMap<String, GroupResources>, TranslateError> {
    let mut out = BTreeMap::new();
    for g in &config.groups {
        let mut res = GroupResources::default();
        for name in config.group_clusters(g) {
            let c = config
                .cluster(&name)
                .ok_or_else(|| TranslateError::Config(format!("unknown cluster {name:?}")))?;
            for (cluster, cla) in cluster::clusters(c, model)? {
                res.clusters.push(cluster);
                res.endpoints.extend(cla);
            }
        }
        for name in &g.listeners {
            let l = config
                .listener(name)
                .ok_or_else(|| TranslateError::Config(format!("unknown listener {name:?}")))?;
            res.listeners.push(listener::listener(l));
            res.routes.push(route::route_configuration(l, config));
        }
        consistency::check(&g.name, &res)?;
        out.insert(g.name.clone(), res);
        // The group's twin for proxyless gRPC clients (`<group>/grpc`), when it lists services.
        if let Some(twin) = grpc::group(g, config, model)? {
            let name = crate::xds::cache::proxyless_group_name(&g.name);
            consistency::check(&name, &twin)?;
            grpc::check(&name, &twin)?;
            out.insert(name, twin);
        }
    }
    Ok(out)
}

pub(crate) fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod fan_out_tests;
#[cfg(test)]
mod tests;
