//! The Consul source: one Consul KV key holding the VOLTHA core assignment (what envoyd
//! watched), followed with Consul's blocking queries.
//!
//! Each query is `GET /v1/kv/<key>?index=N&wait=W`, which Consul holds until the key's index
//! passes `N` or `W` elapses. The rules of Consul's blocking-query documentation are followed:
//! - every answer, a 404 included, carries `X-Consul-Index`, and the next query blocks on it,
//!   so an absent key does not become a busy loop;
//! - an index that goes backwards resets the query index to 0 (one query that returns at
//!   once); an index of 0 resets it to 1, so the next query still blocks;
//! - a query that returns sooner than `min_interval` waits out the rest of it before the next
//!   one (a misbehaving server cannot make us spin).
//!
//! An answer's body is read as it streams in and abandoned once it is larger than a value of
//! `max_value_bytes` can make it (kind `too_large`); the answer's index is still followed.
//!
//! Failures (connection refused, timeouts, a body that stalls, 5xx, ACL denials, undecodable
//! answers) are counted by kind, logged, and retried with capped exponential backoff and
//! jitter; the last good state keeps being served. While Consul is down, a cheap probe
//! (`GET /v1/status/leader`, every `probe_interval`) ends the backoff as soon as it answers
//! again, so a recovery is followed at once, not after up to `backoff.max`.
//!
//! Values follow the rules of [`super::KeyState`]: only a well-formed value is delivered; a key
//! absent before the first good value leaves the source not ready (kind `absent`), and a key
//! deleted after it keeps the last good state (kind `deleted`).
//!
//! Thin HTTP client on reqwest: rs-consul turns a 404 into an error without its
//! `X-Consul-Index`, which would make an absent key a busy loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::assignment::{check_size, parse};
use super::{Backoff, KeyState, Publisher};
use crate::config::address::base_url;
use crate::config::{ConsulConsistency, ConsulSource, FileFormat};
use crate::model::SourceData;

mod query;
mod tls;
mod token;
#[cfg(feature = "fuzzing")]
pub(crate) use query::decode_body;
use query::{kv_body_limit, leader_known, next_index, query, Got};
pub use tls::TlsFiles;
pub use token::Token;

