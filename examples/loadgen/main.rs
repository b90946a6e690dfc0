//! Load generator: N simulated Envoys on ADS (State of the World or Delta) against a voltha-xds
//! server it starts itself, to measure initial sync time, idle memory per stream and how fast
//! a one-endpoint change reaches every stream.
//!
//! ```text
//! cargo run --release --example loadgen -- --streams 1000 --mode sotw --clusters 1000 --endpoints 10
//! ```
//!
//! What it does:
//! 1. writes, in a temporary directory, an `endpoints` file (C sets `c0000`.. of E endpoints
//!    each; the addresses are data only, never contacted) and a configuration with one file
//!    source polled every 10 ms, a 10 ms debounce, C clusters and one group `bench` (default,
//!    no listeners) serving them all;
//! 2. starts the server on free loopback ports, waits for `/readyz`, reads its RSS (baseline);
//! 3. opens ceil(N / streams-per-conn) HTTP/2 connections (by default one per stream, as each
//!    Envoy has its own) and N ADS streams over them; each
//!    stream subscribes to CDS (wildcard), then to EDS for every cluster CDS named (in a hash
//!    order, not sorted, as Envoy sends them), and ACKs every response;
//! 4. waits until every stream holds the endpoints of every cluster (initial sync), then reads
//!    the server's RSS again (idle cost per stream);
//! 5. K times: changes one endpoint of one cluster (write + rename) and waits until every stream
//!    has received the new content; reports convergence p50/p99/max from just before the rename
//!    (which includes the file poll interval and the debounce quiet period);
//! 6. prints the server's CPU time and peak RSS, a summary line and a markdown table row. The
//!    summary's `push_p50_ms`/`push_max_ms` are, per change, the convergence minus the time the
//!    server's log says the snapshot was published: the push alone, from the published
//!    snapshot to the last stream holding it (the figure `examples/rawlimit.rs` bounds).
//!    `eds_ack_bytes` is the size of an EDS ACK (the gRPC message): for SotW it repeats every
//!    subscribed name.
//!
//! With `--restart`, between 4 and 5 the server gets SIGTERM with every stream open and is
//! started again on the same ports; the streams reconnect as Envoy does and the storm is
//! measured (`restart.rs`, the `STORM` line). A soak is a long `--changes` run: its summary
//! has the RSS and live heap right after the sync (`rss_idle_mib`, `heap_idle_mib`) and at
//! the end (`rss_end_mib`, `heap_end_mib`), and a change that does not reach every stream in
//! `--converge-timeout` ends the run non-zero.
//!
//! Every wait is bounded; a timeout, a stream error or a server exit ends the run non-zero.
//! Responses are decoded with minimal messages (version, type, nonce, raw resources), and a SotW
//! request's names are encoded once and shared by every stream (an ACK copies them: the bytes
//! are prost's, checked at start), so the load generator stays cheap next to the server (they
//! share the machine's cores). `--client-threads 1` keeps it to one thread. `--ack-delay-ms`
//! (a diagnostic) holds each EDS ACK after the sync back, to show what the ACKs cost the push.
//!
//! Another xDS server (for comparison, see scripts/bench-peers.sh) is driven with
//! `--peer-cmd BINARY`: the load generator runs `BINARY --listen 127.0.0.1:PORT --endpoints FILE`
//! directly (so RSS and CPU are that process's own), with `LOADGEN_STREAMS=N` in its environment
//! (the streams' node ids are `sim-0` .. `sim-{N-1}`, node cluster `bench`). Such a server must
//! serve ADS on the address and follow the endpoints file (a JSON object: set name -> array of
//! "ip:port"), one EDS cluster per set. It is ready when the xDS port accepts a TCP connection;
//! it has no heap metric and no log to parse (reported as n/a); everything else is the same.

#[path = "../common/mod.rs"]
mod common;
mod restart;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use common::{free_port, percentile, tail};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
const ENDPOINT_PORT: u16 = 50556;

#[derive(Parser, Debug)]
#[command(about = "xDS load generator for voltha-xds: sync time, memory per stream, convergence")]
struct Args {
    /// Simulated Envoys (one ADS stream each).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    #[arg(long, value_enum, default_value = "sotw")]
    mode: Mode,
    /// Clusters (each with its own endpoint set), all served to every stream.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// ADS streams multiplexed on one HTTP/2 connection. 1 (the default) is what Envoy does:
    /// each Envoy opens its own connection for its one ADS stream. More (e.g. 100, the layout
    /// of the project's earlier tables; the server allows 200 by default) is a layout no Envoy
    /// uses, and hides the per-connection cost.
    #[arg(long, default_value_t = 1)]
    streams_per_conn: usize,
    /// One-endpoint changes to make after the initial sync.
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// The voltha-xds binary [default: next to this example's directory, else
    /// $CARGO_TARGET_DIR/release/voltha-xds, else target/release/voltha-xds].
    #[arg(long, conflicts_with = "peer_cmd")]
    server_bin: Option<PathBuf>,
    /// Drive another xDS server instead of voltha-xds: run `PEER_CMD --listen ADDR --endpoints FILE`.
    #[arg(long)]
    peer_cmd: Option<PathBuf>,
    /// The server's name in the report [default: voltha-xds, or the --peer-cmd file name].
    #[arg(long)]
    server_name: Option<String>,
    /// The file source's poll interval.
    #[arg(long, default_value = "10ms")]
    poll_interval: String,
    /// The debounce quiet period.
    #[arg(long, default_value = "10ms")]
    debounce_quiet: String,
    /// Diagnostic: the file source polls alone (`watch: false`), without change notifications.
    /// A server older than the `watch` key refuses the configuration.
    #[arg(long)]
    no_watch: bool,
    /// Seconds to wait for /readyz.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Seconds to wait for every stream's initial sync.
    #[arg(long, default_value_t = 600)]
    sync_timeout: u64,
    /// Seconds to wait for one change to reach every stream.
    #[arg(long, default_value_t = 60)]
    converge_timeout: u64,
    /// Milliseconds to wait after the sync before reading the idle RSS (lets the ACKs drain).
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Milliseconds between changes (late or duplicate pushes are counted meanwhile).
    #[arg(long, default_value_t = 500)]
    pause_ms: u64,
    /// RUST_LOG for the server.
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Keep the temporary directory (configuration, endpoints file, server log).
    #[arg(long)]
    keep: bool,
    /// Diagnostic: hold each EDS ACK after the initial sync back this long (the response is
    /// timed when it arrives, before the wait). With a wait longer than the push, the clients'
    /// ACKs (SotW: every subscribed name again) no longer share the machine with the push, which
    /// shows what they cost it. 0 (the default) ACKs at once, as Envoy does.
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// The load generator's own worker threads [default: one per core]. With 1, it runs on one
    /// thread and leaves the rest of the machine to the server.
    #[arg(long)]
    client_threads: Option<usize>,
    /// After the initial sync, stop the server with SIGTERM while every stream is open, start
    /// it again on the same ports, and measure the reconnect storm: each stream reconnects as
    /// Envoy does (jittered backoff from 500 ms, its held versions in its first requests). See
    /// `restart.rs`. The changes then run against the new server.
    #[arg(long)]
    restart: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sotw,
    Delta,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

// ---- Minimal wire messages: only the fields the load generator reads. ----

/// `DiscoveryResponse` with resources left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// `DeltaDiscoveryResponse` with resources left encoded.
#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResponse {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

/// `google.protobuf.Any`, value only.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyValue {
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `envoy.config.cluster.v3.Cluster`, name only.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterName {
    #[prost(string, tag = "1")]
    name: String,
}

/// `envoy.service.discovery.v3.Resource`, name and version only.
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceName {
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "1")]
    version: String,
}

