#!/usr/bin/env bash
# Checks for a lent GPU machine: run once, summarised at the end.
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
# The whole suite: GPU-marked tests run here instead of skipping, and the rest checks the
# server on this image's Python, numpy and CUDA build of torch. Bounded per test and in
# all, so a hang still leaves time for the benchmark; the servers' logs come back.
step tests timeout 200 $py -m pytest -q -rfE -p no:cacheprovider --timeout 60 \
  --durations 8 --basetemp /tmp/gpu-pytest tests
find /tmp/gpu-pytest -name '*.log' -print0 2>/dev/null \
  | tar czf "$out/server-logs.tgz" --null -T - 2>/dev/null
# The two ResNet configurations that matter most (the default, over the wire and through
# shared memory) keep the benchmark inside its 200 s.
step serving-bench timeout 200 $py bench/bench_serving.py --quick --rounds 2 \
  --resnet-config default --resnet-config "default, shm" --out "$out/serving.json"

printf '%s\n' "${summary[@]}"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" 2>/dev/null | tail -n 12
tail -n 30 "$out/serving-bench.log" 2>/dev/null
