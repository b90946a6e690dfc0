#!/usr/bin/env bash
# KV write -> first call answered by the new core, through a real Envoy, for each source: the
# file (the embedded default profile), Consul (the Consul double behind the shipped
# config/voltha-consul.yaml) and etcd (a real etcd behind config/voltha-etcd.yaml). Each is
# examples/switchbench.rs's xDS path (--path xds --source S); p50 and max over --changes.
# Builds voltha-xds, the fake core and the benchmark in release (as scripts/bench-switch.sh).
# Extra arguments go to every run (default here: --changes 20 --rate 1000 --interval-ms 1000;
# 1,000 calls/s puts a call through Envoy every millisecond, so the switch is timed to 1 ms).
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/voltha-xds/target), ENVOY_BIN,
#   SOURCES (default "file consul etcd"), SERVER_BIN (another voltha-xds binary to measure, e.g.
#   an older build for a before/after table; the benchmark itself is this tree's), ENVOY_ONLY=1
#   (the shipped configurations without their grpc_services, for a server built before them).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
export ENVOY_BIN="${ENVOY_BIN:-$PWD/.venv/bin/envoy}"
cargo build --release --bin voltha-xds --bin voltha-fake-core --example switchbench
bench="$CARGO_TARGET_DIR/release/examples/switchbench"
server="${SERVER_BIN:-$CARGO_TARGET_DIR/release/voltha-xds}"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--changes 20 --rate 1000 --interval-ms 1000)
[ "${ENVOY_ONLY:-}" != 1 ] || args+=(--envoy-only)
failed=0
for source in ${SOURCES:-file consul etcd}; do
  echo "=== $source ==="
  "$bench" --path xds --source "$source" --server-bin "$server" "${args[@]}" || failed=1
done
exit "$failed"