// ---- What the streams tell the coordinator. ----

enum Event {
    /// The stream holds EDS content for every cluster CDS named.
    /// `cds_bytes`/`eds_bytes`: the encoded resources received until then, per type.
    Synced {
        at: Instant,
        cds_bytes: usize,
        eds_bytes: usize,
    },
    /// An EDS response after the initial sync.
    Update {
        idx: usize,
        generation: u32,
        at: Instant,
        resources: usize,
        has_new_content: bool,
    },
    /// A response that brought nothing new (CDS again, or SotW EDS with the same version).
    Redundant { kind: &'static str },
    /// The stream failed or the server ended it.
    Failed { idx: usize, error: String },
    /// `--restart`: the stream ended while reconnecting is expected (the server was stopped).
    Disconnected,
    /// `--restart`: a reconnect attempt was refused with RESOURCE_EXHAUSTED.
    Refused,
    /// `--restart`: the stream is in sync with the new server (SotW: the stream is open again;
    /// Delta: the first response of each type has come).
    Reconnected { at: Instant },
    /// `--restart`: a response to a reconnected stream before the first change: `resources`
    /// sent again, and whether its version differs from the one held.
    Resent { resources: usize, version_changed: bool },
}

/// State the coordinator shares with every stream.
struct Shared {
    /// The change in progress (0: none yet).
    generation: AtomicU32,
    /// `--ack-delay-ms`.
    ack_delay: Duration,
    /// One copy of the cluster name list for all streams (they all get the same one), with its
    /// `resource_names` fields encoded once.
    names: parking_lot::Mutex<Option<Subscription>>,
    /// The size of the last EDS ACK sent (the gRPC message, without its 5-byte prefix).
    eds_ack_bytes: AtomicUsize,
    /// `--restart`: a stream that ends reconnects (with backoff) instead of failing the run.
    reconnect: AtomicBool,
    /// `--restart` was given: Delta streams keep every resource's version from the start.
    restart: bool,
}

/// The EDS subscription every stream sends: the names, and their `resource_names` fields
/// encoded (shared by every SotW request that repeats them).
#[derive(Clone)]
struct Subscription {
    names: Arc<Vec<String>>,
    encoded: Bytes,
}

impl Shared {
    /// The EDS subscription every stream sends, in a hash order rather than sorted: Envoy sends
    /// its EDS names in the order of a hash set, the same order in every request of a stream.
    fn intern_names(&self, mut names: Vec<String>) -> Subscription {
        let fnv = |n: &str| {
            n.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        };
        names.sort_by_key(|n| fnv(n));
        let mut cached = self.names.lock();
        match cached.as_ref() {
            Some(c) if *c.names == names => c.clone(),
            _ => {
                let mut encoded = Vec::new();
                for n in &names {
                    prost::encoding::string::encode(3, n, &mut encoded);
                }
                let sub = Subscription {
                    names: Arc::new(names),
                    encoded: encoded.into(),
                };
                *cached = Some(sub.clone());
                sub
            }
        }
    }
}

/// A SotW `DiscoveryRequest` encoded ahead: its fields before `resource_names` (1, 2), the
/// names (3, shared by every stream), and the fields after them (4 onwards). On the wire it is
/// byte for byte what prost writes for the whole request (fields in number order), but an ACK
/// that repeats 1,000 names costs one copy of the shared bytes, not 1,000 strings cloned and
/// encoded: the load generator stands in for Envoys that run on their own machines, so it
/// should take as little of the shared cores as it can.
#[derive(Debug, Default)]
struct SotwRequest {
    before: Vec<u8>,
    names: Bytes,
    after: Vec<u8>,
}

impl SotwRequest {
    /// `req` (whose `resource_names` must be empty) with `names` as its names.
    fn new(req: &DiscoveryRequest, names: Option<&Bytes>) -> SotwRequest {
        let before = DiscoveryRequest {
            version_info: req.version_info.clone(),
            node: req.node.clone(),
            ..Default::default()
        };
        let after = DiscoveryRequest {
            type_url: req.type_url.clone(),
            response_nonce: req.response_nonce.clone(),
            error_detail: req.error_detail.clone(),
            ..Default::default()
        };
        debug_assert!(req.resource_names.is_empty() && req.resource_locators.is_empty());
        SotwRequest {
            before: before.encode_to_vec(),
            names: names.cloned().unwrap_or_default(),
            after: after.encode_to_vec(),
        }
    }
}

/// The requests encoded ahead must be the bytes prost writes for the same request: checked on
/// every start, on a first request and an ACK, so the server sees what an encoder sends.
fn check_pre_encoded_requests() -> Result<()> {
    let shared = Shared {
        generation: AtomicU32::new(0),
        ack_delay: Duration::ZERO,
        names: parking_lot::Mutex::new(None),
        eds_ack_bytes: AtomicUsize::new(0),
        reconnect: AtomicBool::new(false),
        restart: false,
    };
    let sub = shared.intern_names(vec!["c0002".into(), "c0000".into(), "c0001".into()]);
    let node = Node {
        id: "sim-0".into(),
        cluster: "bench".into(),
        ..Default::default()
    };
    for (version, nonce, node) in [("", "", Some(node)), ("v1", "7", None)] {
        let req = DiscoveryRequest {
            version_info: version.into(),
            node,
            type_url: EDS.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        let whole = DiscoveryRequest {
            resource_names: sub.names.to_vec(),
            ..req.clone()
        };
        if SotwRequest::new(&req, Some(&sub.encoded)).encode_to_vec() != whole.encode_to_vec() {
            bail!("the load generator's pre-encoded request differs from prost's encoding of it");
        }
    }
    Ok(())
}

impl Message for SotwRequest {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.before);
        buf.put_slice(&self.names);
        buf.put_slice(&self.after);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.before.len() + self.names.len() + self.after.len()
    }

