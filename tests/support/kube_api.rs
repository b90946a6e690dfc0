//! A double of the Kubernetes pod API, served over plain HTTP/1.1 on 127.0.0.1, that kube's
//! real client (and so `kube_runtime::watcher`) talks to:
//!
//! - `GET /api/v1/namespaces/{ns}/pods[?labelSelector=…]`: a `PodList` with
//!   `metadata.resourceVersion`;
//! - `…&watch=true&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=T]`: newline-
//!   delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`) after N,
//!   replayed from the history and then live. A version older than the last compaction gets an
//!   `ERROR` event with a `410` Status ("too old resource version"), as the real API server
//!   answers;
//! - label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (…)`, `k notin (…)`) are honoured,
//!   including on watches: a pod whose labels stop matching is `DELETED` for that watch.
//!
//! Tests add, modify and delete pods, send bookmarks, force `410 Gone` ([`KubeApi::force_gone`]),
//! slow the list down, and take the whole API server down and up again (connections dropped,
//! connection refused in between).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One change to the store, as the watches see it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    ns: String,
    /// The pod before (`None` when added) and after (`None` when deleted).
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Clone, Debug)]
enum Live {
    Change(Change),
    Bookmark(u64),
    /// Every open watch gets a 410 and ends.
    Gone(u64),
}

#[derive(Default)]
struct Store {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// A watch may resume from a version at or after this one.
    compacted: u64,
    list_delay: Duration,
    /// Refuse a watch from a compacted version with an HTTP 410 (instead of 200 and an `ERROR`
    /// event), and end open watches without an event on [`KubeApi::force_gone`].
    http_gone: bool,
}

struct Inner {
    store: Mutex<Store>,
    live: broadcast::Sender<Live>,
    lists: AtomicU64,
    watches: AtomicU64,
    /// Watch streams currently open.
    open_watches: AtomicU64,
    /// Answer every request `503 Service Unavailable` (see [`KubeApi::set_refusing`]).
    refusing: AtomicBool,
    /// Requests answered so, while refusing.
    refused: AtomicU64,
}

/// The double. Dropping it stops the server.
pub struct KubeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl KubeApi {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> KubeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the pod API double");
        let addr = listener.local_addr().expect("local addr");
        let (live, _) = broadcast::channel(4096);
        let api = KubeApi {
            addr,
            inner: Arc::new(Inner {
                store: Mutex::new(Store {
                    rv: 100,
                    compacted: 100,
                    ..Default::default()
                }),
                live,
                lists: AtomicU64::new(0),
                watches: AtomicU64::new(0),
                open_watches: AtomicU64::new(0),
                refusing: AtomicBool::new(false),
                refused: AtomicU64::new(0),
            }),
            server: Mutex::new(None),
        };
        *api.server.lock() = Some(tokio::spawn(serve(listener, api.inner.clone())));
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds the pod (`ADDED`) or replaces it (`MODIFIED`) in `ns`.
    pub fn apply(&self, ns: &str, pod: Pod) {
        let mut v = serde_json::to_value(&pod).expect("pod to JSON");
        let name = v["metadata"]["name"].as_str().expect("pod has a name").to_string();
        let mut s = self.inner.store.lock();
        s.rv += 1;
        let rv = s.rv;
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Pod");
        v["metadata"]["namespace"] = json!(ns);
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        if v["metadata"]["uid"].is_null() {
            v["metadata"]["uid"] = json!(format!("uid-{ns}-{name}"));
        }
        let old = s.pods.insert((ns.to_string(), name), v.clone());
        let c = Change {
            rv,
            ns: ns.to_string(),
            old,
            new: Some(v),
        };
        s.history.push(c.clone());
        let _ = self.inner.live.send(Live::Change(c));
    }

    /// Changes a pod with `f` (a `MODIFIED` event). Panics if the pod does not exist.
    pub fn modify(&self, ns: &str, name: &str, f: impl FnOnce(&mut Pod)) {
        let mut pod = self.pod(ns, name).unwrap_or_else(|| panic!("no pod {ns}/{name}"));
        f(&mut pod);
        self.apply(ns, pod);
    }

    /// Deletes a pod (`DELETED`); no-op if it does not exist.
    pub fn delete(&self, ns: &str, name: &str) {
        let mut s = self.inner.store.lock();
        let Some(mut old) = s.pods.remove(&(ns.to_string(), name.to_string())) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = Change {
            rv,
            ns: ns.to_string(),
            old: Some(old),
            new: None,
        };
        s.history.push(c.clone());
        let _ = self.inner.live.send(Live::Change(c));
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        let s = self.inner.store.lock();
        let v = s.pods.get(&(ns.to_string(), name.to_string()))?.clone();
        serde_json::from_value(v).ok()
    }

    /// Sends a `BOOKMARK` with the current version on every watch that allows bookmarks.
    pub fn bookmark(&self) {
        let rv = self.inner.store.lock().rv;
        let _ = self.inner.live.send(Live::Bookmark(rv));
    }

