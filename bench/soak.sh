#!/usr/bin/env bash
# bench: the issue-17 soak. recurd on the mamba-130m-shaped checkpoint with a durable state dir,
# N closed-loop clients at saturation, a restart every --restart-every s (SIGTERM and SIGKILL
# alternating), RSS/fds sampled, latencies per 5-min window, acknowledged turns checked.
#   bench/soak.sh [soak.py options] [-- recurd options]     # foreground, a line every 30 s
#   BG=1 bench/soak.sh ...                                   # detached; prints where to look
# Defaults: --duration 3600 --restart-every 600 --clients 16, output in
# bench/data/soak-<UTC time>/ (results.json, samples.csv, events.jsonl, recurd-N.log, soak.log).
# Table for bench/RESULTS.md: python3 bench/soak.py --summary DIR/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
MODEL=${MODEL:-bench/data/mamba130m-bf16}
export RECURD_BIN=${RECURD_BIN:-$BUILD/daemon/recurd}
[ -x "$RECURD_BIN" ] || { echo "build $RECURD_BIN first (cmake --build --preset release --target recurd)" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] ||
  { echo "no $MODEL: python3 tools/make_bench_model.py --numpy --dtype bf16 --out $MODEL" >&2; exit 1; }
PY=
for p in /usr/bin/python3 python3; do  # the one with grpcio (python3-grpcio), as the tests
  if command -v "$p" >/dev/null && "$p" -c 'import grpc' 2>/dev/null; then PY=$p; break; fi
done
[ -n "$PY" ] || { echo "no python3 with grpcio (tools/install-deps.sh)" >&2; exit 1; }
OUT=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --) break ;;
    --out) OUT=${args[i+1]:-} ;;
    --out=*) OUT=${args[i]#--out=} ;;
  esac
done
if [ -z "$OUT" ]; then
  OUT=bench/data/soak-$(date -u +%Y%m%d-%H%M%S)
  args=(--out "$OUT" "${args[@]}")
fi
mkdir -p "$OUT"
if [ "${BG:-0}" = 1 ]; then
  nohup "$PY" -u bench/soak.py --model "$MODEL" "${args[@]}" >"$OUT/soak.log" 2>&1 </dev/null &
  echo "soak running as pid $! (stop it: kill $!); progress: tail -f $OUT/soak.log"
  echo "table when done: $PY bench/soak.py --summary $OUT/results.json"
else
  "$PY" -u bench/soak.py --model "$MODEL" "${args[@]}" 2>&1 | tee "$OUT/soak.log"
fi
