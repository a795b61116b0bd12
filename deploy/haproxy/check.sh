#!/usr/bin/env bash
# CI check: deploy/k8s/base/haproxy.cfg is the current rendering of haproxy.cfg.tmpl, and
# both renderings (k8s, and the loopback one the tests use) pass `haproxy -c`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 "$here/render.py" --k8s -o "$tmp/k8s.cfg"
if ! diff -u "$root/deploy/k8s/base/haproxy.cfg" "$tmp/k8s.cfg"; then
  echo "deploy/k8s/base/haproxy.cfg is stale: run" >&2
  echo "  python3 deploy/haproxy/render.py --k8s -o deploy/k8s/base/haproxy.cfg" >&2
  exit 1
fi
python3 "$here/render.py" --listen 127.0.0.1:18000 --monitor 127.0.0.1:18404 \
  --server r0=127.0.0.1:18001/18101 --server r1=127.0.0.1:18002/18102 --server r2=127.0.0.1:18003 \
  -o "$tmp/test.cfg"
if ! command -v haproxy >/dev/null; then
  echo "check.sh: haproxy not installed (tools/install-deps.sh): rendering is current," \
       "configs not validated" >&2
  exit 1
fi
haproxy -c -q -f "$tmp/test.cfg"
haproxy -c -q -f "$tmp/k8s.cfg"
echo "haproxy.cfg: current and valid (k8s and test renderings)"
