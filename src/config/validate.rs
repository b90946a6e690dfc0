//! Validation: every problem in a configuration, each as one clear sentence.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::{ClusterConfig, Config, HeaderMatchConfig, LbPolicy, SourceConfig, Timeout};

/// Whether two listeners would take the same port: one port (not 0, which picks a free one)
/// on the same address, or on every address and one of them.
pub(crate) fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn validate(c: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    let e = &mut errors;

    for (what, addr) in [
        ("server.xds_listen", &c.server.xds_listen),
        ("server.admin_listen", &c.server.admin_listen),
        ("server.admin_debug_listen", &c.server.admin_debug_listen),
    ] {
        if addr.value().is_none() {
            e.push(format!(
                "{what}: bad address {:?} (expected ip:port, e.g. 0.0.0.0:18000)",
                addr.text()
            ));
        }
    }
    if let (Some(admin), Some(debug)) = (
        c.server.admin_listen.value().copied(),
        c.server.admin_debug_listen.value().copied(),
    ) {
        if same_port(admin, debug) {
            e.push(format!(
                "server.admin_debug_listen ({debug}) must not share server.admin_listen's address \
                 ({admin}): the debug API has a listener of its own"
            ));
        }
    }
    if c.server.max_names_per_type == 0 {
        e.push("server.max_names_per_type must be at least 1".into());
    }
    for (what, n) in [
        ("server.max_streams", c.server.max_streams),
        ("server.max_connections", c.server.max_connections),
        (
            "server.max_streams_per_connection",
            c.server.max_streams_per_connection as usize,
        ),
    ] {
        if n == 0 {
            e.push(format!("{what} must be at least 1"));
        } else if n > tokio::sync::Semaphore::MAX_PERMITS {
            e.push(format!(
                "{what} ({n}) must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
    }
    if c.server.max_request_bytes < 1024 || c.server.max_request_bytes > u32::MAX as usize {
        e.push(format!(
            "server.max_request_bytes ({}) must be between 1024 and {} (gRPC's frame limit)",
            c.server.max_request_bytes,
            u32::MAX
        ));
    }
    let csds = &c.server.csds;
    if csds.max_concurrent_requests == 0 || csds.max_concurrent_requests > tokio::sync::Semaphore::MAX_PERMITS {
        e.push(format!(
            "server.csds.max_concurrent_requests ({}) must be between 1 and {}",
            csds.max_concurrent_requests,
            tokio::sync::Semaphore::MAX_PERMITS
        ));
    }
    if csds.max_response_bytes < 1024 || csds.max_response_bytes > u32::MAX as usize {
        e.push(format!(
            "server.csds.max_response_bytes ({}) must be between 1024 and {} (gRPC's frame limit)",
            csds.max_response_bytes,
            u32::MAX
        ));
    }
    if !(csds.stream_requests_per_second > 0.0 && csds.stream_requests_per_second <= 1000.0) {
        e.push(format!(
            "server.csds.stream_requests_per_second ({}) must be above 0 and at most 1000",
            csds.stream_requests_per_second
        ));
    }
    if csds.stream_burst == 0 || csds.stream_burst > 1000 {
        e.push(format!(
            "server.csds.stream_burst ({}) must be between 1 and 1000",
            csds.stream_burst
        ));
    }
    if !c.server.keepalive_interval.0.is_zero() && c.server.keepalive_timeout.0.is_zero() {
        e.push("server.keepalive_timeout must be above zero when keepalive_interval is set".into());
    }
    if let Some(tls) = &c.server.tls {
        for (what, f) in [
            ("server.tls.cert_file", Some(&tls.cert_file)),
            ("server.tls.key_file", Some(&tls.key_file)),
            ("server.tls.client_ca_file", tls.client_ca_file.as_ref()),
        ] {
            if let Some(f) = f {
                if f.trim().is_empty() {
                    e.push(format!("{what} must not be empty"));
                }
            }
        }
        if tls.reload_interval.0 < std::time::Duration::from_millis(10) {
            e.push(format!(
                "server.tls.reload_interval ({:?}) must be at least 10ms",
                tls.reload_interval.0
            ));
        }
    }
    let every = c.server.config_reload_interval.0;
    if !every.is_zero() && every < std::time::Duration::from_millis(100) {
        e.push(format!(
            "server.config_reload_interval ({every:?}) must be 0s (no check) or at least 100ms"
        ));
    }
    if c.debounce.quiet.0 > c.debounce.max_delay.0 {
        e.push(format!(
            "debounce.quiet ({:?}) must not exceed debounce.max_delay ({:?})",
            c.debounce.quiet.0, c.debounce.max_delay.0
        ));
    }

    let sources = unique(e, "source", c.sources.iter().map(|s| s.name()));
    for s in &c.sources {
        match s {
            SourceConfig::File {
                name,
                path,
                poll_interval,
                max_value_bytes,
                ..
            } => {
                if path.as_os_str().is_empty() {
                    e.push(format!("source {name:?}: path is empty"));
                }
                if poll_interval.0.is_zero() {
                    e.push(format!("source {name:?}: poll_interval must be above zero"));
                }
                if *max_value_bytes == 0 {
                    e.push(format!("source {name:?}: max_value_bytes must be above zero"));
                }
            }
            SourceConfig::Etcd(x) => etcd(e, x),
            SourceConfig::Consul(x) => consul(e, x),
            SourceConfig::Kubernetes(k) => super::kubernetes::validate(e, k),
        }
    }

    let clusters = unique(e, "cluster", c.clusters.iter().map(|x| x.name.as_str()));
    for cl in &c.clusters {
        cluster(e, cl, &sources);
    }
    fan_out_names(e, c);

    let listeners = unique(e, "listener", c.listeners.iter().map(|x| x.name.as_str()));
    for l in &c.listeners {
        let at = format!("listener {:?}", l.name);
        if l.address.value().is_none() {
            e.push(format!(
                "{at}: bad address {:?} (expected ip:port, e.g. 0.0.0.0:50555)",
                l.address.text()
            ));
        }
        if l.routes.is_empty() {
            e.push(format!("{at}: has no routes"));
        }
        if l.domains.is_empty() {
            e.push(format!("{at}: domains is empty (use [\"*\"] for any)"));
        }
        if let Some(tls) = &l.tls {
            if tls.cert_file.is_empty() || tls.key_file.is_empty() {
                e.push(format!("{at}: tls needs cert_file and key_file"));
            }
        }
        if let Some(t) = &l.grpc_json_transcoder {
            transcoder(e, &at, t);
        }
        if let Some(a) = &l.access_log {
            if a.path.is_empty() {
                e.push(format!("{at}: access_log.path is empty"));
            }
        }
        for (i, r) in l.routes.iter().enumerate() {
            let at = format!("{at} route {}", i + 1);
            match (&r.prefix, &r.path) {
                (Some(_), Some(_)) => e.push(format!("{at}: give prefix or path, not both")),
                (None, None) => e.push(format!("{at}: needs a prefix or a path")),
                (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
                    e.push(format!("{at}: {p:?} must start with '/'"))
                }
                _ => {}
            }
            match (r.cluster.is_empty(), &r.cluster_header) {
                (true, None) => e.push(format!("{at}: needs a cluster or a cluster_header")),
                (false, Some(_)) => e.push(format!("{at}: give cluster or cluster_header, not both")),
                (true, Some(h)) if !is_header_name(h) => e.push(format!(
                    "{at}: cluster_header {h:?} is not a header name (lowercase letters, digits, '-' and '_')"
                )),
                (false, None) if !clusters.contains(r.cluster.as_str()) => {
                    e.push(format!("{at}: unknown cluster {:?}", r.cluster))
                }
                (false, None) => {
                    if let Some(f) = c.cluster(&r.cluster).and_then(|x| x.fan_out.as_ref()) {
                        e.push(format!(
                            "{at}: cluster {:?} fans out into one cluster per set ({}); route to its members with cluster_header",
                            r.cluster, f.name
                        ));
                    }
                }
                _ => {}
            }
            if r.prefix_rewrite.is_some() && r.prefix.is_none() {
                e.push(format!("{at}: prefix_rewrite needs a prefix match"));
            }
            if let Some(Timeout::After(d)) = r.timeout {
                if d.is_zero() {
                    e.push(format!("{at}: timeout 0 is ambiguous; write `none` for no timeout"));
                }
            }
            for h in &r.headers {
                header_match(e, &at, h);
            }
        }
    }

    let groups = unique(e, "group", c.groups.iter().map(|g| g.name.as_str()));
    if c.groups.is_empty() {
        e.push("groups: at least one group is needed".into());
    }
    if !groups.contains(c.default_group.as_str()) {
        e.push(format!("default_group: unknown group {:?}", c.default_group));
    }
    for g in &c.groups {
        let at = format!("group {:?}", g.name);
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for l in &g.listeners {
            if !listeners.contains(l.as_str()) {
                e.push(format!("{at}: unknown listener {l:?}"));
                continue;
            }
            if let Some(addr) = c.listener(l).and_then(|x| x.address.value()) {
                if let Some(other) = ports.insert(addr.port(), l) {
                    e.push(format!(
                        "{at}: listeners {other:?} and {l:?} both use port {}",
                        addr.port()
                    ));
                }
            }
        }
        for cl in &g.clusters {
            if !clusters.contains(cl.as_str()) {
                e.push(format!("{at}: unknown cluster {cl:?}"));
            }
        }
        if g.listeners.is_empty() && g.clusters.is_empty() && g.grpc_services.is_empty() {
            e.push(format!("{at}: has neither listeners nor clusters"));
        }
    }
    super::grpc::validate(e, c);
    errors
}

fn unique<'a>(e: &mut Vec<String>, what: &str, names: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for n in names {
        if n.is_empty() {
            e.push(format!("a {what} has an empty name"));
        } else if !seen.insert(n) {
            e.push(format!("duplicate {what} name {n:?}"));
        }
    }
    seen
}

fn cluster(e: &mut Vec<String>, cl: &ClusterConfig, sources: &BTreeSet<&str>) {
    let at = format!("cluster {:?}", cl.name);
    if cl.connect_timeout.0.is_zero() {
        e.push(format!("{at}: connect_timeout must be above zero"));
    }
    match (cl.lb_policy, &cl.hash_header) {
        (LbPolicy::RingHash | LbPolicy::Maglev, None) => {
            e.push(format!("{at}: lb_policy {:?} needs hash_header", cl.lb_policy))
        }
        (LbPolicy::RingHash | LbPolicy::Maglev, Some(h)) if h.is_empty() => {
            e.push(format!("{at}: hash_header is empty"))
        }
        (LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random, Some(_)) => {
            e.push(format!("{at}: hash_header only applies to ring_hash and maglev"))
        }
        _ => {}
    }
    let ep = &cl.endpoints;
    let kinds = [ep.source.is_some(), ep.static_endpoints.is_some(), ep.dns.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if kinds != 1 {
        e.push(format!("{at}: endpoints needs exactly one of source, static or dns"));
        return;
    }
    if let Some(src) = &ep.source {
        if !sources.contains(src.as_str()) {
            e.push(format!("{at}: unknown source {src:?}"));
        }
        if cl.fan_out.is_some() && ep.set.is_some() {
            e.push(format!(
                "{at}: fan_out takes every set of the source; leave endpoints.set out"
            ));
        }
    } else if cl.fan_out.is_some() {
        e.push(format!(
            "{at}: fan_out needs endpoints.source (it makes one cluster per set of the source)"
        ));
    }
    if ep.source.is_none() && ep.set.is_some() {
        e.push(format!("{at}: endpoints.set only applies to a source"));
    }
    if ep.static_endpoints.as_ref().is_some_and(Vec::is_empty) {
        e.push(format!("{at}: static endpoints list is empty"));
    }
    if ep.dns.as_ref().is_some_and(Vec::is_empty) {
        e.push(format!("{at}: dns list is empty"));
    }
    // Parsed as the configuration was read; exactly one of `static` and `dns` is given here.
    for m in &ep.bad_hosts {
        e.push(format!("{at}: {m}"));
    }
}

fn transcoder(e: &mut Vec<String>, at: &str, t: &super::TranscoderConfig) {
    if t.services.is_empty() {
        e.push(format!("{at}: grpc_json_transcoder.services is empty"));
        return;
    }
    let bytes: &[u8] = match (&t.descriptor_file, &t.descriptor) {
        (None, _) => crate::proto::VOLTHA_DESCRIPTOR,
        (Some(_), Some(b)) => b.as_slice(),
        // Unreadable: already reported when the configuration was loaded.
        (Some(_), None) => return,
    };
    match prost_reflect::DescriptorPool::decode(bytes) {
        Ok(pool) => {
            for s in &t.services {
                if pool.get_service_by_name(s).is_none() {
                    e.push(format!("{at}: the transcoder descriptor set has no service {s:?}"));
                }
            }
        }
        Err(err) => e.push(format!("{at}: descriptor set is not a valid FileDescriptorSet: {err}")),
    }
}

/// `ip:port`, or a bare `ip` when a default port is given; port 0 is refused.
pub(crate) fn parse_static(s: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    let a = match (s.parse::<SocketAddr>(), default_port) {
        (Ok(a), _) => a,
        (Err(_), Some(port)) => match s.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => return Err(format!("bad static endpoint {s:?} (expected ip:port)")),
        },
        (Err(_), None) => return Err(format!("bad static endpoint {s:?} (expected ip:port)")),
    };
    if a.port() == 0 {
        return Err(format!("port 0 in {s:?}"));
    }
    Ok(a)
}

/// `host:port` (or a bare host with a default port) where host is a DNS name or an IP; port 0
/// is refused in every form.
pub(crate) fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("port 0 in {s:?}"));
        }
        return Ok((a.ip().to_string(), a.port()));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?;
            (h, port)
        }
        _ => match default_port {
            Some(p) => (s, p),
            None => return Err(format!("{s:?} needs a port (host:port)")),
        },
    };
    if port == 0 {
        return Err(format!("port 0 in {s:?}"));
    }
    if !is_host(host) {
        return Err(format!("bad host {host:?} in {s:?} (expected a DNS name or an IP)"));
    }
    Ok((canonical_host(host), port))
}

