"""The zero-shot prompt bank: image -> conditioning by picking a musical directive.

The bank holds, for each directive, its L2-normalised CLIP text embedding and its
MusicGen T5 encoding (padded, with a mask). An image picks the directive whose CLIP
text embedding is most similar to its CLIP image embedding (cosine); its T5 encoding
is the conditioning. Selecting is numpy only (the runtime's ``projector.onnx`` is the
same selection as a graph); building the bank (:func:`build_prompt_bank`) and the
torch-facing :class:`PromptBankProjector` import torch inside, so this module stays
importable without it. The directives live in ``basics/directives.txt`` (one per
line, ``#`` comments).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from img2music.basics.errors import Img2MusicError

log = logging.getLogger(__name__)

MIN_DIRECTIVES = 120


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


def load_directives() -> list[str]:
    """The curated musical directives shipped with the package."""
    text = resources.files("img2music.basics").joinpath("directives.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def build_prompt_bank(models, directives: list[str] | None = None, batch_size: int = 32) -> PromptBank:
    """Embed every directive with CLIP's text tower and MusicGen's T5 encoder."""
    import torch

    directives = list(directives) if directives is not None else load_directives()
    # the checkpoint's own limit (77 in OpenAI's CLIPs; a smaller text tower must not overflow)
    clip_positions = models.clip.config.text_config.max_position_embeddings
    text_embeds, hiddens, masks = [], [], []
    with torch.inference_mode():
        for start in range(0, len(directives), batch_size):
            batch = directives[start : start + batch_size]
            clip_in = models.clip_tokenizer(batch, padding=True, truncation=True, max_length=clip_positions,
                                           return_tensors="pt")
            emb = models.clip.get_text_features(input_ids=clip_in["input_ids"], attention_mask=clip_in["attention_mask"])
            emb = getattr(emb, "pooler_output", emb)
            text_embeds.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
            t5_in = models.t5_tokenizer(batch, padding=True, return_tensors="pt")
            hidden = models.musicgen.text_encoder(
                input_ids=t5_in["input_ids"], attention_mask=t5_in["attention_mask"]
            ).last_hidden_state
            hiddens.append((hidden * t5_in["attention_mask"][..., None]).numpy())
            masks.append(t5_in["attention_mask"].numpy())
    n_max = max(h.shape[1] for h in hiddens)
    t5_hidden = np.concatenate([np.pad(h, ((0, 0), (0, n_max - h.shape[1]), (0, 0))) for h in hiddens])
    t5_mask = np.concatenate([np.pad(m, ((0, 0), (0, n_max - m.shape[1]))) for m in masks])
    log.info("prompt bank: %d directives, %d T5 tokens each", len(directives), n_max)
    return PromptBank(
        directives=directives,
        text_embeds=np.concatenate(text_embeds).astype(np.float32),
        t5_hidden=t5_hidden.astype(np.float32),
        t5_mask=t5_mask.astype(np.int64),
    )


@dataclass
class ProjectorOutput:
    """Conditioning for MusicGen's cross-attention, in T5 space (what every projector returns)."""

    conditioning: Any
    """(B, N, D_t5) float torch tensor of conditioning tokens (zero where the mask is 0)."""
    mask: Any
    """(B, N) int64 torch attention mask."""
    directives: list[str] | None = None
    """The chosen directive per image (prompt bank only)."""
    scores: list[float] | None = field(default=None)
    """Image-directive cosine similarity per image (prompt bank only)."""


class PromptBankProjector:
    """Zero-shot projector over a :class:`PromptBank`, with the trained projectors' interface
    (torch embeddings in, :class:`ProjectorOutput` out): the PyTorch reference and the
    export's validation call it like any projector."""

    def __init__(self, bank: PromptBank) -> None:
        self.bank = bank

    def __call__(self, image_embeds) -> ProjectorOutput:
        import torch

        sel = self.bank.select(image_embeds.detach().float().cpu().numpy())
        return ProjectorOutput(
            conditioning=torch.from_numpy(sel.conditioning),
            mask=torch.from_numpy(sel.mask),
            directives=sel.directives,
            scores=[float(s) for s in sel.scores],
        )
