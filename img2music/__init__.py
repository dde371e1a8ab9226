"""img2music: pictures and live camera frames to music (CLIP -> projector -> MusicGen -> EnCodec).

``import img2music`` gives the runtime's public API (:mod:`img2music.runtime`: the pipeline,
its stream and chunks, sampling settings, bundle loading, a live session); the role packages
sit beside it: ``img2music.runtime``, ``img2music.export``, ``img2music.training``,
``img2music.calibration``, ``img2music.benchmarks`` and ``img2music.basics`` (the repository's
top-level folders, installed under this one name).
"""

from __future__ import annotations

import os
from importlib import import_module

# A checkout that is not installed (``PYTHONPATH=checkout``: benchmarks/gpu_check.sh on a bare
# GPU machine, which must not pip-install into its Python): the role folders sit beside this
# one, and img2music.<role> resolves to them. Installed (editable or wheel), this adds nothing
# new: the editable map points at the same folders, and a wheel has no pyproject.toml beside it.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_CHECKOUT, "pyproject.toml")) and os.path.isdir(os.path.join(_CHECKOUT, "runtime")):
    __path__.append(_CHECKOUT)

from img2music.runtime import __all__  # noqa: E402  (the runtime package's __init__ imports nothing heavy)


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
