"""What the decoder is conditioned on: the image's tokens, a text prompt's, or both.

MusicGen's cross-attention reads a sequence of T5-space tokens with a mask. An image
gives N tokens (the prompt bank's directive encoding, or a trained projector's); a text
prompt gives its T5 encoding. **Image + text** concatenates the two sequences (image
first), the way audiocraft's condition fuser joins several cross-attention conditions,
and weighs them: the prompt's tokens get weight W in cross-attention, i.e. log W added
to their attention scores (``export.cross_kv``), so they draw W times the attention
share plain concatenation would give them. W = 1 is exactly transformers with the joined
sequence as ``encoder_outputs``; W = 0 drops the prompt (image alone); W > 1 lets the
words dominate. **Text alone** is plain MusicGen text-to-music (the weight has nothing
to weigh against and is refused there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from img2music.basics.errors import Img2MusicError

PROMPT_WEIGHT_RANGE = (0.0, 10.0)
"""Accepted prompt weights (10: the words get 10x their plain share, the image next to nothing)."""


@dataclass
class Conditioning:
    """Conditioning tokens for a batch of pieces."""

    conditioning: np.ndarray
    """(B, N, D_t5) float32 conditioning tokens (zero where the mask is 0)."""
    mask: np.ndarray
    """(B, N) int64 attention mask."""
    directives: list[str] | None = None
    """The prompt-bank directive chosen per image (None for a trained projector or text alone)."""
    weight: np.ndarray | None = None
    """(B, N) float32 attention weight per token (None: all 1)."""
    prompt: str | None = None
    """The text prompt in it, if any."""


MIN_WEIGHT = 1e-30
"""Weights are floored here: log(1e-30) = -69 leaves a token e^-69 of its share, i.e. none."""


def log_weights(weight: np.ndarray) -> np.ndarray:
    """Token weights -> what cross_kv adds to the attention scores: log(max(w, 1e-30)), float32."""
    return np.log(np.maximum(np.asarray(weight, dtype=np.float32), MIN_WEIGHT)).astype(np.float32)


def check_prompt_weight(weight) -> float:
    low, high = PROMPT_WEIGHT_RANGE
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not low <= weight <= high:
        raise Img2MusicError(f"the prompt weight must be a number in [{low:g}, {high:g}], got {weight!r}")
    return float(weight)


def check_inputs(has_images: bool, prompt: str | None, prompt_weight: float) -> None:
    """Images, a prompt or both; a weight only where there is an image to weigh the prompt against."""
    if not has_images and prompt is None:
        raise Img2MusicError("give images, a prompt or both")
    if not has_images and prompt_weight != 1.0:
        raise Img2MusicError("a prompt weight weighs the prompt against an image; without an image it has "
                             "nothing to weigh against")


def with_prompt(image: Conditioning, text_hidden: np.ndarray, text_mask: np.ndarray, prompt: str,
                weight: float = 1.0) -> Conditioning:
    """Image tokens (B, N, D) followed by the prompt's (1, T, D), the prompt weighted by ``weight``."""
    weight = check_prompt_weight(weight)
    b = image.conditioning.shape[0]
    text = np.repeat(text_hidden.astype(np.float32), b, axis=0)  # (B, T, D)
    text_mask = np.repeat(text_mask.astype(np.int64), b, axis=0)  # (B, T)
    image_weight = image.weight if image.weight is not None else np.ones(image.mask.shape, np.float32)
    return Conditioning(
        np.concatenate([image.conditioning.astype(np.float32), text], axis=1),  # (B, N + T, D)
        np.concatenate([image.mask.astype(np.int64), text_mask], axis=1),
        image.directives,
        np.concatenate([image_weight, np.full(text_mask.shape, weight, np.float32)], axis=1),
        prompt,
    )


def text_only(text_hidden: np.ndarray, text_mask: np.ndarray, prompt: str, batch: int = 1) -> Conditioning:
    """A prompt alone: MusicGen text-to-music."""
    if batch < 1:
        raise Img2MusicError("at least one piece")
    return Conditioning(np.repeat(text_hidden.astype(np.float32), batch, axis=0),
                        np.repeat(text_mask.astype(np.int64), batch, axis=0), prompt=prompt)
