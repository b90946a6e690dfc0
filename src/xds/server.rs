//! The gRPC services: ADS (SotW and Delta) and the per-type CDS, EDS, LDS and RDS services,
//! all on one port.
//!
//! Each stream runs in its own task: it selects over "request arrived", "snapshot changed" and
//! "shutdown", feeds its state machine, and sends what the machine says. No lock is shared
//! on the send path; the snapshot is read through a `watch` channel and shared by `Arc`.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::cache::Cache;
use super::cache::Snapshot;
use super::grpc::{self, Framed, GrpcService, Outbound, Requests, WireMessage};
use super::resources::ResourceType;
use super::status::{ClientTable, Registration};
use super::stream::{DeltaStream, Limits, Scope, SotwStream, StreamError, StreamEvent};
use super::wire::{DeltaDiscoveryResponse, DiscoveryResponse};
use crate::metrics::Metrics;

/// Responses buffered per stream before the stream task waits for the client to read.
const SEND_BUFFER: usize = 4;

/// Everything a stream needs; cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    pub cache: Cache,
    pub clients: Arc<ClientTable>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    /// One permit per open stream (`server.max_streams`).
    pub stream_slots: Arc<Semaphore>,
    /// The largest request message accepted (`server.max_request_bytes`).
    pub max_request_bytes: usize,
    /// CSDS's bounds (`server.csds`).
    pub csds: super::csds::CsdsLimits,
}

