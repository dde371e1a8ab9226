"""Per-stage timings of an engine bundle on ONNX Runtime (runs in its own process)."""

from __future__ import annotations

import time

import numpy as np

from img2music.benchmarks.bench_decoder import bench_onnx
from img2music.benchmarks.stats import peak_rss_mb, summarize_ms, time_calls
from img2music.benchmarks.suite_config import SuiteConfig, benchmark_image
from img2music.runtime.generation.sampling import SamplingConfig

BENCHMARK_PROMPT = "slow warm piano with soft strings, no drums, 70 bpm, melancholic"


def measure_bundle(bundle: str, config: SuiteConfig, provider: str = "cpu") -> dict:
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline
    from img2music.runtime.pipeline.preprocess import preprocess_images

    start = time.perf_counter()
    pipeline = OnnxPipeline.load(bundle, threads=config.threads, provider=provider)
    load_s = time.perf_counter() - start
    image = benchmark_image()
    w, r = config.warmup, config.repeats
    sampling = SamplingConfig(seed=0)
    stages = {}
    stages["preprocess"] = summarize_ms(time_calls(lambda: preprocess_images([image], pipeline.image_config), w, r))
    pixels = preprocess_images([image], pipeline.image_config)
    stages["clip_vision"] = summarize_ms(time_calls(lambda: pipeline.embed_images(pixels), w, r))
    embeds = pipeline.embed_images(pixels)
    stages["projector"] = summarize_ms(time_calls(lambda: pipeline.project(embeds), w, r))
    cond, mask, _ = pipeline.project(embeds)
    gen = pipeline.generator
    stages["cross_kv"] = summarize_ms(time_calls(lambda: gen.start(cond, mask, sampling), w, r))
    if pipeline.text is not None:  # the text path: T5 once per prompt change, then a longer cross_kv
        ids = pipeline.text.token_ids(BENCHMARK_PROMPT)[None]  # (1, T)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        stages["t5_encoder"] = summarize_ms(time_calls(lambda: pipeline.text.session.run(None, feed), w, r))
        joined = pipeline.condition([image], prompt=BENCHMARK_PROMPT)
        stages["cross_kv_with_prompt"] = summarize_ms(time_calls(
            lambda: gen.start(joined.conditioning, joined.mask, sampling, weight=joined.weight), w, r))
    steps = bench_onnx(pipeline, cond, mask, config.positions, sampling, w, r)
    for pos in config.positions:
        stages[f"decoder_step@{pos}"] = summarize_ms([t / 1e3 for t in steps[pos]["all_in_ms"]])

    # Re-priming a window: the window's tokens go into a fresh cache in one prefill run.
    tokens = np.random.default_rng(0).integers(0, 2048, (2, pipeline.num_codebooks, config.reprime_steps))

    def reprime():
        gen.decoder.prefill(tokens)

    gen.start(cond, mask, sampling)
    stages["reprime_window"] = summarize_ms(time_calls(reprime, 0, config.e2e_repeats))
    codes = np.random.default_rng(1).integers(0, 2048, (1, pipeline.num_codebooks, pipeline.frame_rate))
    stages["encodec_1s"] = summarize_ms(time_calls(lambda: pipeline.decode_audio(codes), w, r))
    stages["time_to_first_audio"] = summarize_ms(
        time_calls(lambda: pipeline([image], 1.0, sampling), 1, config.e2e_repeats))
    rtf = {}
    for seconds in config.rtf_seconds:
        wall = time_calls(lambda: pipeline([image], seconds, sampling), 0, config.e2e_repeats)
        rtf[f"{seconds:g}s"] = {"audio_seconds": seconds, "wall_seconds": min(wall), "rtf": min(wall) / seconds}
    return {"kind": "onnxruntime", "precision": pipeline.bundle.precision, "bundle": str(bundle),
            "provider": provider,
            "load_seconds": load_s, "stages": stages, "rtf": rtf, "peak_rss_mb": peak_rss_mb()}
