"""Phase I inputs and a built tiny dataset, shared by the dataset and training tests."""

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageEnhance, ImageOps

from img2music.training.dataset_builder import BuildConfig, Builder

BASE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "page", "horse", "moon",
               "clock", "text")
EMOTIONS = ("calm", "joyful", "tense", "sad")


def _augment(image: Image.Image, k: int) -> Image.Image:
    image = image.convert("RGB")
    if k == 1:
        return ImageOps.mirror(image)
    if k == 2:
        w, h = image.size
        return image.crop((w // 8, h // 8, w - w // 8, h - h // 8))
    if k == 3:
        return ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.3)).enhance(0.5)
    return image


@pytest.fixture(scope="session")
def photo_manifest(tmp_path_factory):
    """48 photos (12 skimage photographs x 4 augmentations) in a JSONL manifest: emotions
    for stratification, a caption for every third, paired 48 kHz audio for every fourth."""
    import skimage.data

    root = tmp_path_factory.mktemp("phase1-input")
    rows = []
    for i, name in enumerate(BASE_PHOTOS):
        base = Image.fromarray(getattr(skimage.data, name)())
        for k in range(4):
            n = 4 * i + k
            path = root / f"{name}-{k}.jpg"
            _augment(base, k).save(path)
            row = {"image": path.name, "emotion": EMOTIONS[i % 4]}
            if n % 3 == 0:
                row["text"] = f"a photograph of a {name}"
            if n % 4 == 0:
                t = np.arange(48000) / 48000
                tone = 0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t) * np.exp(-t)
                sf.write(root / f"{name}.wav", tone.astype(np.float32), 48000)
                row["audio"] = f"{name}.wav"
            rows.append(row)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _config(manifest, out, **kw):
    values = dict(preset="tiny", captioner="tiny", llm="tiny", batch_size=8, t5_tokens=16, audio_seconds=1.0,
                  generate_codes=0.5) | kw
    return BuildConfig(input=str(manifest), out=str(out), **values)


class CountingBuilder(Builder):
    """Counts the items each step actually processes."""

    def __init__(self, *args, counts=None, **kw):
        super().__init__(*args, **kw)
        self.counts = counts if counts is not None else {}

    def run_step(self, name, items, work):
        def counted(batch):
            self.counts[name] = self.counts.get(name, 0) + len(batch)
            return work(batch)

        return super().run_step(name, items, counted)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, photo_manifest, tiny_models):
    out = tmp_path_factory.mktemp("phase1") / "clean"
    lines = []
    builder = Builder(_config(photo_manifest, out), report=lines.append)
    builder._models = tiny_models  # the session's tiny preset (same seed as --preset tiny)
    builder.build()
    return out
