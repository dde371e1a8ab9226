"""Time to first audio: from starting ``live.py`` to its first sample reaching the sound card.

    python benchmarks/bench_startup.py --engines engines/small-int4 --runs 5 --out results/startup.json

Each run starts ``runtime/live.py --synthetic --no-audio`` as a user would (a new process, a warm
disk) and reads its ``--metrics`` file as it is written: the first line's ``uptime_s`` dates the
status reporter's start against this process's clock, and ``first_audio_s`` (seconds from that
start to the first audio out) does the rest, so the figure covers interpreter start-up, imports,
the bundle load with its hash check, the context budget and the first chunk. ``--live-script``
and ``--pythonpath`` time another checkout's live.py the same way (a before/after in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.basics.errors import Img2MusicError, run_cli
from img2music.benchmarks.machine import python_loop_seconds

ROOT = Path(__file__).resolve().parents[1]


def first_audio(command: list[str], metrics: Path, env: dict, timeout: float = 60.0) -> float:
    """Seconds from starting ``command`` to its first audio out, read from its metrics as they come."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        while time.monotonic() - start < timeout:
            seen = time.monotonic()
            for line in metrics.read_text().splitlines() if metrics.exists() else []:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if row.get("first_audio_s") is not None:
                    reporter_start = seen - start - row["uptime_s"]
                    return reporter_start + row["first_audio_s"]
            if proc.poll() is not None:
                raise Img2MusicError(f"live.py ended before any audio: {proc.stderr.read().decode()[-800:]}")
            time.sleep(0.01)
        raise Img2MusicError(f"no audio within {timeout:.0f} s")
    finally:
        proc.kill()
        proc.wait()


def measure(engines: str, runs: int, live_script: str, pythonpath: str | None, extra: list[str]) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            metrics = Path(tmp) / f"m{i}.jsonl"
            command = [sys.executable, live_script, "--synthetic", "--engines", engines, "--no-audio", "--threads",
                       "2", "--duration", "30", "--metrics", str(metrics), *extra]
            times.append(first_audio(command, metrics, env))
    ordered = sorted(times)
    return {"engines": engines, "live_script": live_script, "runs": runs, "first_audio_s": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2),
            "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_startup.py", description="Time from starting live.py to its first audio.",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--engines", required=True, help="bundle directory")
    p.add_argument("--runs", type=int, default=5, help="starts to time")
    p.add_argument("--live-script", default=str(ROOT / "runtime" / "live.py"), help="the live.py to start")
    p.add_argument("--pythonpath", default=None, help="PYTHONPATH for it (another checkout: its own img2music)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args, extra = p.parse_known_args(argv)
    loop_before = python_loop_seconds()
    r = measure(args.engines, args.runs, args.live_script, args.pythonpath, extra)
    r["python_loop_s"] = [round(loop_before, 2), round(python_loop_seconds(), 2)]
    print(f"{r['live_script']}: first audio after median {r['median_s']} s, p90 {r['p90_s']} s "
          f"({r['first_audio_s']}); pure-Python loop {r['python_loop_s']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