    fn clear(&mut self) {
        *self = SotwRequest::default();
    }
}

/// The address change `generation` puts in place: 11.x.y.z never occurs inside the initial
/// 10.x.y.z addresses, so finding it in a response's bytes proves the new content arrived.
fn changed_ip(generation: u32) -> String {
    format!(
        "11.{}.{}.{}",
        (generation >> 16) & 255,
        (generation >> 8) & 255,
        generation & 255
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // The first byte is checked before the window is compared: one byte test per position,
    // rather than a call to compare a whole window.
    let Some(&first) = needle.first() else {
        return false;
    };
    hay.windows(needle.len()).any(|w| w[0] == first && w == needle)
}

struct StreamCtx {
    idx: usize,
    channel: Channel,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
}

impl StreamCtx {
    fn node(&self) -> Node {
        Node {
            id: format!("sim-{}", self.idx),
            cluster: "bench".into(),
            ..Default::default()
        }
    }

    /// Waits `--ack-delay-ms` before an EDS ACK after the initial sync (no wait by default).
    async fn hold_ack(&self) {
        if !self.shared.ack_delay.is_zero() {
            tokio::time::sleep(self.shared.ack_delay).await;
        }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// An EDS response after the initial sync.
    fn update(&self, at: Instant, resources: &[Bytes]) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let needle = changed_ip(generation);
        let has_new_content = resources.iter().any(|r| contains(r, needle.as_bytes()));
        self.emit(Event::Update {
            idx: self.idx,
            generation,
            at,
            resources: resources.len(),
            has_new_content,
        });
    }
}

async fn run_stream(ctx: StreamCtx, mode: Mode) {
    let mut held = Held::default();
    let mut attempt = 0u32;
    loop {
        let r = match mode {
            Mode::Sotw => sotw_stream(&ctx, &mut held).await,
            Mode::Delta => delta_stream(&ctx, &mut held).await,
        };
        if held.opened_again {
            held.opened_again = false;
            attempt = 0;
        }
        let refused = r.as_ref().err().is_some_and(|e| {
            e.chain()
                .filter_map(|c| c.downcast_ref::<tonic::Status>())
                .any(|s| s.code() == tonic::Code::ResourceExhausted)
        });
        let error = match r {
            Ok(()) => "the server ended the stream (OK status)".to_string(),
            Err(e) => format!("{e:#}"),
        };
        attempt += 1;
        if !ctx.shared.reconnect.load(Ordering::SeqCst) || attempt > restart::MAX_ATTEMPTS {
            ctx.emit(Event::Failed { idx: ctx.idx, error });
            return;
        }
        if refused {
            ctx.emit(Event::Refused);
        }
        if !held.disconnected {
            held.disconnected = true;
            ctx.emit(Event::Disconnected);
        }
        tokio::time::sleep(restart::envoy_backoff(ctx.idx, attempt)).await;
    }
}

/// What a simulated Envoy holds across reconnects.
#[derive(Default)]
struct Held {
    /// The EDS subscription (after the first CDS response).
    names: Option<Subscription>,
    /// SotW: the versions last received, sent again in the first requests after a reconnect.
    cds_version: Option<String>,
    eds_version: Option<String>,
    /// Delta, with `--restart`: the version of every resource held, by type (CDS, EDS), sent as
    /// `initial_resource_versions` after a reconnect.
    delta_versions: [BTreeMap<String, String>; 2],
    /// The stream ended and has not been in sync with the server since.
    disconnected: bool,
    /// A stream opened after a disconnect (resets the backoff).
    opened_again: bool,
}

async fn sotw_stream(ctx: &StreamCtx, held: &mut Held) -> Result<()> {
    let (tx, rx) = mpsc::channel::<SotwRequest>(8);
    let resync = held.disconnected;
    // Envoy's first requests on a new stream: every type it watches, with the version it holds.
    let first = DiscoveryRequest {
        node: Some(ctx.node()),
        type_url: CDS.into(),
        version_info: held.cds_version.clone().unwrap_or_default(),
        ..Default::default()
    };
    tx.send(SotwRequest::new(&first, None))
        .await
        .context("queueing the first request")?;
    if let (true, Some(list)) = (resync, &held.names) {
        let eds = DiscoveryRequest {
            version_info: held.eds_version.clone().unwrap_or_default(),
            type_url: EDS.into(),
            ..Default::default()
        };
        tx.send(SotwRequest::new(&eds, Some(&list.encoded)))
            .await
            .context("queueing the EDS request")?;
    }
    let mut grpc = Grpc::new(ctx.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready().await.context("connection not ready")?;
    let codec = ProstCodec::<SotwRequest, SotwResponse>::default();
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(SOTW_PATH),
            codec,
        )
        .await
        .context("opening the SotW ADS stream")?
        .into_inner();
    if resync {
        // Open again, with the versions it holds: in sync unless the server sends otherwise.
        held.disconnected = false;
        held.opened_again = true;
        ctx.emit(Event::Reconnected { at: Instant::now() });
    }

    let mut received = 0usize;
    let (mut cds_bytes, mut eds_bytes) = (0usize, 0usize);
    while let Some(r) = inbound.message().await.context("SotW ADS stream")? {
        let at = Instant::now();
        let restarting = resync && ctx.shared.reconnect.load(Ordering::SeqCst);
        match r.type_url.as_str() {
            CDS => {
                let ack = DiscoveryRequest {
                    version_info: r.version_info.clone(),
                    response_nonce: r.nonce.clone(),
                    type_url: CDS.into(),
                    ..Default::default()
                };
                send(&tx, SotwRequest::new(&ack, None)).await?;
                let version_changed = held.cds_version.as_deref() != Some(r.version_info.as_str());
                held.cds_version = Some(r.version_info);
                if held.names.is_some() {
                    ctx.emit(if restarting {
                        Event::Resent {
                            resources: r.resources.len(),
                            version_changed,
                        }
                    } else {
                        Event::Redundant { kind: "cds" }
                    });
                    continue;
                }
                cds_bytes = r.resources.iter().map(Bytes::len).sum();
                let mut list = Vec::with_capacity(r.resources.len());
                for res in &r.resources {
                    let any = AnyValue::decode(res.clone()).context("decoding a CDS Any")?;
                    list.push(ClusterName::decode(any.value).context("decoding a Cluster")?.name);
                }
                let list = ctx.shared.intern_names(list);
                let subscribe = DiscoveryRequest {
                    type_url: EDS.into(),
                    ..Default::default()
                };
                send(&tx, SotwRequest::new(&subscribe, Some(&list.encoded))).await?;
                held.names = Some(list);
            }
            EDS => {
                let Some(list) = &held.names else {
                    bail!("an EDS response before any EDS request");
                };
                let ack = DiscoveryRequest {
                    version_info: r.version_info.clone(),
                    response_nonce: r.nonce.clone(),
                    type_url: EDS.into(),
                    ..Default::default()
                };
                if held.eds_version.is_some() {
                    ctx.hold_ack().await;
                }
                let ack = SotwRequest::new(&ack, Some(&list.encoded));
                ctx.shared.eds_ack_bytes.store(ack.encoded_len(), Ordering::Relaxed);
                send(&tx, ack).await?;
                match &held.eds_version {
                    None => {
                        received += r.resources.len();
                        eds_bytes += r.resources.iter().map(Bytes::len).sum::<usize>();
                        if received >= list.names.len() {
                            held.eds_version = Some(r.version_info);
                            ctx.emit(Event::Synced {
                                at,
                                cds_bytes,
                                eds_bytes,
                            });
                        }
                    }
                    Some(v) if restarting => {
                        ctx.emit(Event::Resent {
                            resources: r.resources.len(),
                            version_changed: *v != r.version_info,
                        });
                        held.eds_version = Some(r.version_info);
                    }
                    Some(v) if *v == r.version_info => ctx.emit(Event::Redundant {
                        kind: "eds-same-version",
                    }),
                    Some(_) => {
                        ctx.update(at, &r.resources);
                        held.eds_version = Some(r.version_info);
                    }
                }
            }
            other => bail!("a response of unexpected type {other:?}"),
        }
    }
    Ok(())
}

async fn delta_stream(ctx: &StreamCtx, held: &mut Held) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
    let resync = held.disconnected;
    let keep_versions = ctx.shared.restart;
    let initial = |i: usize| -> std::collections::HashMap<String, String> {
        held.delta_versions[i]
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    tx.send(DeltaDiscoveryRequest {
        node: Some(ctx.node()),
        type_url: CDS.into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: if resync { initial(0) } else { Default::default() },
        ..Default::default()
    })
    .await
    .context("queueing the first request")?;
    if let (true, Some(list)) = (resync, &held.names) {
        tx.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: list.names.to_vec(),
            initial_resource_versions: initial(1),
            ..Default::default()
        })
        .await
        .context("queueing the EDS subscription")?;
    }
    let mut grpc = Grpc::new(ctx.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready().await.context("connection not ready")?;
    let codec = ProstCodec::<DeltaDiscoveryRequest, DeltaResponse>::default();
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(DELTA_PATH),
            codec,
        )
        .await
        .context("opening the Delta ADS stream")?
        .into_inner();
    if resync {
        held.opened_again = true;
    }

    let mut synced = held.names.is_some() && !resync;
    // After a reconnect: the types whose first response has come (CDS, EDS).
    let mut answered = [false; 2];
    let mut received = 0usize;
    let (mut cds_bytes, mut eds_bytes) = (0usize, 0usize);
    while let Some(r) = inbound.message().await.context("Delta ADS stream")? {
        let at = Instant::now();
        if synced && r.type_url == EDS {
            ctx.hold_ack().await;
        }
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        };
        if r.type_url == EDS {
            ctx.shared.eds_ack_bytes.store(ack.encoded_len(), Ordering::Relaxed);
        }
        send(&tx, ack).await?;
        let slot = usize::from(r.type_url == EDS);
        // Names (and versions) are decoded only where they are needed: the first CDS response,
        // and every response with --restart.
        let mut decoded = Vec::new();
        if keep_versions || (r.type_url == CDS && held.names.is_none()) {
            decoded.reserve(r.resources.len());
            for res in &r.resources {
                decoded.push(ResourceName::decode(res.clone()).context("decoding a delta Resource")?);
            }
        }
        let mut version_changed = false;
        if keep_versions {
            let held_versions = &mut held.delta_versions[slot];
            for res in &decoded {
                let old = held_versions.insert(res.name.clone(), res.version.clone());
                version_changed |= old.as_deref() != Some(res.version.as_str());
            }
            for name in &r.removed_resources {
                version_changed |= held_versions.remove(name).is_some();
            }
        }
        if resync && held.disconnected {
            if r.type_url != CDS && r.type_url != EDS {
                bail!("a response of unexpected type {:?}", r.type_url);
            }
            ctx.emit(Event::Resent {
                resources: decoded.len(),
                version_changed,
            });
            answered[slot] = true;
            if answered == [true, true] {
                held.disconnected = false;
                synced = true;
                ctx.emit(Event::Reconnected { at });
            }
            continue;
        }
        match r.type_url.as_str() {
            CDS => {
                if held.names.is_some() {
                    ctx.emit(Event::Redundant { kind: "cds" });
                    continue;
                }
                cds_bytes = r.resources.iter().map(Bytes::len).sum();
                let list = ctx.shared.intern_names(decoded.into_iter().map(|d| d.name).collect());
                send(
                    &tx,
                    DeltaDiscoveryRequest {
                        type_url: EDS.into(),
                        resource_names_subscribe: list.names.to_vec(),
                        ..Default::default()
                    },
                )
                .await?;
                held.names = Some(list);
            }
            EDS => {
                let Some(list) = &held.names else {
                    bail!("an EDS response before any EDS subscription");
                };
                if synced {
                    ctx.update(at, &r.resources);
                } else {
                    received += r.resources.len();
                    eds_bytes += r.resources.iter().map(Bytes::len).sum::<usize>();
                    if received >= list.names.len() {
                        synced = true;
                        ctx.emit(Event::Synced {
                            at,
                            cds_bytes,
                            eds_bytes,
                        });
                    }
                }
                if !r.removed_resources.is_empty() {
                    bail!("EDS removed {:?} though no cluster was removed", r.removed_resources);
                }
            }
            other => bail!("a response of unexpected type {other:?}"),
        }
    }
    Ok(())
}

