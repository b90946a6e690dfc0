#!/usr/bin/env bash
# Convergence benchmark: builds voltha-xds and the load generator (examples/loadgen/main.rs) in
# release, then runs the standard set of simulated-Envoy loads against a fresh server each, each
# simulated Envoy on its own HTTP/2 connection (as Envoy does):
#   sotw 1000, delta 10000, sotw 100, delta 100 on 1000 clusters x 10 endpoints, and sotw 1000,
#   delta 10000 on the VOLTHA profile (2 clusters x 500 endpoints: 500 cores); 5 changes.
# Prints each run's report, then one markdown table of all runs. Then, for each load, the push
# alone (published snapshot to the last stream) beside the machine's limit for the same bytes
# over loopback (examples/rawlimit.rs, same number of streams, same 100 streams per socket, and
# one socket per stream). Exits non-zero if a run failed.
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/voltha-xds/target),
#   RUNS ("mode:streams[:CLUSTERSxENDPOINTS] ..." to override the set; without the profile,
#   CLUSTERS x ENDPOINTS, default 1000x10), CLUSTERS, ENDPOINTS, CHANGES;
#   extra arguments are passed to every loadgen run (e.g. --streams-per-conn 100 for the
#   earlier tables' layout of 100 streams per connection, which no Envoy uses).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --bin voltha-xds
cargo build --release --example loadgen --example rawlimit

server="$CARGO_TARGET_DIR/release/voltha-xds"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
rawlimit="$CARGO_TARGET_DIR/release/examples/rawlimit"
runs="${RUNS:-sotw:1000 sotw:1000:2x500 delta:10000 delta:10000:2x500 sotw:100 delta:100}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

header=""
rows=()
pushes=()
failed=0
for run in $runs; do
  IFS=: read -r mode streams profile <<<"$run"
  profile="${profile:-${CLUSTERS:-1000}x${ENDPOINTS:-10}}"
  clusters="${profile%x*}"
  endpoints="${profile#*x}"
  echo "=== $mode, $streams streams, $clusters clusters x $endpoints endpoints (nofile limit $(ulimit -n)) ==="
  if "$loadgen" --server-bin "$server" --mode "$mode" --streams "$streams" \
      --clusters "$clusters" --endpoints "$endpoints" --changes "${CHANGES:-5}" "$@" \
      | tee "$out"; then
    header="$(grep '^| mode' "$out" | head -1)"
    rows+=("$(grep '^| ' "$out" | grep -v '^| mode' | grep -v '^|---' | tail -1)")
    summary="$(grep '^SUMMARY' "$out" | tail -1)"
    key() { grep -o " $1=[^ ]*" <<<"$summary" | cut -d= -f2; }
    pushes+=("$mode $streams $endpoints $(key push_p50_ms) $(key push_max_ms)")
  else
    echo "!!! run $mode/$streams failed" >&2
    rows+=("| $mode | $streams | FAILED (see above) |")
    failed=1
  fi
  echo
done

echo "=== results ==="
echo "${header:-| mode | streams | ... |}"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"

echo
echo "=== the push alone beside the loopback limit (examples/rawlimit.rs) ==="
echo "| mode | streams | push p50 ms | push max ms | raw, 100 streams per socket: p50 ms | raw, one socket per stream: p50 ms | push p50 / raw (100 per socket) | push p50 / raw (one per socket) |"
echo "|---|---|---|---|---|---|---|---|"
for p in "${pushes[@]}"; do
  read -r mode streams endpoints push50 pushmax <<<"$p"
  raw="$("$rawlimit" --streams "$streams" --endpoints "$endpoints" || true)"
  r100="$(grep '^SUMMARY' <<<"$raw" | grep 'streams_per_socket=100 ' | grep -o 'p50_ms=[^ ]*' | cut -d= -f2 || true)"
  r1="$(grep '^SUMMARY' <<<"$raw" | grep 'streams_per_socket=1 ' | grep -o 'p50_ms=[^ ]*' | cut -d= -f2 || true)"
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'; }
  echo "| $mode | $streams | $push50 | $pushmax | ${r100:-n/a} | ${r1:-n/a} | $(ratio "$push50" "${r100:-0}") | $(ratio "$push50" "${r1:-0}") |"
done
exit "$failed"
