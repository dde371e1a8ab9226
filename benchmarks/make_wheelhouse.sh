#!/usr/bin/env bash
# On a machine with PyPI access: the wheels benchmarks/gpu_check.sh installs on a lent GPU machine
# (no network there), for its Python (default 3.12, x86_64), into DIR (default wheelhouse/,
# git-ignored). Only what that machine's image lacks (device KINDS.md, 2026-11: Python 3.12,
# torch 2.11 CUDA 13 with nvidia-cublas/cudnn-cu13, transformers 5.17, onnx 1.23, pillow,
# scikit-image, the CPU onnxruntime 1.30): the GPU onnxruntime and soundfile with its cffi.
# --no-deps: everything else they need is in the image, and pip must not reach for more there.
# Wheels over 60 MiB are split into parts (NAME.whl.part-aa, -ab, ...) so that each travels in
# one device call with the working tree (64 MiB a call); gpu_check.sh joins them again.
# benchmarks/gpu_plan.py prints the device calls that carry them.
#
#   bash benchmarks/make_wheelhouse.sh [DIR] [PYTHON_VERSION]
set -euo pipefail
DIR="${1:-wheelhouse}"
PYV="${2:-3.12}"
PART_MIB=60
WHEELS=(onnxruntime-gpu==1.31.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12)
mkdir -p "$DIR"
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any --dest "$DIR" "${WHEELS[@]}"
for whl in "$DIR"/*.whl; do
  if [ "$(stat -c %s "$whl")" -gt $((PART_MIB * 1024 * 1024)) ]; then
    split -b "${PART_MIB}M" "$whl" "$whl.part-"
    rm "$whl"
  fi
done
ls -l "$DIR"
