//! `grpc_services`: services for proxyless gRPC clients (a gRPC library's own xDS resolver,
//! `xds:///<name>`), and the rules that keep them inside the subset of xDS gRPC's client accepts
//! (gRFCs A27, A28, A31, A42). A group lists the services its proxyless clients get in
//! `grpc_services`; the translation is in `translate::grpc`.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{ClusterConfig, Config, LbPolicy, RouteConfig, Timeout};

/// One proxyless gRPC service: an API listener named after the `xds:///` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServiceConfig {
    /// The target's name: a client dials `xds:///<name>` and asks LDS for `<name>`.
    pub(crate) name: String,
    /// Where the route configuration goes: its own RDS resource `<name>-routes` (the default),
    /// or inline in the listener's connection manager.
    #[serde(default)]
    pub(crate) route_config: RouteConfigMode,
    /// The virtual host's domains; gRPC matches them against the target's name.
    #[serde(default = "super::default_domains")]
    pub(crate) domains: Vec<String>,
    /// The routes, as for a listener (a YAML alias can share a listener's list).
    pub(crate) routes: Vec<RouteConfig>,
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
    pub(crate) fn grpc_service(&self, name: &str) -> Option<&GrpcServiceConfig> {
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
        for d in &s.domains {
            if d.is_empty() || d.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                e.push(format!(
                    "{at}: domain {d:?} is not a host name pattern (not empty, no whitespace or control characters)"
                ));
            }
        }
        for (i, r) in s.routes.iter().enumerate() {
            route(e, c, &format!("{at} route {}", i + 1), r);
        }
    }
    for g in &c.groups {
        let at = format!("group {:?}", g.name);
        for s in &g.grpc_services {
            if !names.contains(s.as_str()) {
                e.push(format!("{at}: unknown grpc service {s:?}"));
            }
        }
        // The engine serves `<G>/grpc` to G's gRPC clients whenever it exists: such a name is
        // only ever made by the translation, never configured.
        if g.name.ends_with(crate::xds::cache::PROXYLESS_GROUP_SUFFIX) {
            e.push(format!(
                "{at}: names ending in {:?} are kept for the groups proxyless gRPC clients get (from grpc_services)",
                crate::xds::cache::PROXYLESS_GROUP_SUFFIX
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
        super::validate::header_match(e, at, h);
        if !h.name.is_empty() && grpc_unusable_header(&h.name) {
            // gRPC's A28: pseudo-headers and grpc- headers are not matched, -bin ones only as
            // base64 text; a route on them would never (or never as written) match.
            e.push(format!(
                "{at}: header {:?} cannot be matched by gRPC clients (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
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
                cluster(e, at, m);
            }
        }
        (false, None) => match c.cluster(&r.cluster) {
            None => e.push(format!("{at}: unknown cluster {:?}", r.cluster)),
            Some(x) if x.fan_out.is_some() => e.push(format!(
                "{at}: cluster {:?} fans out into one cluster per set; route to its members with cluster_header",
                r.cluster
            )),
            Some(x) => cluster(e, at, x),
        },
    }
}

/// Header names gRPC clients do not match or hash on as written (A28, A42): pseudo-headers,
/// `grpc-` headers, and binary (`-bin`) ones.
fn grpc_unusable_header(name: &str) -> bool {
    name.starts_with(':') || name.ends_with("-bin") || name.starts_with("grpc-")
}

/// A cluster a gRPC route reaches must be one gRPC's xDS client accepts: EDS, round robin or
/// ring hash, hashing on a header gRPC hashes on.
fn cluster(e: &mut Vec<String>, at: &str, c: &ClusterConfig) {
    let (name, lb, ep) = (&c.name, c.lb_policy, &c.endpoints);
    if let Some(h) = c.hash_header.as_deref().filter(|h| grpc_unusable_header(h)) {
        e.push(format!(
            "{at}: cluster {name:?} hashes on header {h:?}, which gRPC clients do not hash on (no ':' pseudo-headers, 'grpc-' or '-bin' headers)"
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};

    fn errors_of(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Err(ConfigError::Invalid(e)) => e,
            Err(other) => vec![other.to_string()],
            Ok(_) => vec![],
        }
    }

    const BASE: &str = r#"
default_group: g
sources: [{ name: s, type: file, path: /x }]
clusters:
  - { name: rr, endpoints: { source: s, port: 1 } }
  - { name: hash, lb_policy: ring_hash, hash_header: x-id, endpoints: { source: s, port: 1 } }
  - { name: mag, lb_policy: maglev, hash_header: x-id, endpoints: { source: s, port: 1 } }
  - { name: lr, lb_policy: least_request, endpoints: { source: s, port: 1 } }
  - { name: names, endpoints: { dns: ["core:1"] } }
  - { name: fan, fan_out: { name: "member-{}" }, endpoints: { source: s, port: 1 } }
  - { name: binhash, lb_policy: ring_hash, hash_header: x-id-bin, endpoints: { source: s, port: 1 } }
  - { name: grpchash, lb_policy: ring_hash, hash_header: grpc-x, endpoints: { source: s, port: 1 } }
"#;

    fn with(services: &str, groups: &str) -> String {
        format!("{BASE}grpc_services:\n{services}groups:\n{groups}")
    }

    #[test]
    fn a_group_of_grpc_services_alone_is_valid_and_shipped_files_declare_voltha_grpc() {
        let yaml = with(
            "  - { name: svc, routes: [{ prefix: /, cluster: rr, timeout: 5s }, { prefix: /a, cluster: hash }] }\n  - { name: in, route_config: inline, routes: [{ prefix: /voltha., cluster_header: b }] }\n",
            "  - { name: g, grpc_services: [svc, in] }\n",
        );
        assert_eq!(errors_of(&yaml), Vec::<String>::new());
        let c = Config::embedded_default().expect("default");
        let g = c.groups.iter().find(|g| g.name == "voltha").expect("voltha");
        assert_eq!(g.grpc_services, ["voltha-grpc"]);
        assert!(c.grpc_service("voltha-grpc").is_some_and(|s| s.routes.len() == 5));
        assert!(
            c.summary()
                .contains("  grpc service voltha-grpc (xds:///voltha-grpc, 5 routes, to proxyless gRPC clients as group voltha/grpc)\n"),
            "{}",
            c.summary()
        );
    }

    #[test]
    fn what_grpc_clients_cannot_take_is_refused_with_the_route_that_asks() {
        let yaml = with(
            concat!(
                "  - name: svc\n",
                "    routes:\n",
                "      - { prefix: /a, cluster: mag }\n",
                "      - { prefix: /b, cluster: lr }\n",
                "      - { prefix: /c, cluster: names }\n",
                "      - { prefix: /d, cluster: rr, prefix_rewrite: / }\n",
                "      - { prefix: /e, cluster: nope }\n",
                "      - { prefix: /f, cluster: fan }\n",
                "      - { prefix: /g, cluster: rr, headers: [{ name: grpc-timeout, exact: x }, { name: k-bin, prefix: a }, { name: ':authority', exact: a }, { name: x-any, prefix: '' }] }\n",
                "      - { path: nope, cluster: rr, timeout: 0s }\n",
                "      - { prefix: /h, cluster: binhash }\n",
                "      - { prefix: /i, cluster: grpchash }\n",
                "  - { name: svc, routes: [] }\n",
                "  - { name: dom, domains: ['', 'a b', \"x\\ty\", ok], routes: [{ prefix: /, cluster: rr }] }\n",
                "  - { name: '', domains: [], routes: [{ prefix: /, cluster: rr }] }\n",
                "  - { name: 'bad name', routes: [{ prefix: /, cluster: rr }] }\n",
            ),
            "  - { name: g, grpc_services: [svc, missing] }\n  - { name: g/grpc, clusters: [rr] }\n",
        );
        let e = errors_of(&yaml);
        for want in [
            "grpc service \"svc\" route 1: cluster \"mag\" uses lb_policy Maglev; gRPC clients support round_robin and ring_hash",
            "grpc service \"svc\" route 2: cluster \"lr\" uses lb_policy LeastRequest; gRPC clients support round_robin and ring_hash",
            "grpc service \"svc\" route 3: cluster \"names\" has dns endpoints; gRPC clients get clusters over EDS (source or static endpoints)",
            "grpc service \"svc\" route 4: prefix_rewrite is not for gRPC clients (a gRPC client calls the method it names)",
            "grpc service \"svc\" route 5: unknown cluster \"nope\"",
            "grpc service \"svc\" route 6: cluster \"fan\" fans out into one cluster per set; route to its members with cluster_header",
            "grpc service \"svc\" route 7: header \"grpc-timeout\" cannot be matched by gRPC clients (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
            "grpc service \"svc\" route 7: header \"k-bin\" cannot be matched by gRPC clients (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
            "grpc service \"svc\" route 7: header \":authority\" cannot be matched by gRPC clients (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
            "grpc service \"svc\" route 7: header \"x-any\": an empty prefix matches any value (Envoy and gRPC refuse it)",
            "grpc service \"svc\" route 8: \"nope\" must start with '/'",
            "grpc service \"svc\" route 8: timeout 0 is ambiguous; write `none` for no timeout",
            "grpc service \"svc\" route 9: cluster \"binhash\" hashes on header \"x-id-bin\", which gRPC clients do not hash on (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
            "grpc service \"svc\" route 10: cluster \"grpchash\" hashes on header \"grpc-x\", which gRPC clients do not hash on (no ':' pseudo-headers, 'grpc-' or '-bin' headers)",
            "grpc service \"dom\": domain \"\" is not a host name pattern (not empty, no whitespace or control characters)",
            "grpc service \"dom\": domain \"a b\" is not a host name pattern (not empty, no whitespace or control characters)",
            "grpc service \"dom\": domain \"x\\ty\" is not a host name pattern (not empty, no whitespace or control characters)",
            "duplicate grpc service name \"svc\"",
            "grpc service \"svc\": has no routes",
            "a grpc service has an empty name",
            "grpc service \"\": domains is empty (use [\"*\"] for any)",
            "grpc service \"bad name\": the name is the xds:/// target's path: at most 253 characters, no whitespace, not starting with '/'",
            "group \"g\": unknown grpc service \"missing\"",
            "group \"g/grpc\": names ending in \"/grpc\" are kept for the groups proxyless gRPC clients get (from grpc_services)",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:#?}");
        }
    }

    #[test]
    fn a_cluster_header_route_needs_a_fan_out_cluster_and_checks_its_policy() {
        let yaml = format!(
            "{}grpc_services:\n  - {{ name: svc, routes: [{{ prefix: /, cluster_header: 'Bad Header' }}] }}\ngroups:\n  - {{ name: g, grpc_services: [svc] }}\n",
            BASE.replace("  - { name: fan, fan_out: { name: \"member-{}\" }, endpoints: { source: s, port: 1 } }\n", "")
        );
        let e = errors_of(&yaml);
        for want in [
            "grpc service \"svc\" route 1: cluster_header \"Bad Header\" is not a header name (lowercase letters, digits, '-' and '_')",
            "grpc service \"svc\" route 1: cluster_header needs a cluster with fan_out (gRPC clients get one route per member)",
        ] {
            assert!(e.iter().any(|x| x == want), "missing {want:?} in {e:#?}");
        }
        let maglev_fan = with(
            "  - { name: svc, routes: [{ prefix: /, cluster_header: b }] }\n",
            "  - { name: g, grpc_services: [svc] }\n",
        )
        .replace(
            "{ name: fan, fan_out",
            "{ name: fan, lb_policy: maglev, hash_header: x, fan_out",
        );
        let e = errors_of(&maglev_fan);
        assert!(
            e.iter().any(|x| x.contains("cluster \"fan\" uses lb_policy Maglev")),
            "{e:#?}"
        );
    }
}
