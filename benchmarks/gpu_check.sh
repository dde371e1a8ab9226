#!/usr/bin/env bash
# The GPU check on a bare GPU machine with no network: one command.
#
#   bash benchmarks/gpu_check.sh [--wheelhouse DIR] [--install-only] [--dry-run] [--out DIR] [gpu_check.py options]
#
# It uses the machine's own Python (with torch and transformers preinstalled, as on the
# device machine and on a Jetson), never a fresh venv, and installs only what is missing,
# only from the local wheelhouse (benchmarks/make_wheelhouse.sh makes one on a connected
# machine; large wheels travel in parts, *.part-*, put back together here). onnxruntime
# and onnxruntime-gpu share one module directory: when the GPU build is missing, the CPU
# build is removed first and the GPU build installed over it, never both side by side.
# --install-only stops there (the CPU dry run of the install, in a throwaway venv). Then
# benchmarks/gpu_check.py runs from this checkout (PYTHONPATH, no install: img2music/__init__.py
# maps img2music.<role> onto the checkout's folders).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELHOUSE=""
INSTALL_ONLY=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --install-only) INSTALL_ONLY=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
DRY=0
for a in "${ARGS[@]+"${ARGS[@]}"}"; do [ "$a" = "--dry-run" ] && DRY=1; done

if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || { echo "error: wheelhouse $WHEELHOUSE is not a directory" >&2; exit 2; }
  # parts -> wheels: NAME.whl.part-aa, -ab, ... (split -b 60M), joined in name order
  for first in "$WHEELHOUSE"/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whl="${first%.part-aa}"
    [ -e "$whl" ] || cat "$whl".part-* > "$whl"
  done
  # --no-deps: the wheelhouse holds only what the image lacks (make_wheelhouse.sh); the rest is there
  PIP=("$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELHOUSE")
  # module -> distribution, installed only when the import fails (dependencies first)
  for pair in pycparser:pycparser cffi:cffi soundfile:soundfile; do
    mod="${pair%%:*}"; dist="${pair#*:}"
    "$PY" -c "import $mod" 2>/dev/null || "${PIP[@]}" "$dist"
  done
  if [ "$DRY" = 0 ] || [ "$INSTALL_ONLY" = 1 ]; then
    if ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
      # onnxruntime and onnxruntime-gpu share one module directory: remove the CPU build first
      "$PY" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu || true
      "${PIP[@]}" --force-reinstall onnxruntime-gpu
    fi
    "$PY" -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p; print('onnxruntime', o.__version__, p)"
  fi
fi
if [ "$INSTALL_ONLY" = 1 ]; then exit 0; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "${ARGS[@]+"${ARGS[@]}"}"