    /// Compacts the history: every open watch gets `ERROR 410 Gone` and ends, and a watch from
    /// an older version is refused the same way, so clients must relist.
    pub fn force_gone(&self) {
        let mut s = self.inner.store.lock();
        // A new version that no watch has seen: every watch's version is now too old.
        s.rv += 1;
        s.compacted = s.rv;
        s.history.clear();
        let _ = self.inner.live.send(Live::Gone(s.rv));
    }

    /// Delays every list answer by `d` (to observe a client mid-relist).
    pub fn set_list_delay(&self, d: Duration) {
        self.inner.store.lock().list_delay = d;
    }

    /// Answers `410 Gone` as an HTTP status rather than as an `ERROR` event (see [`Store`]).
    pub fn set_http_gone(&self, on: bool) {
        self.inner.store.lock().http_gone = on;
    }

    /// While on, every request (list or watch) is answered `503 Service Unavailable` and
    /// counted in [`KubeApi::refused`]; connections and open watches are left as they are.
    pub fn set_refusing(&self, on: bool) {
        self.inner.refusing.store(on, Ordering::SeqCst);
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// Lists served so far.
    pub fn lists(&self) -> u64 {
        self.inner.lists.load(Ordering::SeqCst)
    }

    /// Watches started so far.
    pub fn watches(&self) -> u64 {
        self.inner.watches.load(Ordering::SeqCst)
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> u64 {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    /// The API server goes away: every connection is dropped and new ones are refused.
    pub fn stop(&self) {
        if let Some(h) = self.server.lock().take() {
            h.abort();
        }
    }

    /// The API server comes back on the same address, with the same pods and history.
    pub async fn restart(&self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        *self.server.lock() = Some(tokio::spawn(serve(listener, self.inner.clone())));
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections; each runs in this task's `JoinSet`, so aborting this task drops them all.
async fn serve(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn full(code: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if inner.refusing.load(Ordering::SeqCst) {
        inner.refused.fetch_add(1, Ordering::SeqCst);
        return Ok(full(
            StatusCode::SERVICE_UNAVAILABLE,
            status(503, "ServiceUnavailable", "the double is refusing requests"),
        ));
    }
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns = match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods"] if req.method() == hyper::Method::GET => ns.to_string(),
        _ => {
            return Ok(full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("the double serves only pods, not {path}")),
            ))
        }
    };
    let selector = match query.get("labelSelector").map(|s| Selector::parse(s)).transpose() {
        Ok(s) => s,
        Err(e) => {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                status(400, "BadRequest", &format!("unable to parse requirement: {e}")),
            ))
        }
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watch {
        Ok(watch_response(inner, ns, selector, &query))
    } else {
        inner.lists.fetch_add(1, Ordering::SeqCst);
        let delay = inner.store.lock().list_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let s = inner.store.lock();
        let items: Vec<Value> = s
            .pods
            .iter()
            .filter(|((n, _), p)| *n == ns && selector.as_ref().is_none_or(|sel| sel.matches(p)))
            .map(|(_, p)| p.clone())
            .collect();
        Ok(full(
            StatusCode::OK,
            json!({"kind": "PodList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        ))
    }
}

/// What one watch sends for a change, given its selector.
fn event_for(c: &Change, ns: &str, sel: Option<&Selector>) -> Option<Value> {
    if c.ns != ns {
        return None;
    }
    let m = |p: &Option<Value>| p.as_ref().is_some_and(|p| sel.is_none_or(|s| s.matches(p)));
    let (was, is) = (m(&c.old), m(&c.new));
    let (kind, obj) = match (was, is, &c.new) {
        (false, true, Some(new)) => ("ADDED", new.clone()),
        (true, true, Some(new)) => ("MODIFIED", new.clone()),
        (true, false, Some(new)) => {
            // Its labels stopped matching: gone, as far as this watch is concerned.
            ("DELETED", new.clone())
        }
        (true, _, None) => ("DELETED", c.old.clone()?),
        _ => return None,
    };
    Some(json!({"type": kind, "object": obj}))
}

fn watch_response(
    inner: Arc<Inner>,
    ns: String,
    sel: Option<Selector>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    inner.watches.fetch_add(1, Ordering::SeqCst);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let from = query.get("resourceVersion").cloned().unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Value>(1024);
    // Under the lock: subscribe, then take what happened after `from`, so nothing falls between.
    let (mut live, first, current, http_gone) = {
        let s = inner.store.lock();
        let live = inner.live.subscribe();
        let first: Result<Vec<Value>, Value> = if from.is_empty() || from == "0" {
            Ok(s.pods
                .iter()
                .filter(|((n, _), p)| *n == ns && sel.as_ref().is_none_or(|x| x.matches(p)))
                .map(|(_, p)| json!({"type": "ADDED", "object": p}))
                .collect())
        } else {
            match from.parse::<u64>() {
                Ok(rv) if rv < s.compacted => Err(status(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", s.compacted),
                )),
                Ok(rv) => Ok(s
                    .history
                    .iter()
                    .filter(|c| c.rv > rv)
                    .filter_map(|c| event_for(c, &ns, sel.as_ref()))
                    .collect()),
                Err(_) => Err(status(400, "BadRequest", &format!("bad resourceVersion {from:?}"))),
            }
        };
        (live, first, s.rv, s.http_gone)
    };
    if let (Err(st), true) = (&first, http_gone) {
        if st["code"] == 410 {
            return full(StatusCode::GONE, st.clone());
        }
    }
    let inner2 = inner.clone();
    tokio::spawn(async move {
        inner2.open_watches.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut seen = current;
        match first {
            Err(st) => {
                let _ = tx.send(json!({"type": "ERROR", "object": st})).await;
            }
            Ok(events) => {
                let mut ok = true;
                for e in events {
                    ok &= tx.send(e).await.is_ok();
                }
                while ok {
                    let next = tokio::select! {
                        _ = &mut deadline => break,
                        _ = tx.closed() => break,
                        n = live.recv() => n,
                    };
                    let ev = match next {
                        Ok(Live::Change(c)) if c.rv > seen => {
                            seen = c.rv;
                            event_for(&c, &ns, sel.as_ref())
                        }
                        Ok(Live::Change(_)) => None,
                        Ok(Live::Bookmark(rv)) if bookmarks => Some(json!({"type": "BOOKMARK",
                            "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": rv.max(seen).to_string()}}})),
                        Ok(Live::Bookmark(_)) => None,
                        Ok(Live::Gone(_)) if http_gone => break,
                        Ok(Live::Gone(rv)) => {
                            let _ = tx
                                .send(json!({"type": "ERROR", "object": status(410, "Expired",
                                    &format!("too old resource version: {seen} ({rv})"))}))
                                .await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx
                                .send(json!({"type": "ERROR", "object": status(410, "Expired", "watch lagged")}))
                                .await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if let Some(ev) = ev {
                        ok = tx.send(ev).await.is_ok();
                    }
                }
            }
        }
        inner2.open_watches.fetch_sub(1, Ordering::SeqCst);
    });
    let body = StreamBody::new(
        ReceiverStream::new(rx).map(|v| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{v}\n"))))),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("response")
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone)]
pub struct Selector(Vec<Req>);

#[derive(Debug, Clone)]
enum Req {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        let mut parts = Vec::new();
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        for p in parts {
            let p = p.trim();
            if p.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!("empty requirement in {s:?}"));
            }
            let set = |v: &str| -> Result<Vec<String>, String> {
                let v = v.trim();
                let inner = v
                    .strip_prefix('(')
                    .and_then(|x| x.strip_suffix(')'))
                    .ok_or_else(|| format!("{v:?}: values must be in parentheses"))?;
                Ok(inner.split(',').map(|x| x.trim().to_string()).collect())
            };
            let r = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = p.split_once(" in ") {
                Req::In(k.trim().into(), set(v)?)
            } else if p.contains(' ') {
                return Err(format!("{p:?}: unknown operator"));
            } else {
                Req::Exists(p.into())
            };
            reqs.push(r);
        }
        Ok(Selector(reqs))
    }

    /// Whether an object (JSON, with `metadata.labels`) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| obj["metadata"]["labels"][k].as_str().map(str::to_string);
        self.0.iter().all(|r| match r {
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
            Req::Eq(k, v) => label(k).as_deref() == Some(v),
            Req::Ne(k, v) => label(k).as_deref() != Some(v),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.contains(&l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| !vs.contains(&l)),
        })
    }
}

/// A VOLTHA core pod as arouterd saw it: `Running`, every condition `True`, IP `ip`, a
/// container port named `grpc` (`port`), and `labels`.
pub fn core_pod(name: &str, ip: &str, port: u16, labels: &[(&str, &str)]) -> Pod {
    let cond = |t: &str| PodCondition {
        type_: t.into(),
        status: "True".into(),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "voltha".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("grpc".into()),
                    container_port: i32::from(port),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(
                ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                    .iter()
                    .map(|t| cond(t))
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

/// Sets a pod's `Ready` condition (and `ContainersReady`) to `ready`.
pub fn set_ready(pod: &mut Pod, ready: bool) {
    if let Some(cs) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in cs
            .iter_mut()
            .filter(|c| c.type_ == "Ready" || c.type_ == "ContainersReady")
        {
            c.status = if ready { "True" } else { "False" }.into();
        }
    }
}

/// Sets a pod's IP.
pub fn set_ip(pod: &mut Pod, ip: &str) {
    if let Some(s) = pod.status.as_mut() {
        s.pod_ip = Some(ip.into());
    }
}
