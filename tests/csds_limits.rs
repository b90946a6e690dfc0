//! CSDS's bounds on the xDS port, with envoy-types' stock tonic clients: CSDS calls hold
//! `server.max_streams` slots, at most `server.csds.max_concurrent_requests` answers are in
//! flight, an answer over `server.csds.max_response_bytes` is refused, a `StreamClientStatus`
//! flood is answered at the stream rate, and an undecodable request is `INVALID_ARGUMENT` as on
//! ADS.

#[path = "support/status_clients.rs"]
mod status_clients;
mod support;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::{ClientConfig, ClientStatusRequest};
use prost::Message;
use status_clients::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A server whose group `g` holds cluster `big` with `endpoints` static endpoints (its EDS
/// resource is about 25 bytes per endpoint) and `more` small clusters `m0`.., with `server`
/// keys added.
async fn big_server(server: &str, endpoints: usize, more: usize) -> voltha_xds::Running {
    let eps: Vec<String> = (0..endpoints)
        .map(|i| format!("\"10.{}.{}.{}:1\"", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let small: String = (0..more)
        .map(|i| {
            format!(
                "  - {{ name: m{i}, endpoints: {{ static: [\"127.0.0.1:{}\"] }} }}\n",
                i + 1
            )
        })
        .collect();
    let names: Vec<String> = (0..more).map(|i| format!("m{i}")).collect();
    let yaml = format!(
        r#"
server: {{ {server} }}
default_group: g
clusters:
  - {{ name: c, endpoints: {{ static: ["127.0.0.1:1"] }} }}
  - {{ name: big, endpoints: {{ static: [{}] }} }}
{small}
listeners: [{{ name: l, address: "127.0.0.1:1", routes: [{{ prefix: /big, cluster: big }}, {{ prefix: /, cluster: c }}] }}]
groups: [{{ name: g, listeners: [l], clusters: [{}] }}]
"#,
        eps.join(", "),
        names.join(", ")
    );
    support::start_server(&yaml).await
}

/// An Envoy on group `g` holding every cluster and the endpoints of `big`.
async fn envoy_on_big(ch: tonic::transport::Channel, id: &str) -> Sotw {
    let mut c = Sotw::open(ch, id, "g").await;
    c.sync(CDS, &[]).await;
    c.sync(EDS, &["big"]).await;
    c
}

async fn fetch_at(ch: tonic::transport::Channel, req: ClientStatusRequest) -> Result<Vec<ClientConfig>, tonic::Status> {
    ClientStatusDiscoveryServiceClient::new(ch)
        .fetch_client_status(req)
        .await
        .map(|r| r.into_inner().config)
}

/// A CSDS stream or call holds a `server.max_streams` slot like an xDS stream.
#[tokio::test]
async fn csds_streams_and_fetches_count_against_max_streams() {
    let server = big_server("max_streams: 2", 1, 0).await;
    let ch = support::channel(server.xds_addr).await;
    let _envoy = envoy_on_big(ch.clone(), "envoy-1").await;
    let (tx, rx) = mpsc::channel(4);
    let mut csds = ClientStatusDiscoveryServiceClient::new(ch.clone())
        .stream_client_status(ReceiverStream::new(rx))
        .await
        .expect("the second stream")
        .into_inner();
    tx.send(ClientStatusRequest::default()).await.expect("send");
    let first = tokio::time::timeout(WAIT, csds.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an answer");
    assert_eq!(first.config.len(), 1);

    // Both slots are taken: a third xDS stream and a fetch are refused.
    let third = support::sotw::Sotw::try_open(
        ch.clone(),
        Some(DiscoveryRequest {
            node: node("envoy-2", "g"),
            type_url: CDS.into(),
            ..Default::default()
        }),
    )
    .await;
    let err = match third {
        Err(s) => s,
        Ok(mut c) => c.try_next().await.expect_err("refused"),
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("server.max_streams"), "{err:?}");
    let err = fetch_at(ch.clone(), ClientStatusRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("server.max_streams"), "{err:?}");
    assert_eq!(
        support::metric(
            server.admin_addr,
            "voltha_xds_csds_requests_total{result=\"max_streams\"}"
        )
        .await,
        1.0
    );

    // The CSDS stream ends: its slot serves an Envoy again.
    drop((tx, csds));
    let again = support::wait_for(WAIT, "a slot to free up", || {
        let ch = ch.clone();
        async move {
            let first = DiscoveryRequest {
                node: node("envoy-3", "g"),
                type_url: CDS.into(),
                ..Default::default()
            };
            let mut c = support::sotw::Sotw::try_open(ch, Some(first)).await.ok()?;
            c.try_next().await.ok().map(|_| c)
        }
    })
    .await;
    drop(again);
    server.stop(std::time::Duration::from_secs(5)).await;
}

/// At most `server.csds.max_concurrent_requests` (4 by default) answers are in flight: with
/// four stream answers not read by their clients (HTTP/2 flow control holds them), a fetch is
/// refused with RESOURCE_EXHAUSTED naming the key, and answered once one of them is read.
#[tokio::test]
async fn concurrent_answers_are_capped_and_a_fetch_beyond_is_refused() {
    // 3,000 small clusters: an answer is about 28 DATA chunks of 16 KiB, far beyond the
    // client's 64 KiB window, so HTTP/2 stops asking for chunks once that is full.
    let server = big_server("", 1, 3000).await;
    let _envoy = envoy_on_big(support::channel(server.xds_addr).await, "envoy-1").await;
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", server.xds_addr))
        .expect("uri")
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut unread = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = mpsc::channel(1);
        tx.send(ClientStatusRequest::default()).await.expect("send");
        let answers = ClientStatusDiscoveryServiceClient::new(slow.clone())
            .stream_client_status(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        unread.push((tx, answers));
    }
    let ch = support::channel(server.xds_addr).await;
    let err = support::wait_for(WAIT, "a fetch to be refused", || {
        let ch = ch.clone();
        async move { fetch_at(ch, ClientStatusRequest::default()).await.err() }
    })
    .await;
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("server.csds.max_concurrent_requests"), "{err:?}");
    assert_eq!(
        support::metric(server.admin_addr, "voltha_xds_csds_responses_in_flight").await,
        4.0
    );

    // One client reads its answer: its slot is free again.
    let (_tx, mut answers) = unread.pop().expect("four");
    let answer = tokio::time::timeout(WAIT, answers.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an answer");
    assert_eq!(answer.config.len(), 1);
    let configs = support::wait_for(WAIT, "a fetch to be answered", || {
        let ch = ch.clone();
        async move { fetch_at(ch, ClientStatusRequest::default()).await.ok() }
    })
    .await;
    assert_eq!(configs.len(), 1);
    drop(unread);
    server.stop(std::time::Duration::from_secs(5)).await;
}

/// An answer over `server.csds.max_response_bytes` is refused with a message that says which
/// limit and how to narrow the request; the narrowed request is answered.
#[tokio::test]
async fn a_response_over_max_response_bytes_is_refused_with_how_to_narrow_it() {
    let server = big_server("csds: { max_response_bytes: 100000 }", 8000, 0).await;
    let ch = support::channel(server.xds_addr).await;
    let _a = envoy_on_big(ch.clone(), "olt-1").await;
    let _b = envoy_on_big(ch.clone(), "olt-2").await;
    let err = fetch_at(ch.clone(), ClientStatusRequest::default())
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    for part in [
        "server.csds.max_response_bytes",
        "100000",
        "node_matchers",
        "exclude_resource_contents",
    ] {
        assert!(err.message().contains(part), "{part:?} not in {err:?}");
    }
    assert_eq!(
        support::metric(
            server.admin_addr,
            "voltha_xds_csds_requests_total{result=\"too_large\"}"
        )
        .await,
        1.0
    );
    let lean = fetch_at(
        ch.clone(),
        ClientStatusRequest {
            exclude_resource_contents: true,
            ..Default::default()
        },
    )
    .await
    .expect("without contents");
    assert_eq!(lean.len(), 2);
    server.stop(std::time::Duration::from_secs(5)).await;
}

/// A client flooding a StreamClientStatus stream gets the default rate (5 at once, then one
/// per second), not an answer per request.
#[tokio::test]
async fn a_stream_client_status_flood_is_rate_limited() {
    let server = big_server("", 1000, 0).await;
    let ch = support::channel(server.xds_addr).await;
    let _envoy = envoy_on_big(ch.clone(), "envoy-1").await;
    let (tx, rx) = mpsc::channel(500);
    for _ in 0..500 {
        tx.send(ClientStatusRequest::default()).await.expect("queue");
    }
    let started = tokio::time::Instant::now();
    let mut answers = ClientStatusDiscoveryServiceClient::new(ch)
        .stream_client_status(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let window = std::time::Duration::from_secs(2);
    let (mut n, mut bytes) = (0usize, 0usize);
    while let Ok(m) = tokio::time::timeout_at(started + window, answers.message()).await {
        let m = m.expect("no error").expect("open");
        n += 1;
        bytes += m.encoded_len();
    }
    // 5 at once, then at most one per second: 7 at most in 2 s (500 without a limit).
    assert!((5..=7).contains(&n), "{n} answers in {window:?}");
    assert!(bytes <= 7 * 40_000, "{bytes} bytes in {window:?}");
    assert!(support::metric(server.admin_addr, "voltha_xds_csds_rate_limited_total").await >= 1.0);
    drop(tx);
    server.stop(std::time::Duration::from_secs(5)).await;
}

/// CSDS and ADS answer a request that does not decode with the same code, INVALID_ARGUMENT.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_on_csds_as_on_ads() {
    use envoy_types::pb::google::protobuf::UInt64Value;
    let s = Setup::new().await;
    let ch = s.channel().await;
    // Field 1 as a varint: CSDS's field 1 (node_matchers) and ADS's field 1 (version_info)
    // are length-delimited.
    let garbage = UInt64Value { value: 7 };
    let call = |path: &'static str| {
        let ch = ch.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready().await.expect("ready");
            let codec = tonic_prost::ProstCodec::<UInt64Value, UInt64Value>::default();
            grpc.unary(
                tonic::Request::new(garbage),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await
            .expect_err("refused")
        }
    };
    let csds = call("/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus").await;
    assert_eq!(csds.code(), tonic::Code::InvalidArgument, "{csds:?}");
    assert!(csds.message().contains("undecodable"), "{csds:?}");
    let ads = call("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources").await;
    assert_eq!(ads.code(), csds.code(), "{ads:?}");
}
