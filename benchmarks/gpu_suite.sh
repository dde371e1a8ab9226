#!/usr/bin/env bash
# One call on a bare GPU machine (the device tool's): install, build small-random engines,
# run the per-stage suite on ONNX Runtime's CUDA provider and print the table (the eager
# baseline is left out: the pinned torch is the CPU build). Wheels come from the carried
# wheelhouse/ when the machine has no network.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
#
# Not yet run on a GPU: the sessions that wrote it had none. The KV cache of the ONNX
# runtime lives in host memory, so the CUDA provider copies it every step; the GPU path
# proper (device-resident cache, CUDA graphs) is the TensorRT backend's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/gpu}"
PY=python3
if [ ! -x .venv-gpu/bin/python ]; then
  $PY -m venv .venv-gpu
  PIP=(.venv-gpu/bin/pip install -q)
  if [ -d wheelhouse ]; then PIP+=(--no-index --find-links wheelhouse); fi
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -e ".[dev,gpu]"
  .venv-gpu/bin/pip uninstall -q -y onnxruntime || true   # onnxruntime-gpu provides the module
fi
PY=.venv-gpu/bin/python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$PY export/build_engines.py --preset small-random --out engines/small-random --force
$PY benchmarks/run.py --bundle engines/small-random --provider CUDAExecutionProvider \
    --provider CPUExecutionProvider --baseline none --threads "$(nproc)" --rtf-seconds 10 \
    --out "$OUT"
# TensorRT (never run yet): plans on top of the ONNX bundle, then the marked tests
# (CUDA-graph replay vs enqueue, greedy tokens vs ORT) and parity against ONNX Runtime.
WHEELS=(); if [ -d wheelhouse ]; then WHEELS=(--no-index --find-links wheelhouse); fi
.venv-gpu/bin/pip install -q "${WHEELS[@]}" -e ".[tensorrt]"
$PY export/build_engines.py --preset small-random --backend tensorrt --precision fp16 --out engines/small-trt --force
$PY -m pytest -q -m "tensorrt or gpu" tests/runtime/test_tensorrt.py -rs
