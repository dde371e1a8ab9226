"""Live runtime figures: scene-change latency, transition cost, memory over a long run.

Usage::

    python benchmarks/bench_live.py latency --engines /tmp/engines/tiny --engines /tmp/engines/small-int4
    python benchmarks/bench_live.py soak --engines /tmp/engines/tiny --seconds 600
    python benchmarks/bench_live.py rtf --engines engines/small-int4 --seconds 60 --scene-seconds 20 --threads 2
    python benchmarks/bench_live.py rtf --engines engines/small-int4 --load 60:120 --metrics m.jsonl

``latency``: a source shows one generated scene, then switches to another every
``--switch-every`` seconds, at times it records. Latency is measured from the switch
(the first frame of the new scene enters) to the moment the first sample generated under
the new conditioning leaves the ring buffer for the sound card (headless clock sink:
the same pacing as a device). It is detection (embedding interval x confirmations) +
waiting for the chunk boundary + generation + the audio already buffered ahead. Also
timed on the bundle: one transition step in 'blend' mode (a cross_kv run) against
'reprime' mode (a prefill of the kept frames), median of repeats.

``soak``: a synthetic-scene run of ``--seconds`` of music; RSS from the metrics
snapshots (first after warm-up, last, max).

``rtf``: the decider for live real time (see :func:`rtf`); its last line is
``live/batch RTF ratio R; live RTF L; batch RTF B; silences S; recoveries C``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from img2music.basics.cli_help import DefaultsHelpFormatter
from img2music.benchmarks.machine import machine_record, python_loop_seconds
from img2music.runtime.loop.sources import SyntheticSource

LADDER_COUNTS = ("degrade_cheaper", "degrade_repeats", "degrade_silences", "recoveries")
"""The playout ladder's counters in the live metrics."""


class SwitchingSource(SyntheticSource):
    """Synthetic scenes that switch at recorded times (the 'frames in' clock)."""

    def __init__(self, switch_every: float, seed: int = 0) -> None:
        super().__init__(scene_seconds=switch_every, seed=seed)
        self.switch_times: list[float] = []

    def read(self):
        frame = super().read()
        if self._scene_index >= 1 and len(self.switch_times) < self._scene_index:
            self.switch_times.append(time.monotonic())  # the first frame of scene n
        return frame


def run_live(engines: str, source, config, threads: int, on_engine=None, metrics: str | None = None) -> str:
    """One headless live session of ``engines`` from ``source`` with ``config`` (an EngineConfig)."""
    from img2music.runtime import BackendConfig, LiveSession, LiveSessionConfig, OutputConfig, SourceConfig

    session = LiveSessionConfig(BackendConfig(engines, threads=threads), SourceConfig(custom=source), config,
                                OutputConfig(no_audio=True, metrics=metrics))
    return LiveSession(session, on_engine=on_engine).run()


def latency(engines: str, switches: int, switch_every: float, threads: int, threshold: float,
            buffer: float = 1.0, embed_interval: float = 0.25) -> dict:
    from img2music.runtime import EngineConfig, SceneConfig

    holder = {}
    source = SwitchingSource(switch_every)
    config = EngineConfig(duration=switch_every * (switches + 1) + 2.0, buffer_seconds=buffer,
                        embed_interval=embed_interval, scene=SceneConfig(threshold=threshold, min_dwell=1.0))
    summary = run_live(engines, source, config, threads, on_engine=lambda e: holder.update(e=e))
    engine = holder["e"]
    resolved = [t0 + s for label, s, t0 in engine.playout.counts.latencies if label == "scene"]
    lat = []
    for switch in source.switch_times:
        after = [t for t in resolved if t > switch]
        if after:
            lat.append(min(after) - switch)
    blend_ms, reprime_ms = transition_costs(engine)
    return {"engines": engines, "buffer_s": buffer, "embed_interval_s": embed_interval, "switches": len(source.switch_times), "detected": len(lat),
            "latency_s": [round(x, 3) for x in lat],
            "latency_median_s": round(statistics.median(lat), 3) if lat else None,
            "rtf": round(engine.rtf, 3), "underflows": engine.playout.ring.underflows,
            "degrade_repeats": engine.playout.counts.repeats, "blend_step_ms": blend_ms,
            "reprime_step_ms": reprime_ms, "keep_frames": engine.window.keep_frames, "summary": summary}


