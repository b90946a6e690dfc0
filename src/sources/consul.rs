//! The Consul source: one Consul KV key holding the VOLTHA core assignment (what envoyd
//! watched), followed with Consul's blocking queries.
//!
//! Each query is `GET /v1/kv/<key>?index=N&wait=W`, which Consul holds until the key's index
//! passes `N` or `W` elapses. The rules of Consul's blocking-query documentation are followed:
//! - every answer, a 404 included, carries `X-Consul-Index`, and the next query blocks on it,
//!   so an absent key does not become a busy loop;
//! - an index that goes backwards, or is 0, resets the query index to 0;
//! - a query that returns sooner than `min_interval` waits out the rest of it before the next
//!   one (a misbehaving server cannot make us spin).
//!
//! Failures (connection refused, timeouts, 5xx, ACL denials, undecodable answers) are counted
//! by kind, logged, and retried with capped exponential backoff and jitter; the last good state
//! keeps being served. Values follow the assignment rules of [`super::assignment`]. A key absent
//! at the first answer means "no cores yet"; a key deleted after it had a value keeps the last
//! good state and is reported as kind `deleted`.
//!
//! Thin HTTP client on reqwest: rs-consul turns a 404 into an error without its
//! `X-Consul-Index`, which would make an absent key a busy loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio_util::sync::CancellationToken;

use super::assignment::parse;
use super::{Backoff, KeyState, Publisher};
use crate::config::{ConsulConsistency, ConsulSource, FileFormat};
use crate::model::SourceData;

/// Connection settings, with the environment fallbacks of Consul's own tools applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http(s)://host:port`, no trailing slash.
    pub base: String,
    pub key: String,
    pub format: FileFormat,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub datacenter: Option<String>,
    pub consistency: ConsulConsistency,
    pub wait: Duration,
    pub min_interval: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The base URL of an address given as `host:port` or with a scheme.
pub fn base_url(addr: &str, tls: bool) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("{}://{addr}", if tls { "https" } else { "http" })
    };
    let parsed: reqwest::Url = url.parse().map_err(|e| format!("not a valid address: {e}"))?;
    if parsed.host_str().is_none_or(str::is_empty) || parsed.path() != "/" {
        return Err("expected host:port or http(s)://host:port".to_string());
    }
    Ok(url)
}

