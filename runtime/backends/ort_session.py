"""ONNX Runtime sessions: options, providers, and one clear error when a graph won't load."""

from __future__ import annotations

import os
from pathlib import Path

from img2music.basics.errors import Img2MusicError


def default_threads() -> int:
    """Physical-ish core count: ORT's default spins a thread per logical core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def onnxruntime():
    """The onnxruntime module, or one clear error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise Img2MusicError("onnxruntime is not installed: pip install 'img2music[cpu]' (or 'img2music[gpu]' on an "
                             "NVIDIA machine: onnxruntime-gpu, which runs on the CPU too)") from None
    return onnxruntime


def weights_over(path: str | os.PathLike, gib: float = 1.0) -> bool:
    """A graph whose weights (its ``.data`` side file) exceed ``gib`` GiB (musicgen-medium's decoder: 6)."""
    data = Path(str(path) + ".data")
    return data.exists() and data.stat().st_size > gib * 2**30


def create_session(path: str | os.PathLike, threads: int | None = None, providers: list | None = None,
                   spinning: bool = True, lean: bool = False):
    """An ``InferenceSession`` for one bundle graph (CPU provider unless told otherwise;
    ``providers`` as onnxruntime takes them: names, or (name, options) pairs).

    ``spinning=False``: ORT's worker threads sleep instead of busy-waiting between runs.
    Busy-waiting shaves latency off back-to-back runs of one session, but steals the
    cores from anything else computing at the same time (another model's session in
    another thread); the live runtime runs its models one at a time and keeps it on.

    ``lean=True``: no pre-packed copy of the weights (ONNX Runtime's CPU MatMul re-lays out
    every float weight for its GEMM, doubling a float32 graph's memory): slower, for the
    export's validation and calibration sessions of large float32 graphs, never the runtime's."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; ORT's warnings are not the user's business
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if lean:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    providers = providers or ["CPUExecutionProvider"]
    names = [p if isinstance(p, str) else p[0] for p in providers]
    missing = [p for p in names if p not in ort.get_available_providers()]
    if missing:
        raise Img2MusicError(
            f"onnxruntime here lacks {', '.join(missing)} (available: {', '.join(ort.get_available_providers())}); "
            "for CUDA install the 'gpu' extra: pip install 'img2music[gpu]'"
        )
    try:
        # enable_fallback=0: onnxruntime's Python layer would otherwise retry a session (or a
        # run) whose provider failed on the CPU, dropping the provider's options, and go on.
        session = ort.InferenceSession(str(Path(path)), sess_options=opts, providers=providers, enable_fallback=0)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise Img2MusicError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc
    check_providers(session, names, path)
    return session


PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9 (libcudart.so.13, libcublas.so.13, "
                             "libcublasLt.so.13, libcudnn.so.9) and an NVIDIA driver",
    "TensorrtExecutionProvider": "its TensorRT provider needs TensorRT 10 (libnvinfer.so.10) beside CUDA 13",
}


def check_providers(session, asked: list[str], path) -> None:
    """The session runs on the providers asked for. A provider library that fails to load makes
    ONNX Runtime log one line and run on the CPU without raising (measured with the 1.31.1 GPU
    wheel on a machine without CUDA): here that is one clear error instead."""
    running = session.get_providers()
    missing = [name for name in asked if name not in running]
    if missing:
        why = "; ".join(PROVIDER_LIBRARIES.get(name, name) for name in missing)
        raise Img2MusicError(f"{', '.join(missing)} did not start for {Path(path).name} (onnxruntime runs it on "
                             f"{', '.join(running)}): {why}; onnxruntime's own error above names the file it "
                             "could not load")