def transition_costs(engine, repeats: int = 3) -> tuple[float, float]:
    """Median ms of one transition step: blend (cross_kv) vs re-prime (prefill of keep)."""
    from img2music.runtime.loop.engine import blend

    generator = engine.stream.generator
    scene = engine.scene
    halved = (scene.bound[0] * 0.5,) + tuple(scene.bound[1:])  # (conditioning, mask, weight) each side
    cond = blend(scene.bound, halved, 0.5)
    generator.start(scene.conditioning, scene.mask, engine.sampling, window=engine.window)
    generator.next_frames(engine.window.keep_frames + 4, engine.sampling)
    times = {"blend": [], "reprime": []}
    for _ in range(repeats):
        start = time.perf_counter()
        generator.blend_conditioning(*cond)
        times["blend"].append(time.perf_counter() - start)
        start = time.perf_counter()
        generator.swap_conditioning(*cond)
        times["reprime"].append(time.perf_counter() - start)
    return tuple(round(statistics.median(times[k]) * 1000, 1) for k in ("blend", "reprime"))


class CompetingLoad:
    """``processes`` CPU-bound processes from ``start`` to ``stop`` seconds after :meth:`arm`:
    a host slowed down by another program (with one per core, to about half speed)."""

    def __init__(self, start: float, stop: float, processes: int) -> None:
        self.start, self.stop, self.processes = start, stop, processes
        self._procs: list = []
        self._timers: list = []
        self.started_at = self.stopped_at = None

    def arm(self) -> None:
        import threading

        self.armed_at = time.monotonic()
        self._timers = [threading.Timer(self.start, self._spawn), threading.Timer(self.stop, self.end)]
        for t in self._timers:
            t.daemon = True
            t.start()

    def _spawn(self) -> None:
        import subprocess

        self.started_at = time.monotonic() - self.armed_at
        self._procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.processes)]

    def end(self) -> None:
        for t in self._timers:
            t.cancel()
        if self._procs and self.stopped_at is None:
            self.stopped_at = time.monotonic() - self.armed_at
        for proc in self._procs:
            proc.kill()
            proc.wait()
        self._procs = []


