//! Hostile xDS clients over real gRPC: thousands of mutated and random requests on SotW and
//! Delta ADS streams, while a well-behaved client keeps its subscription. The server must
//! answer each bad stream with an error or ignore what it cannot use, keep serving, and push the
//! next change to the good client.

mod support;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SOTW: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const WAIT: Duration = Duration::from_secs(20);

/// Sends and receives gRPC messages as raw bytes, whatever they hold.
#[derive(Clone, Copy, Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "hostile".into(),
        cluster: "nbi".into(),
        ..Default::default()
    })
}

/// Valid requests of every kind a client sends, encoded: the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let sotw = |ty: &str, names: &[&str], version: &str, nonce: &str, with_node: bool| {
        DiscoveryRequest {
            node: if with_node { node() } else { None },
            type_url: ty.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let delta = |ty: &str, sub: &[&str], unsub: &[&str], nonce: &str, with_node: bool| {
        DeltaDiscoveryRequest {
            node: if with_node { node() } else { None },
            type_url: ty.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            initial_resource_versions: sub.iter().map(|s| (s.to_string(), "v1".to_string())).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    vec![
        sotw(CDS, &[], "", "", true),
        sotw(EDS, &["voltha-grpc", "portainer"], "", "", true),
        sotw(EDS, &["voltha-grpc"], "abc", "1", false),
        delta(CDS, &["*"], &[], "", true),
        delta(EDS, &["voltha-grpc", "x"], &["y"], "2", false),
    ]
}

/// One mutation of a seed: flipped bytes, a cut, inserted garbage, a repeated slice, or noise.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Bytes {
    let mut b = seeds[rng.below(seeds.len())].clone();
    match rng.below(6) {
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.below(8);
                }
            }
        }
        1 => b.truncate(rng.below(b.len())),
        2 => {
            let at = rng.below(b.len() + 1);
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            b.splice(at..at, junk);
        }
        3 => {
            let from = rng.below(b.len());
            let to = (from + rng.below(32)).min(b.len());
            let slice = b[from..to].to_vec();
            b.extend_from_slice(&slice);
        }
        4 => {
            let i = rng.below(b.len());
            if let Some(x) = b.get_mut(i) {
                *x = rng.next() as u8;
            }
        }
        _ => b = (0..rng.below(4096)).map(|_| rng.next() as u8).collect(),
    }
    Bytes::from(b)
}

/// What one hostile stream saw: responses received, and the status that ended it (`None`: the
/// server ended it with OK or the wait ran out).
#[derive(Debug, Default)]
struct Outcome {
    responses: usize,
    status: Option<tonic::Code>,
}

/// A stream that sends `requests` raw messages, then closes its side; reads whatever comes back
/// until the server ends the stream or `WAIT` passes.
async fn hostile_stream(ch: Channel, path: &'static str, requests: Vec<Bytes>) -> Outcome {
    let (tx, rx) = mpsc::channel(requests.len().max(1));
    for r in requests {
        let _ = tx.try_send(r);
    }
    drop(tx);
    let mut out = Outcome::default();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("connection ready");
    let call = grpc.streaming(
        tonic::Request::new(ReceiverStream::new(rx)),
        PathAndQuery::from_static(path),
        Raw,
    );
    let mut inbound = match tokio::time::timeout(WAIT, call).await.expect("stream opened in time") {
        Ok(resp) => resp.into_inner(),
        Err(status) => {
            out.status = Some(status.code());
            return out;
        }
    };
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => out.responses += 1,
                Ok(None) => break,
                Err(status) => {
                    out.status = Some(status.code());
                    break;
                }
            }
        }
    })
    .await;
    out
}

fn hosts(r: &DiscoveryResponse) -> Vec<String> {
    hosts_of(r, "voltha-grpc")
}

