//! The Kubernetes pod source's configuration (`type: kubernetes`), its defaults and its checks.
//! Syntax checks for label selectors, label keys and port names live here so that `validate`
//! reports them before anything starts; the source itself lives in `sources::kubernetes`.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::address::{FromText, Parsed};

/// The port VOLTHA's cores serve gRPC on (arouterd's `POD_GRPC_PORT`).
pub(crate) const DEFAULT_POD_PORT: u16 = 50057;

/// A source of endpoints from watched pods.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    pub(crate) name: String,
    /// Namespaces to watch, one watch each.
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<String>,
    /// A Kubernetes label selector (`app=rw-core`, `tier in (a,b)`, ...), applied by the API
    /// server. Absent: every pod of the namespaces.
    #[serde(default)]
    pub(crate) label_selector: Option<String>,
    /// Only pods whose name matches this regular expression (unanchored, as arouterd's
    /// `rw-core[0-9]-`).
    #[serde(default)]
    pub(crate) name_regex: Option<Parsed<regex::Regex>>,
    #[serde(default)]
    pub(crate) readiness: Readiness,
    /// The endpoint's port: a number, or the name of a container port.
    #[serde(default)]
    pub(crate) port: PodPort,
    /// A label whose value names the set a pod belongs to (e.g. `affinity-group`).
    #[serde(default)]
    pub(crate) group_by: Option<String>,
    /// The API server's URL (e.g. `http://127.0.0.1:8001` behind `kubectl proxy`), without
    /// credentials. Absent: `KUBECONFIG` or `~/.kube/config` if there is one, else the
    /// in-cluster service account.
    #[serde(default)]
    pub(crate) api_server: Option<Parsed<axum::http::Uri>>,
    /// A kubeconfig file to use instead of the inferred configuration.
    #[serde(default)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Retry pacing after a failed list or watch (or client configuration), as for Consul
    /// and etcd.
    #[serde(default)]
    pub(crate) backoff: super::BackoffConfig,
}

fn default_namespaces() -> Vec<String> {
    vec!["voltha".into()]
}

/// When a pod counts as an endpoint.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Readiness {
    /// Phase `Running` and every condition `True` (arouterd's rule).
    #[default]
    AllConditions,
    /// The `Ready` condition is `True`, whatever the others say.
    ReadyCondition,
}

/// The port of a pod's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodPort {
    Number(u16),
    /// A container port's `name`.
    Name(String),
}

impl Default for PodPort {
    fn default() -> Self {
        PodPort::Number(DEFAULT_POD_PORT)
    }
}

