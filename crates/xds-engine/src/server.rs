//! The gRPC services: ADS (SotW and Delta) and the per-type CDS, EDS, LDS and RDS services,
//! all on one port.
//!
//! Each stream runs in its own task: it selects over "request arrived", "snapshot changed" and
//! "shutdown", feeds its state machine (with the time), and sends what the machine says. It
//! applies what the machine reports (metrics, logs, its status record, changed in place under
//! the record's own lock, which only a reader of the client table also takes). No lock is
//! shared on the send path; the snapshot is read through a `watch` channel and shared by `Arc`.
//!
//! The routing of gRPC paths to these streams is in `services`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::cache::Cache;
use super::cache::Snapshot;
use super::grpc::{self, Framed, Outbound, Requests, WireMessage};
use super::logsafe::{LogBudget, Noise, Safe, Verdict};
use super::names::NameSets;
use super::resources::{ResourceType, TypeMap};
use super::status::{ClientTable, Registration};
use super::stream::{DeltaStream, Limits, Scope, SotwRequest, SotwStream, StreamError, StreamEvent};
use super::wire::{DeltaDiscoveryResponse, DiscoveryResponse};
use crate::metrics::Metrics;

/// Responses buffered per stream before the stream task waits for the client to read.
const SEND_BUFFER: usize = 4;

/// The xDS server: ADS, the per-type services and CSDS over the snapshots of one [`Cache`].
/// Built with [`XdsServer::new`] and the `with_*` settings, served with
/// [`XdsServer::into_router`]; cheap to clone (every stream holds one).
#[derive(Clone)]
pub struct XdsServer {
    /// The snapshots served.
    pub(crate) cache: Cache,
    /// The open streams, for status and CSDS.
    pub(crate) clients: Arc<ClientTable>,
    /// The engine's metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Per-stream limits.
    pub(crate) limits: Limits,
    /// Ends every stream when cancelled.
    pub(crate) shutdown: CancellationToken,
    /// One permit per open stream (`server.max_streams`).
    pub(crate) stream_slots: Arc<Semaphore>,
    /// The largest request message accepted (`server.max_request_bytes`).
    pub(crate) max_request_bytes: usize,
    /// CSDS's bounds (`server.csds`).
    pub(crate) csds: CsdsLimits,
    /// The subscriptions' name sets, shared by this server's streams.
    pub(crate) name_sets: Arc<NameSets>,
    /// Set in every response's `control_plane` (Envoy shows it as the text stat
    /// `control_plane.identifier`); `None` leaves the field out.
    pub(crate) control_plane: Option<ControlPlane>,
}

impl XdsServer {
    /// Streams open at once by default ([`XdsServer::with_max_streams`]).
    pub const DEFAULT_MAX_STREAMS: usize = 10_000;
    /// The largest request message by default ([`XdsServer::with_max_request_bytes`]): 4 MiB.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

    /// A server of `cache`'s snapshots, with its own client table, metrics and shutdown token,
    /// [`Limits::default`], [`CsdsLimits::default`], [`Self::DEFAULT_MAX_STREAMS`] streams,
    /// [`Self::DEFAULT_MAX_REQUEST_BYTES`] per request, and no control-plane identifier.
    pub fn new(cache: Cache) -> XdsServer {
        XdsServer {
            cache,
            clients: Arc::new(ClientTable::default()),
            metrics: Arc::new(Metrics::new()),
            limits: Limits::default(),
            shutdown: CancellationToken::new(),
            stream_slots: Arc::new(Semaphore::new(Self::DEFAULT_MAX_STREAMS)),
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            csds: CsdsLimits::default(),
            name_sets: Arc::default(),
            control_plane: None,
        }
    }

    /// The table the streams publish their status to (shared with a status page, say).
    pub fn with_clients(mut self, clients: Arc<ClientTable>) -> XdsServer {
        self.clients = clients;
        self
    }