/// The endpoint addresses of `cluster` in an EDS response, sorted.
fn hosts_of(r: &DiscoveryResponse, cluster: &str) -> Vec<String> {
    let mut out: Vec<String> = r
        .resources
        .iter()
        .filter_map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).ok())
        .filter(|c| c.cluster_name == cluster)
        .flat_map(|c| c.endpoints)
        .flat_map(|l| l.lb_endpoints)
        .filter_map(|e| {
            let ep = match e.host_identifier? {
                envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep) => ep,
                _ => return None,
            };
            match ep.address?.address? {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => Some(s.address),
                _ => None,
            }
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn mutated_and_random_requests_never_cost_a_good_client_its_updates() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("assignment.json");
    let (server, admin) = voltha_on(&file, &["127.0.0.1", "127.0.0.2"]).await;
    let channel = || channel(server.xds_addr);

    // The good client: CDS, then EDS for voltha-grpc, ACKing as Envoy does.
    let (tx, rx) = mpsc::channel(16);
    let mut good = AggregatedDiscoveryServiceClient::new(channel().await)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("good stream")
        .into_inner();
    let first = |ty: &str, names: &[&str]| DiscoveryRequest {
        node: node(),
        type_url: ty.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    tx.send(first(CDS, &[])).await.expect("send");
    tx.send(first(EDS, &["voltha-grpc"])).await.expect("send");
    let mut eds = None;
    while eds.is_none() {
        let r = tokio::time::timeout(WAIT, good.message())
            .await
            .expect("time")
            .expect("ok")
            .expect("open");
        let ack = DiscoveryRequest {
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            type_url: r.type_url.clone(),
            resource_names: if r.type_url == EDS {
                vec!["voltha-grpc".into()]
            } else {
                vec![]
            },
            ..Default::default()
        };
        tx.send(ack).await.expect("ack");
        if r.type_url == EDS {
            eds = Some(r);
        }
    }
    let before = eds.expect("eds");
    assert_eq!(hosts(&before), ["127.0.0.1", "127.0.0.2"]);

    // 400 hostile streams, 10 requests each (4,000 requests), half SotW and half Delta, 16 at
    // a time, over 4 connections.
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let channels = [channel().await, channel().await, channel().await, channel().await];
    let mut streams = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..400usize {
        let requests: Vec<Bytes> = (0..10).map(|_| mutate(&mut rng, &seeds)).collect();
        let path = if i % 2 == 0 { SOTW } else { DELTA };
        streams.push(tokio::spawn(hostile_stream(channels[i % 4].clone(), path, requests)));
        if streams.len() == 16 {
            for s in streams.drain(..) {
                outcomes.push(s.await.expect("hostile stream task"));
            }
        }
    }
    for s in streams {
        outcomes.push(s.await.expect("hostile stream task"));
    }
    // Most mutations are refused with INVALID_ARGUMENT; some stay valid and are answered. No
    // stream gets INTERNAL or UNKNOWN (a server fault).
    let refused = outcomes
        .iter()
        .filter(|o| o.status == Some(tonic::Code::InvalidArgument))
        .count();
    let answered = outcomes.iter().filter(|o| o.responses > 0).count();
    let faults: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.status, Some(tonic::Code::Internal | tonic::Code::Unknown)))
        .collect();
    assert!(faults.is_empty(), "server faults: {faults:?}");
    assert!(refused >= 100, "only {refused} of 400 streams refused");
    assert!(answered >= 10, "only {answered} of 400 streams answered");

    // The good client still gets the next change, on the same stream.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, assignment(&["127.0.0.3"])).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    let after = tokio::time::timeout(WAIT, good.message())
        .await
        .expect("the good client's update in time")
        .expect("ok")
        .expect("open");
    assert_eq!(after.type_url, EDS);
    assert_ne!(after.version_info, before.version_info);
    assert_eq!(hosts(&after), ["127.0.0.3"]);

    // Bad requests were seen and counted; the admin API answers; nothing was left open.
    let metrics = get_text(&format!("{admin}/metrics")).await;
    let counted = sample(&metrics, "voltha_xds_bad_requests_total").expect("bad request counter");
    eprintln!("400 hostile streams: {refused} refused with INVALID_ARGUMENT, {answered} answered; {counted} bad requests counted");
    assert!(counted >= 50.0, "only {counted} bad requests counted:\n{metrics}");
    wait_for(WAIT, "only the good stream left open", || async {
        (metric_sum(server.admin_addr, "voltha_xds_streams").await == 1.0).then_some(())
    })
    .await;
    drop(tx);
}

