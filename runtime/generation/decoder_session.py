"""The decoder-session interface: what every backend's MusicGen decoder offers the generator.

A session owns the self-attention KV cache and the cross-attention K/V of one
conditioning. The generation core (``runtime.generation.core``) drives it step by step and
knows nothing of the backend; backends are chosen in one place (``runtime.backends.providers``).
Implemented today by ``runtime.backends.ort_decoder.OrtDecoderSession`` (ONNX Runtime,
CPU provider, in-place cache). A GPU session (device-resident cache, CUDA graphs)
implements the same methods.

Rows: B2 = 2B with classifier-free guidance (conditional rows first, then the null
branch), else B. Positions: the cache holds ``config.max_length`` rows; a step writes
row ``position`` and advances it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from img2music.basics.model_config import DecoderConfig


class DecoderSession(ABC):
    """One decoder with its caches. ``position`` is the number of cached rows."""

    config: DecoderConfig
    """The decoder facts (from the bundle manifest)."""
    batch: int = 0
    """Rows (B2) of the current conditioning; 0 before the first."""
    position: int = 0
    """Cached positions; the next step writes this row. Benchmarks may set it to time a
    step at a given cache length (the rows before it then hold whatever is in memory)."""

    @abstractmethod
    def set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, reset: bool = True,
                         weight: np.ndarray | None = None) -> None:
        """Cross-attention K/V for (B2, N, D_t5) conditioning + (B2, N) mask, computed once and
        kept until the next call. Starts an empty cache unless ``reset`` is False (a live
        transition keeps the music so far; the batch must then stay the same). ``weight``
        (B2, N): each token's attention weight (None: all 1, as transformers; see
        ``runtime.generation.conditioning``)."""

    @abstractmethod
    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """(B2, K) codes at ``position`` -> (B2, K, V) logits; the array may be reused by the
        next call (copy it to keep it)."""

    @abstractmethod
    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        """(B2, K, S) tokens into an empty cache in one run (positions 0..S-1) -> the last
        token's (B2, K, V) logits. Re-priming a window costs one pass instead of S steps."""

    @abstractmethod
    def cache_rows(self, layer: int, kind: str, rows: int) -> np.ndarray:
        """A host copy of the first ``rows`` cached positions of one layer's 'key' or 'value':
        (B2, H, rows, 64) (KV calibration and validation read it)."""

    def reset(self) -> None:
        """Start a new sequence. Rows past the position are never read, so nothing is cleared."""
        self.position = 0

    def close(self) -> None:
        """Free the caches; the session is unusable afterwards. Idempotent."""
