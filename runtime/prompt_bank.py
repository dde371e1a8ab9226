"""The prompt bank: zero-shot image -> conditioning by picking a musical directive.

numpy only, so the runtime can use it without torch. The bank holds, for each
directive, its L2-normalised CLIP text embedding and its MusicGen T5 encoding (padded,
with a mask). An image picks the directive whose CLIP text embedding is most similar
to its CLIP image embedding (cosine); its T5 encoding is the conditioning. The
embeddings are computed once, offline (``training.prompt_bank.build_prompt_bank``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from runtime.errors import Img2MusicError


@dataclass
class BankSelection:
    """What the prompt bank chose for a batch of images."""

    conditioning: np.ndarray
    """(B, N, D_t5) float32 T5 encodings of the chosen directives (zero past the mask)."""
    mask: np.ndarray
    """(B, N) int64, 1 for real tokens."""
    indices: np.ndarray
    """(B,) index of the chosen directive."""
    scores: np.ndarray
    """(B,) cosine similarity of image and chosen directive."""
    directives: list[str]
    """The chosen directives' text, one per image."""


@dataclass
class PromptBank:
    """Directives with their CLIP text embeddings and T5 encodings."""

    directives: list[str]
    """The directive texts, P of them."""
    text_embeds: np.ndarray
    """(P, D_clip) float32 L2-normalised CLIP text embeddings."""
    t5_hidden: np.ndarray
    """(P, N, D_t5) float32 T5 encoder outputs, zero-padded to the longest directive."""
    t5_mask: np.ndarray
    """(P, N) int64 attention mask of the T5 encodings."""

    def __post_init__(self) -> None:
        p = len(self.directives)
        if not (self.text_embeds.shape[0] == self.t5_hidden.shape[0] == self.t5_mask.shape[0] == p):
            raise Img2MusicError("prompt bank arrays disagree on the number of directives")
        if self.t5_hidden.shape[:2] != self.t5_mask.shape:
            raise Img2MusicError("prompt bank T5 encodings and mask have different shapes")

    @property
    def num_tokens(self) -> int:
        return int(self.t5_hidden.shape[1])

    def similarities(self, image_embeds: np.ndarray) -> np.ndarray:
        """(B, D_clip) image embeddings -> (B, P) cosine similarities."""
        image_embeds = np.asarray(image_embeds, dtype=np.float32)
        if image_embeds.ndim != 2 or image_embeds.shape[1] != self.text_embeds.shape[1]:
            raise Img2MusicError(
                f"image embeddings of shape {image_embeds.shape} do not fit the prompt bank "
                f"(expects (B, {self.text_embeds.shape[1]}))"
            )
        norms = np.linalg.norm(image_embeds, axis=1, keepdims=True)
        return (image_embeds / np.maximum(norms, 1e-12)) @ self.text_embeds.T

    def select(self, image_embeds: np.ndarray) -> BankSelection:
        """Pick the best-matching directive per image (ties: the first in the bank)."""
        sims = self.similarities(image_embeds)  # (B, P)
        idx = np.argmax(sims, axis=1)
        return BankSelection(
            conditioning=self.t5_hidden[idx].astype(np.float32),
            mask=self.t5_mask[idx].astype(np.int64),
            indices=idx.astype(np.int64),
            scores=sims[np.arange(len(idx)), idx].astype(np.float32),
            directives=[self.directives[i] for i in idx],
        )

    def save(self, path: str | os.PathLike) -> None:
        np.savez(
            path,
            directives=np.array(json.dumps(self.directives)),
            text_embeds=self.text_embeds,
            t5_hidden=self.t5_hidden,
            t5_mask=self.t5_mask,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PromptBank":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    directives=json.loads(str(data["directives"])),
                    text_embeds=data["text_embeds"].astype(np.float32),
                    t5_hidden=data["t5_hidden"].astype(np.float32),
                    t5_mask=data["t5_mask"].astype(np.int64),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise Img2MusicError(f"cannot read prompt bank {path}: {exc}") from exc
