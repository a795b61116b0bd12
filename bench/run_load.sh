#!/usr/bin/env bash
# bench: recurd under load on the mamba-130m-shaped checkpoint (issue #6, "Benchmark").
# Starts recurd (ephemeral, token-id prompts: the checkpoint has no tokenizer) and runs
# rcd_loadgen: the chat workload (baseline + Poisson rates + saturation at MAX_INFLIGHT
# streams), then the mixed workload twice, chunked prefill vs --prefill-chunk 0, for short
# requests' TTFT while long prompts arrive. Knobs by env var (defaults: a few minutes on a
# small CPU box):
#   BUILD=build/release MODEL=bench/data/mamba130m-bf16 THREADS=0 SLOTS=32 MAX_INFLIGHT=32
#   CHAT_RATES=1,0 MIXED_RATES=0.5 DURATION=20 MAX_REQ=32 BASELINE=2 IDLE_SHORT=4
#   OUT_SCALE=0.1 (output lengths x this) STEP_TOKENS=256 CHUNK=128
#   SHORT_RATE=0.5 (mixed runs: extra short requests/s next to the workload's arrivals)
#   PIPELINE=2 (recurd --pipeline: plans in flight) UNCHUNKED=1 (0: skip the unchunked run)
#   MATMUL=fp32 (recurd --matmul: fp32, or bf16 on AMX or AVX512_BF16 CPUs)
#   WORKLOADS="chat mixed" (either or both)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
MODEL=${MODEL:-bench/data/mamba130m-bf16}
THREADS=${THREADS:-0}
SLOTS=${SLOTS:-32}
MAX_INFLIGHT=${MAX_INFLIGHT:-32}
CHAT_RATES=${CHAT_RATES:-1,0}
MIXED_RATES=${MIXED_RATES:-0.5}
DURATION=${DURATION:-20}
MAX_REQ=${MAX_REQ:-32}
BASELINE=${BASELINE:-2}
IDLE_SHORT=${IDLE_SHORT:-4}
OUT_SCALE=${OUT_SCALE:-0.1}
STEP_TOKENS=${STEP_TOKENS:-256}
CHUNK=${CHUNK:-128}
SHORT_RATE=${SHORT_RATE:-0.5}
WORKLOADS=${WORKLOADS:-chat mixed}
PIPELINE=${PIPELINE:-2}
MATMUL=${MATMUL:-fp32}
UNCHUNKED=${UNCHUNKED:-1}
RECURD=$BUILD/daemon/recurd
LOADGEN=$BUILD/bench/rcd_loadgen
[ -x "$RECURD" ] && [ -x "$LOADGEN" ] || { echo "build $RECURD and $LOADGEN first" >&2; exit 1; }
[ -f "$MODEL/model.safetensors" ] || { echo "no $MODEL (tools/make_bench_model.py)" >&2; exit 1; }
TMP=$(mktemp -d /tmp/rcd-load-XXXXXX)
PID=
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=; }
trap 'stop; rm -rf "$TMP"' EXIT

start() { # start LABEL recurd-args...
  local label=$1; shift
  rm -f "$TMP/port"
  "$RECURD" --model "$MODEL" --ephemeral --port 0 --port-file "$TMP/port" --http-port 0 --no-progress \
    --threads "$THREADS" --slots "$SLOTS" --max-queue 1024 --max-prompt 2048 \
    --max-step-tokens "$STEP_TOKENS" --pipeline "$PIPELINE" --matmul "$MATMUL" "$@" \
    2>"$TMP/$label.log" &
  PID=$!
  for _ in $(seq 600); do [ -s "$TMP/port" ] && break; sleep 0.1; done
  [ -s "$TMP/port" ] || { echo "recurd did not start:" >&2; cat "$TMP/$label.log" >&2; exit 1; }
  ADDR=127.0.0.1:$(cat "$TMP/port")
  echo "## $label: recurd --slots $SLOTS --max-step-tokens $STEP_TOKENS --pipeline $PIPELINE" \
    "--matmul $MATMUL $*"
}

LG=(--max-inflight "$MAX_INFLIGHT" --max-requests "$MAX_REQ" --duration "$DURATION"
    --out-scale "$OUT_SCALE" --vocab 50280)
echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) CPUs, $(date -u +%FT%TZ)"

if [[ " $WORKLOADS " == *" chat "* ]]; then
  start chat --prefill-chunk "$CHUNK"
  "$LOADGEN" --addr "$ADDR" --workload chat --rates "$CHAT_RATES" --baseline "$BASELINE" "${LG[@]}"
  stop
fi
[[ " $WORKLOADS " == *" mixed "* ]] || exit 0

start mixed-chunked --prefill-chunk "$CHUNK"
"$LOADGEN" --addr "$ADDR" --workload mixed --rates "$MIXED_RATES" --baseline "$BASELINE" \
  --idle-short "$IDLE_SHORT" --short-rate "$SHORT_RATE" "${LG[@]}"
stop
[ "$UNCHUNKED" = 1 ] || exit 0

start mixed-unchunked --prefill-chunk 0
"$LOADGEN" --addr "$ADDR" --workload mixed --rates "$MIXED_RATES" --baseline "$BASELINE" \
  --idle-short "$IDLE_SHORT" --short-rate "$SHORT_RATE" "${LG[@]}"
stop
