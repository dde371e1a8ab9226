"""Sampling: the settings (shared by the reference pipeline and the exported runtime) and the
sampler that applies them to logits (numpy).

Order, as transformers and audiocraft: classifier-free guidance, temperature, top-k, top-p,
then a draw (or argmax when greedy). Top-k keeps ties with the k-th value and top-p keeps
the smallest set whose mass reaches p, like transformers' warpers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from img2music.basics.errors import Img2MusicError


@dataclass
class SamplingConfig:
    """How tokens are chosen from the decoder's logits.

    Order (as transformers and audiocraft): classifier-free guidance, temperature,
    top-k, top-p, then sampling (or argmax when ``greedy``).
    """

    guidance_scale: float = 3.0
    """Classifier-free guidance g: logits = uncond + g * (cond - uncond); <= 1 turns it off."""
    temperature: float = 1.0
    """Softmax temperature (ignored when greedy)."""
    top_k: int = 250
    """Keep the k most likely tokens; 0 keeps all."""
    top_p: float = 0.0
    """Nucleus sampling mass; 0 (or 1) turns it off."""
    seed: int = 0
    """Seed of the sampler; the same seed gives the same music."""
    greedy: bool = False
    """Take the argmax instead of sampling (deterministic, used for parity tests)."""

    def __post_init__(self) -> None:
        if self.guidance_scale < 0:
            raise Img2MusicError(f"guidance scale must be >= 0, got {self.guidance_scale}")
        if not self.temperature > 0:
            raise Img2MusicError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise Img2MusicError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise Img2MusicError(f"top-p must be in [0, 1], got {self.top_p}")

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def with_null_branch(conditioning: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, N, D) + (B, N) -> (2B, ...): the guidance null branch (zero states, zero mask)
    appended as rows B..2B-1, as transformers does."""
    return (np.concatenate([conditioning, np.zeros_like(conditioning)]),
            np.concatenate([mask, np.zeros_like(mask)]))


def decoder_rows(tokens: np.ndarray, guidance: bool) -> np.ndarray:
    """(B, K, ...) tokens -> the decoder's rows: repeated for the null branch under guidance."""
    return np.concatenate([tokens, tokens]) if guidance else tokens


def apply_guidance(logits: np.ndarray, batch: int, scale: float) -> np.ndarray:
    """(2B, K, V) logits, conditional rows first -> (B, K, V) ``uncond + g * (cond - uncond)``."""
    cond, uncond = logits[:batch], logits[batch : 2 * batch]
    return uncond + scale * (cond - uncond)


class TokenSampler:
    """Turns (B, K, V) scores into (B, K) tokens; seeded, so runs repeat exactly."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, scores: np.ndarray, config: SamplingConfig) -> np.ndarray:
        if config.greedy:
            return np.argmax(scores, axis=-1)
        scores = scores.astype(np.float64) / config.temperature
        vocab = scores.shape[-1]
        if 0 < config.top_k < vocab:
            kth = np.partition(scores, vocab - config.top_k, axis=-1)[..., vocab - config.top_k, None]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if 0.0 < config.top_p < 1.0:
            order = np.argsort(-probs, axis=-1, kind="stable")
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
            keep_sorted = mass_before < config.top_p  # always keeps the most likely token
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, axis=-1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(axis=-1, keepdims=True)
        # Inverse-CDF draw: one uniform per (row, codebook).
        cdf = np.cumsum(probs, axis=-1)
        u = self.rng.random(cdf.shape[:-1] + (1,)) * cdf[..., -1:]
        tokens = (cdf < u).sum(axis=-1)
        return np.minimum(tokens, vocab - 1)
