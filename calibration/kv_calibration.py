"""Per-channel scales for the int8 KV cache, from real keys and values.

The fp32 bundle generates music for representative conditionings (sampled, seeded,
guidance on, as the runtime runs); every key and value the decoder writes into its
cache is collected, and each channel's scale is its absolute maximum / 127 (no
clipping of anything seen). Channel = (layer, key|value, head, dim), the granularity
of GroupQueryAttention's PER_CHANNEL ``k_scale``/``v_scale``. Fixed guesses clip or
waste range, so scales always come from here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.sampling import SamplingConfig

log = logging.getLogger(__name__)

INT8_MAX = 127.0


@dataclass
class KvCalibration:
    """Scales and how they were obtained."""

    scales: np.ndarray
    """(layers, 2, heads, head_dim) float32; index 0 = keys, 1 = values."""
    absmax: np.ndarray
    """(layers, 2, heads, head_dim) float32 largest |value| seen per channel."""
    provenance: dict
    """Images, conditionings, steps, seed: enough to reproduce the scales."""


@dataclass
class KvCalibrationConfig:
    """How much generation the calibration runs."""

    steps: int = 250
    """Decoder steps per conditioning batch (5 s of audio)."""
    batch: int = 8
    """Conditionings generated together."""
    seed: int = 0
    """Sampling seed."""
    guidance_scale: float = 3.0
    """Guidance as at run time (the null rows are cached too)."""

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_kv_scales(generator: CodeGenerator, conditionings: np.ndarray, masks: np.ndarray,
                        config: KvCalibrationConfig, provenance: dict) -> KvCalibration:
    """Run fp32 generations over (C, N, D) conditionings and take per-channel absmax of the cache."""
    decoder_session = generator.decoder
    shape = decoder_session.config
    absmax = np.zeros((shape.num_layers, 2, shape.num_heads, shape.head_dim), dtype=np.float32)
    sampling = SamplingConfig(guidance_scale=config.guidance_scale, seed=config.seed)
    frames = config.steps - shape.num_codebooks + 1
    for start in range(0, len(conditionings), config.batch):
        cond, mask = conditionings[start : start + config.batch], masks[start : start + config.batch]
        generator.generate(cond, mask, frames, SamplingConfig(**{**sampling.to_dict(), "seed": config.seed + start}))
        rows = decoder_session.position
        for layer in range(shape.num_layers):
            for j, kind in enumerate(("key", "value")):
                cache = decoder_session.cache_rows(layer, kind, rows)  # (B2, H, rows, 64)
                absmax[layer, j] = np.maximum(absmax[layer, j], np.abs(cache).max(axis=(0, 2)))
        log.info("calibrated on conditionings %d-%d", start, start + len(cond) - 1)
    scales = np.maximum(absmax, 1e-8) / INT8_MAX
    provenance = dict(provenance, **config.to_dict(), statistic="per-channel absmax / 127",
                      conditionings=int(len(conditionings)))
    return KvCalibration(scales.astype(np.float32), absmax, provenance)
