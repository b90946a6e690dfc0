//! The Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`)
//! on the xDS port: each connected Envoy's per-resource status, as this server sees it.
//!
//! Nothing is kept per resource while streams run: a stream keeps, per type, its versions sent
//! and ACKed, its last NACK and a shared pointer to its subscribed names (see
//! [`TypeStatus`](super::status::TypeStatus)). A CSDS request computes the per-resource view
//! from those and the current snapshot of the Envoy's node group:
//!
//! | condition (per type, then per resource) | `client_status` | `config_status` |
//! |---|---|---|
//! | the last response of the type was NACKed | `NACKED` (with `error_state`) | `ERROR` |
//! | the name is not in the snapshot | `DOES_NOT_EXIST` | as the type's state below |
//! | the ACKed version is the current one | `ACKED` | `SYNCED` |
//! | a response is sent and not yet answered | `REQUESTED` | `STALE` |
//! | an older version is ACKed, the current one not sent yet | `ACKED` | `NOT_SENT` |
//! | nothing sent yet | `REQUESTED` | `NOT_SENT` |
//!
//! The resources of a type are the subscribed names, plus every resource of the snapshot for a
//! wildcard subscription. `version_info` is the type version the Envoy last ACKed; `xds_config`
//! is the resource as the current snapshot holds it (left out with `exclude_resource_contents`),
//! written into the response as the snapshot's shared encoded bytes ([`encode`]).
//!
//! An Envoy is reported once per node (`node.id` and `node.cluster`), its streams merged: for a
//! type served on several of its streams (a reconnect racing the old stream), the newest wins.
//!
//! `node_matchers` (any one matching selects the node; none selects every node) support the
//! `node_id` string matcher ([`filter`]). Anything else is refused with `INVALID_ARGUMENT`, as is
//! a request that does not decode.
//!
//! Bounds (`server.csds`): every CSDS call (a fetch or a stream) holds one of the xDS port's
//! `server.max_streams` slots while it lasts; at most `max_concurrent_requests` answers are
//! built or sent at once (a fetch beyond them is refused with `RESOURCE_EXHAUSTED`, a stream's
//! request waits for a slot); an answer larger than `max_response_bytes` is refused with
//! `RESOURCE_EXHAUSTED`; and a stream's requests are read at most at
//! `stream_requests_per_second` (after `stream_burst` at once): beyond that the stream waits,
//! and HTTP/2 flow control holds the client back.

mod encode;
mod filter;
mod limit;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tracing::{debug, warn};

pub use encode::{merge_nodes, MergedNode};

use self::encode::{encode, Chunks, TooLarge};
use self::filter::NodeFilter;
use self::limit::{LogGate, TokenBucket};
pub use super::server::CsdsLimits;

use super::grpc::{Chunked, Requests, ResponseBody};
use super::listen::ConnInfo;
use super::logsafe::Safe;
use super::server::XdsServer;
use crate::metrics::StreamGauge;

/// The gRPC service name.
const NAME: &str = "envoy.service.status.v3.ClientStatusDiscoveryService";

/// How often a refused CSDS request is logged as a warning (the others are logged at debug).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The CSDS service: reads the stream table and the cache, drives nothing. Clones share the
/// slots of `max_concurrent_requests`.
#[derive(Clone)]
pub struct Csds {
    server: XdsServer,
    busy: Arc<Semaphore>,
    warnings: Arc<LogGate>,
}

/// The client's address, for logs.
type Remote = Option<SocketAddr>;

/// One of the `max_concurrent_requests` slots, counted in the in-flight gauge while held.
struct Busy {
    _permit: OwnedSemaphorePermit,
    _gauge: StreamGauge,
}

/// One of the `server.max_streams` slots, counted as a CSDS stream while held.
struct Hold {
    _slot: OwnedSemaphorePermit,
    _gauge: StreamGauge,
}

/// One answer on its way out: its chunks and the slot it holds until the last one is sent.
struct Answer {
    chunks: Chunks,
    _busy: Busy,
    /// Dropped with the answer: tells the stream its previous answer is out.
    _sent: Option<oneshot::Sender<()>>,
}

