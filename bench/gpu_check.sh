#!/usr/bin/env bash
# GPU checks for a lent GPU machine: what needs a GPU, run once, summarised at the end.
# Usage (from the repository root): bash bench/gpu_check.sh
# The GPU image has CUDA PyTorch and ONNX but only the CPU build of ONNX Runtime and no
# TensorRT, so those paths are not checked here.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check"
mkdir -p "$out"
summary=()

step() {  # name, command...
  local name="$1"; shift
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then
    summary+=("PASS  $name ($((SECONDS - start)) s)")
  else
    summary+=("FAIL  $name ($((SECONDS - start)) s): see $out/$name.log")
  fi
}

step device nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step install pip install -q --no-deps -e .
step gpu-tests python -m pytest -q -m gpu -p no:cacheprovider tests
step serving-bench python bench/bench_serving.py --quick

printf '%s\n' "${summary[@]}"
tail -n 25 "$out/serving-bench.log" 2>/dev/null
