"""How a live run behaves (``runtime.live_engine``; ``live.py``'s flags fill it in)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.sampling import SamplingConfig
from runtime.scene import SceneConfig


@dataclass
class LiveConfig:
    chunk_frames: int = 25
    """Code frames generated per chunk (50 per second); doubled while falling behind."""
    buffer_seconds: float = 1.0
    """Audio kept ahead of the sound card; also the pre-roll before sound starts."""
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
    stale_after: float = 3.0
    """Seconds without a good frame before the source is reopened."""
    first_frame_wait: float = 2.0
    """Seconds to wait for the source's first frame before the music starts from the fallback image."""
    fallback_image: np.ndarray | None = None
    """(H, W, 3) RGB uint8 image the music starts from when the source has no frame yet
    (None: :func:`runtime.live_sources.default_fallback_image`)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """Scene-change detection."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Guidance, temperature, top-k/p and seed."""
    prompt: str | None = None
    """Text prompt joined to every scene's image tokens (``runtime.conditioning``); None: the image alone."""
    prompt_weight: float = 1.0
    """How much the prompt counts against the image (0-10)."""
    thread_stuck_seconds: float = 10.0
    """Seconds without progress after which a playout, sound-output or status thread counts as
    hung and the run ends with an error (``runtime.thread_watch``)."""
