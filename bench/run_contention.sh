#!/usr/bin/env bash
# bench: batch-1 decode when other processes want the CPUs — two mamba_bench builds alternated
# in one session, each with 0, 1, ... HOGS busy-loop processes beside it:
#   bench/run_contention.sh BEFORE_MAMBA_BENCH AFTER_MAMBA_BENCH [REPEATS]
# Prints each run's batch-1 line (tokens/s, step p50/p99). Env knobs: MODEL=models/recurd-hybrid-tiny
# THREADS=2 HOGS="0 1 2" SECONDS_EACH=4 MATMUL=fp32 BEFORE_ARGS= AFTER_ARGS= (extra mamba_bench
# flags of each side: one build with and without --adapt is `run_contention.sh B B 2` with
# AFTER_ARGS=--adapt).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?before mamba_bench}
AFTER=${2:?after mamba_bench}
REPEATS=${3:-2}
MODEL=${MODEL:-models/recurd-hybrid-tiny}
THREADS=${THREADS:-2}
HOGS=${HOGS:-0 1 2}
SECONDS_EACH=${SECONDS_EACH:-4}
MATMUL=${MATMUL:-fp32}
BEFORE_ARGS=${BEFORE_ARGS:-}
AFTER_ARGS=${AFTER_ARGS:-}
lscpu | grep -E '^Model name|^CPU\(s\)' || true
hogs=()
stop_hogs() { for h in "${hogs[@]}"; do kill "$h" 2>/dev/null || true; done; hogs=(); }
trap stop_hogs EXIT
for i in $(seq "$REPEATS"); do
  for n in $HOGS; do
    for ((k = 0; k < n; k++)); do
      (while :; do :; done) &
      hogs+=($!)
    done
    for which in before after; do
      bin=$BEFORE
      extra=$BEFORE_ARGS
      [ "$which" = after ] && bin=$AFTER && extra=$AFTER_ARGS
      echo "## repeat $i, $which, $n hog(s), threads $THREADS, load average $(cut -d' ' -f1-3 /proc/loadavg)"
      "$bin" --model "$MODEL" --threads "$THREADS" --batches 1 --prefill 0 \
        --seconds "$SECONDS_EACH" --matmul "$MATMUL" $extra | grep -E '^(batch|1 |  \(--adapt)'
    done
    stop_hogs
  done
done
