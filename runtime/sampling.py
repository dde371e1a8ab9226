"""Sampling settings shared by the reference pipeline and the exported runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from basics.errors import Img2MusicError


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
