"""img2music's runtime: engine bundles to music on ONNX Runtime + numpy, no torch.

The public API (what a program embedding img2music uses; ``import img2music`` gives the same)::

    from img2music.runtime import OnnxPipeline, SamplingConfig

    pipeline = OnnxPipeline.load("engines/small")
    for chunk in pipeline.stream(images=["photo.jpg"], seconds=10, sampling=SamplingConfig(seed=1)):
        play(chunk.audio[0], chunk.sample_rate)       # (samples,) mono, (samples, 2) stereo

    from img2music.runtime import BackendConfig, LiveSession, LiveSessionConfig, SourceConfig

    LiveSession(LiveSessionConfig(BackendConfig("engines/small"), SourceConfig(camera="0"))).run()

Names are imported on first use (as Polygraphy does), so ``import img2music`` costs nothing
and needs neither onnxruntime nor the live extras until a part that uses them is touched.

Subpackages, lowest first (each one's docstring says what it owns and may import; the
layering test holds them to it): ``bundle``, ``generation``, ``audio`` -> ``backends`` ->
``pipeline`` -> ``loop`` -> ``control`` -> ``session`` -> ``cli``. ``torch_reference`` is
the PyTorch oracle the bundles are checked against: the one module here that uses torch
(inside its functions; nothing in the runtime imports torch at module level).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_PUBLIC = {
    # generation on a bundle
    "OnnxPipeline": "img2music.runtime.pipeline.onnx_pipeline",
    "MusicStream": "img2music.runtime.pipeline.music_stream",
    "AudioChunk": "img2music.runtime.pipeline.music_stream",
    "GenerationResult": "img2music.runtime.pipeline.result",
    "SamplingConfig": "img2music.runtime.generation.sampling",
    "Conditioning": "img2music.runtime.generation.conditioning",
    # bundles and where they run
    "Bundle": "img2music.runtime.bundle.loading",
    "load_bundle": "img2music.runtime.bundle.loading",
    "PROVIDERS": "img2music.runtime.backends.providers",
    # a live session
    "LiveSession": "img2music.runtime.session.session",
    "LiveSessionConfig": "img2music.runtime.session.config",
    "BackendConfig": "img2music.runtime.session.config",
    "OutputConfig": "img2music.runtime.session.config",
    "ServerConfig": "img2music.runtime.session.config",
    "SourceConfig": "img2music.runtime.loop.config",
    "EngineConfig": "img2music.runtime.loop.config",
    "SceneConfig": "img2music.runtime.loop.scene",
    "FrameSource": "img2music.runtime.loop.sources",
    # errors
    "Img2MusicError": "img2music.basics.errors",
}

__all__ = [
    "OnnxPipeline",
    "MusicStream",
    "AudioChunk",
    "GenerationResult",
    "SamplingConfig",
    "Conditioning",
    "Bundle",
    "load_bundle",
    "PROVIDERS",
    "LiveSession",
    "LiveSessionConfig",
    "BackendConfig",
    "OutputConfig",
    "ServerConfig",
    "SourceConfig",
    "EngineConfig",
    "SceneConfig",
    "FrameSource",
    "Img2MusicError",
]
"""The public API: what the module docstring lists (``_PUBLIC`` says where each lives)."""


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from img2music.basics.errors import Img2MusicError
    from img2music.runtime.backends.providers import PROVIDERS
    from img2music.runtime.bundle.loading import Bundle, load_bundle
    from img2music.runtime.generation.conditioning import Conditioning
    from img2music.runtime.generation.sampling import SamplingConfig
    from img2music.runtime.loop.config import EngineConfig, SourceConfig
    from img2music.runtime.loop.scene import SceneConfig
    from img2music.runtime.loop.sources import FrameSource
    from img2music.runtime.pipeline.music_stream import AudioChunk, MusicStream
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline
    from img2music.runtime.pipeline.result import GenerationResult
    from img2music.runtime.session.config import BackendConfig, LiveSessionConfig, OutputConfig, ServerConfig
    from img2music.runtime.session.session import LiveSession
