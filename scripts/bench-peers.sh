#!/usr/bin/env bash
# Comparison against other Rust xDS servers from crates.io, with the project's load generator
# (examples/loadgen/main.rs) driving each in turn with the same streams and the same changes.
#
# Peers: nebucloud-xds and rust-control-plane. For each, a small wrapper project is written into
# a temporary directory (removed at exit) that depends on the peer crate from crates.io; it is
# built in release with its target dir under $HOME/.cache/voltha-xds/peers-target (re-runs are
# fast). Each wrapper binary takes `--listen ADDR --endpoints FILE`: it reads the endpoints file
# (JSON: set name -> ["ip:port", ..]), builds one EDS Cluster (ADS config source) and one
# ClusterLoadAssignment per set, puts them in the peer's snapshot cache for the load generator's
# node ids (sim-0 .. sim-{N-1}, N from LOADGEN_STREAMS, which loadgen sets), serves ADS on the
# address, and polls the file every 10 ms, setting a new snapshot (EDS version = a counter) on
# change. What the two wrappers share (arguments, the endpoints file, the RSS cap, the Cluster and
# ClusterLoadAssignment builders) is written once, as shared.rs, and included by both. No peer
# code is kept in the repository.
#
# Then, for every "mode:streams" in RUNS (default: sotw and delta at 100, 1000 and 10000
# streams), runs voltha-xds (release) and each peer with the same loadgen arguments (1000
# clusters x 10 endpoints, 5 one-endpoint changes) and prints one markdown table with the ratio
# of each peer to voltha-xds (convergence p50 and server RSS KiB/stream). A run that fails or
# times out gives a FAILED row (with loadgen's error) and the script goes on.
#
# Needs protoc (rust-control-plane's data-plane-api compiles the Envoy protos at build time):
# installed with apt-get (Debian's protobuf-compiler) when it is not on PATH and rust-control-plane
# is among SERVERS.
#
# Environment: CARGO_TARGET_DIR (voltha-xds; default $HOME/.cache/voltha-xds/target),
#   PEERS_TARGET_DIR (default $HOME/.cache/voltha-xds/peers-target), RUNS, SERVERS (default
#   "voltha-xds nebucloud-xds rust-control-plane"), CLUSTERS, ENDPOINTS, CHANGES,
#   CONVERGE_TIMEOUT (s, default 30), SYNC_TIMEOUT (s; default 60, 300 from 5000 streams),
#   READY_TIMEOUT (s, default 300: a peer wrapper sets one snapshot per node id before it
#   listens, which takes rust-control-plane tens of seconds at 1000 node ids), PEER_RSS_CAP_MIB
#   (default 12288: a wrapper whose RSS passes it while setting its per-node snapshots stops).
#   Extra arguments are passed to every loadgen run.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
peers_target="${PEERS_TARGET_DIR:-$HOME/.cache/voltha-xds/peers-target}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

runs="${RUNS:-sotw:100 delta:100 sotw:1000 delta:1000 sotw:10000 delta:10000}"
servers="${SERVERS:-voltha-xds nebucloud-xds rust-control-plane}"
if [[ " $servers " == *" rust-control-plane "* ]] && ! command -v protoc >/dev/null; then
  echo "== installing protobuf-compiler (apt-get) for rust-control-plane's build"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq protobuf-compiler >/dev/null ||
    echo "!!! could not install protoc: the rust-control-plane wrapper will fail to build" >&2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- The wrappers. ----

mkdir -p "$work/nebucloud-xds/src" "$work/rust-control-plane/src"
cat > "$work/shared.rs" <<'EOF'
// What both wrappers share, included by each (`include!`) after its own `use` lines, which
// bring the Envoy message types of its peer's crate into scope under the same names.

type Sets = BTreeMap<String, Vec<String>>;

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: 2, // V3
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

