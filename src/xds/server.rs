//! The gRPC services: ADS (SotW and Delta) and the per-type CDS, EDS, LDS and RDS services,
//! all on one port.
//!
//! Each stream runs in its own task: it selects over "request arrived", "snapshot changed" and
//! "shutdown", feeds its state machine, and sends what the machine says. No lock is shared
//! on the send path; the snapshot is read through a `watch` channel and shared by `Arc`.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::sync::mpsc;
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
            .add_service(
                super::csds::Csds::new(self.clients.clone(), self.cache.clone(), self.shutdown.clone()).into_service(),
            )
            .add_service(GrpcService::<grpc::Rds>::new(self))
    }

    fn observe(&self, events: Vec<StreamEvent>, api: &'static str) {
        for e in events {
            match e {
                StreamEvent::Sent {
                    ty,
                    version,
                    resources,
                    removed,
                } => {
                    self.metrics.response_sent(ty, api);
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

    pub(super) fn sotw(&self, scope: Scope, inbound: Requests<DiscoveryRequest>) -> mpsc::Receiver<Outbound> {
        let reg = self.clients.register("sotw", scope.name());
        let sm = SotwStream::new(scope, self.limits, reg.status.clone());
        self.spawn_stream(reg, sm, inbound)
    }

    pub(super) fn delta(&self, scope: Scope, inbound: Requests<DeltaDiscoveryRequest>) -> mpsc::Receiver<Outbound> {
        let reg = self.clients.register("delta", scope.name());
        let sm = DeltaStream::new(scope, self.limits, reg.status.clone());
        self.spawn_stream(reg, sm, inbound)
    }

    /// Runs one stream in its own task: request arrived / snapshot changed / shutdown, then send
    /// whatever the state machine wants sent.
    fn spawn_stream<M: Machine>(
        &self,
        reg: Registration,
        mut sm: M,
        mut inbound: Requests<M::Request>,
    ) -> mpsc::Receiver<Outbound> {
        let (tx, rx) = mpsc::channel(SEND_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let _reg = reg;
            let _gauge = this.metrics.stream_opened(M::API);
            let mut snaps = this.cache.subscribe();
            sm.on_snapshot(snaps.borrow_and_update().clone());
            loop {
                tokio::select! {
                    _ = this.shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                    msg = inbound.message() => match msg {
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
                        sm.on_snapshot(snaps.borrow_and_update().clone());
                    }
                }
                let out = sm.poll();
                this.observe(sm.take_events(), M::API);
                for r in out {
                    let framed = Framed::new(r)
                        .ok_or_else(|| Box::new(Status::resource_exhausted("response larger than gRPC can frame")));
                    let failed = framed.is_err();
                    // A client that does not read must not hold up shutdown.
                    let sent = tokio::select! {
                        _ = this.shutdown.cancelled() => return,
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

/// What the stream loop needs of a state machine (SotW or Delta).
trait Machine: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: WireMessage;
    const API: &'static str;
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
