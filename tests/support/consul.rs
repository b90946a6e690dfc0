//! A Consul HTTP API double for the KV endpoints, written from Consul's documented KV API
//! (`/v1/kv`) and blocking queries:
//! - `GET /v1/kv/<key>`: a JSON array of one entry with a base64 `Value` (`null` for an empty
//!   value), `?raw` for the bare value, `?recurse` for every key under a prefix; `404` when
//!   nothing matches. Every answer carries `X-Consul-Index`: the key's `ModifyIndex`, or for a
//!   missing key the index of the last write to the KV table (so, as in Consul, any KV write
//!   wakes a query blocked on a missing key).
//! - Blocking: with `?index=N` (N > 0) the answer waits until that index passes N or `wait`
//!   (Go duration syntax, default 5m, at most 10m) runs out, then answers the current state.
//! - `PUT` (body = value) and `DELETE` bump the one global index.
//! - `GET /v1/status/leader`: the leader's `"ip:port"` as a JSON string (`""` while there is
//!   none); like Consul's status endpoints it needs no ACL token and never blocks. Without a
//!   leader a KV read that is not `?stale` gets `500 No cluster leader`, as in Consul.
//! - ACL: when a token is set, a KV request without the right `X-Consul-Token` gets `403`
//!   (a second token may be accepted too, as while a token rotates).
//! - Bodies as Go's `net/http` sends them: one larger than 2048 bytes goes out chunked, without
//!   `Content-Length` (Consul's KV handler writes JSON without declaring a length), so a
//!   client cannot size a large answer before reading it.
//!
//! Simpler than real Consul: one node and no raft (every read is "consistent" and `dc` is
//! ignored), no jitter added to `wait`, no sessions, flags, CAS or lock indexes, no
//! `?keys`/`?separator`, no other `/v1/status` or `/v1/agent` endpoints, ACLs are one token
//! for everything, and values have no size limit (Consul's is 512 KiB by default,
//! `kv_max_value_size`; a test may need more to exercise a client's own limit).
//!
//! Faults a test can inject: an HTTP status for every request, a delay before every answer,
//! an index reset (as after a restore from snapshot), `X-Consul-Index: 0` on every answer
//! (a Consul bug the blocking-query documentation warns of: the reported index of the
//! result is 0, and a query blocks until it passes the query's index, so one at index 1
//! blocks for its whole wait), and a body that stalls half-way; refused connections come
//! from putting a [`super::proxy::Proxy`] in front. Every request is recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parking_lot::Mutex;
use tokio::sync::watch;

/// One request as the double saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub token: Option<String>,
}

struct Entry {
    value: Vec<u8>,
    create: u64,
    modify: u64,
}

#[derive(Default)]
struct Inner {
    index: u64,
    /// The index of the last write (put or delete) to the KV table.
    table: u64,
    kv: BTreeMap<String, Entry>,
    token: Option<String>,
    /// A second token accepted with `token` (during a rotation).
    also: Option<String>,
    fault: Option<u16>,
    delay: Duration,
    zero_index: bool,
    stall_body: Option<Duration>,
    /// The leader `/v1/status/leader` names; empty: no leader.
    leader: String,
    requests: Vec<Recorded>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every write, to wake blocked queries.
    writes: watch::Sender<u64>,
}

pub struct ConsulDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn parse_wait(s: &str) -> Option<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