fn load_assignment(name: &str, endpoints: &[String]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .filter_map(|e| e.parse::<SocketAddr>().ok())
        .map(|sa| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: sa.ip().to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(sa.port()))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn args() -> (SocketAddr, String) {
    let a: Vec<String> = std::env::args().collect();
    let get = |k: &str| a.iter().position(|x| x == k).and_then(|i| a.get(i + 1)).cloned();
    let listen = get("--listen").and_then(|l| l.parse().ok());
    match (listen, get("--endpoints")) {
        (Some(l), Some(e)) => (l, e),
        _ => {
            eprintln!("usage: {} --listen ADDR --endpoints FILE", a[0]);
            std::process::exit(2)
        }
    }
}

/// The file's identity (inode, size, mtime); its content when that differs from `last`.
fn read(path: &str, last: Option<(u64, u64, i64, i64)>) -> Option<((u64, u64, i64, i64), Sets)> {
    let m = std::fs::metadata(path).ok()?;
    let st = (m.ino(), m.size(), m.mtime(), m.mtime_nsec());
    if Some(st) == last {
        return None;
    }
    let sets = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((st, sets))
}

/// The file's first content, waited for (every 10 ms).
async fn first_read(path: &str) -> ((u64, u64, i64, i64), Sets) {
    loop {
        if let Some(r) = read(path, None) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Resident memory in MiB; the wrapper stops (exit 3) past PEER_RSS_CAP_MIB (default 12288),
/// so that per-node snapshot copies cannot take the machine's memory.
fn check_rss(done: usize, nodes: usize) {
    let cap: u64 = std::env::var("PEER_RSS_CAP_MIB").ok().and_then(|c| c.parse().ok()).unwrap_or(12288);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    if kib / 1024 > cap {
        eprintln!(
            "peer wrapper: RSS {} MiB after {done} of {nodes} node snapshots exceeds the cap of {cap} MiB (PEER_RSS_CAP_MIB)",
            kib / 1024
        );
        std::process::exit(3);
    }
}
EOF
cat > "$work/nebucloud-xds/Cargo.toml" <<'EOF'
[package]
name = "peer-nebucloud-xds"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
nebucloud-xds = { version = "=0.1.0", default-features = false }
prost = "0.13"
prost-types = "0.13"
serde_json = "1"
tokio = { version = "1", features = ["full"] }

[profile.release]
debug = 1
EOF
cat > "$work/nebucloud-xds/src/main.rs" <<'EOF'
//! nebucloud-xds behind the load generator's peer interface:
//! `peer-nebucloud-xds --listen ADDR --endpoints FILE` (node ids sim-0.. sim-{LOADGEN_STREAMS-1}).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use nebucloud_xds::prelude::*;
use nebucloud_xds::types::envoy::config::cluster::v3::{cluster, Cluster};
use nebucloud_xds::types::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ConfigSource, SocketAddress,
};
use nebucloud_xds::types::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use prost::Message;

include!("../../shared.rs");

/// A resource as nebucloud-xds wants it: name, type and the encoded message.
#[derive(Debug)]
struct Encoded {
    name: String,
    any: prost_types::Any,
}

impl Resource for Encoded {
    fn type_url(&self) -> &str {
        &self.any.type_url
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn encode(&self) -> Result<prost_types::Any, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.any.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn boxed(type_url: &str, name: &str, value: Vec<u8>) -> BoxResource {
    Arc::new(Encoded {
        name: name.to_string(),
        any: prost_types::Any {
            type_url: type_url.to_string(),
            value,
        },
    })
}

/// One snapshot for every node: CDS keeps its version while the set of clusters is unchanged,
/// EDS takes the counter.
fn snapshot(sets: &Sets, cds_version: &str, eds_version: &str) -> Snapshot {
    let clusters: Vec<BoxResource> = sets
        .keys()
        .map(|n| boxed(TypeUrl::CLUSTER, n, cluster(n).encode_to_vec()))
        .collect();
    let cla: Vec<BoxResource> = sets
        .iter()
        .map(|(n, eps)| boxed(TypeUrl::ENDPOINT, n, load_assignment(n, eps).encode_to_vec()))
        .collect();
    Snapshot::builder()
        .version(eds_version)
        .resources_with_version(TypeUrl::CLUSTER.into(), cds_version, clusters)
        .resources_with_version(TypeUrl::ENDPOINT.into(), eds_version, cla)
        .build()
}

#[tokio::main]
async fn main() {
    let (listen, file) = args();
    let nodes: usize = std::env::var("LOADGEN_STREAMS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    // The cache is keyed by NodeHash::from_id(node.id), and the ADS service computes that hash
    // itself: every node id needs its own entry (the same Snapshot, shared by Arc, is not
    // possible either: set_snapshot takes the Snapshot by value, so each node gets a clone).
    let node_hashes: Vec<NodeHash> = (0..nodes).map(|i| NodeHash::from_id(&format!("sim-{i}"))).collect();
    let cache = Arc::new(ShardedCache::new());
    let mut counter = 0u64;
    let mut cds = (String::new(), Vec::<String>::new());
    let publish = |sets: &Sets, counter: u64, cds: &mut (String, Vec<String>)| {
        let names: Vec<String> = sets.keys().cloned().collect();
        if names != cds.1 {
            *cds = (counter.to_string(), names);
        }
        let snap = snapshot(sets, &cds.0, &counter.to_string());
        for (i, h) in node_hashes.iter().enumerate() {
            cache.set_snapshot(*h, snap.clone());
            if i % 32 == 31 {
                check_rss(i + 1, node_hashes.len());
            }
        }
    };
    // The first snapshot before serving.
    let (first, sets) = first_read(&file).await;
    counter += 1;
    publish(&sets, counter, &mut cds);
    let mut stamp = Some(first);
    let server = XdsServer::builder()
        .cache(Arc::clone(&cache))
        .enable_sotw()
        .enable_delta()
        .disable_metrics()
        .build()
        .expect("server configuration");
    tokio::spawn(async move {
        if let Err(e) = server.serve(listen).await {
            eprintln!("serve: {e}");
            std::process::exit(1);
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some((st, sets)) = read(&file, stamp) {
            counter += 1;
            publish(&sets, counter, &mut cds);
            stamp = Some(st);
        }
    }
}

EOF
cat > "$work/rust-control-plane/Cargo.toml" <<'EOF'
[package]
name = "peer-rust-control-plane"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
rust-control-plane = "=0.1.2"
data-plane-api = "0.1.1"
tonic = "0.8"
serde_json = "1"
tokio = { version = "1", features = ["full"] }

[profile.release]
debug = 1
EOF
cat > "$work/rust-control-plane/src/main.rs" <<'EOF'
//! rust-control-plane behind the load generator's peer interface:
//! `peer-rust-control-plane --listen ADDR --endpoints FILE` (node ids sim-0.. sim-{LOADGEN_STREAMS-1}).
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use data_plane_api::envoy::config::cluster::v3::{cluster, Cluster};
use data_plane_api::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ConfigSource, SocketAddress,
};
use data_plane_api::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use data_plane_api::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use rust_control_plane::cache::Cache;
use rust_control_plane::service::common::Service;
use rust_control_plane::snapshot::{type_url, Resource, Resources, Snapshot};

include!("../../shared.rs");

/// One snapshot for every node: CDS keeps its version while the set of clusters is unchanged,
/// EDS takes the counter.
fn snapshot(sets: &Sets, cds_version: &str, eds_version: &str) -> Snapshot {
    let mut clusters = Resources::new(cds_version.to_string());
    let mut cla = Resources::new(eds_version.to_string());
    for (n, eps) in sets {
        clusters.items.insert(n.clone(), Resource::Cluster(cluster(n)));
        cla.items.insert(n.clone(), Resource::Endpoint(load_assignment(n, eps)));
    }
    let mut s = Snapshot { resources: HashMap::new() };
    s.insert(type_url::CLUSTER.to_string(), clusters);
    s.insert(type_url::ENDPOINT.to_string(), cla);
    s
}

#[tokio::main]
async fn main() {
    let (listen, file) = args();
    let nodes: usize = std::env::var("LOADGEN_STREAMS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    // The cache is keyed by node.id (no node-hash hook): every node id gets its own copy.
    let node_ids: Vec<String> = (0..nodes).map(|i| format!("sim-{i}")).collect();
    // ads = false: with ads = true the cache's ADS consistency check holds back a wildcard CDS
    // request (no resource names) forever, so the first CDS response never comes.
    let cache = Arc::new(Cache::new(false));
    let mut counter = 0u64;
    let mut cds = (String::new(), Vec::<String>::new());
    let publish = |sets: Sets, counter: u64, cds: &mut (String, Vec<String>)| {
        let names: Vec<String> = sets.keys().cloned().collect();
        if names != cds.1 {
            *cds = (counter.to_string(), names);
        }
        let snap = snapshot(&sets, &cds.0, &counter.to_string());
        let cache = Arc::clone(&cache);
        let node_ids = node_ids.clone();
        async move {
            for (i, id) in node_ids.iter().enumerate() {
                cache.set_snapshot(id, snap.clone()).await;
                if i % 32 == 31 {
                    check_rss(i + 1, node_ids.len());
                }
            }
        }
    };
    // The first snapshot before serving.
    let (first, sets) = first_read(&file).await;
    counter += 1;
    publish(sets, counter, &mut cds).await;
    let mut stamp = Some(first);
    let service = Service::new(Arc::clone(&cache));
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(service))
            .serve(listen)
            .await;
        if let Err(e) = r {
            eprintln!("serve: {e}");
        }
        std::process::exit(1);
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some((st, sets)) = read(&file, stamp) {
            counter += 1;
            publish(sets, counter, &mut cds).await;
            stamp = Some(st);
        }
    }
}

EOF

# ---- Builds. ----

cargo build --release --bin voltha-xds --example loadgen
server="$CARGO_TARGET_DIR/release/voltha-xds"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"

declare -A peer_bin peer_error peer_version
for peer in nebucloud-xds rust-control-plane; do
  case " $servers " in *" $peer "*) ;; *) continue ;; esac
  echo "=== building the $peer wrapper"
  if (cd "$work/$peer" && CARGO_TARGET_DIR="$peers_target" cargo build --release 2>&1 | tee "$work/$peer.build.log" | tail -5; exit "${PIPESTATUS[0]}"); then
    peer_bin[$peer]="$peers_target/release/peer-$peer"
  else
    peer_error[$peer]="build failed: $(grep -m1 '^error' "$work/$peer.build.log" || tail -1 "$work/$peer.build.log")"
    echo "!!! $peer: ${peer_error[$peer]}" >&2
  fi
  peer_version[$peer]="$(grep -A1 "^name = \"$peer\"" "$work/$peer/Cargo.lock" 2>/dev/null | sed -n 's/^version = "\(.*\)"/\1/p' || true)"
  echo "$peer ${peer_version[$peer]:-?}"
done

# ---- Runs. ----

# summary KEY: the value of KEY= on loadgen's SUMMARY line in $out.
summary() { grep '^SUMMARY ' "$out" | tail -1 | tr ' ' '\n' | sed -n "s/^$1=//p"; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^-?[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b; else printf "n/a" }'
}

out="$work/run.out"
rows=()
failed=0
for run in $runs; do
  mode="${run%%:*}"
  streams="${run##*:}"
  sync_timeout="${SYNC_TIMEOUT:-$([ "$streams" -ge 5000 ] && echo 300 || echo 60)}"
  converge_timeout="${CONVERGE_TIMEOUT:-30}"
  ready_timeout="${READY_TIMEOUT:-300}"
  changes="${CHANGES:-5}"
  # The whole run, bounded: readiness, sync, settle, the changes and their pauses, a margin.
  limit=$((ready_timeout + sync_timeout + changes * (converge_timeout + 1) + 60))
  base_p50=""
  base_kib=""
  for name in $servers; do
    echo "=== $name, $mode, $streams streams (nofile limit $(ulimit -n), run limit ${limit}s) ==="
    if [ "$name" = voltha-xds ]; then
      target=(--server-bin "$server")
    elif [ -n "${peer_bin[$name]:-}" ]; then
      target=(--peer-cmd "${peer_bin[$name]}" --server-name "$name")
    else
      rows+=("| $name | $mode | $streams | FAILED: ${peer_error[$name]:-not built} ||||||||||")
      failed=1
      continue
    fi
    set +e
    timeout --kill-after=10 "$limit" "$loadgen" "${target[@]}" --mode "$mode" --streams "$streams" \
      --clusters "${CLUSTERS:-1000}" --endpoints "${ENDPOINTS:-10}" --changes "$changes" \
      --ready-timeout "$ready_timeout" --sync-timeout "$sync_timeout" --converge-timeout "$converge_timeout" \
      "$@" 2>&1 | tee "$out"
    code="${PIPESTATUS[0]}"
    set -e
    if [ "$code" -eq 0 ]; then
      p50="$(summary conv_p50_ms)"
      kib="$(summary kib_per_stream)"
      if [ "$name" = voltha-xds ]; then
        base_p50="$p50"
        base_kib="$kib"
      fi
      rows+=("| $name | $mode | $streams | $(summary sync_s) | $p50 | $(summary conv_p99_ms) | $(summary conv_max_ms) | $(summary cpu_total_s) | $(summary rss_base_mib) | $(summary peak_rss_mib) | $kib | $(ratio "$p50" "$base_p50") | $(ratio "$kib" "$base_kib") |")
    else
      why="$(grep -m1 '^loadgen: error:' "$out" | sed 's/^loadgen: error: //; s/, source: .*//; s/; log tail:$//' | cut -c1-200 || true)"
      [ "$code" -eq 124 ] && why="killed after ${limit}s${why:+; $why}"
      # The server's own last word, if it panicked or the wrapper stopped itself.
      kept="$(sed -n 's/^kept \([^ ]*\) .*/\1/p' "$out" | tail -1 || true)"
      if [ -n "$kept" ] && [ -f "$kept/server.log" ]; then
        said="$(grep -m1 -A1 -E 'panicked at|^peer wrapper:' "$kept/server.log" | tr '\n' ' ' \
          | sed 's|/[^ ]*/registry/src/[^/]*/||; s/ *$//' | cut -c1-200 || true)"
        [ -n "$said" ] && why="$why; server: $said"
      fi
      echo "!!! $name $mode/$streams failed (exit $code)" >&2
      # A run that synced before it failed still tells its sync time and memory per stream.
      sync="$(sed -n 's/^initial sync: .* in \([0-9.]*\)s; server RSS \([0-9.]*\) -> [0-9.]* MiB = \([0-9.-]*\) KiB\/stream.*/\1 \2 \3/p' "$out" | tail -1 || true)"
      read -r f_sync f_base f_kib <<< "${sync:-- - -}"
      rows+=("| $name | $mode | $streams | $f_sync | FAILED: ${why:-exit $code} | | | | $f_base | | $f_kib | | $(ratio "$f_kib" "$base_kib") |")
      failed=1
    fi
    echo
  done
done

echo "=== results ($(date -u '+%Y-%m-%d %H:%M UTC'), ${CLUSTERS:-1000} clusters x ${ENDPOINTS:-10} endpoints, ${CHANGES:-5} changes) ==="
for peer in "${!peer_version[@]}"; do echo "$peer ${peer_version[$peer]:-?}"; done
echo "| server | mode | streams | sync s | conv p50 ms | p99 ms | max ms | server CPU s | RSS base MiB | peak RSS MiB | RSS KiB/stream | p50 / voltha-xds | KiB/stream / voltha-xds |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$failed"
