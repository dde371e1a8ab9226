"""The PyTorch reference pipeline (tiny preset)."""

import numpy as np
import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.delay_pattern import delay_pattern_mask, frames_for_seconds, steps_for_frames
from img2music.runtime.generation.sampling import SamplingConfig

HOP = 640  # EnCodec 32 kHz: 640 samples per code frame


@pytest.mark.parametrize("names", [("astronaut",), ("coffee", "camera", "logo")], ids=["B1", "B3"])
def test_wav_length_follows_steps(tiny_pipeline, photos, names):
    steps = []
    result = tiny_pipeline([photos[n] for n in names], 0.5, SamplingConfig(seed=1), on_step=lambda: steps.append(1))
    frames = frames_for_seconds(0.5, 50)
    assert frames == 25
    # transformers' generate runs the steps that make tokens (plus at most one extra forward)
    assert steps_for_frames(frames, 4) <= len(steps) <= steps_for_frames(frames, 4) + 1
    assert result.codes.shape == (len(names), 4, frames)
    assert result.audio.shape == (len(names), frames * HOP)
    assert result.audio.dtype == np.float32 and np.all(np.isfinite(result.audio))
    assert len(result.directives) == len(names)
    assert set(result.timer.seconds) == {"preprocess", "clip", "projector", "decoder", "encodec"}


def test_same_seed_same_audio_other_seed_other_audio(tiny_pipeline, photos):
    images = [photos["chelsea"], photos["rocket"]]
    a = tiny_pipeline(images, 0.4, SamplingConfig(seed=5))
    b = tiny_pipeline(images, 0.4, SamplingConfig(seed=5))
    c = tiny_pipeline(images, 0.4, SamplingConfig(seed=6))
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.codes, c.codes)


def test_codes_decode_to_the_audio(tiny_pipeline, tiny_models, photos):
    result = tiny_pipeline([photos["astronaut"]], 0.3, SamplingConfig(seed=2))
    with torch.no_grad():
        audio = tiny_models.musicgen.audio_encoder.decode(torch.from_numpy(result.codes)[None], [None]).audio_values
    np.testing.assert_array_equal(audio[:, 0].numpy(), result.audio)
    assert result.codes.min() >= 0 and result.codes.max() < 2048  # no pad ids left after un-delay


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_equals_text_prompted_generate(tiny_pipeline, tiny_models, photos, guidance):
    """With the prompt bank, the reference is MusicGen's text path: same tokens and audio as
    ``generate(input_ids=<directive tokens>)`` (greedy, guidance on and off)."""
    images = [photos["coffee"], photos["page"]]
    result = tiny_pipeline(images, 0.6, SamplingConfig(greedy=True, guidance_scale=guidance))
    tokens = tiny_models.t5_tokenizer(result.directives, padding=True, return_tensors="pt")
    frames = result.codes.shape[-1]
    with torch.no_grad():
        audio = tiny_models.musicgen.generate(
            **tokens, do_sample=False, guidance_scale=guidance if guidance > 1 else None, max_length=frames + 4,
            decoder_start_token_id=2048, pad_token_id=2048, bos_token_id=2048, num_return_sequences=1,
        )
    assert audio.shape == (2, 1, frames * HOP)
    assert float((audio[:, 0].numpy() - result.audio).__abs__().max()) <= 1e-5


def test_too_long_for_one_pass(tiny_pipeline, photos):
    with pytest.raises(Img2MusicError, match="frames"):
        tiny_pipeline([photos["rocket"]], 60.0)
    with pytest.raises(Img2MusicError, match="positive"):
        tiny_pipeline([photos["rocket"]], 0.0)
    with pytest.raises(Img2MusicError, match="at least 4 frames"):
        tiny_pipeline([photos["rocket"]], 0.02)


@pytest.mark.parametrize("length", [7, 8, 13, 40])  # below 2K-1 transformers skips the pattern
def test_delay_pattern_matches_transformers(tiny_models, length):
    start = torch.full((2 * 4, 1), 2048)
    _, ref_mask = tiny_models.musicgen.decoder.build_delay_pattern_mask(start, pad_token_id=2048, max_length=length)
    ours = delay_pattern_mask(4, length, 2048)
    np.testing.assert_array_equal(np.tile(ours, (2, 1)), ref_mask.numpy())


def test_sampling_config_rejects_nonsense():
    for bad in (dict(temperature=0), dict(top_k=-1), dict(top_p=1.5), dict(guidance_scale=-1)):
        with pytest.raises(Img2MusicError):
            SamplingConfig(**bad)
