"""The GPU check: fp16 bundles on the CUDA (and TensorRT) providers, parity and speed, in one run
that cannot waste a lent machine.

Usage (through ``benchmarks/gpu_check.sh``, which installs missing wheels from a local
wheelhouse first; ``benchmarks/gpu_plan.py`` prints the device calls that get it there)::

    python benchmarks/gpu_check.py --out results/gpu --images photos/     # on a GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/check             # anywhere: tiny, CPU provider

Steps run in order of what they are worth (:func:`plan`), each only if its estimated cost fits
what is left of ``--budget-seconds`` and its libraries are here; otherwise it is recorded as
skipped with the reason. ``gpu_check.json`` and ``gpu_check.md`` are rewritten after every step,
so a run killed at its time limit still leaves what it measured. docs/gpu.md lists the steps.
NOT YET RUN ON A GPU: everything but the dry run has been read, not executed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging

POSITIONS = (16, 256, 1024, 1500)
TARGETS_MS = {16: 1.0, 1500: 1.5}
"""The issue's targets for the all-in step on an H100/H200 (ms)."""


@dataclass
class Step:
    name: str
    run: Callable[[], dict]
    estimate_s: float
    """What it is expected to cost on an H100 (for the budget; the dry run's are smaller)."""
    needs: Callable[[], str | None] = lambda: None
    """Why it cannot run here (a library or an earlier step missing), or None."""


class Check:
    """Runs steps in order within a budget; records each one's result, error or skip, and writes
    the results after every step."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out, self.budget_s, self.dry_run = out, budget_s, dry_run
        self.started = time.monotonic()
        self.steps: dict[str, dict] = {}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def run(self, step: Step) -> dict | None:
        print(f"== {step.name}", flush=True)
        why = step.needs()
        if why is None and step.estimate_s > self.left():
            why = f"budget: needs ~{step.estimate_s:.0f} s, {max(0.0, self.left()):.0f} s left"
        if why is not None:
            self.steps[step.name] = {"ok": None, "skipped": why, "seconds": 0.0}
            print(f"   skipped: {why}", flush=True)
            self.write()
            return None
        start = time.perf_counter()
        try:
            result = step.run()
            self.steps[step.name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), "result": result}
            print(json.dumps(result, indent=1, default=str)[:2000], flush=True)
        except Exception as exc:  # recorded; the check goes on with what it can still do
            result = None
            self.steps[step.name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                                     "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
        self.write()
        return result

    def ok(self, name: str) -> bool:
        return bool(self.steps.get(name, {}).get("ok"))

    def results(self) -> dict:
        return {"dry_run": self.dry_run, "targets_ms": TARGETS_MS, "budget_s": self.budget_s,
                "elapsed_s": round(time.monotonic() - self.started, 1), "steps": self.steps}

    def write(self) -> None:
        results = self.results()
        for name, text in (("gpu_check.json", json.dumps(results, indent=2, default=str)),
                           ("gpu_check.md", markdown(results))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.out / name)  # a kill mid-write leaves the previous complete file


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
        from img2music.runtime.backends.gpu_facts import driver_version, gpu

        try:
            facts["gpu"], facts["compute_capability"] = gpu()
        except Img2MusicError as exc:  # recorded: the next step says what it means for the providers
            facts["gpu"] = str(exc)
        facts["driver"] = driver_version()
        facts["tensorrt"] = tensorrt_missing() or "libnvinfer.so.10 loads"
    return facts


def cuda_starts(bundle_file: Path | None = None) -> dict:
    """A one-node session on the CUDA provider, its providers read back (ONNX Runtime runs on the
    CPU without raising when libcudart/libcublas/cuDNN do not load)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    from img2music.runtime.backends.ort_session import check_providers

    if hasattr(onnxruntime, "preload_dlls"):
        onnxruntime.preload_dlls()
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # as the bundles' graphs (export.onnx_graph): onnx 1.23 writes 14, ORT 1.31 reads <= 13
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"],
                                           enable_fallback=0)
    check_providers(session, ["CUDAExecutionProvider"], "a one-node test graph")
    return {"providers": session.get_providers()}


