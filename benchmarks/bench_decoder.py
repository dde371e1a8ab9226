"""Decoder step latency: ONNX Runtime (a bundle) vs transformers eager, in one run.

Usage::

    python export/build_engines.py --preset small-random --out engines/small-random
    python benchmarks/bench_decoder.py --bundle engines/small-random --threads 2

Batch 1 with classifier-free guidance (2 rows), at 16 / 256 / 1024 / 1500 cached
positions. "all-in" is one generator step as the runtime runs it: graph + guidance +
temperature/top-k sampling + delay-pattern bookkeeping; "graph" is the session run
alone. The eager baseline is transformers' decoder with its own KV cache plus the
same guidance and sampling in torch, what ``generate`` does per step. The cache is
filled with random values up to the position (the cost does not depend on them).
Reported: median (and min) over repeats after warm-up, the ratio eager / ORT, and
the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.machine import machine_record
from runtime.errors import Img2MusicError, run_cli, setup_logging
from runtime.sampling import SamplingConfig


def parse_positions(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def conditioning_from_bundle(pipeline, seed: int = 0):
    """A real prompt-bank conditioning: the directive a random image embedding picks."""
    import numpy as np

    clip_dim = pipeline.bundle.manifest["clip"]["embed_dim"]
    embeds = np.random.default_rng(seed).standard_normal((1, clip_dim)).astype(np.float32)
    cond, mask, _ = pipeline.project(embeds)
    return cond, mask


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_onnx(pipeline, cond, mask, positions, sampling, warmup, repeats) -> dict:
    gen = pipeline.generator
    gen.set_conditioning(cond, mask, guidance=True)
    results = {}
    for pos in positions:
        gen.begin(min(pos + warmup + repeats + 8, gen.decoder.shape.max_length - 4), seed=0)
        gen.seek(pos)
        rows = gen.sequence[:, :, 0].repeat(2, axis=0)
        graph = time_calls(lambda: gen.decoder.step(rows), warmup, repeats)
        gen.seek(pos)
        allin = time_calls(lambda: gen.step(sampling), warmup, repeats)
        results[pos] = {"graph_ms": [t * 1e3 for t in graph], "all_in_ms": [t * 1e3 for t in allin]}
    return results


def bench_eager(models, cond, mask, positions, sampling, warmup, repeats) -> dict:
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    mg = models.musicgen
    dec = mg.config.decoder
    heads, head_dim = dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
    k = models.num_codebooks
    results = {}
    with torch.inference_mode():
        states = torch.from_numpy(cond)
        if hasattr(mg, "enc_to_dec_proj"):
            states = mg.enc_to_dec_proj(states)
        mask_t = torch.from_numpy(mask)
        states = torch.cat([states * mask_t[..., None], torch.zeros_like(states)])  # (2, N, D)
        enc_mask = torch.cat([mask_t, torch.zeros_like(mask_t)])
        ids = torch.full((2 * k, 1), 2048, dtype=torch.long)
        gen = torch.Generator().manual_seed(0)
        for pos in positions:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            for layer in range(dec.num_hidden_layers):
                kv = torch.randn(2, heads, pos, head_dim)
                cache.self_attention_cache.update(kv, kv.clone(), layer)

            def step():
                out = mg.decoder(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=enc_mask,
                                 past_key_values=cache, use_cache=True)
                logits = out.logits.reshape(2, k, -1)
                scores = logits[1:] + sampling.guidance_scale * (logits[:1] - logits[1:])
                scores = scores / sampling.temperature
                kth = torch.topk(scores, sampling.top_k, dim=-1).values[..., -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
                probs = torch.softmax(scores, dim=-1).reshape(k, -1)
                return torch.multinomial(probs, 1, generator=gen)

            # Each call appends one position: the cache grows from pos to pos + warmup + repeats.
            times = time_calls(step, warmup, repeats)
            results[pos] = {"all_in_ms": [t * 1e3 for t in times]}
    return results


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "n": len(values)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Decoder step latency, ORT vs transformers eager.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True, help="engine bundle directory")
    p.add_argument("--preset", default=None,
                   help="preset for the eager baseline (default: the bundle's own preset, if it came from one)")
    p.add_argument("--positions", type=parse_positions, default=[16, 256, 1024, 1500], help="cached positions")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per position")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both backends")
    p.add_argument("--no-eager", action="store_true", help="skip the transformers baseline")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    from runtime.onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline.load(args.bundle, threads=args.threads, verify_hashes=False)
    cond, mask = conditioning_from_bundle(pipeline)
    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, top_k=250, seed=0)
    print(f"ONNX Runtime {pipeline.bundle.precision}: {args.bundle}", flush=True)
    onnx = bench_onnx(pipeline, cond, mask, args.positions, sampling, args.warmup, args.repeats)
    del pipeline

    eager = None
    if not args.no_eager:
        import torch

        from export.models import load_models

        preset = args.preset or json.loads((Path(args.bundle) / "manifest.json").read_text())["source"].get("preset")
        if preset is None:
            raise Img2MusicError("the eager baseline needs --preset (the bundle was not built from one)")
        torch.set_num_threads(args.threads)
        print(f"transformers eager: preset {preset}", flush=True)
        models = load_models(preset=preset)
        eager = bench_eager(models, cond, mask, args.positions, sampling, args.warmup, max(5, args.repeats // 2))

    machine = machine_record()
    rows = []
    print(f"\nmachine: {machine['cpu']}, {args.threads} threads; batch 1 + guidance (2 rows), median ms/step")
    print("| cached positions | ORT graph | ORT all-in | eager all-in | eager / ORT |")
    print("|---:|---:|---:|---:|---:|")
    for pos in args.positions:
        g = summarize(onnx[pos]["graph_ms"])
        a = summarize(onnx[pos]["all_in_ms"])
        row = {"positions": pos, "ort_graph_ms": g, "ort_all_in_ms": a}
        e_text = ratio = "-"
        if eager:
            e = summarize(eager[pos]["all_in_ms"])
            row["eager_all_in_ms"] = e
            row["speedup"] = e["median"] / a["median"]
            e_text, ratio = f"{e['median']:.1f}", f"{row['speedup']:.2f}x"
        rows.append(row)
        print(f"| {pos} | {g['median']:.1f} | {a['median']:.1f} | {e_text} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
