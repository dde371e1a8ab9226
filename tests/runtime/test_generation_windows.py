"""Generation past one window: windows re-primed from their last frames, parity with transformers."""

import numpy as np
import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.core import Windowing
from img2music.runtime.generation.sampling import SamplingConfig


@pytest.fixture()
def conditioning(tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    return bank.t5_hidden[[8, 70]], bank.t5_mask[[8, 70]]


def test_first_window_equals_fixed_length_generation(tiny_onnx, conditioning):
    cond, mask = conditioning
    greedy = SamplingConfig(greedy=True)
    gen = tiny_onnx.generator
    # A fixed-length sequence ends in delay-pattern pads that its last K-1 frames see as
    # inputs; an endless stream has no end, so compare the frames before that.
    fixed = gen.generate(cond, mask, 153, greedy)[:, :, :150]
    gen.start(cond, mask, greedy, window=Windowing(window_frames=400, keep_frames=100))
    np.testing.assert_array_equal(gen.next_frames(150, greedy), fixed)
    assert gen.reprimes == 0


def test_reprime_equals_transformers_audio_prompt(tiny_onnx, tiny_pipeline, conditioning):
    """After a re-prime the new frames are what transformers generates from the same
    prompt (its audio-prompt path), greedy, guidance on."""
    cond, mask = conditioning
    greedy = SamplingConfig(greedy=True)
    gen = tiny_onnx.generator
    gen.start(cond, mask, greedy, window=Windowing(window_frames=120, keep_frames=60))
    frames = gen.next_frames(150, greedy)
    assert gen.reprimes == 1
    # 33 frames: the last K-1 of a fixed-length run see its end pads (see above)
    ref = tiny_pipeline.generate_codes(torch.from_numpy(cond), torch.from_numpy(mask), 33, greedy,
                                       prompt=frames[:, :, 60:120]).numpy()
    np.testing.assert_array_equal(ref[:, :, :60], frames[:, :, 60:120])  # the prompt comes back
    np.testing.assert_array_equal(ref[:, :, 60:90], frames[:, :, 120:150])


def test_forty_seconds_through_short_windows(tiny_onnx, conditioning):
    """40 s of music with 8 s windows: continuous frames, valid codes, exact streamed audio length."""
    cond, mask = conditioning
    sampling = SamplingConfig(seed=3, top_k=50)
    gen = tiny_onnx.generator
    gen.start(cond, mask, sampling, window=Windowing(window_frames=400, keep_frames=150))
    stream = tiny_onnx.stream_decoder(batch=2)
    audio, total = [], 0
    while total < 2000:
        chunk = gen.next_frames(50, sampling)
        total += chunk.shape[2]
        assert chunk.min() >= 0 and chunk.max() < 2048
        audio.append(stream.push(chunk))
    audio.append(stream.flush())
    audio = np.concatenate(audio, axis=1)
    assert audio.shape == (2, 2000 * 640) and np.all(np.isfinite(audio))
    assert gen.reprimes == (2000 - 400) // (400 - 150) + 1


def test_conditioning_swap_keeps_the_music_going(tiny_onnx, tiny_pipeline, conditioning):
    cond, mask = conditioning
    bank = tiny_pipeline.projector.bank
    gen = tiny_onnx.generator
    gen.start(cond, mask, SamplingConfig(seed=0), window=Windowing(window_frames=300, keep_frames=100))
    first = gen.next_frames(80, SamplingConfig(seed=0))
    gen.swap_conditioning(bank.t5_hidden[[20, 21]], bank.t5_mask[[20, 21]])
    after = gen.next_frames(80, SamplingConfig(seed=0))
    assert first.shape == after.shape == (2, 4, 80) and gen.reprimes == 1


def test_bad_windows_are_refused(tiny_onnx, conditioning):
    cond, mask = conditioning
    with pytest.raises(Img2MusicError, match="keep_frames"):
        tiny_onnx.generator.start(cond, mask, SamplingConfig(), window=Windowing(window_frames=100, keep_frames=100))
    with pytest.raises(Img2MusicError, match="at most 2044 frames"):
        tiny_onnx.generator.start(cond, mask, SamplingConfig(), window=Windowing(window_frames=2046, keep_frames=100))
