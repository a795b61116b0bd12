#!/usr/bin/env bash
# Runs mamba_bench on the mamba-130m-shaped random checkpoints in every weight dtype and
# prints the CPU beside the figures. Make the checkpoints first (needs the tools venv):
#   .venv/bin/python tools/make_bench_model.py --out bench/data/mamba130m-f32 --dtype f32
#   (likewise bf16, f16)
# Run on a quiet machine: the limits are measured in the same run, so ratios hold, but
# another busy process skews the thread barriers.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/release/bench/mamba_bench
[ -x "$bin" ] || cmake --build --preset release --target mamba_bench
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
grep -o -m1 -E 'avx512[a-z_0-9]*|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for dt in f32 bf16 f16; do
  d=bench/data/mamba130m-$dt
  [ -d "$d" ] || { echo "missing $d (see the header of this script)"; continue; }
  echo "--- $dt"
  "$bin" --model "$d" --seconds "${SECONDS_PER_POINT:-3}" --prefill "${PREFILL:-512}" "$@"
done
