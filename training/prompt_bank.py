"""Build the zero-shot prompt bank: directives embedded by CLIP's text tower and T5.

The directives live in ``training/directives.txt`` (one per line, ``#`` comments).
Building needs torch; using the bank (``runtime.prompt_bank``) does not.
"""

from __future__ import annotations

import logging
from importlib import resources

import numpy as np

from runtime.prompt_bank import PromptBank

log = logging.getLogger(__name__)

MIN_DIRECTIVES = 120


def load_directives() -> list[str]:
    """The curated musical directives shipped with the package."""
    text = resources.files("training").joinpath("directives.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def build_prompt_bank(models, directives: list[str] | None = None, batch_size: int = 32) -> PromptBank:
    """Embed every directive with CLIP's text tower and MusicGen's T5 encoder."""
    import torch

    directives = list(directives) if directives is not None else load_directives()
    text_embeds, hiddens, masks = [], [], []
    with torch.inference_mode():
        for start in range(0, len(directives), batch_size):
            batch = directives[start : start + batch_size]
            clip_in = models.clip_tokenizer(batch, padding=True, truncation=True, max_length=77, return_tensors="pt")
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