/// Connection settings, with the environment fallbacks of Consul's own tools applied.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `http(s)://host:port`, no trailing slash.
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) format: FileFormat,
    pub(crate) token: Token,
    pub(crate) tls: TlsFiles,
    pub(crate) datacenter: Option<String>,
    pub(crate) consistency: ConsulConsistency,
    pub(crate) wait: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) max_value_bytes: usize,
    pub(crate) probe_interval: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Resolves the configuration against `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`,
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
    /// `CONSUL_TLS_SERVER_NAME` and `CONSUL_HTTP_SSL`; reads the token file.
    pub(crate) fn resolve(c: &ConsulSource) -> Result<Settings, String> {
        Self::resolve_with(c, env)
    }

    /// [`Settings::resolve`] with the environment given as a lookup (tests).
    pub(crate) fn resolve_with(c: &ConsulSource, env: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let ca_file = c.ca_file.clone().or_else(|| env("CONSUL_CACERT").map(PathBuf::from));
        let ssl = env("CONSUL_HTTP_SSL").is_some_and(|v| v == "true" || v == "1");
        let cert = c
            .cert_file
            .clone()
            .or_else(|| env("CONSUL_CLIENT_CERT").map(PathBuf::from));
        let key = c
            .key_file
            .clone()
            .or_else(|| env("CONSUL_CLIENT_KEY").map(PathBuf::from));
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("a client certificate (cert_file, CONSUL_CLIENT_CERT) needs its key \
                            (key_file, CONSUL_CLIENT_KEY)"
                    .into())
            }
            (None, Some(_)) => {
                return Err("a client key (key_file, CONSUL_CLIENT_KEY) needs its certificate \
                            (cert_file, CONSUL_CLIENT_CERT)"
                    .into())
            }
        };
        let server_name = c.tls_server_name.clone().or_else(|| env("CONSUL_TLS_SERVER_NAME"));
        let addr = c
            .address
            .clone()
            .or_else(|| env("CONSUL_HTTP_ADDR"))
            .unwrap_or_else(|| "127.0.0.1:8500".into());
        let base = base_url(&addr, ssl || ca_file.is_some() || client.is_some())
            .map_err(|e| format!("address {addr:?}: {e}"))?;
        let token_file = c
            .token_file
            .clone()
            .or_else(|| env("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from));
        let token = match (&c.token, token_file) {
            (Some(t), _) => Token::Fixed(t.clone()),
            (None, Some(f)) => Token::File(token::TokenFile::open(f)?),
            (None, None) => env("CONSUL_HTTP_TOKEN").map_or(Token::None, Token::Fixed),
        };
        Ok(Settings {
            base,
            key: c.key.trim_start_matches('/').to_string(),
            format: c.format,
            token,
            tls: TlsFiles {
                ca_file,
                client,
                server_name,
            },
            datacenter: c.datacenter.clone(),
            consistency: c.consistency,
            wait: c.wait.0,
            min_interval: c.min_interval.0,
            max_value_bytes: c.max_value_bytes,
            probe_interval: c.probe_interval.0,
        })
    }

    /// The query URL for a blocking read at `index` (`None`: return at once).
    fn url(&self, index: Option<u64>) -> Result<reqwest::Url, String> {
        let mut u: reqwest::Url = format!("{}/v1/kv/{}", self.base, self.key)
            .parse()
            .map_err(|e| format!("key {:?}: {e}", self.key))?;
        {
            let mut q = u.query_pairs_mut();
            if let Some(i) = index {
                q.append_pair("index", &i.to_string());
                q.append_pair("wait", &format!("{}ms", self.wait.as_millis()));
            }
            if let Some(dc) = &self.datacenter {
                q.append_pair("dc", dc);
            }
            match self.consistency {
                ConsulConsistency::Default => {}
                ConsulConsistency::Consistent => {
                    q.append_pair("consistent", "");
                }
                ConsulConsistency::Stale => {
                    q.append_pair("stale", "");
                }
            }
        }
        Ok(u)
    }
}

pub(crate) async fn run(p: Publisher, s: Settings, backoff: Backoff, shutdown: CancellationToken) {
    let mut backoff = backoff;
    // Until the TLS files make a client: reported once per version of the files, and tried
    // again when one changes.
    let mut client = loop {
        let stamps = s.tls.stamps();
        match tls::Client::new(&s.tls) {
            Ok(c) => break c,
            Err(e) => {
                p.fail("tls", e);
                while s.tls.stamps() == stamps {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(s.probe_interval) => {}
                    }
                }
            }
        }
    };
    let mut state = KeyState::new(s.max_value_bytes);
    let what = format!("Consul key {:?}", s.key);
    let mut index = 0u64;
    let mut last: Option<Got> = None;
    // Whether a query failed since the last answer.
    let mut query_failed = false;
    // Whether Consul was seen down (no answer, a failed probe) since the last answer.
    let mut down = false;
    loop {
        // Rotated files take effect on this query; a bad version is reported and the previous
        // client or token keeps being used.
        match client.refresh() {
            Ok(true) => tracing::info!(key = %s.key, "Consul TLS files changed; using them"),
            Ok(false) => {}
            Err(e) => {
                p.fail("tls", e);
                query_failed = true;
            }
        }
        match s.token.refresh() {
            Ok(true) => tracing::info!(key = %s.key, "Consul token file changed; using the new token"),
            Ok(false) => {}
            Err(e) => {
                p.fail("token_file", e);
                query_failed = true;
            }
        }
        let started = Instant::now();
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = query(&client.http, &s, Some(index)) => a,
        };
        match answer {
            Ok(a) => {
                backoff.reset();
                if a.index < index && a.index != 0 {
                    tracing::warn!(key = %s.key, from = index, to = a.index, "Consul index went backwards; starting over");
                }
                if a.index == 0 {
                    tracing::debug!(key = %s.key, "Consul answered X-Consul-Index 0; blocking on 1");
                }
                index = next_index(index, a.index);
                // The same answer again (a wait that ran out) is not news; after a failed query
                // it means the source is healthy again (if its value was good).
                if last.as_ref() != Some(&a.got) {
                    match &a.got {
                        Got::Absent => state.apply(&p, s.format, &what, None),
                        Got::Value(v) => state.apply(&p, s.format, &what, Some(v)),
                        Got::TooLarge => state.too_large(
                            &p,
                            &what,
                            format!(
                                "the KV answer is over {} bytes: its value is over max_value_bytes ({})",
                                kv_body_limit(s.max_value_bytes, &s.key),
                                s.max_value_bytes
                            ),
                        ),
                    }
                    last = Some(a.got);
                } else if query_failed && state.value_ok {
                    p.healthy();
                }
                query_failed = false;
                down = false;
                let pause = s.min_interval.saturating_sub(started.elapsed());
                if !pause.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Err(f) => {
                p.fail(f.kind, f.message);
                query_failed = true;
                down |= f.down;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wait_to_retry(&client.http, &s, delay, &mut down) => {}
                }
            }
        }
    }
}

