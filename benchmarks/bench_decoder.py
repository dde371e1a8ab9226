"""Decoder step latency: ONNX Runtime (a bundle) vs transformers eager, in one run.

Usage::

    python export/build_engines.py --preset small-random --out engines/small-random
    python benchmarks/bench_decoder.py --bundle engines/small-random --threads 2
    python benchmarks/bench_decoder.py --bundle engines/small-random --bundle engines/small-int8 \
        --bundle engines/small-int4 --threads 2

Batch 1 with classifier-free guidance (2 rows), at 16 / 256 / 1024 / 1500 cached
positions. ``--provider cuda|tensorrt`` times an fp16 bundle on the GPU against
transformers eager in float16 on the same GPU. "all-in" is one generator step as the runtime runs it: graph + guidance +
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
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.benchmarks.machine import machine_record, python_loop_seconds
from img2music.benchmarks.stats import time_calls
from img2music.runtime.cli.arguments import add_provider_arguments
from img2music.runtime.generation.sampling import SamplingConfig


def parse_positions(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def conditioning_from_bundle(pipeline, seed: int = 0):
    """A real prompt-bank conditioning: the directive a random image embedding picks."""
    import numpy as np

    clip_dim = pipeline.bundle.model.clip.embed_dim
    embeds = np.random.default_rng(seed).standard_normal((1, clip_dim)).astype(np.float32)
    cond, mask, _ = pipeline.project(embeds)
    return cond, mask


def bench_onnx(pipeline, cond, mask, positions, sampling, warmup, repeats) -> dict:
    """Per position: the decoder session's step alone ("graph") and the generation core's step
    ("all-in"), in one window as long as the cache allows (no re-prime while timing)."""
    from img2music.runtime.generation.core import Windowing

    gen = pipeline.generator
    max_frames = pipeline.bundle.model.decoder.max_frames
    gen.start(cond, mask, sampling, window=Windowing(window_frames=max_frames, keep_frames=max_frames // 2))
    rows = gen.tokens[:, :, 0].repeat(2, axis=0)  # (2, K) start tokens, guidance rows
    results = {}
    for pos in positions:
        if pos + warmup + repeats >= max_frames:
            raise Img2MusicError(f"position {pos} + {warmup + repeats} steps does not fit the cache ({max_frames})")
        gen.seek(pos)
        graph = time_calls(lambda: gen.decoder.step(rows), warmup, repeats)
        gen.seek(pos)
        allin = time_calls(lambda: gen.step(sampling), warmup, repeats)
        results[pos] = {"graph_ms": [t * 1e3 for t in graph], "all_in_ms": [t * 1e3 for t in allin]}
    return results


def bench_eager(models, cond, mask, positions, sampling, warmup, repeats, device: str = "cpu") -> dict:
    """transformers' decoder with its own cache + guidance and sampling in torch, per step.
    ``device="cuda"``: float16 on the GPU (the GPU bundles' precision), synchronized per step."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    dtype = torch.float16 if device != "cpu" else torch.float32
    mg = models.musicgen.to(device, dtype)
    dec = mg.config.decoder
    heads, head_dim = dec.num_attention_heads, dec.hidden_size // dec.num_attention_heads
    k = models.num_codebooks
    results = {}
    with torch.inference_mode():
        states = torch.from_numpy(cond).to(device, dtype)
        if hasattr(mg, "enc_to_dec_proj"):
            states = mg.enc_to_dec_proj(states)
        mask_t = torch.from_numpy(mask).to(device)
        states = torch.cat([states * mask_t[..., None], torch.zeros_like(states)])  # (2, N, D)
        enc_mask = torch.cat([mask_t, torch.zeros_like(mask_t)])
        ids = torch.full((2 * k, 1), 2048, dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        for pos in positions:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            for layer in range(dec.num_hidden_layers):
                kv = torch.randn(2, heads, pos, head_dim, device=device, dtype=dtype)
                cache.self_attention_cache.update(kv, kv.clone(), layer)

            def step():
                out = mg.decoder(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=enc_mask,
                                 past_key_values=cache, use_cache=True)
                logits = out.logits.reshape(2, k, -1)
                scores = logits[1:] + sampling.guidance_scale * (logits[:1] - logits[1:])
                scores = scores / sampling.temperature
                kth = torch.topk(scores, sampling.top_k, dim=-1).values[..., -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
                probs = torch.softmax(scores.float(), dim=-1).reshape(k, -1)
                tokens = torch.multinomial(probs, 1, generator=gen).cpu()  # to the host, as the next step needs
                return tokens

            # Each call appends one position: the cache grows from pos to pos + warmup + repeats.
            times = time_calls(step, warmup, repeats)
            results[pos] = {"all_in_ms": [t * 1e3 for t in times]}
    return results


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "n": len(values)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Decoder step latency, ORT vs transformers eager.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", required=True,
                   help="engine bundle directory; repeat to compare several in one run")
    p.add_argument("--preset", default=None,
                   help="preset for the eager baseline (default: the bundle's own preset, if it came from one)")
    p.add_argument("--positions", type=parse_positions, default=[16, 256, 1024, 1500], help="cached positions")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per position")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both backends")
    add_provider_arguments(p)
    p.add_argument("--no-eager", action="store_true", help="skip the transformers baseline")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, top_k=250, seed=0)
    loop_before = python_loop_seconds()
    onnx_results = {}
    cond = mask = None
    for bundle in args.bundle:
        pipeline = OnnxPipeline.load(bundle, threads=args.threads, verify_hashes=False, provider=args.provider,
                                     cuda_graph=args.cuda_graph)
        if cond is None:
            cond, mask = conditioning_from_bundle(pipeline)
        # several bundles: each column named by its directory (two int8 bundles must not share one)
        label = f"ORT {pipeline.bundle.precision}" if len(args.bundle) == 1 else \
            f"{Path(bundle).name} ({pipeline.bundle.precision})"
        if label in onnx_results:
            raise Img2MusicError(f"two bundles named {Path(bundle).name}: compare bundles in directories of their own name")
        print(f"{label}: {bundle}", flush=True)
        onnx_results[label] = bench_onnx(pipeline, cond, mask, args.positions, sampling, args.warmup, args.repeats)
        del pipeline

    eager = None
    if not args.no_eager:
        import torch

        from img2music.basics.models import load_models
        from img2music.runtime.bundle.loading import load_bundle

        preset = args.preset or load_bundle(args.bundle[0], verify_hashes=False).manifest.provenance.source.get("preset")
        if preset is None:
            raise Img2MusicError("the eager baseline needs --preset (the bundle was not built from one)")
        torch.set_num_threads(args.threads)
        device = "cpu" if args.provider == "cpu" else "cuda"
        print(f"transformers eager: preset {preset} on {device}", flush=True)
        models = load_models(preset=preset)
        eager = bench_eager(models, cond, mask, args.positions, sampling, args.warmup, max(5, args.repeats // 2),
                            device=device)

    machine = machine_record()
    loops = [round(loop_before, 3), round(python_loop_seconds(), 3)]
    rows = []
    labels = list(onnx_results)
    print(f"\nmachine: {machine['cpu']}, {args.threads} threads; batch 1 + guidance (2 rows); "
          "median ms/step, min in brackets (graph = session alone, all-in = graph + guidance + sampling); "
          f"pure-Python loop (10^7 additions) {loops[0]} s before / {loops[1]} s after")
    header = "| cached positions |" + "".join(f" {lab} graph | {lab} all-in |" for lab in labels)
    if eager:
        header += " eager all-in |" + "".join(f" eager / {lab} |" for lab in labels)
    print(header)
    print("|" + "---:|" * (header.count("|") - 1))
    for pos in args.positions:
        row = {"positions": pos}
        cells = []
        for lab in labels:
            g = summarize(onnx_results[lab][pos]["graph_ms"])
            a = summarize(onnx_results[lab][pos]["all_in_ms"])
            row[lab] = {"graph_ms": g, "all_in_ms": a}
            cells += [f"{g['median']:.1f}", f"{a['median']:.1f} ({a['min']:.1f})"]
        if eager:
            e = summarize(eager[pos]["all_in_ms"])
            row["eager_all_in_ms"] = e
            cells.append(f"{e['median']:.1f} ({e['min']:.1f})")
            for lab in labels:
                ratio = e["median"] / row[lab]["all_in_ms"]["median"]
                row[lab]["speedup_vs_eager"] = ratio
                cells.append(f"{ratio:.2f}x")
        rows.append(row)
        print(f"| {pos} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "threads": args.threads, "python_loop_s": loops,
                                               "bundles": dict(zip(labels, args.bundle)), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
