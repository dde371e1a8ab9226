"""The GPU check: fp16 bundles on the CUDA (and TensorRT) providers, parity, speed, in one run.

Usage (through ``benchmarks/gpu_check.sh``, which installs missing wheels from a local
wheelhouse first)::

    python benchmarks/gpu_check.py --out results/gpu            # on a GPU machine (~5-10 min)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check   # anywhere: the tiny preset on the CPU

Steps, each recorded with its outcome (a step that fails is recorded and the rest go on):
1. machine: GPU, driver facts, onnxruntime and its providers, torch;
2. tiny and small-random fp16 bundles, their accuracy reports measured on the GPU
   (teacher-forced agreement, KL, max |Δlogit| and greedy agreement against the fp32
   graphs on the CPU);
3. CUDA graph replay against plain runs: the same greedy tokens;
4. decoder step at 16/256/1024/1500 cached positions, all-in (graph + guidance +
   sampling), graph on and off, against transformers eager in float16 on the same GPU;
5. 10 s of music end to end (CLIP + projector + steps + EnCodec) on the GPU;
6. TensorRT (when onnxruntime has its provider and TensorRT is installed): engines built
   into the bundle, then the same 10 s.
Writes ``gpu_check.json`` and ``gpu_check.md``. ``--dry-run`` runs the same plumbing on the
tiny preset with the CPU provider and no eager GPU baseline: it proves the script, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging

POSITIONS = (16, 256, 1024, 1500)
TARGETS_MS = {16: 1.0, 1500: 1.5}
"""The issue's targets for the all-in step on an H100/H200 (ms)."""


class Check:
    """Runs named steps, records each one's result or error, times them."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}

    def step(self, name: str, fn, *args, **kwargs):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            self.steps[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), "result": result}
            print(json.dumps(result, indent=1, default=str)[:2000], flush=True)
            return result
        except Exception as exc:  # recorded; the check goes on with what it can still do
            self.steps[name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                                "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
            return None


def machine_facts(provider: str) -> dict:
    import onnxruntime

    facts = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
             "providers": onnxruntime.get_available_providers()}
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        facts["torch"] = None
    if provider != "cpu":
        from img2music.runtime.backends.gpu_facts import gpu

        facts["gpu"], facts["compute_capability"] = gpu()
        try:
            from img2music.runtime.backends.gpu_facts import tensorrt_version

            facts["tensorrt"] = tensorrt_version()
        except Img2MusicError as exc:
            facts["tensorrt"] = str(exc)
    return facts


def build(preset: str, out: Path, provider: str, report_steps: int, images: str | None) -> dict:
    from img2music.basics.models import load_models
    from img2music.calibration.build_quantized import QuantizationOptions
    from img2music.calibration.kv_calibration import KvCalibrationConfig
    from img2music.export.bundle_build import build_bundle

    options = QuantizationOptions(precision="fp16", images=images, image_limit=18, report_steps=report_steps,
                                  kv=KvCalibrationConfig(steps=report_steps), report_provider=provider)
    lines: list[str] = []
    build_bundle(out, load_models(preset=preset), quantization=options, report=lines.append)
    report = json.loads((out / "accuracy_report.json").read_text())
    return {"bundle": str(out), "teacher_forced": {k: report["teacher_forced"][k] for k in
                                                   ("agreement", "kl_mean", "max_abs_diff", "max_abs_reference")},
            "greedy_agreement": report["greedy"]["agreement"], "clip_cosine": report["clip"]["cosine"],
            "failures": report["failures"], "measured_on": provider}


def graph_parity(bundle: Path, provider: str, frames: int = 150) -> dict:
    """Greedy tokens with and without CUDA-graph replay (must be equal), and the steps' agreement."""
    import numpy as np

    from img2music.runtime.generation.sampling import SamplingConfig
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    cond = None
    codes = {}
    for graph in (False, True):
        pipeline = OnnxPipeline.load(bundle, provider=provider, cuda_graph=graph)
        if cond is None:
            embeds = np.random.default_rng(0).standard_normal((2, pipeline.bundle.model.clip.embed_dim))
            cond, mask, _ = pipeline.project(embeds.astype(np.float32))
        codes[graph] = pipeline.generator.generate(cond, mask, frames, SamplingConfig(greedy=True))
        used = pipeline.decoder.cuda_graph
        del pipeline
    return {"frames": frames, "cuda_graph_used": used, "equal": bool(np.array_equal(codes[False], codes[True])),
            "agreement": float((codes[False] == codes[True]).mean())}


