"""Which GPU and TensorRT this machine has, read without torch or the tensorrt module.

The CUDA driver library (present wherever the NVIDIA driver is: desktops, servers, Jetson)
names the device and its compute capability; TensorRT's own library reports its
version. Both through ctypes, so the check runs in the runtime's own environment
(onnxruntime-gpu + numpy) and fails in a second, with one clear message, on a machine
without them. NOT YET RUN ON A GPU: written against the CUDA driver API
(cuInit, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute) and TensorRT's
``getInferLibVersion``; the tests cover the refusals and the version arithmetic.
"""

from __future__ import annotations

import ctypes
import glob
import os
from dataclasses import dataclass

from img2music.basics.errors import Img2MusicError

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
NVINFER = "libnvinfer.so.10"
"""The one TensorRT library ONNX Runtime 1.31's TensorRT provider loads (its NEEDED entry: TensorRT 10;
a TensorRT 11 library beside it would not be used, so it must not count as "TensorRT installed")."""


@dataclass(frozen=True)
class TensorRTFacts:
    tensorrt_version: str
    """'10.3.0' (JetPack 6), '10.x' / '11.x' elsewhere."""
    gpu_name: str
    """CUDA device name, e.g. 'NVIDIA GeForce RTX 3090'."""
    compute_capability: str
    """'8.6' for the RTX 3090, '8.7' for Jetson Orin, '9.0' for Hopper."""
    driver_version: str = ""
    """The CUDA driver's version ('13.0'): a plan built under a newer driver may not run under an older one."""


def gpu(device: int = 0) -> tuple[str, str]:
    """(name, compute capability) of CUDA device ``device``."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise Img2MusicError("no NVIDIA driver here (libcuda.so.1 not found): the GPU providers need a GPU") from None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    for call, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(dev), device)),
                       ("cuDeviceGetName", (name, 256, dev)),
                       ("cuDeviceGetAttribute", (ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)),
                       ("cuDeviceGetAttribute", (ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))):
        code = getattr(cuda, call)(*args)
        if code != 0:
            raise Img2MusicError(f"CUDA device {device}: {call} failed with CUDA error {code}")
    return name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}"


def driver_version() -> str:
    """The CUDA driver API version ('13.0'), or '' without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return ""
    version = ctypes.c_int()
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return ""
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def version_from_int(value: int) -> str:
    """TensorRT's ``getInferLibVersion()`` (major * 10000 + minor * 100 + patch) -> '10.3.0'."""
    return f"{value // 10000}.{value // 100 % 100}.{value % 100}"


def tensorrt_version() -> str:
    """The version of the TensorRT library ONNX Runtime's TensorRT provider would load."""
    candidates = [NVINFER]
    try:  # pip's tensorrt wheels keep the libraries in the tensorrt_libs package
        import tensorrt_libs

        candidates = [p for d in tensorrt_libs.__path__ for p in sorted(glob.glob(os.path.join(d, NVINFER)))]
        candidates.append(NVINFER)
    except ImportError:
        pass
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.getInferLibVersion.restype = ctypes.c_int32
        return version_from_int(lib.getInferLibVersion())
    raise Img2MusicError(f"TensorRT 10 is not installed here (no {NVINFER}, the library onnxruntime-gpu 1.31's "
                         "TensorRT provider loads): install TensorRT 10 for CUDA 13 (JetPack ships its own; "
                         "elsewhere NVIDIA's tensorrt wheels), or use --provider cuda")


def tensorrt_facts(device: int = 0) -> TensorRTFacts:
    name, capability = gpu(device)
    return TensorRTFacts(tensorrt_version(), name, capability, driver_version())


def engine_mismatch(recorded: dict, facts: TensorRTFacts) -> str | None:
    """Why engines recorded in a manifest (``tensorrt_version``, ``gpu_name``,
    ``compute_capability``) cannot run here, or None. A TensorRT engine runs only with the
    TensorRT release that built it and on the GPU architecture it was built for."""
    built = recorded.get("tensorrt_version")
    if not built:
        return "the manifest does not say which TensorRT built the engines"
    if built != facts.tensorrt_version:  # a patch release changes the engine format too
        return f"built with TensorRT {built}, this machine has TensorRT {facts.tensorrt_version}"
    if recorded.get("compute_capability") != facts.compute_capability:
        return (f"built for compute capability {recorded.get('compute_capability')} ({recorded.get('gpu_name')}), "
                f"this GPU is {facts.compute_capability} ({facts.gpu_name})")
    # One compute capability spans several GPUs (an H100 and an H200 are both 9.0) whose tuned
    # kernels differ: a plan is built for one device model.
    if recorded.get("gpu_name") != facts.gpu_name:
        return f"built on a {recorded.get('gpu_name')}, this GPU is a {facts.gpu_name}"
    built_driver = recorded.get("driver_version") or ""
    if built_driver and facts.driver_version and _version(facts.driver_version) < _version(built_driver):
        return f"built under CUDA driver {built_driver}, this machine's driver is older ({facts.driver_version})"
    return None


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split(".") if part.isdigit())
