"""What a generation returns, whichever backend ran it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from img2music.runtime.pipeline.timing import StageTimer


@dataclass
class GenerationResult:
    """Audio for a batch of images, with what was chosen and how long each stage took."""

    audio: np.ndarray
    """(B, samples) float32 waveforms."""
    sample_rate: int
    """Samples per second of ``audio``."""
    codes: np.ndarray
    """(B, K, F) int64 audio codes after un-delaying."""
    directives: list[str] | None
    """The prompt-bank directive chosen per image (None for a trained projector)."""
    timer: StageTimer
    """Seconds spent per stage."""
