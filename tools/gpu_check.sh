#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one go (issue #9).
#
#   tools/gpu_check.sh --bundle   here (no GPU needed): builds the CUDA binaries in
#                                 build/h-cuda and packs them, with the shared libraries the
#                                 GPU image may lack (cJSON, xxHash, OpenBLAS), into
#                                 build/gpu-bundle.tar.xz (carry that path to the GPU machine).
#   tools/gpu_check.sh            on the GPU machine: uses the bundle if it runs there, else
#                                 builds with WITH_CUDA=ON for the local GPU; then runs the
#                                 probe, the CUDA-vs-CPU parity test, recurd-eval cpu vs cuda,
#                                 and cuda_bench (mamba-130m shape, graphs on and off; a
#                                 1.4B shape). Logs go to $OUT (or build/gpu-check) too.
# Exit status: 0 when every check passed, 77 without a usable GPU, 1 otherwise; each step says PASS/FAIL/SKIP. The
# steps' own time limits add up to under 10 minutes: call it with timeout_s=600.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ "${1:-}" = "--bundle" ]; then
  set -e
  b=${BUILD:-build/h-cuda}
  [ -f "$b/build.ninja" ] || cmake -S . -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWITH_CUDA=ON
  cmake --build "$b" --target rcd_cuda_probe cuda_parity_test cuda_bench recurd-eval
  st=$(mktemp -d)
  mkdir -p "$st/bin" "$st/lib"
  cp "$b/workers/cuda/rcd_cuda_probe" "$b/workers/cuda/cuda_parity_test" \
     "$b/workers/cuda/cuda_bench" "$b/tools/recurd-eval" "$st/bin/"
  # Everything the binaries need except glibc and the CUDA libraries (the GPU image has those).
  ldd "$st"/bin/* | awk '/=> \//{print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt)\.so' |
    xargs -r -I{} cp -L {} "$st/lib/"
  tar -C "$st" -cJf build/gpu-bundle.tar.xz bin lib
  rm -rf "$st"
  ls -la build/gpu-bundle.tar.xz
  echo "carry build/gpu-bundle.tar.xz and run: tools/gpu_check.sh"
  exit 0
fi

out=${OUT:-$root/build/gpu-check}
mkdir -p "$out"
declare -a summary
fails=0
step() { # name, then the command; 77 is a skip
  local name=$1; shift
  echo; echo "=== $name: $*"
  local t0=$SECONDS
  "$@"; local rc=$?
  local verdict=PASS
  [ $rc -eq 77 ] && verdict=SKIP
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && { verdict="FAIL (exit $rc)"; fails=$((fails + 1)); }
  summary+=("$(printf '%-28s %s (%ds)' "$name" "$verdict" $((SECONDS - t0)))")
  return $rc
}

checks() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || true

  # CUDA libraries: the toolkit's, else the ones the Python wheels carry.
  cudalib=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/libcublas.so.13" ] && cudalib="$cudalib:$d"
  done
  for f in $(find /usr /opt -xdev \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' \) 2>/dev/null | head -4); do
    cudalib="$cudalib:$(dirname "$f")"
  done

  bin=""
  if [ -f build/gpu-bundle.tar.xz ]; then
    rm -rf /tmp/rcd-gpu && mkdir -p /tmp/rcd-gpu && tar -C /tmp/rcd-gpu -xJf build/gpu-bundle.tar.xz
    export LD_LIBRARY_PATH="/tmp/rcd-gpu/lib${cudalib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd /tmp/rcd-gpu/bin/* | grep -q 'not found'; then
      echo "bundle: unresolved libraries:"; ldd /tmp/rcd-gpu/bin/* | grep 'not found' | sort -u
    else
      bin=/tmp/rcd-gpu/bin; echo "using the carried bundle"
    fi
  fi
  if [ -z "$bin" ]; then
    echo "building here (WITH_CUDA=ON)"
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
    if cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DWITH_CUDA=ON \
         -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" >build/gpu-configure.log 2>&1 &&
       cmake --build build/gpu --target rcd_cuda_probe cuda_parity_test cuda_bench recurd-eval; then
      mkdir -p build/gpu/bin
      cp build/gpu/workers/cuda/{rcd_cuda_probe,cuda_parity_test,cuda_bench} build/gpu/tools/recurd-eval build/gpu/bin/
      bin=$root/build/gpu/bin
    else
      tail -30 build/gpu-configure.log
      echo "FAIL: no runnable bundle and no local build (see above)"; return 1
    fi
  fi

  step probe timeout 30 "$bin/rcd_cuda_probe"
  if [ $? -eq 77 ]; then echo "SKIPPED: no usable GPU here, so nothing else was checked"; return 77; fi
  # Runs every case with graphs on and off itself.
  step cuda_parity_test env RCD_GOLDEN_DIR="$root/tests/golden" timeout 120 "$bin/cuda_parity_test"

  eval_cmp() { # greedy ids of the bundled model: cuda must equal cpu
    local a b
    a=$(timeout 30 "$bin/recurd-eval" --model models/recurd-mamba-tiny --tokens 1,2,3,4,5,6,7,8 --chunk 3 --greedy 48 --backend cpu) || return 1
    b=$(timeout 30 "$bin/recurd-eval" --model models/recurd-mamba-tiny --tokens 1,2,3,4,5,6,7,8 --chunk 3 --greedy 48 --backend cuda) || return 1
    echo "cpu : $a"; echo "cuda: $b"
    [ "$a" = "$b" ]
  }
  step recurd_eval_cpu_vs_cuda eval_cmp

  data=/tmp/rcd-bench; mkdir -p "$data"
  step bench_130m_graphs timeout 120 "$bin/cuda_bench" --make-model "$data/m130" --batches 1,2,4,8,16,32,64,128,256 --steps 64 --prefill 512
  step bench_130m_nographs timeout 60 "$bin/cuda_bench" --model "$data/m130" --batches 1,64 --steps 64 --prefill 0 --graphs 0
  step bench_130m_f32 timeout 90 "$bin/cuda_bench" --make-model "$data/m130f32" --dtype f32 --batches 1,64 --steps 32 --prefill 512
  step bench_1.4b_shape timeout 120 "$bin/cuda_bench" --make-model "$data/m1400" --hidden 2048 --layers 48 --batches 1,16,64,256 --steps 32 --prefill 512

  echo; echo "=== summary"
  printf '%s\n' "${summary[@]}"
  [ $fails -eq 0 ] && echo "ALL PASSED" || echo "$fails FAILED"
  [ $fails -eq 0 ]
}
checks 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
