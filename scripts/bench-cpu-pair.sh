#!/usr/bin/env bash
# Server CPU per change of two server binaries, measured side by side: each driven by its own
# load generator, both started at once, so that both runs see the same machine (this
# machine's speed drifts by up to 20 % between runs minutes apart, more than the differences
# looked for). docs/benchmarks.md ("CPU per change: paired runs").
#
#   scripts/bench-cpu-pair.sh A_BIN B_BIN [PAIRS]
#
# Each pair runs twice, the second time with the order of the start swapped; a pair of the
# same binary (A_BIN A_BIN) shows the method's own spread. Load: 1,000 SotW streams, one
# connection each, 1,000 clusters x 10 endpoints, 20 changes (`loadgen --mode sotw --streams
# 1000 --changes 20`). Prints each run's server CPU for the 20 changes, its conv p50, the load
# generator's CPU, and B's CPU over A's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
a="${1:?A_BIN}"; b="${2:?B_BIN}"; pairs="${3:-2}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --example loadgen
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
field() { grep -o "$2=[0-9.]*" "$1" | head -1 | cut -d= -f2; }
lg() { grep -o 'loadgen CPU [0-9.]*' "$1" | awk '{print $3}'; }
for i in $(seq 1 "$pairs"); do
  for order in ab ba; do
    start() { "$loadgen" --server-bin "$1" --mode sotw --streams 1000 --changes 20 > "$2" 2>&1 & }
    if [ "$order" = ab ]; then
      start "$a" "$out/a.log"; pa=$!; start "$b" "$out/b.log"; pb=$!
    else
      start "$b" "$out/b.log"; pb=$!; start "$a" "$out/a.log"; pa=$!
    fi
    wait "$pa" || { echo "A failed:"; tail -5 "$out/a.log"; exit 1; }
    wait "$pb" || { echo "B failed:"; tail -5 "$out/b.log"; exit 1; }
    ca=$(field "$out/a.log" cpu_changes_s); cb=$(field "$out/b.log" cpu_changes_s)
    printf 'pair %d%s  A cpu %s s (conv p50 %s ms, loadgen %s s)  B cpu %s s (conv p50 %s ms, loadgen %s s)  B/A %s\n' \
      "$i" "$order" "$ca" "$(field "$out/a.log" conv_p50_ms)" "$(lg "$out/a.log")" \
      "$cb" "$(field "$out/b.log" conv_p50_ms)" "$(lg "$out/b.log")" \
      "$(python3 -c "print(f'{$cb/$ca:.3f}')")"
  done
done