impl Chunked for Answer {
    fn next_chunk(&mut self) -> Option<Bytes> {
        self.chunks.next_chunk()
    }
}

/// The response body: each answer's chunks as HTTP/2 asks for them, then trailers with the
/// final status. An answer (and its slot) is released when its last chunk is taken, or when the
/// body is dropped (the client went away). A fetch's body holds its `server.max_streams` slot.
type CsdsBody = ResponseBody<Answer, Option<Hold>>;

impl Csds {
    /// The CSDS service of `server`'s streams and cache.
    pub fn new(server: XdsServer) -> Self {
        let n = server.csds.max_concurrent_requests.clamp(1, Semaphore::MAX_PERMITS);
        Csds {
            server,
            busy: Arc::new(Semaphore::new(n)),
            warnings: Arc::new(LogGate::new(WARN_EVERY)),
        }
    }

    /// Counts and logs a refused request; returns its status.
    fn refuse(&self, status: Status, result: &'static str, remote: Remote) -> Status {
        self.server.metrics.csds_request(result);
        let message = Safe(status.message());
        if self.warnings.open() {
            warn!(?remote, code = ?status.code(), error = %message, "CSDS request refused");
        } else {
            debug!(?remote, code = ?status.code(), error = %message, "CSDS request refused");
        }
        status
    }

    /// A `server.max_streams` slot for one CSDS call.
    fn hold(&self) -> Result<Hold, Status> {
        match self.server.stream_slot() {
            Ok(slot) => Ok(Hold {
                _slot: slot,
                _gauge: self.server.metrics.stream_opened("csds", "csds"),
            }),
            Err(status) => {
                self.server.metrics.csds_request("max_streams");
                Err(status)
            }
        }
    }

    fn busy(&self, permit: OwnedSemaphorePermit) -> Busy {
        Busy {
            _permit: permit,
            _gauge: self.server.metrics.csds_response_started(),
        }
    }

    /// The answer to one request, computed now.
    fn answer(
        &self,
        req: &ClientStatusRequest,
        busy: Busy,
        sent: Option<oneshot::Sender<()>>,
        remote: Remote,
    ) -> Result<Answer, Status> {
        let filter = NodeFilter::new(&req.node_matchers).map_err(|s| self.refuse(s, "invalid", remote))?;
        let snapshot = self.server.cache.current();
        let streams = self.server.clients.snapshot();
        let contents = !req.exclude_resource_contents;
        let limit = self.server.csds.max_response_bytes;
        match encode(&streams, snapshot.as_deref(), &filter, contents, limit) {
            Ok(encoded) => {
                self.server.metrics.csds_request("ok");
                debug!(?remote, bytes = encoded.len(), "CSDS answer");
                Ok(Answer {
                    chunks: encoded.into_chunks(),
                    _busy: busy,
                    _sent: sent,
                })
            }
            Err(TooLarge { nodes }) => {
                let narrow = if contents {
                    "narrow the request with node_matchers (for example a node_id prefix) or set exclude_resource_contents"
                } else {
                    "narrow the request with node_matchers (for example a node_id prefix)"
                };
                let status = Status::resource_exhausted(format!(
                    "the CSDS response for {nodes} Envoys would be larger than {limit} bytes (server.csds.max_response_bytes); {narrow}"
                ));
                Err(self.refuse(status, "too_large", remote))
            }
        }
    }