def step_latency(bundle: Path, provider: str, positions, repeats: int, eager: bool) -> dict:
    from img2music.benchmarks.bench_decoder import bench_eager, bench_onnx, conditioning_from_bundle, summarize
    from img2music.runtime.generation.sampling import SamplingConfig
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, top_k=250, seed=0)
    rows = {}
    graphs = (False, True) if provider != "cpu" else (False,)
    cond = mask = None
    for graph in graphs:
        pipeline = OnnxPipeline.load(bundle, provider=provider, cuda_graph=graph)
        if cond is None:
            cond, mask = conditioning_from_bundle(pipeline)
        label = f"ort {provider}" + (" graph" if pipeline.decoder.cuda_graph else "")
        result = bench_onnx(pipeline, cond, mask, positions, sampling, 5, repeats)
        rows[label] = {pos: {k: summarize(v)["median"] for k, v in r.items()} for pos, r in result.items()}
        del pipeline
    if eager:
        from img2music.basics.models import load_models
        from img2music.runtime.bundle.loading import load_bundle

        preset = load_bundle(bundle, verify_hashes=False).manifest.provenance.source["preset"]
        result = bench_eager(load_models(preset=preset), cond, mask, positions, sampling, 3, repeats, device="cuda")
        rows["transformers eager fp16"] = {pos: {"all_in_ms": statistics.median(r["all_in_ms"])}
                                           for pos, r in result.items()}
    return rows


def end_to_end(bundle: Path, provider: str, seconds: float) -> dict:
    from img2music.benchmarks.suite_config import benchmark_image
    from img2music.runtime.generation.sampling import SamplingConfig
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    pipeline = OnnxPipeline.load(bundle, provider=provider)
    image = benchmark_image()
    pipeline([image], 1.0, SamplingConfig(seed=0))  # warm-up: allocations, graph capture
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        result = pipeline([image], seconds, SamplingConfig(seed=0))
        walls.append(time.perf_counter() - start)
    return {"audio_seconds": seconds, "wall_seconds": min(walls), "rtf": min(walls) / seconds,
            "stages_ms": {k: round(v * 1e3, 1) for k, v in result.timer.seconds.items()}}


def tensorrt(bundle: Path, seconds: float) -> dict:
    from img2music.export.tensorrt_cache import build_engine_cache

    start = time.perf_counter()
    build_engine_cache(bundle)
    built = time.perf_counter() - start
    return {"engine_build_seconds": round(built, 1), "end_to_end": end_to_end(bundle, "tensorrt", seconds)}


def markdown(results: dict) -> str:
    lines = [f"# GPU check ({'dry run, CPU' if results['dry_run'] else results['steps'].get('machine', {}).get('result', {}).get('gpu', '?')})", ""]
    lines += ["| step | ok | seconds | result |", "|---|---|---:|---|"]
    for name, s in results["steps"].items():
        summary = json.dumps(s.get("result", s.get("error")), default=str)
        lines.append(f"| {name} | {'✓' if s['ok'] else '✗'} | {s['seconds']} | {summary[:300]} |")
    latency = results["steps"].get("decoder step latency", {}).get("result")
    if latency:
        labels = list(latency)
        lines += ["", "Decoder step, all-in, median ms (guidance batch 2):", "",
                  "| cached positions | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
        for pos in next(iter(latency.values())):
            lines.append(f"| {pos} | " + " | ".join(f"{latency[lab][pos]['all_in_ms']:.2f}" for lab in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description="fp16 bundles on the GPU: parity and speed.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="results/gpu", help="directory for bundles, gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="the tiny preset on the CPU provider: the plumbing only")
    p.add_argument("--images", default=None, help="calibration/report images (default: skimage.data photographs)")
    p.add_argument("--repeats", type=int, default=30, help="timed steps per position")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    provider = "cpu" if args.dry_run else "cuda"
    check = Check()
    check.step("machine", machine_facts, provider)
    presets = ("tiny",) if args.dry_run else ("tiny", "small-random")
    bundles = {}
    for preset in presets:
        target = out / f"{preset}-fp16"
        if target.exists():
            import shutil

            shutil.rmtree(target)
        if check.step(f"build {preset} fp16", build, preset, target, provider, 40 if args.dry_run else 250,
                      args.images):
            bundles[preset] = target
    main_bundle = bundles.get("small-random", bundles.get("tiny"))
    if main_bundle is not None:
        check.step("cuda graph parity", graph_parity, bundles.get("tiny", main_bundle), provider,
                   frames=40 if args.dry_run else 150)
        positions = (16, 64) if args.dry_run else POSITIONS
        check.step("decoder step latency", step_latency, main_bundle, provider, positions,
                   3 if args.dry_run else args.repeats, eager=not args.dry_run)
        check.step("end to end", end_to_end, main_bundle, provider, 1.0 if args.dry_run else 10.0)
        if not args.dry_run:
            import onnxruntime

            if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
                check.step("tensorrt", tensorrt, main_bundle, 10.0)
    results = {"dry_run": args.dry_run, "targets_ms": TARGETS_MS, "steps": check.steps}
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
    failed = [name for name, s in check.steps.items() if not s["ok"]]
    if failed:
        raise Img2MusicError(f"gpu check: {len(failed)} step(s) failed: {', '.join(failed)} (details in "
                             f"{out / 'gpu_check.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
