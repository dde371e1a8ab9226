"""What machine a benchmark ran on (recorded with every result)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    versions = {}
    for dist in ("onnxruntime", "torch", "transformers", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores_available": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def python_loop_seconds() -> float:
    """A fixed pure-Python loop (10^7 additions), printed beside absolute times so a slow host
    can be told from a slow program: 0.65-0.75 s on a calm 2-core CI machine."""
    start, x = time.perf_counter(), 0
    for i in range(10**7):
        x += i
    return time.perf_counter() - start