    /// The metrics the engine counts into (shared with the embedding program's registry).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> XdsServer {
        self.metrics = metrics;
        self
    }

    /// Per-stream limits.
    pub fn with_limits(mut self, limits: Limits) -> XdsServer {
        self.limits = limits;
        self
    }

    /// Cancelling `shutdown` ends every stream (and CSDS stream) of this server.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> XdsServer {
        self.shutdown = shutdown;
        self
    }

    /// At most `n` xDS streams open at once (at least 1); more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub fn with_max_streams(mut self, n: usize) -> XdsServer {
        self.stream_slots = Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        self
    }

    /// The largest request message accepted, in bytes; a larger one ends its stream with
    /// `RESOURCE_EXHAUSTED`.
    pub fn with_max_request_bytes(mut self, n: usize) -> XdsServer {
        self.max_request_bytes = n;
        self
    }

    /// CSDS's bounds.
    pub fn with_csds(mut self, csds: CsdsLimits) -> XdsServer {
        self.csds = csds;
        self
    }

    /// Set in every response's `control_plane` (Envoy shows it as the text stat
    /// `control_plane.identifier`); `None` (the default) leaves the field out.
    pub fn with_control_plane(mut self, control_plane: Option<ControlPlane>) -> XdsServer {
        self.control_plane = control_plane;
        self
    }
}

/// CSDS's bounds (`server.csds`, documented in `docs/configuration.md`).
#[derive(Clone, Copy, Debug)]
pub struct CsdsLimits {
    /// CSDS answers being built or sent at once, over every client.
    pub max_concurrent_requests: usize,
    /// The largest CSDS response message, in bytes.
    pub max_response_bytes: usize,
    /// Requests one `StreamClientStatus` stream may make per second, on average.
    pub stream_requests_per_second: f64,
    /// Requests one `StreamClientStatus` stream may make at once after a quiet period.
    pub stream_burst: u32,
}

impl Default for CsdsLimits {
    fn default() -> Self {
        CsdsLimits {
            max_concurrent_requests: 4,
            max_response_bytes: 4 * 1024 * 1024,
            stream_requests_per_second: 1.0,
            stream_burst: 5,
        }
    }
}

