//! One Consul HTTP exchange: a KV read (blocking or not) with its body read under a size limit
//! as it streams in, and the leader probe used while the source is failing.

use std::time::Duration;

use base64::Engine;

use super::Settings;

/// A failure of one query, by kind (the label of `voltha_xds_source_errors_total`).
#[derive(Debug)]
pub(super) struct Failure {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    /// Consul did not answer: its return is worth probing for rather than waiting out the
    /// backoff. (A 5xx is not: Consul answers; a probe that fails after it, say with no
    /// leader, shows it down.)
    pub(crate) down: bool,
}

fn failure(kind: &'static str, message: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        message: message.to_string(),
        down: matches!(kind, "connect" | "timeout"),
    }
}

/// A failed transfer: a timeout (the whole exchange, body included, has one deadline) or a
/// broken connection.
fn transfer_failure(e: &reqwest::Error, what: &str, limit: Duration, base: &str) -> Failure {
    if e.is_timeout() {
        failure(
            "timeout",
            format!("{what}: no complete answer from Consul in {limit:?}"),
        )
    } else {
        // reqwest's own message names only the URL; the cause (refused, a certificate not
        // valid for the name, a client certificate required) is further down the chain.
        let mut message = format!("{what}: Consul at {base}: {e}");
        let mut tls = false;
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            tls |= is_tls(c);
            cause = c.source();
        }
        let mut f = failure(if tls { "tls" } else { "connect" }, message);
        // A TLS failure is Consul answering: retried at the backoff's pace.
        f.down = !tls;
        f
    }
}

/// Whether `e` is a TLS failure: a rustls error, possibly inside I/O errors (whose `source`
/// skips the error they wrap).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut e = e;
    for _ in 0..8 {
        if e.is::<rustls::Error>() {
            return true;
        }
        match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => e = inner,
            None => return false,
        }
    }
    false
}

/// What an answer says of the key.
#[derive(Debug, PartialEq)]
pub(super) enum Got {
    /// No such key (404).
    Absent,
    Value(Vec<u8>),
    /// The answer was larger than a value of `max_value_bytes` can make it: not read further.
    TooLarge,
}

/// One answer: the index it carries and what it says of the key.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    pub(crate) index: u64,
    pub(crate) got: Got,
}

#[derive(serde::Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: Option<String>,
}

/// Reads the value of `key` out of a `GET /v1/kv/<key>` body.
pub(crate) fn decode_body(key: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let entries: Vec<KvEntry> = serde_json::from_slice(body).map_err(|e| format!("the KV answer is not JSON: {e}"))?;
    let Some(e) = entries.into_iter().find(|e| e.key == key) else {
        return Err(format!("the KV answer does not hold key {key:?}"));
    };
    match e.value {
        None => Ok(Vec::new()),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("the value of {key:?} is not base64: {e}")),
    }
}

/// The largest KV answer a value of `max_value` bytes can make: its base64, the key (JSON
/// escapes at most 6 bytes per byte) and the entry's other fields.
pub(super) fn kv_body_limit(max_value: usize, key: &str) -> usize {
    max_value
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(key.len().saturating_mul(6))
        .saturating_add(64 << 10)
}

/// Error answers are read this far, for the message.
const ERROR_BODY_LIMIT: usize = 4 << 10;

/// Reads a body as it streams in; `Ok(None)` as soon as it passes `limit` (what was read is
/// dropped, and the rest is never read).
async fn read_limited(
    resp: &mut reqwest::Response,
    limit: usize,
    on_error: impl Fn(&reqwest::Error) -> Failure,
) -> Result<Option<Vec<u8>>, Failure> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::with_capacity(resp.content_length().map_or(0, |n| n as usize));
    while let Some(chunk) = resp.chunk().await.map_err(|e| on_error(&e))? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Up to `limit` bytes of a body, for a message: never fails.
