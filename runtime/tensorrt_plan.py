"""Which machine a TensorRT plan was built for, and refusing it anywhere else.

A serialized TensorRT engine runs only with the TensorRT version and the GPU
architecture it was built for (unless built version-compatible / hardware-compatible).
The bundle manifest records both per plan (``export/tensorrt_engines.py``); start-up
is meant to compare them with this machine before deserializing anything, and either
refuse with a message that says what to rebuild, or fall back to ONNX Runtime's CUDA
provider. No runtime path calls this yet: a TensorRT backend is to plug in at
``runtime.backends`` behind ``runtime.decoder_session.DecoderSession`` (the GPU issue).
This module imports nothing heavy: the checks run (and are tested) without a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from basics.errors import Img2MusicError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFacts:
    tensorrt_version: str
    """tensorrt.__version__ of this process."""
    gpu_name: str
    """CUDA device name, e.g. 'NVIDIA H100 80GB HBM3'."""
    compute_capability: str
    """'9.0' for Hopper, '8.6' for the RTX 3090, '8.7' for Jetson Orin."""


def current_facts(device: int = 0) -> DeviceFacts:
    """This machine's facts (needs tensorrt and cuda-python: the 'tensorrt' extra)."""
    try:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise Img2MusicError(f"the TensorRT backend needs tensorrt and cuda-python ({exc}); "
                             "pip install 'img2music[tensorrt]'") from None
    err, props = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise Img2MusicError(f"no CUDA device {device} (cudaGetDeviceProperties: {err})")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceFacts(trt.__version__, name.strip("\x00 "), f"{props.major}.{props.minor}")


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def plan_mismatch(entry: dict, facts: DeviceFacts) -> str | None:
    """Why the plan described by ``entry`` cannot run here, or None when it can."""
    built = entry.get("tensorrt_version")
    if not built:
        return "the manifest does not say which TensorRT version built the plan"
    if entry.get("version_compatible"):
        # version-compatible plans run on the same major version or newer (lean runtime)
        if _major_minor(facts.tensorrt_version)[:1] < _major_minor(built)[:1]:
            return f"built version-compatible with TensorRT {built}, older TensorRT {facts.tensorrt_version} here"
    elif _major_minor(built) != _major_minor(facts.tensorrt_version):
        return f"built with TensorRT {built}, this machine has TensorRT {facts.tensorrt_version}"
    if entry.get("hardware_compatibility") in ("ampere_plus", "AMPERE_PLUS"):
        if _major_minor(facts.compute_capability) < (8, 0):
            return f"built for Ampere and newer, this GPU is compute capability {facts.compute_capability}"
    elif entry.get("compute_capability") != facts.compute_capability:
        return (f"built for compute capability {entry.get('compute_capability')} ({entry.get('gpu_name')}), "
                f"this GPU is {facts.compute_capability} ({facts.gpu_name})")
    return None


def check_plans(manifest: dict, facts: DeviceFacts, fallback: bool = False) -> str:
    """'tensorrt' when every plan fits this machine; otherwise refuse, or with ``fallback``
    return 'onnxruntime-cuda' (the bundle's ONNX graphs on ORT's CUDA provider)."""
    plans = manifest.get("tensorrt", {}).get("plans", {})
    if not plans:
        raise Img2MusicError("this bundle has no TensorRT plans; build them with "
                             "export/build_engines.py --backend tensorrt")
    problems = {name: why for name, entry in plans.items() if (why := plan_mismatch(entry, facts))}
    if not problems:
        return "tensorrt"
    lines = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
    if fallback:
        log.warning("TensorRT plans do not fit this machine (%s); falling back to ONNX Runtime's CUDA provider",
                    lines)
        return "onnxruntime-cuda"
    raise Img2MusicError(f"TensorRT plans in this bundle were built for another machine ({lines}); rebuild them "
                         "here with export/build_engines.py --backend tensorrt")
