"""The benchmark suite: per-stage latency, real-time factor, baselines side by side.

Usage::

    python benchmarks/run.py --bundle engines/small-random --bundle engines/small-int8 \\
        --baseline torch --text-pipeline --out results/

Each backend runs in its own process (clean peak-memory numbers, no interference):
every bundle on ONNX Runtime, and with ``--baseline torch`` the transformers eager
reference built from the first bundle's preset (or ``--musicgen``/``--clip``).
``--text-pipeline`` adds the thesis comparison (captioner + LLM + T5 stand-ins, see
benchmarks/text_pipeline.py). Writes ``results.json`` (schema:
benchmarks/results_schema.json), ``results.md`` and ``stages.png`` to ``--out`` and
prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import sys
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli, setup_logging
from img2music.benchmarks.machine import machine_record
from img2music.benchmarks.suite_config import SuiteConfig, stage_names
from img2music.runtime.backends.providers import PROVIDERS

MEASUREMENTS = {
    "bundle": "img2music.benchmarks.onnx_stages:measure_bundle",
    "eager": "img2music.benchmarks.eager_stages:measure_eager",
    "text": "img2music.benchmarks.text_pipeline:measure_text_pipeline",
}


def _child(target: str, args: tuple, queue) -> None:
    import importlib
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        module, name = target.split(":")
        queue.put(("ok", getattr(importlib.import_module(module), name)(*args)))
    except BaseException as exc:  # reported to the parent, which fails with the message
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_isolated(fn_name: str, *args):
    """Run one measurement (a name in MEASUREMENTS, or ``module:function``) in a fresh process;
    returns its result dict. A child that dies without answering (killed for memory, a crash
    in native code) fails the suite with its exit code instead of hanging it."""
    import queue as queues

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(MEASUREMENTS.get(fn_name, fn_name), args, queue))
    proc.start()
    while True:
        alive = proc.is_alive()  # checked before waiting: a result sent just before exiting still arrives
        try:
            status, payload = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not alive:
                code = proc.exitcode
                why = (f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")) if code < 0 \
                    else f"exit code {code}"
                raise Img2MusicError(f"benchmark {fn_name} died without a result ({why})") from None
    proc.join()
    if status != "ok":
        raise Img2MusicError(f"benchmark {fn_name} failed: {payload}")
    return payload


def build_parser() -> argparse.ArgumentParser:
    d = SuiteConfig()
    p = argparse.ArgumentParser(prog="run.py", description="Per-stage benchmark suite.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], help="engine bundle; repeat for several")
    p.add_argument("--baseline", choices=("torch", "none"), default="torch",
                   help="reference backend measured side by side (transformers eager)")
    p.add_argument("--preset", default=None, help="preset for the eager baseline (default: the first bundle's)")
    p.add_argument("--musicgen", default=None, help="MusicGen checkpoint for the eager baseline")
    p.add_argument("--clip", default=None, help="CLIP checkpoint for the eager baseline")
    p.add_argument("--text-pipeline", choices=("none", "tiny", "cpu-max"), default="none",
                   help="thesis comparison with random-weight captioner + LLM stand-ins")
    p.add_argument("--provider", choices=PROVIDERS, default="cpu",
                   help="where the bundles run (runtime/backends/providers.py): cpu, cuda or tensorrt (fp16 bundles)")
    p.add_argument("--out", default="results", help="output directory")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads per backend")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed calls per short stage")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed calls before each stage")
    p.add_argument("--positions", default=",".join(map(str, d.positions)), help="cached positions for decoder steps")
    p.add_argument("--reprime-steps", type=int, default=d.reprime_steps, help="tokens re-primed per window restart")
    p.add_argument("--e2e-repeats", type=int, default=d.e2e_repeats, help="repeats of end-to-end runs")
    p.add_argument("--rtf-seconds", default=",".join(f"{s:g}" for s in d.rtf_seconds),
                   help="audio lengths for the real-time factor")
    p.add_argument("--eager-max-seconds", type=float, default=d.eager_max_seconds,
                   help="skip eager end-to-end runs longer than this")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = SuiteConfig(
            threads=args.threads, warmup=args.warmup, repeats=args.repeats,
            positions=[int(x) for x in args.positions.split(",") if x],
            reprime_steps=args.reprime_steps, e2e_repeats=args.e2e_repeats,
            rtf_seconds=[float(x) for x in args.rtf_seconds.split(",") if x], eager_max_seconds=args.eager_max_seconds,
        )
    except ValueError as exc:
        raise Img2MusicError(f"bad number in --positions or --rtf-seconds: {exc}") from exc
    if not args.bundle and args.baseline == "none":
        raise Img2MusicError("nothing to measure: give --bundle and/or --baseline torch")
    for bundle in args.bundle:
        if not (Path(bundle) / "manifest.json").is_file():
            raise Img2MusicError(f"not an engine bundle: {bundle}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    preset = args.preset
    if preset is None and args.bundle and not (args.musicgen or args.clip):
        from img2music.runtime.bundle.loading import load_bundle

        preset = load_bundle(args.bundle[0], verify_hashes=False).manifest.provenance.source.get("preset")
    backends = {}
    reference = None
    if args.baseline == "torch":
        print("measuring transformers eager ...", flush=True)
        reference = "transformers-eager"
        backends[reference] = run_isolated("eager", preset, args.musicgen, args.clip, config)
    for bundle in args.bundle:
        print(f"measuring {bundle} on onnxruntime ...", flush=True)
        result = run_isolated("bundle", bundle, config, args.provider)
        name = f"ort-{result['precision']}" + ("" if args.provider == "cpu" else f"-{args.provider}")
        while name in backends:
            name += "'"
        backends[name] = result
    text = comparison = None
    if args.text_pipeline != "none":
        print(f"measuring the text-mediated pipeline ({args.text_pipeline} stand-ins) ...", flush=True)
        from img2music.benchmarks.text_pipeline import comparison as compare

        text = run_isolated("text", args.text_pipeline, preset or "small-random", config.threads,
                            max(1, config.e2e_repeats))
        if reference:
            comparison = compare(text, backends[reference])

    from img2music.benchmarks.report import add_ratios, chart, markdown, validate

    results = {
        "schema_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(),
        "config": config.to_dict(),
        "stage_names": stage_names(config),
        "backends": backends,
        "text_pipeline": text,
        "thesis_comparison": comparison,
    }
    add_ratios(results, reference)
    validate(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "results.md").write_text(table)
    chart(results, out / "stages.png")
    print()
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'stages.png'}")
    return 0


def cli() -> None:
    """Console-script entry point (img2music-bench)."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
