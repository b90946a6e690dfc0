//! The etcd source: one etcd v3 key holding the VOLTHA core assignment (VOLTHA's later KV
//! store; envoyd's `-kv etcd`).
//!
//! Every session reads the key (`KV.Range`), delivers it, then watches it from the next
//! revision (`Watch.Watch`), so no write between the read and the watch is missed, whatever
//! happened to etcd while it was out of reach. The read's response header says which cluster
//! answered and its revision: a cluster id that changed, or a revision below the last one
//! seen (etcd re-created on the same address with a new data dir), is logged and counted
//! (kinds `cluster_changed`, `revision_reset`). Resuming the watch after the last revision
//! seen would wait, silently, for the new cluster to reach the old revision. A watch cancelled
//! because its revision was compacted reads the key again at once. Any other failure
//! (connection refused, authentication, a broken stream) is counted by kind, logged, and
//! retried with capped exponential backoff and jitter, while the last good state keeps being
//! served.
//!
//! Values follow the rules of [`super::KeyState`], shared with the Consul and file sources:
//! only a well-formed assignment is delivered; an empty, malformed or oversized value
//! (`max_value_bytes`: the gRPC clients refuse messages over the cap plus [`HEADROOM`], and
//! `KeyState` checks a value between the two) is an error, and the last good state is kept. A
//! key that does not exist before its first good value leaves the source not ready (kind
//! `absent`); one deleted after it keeps the last good state (kind `deleted`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use super::assignment::parse;
use super::{Backoff, KeyState, Publisher};
use crate::config::address::endpoint_uri;
use crate::config::{EtcdSource, FileFormat};
use crate::model::SourceData;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{AuthenticateRequest, RangeRequest, WatchCreateRequest, WatchRequest};
use crate::proto::mvccpb::event::EventType;

/// Connection settings, with the environment fallbacks of etcd's own tools applied.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// As given (in the configuration or `ETCDCTL_ENDPOINTS`), for messages.
    pub(crate) endpoints: Vec<String>,
    /// `endpoints` parsed, with the scheme TLS implies when one gives none.
    pub(crate) uris: Vec<tonic::codegen::http::Uri>,
    pub(crate) key: String,
    pub(crate) format: FileFormat,
    pub(crate) user: Option<(String, String)>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) dial_timeout: Duration,
    /// The largest value accepted, in bytes.
    pub(crate) max_value_bytes: usize,
    /// How often etcd is probed while it is out of reach.
    pub(crate) probe_interval: Duration,
}

/// What a Range or Watch response may carry besides the value (header, key, revisions, a few
/// events): the gRPC clients accept `max_value_bytes` plus this.
pub(crate) const HEADROOM: usize = 64 * 1024;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Resolves the configuration against `ETCDCTL_ENDPOINTS`, `ETCDCTL_USER`,
    /// `ETCDCTL_CACERT`, `ETCDCTL_CERT` and `ETCDCTL_KEY`; reads the password file.
    pub(crate) fn resolve(c: &EtcdSource) -> Result<Settings, String> {
        let endpoints = if c.endpoints.is_empty() {
            match env("ETCDCTL_ENDPOINTS") {
                Some(v) => v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                None => vec!["127.0.0.1:2379".to_string()],
            }
        } else {
            c.endpoints.clone()
        };
        let user = match (&c.username, &c.password, &c.password_file) {
            (Some(u), Some(p), _) => Some((u.clone(), p.clone())),
            (Some(u), None, Some(f)) => {
                let p = std::fs::read_to_string(f).map_err(|e| format!("password_file {}: {e}", f.display()))?;
                Some((u.clone(), p.trim_end_matches(['\r', '\n']).to_string()))
            }
            (Some(u), None, None) => Some((u.clone(), String::new())),
            (None, _, _) => env("ETCDCTL_USER").map(|v| match v.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => (v, String::new()),
            }),
        };
        let path = |v: &Option<PathBuf>, var: &str| v.clone().or_else(|| env(var).map(PathBuf::from));
        let ca_file = path(&c.ca_file, "ETCDCTL_CACERT");
        // Those of the configuration were checked by validation; ETCDCTL_ENDPOINTS's are here.
        let uris = endpoints
            .iter()
            .map(|ep| endpoint_uri(ep, ca_file.is_some()).map_err(|e| format!("endpoint {ep:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Settings {
            endpoints,
            uris,
            key: c.key.clone(),
            format: c.format,
            user,
            ca_file,
            cert_file: path(&c.cert_file, "ETCDCTL_CERT"),
            key_file: path(&c.key_file, "ETCDCTL_KEY"),
            dial_timeout: c.dial_timeout.0,
            max_value_bytes: c.max_value_bytes,
            probe_interval: c.probe_interval.0,
        })
    }
}

