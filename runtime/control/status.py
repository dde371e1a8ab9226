"""What a live run shows: a one-line status and a JSON-lines metrics log.

Every ``interval`` seconds a snapshot of the engine is taken; the status line is
redrawn on a terminal (``\\r``) and each snapshot is appended to ``--metrics`` as one
JSON object, flushed at once so that ``tail -f`` and a crash both see it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import TextIO

from img2music.basics.background import BackgroundThread

log = logging.getLogger(__name__)


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
        "channels": ring.channels,
        "underflows": ring.underflows,
        "underflow_s": round(ring.underflow_samples / p.rate, 3),
        "frame_age_s": None if age == float("inf") else round(age, 3),
        "frames": src.stats.frames,
        "frames_dropped": src.stats.dropped,
        "reconnects": src.stats.reconnects,
        "open_failures": src.stats.open_failures,
        "source_state": src.state,
        "fallback_used": engine.fallback_used,
        "scene_changes": engine.tracker.changes,
        "scene_distance": round(engine.tracker.last_distance, 4),
        "embeds": engine.gate.passed,
        "embeds_skipped": engine.gate.skipped,
        "directive": scene.directive if scene is not None else None,
        "prompt": engine.prompt.text,
        "prompt_weight": engine.prompt.weight,
        "reprimes": engine.stream.generator.reprimes if engine.stream is not None else 0,
        "window_frames": engine.window.window_frames if engine.window is not None else None,
        "keep_frames": engine.window.keep_frames if engine.window is not None else None,
        "degrade_level": p.level,
        "degrade_cheaper": p.counts.cheaper,
        "degrade_repeats": p.counts.repeats,
        "degrade_silences": p.counts.silences,
        # what the ladder added to the stream beyond the music and the paused silence: a recording
        # is --duration + these two long
        "degrade_fill_s": round(p.counts.fill_seconds, 3),
        "degrade_silence_s": round(p.counts.silence_seconds, 3),
        "recoveries": p.counts.recoveries,
        "scene_latency_s": [round(s, 3) for label, s, _ in p.counts.latencies if label == "scene"][-5:],
        "sink_reopens": getattr(sink, "reopens", 0),
        "sink_outages": getattr(sink, "outages", 0),
        "sink_outage_s": round(getattr(sink, "outage_seconds", 0.0), 2),
        "sink_status_flags": getattr(sink, "status_flags", 0),
        "rss_mb": round(rss_mb(), 1),
        "transport": engine.transport.state,
        "paused": int(engine.transport.paused),
        "paused_s": round(engine.transport.silence_samples / engine.pipeline.sample_rate, 3),
        "bundle": str(engine.pipeline.bundle.root),
        **_reload(engine.control),
        **_recording(p.recorder),
    }


def _reload(control) -> dict:
    if control is None:
        return {}
    r = control.reloader
    return {"reload": r.state, "reload_error": r.error, "bundle_reloads": r.reloads,
            "bundle_reload_failures": r.failures}


def _recording(recorder) -> dict:
    if recorder is None:
        return {}
    return {"record_state": recorder.state, "recorded_s": round(recorder.samples / recorder.rate, 2),
            "record_lost_s": round(recorder.lost_samples / recorder.rate, 2), "record_files": len(recorder.segments)}


def status_line(s: dict) -> str:
    age = "-" if s["frame_age_s"] is None else f"{s['frame_age_s']:.1f}s"
    line = (f"music {s['music_s']:7.1f}s | buffer {s['buffer_s']:4.2f}s | RTF {s['rtf']:4.2f} | "
            f"underflows {s['underflows']} | frame age {age} | scenes {s['scene_changes']} | "
            f"degrade L{s['degrade_level']} | rss {s['rss_mb']:.0f} MB")
    if s.get("source_state", "streaming") != "streaming":
        line += f" | source {s['source_state']}"
    if s.get("transport", "playing") != "playing":
        line += f" | {s['transport']}"
    if s.get("reload") in ("loading", "failed"):
        line += f" | bundle reload {s['reload']}"
    if s["directive"]:
        line += f" | {s['directive']}"
    return line


def version() -> str:
    """This package's installed version ("unknown" when run from a plain checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("img2music")
    except PackageNotFoundError:
        return "unknown"