async fn send<T>(tx: &mpsc::Sender<T>, req: T) -> Result<()> {
    tx.send(req).await.map_err(|_| anyhow!("the request stream is closed"))
}

// ---- The coordinator's view of all streams. ----

#[derive(Default)]
struct Tally {
    synced: usize,
    last_synced: Option<Instant>,
    /// Initial payload of one stream (CDS, EDS resource bytes).
    payload: (usize, usize),
    generation: u32,
    t0: Option<Instant>,
    latencies_ms: Vec<Option<f64>>,
    converged: usize,
    update_pushes: usize,
    update_resources: usize,
    missing_content: usize,
    duplicate_updates: usize,
    updates_before_change: usize,
    redundant: BTreeMap<&'static str, usize>,
    failures: usize,
    first_failure: Option<(usize, String)>,
    /// `--restart` (see `restart.rs`).
    storm: restart::StormTally,
}

impl Tally {
    fn apply(&mut self, e: Event) {
        match e {
            Event::Synced {
                at,
                cds_bytes,
                eds_bytes,
            } => {
                self.synced += 1;
                self.payload = self.payload.max((cds_bytes, eds_bytes));
                self.last_synced = Some(self.last_synced.map_or(at, |l| l.max(at)));
            }
            Event::Update {
                idx,
                generation,
                at,
                resources,
                has_new_content,
            } => {
                self.update_pushes += 1;
                self.update_resources += resources;
                if generation == 0 {
                    self.updates_before_change += 1;
                } else if generation != self.generation || self.latencies_ms.get(idx).is_some_and(Option::is_some) {
                    self.duplicate_updates += 1;
                } else if let (Some(t0), Some(slot)) = (self.t0, self.latencies_ms.get_mut(idx)) {
                    *slot = Some(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                    self.converged += 1;
                    if !has_new_content {
                        self.missing_content += 1;
                    }
                }
            }
            Event::Redundant { kind } => *self.redundant.entry(kind).or_default() += 1,
            Event::Failed { idx, error } => {
                self.failures += 1;
                if self.first_failure.is_none() {
                    self.first_failure = Some((idx, error));
                }
            }
            Event::Disconnected => self.storm.disconnected += 1,
            Event::Refused => self.storm.refused += 1,
            Event::Reconnected { at } => {
                self.storm.reconnected += 1;
                self.storm.last_reconnected = Some(self.storm.last_reconnected.map_or(at, |l| l.max(at)));
            }
            Event::Resent {
                resources,
                version_changed,
            } => {
                self.storm.responses += 1;
                self.storm.resources += resources;
                self.storm.version_changes += usize::from(version_changed);
            }
        }
    }

    fn begin_change(&mut self, generation: u32, n: usize) {
        self.generation = generation;
        self.latencies_ms = vec![None; n];
        self.converged = 0;
        self.t0 = None;
    }
}

/// Applies events until `done` holds; fails on a timeout, a stream failure or a server exit.
async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    tally: &mut Tally,
    server: &mut ServerProc,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Tally) -> bool,
    progress: impl Fn(&Tally) -> String,
) -> Result<()> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        if let Some((idx, e)) = &tally.first_failure {
            bail!("{what}: {} stream(s) failed; first: sim-{idx}: {e}", tally.failures);
        }
        if done(tally) {
            return Ok(());
        }
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => tally.apply(e),
                None => bail!("{what}: every stream task is gone"),
            },
            _ = tick.tick() => {
                server.check_alive()?;
                eprintln!("  .. {what}: {} after {:.0}s", progress(tally), start.elapsed().as_secs_f64());
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!("timeout after {}s waiting for {what}: {}", timeout.as_secs(), progress(tally));
            }
        }
    }
}

