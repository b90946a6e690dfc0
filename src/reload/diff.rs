//! What a reload may change: the rules that refuse a new configuration (settings bound to the
//! listeners when the server started) and the plan for the sources (which keep running, which
//! are restarted, added or stopped). Pure functions of two configurations.

use crate::config::{Config, ServerConfig, SourceConfig};

/// Why a new configuration cannot be applied without a restart: one message per `server` key
/// whose value changed, naming the key and both values. Empty when it can be applied.
///
/// Every `server` key is bound to a listener or to the xDS service built at start (addresses,
/// TLS files, connection and stream limits, keepalive, request and CSDS bounds), except
/// `shutdown_grace` and `config_reload_interval`, which are read when they are used. The
/// destructuring below names every field, so a new `server` key does not compile until it is
/// sorted into one kind or the other.
pub(crate) fn refusals(running: &Config, new: &Config) -> Vec<String> {
    let ServerConfig {
        xds_listen,
        admin_listen,
        admin_debug_listen,
        max_names_per_type,
        max_streams,
        max_connections,
        max_streams_per_connection,
        max_request_bytes,
        keepalive_interval,
        keepalive_timeout,
        shutdown_grace: _,
        tls,
        csds,
        config_reload_interval: _,
    } = &running.server;
    let n = &new.server;
    let mut out = Vec::new();
    let mut check = |key: &str, was: String, now: String| {
        if was != now {
            out.push(format!(
                "{key} cannot change without a restart (running {was}, new {now}); the running \
                 configuration is kept: restore the value, or restart to apply it"
            ));
        }
    };
    check("server.xds_listen", q(xds_listen.text()), q(n.xds_listen.text()));
    check("server.admin_listen", q(admin_listen.text()), q(n.admin_listen.text()));
    check(
        "server.admin_debug_listen",
        q(admin_debug_listen.text()),
        q(n.admin_debug_listen.text()),
    );
    check(
        "server.max_names_per_type",
        s(max_names_per_type),
        s(&n.max_names_per_type),
    );
    check("server.max_streams", s(max_streams), s(&n.max_streams));
    check("server.max_connections", s(max_connections), s(&n.max_connections));
    check(
        "server.max_streams_per_connection",
        s(max_streams_per_connection),
        s(&n.max_streams_per_connection),
    );
    check(
        "server.max_request_bytes",
        s(max_request_bytes),
        s(&n.max_request_bytes),
    );
    check(
        "server.keepalive_interval",
        d(keepalive_interval.0),
        d(n.keepalive_interval.0),
    );
    check(
        "server.keepalive_timeout",
        d(keepalive_timeout.0),
        d(n.keepalive_timeout.0),
    );
    match (tls, &n.tls) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            check("server.tls.cert_file", q(&a.cert_file), q(&b.cert_file));
            check("server.tls.key_file", q(&a.key_file), q(&b.key_file));
            check(
                "server.tls.client_ca_file",
                opt(&a.client_ca_file),
                opt(&b.client_ca_file),
            );
            check(
                "server.tls.reload_interval",
                d(a.reload_interval.0),
                d(b.reload_interval.0),
            );
        }
        (a, b) => check("server.tls", on_off(a.is_some()), on_off(b.is_some())),
    }
    check(
        "server.csds.max_concurrent_requests",
        s(&csds.max_concurrent_requests),
        s(&n.csds.max_concurrent_requests),
    );
    check(
        "server.csds.max_response_bytes",
        s(&csds.max_response_bytes),
        s(&n.csds.max_response_bytes),
    );
    check(
        "server.csds.stream_requests_per_second",
        s(&csds.stream_requests_per_second),
        s(&n.csds.stream_requests_per_second),
    );
    check(
        "server.csds.stream_burst",
        s(&csds.stream_burst),
        s(&n.csds.stream_burst),
    );
    out
}

/// A configuration value for a message: strings quoted (they come from the file), capped.
fn q(v: &str) -> String {
    let mut s: String = v.chars().take(256).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn s(v: &impl std::fmt::Display) -> String {
    v.to_string()
}

fn d(v: std::time::Duration) -> String {
    format!("{v:?}")
}

fn opt(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "none".to_string(), q)
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_string()
}

/// What happens to one source of the new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceChange {
    /// Same name, same settings: the running task goes on, with its state.
    Keep,
    /// Same name, other settings: the running task stops and a new one starts.
    Restart,
    /// A name the running configuration does not have.
    Add,
}

/// The plan for the sources: for each source of `new`, in its order, what happens to it; and
/// the names of the running sources that `new` no longer has (stopped).
pub(crate) fn source_plan(running: &[SourceConfig], new: &[SourceConfig]) -> (Vec<SourceChange>, Vec<String>) {
    let changes = new
        .iter()
        .map(|n| match running.iter().find(|r| r.name() == n.name()) {
            Some(r) if r == n => SourceChange::Keep,
            Some(_) => SourceChange::Restart,
            None => SourceChange::Add,
        })
        .collect();
    let removed = running
        .iter()
        .filter(|r| !new.iter().any(|n| n.name() == r.name()))
        .map(|r| r.name().to_string())
        .collect();
    (changes, removed)
}

/// Checks a source's settings as starting it would (environment fallbacks, files such as an
/// etcd password file, regular expressions), so that a reload is refused as invalid rather
/// than starting a source that can never deliver.
pub(crate) fn check_source(s: &SourceConfig) -> Result<(), String> {
    use crate::sources::{consul, etcd, kubernetes};
    let r = match s {
        SourceConfig::File { .. } => Ok(()),
        SourceConfig::Consul(c) => consul::Settings::resolve(c).map(drop),
        SourceConfig::Etcd(e) => etcd::Settings::resolve(e).map(drop),
        SourceConfig::Kubernetes(k) => {
            kubernetes::Settings::resolve(k);
            Ok(())
        }
    };
    r.map_err(|e| format!("source {:?}: {e}", s.name()))
}

#[cfg(test)]
mod tests;