class StatusReporter:
    """Background thread: status line to ``stream`` (when a terminal) and JSONL to ``metrics``.

    The metrics file is rotated by size (``metrics_max_bytes``; ``FILE.1`` .. ``FILE.<keep>``
    hold the older lines), so weeks unattended cannot fill the disk: a line a second is
    ~50 MB a day."""

    def __init__(self, engine, sink, metrics_path: str | None, stream: TextIO | None = None,
                 interval: float = 1.0, metrics_max_bytes: int = 20 * 2**20, metrics_keep: int = 3,
                 notifier=None) -> None:
        self.engine, self.sink, self.interval = engine, sink, interval
        self.notifier = notifier
        """runtime.control.systemd.SystemdNotifier (None: not told)."""
        self._consumed = 0  # samples the sink had taken at the last report
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.metrics_path, self.metrics_max_bytes, self.metrics_keep = metrics_path, metrics_max_bytes, metrics_keep
        self.metrics = open(metrics_path, "a", encoding="utf-8") if metrics_path else None
        self.build = {"version": version()}
        self._build_bundle()
        self.started = time.monotonic()
        self.first_audio_at: float | None = None
        """When audio first reached the sink (monotonic), None before."""
        self.last_flowing_at = self.started
        """When music last reached the sink (monotonic)."""
        self.last: dict | None = None
        self.background = BackgroundThread("status", self._run)
        self._wrapped: list = []  # (log handler, its own formatter) while the status line is drawn

    def start(self) -> "StatusReporter":
        if self.tty:
            self._wrapped = [(h, h.formatter) for h in logging.getLogger().handlers
                             if getattr(h, "stream", None) is self.stream]
            for handler, formatter in self._wrapped:
                handler.setFormatter(_ClearLine(formatter))
        self.background.start()
        return self

    def _build_bundle(self) -> None:
        """The bundle playing now (a reload changes it) into :attr:`build`."""
        if self.engine is not None:
            bundle = self.engine.pipeline.bundle
            self.build.update(bundle=str(bundle.root), precision=bundle.precision)

    def report(self) -> dict:
        s = snapshot(self.engine, self.sink, self.started)
        self._build_bundle()
        flowing = self._audio_flowing()
        s["first_audio_s"] = None if self.first_audio_at is None else round(self.first_audio_at - self.started, 2)
        self.last = s
        if self.notifier is not None:
            self._notify(s, flowing)
        if self.metrics is not None:
            try:
                self.metrics.write(json.dumps({**s, **self.build}) + "\n")
                self.metrics.flush()
                if self.metrics.tell() >= self.metrics_max_bytes:
                    self._rotate()
            except OSError as exc:  # disk full: the metrics stop, the music and the status line do not
                log.error("metrics stopped: cannot write %s: %s", self.metrics.name, exc.strerror or exc)
                self._close_metrics()
        if self.tty:
            # one row, never wrapped: a wrapped line would scroll the terminal on every redraw
            width = shutil.get_terminal_size((200, 24)).columns
            self.stream.write("\r\033[K" + status_line(s)[: max(20, width - 1)])
            self.stream.flush()
        return s

    def _run(self) -> None:
        while not self.background.wait(self.interval):
            self.report()

    def close(self) -> dict:
        self.background.stop()
        s = self.report()
        if self.tty:
            self.stream.write("\n")
        for handler, formatter in self._wrapped:
            handler.setFormatter(formatter)
        self._wrapped = []
        self._close_metrics()
        return s

    def _audio_flowing(self) -> bool:
        """Has music (not the stall's silence) reached the sink since the last report? Sets
        :attr:`first_audio_at` and :attr:`last_flowing_at`: the one notion of health that
        the systemd watchdog and ``/healthz`` share."""
        if self.engine is None:
            return False  # a reporter without a run (tests of the status line alone)
        consumed = self.engine.playout.ring.consumed
        flowing = consumed > self._consumed and self.engine.playout.level < 3
        self._consumed = consumed
        now = time.monotonic()
        if consumed > 0 and self.first_audio_at is None:
            self.first_audio_at = self.engine.playout.ring.first_read_at or now
        if flowing:
            self.last_flowing_at = now
        return flowing

    def _notify(self, s: dict, flowing: bool) -> None:
        """READY once audio has reached the sink; WATCHDOG only while it keeps reaching it and
        it is music: a process that is up but silent stops petting the watchdog, and systemd
        restarts it."""
        if self.first_audio_at is not None:
            self.notifier.ready()
        if flowing:
            self.notifier.watchdog()
        self.notifier.status(status_line(s))

    def _rotate(self) -> None:
        """FILE -> FILE.1 -> ... -> FILE.<keep> (the oldest is dropped); a fresh FILE."""
        self.metrics.close()
        path = self.metrics_path
        for i in range(self.metrics_keep - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        os.replace(path, f"{path}.1")
        self.metrics = open(path, "a", encoding="utf-8")

    def _close_metrics(self) -> None:
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            try:
                metrics.close()
            except OSError:
                pass  # the unflushed line is lost with the full disk


class _ClearLine(logging.Formatter):
    """A log line printed while the status line is drawn first clears that row, so the
    two never glue together; the status line is redrawn on its next tick."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return "\r\033[K" + self.inner.format(record)