/// Waits `delay` (the backoff's) before a failed query is retried, but no longer than it takes
/// Consul, once it has been seen down (`down`: since the last answer, a query got no answer or
/// a probe failed), to answer a probe again: every `probe_interval`, `GET /v1/status/leader`.
/// So a recovery after a long outage is followed within about one probe interval, whatever the
/// backoff has grown to, while a Consul that answers but refuses (a wrong token, a 5xx with a
/// leader, a bad answer) is still retried only at the backoff's pace. Probes are cheap (no KV
/// read, no blocking) and are not counted as errors.
async fn wait_to_retry(client: &reqwest::Client, s: &Settings, delay: Duration, down: &mut bool) {
    let deadline = tokio::time::Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left <= s.probe_interval {
            tokio::time::sleep(left).await;
            return;
        }
        tokio::time::sleep(s.probe_interval).await;
        if leader_known(client, s).await {
            if *down {
                // Acted on once: if the query fails again while probes pass, the backoff paces it.
                *down = false;
                tracing::info!(key = %s.key, "Consul answers again; querying at once");
                return;
            }
        } else {
            *down = true;
        }
    }
}

/// Reads the key once, without blocking (for `render`).
pub(crate) async fn read_once(s: &Settings) -> Result<SourceData, String> {
    let client = s.tls.client()?;
    let a = query(&client, s, None).await.map_err(|f| f.message)?;
    let at = |e: String| format!("Consul key {:?}: {e}", s.key);
    match a.got {
        Got::Absent => Err(at("does not exist (serve would not be ready)".into())),
        Got::TooLarge => Err(at(format!("the value is over max_value_bytes ({})", s.max_value_bytes))),
        Got::Value(v) => check_size(v.len() as u64, s.max_value_bytes)
            .and_then(|()| parse(s.format, &v))
            .map_err(|e| at(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> ConsulSource {
        crate::config::yaml::from_str(&format!("{{ name: kv, {yaml} }}")).expect("consul source")
    }

    #[test]
    fn the_environment_fills_in_what_the_configuration_leaves_out() {
        let resolve = |yaml: &str, vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Settings::resolve_with(&source(yaml), move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
        };
        let s = resolve("", &[]).expect("defaults");
        assert_eq!(
            (s.base.as_str(), s.token.value().as_deref()),
            ("http://127.0.0.1:8500", None)
        );
        assert_eq!(s.key, "service/voltha/data/core/assignment");

        let env = [
            ("CONSUL_HTTP_ADDR", "https://consul.example:8501"),
            ("CONSUL_HTTP_TOKEN", "from-env"),
        ];
        let s = resolve("", &env).expect("env");
        assert_eq!(
            (s.base.as_str(), s.token.value().as_deref()),
            ("https://consul.example:8501", Some("from-env"))
        );
        // The configuration wins over the environment.
        let s = resolve("address: 10.0.0.9:8500, token: mine", &env).expect("config");
        assert_eq!(
            (s.base.as_str(), s.token.value().as_deref()),
            ("http://10.0.0.9:8500", Some("mine"))
        );

        // A bare address turns https with a CA (or CONSUL_HTTP_SSL); a token file beats the token.
        let dir = tempfile::tempdir().expect("tmp");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "  from-file\n").expect("write");
        let token_path = token_file.display().to_string();
        let s = resolve(
            "",
            &[
                ("CONSUL_HTTP_ADDR", "consul:8501"),
                ("CONSUL_CACERT", "/etc/consul/ca.pem"),
                ("CONSUL_HTTP_TOKEN", "from-env"),
                ("CONSUL_HTTP_TOKEN_FILE", &token_path),
            ],
        )
        .expect("env");
        assert_eq!(s.base, "https://consul:8501");
        assert_eq!(
            s.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/consul/ca.pem"))
        );
        assert_eq!(s.token.value().as_deref(), Some("from-file"));
        let s = resolve("", &[("CONSUL_HTTP_ADDR", "consul:8501"), ("CONSUL_HTTP_SSL", "true")]).expect("ssl");
        assert_eq!(s.base, "https://consul:8501");

        // Mutual TLS and the server name, as Consul's tools read them; the configuration wins.
        let tls_env = [
            ("CONSUL_HTTP_ADDR", "consul:8501"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/client.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/client-key.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ];
        let s = resolve("", &tls_env).expect("tls env");
        assert_eq!(s.base, "https://consul:8501");
        assert_eq!(
            s.tls.client,
            Some(("/etc/consul/client.pem".into(), "/etc/consul/client-key.pem".into()))
        );
        assert_eq!(s.tls.server_name.as_deref(), Some("server.dc1.consul"));
        let s = resolve(
            "cert_file: /c.pem, key_file: /k.pem, tls_server_name: consul.internal",
            &tls_env,
        )
        .expect("tls config");
        assert_eq!(s.tls.client, Some(("/c.pem".into(), "/k.pem".into())));
        assert_eq!(s.tls.server_name.as_deref(), Some("consul.internal"));
        // A client certificate alone turns a bare address https; half a pair is refused.
        let s = resolve(
            "",
            &[
                ("CONSUL_HTTP_ADDR", "consul:8501"),
                ("CONSUL_CLIENT_CERT", "/c.pem"),
                ("CONSUL_CLIENT_KEY", "/k.pem"),
            ],
        )
        .expect("client cert");
        assert_eq!(s.base, "https://consul:8501");
        let e = resolve("", &[("CONSUL_CLIENT_CERT", "/c.pem")]).expect_err("no key");
        assert!(e.contains("CONSUL_CLIENT_KEY"), "{e}");
        let e = resolve("key_file: /k.pem", &[]).expect_err("no cert");
        assert!(e.contains("cert_file"), "{e}");

        // An unreadable token file is a configuration error that names the file.
        let missing = dir.path().join("missing").display().to_string();
        let e = resolve("", &[("CONSUL_HTTP_TOKEN_FILE", &missing)]).expect_err("missing token file");
        assert!(e.starts_with("token_file ") && e.contains("missing"), "{e}");
        let e = resolve("", &[("CONSUL_HTTP_ADDR", "unix:///var/run/consul.sock")]).expect_err("unix socket");
        assert!(e.contains("unix:///var/run/consul.sock"), "{e}");
    }

    #[test]
    fn queries_carry_index_wait_datacenter_and_consistency() {
        let s = Settings::resolve_with(
            &source("address: 127.0.0.1:1, key: /a/b, wait: 2s, datacenter: dc2, consistency: stale"),
            |_| None,
        )
        .expect("settings");
        let blocking = s.url(Some(7)).expect("url");
        assert_eq!(blocking.path(), "/v1/kv/a/b");
        assert_eq!(blocking.query(), Some("index=7&wait=2000ms&dc=dc2&stale="));
        assert_eq!(s.url(None).expect("url").query(), Some("dc=dc2&stale="));
        let s = Settings::resolve_with(&source("consistency: default"), |_| None).expect("settings");
        assert_eq!(s.url(Some(1)).expect("url").query(), Some("index=1&wait=300000ms"));
    }
}