/// Applies whatever events arrive during `d` (late or duplicate pushes).
async fn drain_for(rx: &mut mpsc::UnboundedReceiver<Event>, tally: &mut Tally, d: Duration) {
    let until = tokio::time::Instant::now() + d;
    while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
        tally.apply(e);
    }
}

// ---- The server process and /proc. ----

struct ServerProc {
    child: Child,
    log: PathBuf,
}

impl ServerProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("checking the server process")? {
            bail!("the server exited ({status}); log tail:\n{}", tail(&self.log, 20));
        }
        Ok(())
    }
}

/// How to start the server and tell that it is ready; `--restart` starts it a second time.
struct Launch {
    command: Command,
    /// The server's output, appended (a restarted server's lines follow the first one's).
    log: PathBuf,
    ready: Ready,
    timeout: Duration,
}

enum Ready {
    /// voltha-xds: `/readyz` on its admin address answers 200.
    Admin(String),
    /// Another server: its xDS port accepts a TCP connection.
    Tcp(String),
}

impl Launch {
    fn start(&mut self) -> Result<ServerProc> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .context("opening the server log")?;
        let child = self
            .command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {:?}", self.command.get_program()))?;
        Ok(ServerProc {
            child,
            log: self.log.clone(),
        })
    }

    async fn wait_ready(&self, server: &mut ServerProc) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            server.check_alive()?;
            let ready = match &self.ready {
                Ready::Admin(a) => matches!(
                    tokio::time::timeout(Duration::from_secs(2), http_status(a, "/readyz")).await,
                    Ok(Ok(200))
                ),
                Ready::Tcp(a) => matches!(
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(a)).await,
                    Ok(Ok(_))
                ),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = match &self.ready {
                    Ready::Admin(a) => format!("/readyz on {a}"),
                    Ready::Tcp(a) => format!("a TCP connection to {a}"),
                };
                bail!(
                    "timeout after {}s waiting for {what}; log tail:\n{}",
                    self.timeout.as_secs(),
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: Option<u32>, key: &str) -> Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in {path}"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, ticks_per_s: f64) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        f.get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no field {n} in {path}"))
    };
    Ok((field(14)? + field(15)?) / ticks_per_s)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn default_server_bin() -> PathBuf {
    // target/<profile>/examples/loadgen -> target/<profile>/voltha-xds
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("voltha-xds")))
        .filter(|p| p.is_file())
    {
        return p;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "target".into());
    target.join("release").join("voltha-xds")
}

async fn http_status(addr: &str, path: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {head:?}"))
}

/// The server's live heap (`voltha_xds_heap_bytes` on /metrics), in KiB; 0 if it does not say.
async fn heap_kib(addr: &str) -> f64 {
    let text = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).to_string())
    };
    text.await
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("voltha_xds_heap_bytes ")?.trim().parse::<f64>().ok())
        })
        .map_or(0.0, |b| b / 1024.0)
}

// ---- Input files. ----

fn initial_sets(clusters: usize, endpoints: usize) -> BTreeMap<String, Vec<String>> {
    (0..clusters)
        .map(|i| {
            let eps = (0..endpoints)
                .map(|j| {
                    // 254 addresses per cluster, then the next port (the VOLTHA profile has 500).
                    let port = usize::from(ENDPOINT_PORT) + j / 254;
                    format!("10.{}.{}.{}:{port}", (i >> 8) & 255, i & 255, j % 254 + 1)
                })
                .collect();
            (cluster_name(i), eps)
        })
        .collect()
}

fn cluster_name(i: usize) -> String {
    format!("c{i:04}")
}

/// Replaces `path` by write + rename; returns the instant (and wall time) just before the rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(Instant, SystemTime)> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let t0 = (Instant::now(), SystemTime::now());
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(t0)
}

