//! The xDS gRPC services on one port: ADS and the per-type CDS, EDS, LDS and RDS services, and
//! CSDS beside them. Routing is by path, as tonic's generated services do; every service is a
//! [`GrpcService`] with its own [`NamedService::NAME`] so the tonic router can hold them side by
//! side. Each method hands its request stream to the [`XdsServer`].

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Status;

use super::csds::Csds;
use super::grpc::{Framed, Outbound, Requests, ResponseBody};
use super::resources::ResourceType;
use super::server::XdsServer;
use super::stream::Scope;

impl XdsServer {
    /// Adds every xDS service, and CSDS, to a tonic router.
    pub fn into_router(self, builder: tonic::transport::Server) -> tonic::transport::server::Router {
        let mut builder = builder;
        builder
            .add_service(GrpcService::<Ads>::new(self.clone()))
            .add_service(GrpcService::<Cds>::new(self.clone()))
            .add_service(GrpcService::<Eds>::new(self.clone()))
            .add_service(GrpcService::<Lds>::new(self.clone()))
            .add_service(Csds::new(self.clone()))
            .add_service(GrpcService::<Rds>::new(self))
    }
}

fn grpc_response(rx: mpsc::Receiver<Outbound>) -> http::Response<Body> {
    ResponseBody::new(rx, ()).into_response()
}

/// One xDS gRPC service: its name and how its methods map onto streams.
pub(crate) trait ServiceDef: Send + Sync + 'static {
    /// The gRPC service name.
    const NAME: &'static str;
    /// The types it serves.
    const SCOPE: Scope;
    /// The State of the World stream method.
    const STREAM: &'static str;
    /// The Delta stream method.
    const DELTA: &'static str;
    /// The unary fetch method and its type (per-type services only).
    const FETCH: Option<(&'static str, ResourceType)>;
}

macro_rules! service_def {
    ($t:ident, $name:expr, $scope:expr, $stream:expr, $delta:expr, $fetch:expr) => {
        /// One xDS gRPC service (see [`ServiceDef`]).
        pub(crate) struct $t;
        impl ServiceDef for $t {
            const NAME: &'static str = $name;
            const SCOPE: Scope = $scope;
            const STREAM: &'static str = $stream;
            const DELTA: &'static str = $delta;
            const FETCH: Option<(&'static str, ResourceType)> = $fetch;
        }
    };
}

service_def!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    Scope::Ads,
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    None
);
service_def!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    Scope::Single(ResourceType::Cluster),
    "StreamClusters",
    "DeltaClusters",
    Some(("FetchClusters", ResourceType::Cluster))
);
service_def!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    Scope::Single(ResourceType::Endpoint),
    "StreamEndpoints",
    "DeltaEndpoints",
    Some(("FetchEndpoints", ResourceType::Endpoint))
);
service_def!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    Scope::Single(ResourceType::Listener),
    "StreamListeners",
    "DeltaListeners",
    Some(("FetchListeners", ResourceType::Listener))
);
service_def!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    Scope::Single(ResourceType::Route),
    "StreamRoutes",
    "DeltaRoutes",
    Some(("FetchRoutes", ResourceType::Route))
);

/// A tower service serving one xDS gRPC service.
pub(crate) struct GrpcService<D> {
    server: XdsServer,
    _def: PhantomData<fn() -> D>,
}

impl<D> GrpcService<D> {
    /// The services of `server`.
    pub(crate) fn new(server: XdsServer) -> Self {
        GrpcService {
            server,
            _def: PhantomData,
        }
    }
}

impl<D> Clone for GrpcService<D> {
    fn clone(&self) -> Self {
        GrpcService::new(self.server.clone())
    }
}

impl<D: ServiceDef> NamedService for GrpcService<D> {
    const NAME: &'static str = D::NAME;
}

impl<D: ServiceDef> Service<http::Request<Body>> for GrpcService<D> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let method = req.uri().path().rsplit('/').next().unwrap_or_default().to_string();
            let body = req.into_body();
            if method == D::STREAM {
                let inbound = Requests::with_limit(body, server.max_request_bytes);
                return Ok(match server.sotw(D::SCOPE, inbound) {
                    Ok(rx) => grpc_response(rx),
                    Err(status) => status.into_http(),
                });
            }
            if method == D::DELTA {
                let inbound = Requests::with_limit(body, server.max_request_bytes);
                return Ok(match server.delta(D::SCOPE, inbound) {
                    Ok(rx) => grpc_response(rx),
                    Err(status) => status.into_http(),
                });
            }
            if let Some((fetch, ty)) = D::FETCH {
                if method == fetch {
                    let (tx, rx) = mpsc::channel(1);
                    let out = match Requests::<DiscoveryRequest>::with_limit(body, server.max_request_bytes)
                        .message()
                        .await
                    {
                        Ok(Some(r)) => server.fetch(ty, r).and_then(|resp| {
                            Framed::new(resp)
                                .map(Box::new)
                                .ok_or_else(|| Status::resource_exhausted("response too large"))
                        }),
                        Ok(None) => Err(Status::invalid_argument("a fetch needs one request message")),
                        Err(s) => Err(s),
                    };
                    let _ = tx.try_send(out.map_err(Box::new));
                    return Ok(grpc_response(rx));
                }
            }
            Ok(Status::unimplemented(format!("{}/{method} is not served", D::NAME)).into_http())
        })
    }
}
