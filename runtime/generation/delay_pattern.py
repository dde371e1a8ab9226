"""MusicGen's delay pattern and the arithmetic of steps, frames and samples (numpy).

Codebook k is shifted right by d_k steps: in a sequence of length L (position 0 is the
start token), codebook k holds the pad id at positions p <= d_k and p > L-S+d_k (its frame
p-1-d_k does not exist), and real codes in between. Mono: d_k = k and the span S = K.
Stereo (transformers' ``audio_channels=2``): left and right codebooks are interleaved
(even = left) and each channel is delayed like a mono one, d_k = k // 2, S = K / 2. Each
decoder pass emits one token per codebook, so N passes give a sequence of N+1 and N+1-S
audio frames (N-3 for S=4).
"""

from __future__ import annotations

import numpy as np

from img2music.basics.errors import Img2MusicError


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> np.ndarray:
    """(K,) each codebook's delay in steps: k // audio_channels."""
    return np.arange(num_codebooks) // audio_channels


def written_frames(position, delays: np.ndarray) -> np.ndarray:
    """The frame codebook k writes at sequence position p (0 is the start token): p - 1 - d_k.
    A position -> (K,); an array of L positions -> (K, L)."""
    if np.isscalar(position):
        return position - 1 - delays
    return np.asarray(position)[None, :] - 1 - delays[:, None]


def is_padding(frames: np.ndarray, total: float) -> np.ndarray:
    """Where the delay pattern forces the pad id: frames before the first (the start of the
    pattern) or at/after ``total`` (the end of a fixed-length piece; ``math.inf`` when endless)."""
    return (frames < 0) | (frames >= total)


def delay_pattern_mask(num_codebooks: int, length: int, pad_id: int, audio_channels: int = 1) -> np.ndarray:
    """(K, L) int64: ``pad_id`` where the delay pattern forces a pad, -1 where a code goes, for a
    sequence of length L (L - S frames). Same values as transformers' ``build_delay_pattern_mask``
    for an empty prompt; the generation core applies the same rule step by step."""
    delays = codebook_delays(num_codebooks, audio_channels)
    frames = written_frames(np.arange(length), delays)  # (K, L)
    return np.where(is_padding(frames, length - int(delays[-1]) - 1), pad_id, -1).astype(np.int64)


MIN_FRAMES = 4
"""Shortest generation: EnCodec's first convolution reflect-pads 3 frames (its exported
graph needs 4), and transformers applies no delay pattern below 2K-1 positions."""


def check_frames(frames: int, frame_rate: int = 50) -> int:
    if frames < MIN_FRAMES:
        raise Img2MusicError(
            f"at least {MIN_FRAMES} frames ({MIN_FRAMES * 1000 // frame_rate} ms) per generation; asked for {frames}"
        )
    return frames


def frames_for_seconds(seconds: float, frame_rate: int) -> int:
    """Audio frames for a duration (at least :data:`MIN_FRAMES`)."""
    if not seconds > 0:
        raise Img2MusicError(f"duration must be positive, got {seconds} s")
    return check_frames(int(round(seconds * frame_rate)), frame_rate)


def steps_for_frames(frames: int, delay_span: int) -> int:
    """Decoder passes needed for ``frames`` audio frames (frames + S - 1; S = K for mono)."""
    return frames + delay_span - 1