impl From<StreamError> for Status {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::TooManyNames { .. } | StreamError::TooManyInitialVersions { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

impl XdsServer {
    /// Applies what a stream's machine reports: folds it into the stream's record (under the
    /// record's lock, the fold alone), then counts and logs it. Client-supplied strings are
    /// logged through [`Safe`]; client-caused lines are limited per stream by `budget`.
    fn observe(
        &self,
        events: Vec<StreamEvent>,
        reg: &Registration,
        api: &'static str,
        push: &mut PendingPush,
        budget: &mut LogBudget,
    ) {
        let at = SystemTime::now();
        // The NACKs as the record keeps them (with the node's names), and the node's group.
        let (nacks, group) = reg.update(|status| {
            let mut nacks = Vec::new();
            for e in &events {
                status.apply(e, at);
                if let StreamEvent::Nacked { ty, .. } = e {
                    nacks.extend(status.types.get(ty.short()).and_then(|t| t.last_nack.clone()));
                }
            }
            let group = (!nacks.is_empty()).then(|| status.group.clone()).flatten();
            (nacks, group)
        });
        let mut nacks = nacks.into_iter();
        for e in events {
            match e {
                StreamEvent::Node { .. }
                | StreamEvent::Group { .. }
                | StreamEvent::Subscribed { .. }
                | StreamEvent::Held { .. } => {}
                StreamEvent::Sent {
                    ty,
                    version,
                    resources,
                    removed,
                    ..
                } => {
                    self.metrics.response_sent(ty, api);
                    if let Some(observed) = push.take(ty) {
                        self.metrics.pushed(ty, observed.elapsed());
                    }
                    debug!(target: "xds_engine::push", r#type = ty.short(), api, %version, resources, removed, "response sent");
                }
                StreamEvent::Acked { ty, version, after } => {
                    self.metrics.acked(ty, after);
                    debug!(r#type = ty.short(), %version, ms = after.as_millis() as u64, "ack");
                }
                StreamEvent::Nacked { ty, .. } => {
                    self.metrics.nacked(ty);
                    let Some(n) = nacks.next() else {
                        continue;
                    };
                    let verdict = budget.take(Noise::Nack, &self.metrics);
                    if verdict != Verdict::Suppressed {
                        // Envoy or a proxyless gRPC client: the group says which.
                        let group = group.as_deref().unwrap_or_default();
                        warn!(node = %Safe(&n.node_id), cluster = %Safe(&n.node_cluster), group = %Safe(group), r#type = ty.short(), version = %n.version, error = %Safe(&n.error), "NACK: client rejected the configuration; it will not be re-sent until it changes");
                    }
                    if verdict == Verdict::LogLast {
                        warn!(node = %Safe(&n.node_id), "further NACKs on this stream are not logged (see voltha_xds_nacks_total and the status page)");
                    }
                    self.clients.record_nack(n);
                }
                StreamEvent::Stale { ty } => {
                    self.metrics.stale_request(ty);
                    debug!(r#type = ty.short(), "stale nonce, request ignored");
                }
                StreamEvent::UnknownType { type_url } => {
                    self.metrics.unknown_type();
                    let verdict = budget.take(Noise::UnknownType, &self.metrics);
                    if verdict != Verdict::Suppressed {
                        info!(type_url = %Safe(&type_url), "request for a type this server does not serve; answered empty");
                    }
                    if verdict == Verdict::LogLast {
                        info!("further requests for unknown types on this stream are not logged (see voltha_xds_unknown_type_requests_total)");
                    }
                }
            }
        }
    }

    /// A slot of `server.max_streams`, or RESOURCE_EXHAUSTED (counted and logged).
    pub(super) fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.stream_slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.stream_refused();
            warn!("xDS stream refused: server.max_streams streams are open");
            Status::resource_exhausted("this server has reached its limit of open xDS streams (server.max_streams)")
        })
    }

    pub(super) fn sotw(
        &self,
        scope: Scope,
        inbound: Requests<DiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Outbound>, Status> {
        let slot = self.stream_slot()?;
        let reg = self.clients.register("sotw", scope.name());
        let sm = SotwStream::new(scope, self.limits, self.name_sets.clone());
        Ok(self.spawn_stream(reg, slot, scope, sm, inbound))
    }

    pub(super) fn delta(
        &self,
        scope: Scope,
        inbound: Requests<DeltaDiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Outbound>, Status> {
        let slot = self.stream_slot()?;
        let reg = self.clients.register("delta", scope.name());
        let sm = DeltaStream::new(scope, self.limits, self.name_sets.clone());
        Ok(self.spawn_stream(reg, slot, scope, sm, inbound))
    }

    /// Runs one stream in its own task: request arrived / snapshot changed / shutdown, then send
    /// whatever the state machine wants sent.
    fn spawn_stream<M: Machine>(
        &self,
        reg: Registration,
        slot: OwnedSemaphorePermit,
        scope: Scope,
        mut sm: M,
        mut inbound: Requests<M::Request>,
    ) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let _reg = reg;
            let _slot = slot;
            let _gauge = this.metrics.stream_opened(M::API, scope.name());
            let mut snaps = this.cache.subscribe();
            let mut push = PendingPush::default();
            let mut budget = LogBudget::default();
            let mut current = snaps.borrow_and_update().clone();
            sm.on_snapshot(current.clone());
            // Made once, not on every turn of the loop (each registers a waiter).
            let shutdown = this.shutdown.clone().cancelled_owned();
            let closed = tx.closed();
            tokio::pin!(shutdown, closed);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = &mut closed => break,
                    msg = inbound.raw_message() => match msg.and_then(|raw| {
                        raw.map(|raw| sm.decode(&raw).map_err(grpc::undecodable)).transpose()
                    }) {
                        Ok(Some(req)) => {
                            if let Err(e) = sm.on_request(req, Instant::now()) {
                                this.metrics.bad_request();
                                warn!(stream = _reg.id, error = %Safe(&e), "ending stream on a bad request");
                                let _ = tx.send(Err(Box::new(e.into()))).await;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) if matches!(status.code(), Code::Cancelled | Code::Unknown | Code::Unavailable) => {
                            debug!(stream = _reg.id, status = %Safe(&status), "stream ended by the client");
                            break;
                        }
                        Err(status) => {
                            // A request we could not decode (too large, malformed protobuf).
                            this.metrics.bad_request();
                            warn!(stream = _reg.id, status = %Safe(&status), "ending stream on an undecodable request");
                            let _ = tx.send(Err(Box::new(status))).await;
                            break;
                        }
                    },
                    changed = snaps.changed() => {
                        if changed.is_err() { break; }
                        let next = snaps.borrow_and_update().clone();
                        _reg.read(|st| push.on_snapshot(current.as_deref(), next.as_deref(), &st.node_cluster, &st.user_agent_name));
                        current = next;
                        sm.on_snapshot(current.clone());
                    }
                }
                let out = sm.poll(Instant::now());
                let events = sm.take_events();
                if !events.is_empty() {
                    this.observe(events, &_reg, M::API, &mut push, &mut budget);
                }
                for mut r in out {
                    if let Some(cp) = &this.control_plane {
                        r.set_control_plane(cp);
                    }
                    let framed = Framed::new(r)
                        .map(Box::new)
                        .ok_or_else(|| Box::new(Status::resource_exhausted("response larger than gRPC can frame")));
                    let failed = framed.is_err();
                    // A client that does not read must not hold up shutdown.
                    let sent = tokio::select! {
                        _ = &mut shutdown => return,
                        sent = tx.send(framed) => sent.is_ok(),
                    };
                    if !sent || failed {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// A unary fetch: the current resources of one type for the request's subscription.
    pub(super) fn fetch(&self, ty: ResourceType, req: DiscoveryRequest) -> Result<DiscoveryResponse, Status> {
        let mut sm = SotwStream::new(Scope::Single(ty), self.limits, self.name_sets.clone());
        sm.on_snapshot(self.cache.current());
        let mut req = req;
        // A fetch always answers with the current content.
        req.version_info.clear();
        req.response_nonce.clear();
        let now = Instant::now();
        sm.on_request(req, now)?;
        match sm.poll(now).pop() {
            Some(mut r) => {
                r.control_plane.clone_from(&self.control_plane);
                Ok(r)
            }
            None => Err(Status::unavailable("no snapshot has been built yet")),
        }
    }
}

/// Per type, when the input change behind the newest snapshot was observed, until the stream
/// sends its first response of that type: the push latency.
#[derive(Default)]
pub(super) struct PendingPush(TypeMap<Option<Instant>>);

impl PendingPush {
    /// Marks the types whose content for this node's group differs between the snapshots.
    fn on_snapshot(&mut self, prev: Option<&Snapshot>, next: Option<&Snapshot>, node_cluster: &str, agent: &str) {
        let Some(next) = next else { return };
        let Some(group) = next.group_for_client(node_cluster, agent) else {
            return;
        };
        let before = prev.and_then(|p| p.group_for_client(node_cluster, agent));
        for ty in ResourceType::ALL {
            let same = before.is_some_and(|b| Arc::ptr_eq(b.get(ty), group.get(ty)));
            if !same {
                self.0[ty] = Some(next.observed_at);
            }
        }
    }

    fn take(&mut self, ty: ResourceType) -> Option<Instant> {
        self.0[ty].take()
    }
}

/// What the stream loop needs of a state machine (SotW or Delta).
trait Machine: Send + 'static {
    /// The message on the wire.
    type Request: prost::Message + Default + Send + 'static;
    /// A request as `decode` reads it.
    type Decoded: Send + 'static;
    type Response: WireMessage;
    const API: &'static str;
    /// Decodes a request, with whatever the stream already holds at hand.
    fn decode(&mut self, raw: &[u8]) -> Result<Self::Decoded, prost::DecodeError>;
    fn on_request(&mut self, req: Self::Decoded, now: Instant) -> Result<(), StreamError>;
    fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>);
    fn poll(&mut self, now: Instant) -> Vec<Self::Response>;
    fn take_events(&mut self) -> Vec<StreamEvent>;
}

macro_rules! machine {
    ($sm:ty, $req:ty, $decoded:ty, $resp:ty, $api:expr) => {
        impl Machine for $sm {
            type Request = $req;
            type Decoded = $decoded;
            type Response = $resp;
            const API: &'static str = $api;
            fn decode(&mut self, raw: &[u8]) -> Result<$decoded, prost::DecodeError> {
                <$sm>::decode(self, raw)
            }
            fn on_request(&mut self, req: $decoded, now: Instant) -> Result<(), StreamError> {
                <$sm>::on_request(self, req, now)
            }
            fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
                <$sm>::on_snapshot(self, snapshot)
            }
            fn poll(&mut self, now: Instant) -> Vec<$resp> {
                <$sm>::poll(self, now)
            }
            fn take_events(&mut self) -> Vec<StreamEvent> {
                <$sm>::take_events(self)
            }
        }
    };
}

machine!(SotwStream, DiscoveryRequest, SotwRequest, DiscoveryResponse, "sotw");
machine!(
    DeltaStream,
    DeltaDiscoveryRequest,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    "delta"
);

#[cfg(test)]
mod tests {
    use std::io::Write;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use parking_lot::Mutex;

    use super::*;
    use crate::logsafe::LOGGED_PER_STREAM;

    const FORGED: &str = "type.googleapis.com/x\n2099-01-01T00:00:00Z ERROR voltha_xds::reconcile: FORGED";

    /// The log lines written while a test runs.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Runs `f` with the human log format writing to a buffer; returns the log.
    fn logged(f: impl FnOnce()) -> String {
        let out = Captured::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let bytes = out.0.lock().clone();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    fn server() -> XdsServer {
        XdsServer::new(Cache::new()).with_max_streams(10)
    }

    /// `n` requests for `type_url` on one ADS stream, fed and observed as the stream task does.
    fn unknown_type_requests(srv: &XdsServer, type_url: &str, n: usize) -> String {
        logged(|| {
            let reg = srv.clients.register("sotw", "ads");
            let mut sm = SotwStream::new(Scope::Ads, srv.limits, srv.name_sets.clone());
            sm.on_snapshot(srv.cache.current());
            let (mut push, mut budget) = (PendingPush::default(), LogBudget::default());
            for _ in 0..n {
                let req = DiscoveryRequest {
                    node: Some(Node {
                        id: "envoy-1".into(),
                        ..Default::default()
                    }),
                    type_url: type_url.into(),
                    ..Default::default()
                };
                sm.on_request(req, Instant::now())
                    .expect("an unknown type is answered, not an error");
                assert_eq!(sm.poll(Instant::now()).len(), 1, "answered empty");
                srv.observe(sm.take_events(), &reg, "sotw", &mut push, &mut budget);
            }
        })
    }

    fn metric(srv: &XdsServer, sample: &str) -> Option<u64> {
        srv.metrics
            .render("voltha_xds")
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_type_url_with_a_newline_makes_one_escaped_line() {
        let log = unknown_type_requests(&server(), FORGED, 1);
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(r#"type_url="type.googleapis.com/x\n2099-01-01T00:00:00Z ERROR"#),
            "{log}"
        );
        assert!(!log.lines().any(|l| l.starts_with("2099")), "{log}");
    }

    #[test]
    fn a_64_kib_type_url_is_cut_in_the_log() {
        let url = format!("type.googleapis.com/{}", "x".repeat(64 * 1024));
        let log = unknown_type_requests(&server(), &url, 1);
        assert_eq!(log.lines().count(), 1);
        assert!(log.len() < 1024, "a line of {} bytes", log.len());
        assert!(log.contains(&format!("… ({} bytes in all)", url.len())), "{log}");
    }

    #[test]
    fn unknown_type_requests_on_one_stream_log_a_bounded_number_of_lines_and_count_all() {
        let srv = server();
        let log = unknown_type_requests(&srv, "type.googleapis.com/unknown", 20_000);
        assert_eq!(
            log.lines().count(),
            LOGGED_PER_STREAM as usize + 1,
            "the first ones and a note that the rest are only counted"
        );
        assert_eq!(metric(&srv, "voltha_xds_unknown_type_requests_total"), Some(20_000));
        assert_eq!(
            metric(&srv, "voltha_xds_stream_logs_suppressed_total{reason=\"unknown_type\"}"),
            Some(20_000 - u64::from(LOGGED_PER_STREAM))
        );
        // Another stream has its own budget.
        let log = unknown_type_requests(&srv, "type.googleapis.com/unknown", 1);
        assert_eq!(log.lines().count(), 1);
    }

    #[test]
    fn a_nack_log_line_names_the_group_of_the_client_that_sent_it() {
        let srv = server();
        let reg = srv.clients.register("sotw", "ads");
        let events = vec![
            StreamEvent::Node {
                id: "grpc-1".into(),
                cluster: "voltha".into(),
                user_agent_name: "gRPC Python".into(),
            },
            StreamEvent::Group {
                name: "voltha/grpc".into(),
            },
            StreamEvent::Nacked {
                ty: ResourceType::Endpoint,
                version: "v1".into(),
                nonce: "1".into(),
                error: "duplicate endpoint address".into(),
            },
        ];
        let log = logged(|| {
            let (mut push, mut budget) = (PendingPush::default(), LogBudget::default());
            srv.observe(events, &reg, "sotw", &mut push, &mut budget);
        });
        assert!(log.contains("NACK: client rejected the configuration"), "{log}");
        assert!(log.contains(r#"group="voltha/grpc""#), "{log}");
        // Folded into the stream's record, as readers of the table see it, and kept as recent.
        let seen = srv.clients.snapshot();
        let eds = &seen[0].types["eds"];
        assert_eq!((eds.nacks, seen[0].group.as_deref()), (1, Some("voltha/grpc")));
        let recent = srv.clients.recent_nacks();
        assert_eq!(
            (recent.len(), recent[0].node_id.as_str(), recent[0].error.as_str()),
            (1, "grpc-1", "duplicate endpoint address")
        );
        drop(reg);
        assert!(srv.clients.is_empty());
    }

    #[test]
    fn nack_fields_from_the_client_are_escaped_and_nacks_are_budgeted() {
        let srv = server();
        let node = StreamEvent::Node {
            id: "envoy\n2099-01-01T00:00:00Z ERROR x: FORGED".into(),
            cluster: "c\r\u{1b}[2J".into(),
            user_agent_name: "envoy".into(),
        };
        let nack = StreamEvent::Nacked {
            ty: ResourceType::Cluster,
            version: "v1".into(),
            nonce: "1".into(),
            error: format!("bad\n{}", "e".repeat(10_000)),
        };
        let reg = srv.clients.register("sotw", "ads");
        let log = logged(|| {
            let (mut push, mut budget) = (PendingPush::default(), LogBudget::default());
            srv.observe(vec![node], &reg, "sotw", &mut push, &mut budget);
            for _ in 0..100 {
                srv.observe(vec![nack.clone()], &reg, "sotw", &mut push, &mut budget);
            }
        });
        assert_eq!(log.lines().count(), LOGGED_PER_STREAM as usize + 1, "{log}");
        assert!(log.lines().all(|l| l.len() < 2048), "lines are capped");
        assert!(log.contains(r#"node="envoy\n2099"#), "{log}");
        assert!(log.contains(r#"cluster="c\r\u{1b}[2J""#), "{log}");
        assert!(
            log.lines()
                .take(LOGGED_PER_STREAM as usize)
                .all(|l| l.contains("NACK: client rejected the configuration") && !l.contains("Envoy")),
            "{log}"
        );
        assert!(!log.contains('\r') && !log.contains('\u{1b}'));
        assert_eq!(metric(&srv, "voltha_xds_nacks_total{type=\"cds\"}"), Some(100));
        assert_eq!(
            metric(&srv, "voltha_xds_stream_logs_suppressed_total{reason=\"nack\"}"),
            Some(100 - u64::from(LOGGED_PER_STREAM))
        );
    }
}
