"""CLIP image preprocessing in numpy + Pillow (no torch), and image loading.

Matches transformers' ``CLIPImageProcessorPil`` (tested to 1e-5): RGB with alpha
composited on white, shortest side -> ``shortest_edge`` with Pillow's antialiased
bicubic, center crop, x * rescale_factor, (x - mean) / std. Pillow and not OpenCV,
because OpenCV's bicubic does not antialias and cannot match to 1e-5.

The sizes and statistics come from the checkpoint's ``preprocessor_config.json``
(``basics.clip_image_config.ClipImageConfig``): checkpoints differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from img2music.basics.clip_image_config import ClipImageConfig
from img2music.basics.errors import Img2MusicError

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]
"""A Pillow image, an (H, W[, C]) array, or the path of an image file."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (decode errors surface here, not later) as RGB."""
    if "://" in str(path):  # Path() would fold "http://" to "http:/" and say "not found"
        raise Img2MusicError(f"images are read from local files, not URLs: {path} (download it first)")
    path = Path(path)
    if not path.exists():
        raise Img2MusicError(f"image not found: {path}")
    if path.is_dir():
        raise Img2MusicError(f"expected an image file, got a directory: {path}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Img2MusicError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise Img2MusicError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError as exc:
        raise Img2MusicError(f"not a readable image (unknown or corrupt format): {path}") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise Img2MusicError(f"cannot decode image {path}: {exc}") from exc


def check_images(paths: Iterable[str | os.PathLike]) -> list[Image.Image]:
    """Load every image up front so bad input fails before any model is loaded."""
    return [load_image(p) for p in paths]


def to_rgb(image: ImageLike) -> Image.Image:
    """RGB Pillow image; transparency is composited onto white (as transformers does)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1|3|4) uint8/bool/float arrays -> Pillow image (channels RGB order)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
            array = np.nan_to_num(array) * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.shape[2] == 3 else "RGBA")
    raise Img2MusicError(f"unsupported image array shape {array.shape}")


def preprocess_image(image: ImageLike, config: ClipImageConfig) -> np.ndarray:
    """One image -> float32 (3, crop_h, crop_w) CLIP pixel values."""
    image = to_rgb(image)
    width, height = image.size
    if width < 1 or height < 1:
        raise Img2MusicError("image has no pixels")
    # transformers' get_resize_output_image_size: short side -> size, long side truncated.
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = config.shortest_edge, int(config.shortest_edge * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = np.asarray(image.resize((new_w, new_h), resample=config.resample), dtype=np.uint8)  # (H, W, 3)
    resized = _center_crop(resized, config.crop_height, config.crop_width)
    pixels = resized.astype(np.float64) * config.rescale_factor
    pixels = pixels.astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    pixels = (pixels - mean) / std  # (H, W, 3)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)


def preprocess_images(images: Sequence[ImageLike], config: ClipImageConfig) -> np.ndarray:
    """Images -> float32 (B, 3, crop_h, crop_w) CLIP pixel values."""
    if not images:
        raise Img2MusicError("no images given")
    return np.stack([preprocess_image(img, config) for img in images])


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Center crop (H, W, C); zero-pads when the image is smaller, like transformers."""
    h, w = image.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return image[top : top + crop_h, left : left + crop_w]
    out = np.zeros((max(h, crop_h), max(w, crop_w), image.shape[2]), dtype=image.dtype)
    pad_top, pad_left = max(0, (crop_h - h) // 2), max(0, (crop_w - w) // 2)
    out[pad_top : pad_top + h, pad_left : pad_left + w] = image
    return _center_crop(out, crop_h, crop_w)
