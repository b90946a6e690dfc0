//! A SotW ADS client for the tests: one stream, requests in through `tx`, responses out of
//! `rx`, every wait bounded.

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long a response may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A SotW ADS stream that stays open while this is held.
pub struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    /// Opens a stream; `first`, when given, is queued before the call, so it is the first
    /// request the server reads. The status if the server refused the stream.
    pub async fn try_open(ch: Channel, first: Option<DiscoveryRequest>) -> Result<Sotw, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        if let Some(r) = first {
            tx.send(r).await.expect("queue");
        }
        let rx = AggregatedDiscoveryServiceClient::new(ch)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Sotw { tx, rx })
    }

    /// Opens a stream the server must accept.
    pub async fn open(ch: Channel) -> Sotw {
        Sotw::try_open(ch, None).await.expect("stream")
    }

    pub async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.expect("send");
    }

    /// The next response, within [`WAIT`]; the stream must stay open.
    pub async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("stream open")
    }

    /// The next response, or the status the stream ended with (`OK` when it ended cleanly);
    /// panics when neither comes within [`WAIT`].
    pub async fn try_next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::ok("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    /// Panics if a response comes within `d`.
    pub async fn nothing_for(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}
