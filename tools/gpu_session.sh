#!/usr/bin/env bash
# Every GPU check of issue 11 in one command on a GPU machine (docs/gpu.md): the gpu-marked tests,
# benchmarks/gpu.py, and compute-sanitizer memcheck and racecheck on the PyTorch CUDA path and on the ONNX
# Runtime CUDA EP path. Logs and a summary go to $OUT (default runs/gpu_session), within a time budget.
#
#   here, after `make install`:  tools/gpu_session.sh prepare
#       packs onnxruntime-gpu into .dev/ort and the built libraries into .dev/lib.tar.xz (carry ".dev")
#   on the GPU machine:          bash tools/gpu_session.sh [tests] [bench] [sanitize]   (default: all three)
#       GPU_SESSION_SECONDS (default 480) bounds the whole run; a step that does not fit is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  set -e
  local python=${PYTHON:-.venv/bin/python} pack_tool=${ORT_GPU_PACK:-../shared/tools/ort-gpu-pack.sh}
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")" .dev
  grep -qx '/.dev/' "$exclude" 2>/dev/null || echo '/.dev/' >>"$exclude"
  [ -f .dev/ort/unpack.py ] || "$pack_tool" .dev/ort
  local lib_dir
  lib_dir=$("$python" -c 'from adderconvert._libs import ORT_LIBRARY, find_library; print(find_library(ORT_LIBRARY).parent)')
  "$python" -c 'import sys; from adderconvert.deploy.runtime import build_info; info = build_info(); print(info)
sys.exit(0 if info.get("cuda") == "1" else "the library was built without CUDA: install nvcc, run make install")'
  tar -C "$lib_dir" -cJf .dev/lib.tar.xz libadderconvert_ort.so libadderconvert_cpu.so libadderconvert_cuda.so
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- custom_ops || echo ' (custom_ops modified)')" \
    >.dev/REVISION
  local tree_bytes dev_bytes
  tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  dev_bytes=$(du -sb .dev | cut -f1)
  echo "working tree $((tree_bytes / 1048576)) MiB + .dev $((dev_bytes / 1048576)) MiB travel (the limit is 64 MiB)"
  echo "carry [\".dev\"] and run: bash tools/gpu_session.sh"
}

# Puts onnxruntime-gpu (from .dev/ort, unpacked once per machine) first on PYTHONPATH and the libraries
# (from .dev/lib.tar.xz, every time: a warm machine keeps the last call's) into adderconvert/_lib.
setup() {
  local site=/tmp/adderconvert-site
  if [ -f .dev/ort/unpack.py ] && [ ! -d "$site/onnxruntime" ]; then python3 .dev/ort/unpack.py "$site"; fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -f .dev/lib.tar.xz ]; then
    mkdir -p adderconvert/_lib
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' .dev/lib.tar.xz adderconvert/_lib
  fi
}

# step NAME CAP_SECONDS LOG COMMAND...: runs COMMAND under what is left of the budget (at most CAP) and
# records its outcome in the summary.
step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((budget - SECONDS - 5))
  if [ "$left" -lt 30 ]; then
    echo "- $name: skipped, out of time" | tee -a "$summary"
    return
  fi
  local limit=$((cap < left ? cap : left)) start=$SECONDS
  echo "### $name ($*)" >>"$log"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  local rc=$? outcome
  case $rc in
    0) outcome=ok ;;
    124 | 137) outcome="timed out after ${limit}s" ;;
    *) outcome="failed (exit $rc)" ;;
  esac
  [ "$rc" -eq 0 ] || failures=$((failures + 1))
  echo "- $name: $outcome in $((SECONDS - start))s (log: $(basename "$log"))" | tee -a "$summary"
}

run_tests() {
  step "pytest -m gpu" 170 "$OUT/tests.log" python3 -m pytest -m gpu -s -ra -p no:cacheprovider \
    tests/nn tests/custom_ops tests/test_pipeline.py
  grep -E "CUDA EP error|passed|failed" "$OUT/tests.log" | tail -6 | sed 's/^/    /' >>"$summary"
}

run_bench() {
  step "benchmarks/gpu.py" 220 "$OUT/bench.md" python3 benchmarks/gpu.py --json "$OUT/bench.json"
  echo >>"$summary"
  grep -v '^###' "$OUT/bench.md" >>"$summary"
}

# The float32 tests of the PyTorch op (dtype0) and the CUDA EP's one-node tests: small shapes only.
run_sanitize() {
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -z "$sanitizer" ]; then
    echo "- compute-sanitizer: not found" | tee -a "$summary"
    return
  fi
  local torch_tests=(tests/nn/backends/test_cuda.py -k "dtype0 or training")
  local ort_tests=(tests/custom_ops/cuda/test_cuda_ep.py -k
    "numpy_reference and (bias or fused_relu) or infinities or graph_replay or bad_input")
  local tool
  for tool in memcheck racecheck; do
    # Without PyTorch's caching allocator every tensor is its own allocation, so memcheck sees its bounds.
    step "$tool, PyTorch CUDA op" 90 "$OUT/sanitize.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 50 \
      python3 -m pytest -q -x -p no:cacheprovider "${torch_tests[@]}"
    step "$tool, ORT CUDA EP op" 90 "$OUT/sanitize.log" \
      "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 50 \
      python3 -m pytest -q -x -p no:cacheprovider "${ort_tests[@]}"
  done
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/sanitize.log" | sed 's/^/    /' >>"$summary"
}

if [ "${1:-}" = prepare ]; then
  prepare
  exit
fi
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
summary="$OUT/summary.md"
budget=${GPU_SESSION_SECONDS:-480}
failures=0
setup
if [ ! -f adderconvert/_lib/libadderconvert_ort.so ]; then
  echo "adderconvert/_lib has no libraries: run 'tools/gpu_session.sh prepare' after make install and carry .dev" >&2
  exit 2
fi
{
  echo "# GPU session $(date -u +%FT%TZ), revision $(cat .dev/REVISION 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>&1
  python3 -c 'import onnxruntime as ort, torch
from adderconvert.deploy.runtime import build_info
print(f"torch {torch.__version__}, onnxruntime {ort.__version__} {ort.get_available_providers()}")
print("library:", build_info())' 2>&1
  echo
} >"$summary"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests bench sanitize)
for part in "${steps[@]}"; do
  case $part in
    tests) run_tests ;;
    bench) run_bench ;;
    sanitize) run_sanitize ;;
    *)
      echo "unknown part '$part' (tests, bench, sanitize or prepare)" | tee -a "$summary"
      failures=$((failures + 1))
      ;;
  esac
done
cat "$summary"
[ "$failures" -eq 0 ]
