//! RSS after a burst: whether the allocator returns memory once a load has passed.
//!
//! ```text
//! # the settings `voltha-xds serve` gives mimalloc, then mimalloc's own defaults
//! MIMALLOC_PURGE_DELAY=0 MIMALLOC_ALLOW_THP=0 cargo run --example rss_after_burst -- --streams 1000
//! MIMALLOC_PURGE_DELAY=1000 MIMALLOC_ALLOW_THP=1 cargo run --example rss_after_burst -- --streams 1000
//! ```
//!
//! The server runs in this process (`voltha_xds::start`, the embedded VOLTHA profile with an
//! assignment of `--cores` cores) with the binary's allocator (mimalloc, counted for the live
//! heap), and the clients too: `--streams` SotW ADS streams, on connections of 100 streams,
//! each subscribing to CDS and EDS and ACKing. mimalloc reads its settings from the environment
//! when the process starts; unlike `serve`, this example does not set them itself, so give them
//! on its command line. The CSDS limits are raised so that the burst is `--fetches` whole
//! answers. Then, in turn:
//!
//! 1. *streams*: every stream holds the snapshot;
//! 2. *CSDS burst*: `--fetches` `FetchClientStatus` calls at once, each answer read whole;
//! 3. *closed*: every stream closed.
//!
//! After each step it prints the process's RSS and live heap at once, and again after 1 s and
//! 5 s with nothing happening, then the same after a final idle `--idle-s`. What the allocator
//! keeps is RSS minus the live heap (plus code and stacks, the same in every run).

mod common;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;
use voltha_xds::config::Config;

#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[derive(Parser, Debug)]
#[command(about = "RSS and live heap after a burst of xDS streams and CSDS calls")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 500)]
    cores: usize,
    /// CSDS calls at once in the burst.
    #[arg(long, default_value_t = 4)]
    fetches: usize,
    /// The last idle wait, seconds.
    #[arg(long, default_value_t = 10)]
    idle_s: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    common::main_with("rss_after_burst", None, run(args))
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn heap_mib() -> f64 {
    ALLOCATOR.allocated() as f64 / (1024.0 * 1024.0)
}

/// Prints RSS and heap now, after 1 s and after 5 s.
async fn report(step: &str) {
    let mut line = format!("{step:>8}:");
    for (i, wait) in [0u64, 1, 4].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let at = [0, 1, 5][i];
        line.push_str(&format!(
            "  +{at}s RSS {:6.1} MiB heap {:6.1} MiB",
            rss_mib(),
            heap_mib()
        ));
    }
    println!("{line}");
}

struct Stream {
    _tx: mpsc::Sender<DiscoveryRequest>,
    _rx: Streaming<DiscoveryResponse>,
}

fn req(id: &str, ty: &str, names: &[String], prev: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: id.into(),
            cluster: "voltha".into(),
            ..Default::default()
        }),
        type_url: ty.into(),
        resource_names: names.to_vec(),
        version_info: prev.map(|p| p.version_info.clone()).unwrap_or_default(),
        response_nonce: prev.map(|p| p.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn next(rx: &mut Streaming<DiscoveryResponse>) -> Result<DiscoveryResponse> {
    tokio::time::timeout(Duration::from_secs(60), rx.message())
        .await
        .context("no response in 60 s")??
        .context("stream ended")
}

/// One Envoy-like stream: CDS (wildcard), then EDS for the clusters CDS named, each ACKed.
async fn open(ch: Channel, id: String) -> Result<Stream> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(req(&id, CDS, &[], None)).await?;
    let mut rx = AggregatedDiscoveryServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let cds = next(&mut rx).await?;
    tx.send(req(&id, CDS, &[], Some(&cds))).await?;
    let names = vec!["voltha-grpc".to_string(), "voltha-grpc-RR".to_string()];
    tx.send(req(&id, EDS, &names, None)).await?;
    let eds = next(&mut rx).await?;
    tx.send(req(&id, EDS, &names, Some(&eds))).await?;
    Ok(Stream { _tx: tx, _rx: rx })
}

async fn run(args: Args) -> Result<()> {
    println!("MIMALLOC_PURGE_DELAY={:?}", std::env::var("MIMALLOC_PURGE_DELAY").ok());
    let dir = tempfile::tempdir()?;
    let assignment = dir.path().join("assignment.json");
    let doc: serde_json::Map<String, serde_json::Value> = (0..args.cores)
        .map(|i| {
            let host = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            (
                format!("{:04}", i + 1),
                serde_json::json!({"id": format!("vcore-{i}"), "host": host}),
            )
        })
        .collect();
    std::fs::write(&assignment, serde_json::to_vec(&doc)?)?;
    let yaml = voltha_xds::config::EMBEDDED_DEFAULT
        .replace("config/assignment.json", &assignment.display().to_string())
        .replace("0.0.0.0:18000", "127.0.0.1:0")
        .replace("127.0.0.1:18080", "127.0.0.1:0")
        + "\n";
    let mut config = Config::from_yaml(&yaml).map_err(|e| anyhow!("{e}"))?;
    config.server.csds.max_concurrent_requests = args.fetches.max(1);
    config.server.csds.max_response_bytes = u32::MAX as usize;
    let running = voltha_xds::start(
        config,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let addr = running.xds_addr;
    let started = Instant::now();
    while running.cache.current().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no snapshot in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report("start").await;

    let conns = args.streams.div_ceil(100);
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(Channel::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..args.streams {
        opening.spawn(open(channels[i % conns].clone(), format!("olt-{i:05}")));
    }
    let mut streams = Vec::with_capacity(args.streams);
    while let Some(s) = opening.join_next().await {
        streams.push(s??);
    }
    report("streams").await;

    let mut fetches = tokio::task::JoinSet::new();
    for i in 0..args.fetches {
        let ch = channels[i % conns].clone();
        fetches.spawn(async move {
            ClientStatusDiscoveryServiceClient::new(ch)
                .max_decoding_message_size(usize::MAX)
                .fetch_client_status(ClientStatusRequest::default())
                .await
                .map(|r| r.into_inner().config.len())
        });
    }
    let mut answered = 0;
    while let Some(r) = fetches.join_next().await {
        answered += r?.map_err(|s| anyhow!("CSDS: {s:?}"))?;
    }
    println!("CSDS: {answered} Envoys reported over {} calls", args.fetches);
    report("csds").await;

    drop(streams);
    drop(channels);
    report("closed").await;
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    println!(
        "    idle: +{}s RSS {:6.1} MiB heap {:6.1} MiB",
        args.idle_s,
        rss_mib(),
        heap_mib()
    );
    running.stop(Duration::from_secs(5)).await;
    Ok(())
}