def build(preset: str, out: Path, provider: str, report_steps: int, images: str | None) -> dict:
    import shutil

    from img2music.basics.models import load_models
    from img2music.calibration.build_quantized import QuantizationOptions
    from img2music.calibration.kv_calibration import KvCalibrationConfig
    from img2music.export.bundle_build import build_bundle

    if out.exists():
        shutil.rmtree(out)
    options = QuantizationOptions(precision="fp16", images=images, image_limit=18, report_steps=report_steps,
                                  kv=KvCalibrationConfig(steps=report_steps), report_provider=provider)
    lines: list[str] = []
    build_bundle(out, load_models(preset=preset), quantization=options, report=lines.append)
    report = json.loads((out / "accuracy_report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return {"bundle": str(out), "teacher_forced": {k: report["teacher_forced"][k] for k in
                                                   ("agreement", "kl_mean", "max_abs_diff", "max_abs_reference")},
            "greedy_agreement": report["greedy"]["agreement"], "clip_cosine": report["clip"]["cosine"],
            "fp16_storage_emulation": report.get("fp16_storage_emulation", {}).get("teacher_forced"),
            "cuda_graph": manifest.get("quantization", {}).get("cuda_graph"),
            "failures": report["failures"], "measured_on": report["measured_on"]}


def graph_parity(bundle: Path, provider: str, frames: int = 150) -> dict:
    """Greedy and sampled tokens with the CUDA-graph layout (captured and replayed on a GPU; the
    same layout on the CPU provider in a dry run) against plain runs, across two re-primes."""
    import numpy as np

    from img2music.runtime import OnnxPipeline, SamplingConfig
    from img2music.runtime.backends.ort_decoder import OrtDecoderSession
    from img2music.runtime.generation.core import CodeGenerator, Windowing

    window = Windowing(window_frames=frames * 2 // 5, keep_frames=frames // 8)
    plain = OnnxPipeline.load(bundle, provider=provider, cuda_graph=False)
    embeds = np.random.default_rng(0).standard_normal((2, plain.bundle.model.clip.embed_dim)).astype(np.float32)
    cond, mask, _ = plain.project(embeds)
    if provider == "cpu":
        s = plain.sessions
        graphed = CodeGenerator(OrtDecoderSession(s["decoder_step"], s["cross_kv"], plain.bundle.model.decoder,
                                                  kv_scales=plain.bundle.kv_scales(), graph_layout=True))
    else:
        graphed = OnnxPipeline.load(bundle, provider=provider, cuda_graph=True).generator
    equal = {}
    for name, sampling in (("greedy", SamplingConfig(greedy=True)), ("sampled", SamplingConfig(seed=3))):
        a = plain.generator.generate(cond, mask, frames, sampling, window=window)
        b = graphed.generate(cond, mask, frames, sampling, window=window)
        equal[name] = float((a == b).mean())
    used = graphed.decoder.graph_layout if provider == "cpu" else graphed.decoder.cuda_graph
    if not used:
        raise Img2MusicError("the decoder step did not run in the CUDA-graph layout")
    if min(equal.values()) < 1.0:
        raise Img2MusicError(f"tokens differ between the CUDA-graph layout and plain runs: agreement {equal}")
    return {"frames": frames, "window_frames": window.window_frames, "graph_layout_used": bool(used),
            "cuda_graph_replayed": provider != "cpu", "agreement": equal, "graph_ids": graphed.decoder.graphs}


def step_latency(bundle: Path, provider: str, positions, repeats: int, graph: bool) -> dict:
    from img2music.benchmarks.bench_decoder import bench_onnx, conditioning_from_bundle, summarize
    from img2music.runtime import OnnxPipeline, SamplingConfig

    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, top_k=250, seed=0)
    pipeline = OnnxPipeline.load(bundle, provider=provider, cuda_graph=graph)
    if graph and not pipeline.decoder.cuda_graph:
        raise Img2MusicError("asked for CUDA-graph replay, the decoder runs without it")
    cond, mask = conditioning_from_bundle(pipeline)
    result = bench_onnx(pipeline, cond, mask, positions, sampling, 5, repeats)
    return {str(pos): {k: summarize(v)["median"] for k, v in r.items()} for pos, r in result.items()}