/// `h` with an IP literal written in its usual form (IPv6 compressed and lower case, as
/// RFC 5952 writes it), so that one address written two ways is one endpoint; a DNS name as
/// it is.
pub(crate) fn canonical_host(h: &str) -> String {
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.to_string(),
    }
}

/// An IP literal or an RFC 1123 host name.
pub fn is_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn etcd(e: &mut Vec<String>, x: &super::EtcdSource) {
    let at = format!("source {:?}", x.name);
    if x.key.is_empty() {
        e.push(format!("{at}: key is empty"));
    }
    for ep in &x.endpoints {
        if let Err(why) = super::address::endpoint_uri(ep, x.ca_file.is_some()) {
            e.push(format!("{at}: endpoint {ep:?}: {why}"));
        }
    }
    if x.password.is_some() && x.password_file.is_some() {
        e.push(format!("{at}: give password or password_file, not both"));
    }
    if x.username.is_none() && (x.password.is_some() || x.password_file.is_some()) {
        e.push(format!("{at}: a password needs a username"));
    }
    if x.cert_file.is_some() != x.key_file.is_some() {
        e.push(format!("{at}: cert_file and key_file go together"));
    }
    if x.probe_interval.0.is_zero() {
        e.push(format!("{at}: probe_interval must be above zero"));
    }
    if x.dial_timeout.0.is_zero() {
        e.push(format!("{at}: dial_timeout must be above zero"));
    }
    if x.backoff.initial.0.is_zero() || x.backoff.initial.0 > x.backoff.max.0 {
        e.push(format!(
            "{at}: backoff.initial must be above zero and at most backoff.max"
        ));
    }
    if x.max_value_bytes == 0 {
        e.push(format!("{at}: max_value_bytes must be above zero"));
    }
}

