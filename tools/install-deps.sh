#!/usr/bin/env bash
# Installs recurd's build and test dependencies from Debian 12's packages (needs root or
# sudo). Idempotent: packages already present are skipped by apt.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git
  libcjson-dev libxxhash-dev libjemalloc-dev libopenblas-dev
  libpcre2-dev libutf8proc-dev
  clang libclang-rt-14-dev   # libFuzzer targets
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libuv1-dev  # daemon
  python3-grpcio python3-protobuf   # integration tests (Python gRPC client)
  libhiredis-dev redis-server       # statestore's Redis shared tier and its tests
  libssl-dev openssl                # TLS (gRPC port, Redis), SHA-256 of API keys; certificates in the tests
  python3-venv python3-pip          # deploy/check-k8s.sh: pinned kubernetes-validate + checkov in build/deploy-venv
  python3-setuptools python3-wheel  # clients/python: pip install --no-build-isolation (the tests' build of it)
  haproxy                           # the load balancer in front of replicas (deploy/haproxy, test_scaleout)
  libh2o-dev curl                   # the HTTP listener (H2O, libuv build); curl in test_http
  prometheus python3-prometheus-client  # promtool check metrics, the OpenMetrics parser (metrics tests)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# tests/integration/test_openai.py: the official openai client (PyPI, pinned), in a venv made
# from Debian's python3 (--system-site-packages: grpcio stays Debian's; PEP 668 forbids pip
# into the system). Re-made when the pin changes.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/build/openai-venv"
req="$root/tests/integration/requirements-openai.txt"
if ! cmp -s "$req" "$venv/.requirements" 2>/dev/null; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements"
fi