def eager_latency(bundle: Path, positions, repeats: int) -> dict:
    from img2music.basics.models import load_models
    from img2music.benchmarks.bench_decoder import bench_eager, conditioning_from_bundle
    from img2music.runtime import OnnxPipeline, SamplingConfig, load_bundle

    sampling = SamplingConfig(guidance_scale=3.0, temperature=1.0, top_k=250, seed=0)
    cond, mask = conditioning_from_bundle(OnnxPipeline.load(bundle))
    preset = load_bundle(bundle, verify_hashes=False).manifest.provenance.source["preset"]
    result = bench_eager(load_models(preset=preset), cond, mask, positions, sampling, 3, repeats, device="cuda")
    return {str(pos): {"all_in_ms": statistics.median(r["all_in_ms"])} for pos, r in result.items()}


def end_to_end(bundle: Path, provider: str, seconds: float, images: str | None) -> dict:
    from img2music.runtime import OnnxPipeline, SamplingConfig

    pipeline = OnnxPipeline.load(bundle, provider=provider)
    image = _one_image(images)
    pipeline([image], 1.0, SamplingConfig(seed=0))  # warm-up: allocations, graph capture
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        result = pipeline([image], seconds, SamplingConfig(seed=0))
        walls.append(time.perf_counter() - start)
    return {"audio_seconds": seconds, "wall_seconds": min(walls), "rtf": min(walls) / seconds,
            "stages_ms": {k: round(v * 1e3, 1) for k, v in result.timer.seconds.items()}}


def tensorrt(bundle: Path, seconds: float, images: str | None) -> dict:
    from img2music.export.tensorrt_cache import build_engine_cache

    start = time.perf_counter()
    build_engine_cache(bundle)
    built = time.perf_counter() - start
    return {"engine_build_seconds": round(built, 1), "end_to_end": end_to_end(bundle, "tensorrt", seconds, images)}


def _one_image(images: str | None):
    if images:
        from img2music.runtime.pipeline.preprocess import load_image

        files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise Img2MusicError(f"--images {images}: no .jpg or .png in it")
        return load_image(files[0])
    from img2music.benchmarks.suite_config import benchmark_image

    return benchmark_image()


def tensorrt_missing() -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot load here (the PyPI wheel always lists it)."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no TensorRT provider"
    from img2music.runtime.backends.gpu_facts import tensorrt_version

    try:
        tensorrt_version()
    except Img2MusicError as exc:
        return str(exc)
    return None


def _modules_missing(*names: str) -> str | None:
    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(n) is None]
    return f"needs {', '.join(missing)} (not installed here)" if missing else None


def _torch_cuda_missing() -> str | None:
    why = _modules_missing("torch", "transformers")
    if why:
        return why
    import torch

    return None if torch.cuda.is_available() else "torch here has no CUDA device"


