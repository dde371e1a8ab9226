"""Live audio as frames: mono is ``(S,)``, a stereo bundle's is ``(S, C)`` (C = 2).

Every live stage (resampler, playout, ring buffer, sinks, recording, transport) keeps its
audio in one of these two shapes and works along the first axis, so a frame count is
``len(audio)`` either way. Mono stays 1-D rather than ``(S, 1)``: the mono path's arrays,
and so its numbers, are exactly what they were before stereo came to the live runtime.
"""

from __future__ import annotations

import numpy as np


def silence(frames: int, channels: int) -> np.ndarray:
    """``frames`` frames of zeros: (frames,) for mono, (frames, channels) otherwise."""
    return np.zeros(frame_shape(frames, channels), dtype=np.float32)


def frame_shape(frames: int, channels: int) -> tuple[int, ...]:
    """The array shape of ``frames`` frames (-1 is allowed, for ``reshape``)."""
    return (frames,) if channels == 1 else (frames, channels)


def per_frame(gain: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """(S,) gain shaped to scale (S,) or (S, C) ``audio`` frame by frame: every channel of a
    frame gets the same gain, so fades and crossfades keep the stereo image."""
    return gain if audio.ndim == 1 else gain[:, None]  # (S,) or (S, 1)