fn config_yaml(args: &Args, endpoints_file: &Path, xds: &str, admin: &str) -> Result<String> {
    let path = serde_json::to_string(&endpoints_file.display().to_string())?;
    let mut y = format!(
        "server:\n  xds_listen: {xds}\n  admin_listen: {admin}\n\
         debounce: {{ quiet: {q}, max_delay: 1s }}\n\
         default_group: bench\n\
         sources:\n  - {{ name: bench, type: file, path: {path}, format: endpoints, poll_interval: {p}{w} }}\n\
         clusters:\n",
        q = args.debounce_quiet,
        p = args.poll_interval,
        w = if args.no_watch { ", watch: false" } else { "" },
    );
    for i in 0..args.clusters {
        let c = cluster_name(i);
        y.push_str(&format!(
            "  - {{ name: {c}, protocol: http2, endpoints: {{ source: bench, set: {c} }} }}\n"
        ));
    }
    y.push_str("groups:\n  - name: bench\n    clusters:\n");
    for i in 0..args.clusters {
        y.push_str(&format!("      - {}\n", cluster_name(i)));
    }
    Ok(y)
}

// ---- The server's log (JSON lines). ----

/// Seconds since midnight UTC.
fn time_of_day(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) * 1e-9
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (`...THH:MM:SS.ffffffZ`).
fn time_of_day_rfc3339(s: &str) -> Option<f64> {
    let t = s.split_once('T')?.1.trim_end_matches('Z');
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let sec: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

/// A "snapshot published" log line: when (seconds since midnight UTC) and the build time.
struct Published {
    at: f64,
    build_ms: Option<u64>,
}

fn published_snapshots(log: &Path) -> Vec<Published> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("snapshot published"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Published {
                at: time_of_day_rfc3339(v.get("timestamp")?.as_str()?)?,
                build_ms: v.get("fields").and_then(|f| f.get("build_ms")).and_then(|b| b.as_u64()),
            })
        })
        .collect()
}

/// The snapshots published within `window` seconds after `t0`, as (ms after t0, build ms).
fn published_after(log: &Path, t0: SystemTime, window: f64) -> Vec<(f64, Option<u64>)> {
    let t0 = time_of_day(t0);
    published_snapshots(log)
        .into_iter()
        .filter_map(|p| {
            let d = (p.at - t0).rem_euclid(86_400.0);
            (d < window).then_some((d * 1000.0, p.build_ms))
        })
        .collect()
}

