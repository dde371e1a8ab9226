"""Streamed EnCodec cost per second of audio, by chunk size, for bundles and session settings, in one run.

    python benchmarks/bench_encodec.py --engines engines/small-int4-before --engines engines/small-int4 \\
        --chunks 7,25,50,100 --out results/encodec.json

Per bundle, the stream as the runtime before the change ran it (both sessions' worker threads
spinning, the float32 front) and as it runs it now (no spinning outside the decoder step; each
front the bundle has). Rows alternate within a round and the figure is the median over
``--rounds`` rounds, so a host that drifts (the 2-core hosts swing 2x within an hour) moves every
row alike; the pure-Python loop's time is printed next to them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import run_cli
from img2music.benchmarks.machine import python_loop_seconds


def variants(bundle_dir: str, threads: int) -> dict:
    """name -> (front session, back session) for one bundle."""
    from img2music.runtime.backends.ort_session import create_session
    from img2music.runtime.bundle.loading import load_bundle
    from img2music.runtime.bundle.manifest import ENCODEC_FRONT_INT8

    bundle = load_bundle(bundle_dir, verify_hashes=False)
    label = Path(bundle_dir).name

    def session(name: str, spinning: bool):
        return create_session(bundle.graph_path(name), threads=threads, spinning=spinning)

    out = {f"{label}: spinning (as before), float32 front": (session("encodec_stream_front", True),
                                                             session("encodec_stream_back", True)),
           f"{label}: no spinning, float32 front": (session("encodec_stream_front", False),
                                                    session("encodec_stream_back", False))}
    if ENCODEC_FRONT_INT8 in bundle.manifest.graphs:
        out[f"{label}: no spinning, int8-LSTM front"] = (session(ENCODEC_FRONT_INT8, False),
                                                         session("encodec_stream_back", False))
    return out, bundle.model


def stream_ms_per_second(front, back, model, chunk: int, seconds: float) -> float:
    from img2music.runtime.pipeline.encodec_stream import EncodecStreamDecoder, onnx_stream_functions

    s = model.encodec_stream
    decoder = EncodecStreamDecoder(*onnx_stream_functions(front, back), (s.lstm_layers, 1, s.lstm_channels),
                                   model.audio.hop_length)
    frames = int(seconds * model.audio.frame_rate)
    codes = np.random.default_rng(0).integers(0, model.decoder.vocab_size, (1, model.decoder.delay_span,
                                                                           frames + chunk))
    decoder.push(codes[:, :, :chunk])  # warm-up
    start = time.perf_counter()
    for i in range(chunk, frames + chunk, chunk):
        decoder.push(codes[:, :, i:i + chunk])
    return (time.perf_counter() - start) * 1000 / seconds


def measure(engines: list[str], chunks: list[int], threads: int, seconds: float, rounds: int) -> dict:
    rows, models = {}, {}
    for e in engines:
        found, model = variants(e, threads)
        rows.update(found)
        models.update({name: model for name in found})
    times: dict[str, dict[int, list[float]]] = {name: {c: [] for c in chunks} for name in rows}
    loops = [python_loop_seconds()]
    for _ in range(rounds):
        for chunk in chunks:
            for name, (front, back) in rows.items():
                times[name][chunk].append(stream_ms_per_second(front, back, models[name], chunk, seconds))
        loops.append(python_loop_seconds())
    return {"threads": threads, "seconds_per_run": seconds, "rounds": rounds, "python_loop_s": [round(x, 2) for x in loops],
            "ms_per_second": {name: {str(c): round(statistics.median(v), 1) for c, v in by.items()}
                              for name, by in times.items()}}


def table(result: dict) -> str:
    chunks = list(next(iter(result["ms_per_second"].values())))
    lines = ["| variant | " + " | ".join(f"{c} frames" for c in chunks) + " |", "|---|" + "---:|" * len(chunks)]
    for name, by in result["ms_per_second"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by[c]:.0f}" for c in chunks) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_encodec.py", description="Streamed EnCodec cost per second of audio.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--engines", action="append", required=True, help="bundle directory; repeat to compare")
    p.add_argument("--chunks", default="7,25,50,100", help="code frames per push, comma-separated")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per onnxruntime session")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of audio streamed per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per row and chunk (the median counts)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    result = measure(args.engines, [int(c) for c in args.chunks.split(",")], args.threads, args.seconds,
                     args.rounds)
    print(table(result))
    print(f"ms per second of audio, median of {args.rounds}; pure-Python loop (10^7 additions) "
          f"{result['python_loop_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
