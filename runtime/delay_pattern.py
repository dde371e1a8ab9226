"""MusicGen's delay pattern and the arithmetic of steps, frames and samples (numpy).

Codebook k is shifted right by k steps: in a sequence of length L (position 0 is the
start token), codebook k holds the pad id at positions p <= k and p > L-K+k (its frame
p-1-k does not exist), and real codes in between. Each decoder pass emits one token per
codebook, so N passes give a sequence of N+1 and N+1-K audio frames (N-3 for K=4).
"""

from __future__ import annotations

import numpy as np

from basics.errors import Img2MusicError


def written_frames(position, num_codebooks: int) -> np.ndarray:
    """The frame codebook k writes at sequence position p (0 is the start token): p - 1 - k.
    A position -> (K,); an array of L positions -> (K, L)."""
    books = np.arange(num_codebooks)
    if np.isscalar(position):
        return position - 1 - books
    return np.asarray(position)[None, :] - 1 - books[:, None]


def is_padding(frames: np.ndarray, total: float) -> np.ndarray:
    """Where the delay pattern forces the pad id: frames before the first (the start of the
    pattern) or at/after ``total`` (the end of a fixed-length piece; ``math.inf`` when endless)."""
    return (frames < 0) | (frames >= total)


def delay_pattern_mask(num_codebooks: int, length: int, pad_id: int) -> np.ndarray:
    """(K, L) int64: ``pad_id`` where the delay pattern forces a pad, -1 where a code goes, for a
    sequence of length L (L - K frames). Same values as transformers' ``build_delay_pattern_mask``
    for an empty prompt; the generation core applies the same rule step by step."""
    frames = written_frames(np.arange(length), num_codebooks)  # (K, L)
    return np.where(is_padding(frames, length - num_codebooks), pad_id, -1).astype(np.int64)


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


def steps_for_frames(frames: int, num_codebooks: int) -> int:
    """Decoder passes needed for ``frames`` audio frames (frames + K - 1)."""
    return frames + num_codebooks - 1
