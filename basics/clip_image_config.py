"""How CLIP wants its pixels: sizes and statistics from a checkpoint's ``preprocessor_config.json``.

Read once from the checkpoint at export (checkpoints differ) and stored in the bundle
manifest; the runtime's ``runtime.pipeline.preprocess`` applies it without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from img2music.basics.errors import Img2MusicError

BICUBIC = 3
"""Pillow's resampling filter id for bicubic (``PIL.Image.Resampling.BICUBIC``)."""

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipImageConfig:
    """How CLIP wants its pixels; defaults are ViT-B/32's."""

    shortest_edge: int = 224
    """The shorter image side is resized to this many pixels (aspect kept)."""
    crop_height: int = 224
    """Height of the center crop after resizing."""
    crop_width: int = 224
    """Width of the center crop after resizing."""
    rescale_factor: float = 1.0 / 255.0
    """Multiplier from uint8 values to [0, 1]."""
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    """Per-channel mean subtracted after rescaling (RGB order)."""
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    """Per-channel standard deviation divided by after subtracting the mean."""
    resample: int = BICUBIC
    """Pillow resampling filter id (3 = bicubic)."""

    @classmethod
    def from_preprocessor_config(cls, config: dict | str | os.PathLike) -> "ClipImageConfig":
        """Read a transformers ``preprocessor_config.json`` (a dict, the file, or its directory)."""
        if not isinstance(config, dict):
            path = Path(config)
            if path.is_dir():
                path = path / "preprocessor_config.json"
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise Img2MusicError(f"cannot read CLIP preprocessor config {path}: {exc}") from exc
        size = config.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise Img2MusicError(f"unsupported CLIP resize rule {size!r}: expected 'shortest_edge'")
            size = size["shortest_edge"]
        crop = config.get("crop_size", size)
        if isinstance(crop, dict):
            crop_h, crop_w = crop["height"], crop["width"]
        else:
            crop_h = crop_w = crop
        return cls(
            shortest_edge=int(size),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            rescale_factor=float(config.get("rescale_factor", 1.0 / 255.0)),
            image_mean=tuple(float(x) for x in config.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(float(x) for x in config.get("image_std", OPENAI_CLIP_STD)),
            resample=int(config.get("resample", BICUBIC)),
        )

    def to_preprocessor_config(self) -> dict:
        """The transformers ``preprocessor_config.json`` content for this config."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    def to_dict(self) -> dict:
        return asdict(self)
