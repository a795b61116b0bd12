#!/usr/bin/env bash
# bench: the engine's device thread (issue 14) — chat streams on the bundled tiny model with and
# without a concurrent large-Tokenize load, two recurd builds alternated in one session:
#   bench/run_tokload.sh BEFORE_RECURD AFTER_RECURD [REPEATS]
# Each run starts its own daemon (bench/sched_load.py): streams 1 and STREAMS (closed loop,
# REQUESTS per level, MAX_TOKENS each), then again with TOK_CLIENTS clients sending Tokenize of
# TOK_BYTES bytes in a loop next to the streams. Env knobs: STREAMS=16 REQUESTS=8
# MAX_TOKENS=32 SLOTS=16 TOK_CLIENTS=4 TOK_BYTES=4000000 PYTHON=/usr/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?before recurd}
AFTER=${2:?after recurd}
REPEATS=${3:-3}
STREAMS=${STREAMS:-16}
REQUESTS=${REQUESTS:-8}
MAX_TOKENS=${MAX_TOKENS:-32}
SLOTS=${SLOTS:-16}
TOK_CLIENTS=${TOK_CLIENTS:-4}
TOK_BYTES=${TOK_BYTES:-4000000}
PYTHON=${PYTHON:-/usr/bin/python3}
lscpu | grep -E '^Model name|^CPU\(s\)' || true
for i in $(seq "$REPEATS"); do
  for load in 0 "$TOK_CLIENTS"; do
    for which in before after; do
      bin=$BEFORE
      [ "$which" = after ] && bin=$AFTER
      echo "## repeat $i, $which, tokenize clients $load, load average $(cut -d' ' -f1-3 /proc/loadavg)"
      RECURD_BIN=$bin "$PYTHON" bench/sched_load.py --streams "1,$STREAMS" \
        --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --tokenize-load "$load" \
        --tokenize-bytes "$TOK_BYTES" -- --ephemeral --slots "$SLOTS" | grep -v '^model'
    done
  done
done