impl Settings {
    /// Resolves the configuration against `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`,
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT` and `CONSUL_HTTP_SSL`; reads the token file.
    pub fn resolve(c: &ConsulSource) -> Result<Settings, String> {
        Self::resolve_with(c, env)
    }

    /// [`Settings::resolve`] with the environment given as a lookup (tests).
    pub fn resolve_with(c: &ConsulSource, env: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let ca_file = c.ca_file.clone().or_else(|| env("CONSUL_CACERT").map(PathBuf::from));
        let ssl = env("CONSUL_HTTP_SSL").is_some_and(|v| v == "true" || v == "1");
        let addr = c
            .address
            .clone()
            .or_else(|| env("CONSUL_HTTP_ADDR"))
            .unwrap_or_else(|| "127.0.0.1:8500".into());
        let base = base_url(&addr, ssl || ca_file.is_some()).map_err(|e| format!("address {addr:?}: {e}"))?;
        let token_file = c
            .token_file
            .clone()
            .or_else(|| env("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from));
        let token = match (&c.token, token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("token_file {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => env("CONSUL_HTTP_TOKEN"),
        };
        Ok(Settings {
            base,
            key: c.key.trim_start_matches('/').to_string(),
            format: c.format,
            token,
            ca_file,
            datacenter: c.datacenter.clone(),
            consistency: c.consistency,
            wait: c.wait.0,
            min_interval: c.min_interval.0,
        })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build().map_err(|e| e.to_string())
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

/// A failure of one query, by kind (the label of `voltha_xds_source_errors_total`).
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

fn failure(kind: &'static str, message: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        message: message.to_string(),
    }
}

/// One answer: the index it carries and the value (`None`: no such key).
#[derive(Debug, PartialEq)]
struct Answer {
    index: u64,
    value: Option<Vec<u8>>,
}

#[derive(serde::Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: Option<String>,
}

/// Reads the value of `key` out of a `GET /v1/kv/<key>` body.
pub(crate) fn decode_body(key: &str, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let entries: Vec<KvEntry> = serde_json::from_slice(body).map_err(|e| format!("the KV answer is not JSON: {e}"))?;
    let Some(e) = entries.into_iter().find(|e| e.key == key) else {
        return Err(format!("the KV answer does not hold key {key:?}"));
    };
    match e.value {
        None => Ok(Some(Vec::new())),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Some)
            .map_err(|e| format!("the value of {key:?} is not base64: {e}")),
    }
}

async fn query(client: &reqwest::Client, s: &Settings, index: Option<u64>) -> Result<Answer, Failure> {
    let url = s.url(index).map_err(|e| failure("config", e))?;
    let mut req = client.get(url);
    if let Some(t) = &s.token {
        req = req.header("X-Consul-Token", t);
    }
    // Consul holds a query up to `wait` plus up to wait/16 of jitter.
    let limit = match index {
        Some(_) => s.wait + s.wait / 16 + Duration::from_secs(5),
        None => Duration::from_secs(10),
    };
    let resp = req.timeout(limit).send().await.map_err(|e| {
        if e.is_timeout() {
            failure("timeout", format!("no answer from Consul in {limit:?}"))
        } else {
            failure("connect", format!("Consul at {}: {e}", s.base))
        }
    })?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| failure("connect", format!("reading the answer: {e}")))?;
    let text = || {
        String::from_utf8_lossy(&body)
            .trim()
            .chars()
            .take(200)
            .collect::<String>()
    };
    match status.as_u16() {
        200 => Ok(Answer {
            index: index.unwrap_or(0),
            value: decode_body(&s.key, &body).map_err(|e| failure("decode", e))?,
        }),
        404 => Ok(Answer {
            index: index.unwrap_or(0),
            value: None,
        }),
        401 | 403 => Err(failure(
            "auth",
            format!("Consul refused the token: {status} {}", text()),
        )),
        _ => Err(failure("http_status", format!("Consul answered {status}: {}", text()))),
    }
}

/// The next query index after an answer carrying `got`, following Consul's rules.
fn next_index(current: u64, got: u64) -> u64 {
    if got == 0 || got < current {
        0
    } else {
        got
    }
}

pub async fn run(p: Publisher, s: Settings, backoff: Backoff, shutdown: CancellationToken) {
    let mut backoff = backoff;
    let client = match s.client() {
        Ok(c) => c,
        Err(e) => {
            // Never delivers: not ready, and the reason is on /readyz and in the log.
            p.fail("config", e);
            return;
        }
    };
    let mut state = KeyState::default();
    let what = format!("Consul key {:?}", s.key);
    let mut index = 0u64;
    let mut last_value: Option<Option<Vec<u8>>> = None;
    // Whether a query failed since the last answer.
    let mut query_failed = false;
    loop {
        let started = Instant::now();
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = query(&client, &s, Some(index)) => a,
        };
        let pause = match answer {
            Ok(a) => {
                backoff.reset();
                if a.index < index && a.index != 0 {
                    tracing::warn!(key = %s.key, from = index, to = a.index, "Consul index went backwards; starting over");
                }
                index = next_index(index, a.index);
                // The same answer again (a wait that ran out) is not news; after a failed query
                // it means the source is healthy again (if its value was good).
                if last_value.as_ref() != Some(&a.value) {
                    state.apply(&p, s.format, &what, a.value.as_deref());
                    last_value = Some(a.value);
                } else if query_failed && state.value_ok {
                    p.healthy();
                }
                query_failed = false;
                s.min_interval.saturating_sub(started.elapsed())
            }
            Err(f) => {
                p.fail(f.kind, f.message);
                query_failed = true;
                backoff.next_delay()
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Reads the key once, without blocking (for `render`).
pub async fn read_once(s: &Settings) -> Result<SourceData, String> {
    let client = s.client()?;
    let a = query(&client, s, None).await.map_err(|f| f.message)?;
    match a.value {
        None => Ok(SourceData::default()),
        Some(v) => parse(s.format, &v).map_err(|e| format!("Consul key {:?}: {e}", s.key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_a_scheme_or_get_one() {
        assert_eq!(
            base_url("127.0.0.1:8500", false).as_deref(),
            Ok("http://127.0.0.1:8500")
        );
        assert_eq!(base_url("consul:8501", true).as_deref(), Ok("https://consul:8501"));
        assert_eq!(
            base_url("https://consul:8501/", false).as_deref(),
            Ok("https://consul:8501")
        );
        assert!(base_url("http://consul:8500/v1", false).is_err());
        assert!(base_url("", false).is_err());
    }

    fn source(yaml: &str) -> ConsulSource {
        serde_yaml::from_str(&format!("{{ name: kv, {yaml} }}")).expect("consul source")
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
        assert_eq!((s.base.as_str(), s.token.as_deref()), ("http://127.0.0.1:8500", None));
        assert_eq!(s.key, "service/voltha/data/core/assignment");

        let env = [
            ("CONSUL_HTTP_ADDR", "https://consul.example:8501"),
            ("CONSUL_HTTP_TOKEN", "from-env"),
        ];
        let s = resolve("", &env).expect("env");
        assert_eq!(
            (s.base.as_str(), s.token.as_deref()),
            ("https://consul.example:8501", Some("from-env"))
        );
        // The configuration wins over the environment.
        let s = resolve("address: 10.0.0.9:8500, token: mine", &env).expect("config");
        assert_eq!(
            (s.base.as_str(), s.token.as_deref()),
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
        assert_eq!(s.ca_file.as_deref(), Some(std::path::Path::new("/etc/consul/ca.pem")));
        assert_eq!(s.token.as_deref(), Some("from-file"));
        let s = resolve("", &[("CONSUL_HTTP_ADDR", "consul:8501"), ("CONSUL_HTTP_SSL", "true")]).expect("ssl");
        assert_eq!(s.base, "https://consul:8501");

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

    #[test]
    fn index_rules_follow_consuls_documentation() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7, "a wait that ran out keeps the index");
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 3), 0, "backwards: start over");
        assert_eq!(next_index(9, 0), 0, "zero: start over");
    }

    #[test]
    fn kv_answers_decode_base64_and_null_values() {
        let body = br#"[{"Key": "a/b", "Value": "eyJ4IjoxfQ==", "ModifyIndex": 5}]"#;
        assert_eq!(decode_body("a/b", body), Ok(Some(br#"{"x":1}"#.to_vec())));
        assert_eq!(
            decode_body("a/b", br#"[{"Key": "a/b", "Value": null}]"#),
            Ok(Some(Vec::new()))
        );
        assert!(decode_body("a/b", br#"[{"Key": "a/b", "Value": "%%%"}]"#).is_err());
        assert!(decode_body("a/b", br#"[{"Key": "other", "Value": null}]"#).is_err());
        assert!(decode_body("a/b", b"<html>").is_err());
    }
}
