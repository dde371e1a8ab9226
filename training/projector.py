"""Projectors: CLIP image embedding (B, D_clip) -> conditioning tokens (B, N, D_t5) + mask (B, N).

The conditioning lives in T5 space (768 for t5-base); MusicGen's own ``enc_to_dec_proj``
maps it to the decoder width, so one projector serves every MusicGen size.

- :class:`MLPProjector`: the thesis' Study II network (Linear -> LayerNorm -> ReLU ->
  Dropout -> Linear, hidden 768), generalised to N output tokens (N=1 is the pooled form).
- :class:`TransformerProjector`: the thesis' Study I network, ViT-style: the embedding
  is expanded into N tokens (+ learned positions) and refined by a small transformer
  encoder before the output projection.

The zero-shot alternative (no training) is ``basics.prompt_bank.PromptBankProjector``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from img2music.basics.prompt_bank import ProjectorOutput


@dataclass
class MLPProjectorConfig:
    """Shape of the Study II projector."""

    clip_dim: int = 512
    """Input: CLIP image embedding size (512 for ViT-B/32)."""
    cond_dim: int = 768
    """Output: conditioning token size, the T5 encoder's d_model (768 for t5-base)."""
    num_tokens: int = 1
    """N output tokens; 1 is the thesis' pooled form."""
    hidden_dim: int = 768
    """Width of the hidden layer."""
    dropout: float = 0.1
    """Dropout after the activation (training only)."""


class MLPProjector(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Dropout -> Linear, reshaped to N tokens."""

    def __init__(self, config: MLPProjectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or MLPProjectorConfig()
        c = self.config
        self.net = nn.Sequential(
            nn.Linear(c.clip_dim, c.hidden_dim),
            nn.LayerNorm(c.hidden_dim),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden_dim, c.num_tokens * c.cond_dim),
        )

    def forward(self, image_embeds: torch.Tensor) -> ProjectorOutput:
        b = image_embeds.shape[0]
        cond = self.net(image_embeds).reshape(b, self.config.num_tokens, self.config.cond_dim)  # (B, N, D)
        mask = torch.ones(b, self.config.num_tokens, dtype=torch.long, device=image_embeds.device)  # (B, N)
        return ProjectorOutput(cond, mask)


@dataclass
class TransformerProjectorConfig:
    """Shape of the Study I (ViT-style) projector."""

    clip_dim: int = 512
    """Input: CLIP image embedding size."""
    cond_dim: int = 768
    """Output: conditioning token size (T5 d_model)."""
    num_tokens: int = 8
    """N output tokens."""
    width: int = 256
    """Transformer width."""
    layers: int = 2
    """Encoder layers."""
    heads: int = 4
    """Attention heads."""
    dropout: float = 0.1
    """Dropout inside the encoder (training only)."""


class TransformerProjector(nn.Module):
    """Embedding -> N tokens + positions -> TransformerEncoder -> Linear to T5 space."""

    def __init__(self, config: TransformerProjectorConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TransformerProjectorConfig()
        self.expand = nn.Linear(c.clip_dim, c.num_tokens * c.width)
        self.positions = nn.Parameter(torch.zeros(1, c.num_tokens, c.width))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, c.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.cond_dim)

    def forward(self, image_embeds: torch.Tensor) -> ProjectorOutput:
        b, c = image_embeds.shape[0], self.config
        tokens = self.expand(image_embeds).reshape(b, c.num_tokens, c.width) + self.positions  # (B, N, W)
        cond = self.out(self.norm(self.encoder(tokens)))  # (B, N, D)
        mask = torch.ones(b, c.num_tokens, dtype=torch.long, device=image_embeds.device)
        return ProjectorOutput(cond, mask)


PROJECTORS = {"mlp": (MLPProjector, MLPProjectorConfig), "transformer": (TransformerProjector,
                                                                       TransformerProjectorConfig)}
"""Trainable projectors by name (``train.py --projector``)."""


def build_projector(kind: str, **config) -> nn.Module:
    cls, config_cls = PROJECTORS[kind]
    return cls(config_cls(**config))


