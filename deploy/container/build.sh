#!/usr/bin/env bash
# Builds the recurd container image with podman (or buildah) from a Debian 12 base that is
# assembled here with debootstrap, since no image registry is reachable:
#   1. debootstrap --variant=minbase bookworm from the Debian mirror -> a root file system
#   2. tar | podman import (or buildah from scratch + copy) -> localhost/recurd-base:bookworm
#   3. podman build / buildah bud -f deploy/container/Containerfile -> localhost/recurd:TAG
# With --smoke it then runs the image (read-only root file system, the state dir on a named
# volume, non-root) and checks grpc.health.v1 (python3-grpcio, raw bytes) and a session turn
# with recurctl inside the container.
#
# usage: deploy/container/build.sh [--tag TAG] [--mirror URL] [--rebuild-base] [--smoke]
# needs: root (debootstrap), podman or buildah, debootstrap (apt-get install podman buildah
# debootstrap), network access to the Debian mirror. Env: RECURD_IMAGE_BUILDER=podman|buildah,
# RECURD_IMAGE_ISOLATION=oci|chroot (build steps' isolation; chroot needs no OCI runtime, for
# sandboxes where crun cannot start containers: deploy/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=dev
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rebuild_base=0
smoke=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    --smoke) smoke=1; shift ;;
    *) echo "usage: $0 [--tag TAG] [--mirror URL] [--rebuild-base] [--smoke]" >&2; exit 2 ;;
  esac
done
base=localhost/recurd-base:bookworm
isolation=${RECURD_IMAGE_ISOLATION:-oci}
image=localhost/recurd:$tag

builder=${RECURD_IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  if command -v podman >/dev/null; then builder=podman
  elif command -v buildah >/dev/null; then builder=buildah
  else echo "build.sh: needs podman or buildah (apt-get install podman buildah)" >&2; exit 1; fi
fi
img_exists() { if [ "$builder" = podman ]; then podman image exists "$1"; else buildah inspect --type image "$1" >/dev/null 2>&1; fi; }

# ---- 1+2: the base image from Debian packages -----------------------------------------------
if [ "$rebuild_base" = 1 ] || ! img_exists "$base"; then
  command -v debootstrap >/dev/null || { echo "build.sh: needs debootstrap" >&2; exit 1; }
  rootfs=$(mktemp -d /var/tmp/recurd-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "== debootstrap bookworm ($mirror)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
  security=${mirror%/debian}/debian-security
  cat >"$rootfs/etc/apt/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SRC
  # Image hygiene: no apt lists or .deb archives in the base layer.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  echo "== import $base"
  if [ "$builder" = podman ]; then
    tar -C "$rootfs" --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  else
    ctr=$(buildah from scratch)
    buildah copy "$ctr" "$rootfs" / >/dev/null
    buildah config --cmd /bin/bash "$ctr"
    buildah commit "$ctr" "$base" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
  rm -rf "$rootfs"
  trap - EXIT
fi

# ---- 3: the image -------------------------------------------------------------------------
echo "== build $image"
if [ "$builder" = podman ]; then
  podman build --pull=never --isolation "$isolation" --build-arg BASE="$base" -f deploy/container/Containerfile -t "$image" .
else
  buildah bud --pull-never --isolation "$isolation" --build-arg BASE="$base" -f deploy/container/Containerfile -t "$image" .
fi

[ "$smoke" = 1 ] || exit 0

# ---- smoke test: run it as Kubernetes would (read-only root, non-root, state on a volume) ---
command -v podman >/dev/null || { echo "build.sh: --smoke needs podman" >&2; exit 1; }
name=recurd-smoke-$$
vol=recurd-smoke-$$
port=${RECURD_SMOKE_PORT:-50551}
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; podman volume rm -f "$vol" >/dev/null 2>&1 || true; }
trap cleanup EXIT
podman volume create "$vol" >/dev/null
echo "== run $image (read-only root, port $port)"
podman run -d --name "$name" --read-only --cap-drop=ALL --security-opt no-new-privileges \
  --network host -v "$vol":/var/lib/recurd -e RECURD_PORT="$port" -e RECURD_REPLICA_NAME=smoke-0 \
  "$image" >/dev/null
python3 - "$port" <<'PY'
import sys, time, grpc
port = sys.argv[1]
deadline = time.time() + 120
while True:
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=None, response_deserializer=None)
        resp, call = check.with_call(b"", timeout=2)  # empty HealthCheckRequest
        md = dict(call.initial_metadata())
        break
    except grpc.RpcError:
        if time.time() > deadline:
            raise
        time.sleep(1)
assert resp == b"\x08\x01", f"health: {resp!r} (want SERVING)"
assert md.get("x-recurd-replica") == "smoke-0", md
print(f"health SERVING, x-recurd-replica={md['x-recurd-replica']}")
PY
echo "== recurctl inside the container"
podman exec "$name" recurctl --addr 127.0.0.1:"$port" health
podman exec "$name" recurctl --addr 127.0.0.1:"$port" session create --id smoke-s1
podman exec "$name" recurctl --addr 127.0.0.1:"$port" generate --session smoke-s1 --max-tokens 8 --seed 1 "Hello"
echo
echo "== state on the volume, owned by uid 10001"
podman exec "$name" sh -c 'id; ls -ln /var/lib/recurd | head'
echo "== SIGTERM drain"
podman stop -t 30 "$name" >/dev/null
podman logs "$name" 2>&1 | tail -n 3
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM" >&2; exit 1; }
echo "smoke test passed"