/// A failure of one session, by kind (the label of `voltha_xds_source_errors_total`).
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

fn grpc_failure(what: &str, s: &Status) -> Failure {
    let kind = match s.code() {
        // tonic refuses a message over the client's decoding limit with OUT_OF_RANGE.
        tonic::Code::OutOfRange => {
            return failure(
                "too_large",
                format!(
                    "{what}: {} (a value over max_value_bytes; the last good state is kept)",
                    s.message()
                ),
            )
        }
        tonic::Code::Unavailable => "connect",
        tonic::Code::DeadlineExceeded => "timeout",
        // etcd answers a wrong password with INVALID_ARGUMENT.
        _ if what == "authenticate" => "auth",
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "auth",
        _ => "grpc",
    };
    failure(kind, format!("{what}: {} ({:?})", s.message(), s.code()))
}

/// What survives between sessions.
#[derive(Default)]
struct State {
    key: KeyState,
    /// The highest store revision seen (`None`: never read).
    revision: Option<i64>,
    /// The id of the cluster that answered the last read.
    cluster_id: Option<u64>,
}

impl State {
    fn apply(&mut self, p: &Publisher, s: &Settings, value: Option<&[u8]>) {
        self.key.apply(p, s.format, &format!("etcd key {:?}", s.key), value);
    }

    /// Takes a read's header: reports a cluster that is not the one read before, or a store
    /// whose revision went back (etcd re-created with a new data dir), and remembers both.
    fn observe(&mut self, p: &Publisher, s: &Settings, r: &Read) {
        let kind = match (self.cluster_id, self.revision) {
            (Some(c), _) if c != r.cluster_id => Some("cluster_changed"),
            (_, Some(rev)) if r.revision < rev => Some("revision_reset"),
            _ => None,
        };
        if let Some(kind) = kind {
            tracing::warn!(
                key = ?s.key,
                kind,
                cluster_before = ?self.cluster_id.map(|c| format!("{c:x}")),
                cluster_now = %format!("{:x}", r.cluster_id),
                revision_before = ?self.revision,
                revision_now = r.revision,
                "etcd is not the store read before (re-created?); the key was read again and is watched from its new revision"
            );
            p.count_error(kind);
        }
        self.cluster_id = Some(r.cluster_id);
        self.revision = Some(r.revision);
    }
}

pub(crate) async fn run(p: Publisher, s: Settings, backoff: Backoff, shutdown: CancellationToken) {
    let mut backoff = backoff;
    let mut state = State {
        key: KeyState::new(s.max_value_bytes),
        ..State::default()
    };
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = session(&p, &s, &mut state, &mut backoff) => o,
        };
        match outcome {
            Outcome::Relist => continue,
            Outcome::Failed(f) => {
                p.fail(f.kind, f.message);
                let wait = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wait_to_retry(&s, wait) => {}
                }
            }
        }
    }
}