def load_phases(metrics: str, load: CompetingLoad) -> list[dict]:
    """Music made and ladder steps before, during and after the competing load (from the
    run's per-second metrics): music never stopping shows as silences 0 in every phase."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    counters = LADDER_COUNTS + ("underflows",)
    rows.insert(0, {"uptime_s": 0.0, "music_s": 0.0, "window_frames": None, **dict.fromkeys(counters, 0)})  # the start
    edges = [("before", float("-inf"), load.started_at), ("during", load.started_at, load.stopped_at),
             ("after", load.stopped_at, float("inf"))]
    phases = []
    for name, lo, hi in edges:
        if lo is None or hi is None:
            continue
        # a phase runs from the last snapshot at or before its start to the last one before its end
        a = ([r for r in rows if r["uptime_s"] <= lo] or rows[:1])[-1]
        inside = [r for r in rows if a["uptime_s"] <= r["uptime_s"] < hi]  # uptime counts from the run's start
        b = inside[-1]
        wall = b["uptime_s"] - a["uptime_s"]
        if wall <= 0:
            continue
        phases.append({"phase": name, "wall_s": round(wall, 1),
                       "music_per_wall_s": round((b["music_s"] - a["music_s"]) / wall, 3),
                       **{k: b[k] - a[k] for k in counters},
                       "windows_frames": sorted({r["window_frames"] for r in inside if r["window_frames"]})})
    return phases


def rtf(engines: str, seconds: float, scene_seconds: float, threads: int, seed: int = 0,
        load: CompetingLoad | None = None, metrics: str | None = None) -> dict:
    """Live against batch generation of the same length, bundle, threads, window and chunks.

    Live: synthetic scenes every ``scene_seconds``, no audio device (clock sink), RTF = the
    compute thread's seconds / seconds of music. Batch: the same windows and chunk size
    through ``OnnxPipeline.stream`` as fast as it goes, one scene (the live run's first),
    RTF = wall seconds / seconds of music, run twice after the live run and averaged. Live runs first: its start-up
    chooses the window."""
    import numpy as np

    from img2music.runtime import EngineConfig, SceneConfig
    from img2music.runtime.pipeline.onnx_pipeline import Conditioning, OnnxPipeline

    def batch(window, chunk) -> float:
        pipeline = OnnxPipeline.load(engines, threads=threads)
        image = SyntheticSource(scene_seconds=scene_seconds, seed=seed).scene_at(0).astype(np.uint8)
        cond = pipeline.condition([image])
        start = time.perf_counter()
        for _ in pipeline.stream(conditioning=Conditioning(cond.conditioning, cond.mask), seconds=seconds,
                                 chunk_frames=chunk, window=window):
            pass
        return (time.perf_counter() - start) / seconds

    loop_before = python_loop_seconds()
    holder = {}
    config = EngineConfig(duration=seconds, scene=SceneConfig(threshold=0.02, min_dwell=1.0))
    # Clean cuts (no sensor noise): a random-weight CLIP maps noisy frames of one scene as far
    # apart as two scenes, which would make scene changes out of noise, not every scene_seconds.
    if load is not None and metrics is None:
        raise SystemExit("--load needs --metrics (its phases are read from the per-second metrics)")

    if metrics is not None:
        Path(metrics).unlink(missing_ok=True)  # the reporter appends; phases must see this run only

    def hook(engine):
        holder.update(e=engine)
        if load is not None:
            load.arm()

    try:
        summary = run_live(engines, SyntheticSource(scene_seconds=scene_seconds, seed=seed, noise=0.0), config,
                           threads, on_engine=hook, metrics=metrics)
    finally:
        if load is not None:
            load.end()
    engine = holder["e"]
    counts = engine.playout.counts
    music = engine.music_samples / engine.pipeline.sample_rate
    live_rtf = engine.busy_seconds / music
    live_parts = {k: round(v / music, 3) for k, v in engine.compute.items()}
    window, chunk = engine.window, config.chunk_frames
    budget_changes = engine.budget.changes if engine.budget is not None else 0
    holder.clear()  # the live pipeline's sessions go before the batch runs load their own
    del engine
    loop_between = python_loop_seconds()
    # Batch after live (live chooses the window) and once more: the host may drift in between.
    batch_rtfs = [batch(window, chunk), batch(window, chunk)]
    batch_rtf = sum(batch_rtfs) / 2
    loop_after = python_loop_seconds()
    return {"engines": engines, "seconds": seconds, "scene_seconds": scene_seconds, "threads": threads,
            "window_frames": window.window_frames, "keep_frames": window.keep_frames, "chunk_frames": chunk,
            "live_rtf": round(live_rtf, 4), "live_rtf_parts": live_parts, "batch_rtf": round(batch_rtf, 4),
            "batch_rtfs": [round(b, 3) for b in batch_rtfs],
            "ratio": round(live_rtf / batch_rtf, 3), "silences": counts.silences,
            "silence_seconds": round(counts.silence_seconds, 2), "repeats": counts.repeats,
            "recoveries": counts.recoveries,
            "python_loop_s": [round(loop_before, 2), round(loop_between, 2), round(loop_after, 2)],
            "window_changes": budget_changes,
            "load": None if load is None else {"processes": load.processes, "from_s": load.started_at,
                                               "to_s": load.stopped_at, "phases": load_phases(metrics, load)},
            "summary": summary}


def soak(engines: str, seconds: float, threads: int, metrics: str, scene_seconds: float = 6.0,
         noise: float = 4.0) -> dict:
    from img2music.runtime import EngineConfig, SceneConfig

    config = EngineConfig(duration=seconds, scene=SceneConfig(threshold=0.02, min_dwell=1.0))
    Path(metrics).unlink(missing_ok=True)  # the reporter appends; the report must see this run only
    loop_before = python_loop_seconds()
    summary = run_live(engines, SyntheticSource(scene_seconds=scene_seconds, noise=noise), config, threads,
                       metrics=metrics)
    return {**soak_report(metrics, summary), "scene_seconds": scene_seconds, "noise": noise,
            "python_loop_s": [round(loop_before, 2), round(python_loop_seconds(), 2)]}


def soak_report(metrics: str, summary: str = "") -> dict:
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    warm = [r for r in rows if r["uptime_s"] >= 30] or rows
    rss = [r["rss_mb"] for r in warm]
    return {"music_s": rows[-1]["music_s"], "rss_after_30s_mb": rss[0], "rss_end_mb": rss[-1],
            "rss_max_mb": max(rss), "rss_growth_mb": round(max(rss) - rss[0], 1),
            "underflows": rows[-1]["underflows"], "scene_changes": rows[-1]["scene_changes"],
            "reprimes": rows[-1]["reprimes"], "wall_s": rows[-1]["uptime_s"],
            **{k: rows[-1].get(k) for k in LADDER_COUNTS},
            "windows_frames": sorted({r["window_frames"] for r in rows if r.get("window_frames")}),
            "summary": summary}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Live runtime benchmark.",
                                formatter_class=DefaultsHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    lat = sub.add_parser("latency", help="scene change -> first changed sample out",
                         formatter_class=DefaultsHelpFormatter)
    lat.add_argument("--engines", action="append", required=True, help="bundle directory; repeat to compare")
    lat.add_argument("--switches", type=int, default=4, help="scene switches per bundle")
    lat.add_argument("--switch-every", type=float, default=8.0, help="seconds between switches")
    lat.add_argument("--scene-threshold", type=float, default=0.02,
                     help="cosine distance for a change (random-weight CLIPs see synthetic scenes 0.05-0.4 apart)")
    lat.add_argument("--buffer", type=float, default=1.0, help="live buffer target in seconds")
    lat.add_argument("--embed-interval", type=float, default=0.25, help="seconds between looks at the newest frame")
    rtf_p = sub.add_parser("rtf", help="live against batch generation of the same music, in one run",
                           formatter_class=DefaultsHelpFormatter)
    rtf_p.add_argument("--engines", required=True, help="bundle directory")
    rtf_p.add_argument("--seconds", type=float, default=60.0, help="seconds of music, live and batch")
    rtf_p.add_argument("--scene-seconds", type=float, default=20.0, help="synthetic scene change every N seconds")
    rtf_p.add_argument("--load", default=None, metavar="START:STOP",
                       help="competing CPU-bound processes (one per core) from START to STOP wall seconds after "
                            "the live start (default: none); needs --metrics")
    rtf_p.add_argument("--metrics", default=None, metavar="JSONL", help="the live run's per-second metrics file")
    soak_p = sub.add_parser("soak", help="RSS over a long synthetic run",
                            formatter_class=DefaultsHelpFormatter)
    soak_p.add_argument("--engines", required=True, help="bundle directory")
    soak_p.add_argument("--seconds", type=float, default=600.0, help="seconds of music")
    soak_p.add_argument("--metrics", default="soak_metrics.jsonl", help="JSONL metrics file written by the run")
    soak_p.add_argument("--scene-seconds", type=float, default=6.0, help="synthetic scene change every N seconds")
    soak_p.add_argument("--noise", type=float, default=4.0,
                        help="synthetic sensor noise (0: clean cuts, scene changes only every --scene-seconds)")
    for sp in (lat, rtf_p, soak_p):
        sp.add_argument("--threads", type=int, default=2, help="CPU threads for onnxruntime")
        sp.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.mode == "latency":
        results = [latency(e, args.switches, args.switch_every, args.threads, args.scene_threshold, args.buffer,
                           args.embed_interval) for e in args.engines]
        for r in results:
            print(f"{r['engines']} (buffer {r['buffer_s']} s, embed every {r['embed_interval_s']} s): scene change -> first changed sample out: median {r['latency_median_s']} s "
                  f"over {r['detected']}/{r['switches']} switches {r['latency_s']}; RTF {r['rtf']}, "
                  f"underflows {r['underflows']}, repeats {r['degrade_repeats']}; transition step: "
                  f"blend {r['blend_step_ms']} ms vs re-prime of {r['keep_frames']} frames {r['reprime_step_ms']} ms")
    elif args.mode == "rtf":
        load = None
        if args.load:
            try:
                start, stop = (float(x) for x in args.load.split(":"))
            except ValueError:
                p.error(f"--load wants START:STOP in seconds, got {args.load!r}")
            if not 0 <= start < stop:
                p.error("--load needs 0 <= START < STOP")
            load = CompetingLoad(start, stop, os.cpu_count() or 1)
        r = rtf(args.engines, args.seconds, args.scene_seconds, args.threads, load=load, metrics=args.metrics)
        results = [r]
        print(r["summary"])
        if r["load"]:
            for ph in r["load"]["phases"]:
                print(f"load {ph['phase']:6s} ({ph['wall_s']} s): {ph['music_per_wall_s']} s of music per second, "
                      f"cheaper/repeat/silence {ph['degrade_cheaper']}/{ph['degrade_repeats']}/"
                      f"{ph['degrade_silences']}, recoveries {ph['recoveries']}, underflows {ph['underflows']}, "
                      f"windows {ph['windows_frames']} frames")
        print(f"live compute per second of music: {r['live_rtf_parts']}")
        print(f"window {r['window_frames']} frames, keep {r['keep_frames']}, chunk {r['chunk_frames']}; batch RTFs "
              f"{r['batch_rtfs']}; pure-Python loop (10^7 additions) {' / '.join(map(str, r['python_loop_s']))} s "
              "before live / between / after batch")
        print(f"live/batch RTF ratio {r['ratio']}; live RTF {r['live_rtf']}; batch RTF {r['batch_rtf']}; "
              f"silences {r['silences']}; recoveries {r['recoveries']}")
    else:
        results = [soak(args.engines, args.seconds, args.threads, args.metrics, args.scene_seconds, args.noise)]
        r = results[0]
        print(r["summary"])
        print(f"{args.engines}: {r['music_s']:.0f} s of music in {r['wall_s']:.0f} s; RSS {r['rss_after_30s_mb']} MB after "
              f"30 s, {r['rss_end_mb']} MB at the end, max {r['rss_max_mb']} MB: growth {r['rss_growth_mb']} MB; "
              f"underflows {r['underflows']}, scene changes {r['scene_changes']}, re-primes {r['reprimes']}, "
              f"cheaper/repeat/silence {r['degrade_cheaper']}/{r['degrade_repeats']}/{r['degrade_silences']}, "
              f"recoveries {r['recoveries']}, windows {r['windows_frames']} frames; pure-Python loop (10^7 additions) "
              f"{' / '.join(map(str, r['python_loop_s']))} s before / after")
    print(f"machine: {machine_record()['cpu']}, {machine_record()['cores_available']} cores, threads {args.threads}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_record(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
