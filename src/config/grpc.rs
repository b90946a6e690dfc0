//! `grpc_services`: services for proxyless gRPC clients (a gRPC library's own xDS resolver,
//! `xds:///<name>`), and the rules that keep them inside the subset of xDS gRPC's client accepts
//! (gRFCs A27, A28, A31, A42). A group lists the services its proxyless clients get in
//! `grpc_services`; the translation is in `translate::grpc`.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{Config, EndpointsConfig, LbPolicy, RouteConfig, Timeout};

/// One proxyless gRPC service: an API listener named after the `xds:///` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServiceConfig {
    /// The target's name: a client dials `xds:///<name>` and asks LDS for `<name>`.
    pub name: String,
    /// Where the route configuration goes: its own RDS resource `<name>-routes` (the default),
    /// or inline in the listener's connection manager.
    #[serde(default)]
    pub route_config: RouteConfigMode,
    /// The virtual host's domains; gRPC matches them against the target's name.
    #[serde(default = "super::default_domains")]
    pub domains: Vec<String>,
    /// The routes, as for a listener (a YAML alias can share a listener's list).
    pub routes: Vec<RouteConfig>,
}

/// Where a gRPC service's route configuration is served.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouteConfigMode {
    /// A `RouteConfiguration` of its own, named `<service>-routes`, served over RDS.
    #[default]
    Rds,
    /// Inside the API listener's `HttpConnectionManager.route_config`.
    Inline,
}

/// The longest gRPC service name accepted (a DNS name's limit).
pub(crate) const MAX_GRPC_SERVICE_NAME: usize = 253;

impl Config {
    pub fn grpc_service(&self, name: &str) -> Option<&GrpcServiceConfig> {
        self.grpc_services.iter().find(|s| s.name == name)
    }
}

/// Every problem of the `grpc_services` and of the groups' `grpc_services`, appended to `e`.
pub(super) fn validate(e: &mut Vec<String>, c: &Config) {
    let mut names = BTreeSet::new();
    for s in &c.grpc_services {
        let at = format!("grpc service {:?}", s.name);
        if s.name.is_empty() {
            e.push("a grpc service has an empty name".into());
        } else if !names.insert(s.name.as_str()) {
            e.push(format!("duplicate grpc service name {:?}", s.name));
        }
        if s.name.len() > MAX_GRPC_SERVICE_NAME
            || s.name.starts_with('/')
            || s.name.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        {
            e.push(format!(
                "{at}: the name is the xds:/// target's path: at most {MAX_GRPC_SERVICE_NAME} characters, no \
                 whitespace, not starting with '/'"
            ));
        }
        if s.routes.is_empty() {
            e.push(format!("{at}: has no routes"));
        }
        if s.domains.is_empty() {
            e.push(format!("{at}: domains is empty (use [\"*\"] for any)"));
        }
        for (i, r) in s.routes.iter().enumerate() {
            route(e, c, &format!("{at} route {}", i + 1), r);
        }
    }
    let group_names: BTreeSet<&str> = c.groups.iter().map(|g| g.name.as_str()).collect();
    for g in &c.groups {
        let at = format!("group {:?}", g.name);
        for s in &g.grpc_services {
            if !names.contains(s.as_str()) {
                e.push(format!("{at}: unknown grpc service {s:?}"));
            }
        }
        let twin = crate::xds::cache::proxyless_group_name(&g.name);
        if !g.grpc_services.is_empty() && group_names.contains(twin.as_str()) {
            e.push(format!(
                "{at}: its proxyless gRPC clients are served as group {twin:?}, which is another group's name"
            ));
        }
    }
}

fn route(e: &mut Vec<String>, c: &Config, at: &str, r: &RouteConfig) {
    match (&r.prefix, &r.path) {
        (Some(_), Some(_)) => e.push(format!("{at}: give prefix or path, not both")),
        (None, None) => e.push(format!("{at}: needs a prefix or a path")),
        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => e.push(format!("{at}: {p:?} must start with '/'")),
        _ => {}
    }
    if r.prefix_rewrite.is_some() {
        e.push(format!(
            "{at}: prefix_rewrite is not for gRPC clients (a gRPC client calls the method it names)"
        ));
    }
    if let Some(Timeout::After(d)) = r.timeout {
        if d.is_zero() {
            e.push(format!("{at}: timeout 0 is ambiguous; write `none` for no timeout"));
        }
    }
    for h in &r.headers {
        if h.name.is_empty() {
            e.push(format!("{at}: a header match has no name"));
        } else if h.name.starts_with(':') || h.name.ends_with("-bin") || h.name.starts_with("grpc-") {
            // gRPC's A28: pseudo-headers and grpc- headers are not matched, -bin ones only as
            // base64 text; a route on them would never (or never as written) match.
            e.push(format!(
                "{at}: header {:?} cannot be matched by gRPC clients (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
                h.name
            ));
        }
        if h.exact.is_some() == h.prefix.is_some() {
            e.push(format!(
                "{at}: header {:?} needs exactly one of exact or prefix",
                h.name
            ));
        }
    }
    match (r.cluster.is_empty(), &r.cluster_header) {
        (true, None) => e.push(format!("{at}: needs a cluster or a cluster_header")),
        (false, Some(_)) => e.push(format!("{at}: give cluster or cluster_header, not both")),
        (true, Some(h)) => {
            if !super::validate::is_header_name(h) {
                e.push(format!(
                    "{at}: cluster_header {h:?} is not a header name (lowercase letters, digits, '-' and '_')"
                ));
            }
            // gRPC has no cluster_header: the route becomes one route per fan-out member.
            let members: Vec<_> = c.clusters.iter().filter(|x| x.fan_out.is_some()).collect();
            if members.is_empty() {
                e.push(format!(
                    "{at}: cluster_header needs a cluster with fan_out (gRPC clients get one route per member)"
                ));
            }
            for m in members {
                cluster(e, at, &m.name, m.lb_policy, &m.endpoints);
            }
        }
        (false, None) => match c.cluster(&r.cluster) {
            None => e.push(format!("{at}: unknown cluster {:?}", r.cluster)),
            Some(x) if x.fan_out.is_some() => e.push(format!(
                "{at}: cluster {:?} fans out into one cluster per set; route to its members with cluster_header",
                r.cluster
            )),
            Some(x) => cluster(e, at, &x.name, x.lb_policy, &x.endpoints),
        },
    }
}

/// A cluster a gRPC route reaches must be one gRPC's xDS client accepts: EDS, round robin or
/// ring hash.
fn cluster(e: &mut Vec<String>, at: &str, name: &str, lb: LbPolicy, ep: &EndpointsConfig) {
    if !matches!(lb, LbPolicy::RoundRobin | LbPolicy::RingHash) {
        e.push(format!(
            "{at}: cluster {name:?} uses lb_policy {lb:?}; gRPC clients support round_robin and ring_hash"
        ));
    }
    if ep.dns.is_some() {
        e.push(format!(
            "{at}: cluster {name:?} has dns endpoints; gRPC clients get clusters over EDS (source or static endpoints)"
        ));
    }
}
