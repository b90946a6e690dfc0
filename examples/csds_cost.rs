//! CSDS cost: what one `FetchClientStatus` answer costs the server, and a burst of them, with a
//! known number of Envoys connected to the VOLTHA profile.
//!
//! ```text
//! cargo run --release --example csds_cost -- --envoys 1000 --cores 500 --burst 20
//! ```
//!
//! In process, no network: the embedded VOLTHA profile (`config/voltha-xds.yaml`) with an
//! assignment of `--cores` cores is translated and published as `serve` does; `--envoys`
//! stream statuses are registered as Envoys of group `voltha` that hold every resource (CDS and
//! LDS wildcard, EDS and RDS by name, all ACKed). The CSDS service is then called through its
//! tower interface, as the HTTP/2 server calls it, with `FetchClientStatus` requests:
//!
//! - *one answer*: the time to build it (until the service returns its response), the heap it
//!   holds before any byte is sent, then the time to take every DATA chunk and their total;
//! - *a burst*: `--burst` requests made at once, every answer held unsent (a client that reads
//!   slowly), the heap they hold together, then all sent.
//!
//! Heap figures are live bytes (allocated and not freed), counted by a wrapper around the
//! allocator, so they do not depend on what the allocator keeps from the system. The CSDS
//! limits are raised for the measurement (`max_response_bytes` to 4 GiB, the concurrency to
//! the burst), so that what is measured is the answer, not the refusal.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::Parser;
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::Service;
use voltha_xds::config::Config;
use voltha_xds::xds::cache::Cache;
use voltha_xds::xds::csds::{Csds, CsdsLimits};
use voltha_xds::xds::names::NameSets;
use voltha_xds::xds::resources::ResourceType;
use voltha_xds::xds::server::XdsServer;
use voltha_xds::xds::status::{ClientTable, Registration, TypeStatus};

#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

#[derive(Parser, Debug)]
#[command(about = "What CSDS answers cost: build time, heap held, bytes sent")]
struct Args {
    /// Envoys registered (group voltha, every resource held).
    #[arg(long, default_value_t = 1000)]
    envoys: usize,
    /// Cores in the assignment (endpoints of each of the two VOLTHA clusters).
    #[arg(long, default_value_t = 500)]
    cores: usize,
    /// Requests made at once in the burst.
    #[arg(long, default_value_t = 20)]
    burst: usize,
    /// Leave the resource contents out (`exclude_resource_contents`).
    #[arg(long)]
    lean: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    common::main_with("csds_cost", None, run(args))
}

const FETCH: &str = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus";

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The embedded profile with an assignment of `cores` cores, published into a cache.
async fn published(cores: usize, dir: &std::path::Path) -> Result<(Config, Cache)> {
    let assignment = dir.join("assignment.json");
    let doc: serde_json::Map<String, serde_json::Value> = (0..cores)
        .map(|i| {
            let host = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            (
                format!("{:04}", i + 1),
                serde_json::json!({"id": format!("vcore-{i}"), "host": host}),
            )
        })
        .collect();
    std::fs::write(&assignment, serde_json::to_vec(&doc)?)?;
    let yaml =
        voltha_xds::config::EMBEDDED_DEFAULT.replace("config/assignment.json", &assignment.display().to_string());
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow!("{e}"))?;
    let model = voltha_xds::sources::read_once(&config).await.map_err(|e| anyhow!(e))?;
    let groups = voltha_xds::translate::translate(&model, &config).map_err(|e| anyhow!("{e}"))?;
    let cache = Cache::new();
    cache
        .publish(&groups, &config.default_group, std::time::Instant::now())
        .map_err(|e| anyhow!("{e}"))?;
    Ok((config, cache))
}