/// Waits `delay` (the backoff's) before a failed session is retried, but no longer than it
/// takes etcd, once a probe has found it out of reach, to answer a probe again: every
/// `probe_interval`, a connection and a read of the key (authenticated where configured),
/// neither counted nor logged. So a recovery after a long outage is followed within about one
/// probe interval, whatever the backoff has grown to, while an etcd that answers but fails the
/// session otherwise (a broken watch, say) is still retried at the backoff's pace.
async fn wait_to_retry(s: &Settings, delay: Duration) {
    let deadline = tokio::time::Instant::now() + delay;
    let mut down = false;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left <= s.probe_interval {
            tokio::time::sleep(left).await;
            return;
        }
        tokio::time::sleep(s.probe_interval).await;
        let answers = async {
            let (channel, token) = open(s).await.ok()?;
            read(&channel, &token, s).await.ok()
        };
        if tokio::time::timeout(s.dial_timeout, answers)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            if down {
                tracing::info!(key = %s.key, "etcd answers again; reading at once");
                return;
            }
        } else {
            down = true;
        }
    }
}

enum Outcome {
    /// The watch's start revision was compacted away: read again at once.
    Relist,
    Failed(Failure),
}

/// Adds the auth token to every request.
#[derive(Clone)]
struct Token(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

async fn connect(s: &Settings) -> Result<Channel, Failure> {
    let tls = match &s.ca_file {
        None => None,
        Some(ca) => {
            let pem = tokio::fs::read(ca)
                .await
                .map_err(|e| failure("tls", format!("ca_file {}: {e}", ca.display())))?;
            let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let (Some(c), Some(k)) = (&s.cert_file, &s.key_file) {
                let cert = tokio::fs::read(c)
                    .await
                    .map_err(|e| failure("tls", format!("cert_file {}: {e}", c.display())))?;
                let key = tokio::fs::read(k)
                    .await
                    .map_err(|e| failure("tls", format!("key_file {}: {e}", k.display())))?;
                t = t.identity(Identity::from_pem(cert, key));
            }
            Some(t)
        }
    };
    let mut endpoints = Vec::new();
    // Parsed by `Settings::resolve`, with TLS's scheme exactly when `tls` is set (a CA file).
    for uri in &s.uris {
        let mut e = Endpoint::from(uri.clone())
            .connect_timeout(s.dial_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(t) = &tls {
            e = e.tls_config(t.clone()).map_err(|e| failure("tls", e))?;
        }
        endpoints.push(e);
    }
    match endpoints.len() {
        1 => match endpoints.pop() {
            Some(e) => e
                .connect()
                .await
                .map_err(|e| failure("connect", format!("{}: {e}", s.endpoints.join(",")))),
            None => Err(failure("config", "no endpoint")),
        },
        _ => Ok(Channel::balance_list(endpoints.into_iter())),
    }
}

async fn session(p: &Publisher, s: &Settings, state: &mut State, backoff: &mut Backoff) -> Outcome {
    match session_inner(p, s, state, backoff).await {
        Ok(o) => o,
        Err(f) => Outcome::Failed(f),
    }
}

/// Connects and logs in.
async fn open(s: &Settings) -> Result<(Channel, Token), Failure> {
    let channel = connect(s).await?;
    let Some((user, password)) = &s.user else {
        return Ok((channel, Token(None)));
    };
    let req = AuthenticateRequest {
        name: user.clone(),
        password: password.clone(),
    };
    let mut auth = AuthClient::new(channel.clone()).max_decoding_message_size(HEADROOM);
    let resp = tokio::time::timeout(s.dial_timeout, auth.authenticate(req))
        .await
        .map_err(|_| failure("timeout", "authenticate: no answer in time"))?
        .map_err(|e| grpc_failure("authenticate", &e))?
        .into_inner();
    let value = AsciiMetadataValue::try_from(resp.token.as_str())
        .map_err(|_| failure("auth", "authenticate: the token is not ASCII"))?;
    Ok((channel, Token(Some(value))))
}

/// One read of the key.
struct Read {
    /// The store's revision when it was read.
    revision: i64,
    /// The id of the cluster that answered.
    cluster_id: u64,
    /// `None` when the key does not exist.
    value: Option<Vec<u8>>,
}

/// The largest gRPC message the clients accept.
fn decode_limit(s: &Settings) -> usize {
    s.max_value_bytes.saturating_add(HEADROOM)
}

/// Reads the key, with the store's revision and cluster id.
async fn read(channel: &Channel, token: &Token, s: &Settings) -> Result<Read, Failure> {
    let mut kv = KvClient::new(InterceptedService::new(channel.clone(), token.clone()))
        .max_decoding_message_size(decode_limit(s));
    let req = RangeRequest {
        key: s.key.as_bytes().to_vec(),
        ..Default::default()
    };
    let resp = tokio::time::timeout(s.dial_timeout, kv.range(req))
        .await
        .map_err(|_| failure("timeout", "range: no answer in time"))?
        .map_err(|e| grpc_failure("range", &e))?
        .into_inner();
    let (revision, cluster_id) = resp.header.map(|h| (h.revision, h.cluster_id)).unwrap_or_default();
    Ok(Read {
        revision,
        cluster_id,
        value: resp.kvs.into_iter().next().map(|kv| kv.value),
    })
}

async fn session_inner(
    p: &Publisher,
    s: &Settings,
    state: &mut State,
    backoff: &mut Backoff,
) -> Result<Outcome, Failure> {
    let (channel, token) = open(s).await?;
    // Read on every session: resuming after the last revision seen would follow a store that
    // may have been re-created meanwhile (its revisions start again from 1).
    let r = read(&channel, &token, s).await?;
    state.observe(p, s, &r);
    state.apply(p, s, r.value.as_deref());
    let revision = r.revision;

    let mut watch =
        WatchClient::new(InterceptedService::new(channel, token)).max_decoding_message_size(decode_limit(s));
    let (tx, rx) = mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: s.key.as_bytes().to_vec(),
            start_revision: revision + 1,
            ..Default::default()
        })),
    };
    tx.send(create)
        .await
        .map_err(|_| failure("watch", "watch request not sent"))?;
    let mut stream = watch
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| grpc_failure("watch", &e))?
        .into_inner();
    loop {
        let msg = stream.message().await.map_err(|e| grpc_failure("watch", &e))?;
        let Some(w) = msg else {
            return Err(failure("watch", "the watch stream ended"));
        };
        if w.canceled {
            if w.compact_revision > 0 {
                tracing::warn!(key = %s.key, from = revision + 1, compacted_to = w.compact_revision, "etcd watch revision compacted; reading the key again");
                p.count_error("compacted");
                return Ok(Outcome::Relist);
            }
            return Err(failure(
                "watch",
                format!("watch cancelled by etcd: {}", w.cancel_reason),
            ));
        }
        if w.created {
            // The session works: the next failure starts again from the shortest wait.
            backoff.reset();
            if state.key.value_ok {
                p.healthy();
            }
            tracing::info!(key = %s.key, revision, "watching etcd key");
        }
        if let Some(h) = &w.header {
            state.revision = state.revision.max(Some(h.revision));
        }
        for ev in w.events {
            if let Some(kv) = &ev.kv {
                state.revision = state.revision.max(Some(kv.mod_revision));
            }
            match EventType::try_from(ev.r#type) {
                Ok(EventType::Put) => state.apply(p, s, ev.kv.as_ref().map(|kv| kv.value.as_slice())),
                Ok(EventType::Delete) => state.apply(p, s, None),
                Err(_) => tracing::debug!(r#type = ev.r#type, "ignoring an etcd event of unknown type"),
            }
        }
    }
}

/// Reads the key once (for `render`).
pub(crate) async fn read_once(s: &Settings) -> Result<SourceData, String> {
    let (channel, token) = open(s).await.map_err(|f| f.message)?;
    match read(&channel, &token, s).await.map_err(|f| f.message)?.value {
        None => Err(format!(
            "etcd key {:?}: does not exist (serve would not be ready)",
            s.key
        )),
        Some(v) if v.len() > s.max_value_bytes => Err(format!(
            "etcd key {:?}: the value is {} bytes, over max_value_bytes ({})",
            s.key,
            v.len(),
            s.max_value_bytes
        )),
        Some(v) => parse(s.format, &v).map_err(|e| format!("etcd key {:?}: {e}", s.key)),
    }
}