    /// `FetchClientStatus`: one request, one answer, or `RESOURCE_EXHAUSTED` when
    /// `max_concurrent_requests` answers are in flight.
    async fn fetch(&self, mut inbound: Requests<ClientStatusRequest>, remote: Remote) -> http::Response<Body> {
        let hold = match self.hold() {
            Ok(h) => h,
            Err(status) => return status.into_http(),
        };
        let req = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                let status = Status::invalid_argument("a fetch needs one request message");
                return self.refuse(status, "invalid", remote).into_http();
            }
            Err(status) => return self.refuse(status, "invalid", remote).into_http(),
        };
        let Ok(permit) = self.busy.clone().try_acquire_owned() else {
            let n = self.server.csds.max_concurrent_requests;
            let status = Status::resource_exhausted(format!(
                "CSDS is answering {n} requests already, its limit (server.csds.max_concurrent_requests); retry shortly, or narrow requests (node_matchers, exclude_resource_contents) so that each is answered sooner"
            ));
            return self.refuse(status, "busy", remote).into_http();
        };
        match self.answer(&req, self.busy(permit), None, remote) {
            Ok(answer) => {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Ok(answer));
                CsdsBody::new(rx, Some(hold)).into_response()
            }
            Err(status) => status.into_http(),
        }
    }

    /// `StreamClientStatus`: answers each request in turn, one answer out at a time.
    fn stream(&self, inbound: Requests<ClientStatusRequest>, remote: Remote) -> http::Response<Body> {
        let hold = match self.hold() {
            Ok(h) => h,
            Err(status) => return status.into_http(),
        };
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(self.clone().run_stream(inbound, tx, hold, remote));
        CsdsBody::new(rx, None).into_response()
    }

    async fn run_stream(
        self,
        mut inbound: Requests<ClientStatusRequest>,
        tx: mpsc::Sender<Result<Answer, Box<Status>>>,
        _hold: Hold,
        remote: Remote,
    ) {
        let limits = self.server.csds;
        let mut bucket = TokenBucket::new(
            limits.stream_requests_per_second,
            limits.stream_burst,
            tokio::time::Instant::now(),
        );
        let shutdown = self.server.shutdown.clone().cancelled_owned();
        let closed = tx.closed();
        tokio::pin!(shutdown, closed);
        let mut previous: Option<oneshot::Receiver<()>> = None;
        loop {
            // The previous answer goes out before the next request is read: a stream holds at
            // most one answer, and a client that does not read is not asked for more.
            if let Some(sent) = previous.take() {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = &mut closed => return,
                    _ = sent => {}
                }
            }
            let msg = tokio::select! {
                _ = &mut shutdown => return,
                _ = &mut closed => return,
                msg = inbound.message() => msg,
            };
            let req = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(status) if matches!(status.code(), Code::Cancelled | Code::Unknown | Code::Unavailable) => {
                    debug!(?remote, %status, "CSDS stream ended by the client");
                    return;
                }
                Err(status) => {
                    let _ = tx.send(Err(Box::new(self.refuse(status, "invalid", remote)))).await;
                    return;
                }
            };
            let wait = bucket.take(tokio::time::Instant::now());
            if !wait.is_zero() {
                self.server.metrics.csds_rate_limited();
                debug!(
                    ?remote,
                    wait_ms = wait.as_millis() as u64,
                    "CSDS stream request held back by its rate limit"
                );
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = &mut closed => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let permit = tokio::select! {
                _ = &mut shutdown => return,
                _ = &mut closed => return,
                p = self.busy.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (sent_tx, sent_rx) = oneshot::channel();
            let out = self
                .answer(&req, self.busy(permit), Some(sent_tx), remote)
                .map_err(Box::new);
            let failed = out.is_err();
            tokio::select! {
                _ = &mut shutdown => return,
                r = tx.send(out) => if r.is_err() { return },
            }
            if failed {
                return;
            }
            previous = Some(sent_rx);
        }
    }
}

impl NamedService for Csds {
    const NAME: &'static str = NAME;
}

impl Service<http::Request<Body>> for Csds {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let remote = req.extensions().get::<ConnInfo>().and_then(|c| c.remote);
            let inbound = Requests::with_limit(req.into_body(), this.server.max_request_bytes);
            Ok(match method.as_str() {
                "FetchClientStatus" => this.fetch(inbound, remote).await,
                "StreamClientStatus" => this.stream(inbound, remote),
                _ => Status::unimplemented(format!("{NAME}/{} is not served", Safe(&method))).into_http(),
            })
        })
    }
}
