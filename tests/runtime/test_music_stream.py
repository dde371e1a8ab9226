"""The streaming chain (one core -> exact streaming EnCodec) through the public API (tiny bundle)."""

import numpy as np
import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.core import Windowing
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.encodec_stream import snr_db


def full_decode(tiny_models, codes):
    with torch.no_grad():
        return tiny_models.musicgen.audio_encoder.decode(torch.from_numpy(codes)[None], [None]).audio_values[:, 0].numpy()


@pytest.mark.parametrize("chunk_frames", [7, 50, 250])
def test_stream_is_the_core_plus_an_exact_decode(tiny_onnx, tiny_models, photos, chunk_frames):
    """Any chunk size: the same codes as the core's fixed-length generation, audio = the full
    decode of those codes (>= 90 dB), the whole piece and no more."""
    images = [photos["astronaut"], photos["coffee"]]
    sampling = SamplingConfig(seed=5)
    stream = tiny_onnx.stream(images, seconds=3.0, sampling=sampling, chunk_frames=chunk_frames)
    chunks = list(stream)
    assert chunks[-1].last and not any(c.last for c in chunks[:-1])
    assert all(c.codes.shape[2] == chunk_frames for c in chunks[:-1])
    codes = np.concatenate([c.codes for c in chunks], axis=2)
    audio = np.concatenate([c.audio for c in chunks], axis=1)
    assert codes.shape == (2, 4, 150) and audio.shape == (2, 150 * 640)
    cond = tiny_onnx.condition(images)
    np.testing.assert_array_equal(codes, tiny_onnx.generator.generate(cond.conditioning, cond.mask, 150, sampling))
    assert snr_db(full_decode(tiny_models, codes), audio) >= 90.0
    assert stream.directives == cond.directives and len(stream.directives) == 2
    with pytest.raises(Img2MusicError, match="complete"):
        stream.next_chunk()


def test_whole_piece_api_joins_the_stream(tiny_onnx, photos):
    sampling = SamplingConfig(seed=2)
    result = tiny_onnx([photos["rocket"]], 1.0, sampling)
    streamed = np.concatenate([c.audio for c in tiny_onnx.stream([photos["rocket"]], 1.0, sampling)], axis=1)
    np.testing.assert_array_equal(result.audio, streamed)
    assert result.codes.shape == (1, 4, 50) and set(result.timer.seconds) >= {"clip", "cross_kv", "decoder", "encodec"}


def test_long_piece_goes_through_windows(tiny_onnx, tiny_models, photos):
    """Past one window (here 2 s windows): the piece's exact length, re-primes as in live, and
    the first window's frames are those of a piece that needs no re-prime."""
    sampling = SamplingConfig(seed=1, top_k=50)
    window = Windowing(window_frames=100, keep_frames=40)
    stream = tiny_onnx.stream([photos["chelsea"]], seconds=6.0, sampling=sampling, window=window)
    chunks = list(stream)
    codes = np.concatenate([c.codes for c in chunks], axis=2)
    audio = np.concatenate([c.audio for c in chunks], axis=1)
    assert codes.shape == (1, 4, 300) and audio.shape == (1, 300 * 640)
    assert tiny_onnx.generator.reprimes == 1 + (300 - 100 - 1) // (100 - 40)  # windows of 60 new frames after the first
    assert snr_db(full_decode(tiny_models, codes), audio) >= 90.0
    cond = tiny_onnx.condition([photos["chelsea"]])
    tiny_onnx.generator.start(cond.conditioning, cond.mask, sampling, window=Windowing(window_frames=400, keep_frames=100))
    np.testing.assert_array_equal(tiny_onnx.generator.next_frames(96, sampling), codes[:, :, :96])


def test_endless_stream_and_conditioning_changes(tiny_onnx, tiny_pipeline, photos):
    bank = tiny_pipeline.projector.bank
    stream = tiny_onnx.stream([photos["coffee"]], sampling=SamplingConfig(seed=0))  # no length: endless
    first = stream.next_chunk(30)
    assert first.codes.shape == (1, 4, 30) and not first.last
    assert first.audio.shape == (1, (30 - 4) * 640)  # 4 frames of lookahead held back
    stream.blend_conditioning(bank.t5_hidden[[7]], bank.t5_mask[[7]])
    stream.swap_conditioning(bank.t5_hidden[[9]], bank.t5_mask[[9]])
    after = stream.next_chunk(30)
    assert after.audio.shape == (1, 30 * 640) and tiny_onnx.generator.reprimes == 1
    with pytest.raises(Img2MusicError, match="pieces"):
        stream.blend_conditioning(bank.t5_hidden[[1, 2]], bank.t5_mask[[1, 2]])


def test_one_decoder_cache_one_owner(tiny_onnx, photos):
    """A pipeline has one cache: a new stream supersedes the old one, which then refuses to go on."""
    old = tiny_onnx.stream([photos["coffee"]], seconds=2.0)
    old.next_chunk(10)
    new = tiny_onnx.stream([photos["rocket"]], seconds=1.0)
    with pytest.raises(Img2MusicError, match="started another piece"):
        old.next_chunk(10)
    assert sum(c.codes.shape[2] for c in new) == 50


def test_guidance_cannot_be_switched_on_mid_piece(tiny_onnx, photos):
    stream = tiny_onnx.stream([photos["coffee"]], seconds=1.0, sampling=SamplingConfig(guidance_scale=1.0))
    stream.sampling = SamplingConfig(guidance_scale=3.0)
    with pytest.raises(Img2MusicError, match="guidance was off"):
        stream.next_chunk()


def test_chunks_carry_their_rate_and_channels_and_images_may_be_paths(tiny_onnx, photo_files):
    """What a program playing the chunks needs (as Piper's AudioChunk carries it); the public API
    takes image files by path as well as Pillow images and arrays."""
    import img2music

    assert img2music.OnnxPipeline is type(tiny_onnx)
    chunks = list(tiny_onnx.stream([photo_files["coffee"]], seconds=1.0, sampling=SamplingConfig(seed=1)))
    assert {(c.sample_rate, c.channels) for c in chunks} == {(32000, 1)}
    assert all(c.audio.ndim == 2 for c in chunks)
    with pytest.raises(Img2MusicError, match="image not found"):
        tiny_onnx.stream(["/nope/photo.jpg"], seconds=1.0)
