"""Stereo checkpoints (facebook/musicgen-stereo-*): 8 codebooks, left and right interleaved,
each channel delayed like a mono piece; EnCodec decodes each channel. The oracle is
transformers: its stereo delay pattern, its greedy ``generate`` and its per-channel decode.
The tiny-stereo models and bundle are tests/runtime/conftest.py's; live.py in stereo is
tests/runtime/test_live_stereo.py's."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from img2music.runtime.generation.core import Windowing
from img2music.runtime.generation.delay_pattern import delay_pattern_mask
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.encodec_stream import snr_db

ROOT = Path(__file__).resolve().parents[2]
GREEDY = SamplingConfig(greedy=True, guidance_scale=3.0)


@pytest.fixture(scope="module")
def stereo_onnx(stereo_bundle):
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    return OnnxPipeline.load(stereo_bundle, threads=2)


@pytest.fixture(scope="module")
def stereo_reference(stereo_models):
    from img2music.runtime.torch_reference import ReferencePipeline

    return ReferencePipeline(stereo_models)


def test_the_stereo_delay_pattern_is_transformers(stereo_models):
    length = 20
    start = torch.full((8, 1), 2048)
    _, ref = stereo_models.musicgen.decoder.build_delay_pattern_mask(start, pad_token_id=2048, max_length=length)
    ours = delay_pattern_mask(8, length, 2048, audio_channels=2)
    np.testing.assert_array_equal(ours[:, 1:], ref[:, 1:].numpy())  # position 0: the start token
    assert (ours[0::2] == ours[1::2]).all()  # left and right codebook j share delay j


@pytest.mark.parametrize("prompt", [None, "slow jazz piano"])
def test_greedy_tokens_and_audio_equal_transformers(stereo_onnx, stereo_reference, photos, prompt):
    images = None if prompt else [photos["astronaut"]]
    ours = stereo_onnx(images, 4.2, GREEDY, prompt=prompt)  # 210 frames: 213 decoder steps
    theirs = stereo_reference(images, 4.2, GREEDY, prompt=prompt)
    assert ours.codes.shape == theirs.codes.shape == (1, 8, 210)
    np.testing.assert_array_equal(ours.codes, theirs.codes)
    # streamed EnCodec per channel vs transformers' full decode of each channel
    assert ours.audio.shape == theirs.audio.shape == (1, 210 * 640, 2)
    for channel in range(2):
        assert snr_db(theirs.audio[0, :, channel], ours.audio[0, :, channel]) >= 90.0
    assert not np.allclose(ours.audio[0, :, 0], ours.audio[0, :, 1])  # two channels, not one twice


def test_streamed_stereo_equals_the_full_decode_at_any_chunk(stereo_onnx, stereo_reference):
    codes = np.random.default_rng(5).integers(0, 2048, (2, 8, 97))
    full = stereo_reference.decode_audio(torch.from_numpy(codes))  # (2, S, 2)
    for chunk in (7, 25, 50):
        stream = stereo_onnx.stream_decoder(batch=2)
        audio = np.concatenate([stream.push(codes[:, :, i:i + chunk]) for i in range(0, 97, chunk)]
                               + [stream.flush()], axis=1)
        assert audio.shape == full.shape
        for b in range(2):
            for channel in range(2):
                assert snr_db(full[b, :, channel], audio[b, :, channel]) >= 90.0, (chunk, b, channel)


def test_a_reprimed_stereo_window_equals_transformers_audio_prompt(stereo_onnx, stereo_reference, photos):
    cond = stereo_onnx.condition([photos["coffee"]])
    gen = stereo_onnx.generator
    gen.start(cond.conditioning, cond.mask, GREEDY, window=Windowing(window_frames=120, keep_frames=60))
    frames = gen.next_frames(150, GREEDY)
    assert gen.reprimes == 1
    ref = stereo_reference.generate_codes(torch.from_numpy(cond.conditioning), torch.from_numpy(cond.mask), 33,
                                          GREEDY, prompt=frames[:, :, 60:120]).numpy()
    np.testing.assert_array_equal(ref[:, :, :60], frames[:, :, 60:120])  # the prompt comes back
    np.testing.assert_array_equal(ref[:, :, 60:90], frames[:, :, 120:150])


def test_generate_cli_writes_two_channel_wavs(stereo_bundle, photo_files, tmp_path):
    for source in (["--engines", str(stereo_bundle)], ["--preset", "tiny-stereo"]):
        out = tmp_path / source[0].strip("-")
        proc = subprocess.run([sys.executable, str(ROOT / "runtime" / "generate.py"), *source, "--image",
                               photo_files["astronaut"], "--seconds", "1", "--out", str(out), "--no-progress"],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        audio, rate = sf.read(out / "astronaut.wav")
        assert rate == 32000 and audio.shape == (32000, 2)
        assert np.all(np.sqrt(np.mean(audio ** 2, axis=0)) > 1e-4)


def test_stereo_chunks_say_they_are_stereo(stereo_onnx, photos):
    chunk = stereo_onnx.stream([photos["coffee"]], seconds=0.5, sampling=SamplingConfig(seed=1)).next_chunk(10)
    assert (chunk.sample_rate, chunk.channels) == (32000, 2) and chunk.audio.shape[2] == 2