impl From<StreamError> for Status {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::TooManyNames { .. } => Status::resource_exhausted(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

impl XdsServer {
    /// Adds every xDS service to a tonic router.
    pub fn into_router(self, builder: tonic::transport::Server) -> tonic::transport::server::Router {
        let mut builder = builder;
        builder
            .add_service(GrpcService::<grpc::Ads>::new(self.clone()))
            .add_service(GrpcService::<grpc::Cds>::new(self.clone()))
            .add_service(GrpcService::<grpc::Eds>::new(self.clone()))
            .add_service(GrpcService::<grpc::Lds>::new(self.clone()))
            .add_service(super::csds::Csds::new(self.clone()))
            .add_service(GrpcService::<grpc::Rds>::new(self))
    }

    fn observe(&self, events: Vec<StreamEvent>, api: &'static str, push: &mut PendingPush) {
        for e in events {
            match e {
                StreamEvent::Sent {
                    ty,
                    version,
                    resources,
                    removed,
                } => {
                    self.metrics.response_sent(ty, api);
                    if let Some(observed) = push.take(ty) {
                        self.metrics.pushed(ty, observed.elapsed());
                    }
                    debug!(target: "voltha_xds::push", r#type = ty.short(), api, %version, resources, removed, "response sent");
                }
                StreamEvent::Acked { ty, version, after } => {
                    self.metrics.acked(ty, after);
                    debug!(r#type = ty.short(), %version, ms = after.as_millis() as u64, "ack");
                }
                StreamEvent::Nacked(n) => {
                    let ty = ResourceType::ALL.into_iter().find(|t| t.short() == n.ty);
                    if let Some(ty) = ty {
                        self.metrics.nacked(ty);
                    }
                    warn!(node = %n.node_id, cluster = %n.node_cluster, r#type = n.ty, version = %n.version, error = %n.error, "NACK: Envoy rejected the configuration; it will not be re-sent until it changes");
                    self.clients.record_nack(*n);
                }
                StreamEvent::Stale { ty } => {
                    self.metrics.stale_request(ty);
                    debug!(r#type = ty.short(), "stale nonce, request ignored");
                }
                StreamEvent::UnknownType { type_url } => {
                    self.metrics.unknown_type();
                    info!(%type_url, "request for a type this server does not serve; answered empty");
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
        let sm = SotwStream::new(scope, self.limits, reg.status.clone());
        Ok(self.spawn_stream(reg, slot, scope, sm, inbound))
    }

    pub(super) fn delta(
        &self,
        scope: Scope,
        inbound: Requests<DeltaDiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Outbound>, Status> {
        let slot = self.stream_slot()?;
        let reg = self.clients.register("delta", scope.name());
        let sm = DeltaStream::new(scope, self.limits, reg.status.clone());
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
                            if let Err(e) = sm.on_request(req) {
                                this.metrics.bad_request();
                                warn!(stream = _reg.id, error = %e, "ending stream on a bad request");
                                let _ = tx.send(Err(Box::new(e.into()))).await;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(status) if matches!(status.code(), Code::Cancelled | Code::Unknown | Code::Unavailable) => {
                            debug!(stream = _reg.id, %status, "stream ended by the client");
                            break;
                        }
                        Err(status) => {
                            // A request we could not decode (too large, malformed protobuf).
                            this.metrics.bad_request();
                            warn!(stream = _reg.id, %status, "ending stream on an undecodable request");
                            let _ = tx.send(Err(Box::new(status))).await;
                            break;
                        }
                    },
                    changed = snaps.changed() => {
                        if changed.is_err() { break; }
                        let next = snaps.borrow_and_update().clone();
                        push.on_snapshot(current.as_deref(), next.as_deref(), &_reg.status.lock().node_cluster);
                        current = next;
                        sm.on_snapshot(current.clone());
                    }
                }
                let out = sm.poll();
                this.observe(sm.take_events(), M::API, &mut push);
                for r in out {
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
        let table = Arc::new(ClientTable::default());
        let reg = table.register("sotw", "fetch");
        let mut sm = SotwStream::new(Scope::Single(ty), self.limits, reg.status.clone());
        sm.on_snapshot(self.cache.current());
        let mut req = req;
        // A fetch always answers with the current content.
        req.version_info.clear();
        req.response_nonce.clear();
        sm.on_request(req)?;
        match sm.poll().pop() {
            Some(r) => Ok(r),
            None => Err(Status::unavailable("no snapshot has been built yet")),
        }
    }
}

/// Per type, when the input change behind the newest snapshot was observed, until the stream
/// sends its first response of that type: the push latency.
#[derive(Default)]
pub(super) struct PendingPush([Option<Instant>; 4]);

impl PendingPush {
    /// Marks the types whose content for this node's group differs between the snapshots.
    fn on_snapshot(&mut self, prev: Option<&Snapshot>, next: Option<&Snapshot>, node_cluster: &str) {
        let Some(next) = next else { return };
        let Some(group) = next.group_for(node_cluster) else {
            return;
        };
        let before = prev.and_then(|p| p.group_for(node_cluster));
        for ty in ResourceType::ALL {
            let same = before.is_some_and(|b| Arc::ptr_eq(b.get(ty), group.get(ty)));
            if !same {
                self.0[ty.index()] = Some(next.observed_at);
            }
        }
    }

    fn take(&mut self, ty: ResourceType) -> Option<Instant> {
        self.0[ty.index()].take()
    }
}

/// What the stream loop needs of a state machine (SotW or Delta).
trait Machine: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: WireMessage;
    const API: &'static str;
    /// Decodes a request, with whatever the stream already holds at hand.
    fn decode(&mut self, raw: &[u8]) -> Result<Self::Request, prost::DecodeError>;
    fn on_request(&mut self, req: Self::Request) -> Result<(), StreamError>;
    fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>);
    fn poll(&mut self) -> Vec<Self::Response>;
    fn take_events(&mut self) -> Vec<StreamEvent>;
}

macro_rules! machine {
    ($sm:ty, $req:ty, $resp:ty, $api:expr) => {
        impl Machine for $sm {
            type Request = $req;
            type Response = $resp;
            const API: &'static str = $api;
            fn decode(&mut self, raw: &[u8]) -> Result<$req, prost::DecodeError> {
                <$sm>::decode(self, raw)
            }
            fn on_request(&mut self, req: $req) -> Result<(), StreamError> {
                <$sm>::on_request(self, req)
            }
            fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
                <$sm>::on_snapshot(self, snapshot)
            }
            fn poll(&mut self) -> Vec<$resp> {
                <$sm>::poll(self)
            }
            fn take_events(&mut self) -> Vec<StreamEvent> {
                <$sm>::take_events(self)
            }
        }
    };
}

machine!(SotwStream, DiscoveryRequest, DiscoveryResponse, "sotw");
machine!(DeltaStream, DeltaDiscoveryRequest, DeltaDiscoveryResponse, "delta");