/// An endpoints file (`format: endpoints`) with one set `big` of `n` endpoints, the first one
/// carrying `generation` in its address.
fn big_set(n: usize, generation: u32) -> String {
    let mut eps: Vec<String> = (0..n)
        .map(|i| format!("\"10.{}.{}.{}:50556\"", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect();
    eps[0] = format!("\"11.0.{}.{}:50556\"", (generation >> 8) & 255, generation & 255);
    format!("{{\"big\": [{}]}}", eps.join(","))
}

/// A client that stops reading holds the server to the newest state, not a queue: while it
/// stalls, 30 changes of a response larger than HTTP/2's default window are pushed to a good
/// client; when it reads again it gets a few responses at most, the last one the newest.
#[tokio::test]
async fn a_client_that_stops_reading_gets_the_newest_state_not_a_backlog() {
    const CHANGES: u32 = 30;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, big_set(3000, 0)).expect("write");
    let yaml = format!(
        r#"
default_group: g
debounce: {{ quiet: 5ms, max_delay: 100ms }}
sources: [{{ name: eps, type: file, path: "{}", format: endpoints, poll_interval: 10ms }}]
clusters:
  - {{ name: big, endpoints: {{ source: eps, set: big }} }}
groups:
  - {{ name: g, clusters: [big] }}
"#,
        file.display()
    );
    let server = start_server(&yaml).await;
    let admin = format!("http://{}", server.admin_addr);
    wait_for(WAIT, "readiness", || {
        let url = format!("{admin}/readyz");
        async move { (get_json(&url).await.0 == 200).then_some(()) }
    })
    .await;

    // Opens an EDS stream for `big` and returns it after its first response (ACKed).
    let open = |addr: std::net::SocketAddr| async move {
        let ch = channel(addr).await;
        let (tx, rx) = mpsc::channel(64);
        let mut rx_stream = AggregatedDiscoveryServiceClient::new(ch)
            .max_decoding_message_size(16 << 20)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        tx.send(DiscoveryRequest {
            node: node(),
            type_url: EDS.into(),
            resource_names: vec!["big".into()],
            ..Default::default()
        })
        .await
        .expect("send");
        let first = tokio::time::timeout(WAIT, rx_stream.message())
            .await
            .expect("time")
            .expect("ok")
            .expect("open");
        assert!(
            first.encoded_len() > 65_535,
            "a response must exceed the window: {}",
            first.encoded_len()
        );
        (tx, rx_stream, first)
    };
    let ack = |r: &DiscoveryResponse| DiscoveryRequest {
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        type_url: EDS.into(),
        resource_names: vec!["big".into()],
        ..Default::default()
    };
    let (good_tx, mut good, first) = open(server.xds_addr).await;
    good_tx.send(ack(&first)).await.expect("ack");
    let (stalled_tx, mut stalled, first) = open(server.xds_addr).await;
    stalled_tx.send(ack(&first)).await.expect("ack");

    // The one address of the set that is not 10.x.y.z: the change's mark.
    let first_host = |r: &DiscoveryResponse| -> String {
        hosts_of(r, "big")
            .into_iter()
            .find(|h| h.starts_with("11."))
            .unwrap_or_default()
    };
    // The stalled client reads nothing while the good one follows every change.
    for g in 1..=CHANGES {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, big_set(3000, g)).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        let want = format!("11.0.{}.{}", (g >> 8) & 255, g & 255);
        loop {
            let r = tokio::time::timeout(WAIT, good.message())
                .await
                .expect("the good client's update in time")
                .expect("ok")
                .expect("open");
            good_tx.send(ack(&r)).await.expect("ack");
            if first_host(&r) == want {
                break;
            }
        }
    }
    // Reading again: what was buffered, then the newest; far fewer responses than changes.
    let newest = format!("11.0.0.{CHANGES}");
    let mut got = 0u32;
    loop {
        let r = tokio::time::timeout(WAIT, stalled.message())
            .await
            .expect("the stalled client's update in time")
            .expect("ok")
            .expect("open");
        got += 1;
        stalled_tx.send(ack(&r)).await.expect("ack");
        if first_host(&r) == newest {
            break;
        }
    }
    eprintln!("stalled client: {got} responses after {CHANGES} changes");
    assert!(got <= 3, "{got} responses queued for a client that stopped reading");
}

