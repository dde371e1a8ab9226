"""img2music: pictures and live camera frames to music (CLIP -> projector -> MusicGen -> EnCodec).

``import img2music`` gives the runtime's public API (:mod:`img2music.runtime`: the pipeline,
its stream and chunks, sampling settings, bundle loading, a live session); the role packages
sit beside it: ``img2music.runtime``, ``img2music.export``, ``img2music.training``,
``img2music.calibration``, ``img2music.benchmarks`` and ``img2music.basics`` (the repository's
top-level folders, installed under this one name).
"""

from __future__ import annotations

from importlib import import_module

from img2music.runtime import __all__  # the runtime package's __init__ imports nothing heavy


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module("img2music.runtime"), name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("img2music")
        except PackageNotFoundError:  # a checkout that is not installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