/// A request header name as a route may read it: lowercase (HTTP/2), no pseudo-header.
pub(super) fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A fan-out's name template, and member names that could collide with other clusters.
fn fan_out_names(e: &mut Vec<String>, c: &Config) {
    for cl in &c.clusters {
        let Some(f) = &cl.fan_out else { continue };
        let at = format!("cluster {:?}", cl.name);
        if f.name.matches("{}").count() != 1 {
            e.push(format!(
                "{at}: fan_out.name {:?} must contain {{}} once (it is replaced by the set's name)",
                f.name
            ));
            continue;
        }
        let (prefix, suffix) = f.name.split_once("{}").unwrap_or_default();
        for other in &c.clusters {
            if other.name != cl.name
                && other.name.len() > prefix.len() + suffix.len()
                && other.name.starts_with(prefix)
                && other.name.ends_with(suffix)
            {
                e.push(format!(
                    "{at}: fan_out.name {:?} could name a member {:?}, which is another cluster's name",
                    f.name, other.name
                ));
            }
        }
    }
}

fn consul(e: &mut Vec<String>, x: &super::ConsulSource) {
    let at = format!("source {:?}", x.name);
    if x.key.trim_matches('/').is_empty() {
        e.push(format!("{at}: key is empty"));
    }
    if let Some(a) = &x.address {
        if let Err(why) = super::address::base_url(a, false) {
            e.push(format!("{at}: address {a:?}: {why}"));
        }
    }
    if x.token.is_some() && x.token_file.is_some() {
        e.push(format!("{at}: give token or token_file, not both"));
    }
    if x.cert_file.is_some() != x.key_file.is_some() {
        e.push(format!("{at}: cert_file and key_file go together"));
    }
    if let Some(n) = &x.tls_server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            e.push(format!(
                "{at}: tls_server_name {n:?} is not a DNS name or an IP address"
            ));
        }
    }
    if x.wait.0 < std::time::Duration::from_secs(1) || x.wait.0 > std::time::Duration::from_secs(600) {
        e.push(format!("{at}: wait must be between 1s and 10m (Consul's limit)"));
    }
    if x.min_interval.0.is_zero() || x.min_interval.0 > x.wait.0 {
        // Zero would let a server that answers at once make the source spin.
        e.push(format!("{at}: min_interval must be above zero and at most wait"));
    }
    if x.backoff.initial.0.is_zero() || x.backoff.initial.0 > x.backoff.max.0 {
        e.push(format!(
            "{at}: backoff.initial must be above zero and at most backoff.max"
        ));
    }
    if x.max_value_bytes == 0 {
        e.push(format!("{at}: max_value_bytes must be above zero"));
    }
    if x.probe_interval.0.is_zero() {
        e.push(format!("{at}: probe_interval must be above zero"));
    }
}

/// The problems of one header match, for Envoy's routes and gRPC services' alike: a name, and
/// exactly one of `exact` and a non-empty `prefix`.
pub(super) fn header_match(e: &mut Vec<String>, at: &str, h: &HeaderMatchConfig) {
    if h.name.is_empty() {
        e.push(format!("{at}: a header match has no name"));
    }
    if h.exact.is_some() == h.prefix.is_some() {
        e.push(format!(
            "{at}: header {:?} needs exactly one of exact or prefix",
            h.name
        ));
    }
    if h.prefix.as_deref() == Some("") {
        e.push(format!(
            "{at}: header {:?}: an empty prefix matches any value (Envoy and gRPC refuse it)",
            h.name
        ));
    }
}