impl<'de> Deserialize<'de> for PodPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PodPort;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number (1-65535) or a container port name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PodPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PodPort::Number(p)),
                    _ => Err(E::custom(format!("port {v} is out of range (1-65535)"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PodPort, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("port {v} is out of range (1-65535)"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PodPort, E> {
                Ok(PodPort::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every problem of one source, each a sentence prefixed with the source's name.
pub(super) fn validate(e: &mut Vec<String>, k: &KubernetesSource) {
    let at = format!("source {:?}", k.name);
    if k.namespaces.is_empty() {
        e.push(format!("{at}: namespaces is empty (the default is [voltha])"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for ns in &k.namespaces {
        if !is_dns_label(ns) {
            e.push(format!(
                "{at}: namespace {ns:?} is not a valid name (lowercase letters, digits and '-', at most 63)"
            ));
        } else if !seen.insert(ns.as_str()) {
            e.push(format!("{at}: namespace {ns:?} is listed twice"));
        }
    }
    if let Some(s) = &k.label_selector {
        if let Err(why) = check_label_selector(s) {
            e.push(format!("{at}: label_selector {s:?}: {why}"));
        }
    }
    if let Some(r) = &k.name_regex {
        if let Some(err) = r.error() {
            e.push(format!(
                "{at}: name_regex {:?} is not a valid regular expression: {err}",
                r.text()
            ));
        }
    }
    if let PodPort::Name(n) = &k.port {
        if !is_port_name(n) {
            e.push(format!(
                "{at}: port {n:?} is neither a number nor a container port name (1-15 lowercase letters, digits and '-', with a letter)"
            ));
        }
    }
    if let Some(g) = &k.group_by {
        if let Err(why) = check_label_key(g) {
            e.push(format!("{at}: group_by {g:?} is not a label key: {why}"));
        }
    }
    if k.api_server.is_some() && k.kubeconfig.is_some() {
        e.push(format!("{at}: give api_server or kubeconfig, not both"));
    }
    if let Some(u) = &k.api_server {
        if let Some(why) = u.error() {
            e.push(format!("{at}: api_server {:?}: {why}", u.text()));
        }
    }
    if let Some(p) = &k.kubeconfig {
        if p.as_os_str().is_empty() {
            e.push(format!("{at}: kubeconfig is empty"));
        }
    }
    if k.backoff.initial.0.is_zero() || k.backoff.initial.0 > k.backoff.max.0 {
        e.push(format!(
            "{at}: backoff.initial must be above zero and at most backoff.max"
        ));
    }
}

/// `api_server` is read as an API server URL ([`check_api_server`]).
impl FromText for axum::http::Uri {
    fn from_text(text: &str) -> Result<Self, String> {
        check_api_server(text)
    }
}

/// `http://host:port` or `https://host:port`, nothing after the authority but `/`.
pub(crate) fn check_api_server(u: &str) -> Result<axum::http::Uri, String> {
    let uri: axum::http::Uri = u.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("expected http://host:port or https://host:port".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(uri)
}

/// An RFC 1123 label: what Kubernetes namespaces must be.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An IANA service name, what a container port's `name` must be.
pub(crate) fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
        && s.chars().any(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`), beginning and ending with an alphanumeric.
pub(crate) fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty() && p.len() <= 253 && p.split('.').all(is_dns_label);
        if !ok {
            return Err(format!("prefix {p:?} is not a DNS subdomain"));
        }
    }
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if !is_label_value(name) {
        return Err(format!(
            "{name:?} must be at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, with alphanumeric ends.
pub(crate) fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// Checks a label selector's syntax: comma-separated requirements, each `key`, `!key`,
/// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)` or `key notin (v1,v2)`.
pub(crate) fn check_label_selector(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("is empty (leave it out to select every pod)".into());
    }
    for req in split_requirements(s)? {
        let req = req.trim();
        if req.is_empty() {
            return Err("has an empty requirement (two commas, or a trailing comma)".into());
        }
        check_requirement(req)?;
    }
    Ok(())
}

/// Splits on commas outside parentheses.
fn split_requirements(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("has a ')' without '('".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("has a '(' without ')'".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn check_requirement(req: &str) -> Result<(), String> {
    let label = |k: &str| check_label_key(k.trim()).map_err(|why| format!("{:?}: {why}", k.trim()));
    let value = |v: &str| {
        let v = v.trim();
        if is_label_value(v) {
            Ok(())
        } else {
            Err(format!("{v:?} is not a label value"))
        }
    };
    if let Some(k) = req.strip_prefix('!') {
        return label(k);
    }
    for op in ["!=", "==", "="] {
        if let Some((k, v)) = req.split_once(op) {
            label(k)?;
            return value(v);
        }
    }
    for op in [" notin ", " in "] {
        if let Some((k, set)) = req.split_once(op) {
            label(k)?;
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|x| x.strip_suffix(')'))
                .ok_or_else(|| format!("{:?}: the values must be in parentheses", req))?;
            for v in inner.split(',') {
                value(v)?;
            }
            return Ok(());
        }
    }
    label(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        for ok in [
            "app=rw-core",
            "app==rw-core,tier!=x",
            "app in (rw-core, ro-core)",
            "app notin (a),!legacy",
            "example.com/app=x",
            "has-label",
            "k=",
        ] {
            assert_eq!(check_label_selector(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("app=rw core", "\"rw core\" is not a label value"),
            ("app=x,,b=y", "empty requirement"),
            ("app in rw-core", "must be in parentheses"),
            ("app in (a", "'(' without ')'"),
            ("-app=x", "must be at most 63"),
            ("a/b/c=x", "must be at most 63"),
        ] {
            let e = check_label_selector(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    use crate::config::{Config, ConfigError};

    fn errors_of(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(e)) => e,
            Err(other) => vec![other.to_string()],
        }
    }

    const BASE: &str = r#"
default_group: g
sources:
  - { name: rw, type: kubernetes, api_server: "http://127.0.0.1:1", label_selector: app=rw-core, group_by: affinity-group }
clusters:
  - { name: vcore, fan_out: { name: "vcore{}" }, endpoints: { source: rw } }
  - { name: all, endpoints: { source: rw } }
listeners:
  - name: l
    address: 127.0.0.1:55555
    routes:
      - { prefix: /voltha., headers: [{ name: voltha_backend_name, prefix: vcore }], cluster_header: voltha_backend_name }
      - { prefix: /, cluster: all }
groups:
  - { name: g, listeners: [l], clusters: [vcore] }
"#;

    #[test]
    fn a_kubernetes_source_with_fan_out_and_cluster_header_validates() {
        let c = Config::from_yaml(BASE).expect("valid");
        let Some(super::super::SourceConfig::Kubernetes(k)) = c.sources.first() else {
            panic!("a kubernetes source");
        };
        assert_eq!(k.namespaces, vec!["voltha"]);
        assert_eq!(k.port, PodPort::Number(50057));
        assert_eq!(k.readiness, Readiness::AllConditions);
        assert_eq!(c.group_clusters(&c.groups[0]), vec!["all", "vcore"]);
        assert!(c
            .summary()
            .contains("source rw: kubernetes pods in voltha (app=rw-core), grouped by affinity-group"));
        let named =
            Config::from_yaml(&BASE.replace("group_by: affinity-group", "port: grpc, readiness: ready_condition"))
                .expect("valid");
        let Some(super::super::SourceConfig::Kubernetes(k)) = named.sources.first() else {
            panic!("a kubernetes source");
        };
        assert_eq!(k.port, PodPort::Name("grpc".into()));
        assert_eq!(k.readiness, Readiness::ReadyCondition);
    }

    #[test]
    fn kubernetes_source_errors_are_named() {
        let yaml = BASE.replace(
            r#"api_server: "http://127.0.0.1:1", label_selector: app=rw-core, group_by: affinity-group"#,
            r#"api_server: "127.0.0.1:1", kubeconfig: /k, namespaces: [Voltha, x, x], label_selector: "app in (a", name_regex: "rw-core[", port: GRPC, group_by: "bad key""#,
        );
        let e = errors_of(&yaml);
        for want in [
            "source \"rw\": namespace \"Voltha\" is not a valid name",
            "source \"rw\": namespace \"x\" is listed twice",
            "source \"rw\": label_selector \"app in (a\": has a '(' without ')'",
            "source \"rw\": name_regex \"rw-core[\" is not a valid regular expression",
            "source \"rw\": port \"GRPC\" is neither a number nor a container port name",
            "source \"rw\": group_by \"bad key\" is not a label key",
            "source \"rw\": give api_server or kubeconfig, not both",
            "source \"rw\": api_server \"127.0.0.1:1\": expected http://host:port or https://host:port",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "missing {want:?} in {e:#?}");
        }
        let e = errors_of(&BASE.replace("api_server: \"http://127.0.0.1:1\",", "port: 70000,"));
        assert!(e.iter().any(|x| x.contains("port 70000 is out of range")), "{e:?}");
        let e = errors_of(&BASE.replace("api_server: \"http://127.0.0.1:1\",", "namespaces: [],"));
        assert!(e.iter().any(|x| x.contains("namespaces is empty")), "{e:?}");
    }

    #[test]
    fn a_kubernetes_source_takes_the_backoff_every_source_takes() {
        let source = |c: &Config| match c.sources.first() {
            Some(super::super::SourceConfig::Kubernetes(k)) => k.backoff,
            _ => panic!("a kubernetes source"),
        };
        let c = Config::from_yaml(BASE).expect("valid");
        let d = source(&c);
        assert_eq!(
            (d.initial.0, d.max.0),
            (
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(30)
            )
        );
        let set = BASE.replace("group_by: affinity-group", "backoff: { initial: 1s, max: 2m }");
        let b = source(&Config::from_yaml(&set).expect("valid"));
        assert_eq!(
            (b.initial.0, b.max.0),
            (std::time::Duration::from_secs(1), std::time::Duration::from_secs(120))
        );
        for bad in ["{ initial: 0s }", "{ initial: 2s, max: 1s }"] {
            let e = errors_of(&BASE.replace("group_by: affinity-group", &format!("backoff: {bad}")));
            assert_eq!(
                e,
                vec!["source \"rw\": backoff.initial must be above zero and at most backoff.max".to_string()],
                "{bad}"
            );
        }
        let e = errors_of(&BASE.replace("group_by: affinity-group", "backoff: { start: 1s }"));
        assert!(e.iter().any(|x| x.contains("unknown field `start`")), "{e:?}");
    }

    #[test]
    fn fan_out_and_cluster_header_errors_are_named() {
        let yaml = BASE
            .replace(r#"fan_out: { name: "vcore{}" }"#, r#"fan_out: { name: "vcore" }"#)
            .replace(
                "  - { name: all, endpoints: { source: rw } }\n",
                concat!(
                    "  - { name: all, endpoints: { source: rw } }\n",
                    "  - { name: st, fan_out: { name: \"s{}\" }, endpoints: { static: [\"10.0.0.1:1\"] } }\n",
                    "  - { name: set, fan_out: { name: \"x{}y\" }, endpoints: { source: rw, set: \"1\" } }\n",
                    "  - { name: x1y, endpoints: { source: rw } }\n",
                ),
            )
            .replace(
                "      - { prefix: /, cluster: all }\n",
                concat!(
                    "      - { prefix: /, cluster: all }\n",
                    "      - { prefix: /a, cluster: vcore }\n",
                    "      - { prefix: /b }\n",
                    "      - { prefix: /c, cluster: all, cluster_header: h }\n",
                    "      - { prefix: /d, cluster_header: \"Bad Header\" }\n",
                ),
            );
        let e = errors_of(&yaml);
        for want in [
            "cluster \"vcore\": fan_out.name \"vcore\" must contain {} once",
            "cluster \"st\": fan_out needs endpoints.source",
            "cluster \"set\": fan_out takes every set of the source; leave endpoints.set out",
            "cluster \"set\": fan_out.name \"x{}y\" could name a member \"x1y\", which is another cluster's name",
            "listener \"l\" route 3: cluster \"vcore\" fans out into one cluster per set",
            "listener \"l\" route 4: needs a cluster or a cluster_header",
            "listener \"l\" route 5: give cluster or cluster_header, not both",
            "listener \"l\" route 6: cluster_header \"Bad Header\" is not a header name",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "missing {want:?} in {e:#?}");
        }
    }

    #[test]
    fn the_shipped_kubernetes_config_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/voltha-kubernetes.yaml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.listener("afrouter").map(|l| l.address.text()), Some("0.0.0.0:55555"));
        assert_eq!(c.group_clusters(&c.groups[0]), vec!["ro_vcore", "rw_vcore", "vcore"]);
    }

    #[test]
    fn names() {
        assert!(is_dns_label("voltha"));
        assert!(!is_dns_label("Voltha"));
        assert!(is_port_name("grpc"));
        assert!(!is_port_name("50057"));
        assert!(!is_port_name("a-very-long-port-name"));
        assert_eq!(check_label_key("affinity-group"), Ok(()));
        assert!(check_label_key("bad key").is_err());
        assert!(check_api_server("http://127.0.0.1:8001").is_ok());
        assert!(check_api_server("127.0.0.1:8001").is_err());
        assert!(check_api_server("ftp://x").is_err());
    }
}