def plan(args, check: Check) -> list[Step]:
    """The steps, most valuable first (see the module docstring)."""
    dry, out = args.dry_run, Path(args.out)
    provider = "cpu" if dry else "cuda"
    tiny, small = out / "tiny-fp16", out / "small-random-fp16"
    positions = (16, 64) if dry else POSITIONS
    repeats = 3 if dry else args.repeats
    def export():
        return _modules_missing("torch", "transformers", "onnx")

    def after(*names):
        return lambda: next((f"needs the step '{n}', which did not succeed" for n in names if not check.ok(n)), None)

    def both(*needs):
        return lambda: next((why for why in (need() for need in needs) if why), None)

    steps = [Step("machine", lambda: machine_facts(provider), 5)]
    if not dry:
        steps.append(Step("cuda provider", cuda_starts, 10, lambda: _modules_missing("onnx")))
    gpu_ok = (lambda: None) if dry else after("cuda provider")
    steps += [
        Step("build tiny fp16", lambda: build("tiny", tiny, provider, 40 if dry else 250, args.images),
             20 if dry else 60, both(export, gpu_ok)),
        Step("cuda graph parity", lambda: graph_parity(tiny, provider, frames=60 if dry else 150),
             10 if dry else 30, after("build tiny fp16")),
    ]
    if dry:
        steps += [Step("decoder step latency", lambda: step_latency(tiny, provider, positions, repeats, False), 15,
                       after("build tiny fp16")),
                  Step("end to end", lambda: end_to_end(tiny, provider, 1.0, args.images), 15,
                       both(after("build tiny fp16"), lambda: None if args.images else _modules_missing("skimage")))]
        return steps
    return steps + [
        Step("build small-random fp16", lambda: build("small-random", small, provider, 250, args.images), 150,
             both(export, gpu_ok)),
        Step("decoder step latency: ort cuda graph",
             lambda: step_latency(small, provider, positions, repeats, True), 40, after("build small-random fp16")),
        Step("decoder step latency: ort cuda", lambda: step_latency(small, provider, positions, repeats, False), 40,
             after("build small-random fp16")),
        Step("end to end", lambda: end_to_end(small, provider, 10.0, args.images), 40,
             after("build small-random fp16")),
        Step("decoder step latency: transformers eager fp16", lambda: eager_latency(small, positions, repeats), 60,
             both(after("build small-random fp16"), _torch_cuda_missing)),
        Step("tensorrt", lambda: tensorrt(small, 10.0, args.images), 300,
             both(after("build small-random fp16"), tensorrt_missing)),
    ]


def markdown(results: dict) -> str:
    gpu = results["steps"].get("machine", {}).get("result") or {}
    title = "dry run, CPU" if results["dry_run"] else gpu.get("gpu", "?")
    lines = [f"# GPU check ({title})", "", f"{results['elapsed_s']} s of a {results['budget_s']:.0f} s budget.", "",
             "| step | ok | seconds | result |", "|---|---|---:|---|"]
    for name, s in results["steps"].items():
        mark = "skipped" if s["ok"] is None else ("✓" if s["ok"] else "✗")
        summary = s.get("skipped") or json.dumps(s.get("result", s.get("error")), default=str)
        lines.append(f"| {name} | {mark} | {s['seconds']} | {summary[:300]} |")
    rows = {name.split(": ", 1)[1] if ": " in name else "ort " + ("cpu" if results["dry_run"] else "cuda"): s["result"]
            for name, s in results["steps"].items() if name.startswith("decoder step latency") and s["ok"]}
    if rows:
        labels = list(rows)
        lines += ["", "Decoder step, all-in, median ms (guidance batch 2):", "",
                  "| cached positions | " + " | ".join(labels) + " |", "|---:|" + "---:|" * len(labels)]
        for pos in next(iter(rows.values())):
            lines.append(f"| {pos} | " + " | ".join(f"{rows[lab][pos]['all_in_ms']:.2f}" if pos in rows[lab] else "-"
                                                    for lab in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description="fp16 bundles on the GPU: parity and speed.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="results/gpu", help="directory for bundles, gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="the tiny preset on the CPU provider: the plumbing only")
    p.add_argument("--images", default=None,
                   help="folder of photographs for calibration, reports and the end-to-end input (default: "
                        "scikit-image's, which a bare GPU machine may not have)")
    p.add_argument("--repeats", type=int, default=30, help="timed steps per position")
    p.add_argument("--budget-seconds", type=float, default=480.0,
                   help="wall-clock budget: a step whose estimate does not fit what is left is skipped")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.budget_seconds, args.dry_run)
    for step in plan(args, check):
        check.run(step)
    print(markdown(check.results()))
    failed = [name for name, s in check.steps.items() if s["ok"] is False]
    if failed:
        raise Img2MusicError(f"gpu check: {len(failed)} step(s) failed: {', '.join(failed)} (details in "
                             f"{out / 'gpu_check.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