impl ConsulDouble {
    pub async fn start() -> ConsulDouble {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                index: 1,
                table: 1,
                leader: "127.0.0.1:8300".into(),
                ..Default::default()
            }),
            writes: watch::channel(0).0,
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        ConsulDouble { addr, shared, stop }
    }

    fn write(&self, f: impl FnOnce(&mut Inner)) {
        let mut g = self.shared.inner.lock();
        f(&mut g);
        let i = g.index;
        drop(g);
        self.shared.writes.send_replace(i);
    }

    pub fn put(&self, key: &str, value: &[u8]) {
        self.write(|g| put(g, key, value.to_vec()));
    }

    pub fn delete(&self, key: &str) {
        self.write(|g| delete(g, key));
    }

    /// Requires this ACL token on every request (`None`: no ACLs).
    pub fn require_token(&self, token: Option<&str>) {
        self.shared.inner.lock().token = token.map(String::from);
    }

    /// Accepts this token as well as the required one (both valid while a token rotates).
    pub fn also_accept(&self, token: Option<&str>) {
        self.shared.inner.lock().also = token.map(String::from);
    }

    /// Answers every request with this status (`None`: normal service).
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.inner.lock().fault = status;
    }

    pub fn delay(&self, d: Duration) {
        self.shared.inner.lock().delay = d;
    }

    /// Reports `X-Consul-Index: 0` on every answer (and blocks on that index).
    pub fn zero_index(&self, on: bool) {
        self.shared.inner.lock().zero_index = on;
    }

    /// Sends half of every answer's body, then waits `d` before the rest (`None`: no stall).
    pub fn stall_body(&self, d: Option<Duration>) {
        self.shared.inner.lock().stall_body = d;
    }

    /// The leader `/v1/status/leader` names (`""`: no leader, as during an election).
    pub fn set_leader(&self, leader: &str) {
        self.shared.inner.lock().leader = leader.to_string();
    }

    /// GETs of `/v1/status/leader` recorded since `t`.
    pub fn probes_since(&self, t: Instant) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.at >= t && r.method == "GET" && r.path == "/v1/status/leader")
            .collect()
    }

    /// Moves the index back to `to` (every entry's index included), as a restore from
    /// snapshot or a rebuilt cluster does.
    pub fn reset_index(&self, to: u64) {
        self.write(|g| {
            g.index = to;
            g.table = to;
            for e in g.kv.values_mut() {
                e.modify = e.modify.min(to);
                e.create = e.create.min(to);
            }
        });
    }

    /// Serves this double over TLS with client authentication as well (Consul's
    /// `verify_incoming`): the [`super::pki::Pki`]'s server certificate, and a client
    /// certificate signed by its CA required. Returns that address and a count of the
    /// handshakes it refused.
    pub async fn serve_mtls(&self, pki: &super::pki::Pki) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        super::pki::mtls_front(pki, self.addr).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.inner.lock().requests.clone()
    }

    /// GETs of `key` recorded since `t`.
    pub fn reads_since(&self, key: &str, t: Instant) -> Vec<Recorded> {
        let path = format!("/v1/kv/{key}");
        self.requests()
            .into_iter()
            .filter(|r| r.at >= t && r.method == "GET" && r.path == path)
            .collect()
    }
}

fn put(g: &mut Inner, key: &str, value: Vec<u8>) {
    g.index += 1;
    g.table = g.index;
    let i = g.index;
    let e = g.kv.entry(key.to_string()).or_insert(Entry {
        value: Vec::new(),
        create: i,
        modify: i,
    });
    e.value = value;
    e.modify = i;
}

fn delete(g: &mut Inner, key: &str) {
    if g.kv.remove(key).is_some() {
        g.index += 1;
        g.table = g.index;
    }
}

/// The index a read of `key` (or of the prefix, with `recurse`) reports.
fn index_of(g: &Inner, key: &str, recurse: bool) -> u64 {
    if g.zero_index {
        return 0;
    }
    if recurse {
        return g
            .kv
            .range(key.to_string()..)
            .take_while(|(k, _)| k.starts_with(key))
            .map(|(_, e)| e.modify)
            .max()
            .unwrap_or(g.table);
    }
    g.kv.get(key).map_or(g.table, |e| e.modify)
}

/// Go's `net/http` buffers this much of a handler's output before it gives up on sending a
/// `Content-Length` and switches to chunked encoding.
const GO_CHUNKING_THRESHOLD: usize = 2048;

/// A body as Go sends it: with `Content-Length` when short, else chunked; with `stall`, the
/// second half only after that long.
fn go_body(bytes: Vec<u8>, stall: Option<Duration>) -> axum::body::Body {
    if bytes.len() <= GO_CHUNKING_THRESHOLD && stall.is_none() {
        return axum::body::Body::from(bytes);
    }
    let bytes = Bytes::from(bytes);
    let mut pieces = std::collections::VecDeque::new();
    let half = bytes.len() / 2;
    pieces.push_back((None, bytes.slice(..half)));
    let rest = bytes.slice(half..);
    for (i, c) in rest.chunks(64 << 10).enumerate() {
        pieces.push_back(((i == 0).then_some(stall).flatten(), rest.slice_ref(c)));
    }
    axum::body::Body::from_stream(futures::stream::unfold(pieces, |mut q| async move {
        let (wait, piece) = q.pop_front()?;
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
        Some((Ok::<_, std::io::Error>(piece), q))
    }))
}

