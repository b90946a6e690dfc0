#!/usr/bin/env bash
# Convergence benchmark: builds voltha-xds and the load generator (examples/loadgen.rs) in
# release, then runs the standard set of simulated-Envoy loads against a fresh server each:
#   sotw 1000, delta 10000, sotw 100, delta 100 (1000 clusters x 10 endpoints, 5 changes).
# Prints each run's report, then one markdown table of all runs. Exits non-zero if a run failed.
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/voltha-xds/target),
#   RUNS ("mode:streams ..." to override the set), CLUSTERS, ENDPOINTS, CHANGES;
#   extra arguments are passed to every loadgen run (e.g. --streams-per-conn 50).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --bin voltha-xds
cargo build --release --example loadgen

server="$CARGO_TARGET_DIR/release/voltha-xds"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
runs="${RUNS:-sotw:1000 delta:10000 sotw:100 delta:100}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

header=""
rows=()
failed=0
for run in $runs; do
  mode="${run%%:*}"
  streams="${run##*:}"
  echo "=== $mode, $streams streams (nofile limit $(ulimit -n)) ==="
  if "$loadgen" --server-bin "$server" --mode "$mode" --streams "$streams" \
      --clusters "${CLUSTERS:-1000}" --endpoints "${ENDPOINTS:-10}" --changes "${CHANGES:-5}" "$@" \
      | tee "$out"; then
    header="$(grep '^| mode' "$out" | head -1)"
    rows+=("$(grep '^| ' "$out" | grep -v '^| mode' | grep -v '^|---' | tail -1)")
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
exit "$failed"