/// `n` Envoys of group `group`, every type ACKed at the current version.
fn envoys(table: &Arc<ClientTable>, cache: &Cache, group: &str, n: usize) -> Result<Vec<Registration>> {
    let snap = cache.current().context("no snapshot")?;
    let g = snap.groups.get(group).context("no such group")?;
    let mut regs = Vec::with_capacity(n);
    let name_sets = NameSets::default();
    for i in 0..n {
        let reg = table.register("sotw", "ads");
        reg.update(|st| {
            st.node_id = format!("olt-{i:05}");
            st.node_cluster = group.to_string();
            st.group = Some(group.to_string());
            for ty in ResourceType::ALL {
                let t = g.get(ty);
                let names: BTreeSet<Arc<str>> = if ty.is_wildcard_type() {
                    BTreeSet::new()
                } else {
                    t.resources.keys().cloned().collect()
                };
                st.types.insert(
                    ty.short(),
                    TypeStatus {
                        subscribed: true,
                        wildcard: ty.is_wildcard_type(),
                        names: names.len(),
                        name_set: name_sets.share(names),
                        last_sent_version: Some(t.version.clone()),
                        last_sent_nonce: Some("1".into()),
                        last_acked_version: Some(t.version.clone()),
                        last_ack_at: Some(SystemTime::now()),
                        responses: 1,
                        acks: 1,
                        ..Default::default()
                    },
                );
            }
        });
        regs.push(reg);
    }
    Ok(regs)
}

fn request(lean: bool) -> Body {
    let m = ClientStatusRequest {
        exclude_resource_contents: lean,
        ..Default::default()
    }
    .encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    let frame: Result<Frame<Bytes>, std::convert::Infallible> = Ok(Frame::data(Bytes::from(out)));
    Body::new(http_body_util::StreamBody::new(futures::stream::iter([frame])))
}

async fn call(svc: &mut Csds, lean: bool) -> Result<tonic::codegen::http::Response<Body>> {
    let req = tonic::codegen::http::Request::builder()
        .uri(FETCH)
        .body(request(lean))
        .context("request")?;
    let resp = match svc.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    if let Some(s) = tonic::Status::from_header_map(resp.headers()) {
        if s.code() != tonic::Code::Ok {
            return Err(anyhow!("refused: {s:?}"));
        }
    }
    Ok(resp)
}

/// Takes every DATA chunk of a response; its bytes.
async fn drain(resp: tonic::codegen::http::Response<Body>) -> Result<usize> {
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.map_err(|e| anyhow!("{e}"))?.into_data() {
            n += d.len();
        }
    }
    Ok(n)
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_config, cache) = published(args.cores, dir.path()).await?;
    let table = Arc::new(ClientTable::default());
    let _regs = envoys(&table, &cache, "voltha", args.envoys)?;
    let server = XdsServer::new(cache)
        .with_clients(table)
        .with_max_streams(100_000)
        .with_csds(CsdsLimits {
            max_concurrent_requests: args.burst.max(1),
            max_response_bytes: u32::MAX as usize,
            ..Default::default()
        });
    let mut svc = Csds::new(server);
    println!(
        "{} Envoys, {} cores, contents {}",
        args.envoys,
        args.cores,
        if args.lean { "excluded" } else { "included" }
    );

    // Warm up once (lazy statics, first allocations).
    drain(call(&mut svc, args.lean).await?).await?;

    let heap0 = ALLOCATOR.allocated();
    let t = Instant::now();
    let resp = call(&mut svc, args.lean).await?;
    let build = t.elapsed();
    let held = ALLOCATOR.allocated().saturating_sub(heap0);
    let t = Instant::now();
    let bytes = drain(resp).await?;
    let send = t.elapsed();
    println!(
        "one answer: {bytes} bytes ({:.1} MiB) on the wire; built in {:.1} ms holding {:.2} MiB of heap before sending; chunks taken in {:.1} ms",
        mib(bytes),
        build.as_secs_f64() * 1e3,
        mib(held),
        send.as_secs_f64() * 1e3
    );

    let heap0 = ALLOCATOR.allocated();
    let t = Instant::now();
    let mut held_resps = Vec::with_capacity(args.burst);
    for _ in 0..args.burst {
        held_resps.push(call(&mut svc, args.lean).await?);
    }
    let build = t.elapsed();
    let held = ALLOCATOR.allocated().saturating_sub(heap0);
    let mut total = 0;
    for r in held_resps {
        total += drain(r).await?;
    }
    let after = ALLOCATOR.allocated().saturating_sub(heap0);
    println!(
        "burst of {}: built in {:.1} ms, holding {:.2} MiB of heap unsent; {:.1} MiB sent; {:.2} MiB held after",
        args.burst,
        build.as_secs_f64() * 1e3,
        mib(held),
        mib(total),
        mib(after)
    );
    println!(
        "SUMMARY envoys={} cores={} lean={} answer_bytes={bytes} burst={} burst_held_mib={:.2}",
        args.envoys,
        args.cores,
        args.lean,
        args.burst,
        mib(held)
    );
    Ok(())
}
