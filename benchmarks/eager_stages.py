"""Per-stage timings of the PyTorch reference (transformers eager; runs in its own process)."""

from __future__ import annotations

import time

import numpy as np

from img2music.benchmarks.bench_decoder import bench_eager
from img2music.benchmarks.stats import peak_rss_mb, summarize_ms, time_calls
from img2music.benchmarks.suite_config import SuiteConfig, benchmark_image
from img2music.runtime.generation.sampling import SamplingConfig


def measure_eager(preset: str | None, musicgen: str | None, clip: str | None, config: SuiteConfig) -> dict:
    import torch

    from img2music.basics.models import load_models
    from img2music.runtime.pipeline.preprocess import preprocess_images
    from img2music.runtime.torch_reference import ReferencePipeline

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    models = load_models(preset=preset, musicgen=musicgen, clip=clip)
    pipeline = ReferencePipeline(models)
    load_s = time.perf_counter() - start
    image = benchmark_image()
    w, r = config.warmup, config.repeats
    sampling = SamplingConfig(seed=0)
    stages = {}
    stages["preprocess"] = summarize_ms(time_calls(lambda: preprocess_images([image], models.image_config), w, r))
    pixels = preprocess_images([image], models.image_config)
    stages["clip_vision"] = summarize_ms(time_calls(lambda: pipeline.embed_images(pixels), w, r))
    embeds = pipeline.embed_images(pixels)
    stages["projector"] = summarize_ms(time_calls(lambda: pipeline.projector(embeds), w, r))
    cond = pipeline.projector(embeds)
    mg = models.musicgen
    layers = mg.decoder.model.decoder.layers

    def cross_kv():  # what generate computes once per conditioning, with the null rows
        with torch.inference_mode():
            states = torch.cat([cond.conditioning, torch.zeros_like(cond.conditioning)])
            if hasattr(mg, "enc_to_dec_proj"):
                states = mg.enc_to_dec_proj(states)
            return [(layer.encoder_attn.k_proj(states), layer.encoder_attn.v_proj(states)) for layer in layers]

    stages["cross_kv"] = summarize_ms(time_calls(cross_kv, w, r))
    cond_np, mask_np = cond.conditioning.numpy(), cond.mask.numpy()
    steps = bench_eager(models, cond_np, mask_np, config.positions, sampling, w, max(3, r // 2))
    for pos in config.positions:
        stages[f"decoder_step@{pos}"] = summarize_ms([t / 1e3 for t in steps[pos]["all_in_ms"]])

    # Re-priming: transformers runs the window's tokens through the decoder in one forward.
    k = models.num_codebooks
    window = torch.from_numpy(np.random.default_rng(0).integers(0, 2048, (2 * k, config.reprime_steps)))
    states = torch.cat([cond.conditioning, torch.zeros_like(cond.conditioning)])
    enc_mask = torch.cat([cond.mask, torch.zeros_like(cond.mask)])

    def reprime():
        with torch.inference_mode():
            hidden = mg.enc_to_dec_proj(states) if hasattr(mg, "enc_to_dec_proj") else states
            mg.decoder(input_ids=window, encoder_hidden_states=hidden, encoder_attention_mask=enc_mask, use_cache=True)

    stages["reprime_window"] = summarize_ms(time_calls(reprime, 1, config.e2e_repeats))
    codes = torch.from_numpy(np.random.default_rng(1).integers(0, 2048, (1, k, models.frame_rate)))
    stages["encodec_1s"] = summarize_ms(time_calls(lambda: pipeline.decode_audio(codes), w, r))
    stages["time_to_first_audio"] = summarize_ms(time_calls(lambda: pipeline([image], 1.0, sampling), 1,
                                                            config.e2e_repeats))
    rtf = {}
    for seconds in config.rtf_seconds:
        if seconds > config.eager_max_seconds:
            rtf[f"{seconds:g}s"] = None
            continue
        wall = time_calls(lambda: pipeline([image], seconds, sampling), 0, 1)
        rtf[f"{seconds:g}s"] = {"audio_seconds": seconds, "wall_seconds": min(wall), "rtf": min(wall) / seconds}
    return {"kind": "transformers-eager", "precision": "fp32", "source": models.source, "load_seconds": load_s,
            "stages": stages, "rtf": rtf, "peak_rss_mb": peak_rss_mb()}
