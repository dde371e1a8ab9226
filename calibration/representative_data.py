"""Representative images for calibration: real photographs plus deterministic augmentations.

Default: the photographs that scikit-image ships (``skimage.data``), each also
flipped, cropped, darkened, brightened and rotated. A folder of the user's own
images can replace them (``--calibration-images DIR``): calibrate on what the
installation will see.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageEnhance

from img2music.basics.errors import Img2MusicError
from img2music.runtime.pipeline.preprocess import load_image

SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
    "colorwheel", "camera", "page", "moon", "brick", "grass", "gravel", "retina",
)
AUGMENTATIONS = ("original", "hflip", "crop70", "dark", "bright", "rot90")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def augment(image: Image.Image, name: str) -> Image.Image:
    """One named, deterministic augmentation."""
    if name == "original":
        return image
    if name == "hflip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if name == "crop70":
        w, h = image.size
        dw, dh = int(w * 0.15), int(h * 0.15)
        return image.crop((dw, dh, w - dw, h - dh))
    if name == "dark":
        return ImageEnhance.Brightness(image).enhance(0.6)
    if name == "bright":
        return ImageEnhance.Brightness(image).enhance(1.4)
    if name == "rot90":
        return image.transpose(Image.Transpose.ROTATE_90)
    raise ValueError(f"unknown augmentation {name}")


def skimage_photos() -> dict[str, Image.Image]:
    try:
        import skimage.data
    except ImportError as exc:
        raise Img2MusicError("default calibration images come from scikit-image: pip install scikit-image, "
                             "or pass a folder of images") from exc
    photos = {}
    for name in SKIMAGE_PHOTOS:
        array = getattr(skimage.data, name)()
        photos[name] = Image.fromarray(array).convert("RGB")
    return photos


def folder_images(folder: str | os.PathLike) -> dict[str, Image.Image]:
    folder = Path(folder)
    if not folder.is_dir():
        raise Img2MusicError(f"calibration image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise Img2MusicError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return {p.name: load_image(p) for p in paths}


def representative_images(folder: str | os.PathLike | None = None, limit: int | None = None) -> list[tuple[str, Image.Image]]:
    """(name, image) pairs: every source image under every augmentation, in a fixed order."""
    sources = folder_images(folder) if folder else skimage_photos()
    items = [(f"{name}:{aug}", augment(img, aug)) for name, img in sources.items() for aug in AUGMENTATIONS]
    return items[:limit] if limit else items
