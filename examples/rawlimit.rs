//! The machine's limit for an xDS push, with no xDS in it: the time to deliver the bytes one
//! push carries to N receivers over loopback TCP, from one process writing to the other side.
//!
//! ```text
//! cargo run --release --example rawlimit -- --streams 1000
//! ```
//!
//! The bytes per receiver are those of a State of the World push of one endpoint change in the
//! load generator's scenario (`examples/loadgen/main.rs`): one gRPC message holding a
//! `DiscoveryResponse` with one `ClusterLoadAssignment` of `--endpoints` endpoints (a 16-digit
//! version, a short nonce), plus a 9-byte HTTP/2 DATA frame header. Two layouts are measured,
//! each `--rounds` times:
//! - *one socket per stream*: N sockets, each receiving the bytes once;
//! - *100 streams per socket* (the load generator's layout): N/100 sockets, each receiving the
//!   bytes 100 times in one write.
//!
//! A round starts when every writer is released at once and ends when every receiver holds all
//! its bytes; the time of the round is when the last receiver completes (what "all N streams
//! hold the new version" means in the load generator). Reported: p50 and max over the rounds.
//! Writer and readers share one tokio runtime with two worker threads, as the server and the
//! load generator share the machine's two cores.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use common::percentile;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "Loopback TCP limit: the bytes of one xDS push delivered to N receivers, no xDS logic")]
struct Args {
    /// Receivers (simulated streams).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Endpoints in the pushed cluster (sets the bytes per stream).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Rounds per layout.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Streams per socket in the multiplexed layout.
    #[arg(long, default_value_t = 100)]
    streams_per_socket: usize,
}

/// The bytes one SotW stream receives for a one-endpoint change: HTTP/2 DATA frame header, gRPC
/// message prefix, `DiscoveryResponse` with one `ClusterLoadAssignment`.
fn push_bytes(endpoints: usize) -> Vec<u8> {
    let lb_endpoints = (0..endpoints)
        .map(|j| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: format!("10.0.0.{}", j + 1),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(50556)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: "c0000".into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    let type_url = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".to_string();
    let resp = DiscoveryResponse {
        version_info: "0123456789abcdef".into(),
        resources: vec![Any {
            type_url: type_url.clone(),
            value: cla.encode_to_vec(),
        }],
        type_url,
        nonce: "42".into(),
        ..Default::default()
    };
    let msg = resp.encode_to_vec();
    let grpc_len = 5 + msg.len();
    let mut out = Vec::with_capacity(9 + grpc_len);
    out.extend_from_slice(&(grpc_len as u32).to_be_bytes()[1..]); // HTTP/2 frame: 24-bit length
    out.extend_from_slice(&[0x0, 0x0, 0, 0, 0, 1]); // type DATA, flags, stream id
    out.push(0); // gRPC: not compressed
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// One layout: `sockets` connections, each receiving `payload` once per round. Returns the round
/// times in ms.
async fn layout(sockets: usize, payload: Vec<u8>, rounds: usize) -> Result<Vec<f64>> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding")?;
    let addr = listener.local_addr()?;
    let (go_tx, go_rx) = watch::channel((0usize, Instant::now()));
    let payload = std::sync::Arc::new(payload);
    let len = payload.len();
    let mut readers = Vec::with_capacity(sockets);
    let mut writers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let c = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        c.set_nodelay(true)?;
        let (s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .context("accept timed out")??;
        s.set_nodelay(true)?;
        readers.push(c);
        writers.push(s);
    }
    // Writers: wait for round r, write the payload.
    let mut wtasks = tokio::task::JoinSet::new();
    for mut s in writers {
        let mut rx = go_rx.clone();
        let payload = payload.clone();
        wtasks.spawn(async move {
            for r in 1..=rounds {
                while rx.borrow_and_update().0 < r {
                    if rx.changed().await.is_err() {
                        return Ok(());
                    }
                }
                s.write_all(&payload).await?;
            }
            Ok::<_, std::io::Error>(())
        });
    }
    // Readers: read the payload each round, report when done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut rtasks = tokio::task::JoinSet::new();
    for mut c in readers {
        let done_tx = done_tx.clone();
        rtasks.spawn(async move {
            let mut buf = vec![0u8; len];
            for r in 1..=rounds {
                c.read_exact(&mut buf).await?;
                let _ = done_tx.send((r, Instant::now()));
            }
            Ok::<_, std::io::Error>(())
        });
    }
    drop(done_tx);
    let mut times = Vec::with_capacity(rounds);
    for r in 1..=rounds {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        go_tx.send((r, start)).context("writers gone")?;
        let mut last = start;
        for _ in 0..sockets {
            let (round, at) = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
                .await
                .context("a round took over 60 s")?
                .context("a reader failed")?;
            anyhow::ensure!(round == r, "a reader reported round {round} during round {r}");
            last = last.max(at);
        }
        times.push((last - start).as_secs_f64() * 1e3);
    }
    while let Some(r) = wtasks.join_next().await {
        r??;
    }
    while let Some(r) = rtasks.join_next().await {
        r??;
    }
    Ok(times)
}

async fn run(args: Args) -> Result<()> {
    let one = push_bytes(args.endpoints);
    let n = args.streams;
    let per = args.streams_per_socket.max(1);
    println!(
        "rawlimit: {n} streams, {} bytes per stream (one SotW push of a {}-endpoint cluster), {} rounds",
        one.len(),
        args.endpoints,
        args.rounds
    );
    println!("| layout | streams | sockets | bytes per socket | round p50 ms | round max ms |");
    println!("|---|---|---|---|---|---|");
    let layouts = [(n, 1usize), (n.div_ceil(per), per)];
    let fd_limit = open_files_limit();
    for (sockets, streams_per) in layouts {
        let payload: Vec<u8> = one.repeat(streams_per);
        let bytes = payload.len();
        // Both ends of every socket are in this process.
        let needed = 2 * sockets as u64 + 64;
        if fd_limit.is_some_and(|l| needed > l) {
            println!(
                "| {streams_per} per socket | {n} | {sockets} | {bytes} | skipped: needs {needed} file descriptors, the limit is {} | |",
                fd_limit.unwrap_or_default()
            );
            continue;
        }
        let mut t = layout(sockets, payload, args.rounds).await?;
        t.sort_by(f64::total_cmp);
        println!(
            "| {} per socket | {n} | {sockets} | {bytes} | {:.2} | {:.2} |",
            streams_per,
            percentile(&t, 0.5),
            t.last().copied().unwrap_or(f64::NAN)
        );
        println!(
            "SUMMARY streams={n} streams_per_socket={streams_per} sockets={sockets} bytes_per_socket={bytes} p50_ms={:.3} max_ms={:.3}",
            percentile(&t, 0.5),
            t.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// The soft limit on open files (`/proc/self/limits`), if it says.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> std::process::ExitCode {
    common::main_with("rawlimit", Some(2), run(Args::parse()))
}
