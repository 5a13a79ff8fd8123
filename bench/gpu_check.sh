#!/usr/bin/env bash
# Checks for a lent GPU machine: run once, summarised at the end. About 9 minutes at most:
# GPU tests 120 s, GPU kernel targets 120 s, the whole suite 150 s, serving 150 s.
# Usage (from the repository root): bash bench/gpu_check.sh
#
# The GPU image has CUDA PyTorch and ONNX but only the CPU build of ONNX Runtime and no
# TensorRT, and it cannot reach a package index. Packages it lacks (grpcio-health-checking,
# tritonclient, this project's grpcio/protobuf versions) travel as wheels in .whl/, made
# with the `pip download` line in bench/README.md, and are installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}/gpu_check"
mkdir -p "$out"
summary=()
py=python3

step() {  # name, command...
  local name="$1"; shift
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then
    summary+=("PASS  $name ($((SECONDS - start)) s)")
  else
    summary+=("FAIL  $name ($((SECONDS - start)) s): see $out/$name.log")
  fi
}

if compgen -G ".whl/*.whl" >/dev/null; then
  step wheels $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step device bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  uname -r; nproc; $py -c 'import sys, torch, onnxruntime, grpc; print(sys.version); \
  print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available()); \
  print(\"onnxruntime\", onnxruntime.__version__, onnxruntime.get_available_providers()); \
  print(\"grpcio\", grpc.__version__)'"
step install $py -m pip install -q --no-deps --no-build-isolation -e .
# What the GPU kernels can use here: Triton-lang, CuPy, numba.cuda (a driver, a GPU and
# NVVM from the CUDA toolkit; the probe says which is missing).
step kernel-toolchains $py -c "
import importlib.metadata as md
for name in ('triton', 'cupy-cuda12x', 'numba'):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, 'not installed')
from warpserve.kernels.cuda_probe import numba_cuda_reason
print('numba.cuda:', numba_cuda_reason() or 'usable')"
# The GPU paths first, so that they run even if the whole suite below runs out of time:
# Triton-lang kernels compiled (not interpreted), CuPy, numba.cuda on the device, the
# CUDA-graph and CUDA-stream paths of the torch backends, AOTInductor and TensorRT where
# the image has it. -rs lists every skip with its reason.
step gpu-tests timeout 120 $py -m pytest -q -rfEs -p no:cacheprovider --timeout 60 \
  --basetemp /tmp/gpu-pytest-gpu tests/kernels tests/server/backends \
  tests/compile/test_tensorrt.py tests/compile/test_pipeline.py
# The GPU targets, each contender and torch eager alternating (best of 3 rounds): Triton-lang
# preprocessing >= 2x the torch chain (CuPy and numba.cuda beside it), the fused MLP at
# least as fast as torch eager, top-k >= 3x torch.topk over the full score matrix.
step kernel-targets timeout 120 bash -c "cd bench && $py kernel_targets.py --gpu --rounds 3 \
  && cp results/kernel_targets_gpu.json '$out/'"
# The whole suite: GPU-marked tests run here instead of skipping, and the rest checks the
# server on this image's Python, numpy and CUDA build of torch. Bounded per test and in
# all, so a hang still leaves time for the benchmark; the servers' logs come back.
step tests timeout 150 $py -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
  --durations 8 --basetemp /tmp/gpu-pytest tests
find /tmp/gpu-pytest /tmp/gpu-pytest-gpu -name '*.log' -print0 2>/dev/null \
  | tar czf "$out/server-logs.tgz" --null -T - 2>/dev/null
# The two ResNet configurations that matter most (the default, over the wire and through
# shared memory) keep the benchmark inside its 150 s.
step serving-bench timeout 150 $py bench/bench_serving.py --quick --rounds 2 \
  --resnet-config default --resnet-config "default, shm" --out "$out/serving.json"

printf '%s\n' "${summary[@]}"
tail -n 4 "$out/kernel-toolchains.log" 2>/dev/null
grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$out/gpu-tests.log" 2>/dev/null | tail -n 20
grep -E "ratio|GPU:" "$out/kernel-targets.log" 2>/dev/null
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" 2>/dev/null | tail -n 12
tail -n 30 "$out/serving-bench.log" 2>/dev/null
