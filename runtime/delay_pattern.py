"""MusicGen's delay pattern and the arithmetic of steps, frames and samples (numpy).

Codebook k is shifted right by k steps: in a sequence of length L (position 0 is the
start token), codebook k holds the pad id at positions p <= k and p > L-K+k, and
real codes in between. Each decoder pass emits one token per codebook, so N passes
give a sequence of N+1 and, after un-delaying, N+1-K audio frames (N-3 for K=4).
"""

from __future__ import annotations

import numpy as np

from runtime.errors import Img2MusicError


def delay_pattern_mask(num_codebooks: int, length: int, pad_id: int) -> np.ndarray:
    """(K, L) int64: ``pad_id`` where the delay pattern forces a pad, -1 where a code goes.

    Same values as transformers' ``build_delay_pattern_mask`` for an empty prompt.
    """
    pos = np.arange(length)[None, :]  # (1, L)
    k = np.arange(num_codebooks)[:, None]  # (K, 1)
    forced = (pos <= k) | (pos > length - num_codebooks + k)
    return np.where(forced, pad_id, -1).astype(np.int64)


def apply_delay_pattern(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Overwrite forced positions of (..., K, T) tokens with the pad id (T <= L)."""
    t = tokens.shape[-1]
    return np.where(mask[..., :t] == -1, tokens, mask[..., :t])


def undelay(sequence: np.ndarray, num_codebooks: int) -> np.ndarray:
    """(B, K, L) delayed sequence (with start token) -> (B, K, L-K) aligned audio codes."""
    b, k, length = sequence.shape
    if k != num_codebooks:
        raise ValueError(f"expected {num_codebooks} codebooks, got {k}")
    frames = length - num_codebooks
    if frames < 1:
        return np.zeros((b, k, 0), dtype=sequence.dtype)
    return np.stack([sequence[:, i, i + 1 : i + 1 + frames] for i in range(k)], axis=1)


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
