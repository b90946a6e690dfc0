#!/usr/bin/env bash
# The before/after table of docs/benchmarks.md ("Latency and memory per Envoy, before and
# after"): each row run against the BEFORE server binary, then against this tree's, one after
# the other. The load generator and the switch benchmark are this tree's for both (the older
# load generator had neither one connection per Envoy nor 500 endpoints per cluster).
#
#   BEFORE=/path/to/old/voltha-xds scripts/bench-before-after.sh
#
# ROWS (default "kv file mem mem100 std push10k"):
#   kv      KV write -> first call on the new core through a real Envoy (Consul double, etcd,
#           file; scripts/bench-kv-call.sh), 20 changes
#   file    the assignment file replaced -> all 1,000 SotW streams hold the new EDS, with the
#           embedded default's poll_interval 250ms and debounce quiet 50ms, VOLTHA profile
#   mem     memory per Envoy: 1,000 SotW streams, one per connection, VOLTHA profile
#   mem100  the same, 100 streams per connection (a layout no Envoy uses)
#   std     1,000 SotW streams, 1,000 clusters x 10 endpoints, 10 changes (nothing worse)
#   push10k 10,000 Envoys, one connection each, Delta then SotW, VOLTHA profile: 5 changes,
#           then the reconnect storm after a restart (--restart: the STORM line, RSS peak)
#   sync10k the same run (both rows come from it)
# Environment: CARGO_TARGET_DIR, ENVOY_BIN as for the other scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
: "${BEFORE:?set BEFORE to the voltha-xds binary of the commit before}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --bin voltha-xds --bin voltha-fake-core --example loadgen --example switchbench
after="$CARGO_TARGET_DIR/release/voltha-xds"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
voltha=(--clusters 2 --endpoints 500)
summary() { grep -E '^(SUMMARY|STORM)' || true; }
for row in ${ROWS:-kv file mem mem100 std push10k}; do
  for which in before after; do
    bin="$BEFORE"; [ "$which" = after ] && bin="$after"
    echo "=== $row, $which ($bin) ==="
    case "$row" in
      # The shipped configurations' grpc_services came after the commit before: left out for it.
      kv) envoy_only=""; [ "$which" = before ] && envoy_only=1
          ENVOY_ONLY="$envoy_only" SERVER_BIN="$bin" scripts/bench-kv-call.sh | grep -E '^(===|\| xDS)' || true ;;
      file) "$loadgen" --server-bin "$bin" --mode sotw --streams 1000 "${voltha[@]}" \
              --poll-interval 250ms --debounce-quiet 50ms --changes 20 | summary ;;
      mem) "$loadgen" --server-bin "$bin" --mode sotw --streams 1000 "${voltha[@]}" --changes 5 \
             --client-threads 1 | summary ;;
      mem100) "$loadgen" --server-bin "$bin" --mode sotw --streams 1000 "${voltha[@]}" --changes 5 \
                --client-threads 1 --streams-per-conn 100 | summary ;;
      std) "$loadgen" --server-bin "$bin" --mode sotw --streams 1000 --changes 10 | summary ;;
      push10k|sync10k) for mode in delta sotw; do
                 "$loadgen" --server-bin "$bin" --mode "$mode" --streams 10000 "${voltha[@]}" --changes 5 \
                   --restart --client-threads 1 | summary
               done ;;
      *) echo "unknown row $row" >&2; exit 2 ;;
    esac
  done
done