fn with_index(status: StatusCode, index: u64, body: impl IntoResponse) -> Response {
    let mut r = (status, body).into_response();
    if let Ok(v) = index.to_string().parse() {
        r.headers_mut().insert("X-Consul-Index", v);
    }
    r.headers_mut()
        .insert("X-Consul-KnownLeader", axum::http::HeaderValue::from_static("true"));
    r
}

async fn handle(State(sh): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let token = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let (required, also, fault, delay, stall, leader) = {
        let mut g = sh.inner.lock();
        g.requests.push(Recorded {
            at: Instant::now(),
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            token: token.clone(),
        });
        (
            g.token.clone(),
            g.also.clone(),
            g.fault,
            g.delay,
            g.stall_body,
            g.leader.clone(),
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fault {
        let index = sh.inner.lock().index;
        return with_index(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            index,
            "injected fault",
        );
    }
    if path == "/v1/status/leader" && method == Method::GET {
        // No ACL on status endpoints.
        let body = serde_json::Value::String(leader).to_string().into_bytes();
        return (StatusCode::OK, go_body(body, stall)).into_response();
    }
    if required.is_some() && token != required && (also.is_none() || token != also) {
        return (StatusCode::FORBIDDEN, "ACL not found").into_response();
    }
    let Some(key) = path.strip_prefix("/v1/kv/").map(String::from) else {
        return (StatusCode::NOT_FOUND, "no such endpoint in this double").into_response();
    };
    if leader.is_empty() && method == Method::GET && !params.contains_key("stale") {
        // As Consul during an election: only a stale read is served without a leader.
        return (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader").into_response();
    }
    let recurse = params.contains_key("recurse");
    match method {
        Method::PUT => {
            let mut g = sh.inner.lock();
            put(&mut g, &key, body.to_vec());
            let i = g.index;
            drop(g);
            sh.writes.send_replace(i);
            return with_index(StatusCode::OK, i, "true");
        }
        Method::DELETE => {
            let mut g = sh.inner.lock();
            delete(&mut g, &key);
            let i = g.index;
            drop(g);
            sh.writes.send_replace(i);
            return with_index(StatusCode::OK, i, "true");
        }
        Method::GET => {}
        _ => return (StatusCode::METHOD_NOT_ALLOWED, "").into_response(),
    }
    // Blocking query.
    let min_index: u64 = params.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
    if min_index > 0 {
        let wait = params
            .get("wait")
            .and_then(|w| parse_wait(w))
            .unwrap_or(Duration::from_secs(300))
            .min(Duration::from_secs(600));
        let deadline = tokio::time::Instant::now() + wait;
        let mut writes = sh.writes.subscribe();
        loop {
            if index_of(&sh.inner.lock(), &key, recurse) > min_index {
                break;
            }
            match tokio::time::timeout_at(deadline, writes.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
    }
    let g = sh.inner.lock();
    let index = index_of(&g, &key, recurse);
    let entries: Vec<(&String, &Entry)> = if recurse {
        g.kv.range(key.clone()..)
            .take_while(|(k, _)| k.starts_with(&key))
            .collect()
    } else {
        g.kv.get_key_value(&key).into_iter().collect()
    };
    if entries.is_empty() {
        return with_index(StatusCode::NOT_FOUND, index, "");
    }
    if params.contains_key("raw") {
        return with_index(StatusCode::OK, index, go_body(entries[0].1.value.clone(), stall));
    }
    let json: Vec<serde_json::Value> = entries
        .iter()
        .map(|(k, e)| {
            serde_json::json!({
                "LockIndex": 0,
                "Key": k,
                "Flags": 0,
                "Value": if e.value.is_empty() { serde_json::Value::Null } else {
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
                },
                "CreateIndex": e.create,
                "ModifyIndex": e.modify,
            })
        })
        .collect();
    let body = serde_json::Value::Array(json).to_string().into_bytes();
    drop(g);
    let mut r = with_index(StatusCode::OK, index, go_body(body, stall));
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}
