"""The ONNX Runtime generator vs transformers' generate (tiny bundle)."""

import numpy as np
import pytest
import torch

from img2music.runtime.generation.sampling import SamplingConfig, TokenSampler, apply_guidance
from tests.conftest import max_abs


@pytest.mark.parametrize("batch", [1, 3], ids=["B1", "B3"])
@pytest.mark.parametrize("guidance", [3.0, 1.0], ids=["cfg3", "nocfg"])
def test_greedy_tokens_equal_transformers_generate(tiny_onnx, tiny_pipeline, batch, guidance):
    bank = tiny_pipeline.projector.bank
    idx = [4, 61, 99][:batch]
    cond, mask = bank.t5_hidden[idx], bank.t5_mask[idx]
    sampling = SamplingConfig(greedy=True, guidance_scale=guidance)
    frames = 200  # 203 decoder steps
    ref = tiny_pipeline.generate_codes(torch.from_numpy(cond), torch.from_numpy(mask), frames, sampling).numpy()
    steps = []
    ours = tiny_onnx.generator.generate(cond, mask, frames, sampling, on_step=lambda: steps.append(1))
    assert len(steps) == frames + 3
    assert ours.shape == ref.shape == (batch, 4, frames)
    np.testing.assert_array_equal(ours, ref)


def test_seeded_sampling_repeats(tiny_onnx, tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    cond, mask = bank.t5_hidden[[2, 9]], bank.t5_mask[[2, 9]]
    gen = tiny_onnx.generator
    runs = []
    for seed in (7, 7, 8):
        runs.append(gen.generate(cond, mask, 40, SamplingConfig(seed=seed, top_k=50, top_p=0.9, temperature=1.2)))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert runs[0].min() >= 0 and runs[0].max() < 2048


def test_guidance_scale_can_change_between_steps(tiny_onnx, tiny_pipeline):
    bank = tiny_pipeline.projector.bank
    cond, mask = bank.t5_hidden[[30]], bank.t5_mask[[30]]
    gen = tiny_onnx.generator
    gen.start(cond, mask, SamplingConfig(greedy=True, guidance_scale=3.0), frames=20)
    steps = []
    mixed = gen.next_frames(7, SamplingConfig(greedy=True, guidance_scale=3.0), on_step=lambda: steps.append(1))
    assert len(steps) == 10  # the first 7 frames are complete after 10 steps
    mixed = np.concatenate([mixed, gen.next_frames(20, SamplingConfig(greedy=True, guidance_scale=6.0))], axis=2)
    assert mixed.shape[2] == 20 and gen.done
    plain = gen.generate(cond, mask, 20, SamplingConfig(greedy=True, guidance_scale=3.0))  # a new piece: a fresh cache
    np.testing.assert_array_equal(mixed[:, :, :7], plain[:, :, :7])  # frames complete before the change


def test_guidance_formula():
    logits = np.random.default_rng(0).standard_normal((4, 4, 16)).astype(np.float32)
    out = apply_guidance(logits, 2, 3.0)
    np.testing.assert_allclose(out, logits[2:] + 3.0 * (logits[:2] - logits[2:]), rtol=1e-6)


@pytest.mark.parametrize("top_k,top_p", [(5, 0.0), (0, 0.7), (20, 0.5), (2048, 0.95)])
def test_filters_match_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    scores = np.random.default_rng(1).standard_normal((3, 4, 2048)).astype(np.float32) * 3
    config = SamplingConfig(top_k=top_k, top_p=top_p, temperature=0.8)
    t = torch.from_numpy(scores.reshape(12, 2048) / 0.8)
    if 0 < top_k < 2048:
        t = TopKLogitsWarper(top_k)(None, t)
    if 0 < top_p < 1:
        t = TopPLogitsWarper(top_p)(None, t)
    allowed = torch.isfinite(t).numpy().reshape(3, 4, 2048)
    sampler = TokenSampler(seed=0)
    seen = np.zeros_like(allowed)
    for _ in range(300):
        tok = sampler(scores, config)
        np.put_along_axis(seen, tok[..., None], True, axis=-1)
    assert not np.any(seen & ~allowed), "sampled a token transformers filters out"
    if top_k == 5:
        assert np.all(seen.sum(-1) == 5)  # 300 draws hit every one of 5 allowed tokens


def test_sampled_distribution_follows_softmax():
    scores = np.log(np.array([[[0.5, 0.3, 0.2]]], dtype=np.float64))
    sampler = TokenSampler(seed=3)
    draws = np.array([sampler(scores, SamplingConfig(top_k=0))[0, 0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert max_abs(freq, [0.5, 0.3, 0.2]) < 0.03


def check_prefill_equals_stepping(pipeline, bank, tol: float, cache_tol: float) -> None:
    cond = np.concatenate([bank.t5_hidden[[3]], np.zeros_like(bank.t5_hidden[[3]])])
    mask = np.concatenate([bank.t5_mask[[3]], np.zeros_like(bank.t5_mask[[3]])])
    rng = np.random.default_rng(1)
    window = rng.integers(0, 2048, (2, 4, 60))
    nxt = rng.integers(0, 2048, (2, 4))
    dec = pipeline.decoder
    dec.set_conditioning(cond, mask)
    for t in range(window.shape[2]):
        stepped_last = dec.step(window[:, :, t]).copy()
    stepped_next = dec.step(nxt).copy()
    stepped_cache = dec.cache_rows(1, "value", 61).astype(np.float64)
    dec.set_conditioning(cond, mask)
    prefilled_last = dec.prefill(window).copy()
    assert dec.position == 60
    prefilled_next = dec.step(nxt).copy()
    assert max_abs(prefilled_last, stepped_last) <= tol
    assert max_abs(prefilled_next, stepped_next) <= tol
    assert max_abs(dec.cache_rows(1, "value", 61), stepped_cache) <= cache_tol


def test_prefill_equals_stepping(tiny_onnx, tiny_pipeline):
    """Re-priming a window in one prefill run gives the cache and logits of stepping through it."""
    check_prefill_equals_stepping(tiny_onnx, tiny_pipeline.projector.bank, tol=1e-4, cache_tol=1e-4)


def test_prefill_with_int8_cache(tiny_quantized_bundle, tiny_pipeline):
    """Same with the int8 cache: quantized rows may differ by one step, logits stay close."""
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    check_prefill_equals_stepping(OnnxPipeline.load(tiny_quantized_bundle), tiny_pipeline.projector.bank,
                                  tol=2e-2, cache_tol=1)
