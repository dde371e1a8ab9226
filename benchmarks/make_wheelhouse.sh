#!/usr/bin/env bash
# On a machine with PyPI access: the wheels benchmarks/gpu_check.sh may have to install on a
# GPU machine without network, for its Python (default 3.12, x86_64), into DIR (default
# wheelhouse/, git-ignored). Wheels over 55 MiB are split into parts (NAME.whl.part-aa, -ab,
# ...) so that each travels within a 64 MiB transfer; gpu_check.sh joins them again.
#
#   bash benchmarks/make_wheelhouse.sh [DIR] [PYTHON_VERSION]
set -euo pipefail
DIR="${1:-wheelhouse}"
PYV="${2:-3.12}"
mkdir -p "$DIR"
python3 -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$PYV" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --dest "$DIR" onnxruntime-gpu==1.31.1 soundfile onnx
for whl in "$DIR"/*.whl; do
  if [ "$(stat -c %s "$whl")" -gt $((55 * 1024 * 1024)) ]; then
    split -b 55M "$whl" "$whl.part-"
    rm "$whl"
  fi
done
ls -l "$DIR"
