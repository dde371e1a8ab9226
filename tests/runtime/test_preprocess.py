"""CLIP preprocessing in numpy + Pillow vs transformers' CLIPImageProcessorPil (the oracle)."""

import numpy as np
import pytest
from PIL import Image

from img2music.basics.clip_image_config import ClipImageConfig
from img2music.basics.errors import Img2MusicError
from img2music.runtime.pipeline.preprocess import load_image, preprocess_image, preprocess_images
from tests.conftest import PHOTO_NAMES, max_abs


@pytest.fixture(scope="module", params=[224, 32, 336], ids=lambda s: f"size{s}")
def processor(request):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = request.param
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_matches_transformers_processor(processor, photos, name):
    img = photos[name]
    config = ClipImageConfig.from_preprocessor_config(processor.to_dict())
    expected = processor(images=img, return_tensors="np")["pixel_values"][0]
    ours = preprocess_image(img, config)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    assert max_abs(ours, expected) <= 1e-5


def test_modes_cover_gray_and_rgba(photos):
    modes = {img.mode for img in photos.values()}
    assert {"RGB", "L", "RGBA"} <= modes
    sizes = {img.size for img in photos.values()}
    assert len(sizes) >= 5  # different sizes and aspects


def test_rgba_alpha_is_composited_on_white():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :30, 3] = 255  # left half opaque red, right half fully transparent
    img = Image.fromarray(rgba, mode="RGBA")
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ours = preprocess_image(img, ClipImageConfig.from_preprocessor_config(proc.to_dict()))
    assert max_abs(ours, proc(images=img, return_tensors="np")["pixel_values"][0]) <= 1e-5
    # transparent pixels became white, not black
    white = (1.0 - np.array(ClipImageConfig().image_mean)) / np.array(ClipImageConfig().image_std)
    np.testing.assert_allclose(ours[:, 16, -1], white, atol=1e-5)


def test_numpy_frames_match_pillow_images(photos):
    config = ClipImageConfig()
    img = photos["chelsea"]
    np.testing.assert_array_equal(preprocess_image(np.asarray(img), config), preprocess_image(img, config))
    gray = photos["camera"]
    np.testing.assert_array_equal(preprocess_image(np.asarray(gray), config), preprocess_image(gray, config))


def test_config_from_checkpoint_file(tmp_path):
    import json

    custom = ClipImageConfig(shortest_edge=256, crop_height=240, crop_width=240, image_mean=(0.5, 0.5, 0.5),
                             image_std=(0.25, 0.25, 0.25))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(custom.to_preprocessor_config()))
    loaded = ClipImageConfig.from_preprocessor_config(tmp_path)
    assert loaded == custom
    batch = preprocess_images([Image.new("RGB", (300, 500))], loaded)
    assert batch.shape == (1, 3, 240, 240)


def test_load_image_errors(tmp_path):
    with pytest.raises(Img2MusicError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(Img2MusicError, match="directory"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(Img2MusicError, match="empty"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    with pytest.raises(Img2MusicError, match="not a readable image"):
        load_image(text)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(Img2MusicError):
        load_image(truncated)
