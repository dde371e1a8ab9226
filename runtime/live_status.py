"""What a live run shows: a one-line status and a JSON-lines metrics log.

Every ``interval`` seconds a snapshot of the engine is taken; the status line is
redrawn on a terminal (``\\r``) and each snapshot is appended to ``--metrics`` as one
JSON object, flushed at once so that ``tail -f`` and a crash both see it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TextIO


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc, else psutil when present)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        try:
            import psutil
        except ImportError:
            return float("nan")
        return psutil.Process().memory_info().rss / 2**20


def snapshot(engine, sink, started: float) -> dict:
    p, ring, src = engine.playout, engine.playout.ring, engine.source
    _, _, age = src.latest()
    scene = engine.scene
    return {
        "time": round(time.time(), 3),
        "uptime_s": round(time.monotonic() - started, 2),
        "music_s": round(engine.music_samples / engine.pipeline.sample_rate, 3),
        "buffer_s": round(p.buffered(), 3),
        "rtf": round(engine.rtf, 3),
        "underflows": ring.underflows,
        "underflow_s": round(ring.underflow_samples / p.rate, 3),
        "frame_age_s": None if age == float("inf") else round(age, 3),
        "frames": src.stats.frames,
        "frames_dropped": src.stats.dropped,
        "reconnects": src.stats.reconnects,
        "scene_changes": engine.tracker.changes,
        "scene_distance": round(engine.tracker.last_distance, 4),
        "embeds": engine.gate.passed,
        "embeds_skipped": engine.gate.skipped,
        "directive": scene.directive if scene is not None else None,
        "reprimes": engine.stream.generator.reprimes if engine.stream is not None else 0,
        "degrade_level": p.level,
        "degrade_cheaper": p.counts.cheaper,
        "degrade_repeats": p.counts.repeats,
        "degrade_silences": p.counts.silences,
        "recoveries": p.counts.recoveries,
        "scene_latency_s": [round(s, 3) for label, s, _ in p.counts.latencies if label == "scene"][-5:],
        "sink_reopens": getattr(sink, "reopens", 0),
        "sink_status_flags": getattr(sink, "status_flags", 0),
        "rss_mb": round(rss_mb(), 1),
    }


def status_line(s: dict) -> str:
    age = "-" if s["frame_age_s"] is None else f"{s['frame_age_s']:.1f}s"
    line = (f"music {s['music_s']:7.1f}s | buffer {s['buffer_s']:4.2f}s | RTF {s['rtf']:4.2f} | "
            f"underflows {s['underflows']} | frame age {age} | scenes {s['scene_changes']} | "
            f"degrade L{s['degrade_level']} | rss {s['rss_mb']:.0f} MB")
    if s["directive"]:
        line += f" | {s['directive']}"
    return line


class StatusReporter:
    """Background thread: status line to ``stream`` (when a terminal) and JSONL to ``metrics``."""

    def __init__(self, engine, sink, metrics_path: str | None, stream: TextIO | None = None,
                 interval: float = 1.0) -> None:
        self.engine, self.sink, self.interval = engine, sink, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.metrics = open(metrics_path, "a", encoding="utf-8") if metrics_path else None
        self.started = time.monotonic()
        self.last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> "StatusReporter":
        self._thread.start()
        return self

    def report(self) -> dict:
        s = snapshot(self.engine, self.sink, self.started)
        self.last = s
        if self.metrics is not None:
            self.metrics.write(json.dumps(s) + "\n")
            self.metrics.flush()
        if self.tty:
            self.stream.write("\r\033[K" + status_line(s)[:200])
            self.stream.flush()
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def close(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=2)
        s = self.report()
        if self.tty:
            self.stream.write("\n")
        if self.metrics is not None:
            self.metrics.close()
        return s