/// Stream churn: 2,000 ADS streams opened, synced and dropped in waves of 100 (half SotW, half
/// Delta, each with its own node id), while a good client holds its subscription. Every wave
/// leaves no stream and no client entry behind, and the good client gets the next change.
#[tokio::test]
async fn stream_churn_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("assignment.json");
    let (server, _admin) = voltha_on(&file, &["127.0.0.1"]).await;
    let debug = format!("http://{}", server.admin_debug_addr);
    let ch = channel(server.xds_addr).await;

    let (good_tx, rx) = mpsc::channel(16);
    let mut good = AggregatedDiscoveryServiceClient::new(ch.clone())
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("good stream")
        .into_inner();
    good_tx
        .send(DiscoveryRequest {
            node: node(),
            type_url: EDS.into(),
            resource_names: vec!["voltha-grpc".into()],
            ..Default::default()
        })
        .await
        .expect("send");
    let first = tokio::time::timeout(WAIT, good.message())
        .await
        .expect("time")
        .expect("ok")
        .expect("open");
    good_tx
        .send(DiscoveryRequest {
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            type_url: EDS.into(),
            resource_names: vec!["voltha-grpc".into()],
            ..Default::default()
        })
        .await
        .expect("ack");

    for wave in 0..20 {
        let (mut sotw, mut delta) = (Vec::new(), Vec::new());
        for i in 0..100 {
            let node = Some(Node {
                id: format!("churn-{wave}-{i}"),
                cluster: "nbi".into(),
                ..Default::default()
            });
            let mut client = AggregatedDiscoveryServiceClient::new(ch.clone());
            if i % 2 == 0 {
                let (tx, rx) = mpsc::channel(4);
                tx.send(DiscoveryRequest {
                    node,
                    type_url: CDS.into(),
                    ..Default::default()
                })
                .await
                .expect("send");
                let mut s = client
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .expect("sotw stream")
                    .into_inner();
                let r = tokio::time::timeout(WAIT, s.message()).await.expect("time");
                assert!(matches!(r, Ok(Some(_))), "wave {wave} stream {i}: {r:?}");
                sotw.push((tx, s));
            } else {
                let (tx, rx) = mpsc::channel(4);
                tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: CDS.into(),
                    resource_names_subscribe: vec!["*".into()],
                    ..Default::default()
                })
                .await
                .expect("send");
                let mut s = client
                    .delta_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .expect("delta stream")
                    .into_inner();
                let r = tokio::time::timeout(WAIT, s.message()).await.expect("time");
                assert!(matches!(r, Ok(Some(_))), "wave {wave} stream {i}: {r:?}");
                delta.push((tx, s));
            }
        }
        let during = metric_sum(server.admin_addr, "voltha_xds_streams").await;
        assert_eq!(during, 101.0, "wave {wave}: open streams while held");
        drop((sotw, delta));
        wait_for(WAIT, "the wave's streams gone", || async {
            (metric_sum(server.admin_addr, "voltha_xds_streams").await == 1.0).then_some(())
        })
        .await;
        // Only the good client is left in the client table.
        wait_for(WAIT, "one client left", || {
            let url = format!("{debug}/debug/clients");
            async move {
                let (_, v) = get_json(&url).await;
                (v["clients"].as_array().map(|a| a.len()) == Some(1)).then_some(())
            }
        })
        .await;
    }
    // The good client still gets changes.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, assignment(&["127.0.0.9"])).expect("write");
    std::fs::rename(&tmp, &file).expect("rename");
    let after = tokio::time::timeout(WAIT, good.message())
        .await
        .expect("the good client's update in time")
        .expect("ok")
        .expect("open");
    assert_eq!(hosts(&after), ["127.0.0.9"]);
}

/// A server with one file source (a VOLTHA assignment at `file`, holding `hosts`) behind the
/// EDS cluster `voltha-grpc` of the group `nbi`, ready; and its admin URL.
async fn voltha_on(file: &std::path::Path, hosts: &[&str]) -> (voltha_xds::Running, String) {
    std::fs::write(file, assignment(hosts)).expect("write");
    let yaml = format!(
        r#"
default_group: nbi
debounce: {{ quiet: 10ms, max_delay: 200ms }}
sources: [{{ name: assignment, type: file, path: "{}", poll_interval: 20ms }}]
clusters:
  - {{ name: voltha-grpc, endpoints: {{ source: assignment, port: 50556 }} }}
groups:
  - {{ name: nbi, clusters: [voltha-grpc] }}
"#,
        file.display()
    );
    let server = start_server(&yaml).await;
    let admin = format!("http://{}", server.admin_addr);
    wait_for(WAIT, "readiness", || {
        let url = format!("{admin}/readyz");
        async move { (get_json(&url).await.0 == 200).then_some(()) }
    })
    .await;
    (server, admin)
}
