"""The live loop's settings: what it reads frames from (:class:`SourceConfig`) and how it makes
music from them (:class:`EngineConfig`). Frozen and checked once, at construction; ``live.py``'s
flags fill them in, and ``runtime.session.LiveSessionConfig`` holds them with the rest."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from img2music.basics.errors import require
from img2music.runtime.generation.conditioning import check_prompt_weight
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.loop.scene import SceneConfig

TRANSITION_MODES = ("blend", "reprime")


def _positive(name: str, value: float | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
           f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
           f"{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: exactly one of ``camera``, ``video``, ``images``, ``synthetic``
    or ``custom`` (a :class:`runtime.loop.sources.FrameSource` of the caller's own)."""

    camera: str | None = None
    """Camera index, ``/dev/video*`` path, RTSP/HTTP URL or GStreamer pipeline (contains '!')."""
    video: str | None = None
    """Video file, played at its frame rate, looped."""
    images: str | None = None
    """Folder of images shown as a slideshow."""
    synthetic: bool = False
    """Generated scenes (no camera needed)."""
    custom: Any = None
    """Any object with ``name``, ``bgr`` and ``open()`` (``runtime.loop.sources.FrameSource``)."""
    interval: float = 10.0
    """Slideshow: seconds per image."""
    scene_seconds: float = 6.0
    """Synthetic: seconds per scene."""
    seed: int = 0
    """Synthetic: the scenes' seed."""
    stale_after: float = 3.0
    """Seconds without a good frame before the source is reopened."""
    fallback_image: str | None = None
    """Picture the music starts from while the source has no frame (None: a calm dusk gradient)."""

    def __post_init__(self) -> None:
        given = [x for x in (self.camera, self.video, self.images, self.custom) if x is not None]
        require(len(given) + bool(self.synthetic) == 1,
               "give exactly one source: --camera, --video, --images or --synthetic")
        if self.camera is not None and self.camera.startswith("/dev/"):
            require(os.path.exists(self.camera), f"camera device not found: {self.camera}")
        if self.custom is not None:
            require(callable(getattr(self.custom, "open", None)), "a custom source needs an open() method")
        _positive("--interval", self.interval)
        _positive("--scene-seconds", self.scene_seconds)
        _positive("--stale-after", self.stale_after)


@dataclass(frozen=True)
class EngineConfig:
    """How the live loop makes music (``runtime.loop.engine``)."""

    chunk_frames: int = 25
    """Code frames generated per chunk (50 per second); doubled while falling behind."""
    buffer_seconds: float = 1.0
    """Audio kept ahead of the sound card."""
    preroll_seconds: float = 0.5
    """Audio buffered before the sound starts (at most ``buffer_seconds``); the buffer then grows to
    ``buffer_seconds`` (``runtime.audio.playout``): the first audio half a second of music sooner."""
    low_water: float = 0.15
    """Seconds left in the ring at which the playout starts repeating audio."""
    stall_seconds: float = 10.0
    """Seconds without fresh music or any generator progress before the playout fades to silence."""
    transition_seconds: float = 4.0
    """Length of the conditioning blend after a scene change (0 = immediate swap)."""
    transition_mode: str = "blend"
    """'blend' (interpolate conditioning, keep the cache) or 'reprime' (re-prime per chunk)."""
    embed_interval: float = 0.25
    """Seconds between looks at the newest frame; CLIP runs only when its thumbnail moved
    (scene.FrameGate), so a short interval costs little while the picture stands still."""
    window_seconds: float | None = None
    """Length of one generation window (None: the context budget chooses, at most MusicGen's
    trained 30 s); capped by the bundle."""
    keep_seconds: float | None = None
    """Music carried into the next window as its prompt (None: the context budget chooses)."""
    duration: float | None = None
    """Stop after this many seconds of audio: music, and silence while paused (None: run until stopped)."""
    first_frame_wait: float = 2.0
    """Seconds to wait for the source's first frame before the music starts from the fallback image."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """Scene-change detection."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Guidance, temperature, top-k/p and seed at the start (control requests change them while running)."""
    prompt: str | None = None
    """Text prompt joined to every scene's image tokens (``runtime.generation.conditioning``); None: the image alone."""
    prompt_weight: float = 1.0
    """How much the prompt counts against the image (0-10)."""
    thread_stuck_seconds: float = 10.0
    """Seconds without progress after which a playout, sound-output or status thread counts as
    hung and the run ends with an error (``runtime.loop.thread_watch``)."""

    def __post_init__(self) -> None:
        require(isinstance(self.chunk_frames, int) and self.chunk_frames >= 1,
               f"--chunk-frames must be a whole number >= 1, got {self.chunk_frames!r}")
        for name in ("buffer_seconds", "preroll_seconds", "low_water", "stall_seconds", "embed_interval",
                     "thread_stuck_seconds"):
            _positive(name, getattr(self, name))
        for name in ("window_seconds", "keep_seconds", "duration"):
            _positive(name, getattr(self, name), optional=True)
        _non_negative("transition_seconds", self.transition_seconds)
        _non_negative("first_frame_wait", self.first_frame_wait)
        require(self.transition_mode in TRANSITION_MODES,
               f"transition_mode must be one of {', '.join(TRANSITION_MODES)}, got {self.transition_mode!r}")
        check_prompt_weight(self.prompt_weight)
        require(self.prompt is None or bool(self.prompt.strip()), "the prompt is empty: give some words")