async fn read_prefix(resp: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

fn request(client: &reqwest::Client, s: &Settings, url: reqwest::Url) -> reqwest::RequestBuilder {
    let req = client.get(url);
    match s.token.value() {
        Some(t) => req.header("X-Consul-Token", t),
        None => req,
    }
}

/// One KV read at `index` (`None`: return at once).
pub(super) async fn query(client: &reqwest::Client, s: &Settings, index: Option<u64>) -> Result<Answer, Failure> {
    let url = s.url(index).map_err(|e| failure("config", e))?;
    // Consul holds a query up to `wait` plus up to wait/16 of jitter.
    let limit = match index {
        Some(_) => s.wait + s.wait / 16 + Duration::from_secs(5),
        None => Duration::from_secs(10),
    };
    let mut resp = request(client, s, url)
        .timeout(limit)
        .send()
        .await
        .map_err(|e| transfer_failure(&e, "query", limit, &s.base))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let on_error = |e: &reqwest::Error| transfer_failure(e, "reading the answer", limit, &s.base);
    match status.as_u16() {
        200 => {
            let got = match read_limited(&mut resp, kv_body_limit(s.max_value_bytes, &s.key), on_error).await? {
                Some(body) => Got::Value(decode_body(&s.key, &body).map_err(|e| failure("decode", e))?),
                None => Got::TooLarge,
            };
            Ok(Answer { index, got })
        }
        404 => Ok(Answer {
            index,
            got: Got::Absent,
        }),
        code => {
            let body = read_prefix(&mut resp, ERROR_BODY_LIMIT).await;
            let text: String = String::from_utf8_lossy(&body).trim().chars().take(200).collect();
            match code {
                401 | 403 => Err(failure("auth", format!("Consul refused the token: {status} {text:?}"))),
                _ => Err(failure("http_status", format!("Consul answered {status}: {text:?}"))),
            }
        }
    }
}

/// Whether Consul answers and knows a leader: `GET /v1/status/leader` (no ACL needed, no
/// blocking), answered `"ip:port"`, or `""` while there is no leader.
pub(super) async fn leader_known(client: &reqwest::Client, s: &Settings) -> bool {
    let Ok(mut url) = format!("{}/v1/status/leader", s.base).parse::<reqwest::Url>() else {
        return false;
    };
    if let Some(dc) = &s.datacenter {
        url.query_pairs_mut().append_pair("dc", dc);
    }
    let limit = Duration::from_secs(2);
    let Ok(mut resp) = request(client, s, url).timeout(limit).send().await else {
        return false;
    };
    if resp.status() != reqwest::StatusCode::OK {
        return false;
    }
    match read_limited(&mut resp, ERROR_BODY_LIMIT, |e| {
        transfer_failure(e, "probe", limit, &s.base)
    })
    .await
    {
        Ok(Some(body)) => leader_in(&body),
        _ => false,
    }
}

/// Whether a `/v1/status/leader` body names a leader.
fn leader_in(body: &[u8]) -> bool {
    serde_json::from_slice::<String>(body).is_ok_and(|l| !l.is_empty())
}

/// The next query index after an answer carrying `got`, following Consul's blocking-query
/// rules: an index that went backwards starts over from 0 (one query that returns at once);
/// an index of 0 (a Consul bug, documented) becomes 1, because a query at index 0 does not
/// block and would turn the watch into a busy loop.
pub(super) fn next_index(current: u64, got: u64) -> u64 {
    if got == 0 {
        1
    } else if got < current {
        0
    } else {
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules_follow_consuls_documentation() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7, "a wait that ran out keeps the index");
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(9, 3), 0, "backwards: start over");
        assert_eq!(next_index(9, 0), 1, "zero: reset to 1, so the next query blocks");
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 1);
    }

    #[test]
    fn kv_answers_decode_base64_and_null_values() {
        let body = br#"[{"Key": "a/b", "Value": "eyJ4IjoxfQ==", "ModifyIndex": 5}]"#;
        assert_eq!(decode_body("a/b", body), Ok(br#"{"x":1}"#.to_vec()));
        assert_eq!(
            decode_body("a/b", br#"[{"Key": "a/b", "Value": null}]"#),
            Ok(Vec::new())
        );
        assert!(decode_body("a/b", br#"[{"Key": "a/b", "Value": "%%%"}]"#).is_err());
        assert!(decode_body("a/b", br#"[{"Key": "other", "Value": null}]"#).is_err());
        assert!(decode_body("a/b", b"<html>").is_err());
    }

    #[test]
    fn the_body_limit_holds_a_value_at_the_limit() {
        let key = "service/voltha/data/core/assignment";
        let value = vec![0xffu8; 4 << 20];
        let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
        let body = format!(
            r#"[{{"LockIndex":0,"Key":"{key}","Flags":0,"Value":"{b64}","CreateIndex":18446744073709551615,"ModifyIndex":18446744073709551615}}]"#
        );
        assert!(body.len() <= kv_body_limit(4 << 20, key));
        assert!(kv_body_limit(4 << 20, key) < (4 << 20) * 4 / 3 + (128 << 10));
    }

    #[test]
    fn a_leader_is_a_non_empty_json_string() {
        assert!(leader_in(br#""10.0.0.5:8300""#));
        assert!(!leader_in(br#""""#));
        assert!(!leader_in(b"null"));
        assert!(!leader_in(b"<html>"));
    }

    /// A server that answers one query with an endless chunked body, counting what it wrote.
    async fn endless_body_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let Ok((mut c, _)) = l.accept().await else { return 0 };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if c.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let piece = vec![b'A'; 64 << 10];
            let chunk = [format!("{:x}\r\n", piece.len()).into_bytes(), piece, b"\r\n".to_vec()].concat();
            let mut written = 0;
            // At most 64 MiB, so that a reader without a limit still ends.
            while written < 64 << 20 {
                if c.write_all(&chunk).await.is_err() {
                    return written;
                }
                written += chunk.len();
            }
            let _ = c.write_all(b"0\r\n\r\n").await;
            written
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_oversized_answer_is_abandoned_while_it_streams_in() {
        let (addr, server) = endless_body_server().await;
        let mut s = Settings::resolve_with(
            &crate::config::yaml::from_str(&format!("{{ name: kv, address: \"{addr}\", max_value_bytes: 65536 }}"))
                .expect("source"),
            |_| None,
        )
        .expect("settings");
        s.wait = Duration::from_secs(5);
        let client = s.tls.client().expect("client");
        let answer = query(&client, &s, Some(0)).await.expect("an answer");
        assert_eq!(
            answer,
            Answer {
                index: 5,
                got: Got::TooLarge
            }
        );
        drop(client);
        let written = server.await.expect("server");
        assert!(written < 32 << 20, "{written} bytes sent before the reader gave up");
    }
}