// ---- Statistics. ----

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Stats {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---- Main. ----

fn main() -> ExitCode {
    let args = Args::parse();
    if args.client_threads == Some(0) {
        eprintln!("loadgen: error: --client-threads must be at least 1");
        return ExitCode::FAILURE;
    }
    common::main_with("loadgen", args.client_threads, run(args))
}

async fn run(args: Args) -> Result<()> {
    if args.streams == 0 || args.clusters == 0 || args.streams_per_conn == 0 {
        bail!("--streams, --clusters and --streams-per-conn must be at least 1");
    }
    if args.clusters > 65536 || args.endpoints == 0 || args.endpoints > 254 * 1000 {
        bail!("--clusters must be at most 65536 and --endpoints between 1 and 254000");
    }
    check_pre_encoded_requests()?;
    let dir = tempfile::Builder::new()
        .prefix("voltha-loadgen-")
        .tempdir()
        .context("creating a temporary directory")?;
    // The coordinator runs as a task on the runtime's workers, not on the thread that started
    // the runtime: each stream's event then schedules it on a worker instead of waking a third
    // thread (a futex wake and a context switch per event, on two cores the server shares).
    let keep = args.keep;
    let path = dir.path().to_path_buf();
    let result = match tokio::spawn(async move { bench(&args, &path).await }).await {
        Ok(r) => r,
        Err(e) => Err(anyhow!("the coordinator task failed: {e}")),
    };
    // On failure the directory (with the server's log) is kept for a look.
    if keep || result.is_err() {
        let kept = dir.keep();
        println!("kept {} (config.yaml, endpoints.json, server.log)", kept.display());
    }
    result
}

async fn bench(args: &Args, dir: &Path) -> Result<()> {
    let n = args.streams;
    let ticks = clock_ticks();

    // 1. Inputs.
    let endpoints_file = dir.join("endpoints.json");
    let config_file = dir.join("config.yaml");
    let log_file = dir.join("server.log");
    let mut sets = initial_sets(args.clusters, args.endpoints);
    std::fs::write(&endpoints_file, serde_json::to_vec(&sets)?).context("writing the endpoints file")?;
    let xds_port = free_port()?;
    let admin_port = loop {
        let p = free_port()?;
        if p != xds_port {
            break p;
        }
    };
    let xds_addr = format!("127.0.0.1:{xds_port}");
    let admin_addr = format!("127.0.0.1:{admin_port}");
    // Another xDS server (--peer-cmd): no configuration, no admin port, no heap metric, no log to parse.
    let peer = args.peer_cmd.as_deref();
    let server_name = match (&args.server_name, peer) {
        (Some(name), _) => name.clone(),
        (None, Some(p)) => p
            .file_name()
            .map_or_else(|| p.display().to_string(), |f| f.to_string_lossy().into_owned()),
        (None, None) => "voltha-xds".into(),
    };
    if peer.is_none() {
        std::fs::write(
            &config_file,
            config_yaml(args, &endpoints_file, &xds_addr, &admin_addr)?,
        )
        .context("writing the configuration")?;
    }

    // 2. The server.
    let bin = match peer {
        Some(p) => p.to_path_buf(),
        None => args.server_bin.clone().unwrap_or_else(default_server_bin),
    };
    if !bin.is_file() {
        if peer.is_some() {
            bail!("peer server binary {} not found", bin.display());
        }
        bail!(
            "server binary {} not found (build it: cargo build --release --bin voltha-xds, or pass --server-bin)",
            bin.display()
        );
    }
    let mut launch = Launch {
        command: {
            let mut c = Command::new(&bin);
            match peer {
                None => c
                    .args(["--log-format", "json", "serve", "--config"])
                    .arg(&config_file)
                    .args(["--xds-listen", &xds_addr, "--admin-listen", &admin_addr])
                    .args(["--admin-debug-listen", "127.0.0.1:0"])
                    .env("RUST_LOG", &args.server_log),
                Some(_) => c
                    .args(["--listen", &xds_addr, "--endpoints"])
                    .arg(&endpoints_file)
                    .env("LOADGEN_STREAMS", n.to_string()),
            };
            c
        },
        log: log_file.clone(),
        ready: match peer {
            None => Ready::Admin(admin_addr.clone()),
            Some(_) => Ready::Tcp(xds_addr.clone()),
        },
        timeout: Duration::from_secs(args.ready_timeout),
    };
    File::create(&log_file).context("creating the server log")?;
    let mut server = launch.start()?;
    let mut pid = server.pid();
    println!(
        "loadgen: {} streams ({}), {} clusters x {} endpoints, {} per connection; server {server_name} ({}) pid {pid}; dir {}",
        n,
        args.mode.name(),
        args.clusters,
        args.endpoints,
        args.streams_per_conn,
        bin.display(),
        dir.display()
    );
    let started = Instant::now();
    launch.wait_ready(&mut server).await?;
    println!("server ready in {:.2}s", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base = status_kib(Some(pid), "VmRSS")?;
    let heap_base = if peer.is_none() {
        Some(heap_kib(&admin_addr).await)
    } else {
        None
    };
    let mut cpu_base = cpu_seconds(pid, ticks)?;
    let self_pid = std::process::id();
    let lg_cpu_base = cpu_seconds(self_pid, ticks)?;

    // 3. Connections and streams.
    let conns = n.div_ceil(args.streams_per_conn);
    let uri = format!("http://{xds_addr}");
    let mut channels = Vec::with_capacity(conns);
    let sync_start = Instant::now();
    for c in 0..conns {
        let ep = Endpoint::from_shared(uri.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let ch = tokio::time::timeout(Duration::from_secs(10), ep.connect())
            .await
            .map_err(|_| anyhow!("timeout connecting #{c} to {uri}"))?
            .with_context(|| format!("connecting #{c} to {uri}"))?;
        channels.push(ch);
    }
    let shared = Arc::new(Shared {
        generation: AtomicU32::new(0),
        ack_delay: Duration::from_millis(args.ack_delay_ms),
        names: parking_lot::Mutex::new(None),
        eds_ack_bytes: AtomicUsize::new(0),
        reconnect: AtomicBool::new(false),
        restart: args.restart,
    });
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    for idx in 0..n {
        let ctx = StreamCtx {
            idx,
            channel: channels[idx / args.streams_per_conn].clone(),
            shared: shared.clone(),
            events: ev_tx.clone(),
        };
        tasks.push(tokio::spawn(run_stream(ctx, args.mode)));
    }
    drop(ev_tx);

    // 4. Initial sync.
    let mut tally = Tally::default();
    wait_for(
        &mut ev_rx,
        &mut tally,
        &mut server,
        Duration::from_secs(args.sync_timeout),
        "initial sync",
        |t| t.synced >= n,
        |t| format!("{}/{n} streams synced", t.synced),
    )
    .await?;
    let sync_s = tally
        .last_synced
        .map_or(0.0, |l| l.saturating_duration_since(sync_start).as_secs_f64());
    let cpu_synced = cpu_seconds(pid, ticks)?;
    let cpu_sync = cpu_synced - cpu_base;
    let lg_cpu_sync = cpu_seconds(self_pid, ticks)? - lg_cpu_base;
    let settle_start = Instant::now();
    drain_for(&mut ev_rx, &mut tally, Duration::from_millis(args.settle_ms)).await;
    let idle_cpu_pct =
        100.0 * (cpu_seconds(pid, ticks)? - cpu_synced) / settle_start.elapsed().as_secs_f64().max(0.001);
    server.check_alive()?;
    let rss_idle = status_kib(Some(pid), "VmRSS")?;
    let per_stream_kib = (rss_idle as f64 - rss_base as f64) / n as f64;
    let lg_rss = status_kib(None, "VmRSS")?;
    // The live heap right after the sync (voltha-xds only): the start of a soak.
    let heap_idle = match heap_base {
        Some(_) => format!("{:.1}", heap_kib(&admin_addr).await / 1024.0),
        None => "n/a".into(),
    };
    println!(
        "initial sync: {n} streams on {conns} connections in {sync_s:.2}s; server RSS {:.1} -> {:.1} MiB = {per_stream_kib:.1} KiB/stream, live heap {heap_idle} MiB; server CPU {cpu_sync:.2}s (loadgen {lg_cpu_sync:.2}s); loadgen RSS {:.1} MiB",
        mib(rss_base),
        mib(rss_idle),
        mib(lg_rss)
    );
    println!(
        "per stream initial payload: CDS {:.1} KiB, EDS {:.1} KiB (resource bytes); server CPU while idle (after sync, {} ms): {idle_cpu_pct:.1}% of a core",
        tally.payload.0 as f64 / 1024.0,
        tally.payload.1 as f64 / 1024.0,
        args.settle_ms
    );

    // 4b. With --restart: SIGTERM with every stream open, the same server again, the storm.
    let storm = if args.restart {
        let report = restart::storm(&mut launch, &mut server, &shared, &mut ev_rx, &mut tally, n, ticks).await?;
        // From here on the figures are the new server's (its CPU counted from its start).
        pid = server.pid();
        cpu_base = 0.0;
        Some(report)
    } else {
        None
    };

    // 5. Changes.
    let cpu_changes_start = cpu_seconds(pid, ticks)?;
    let lg_cpu_changes_start = cpu_seconds(self_pid, ticks)?;
    let changes_start = Instant::now();
    let mut all = Vec::new();
    let mut publish_ms = Vec::new();
    let mut push_ms = Vec::new();
    let (mut dup_total, mut missing_total) = (tally.duplicate_updates, 0usize);
    for k in 1..=args.changes {
        let generation = u32::try_from(k).context("too many changes")?;
        let cluster = cluster_name((k - 1) * 7 % args.clusters);
        let ip = changed_ip(generation);
        if let Some(eps) = sets.get_mut(&cluster) {
            if let Some(first) = eps.first_mut() {
                *first = format!("{ip}:{ENDPOINT_PORT}");
            }
        }
        let bytes = serde_json::to_vec(&sets)?;
        tally.begin_change(generation, n);
        shared.generation.store(generation, Ordering::SeqCst);
        let (t0, t0_wall) = write_atomically(&endpoints_file, &bytes)?;
        tally.t0 = Some(t0);
        wait_for(
            &mut ev_rx,
            &mut tally,
            &mut server,
            Duration::from_secs(args.converge_timeout),
            &format!("change {k} to converge"),
            |t| t.converged >= n,
            |t| format!("{}/{n} streams updated", t.converged),
        )
        .await?;
        let lat: Vec<f64> = tally.latencies_ms.iter().flatten().copied().collect();
        let s = stats(&lat);
        let dup_before = tally.duplicate_updates;
        drain_for(&mut ev_rx, &mut tally, Duration::from_millis(args.pause_ms)).await;
        // Where the time went: file poll + debounce + build (until the snapshot is published),
        // then the push to every stream.
        let window = (s.max / 1000.0 + args.pause_ms as f64 / 1000.0).max(0.5);
        let published = if peer.is_none() {
            published_after(&server.log, t0_wall, window)
        } else {
            Vec::new()
        };
        let breakdown = match published.first() {
            Some((ms, build)) => {
                publish_ms.push(*ms);
                push_ms.push(s.max - ms);
                format!(
                    "; published +{ms:.1} ms (build {} ms{}), push to all +{:.1} ms",
                    build.map_or("?".into(), |b| b.to_string()),
                    if published.len() > 1 {
                        format!(", {} snapshots", published.len())
                    } else {
                        String::new()
                    },
                    s.max - ms
                )
            }
            None if peer.is_some() => String::new(),
            None => "; no \"snapshot published\" log line found".into(),
        };
        println!(
            "change {k}: {cluster} endpoint 0 -> {ip}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{breakdown}{}{}",
            s.p50,
            s.p99,
            s.max,
            if tally.missing_content > missing_total {
                format!(
                    ", {} pushes without the new address",
                    tally.missing_content - missing_total
                )
            } else {
                String::new()
            },
            if tally.duplicate_updates > dup_before {
                format!(", {} extra EDS pushes", tally.duplicate_updates - dup_before)
            } else {
                String::new()
            },
        );
        missing_total = tally.missing_content;
        all.extend(lat);
    }
    dup_total = tally.duplicate_updates - dup_total;
    server.check_alive()?;
    let cpu_end = cpu_seconds(pid, ticks)?;
    let cpu_changes = cpu_end - cpu_changes_start;
    let lg_cpu_changes = cpu_seconds(self_pid, ticks)? - lg_cpu_changes_start;
    println!(
        "changes phase: {:.1}s wall; server CPU {cpu_changes:.2}s ({:.0}% of it idle polling at the rate measured after sync), loadgen CPU {lg_cpu_changes:.2}s",
        changes_start.elapsed().as_secs_f64(),
        (idle_cpu_pct / 100.0 * changes_start.elapsed().as_secs_f64() / cpu_changes.max(0.001) * 100.0).min(100.0),
    );
    let cpu_total = cpu_end - cpu_base;
    let rss_end = status_kib(Some(pid), "VmRSS")?;
    // The live heap (voltha-xds only): base, end, per stream, as printed.
    let heap = match heap_base {
        Some(base) => {
            let end = heap_kib(&admin_addr).await;
            [
                format!("{:.1}", base / 1024.0),
                format!("{:.1}", end / 1024.0),
                format!("{:.1}", (end - base) / n as f64),
            ]
        }
        None => ["n/a".to_string(), "n/a".to_string(), "n/a".to_string()],
    };
    println!(
        "steady state after the changes: server RSS {:.1} MiB = {:.1} KiB/stream over the baseline; live heap {} -> {} MiB = {} KiB/stream",
        mib(rss_end),
        (rss_end as f64 - rss_base as f64) / n as f64,
        heap[0],
        heap[1],
        heap[2]
    );
    let hwm = status_kib(Some(pid), "VmHWM")?;
    let lg_hwm = status_kib(None, "VmHWM")?;

    // 6. Report.
    let o = stats(&all);
    let log_text = if peer.is_none() {
        std::fs::read_to_string(&log_file).unwrap_or_default()
    } else {
        String::new()
    };
    let warns: Vec<&str> = log_text.lines().filter(|l| l.contains("\"level\":\"WARN\"")).collect();
    let errors: Vec<&str> = log_text.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
    let avg_res = if tally.update_pushes > 0 {
        tally.update_resources as f64 / tally.update_pushes as f64
    } else {
        0.0
    };
    let redundant: Vec<String> = tally.redundant.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let publish = stats(&publish_ms);
    let push = stats(&push_ms);
    println!(
        "anomalies: stream failures {}, pushes without the new address {}, extra EDS pushes {}, EDS pushes before any change {}, redundant responses [{}]; avg resources per update push {avg_res:.2}",
        tally.failures,
        tally.missing_content,
        dup_total,
        tally.updates_before_change,
        redundant.join(" ")
    );
    if peer.is_none() {
        println!("server log: {} WARN, {} ERROR lines", warns.len(), errors.len());
    } else {
        println!("server log: n/a ({})", log_file.display());
    }
    for l in warns.iter().chain(errors.iter()).take(5) {
        println!("  {l}");
    }
    println!(
        "SUMMARY server={server_name} mode={} streams={n} conns={conns} clusters={} endpoints={} sync_s={sync_s:.2} rss_base_mib={:.1} rss_idle_mib={:.1} kib_per_stream={per_stream_kib:.1} rss_end_mib={:.1} peak_rss_mib={:.1} changes={} conv_p50_ms={:.1} conv_p99_ms={:.1} conv_max_ms={:.1} publish_p50_ms={} cpu_sync_s={cpu_sync:.2} cpu_changes_s={cpu_changes:.2} cpu_total_s={cpu_total:.2} idle_cpu_pct={idle_cpu_pct:.1} loadgen_rss_mib={:.1} loadgen_peak_mib={:.1} heap_base_mib={} heap_idle_mib={heap_idle} heap_end_mib={} heap_kib_per_stream={} push_p50_ms={} push_max_ms={} ack_delay_ms={} eds_ack_bytes={}",
        args.mode.name(),
        args.clusters,
        args.endpoints,
        mib(rss_base),
        mib(rss_idle),
        mib(rss_end),
        mib(hwm),
        args.changes,
        o.p50,
        o.p99,
        o.max,
        if peer.is_none() {
            format!("{:.1}", publish.p50)
        } else {
            "n/a".into()
        },
        mib(lg_rss),
        mib(lg_hwm),
        heap[0],
        heap[1],
        heap[2],
        if peer.is_none() {
            format!("{:.1}", push.p50)
        } else {
            "n/a".into()
        },
        if peer.is_none() {
            format!("{:.1}", push.max)
        } else {
            "n/a".into()
        },
        args.ack_delay_ms,
        shared.eds_ack_bytes.load(Ordering::Relaxed),
    );
    if let Some(storm) = &storm {
        println!("{}", storm.summary(args.mode.name(), n, conns));
    }
    println!("| mode | streams | conns | clusters x eps | sync s | RSS base MiB | KiB/stream | peak RSS MiB | conv p50 ms | p99 ms | max ms | CPU s sync/changes | loadgen RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {n} | {conns} | {}x{} | {sync_s:.2} | {:.1} | {per_stream_kib:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {cpu_sync:.2}/{cpu_changes:.2} | {:.1} |",
        args.mode.name(),
        args.clusters,
        args.endpoints,
        mib(rss_base),
        mib(hwm),
        o.p50,
        o.p99,
        o.max,
        mib(lg_rss),
    );

    for t in &tasks {
        t.abort();
    }
    drop(server);
    Ok(())
}
