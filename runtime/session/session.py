"""A live session, assembled in one place from a :class:`LiveSessionConfig`, and run.

Order of assembly: the fallback picture (a bad file fails before the bundle loads), the
bundle, the prompt's first encoding, the ring, recording and playout, the thread watch,
the engine (with its control queue when a server asks for one), the sink, the status
reporter and the servers (a taken port fails here, before the music starts). Nothing is
attached to a part after it was built. :meth:`LiveSession.run` plays until ``duration``,
Ctrl-C or SIGTERM, then closes everything in reverse and returns the one-line summary.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from img2music.runtime.audio.playout import Playout
from img2music.runtime.audio.recording import LiveRecording
from img2music.runtime.audio.sinks import ClockSink, RingBuffer, SoundDeviceSink, device_rate
from img2music.runtime.control.dispatcher import LiveControl
from img2music.runtime.control.status import StatusReporter
from img2music.runtime.control.systemd import SystemdNotifier
from img2music.runtime.loop.engine import LiveEngine
from img2music.runtime.loop.source_thread import SourceThread
from img2music.runtime.loop.sources import default_fallback_image, make_source
from img2music.runtime.loop.thread_watch import ThreadWatch
from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline
from img2music.runtime.pipeline.preprocess import load_image
from img2music.runtime.session.config import LiveSessionConfig, read_token_file

log = logging.getLogger(__name__)

RING_SPARE_SECONDS = 30
"""Ring room beyond the buffer target: a re-prime raises the target ahead of its prefill."""


class LiveSession:
    """One live run (see the module docstring). ``report`` gets the start-up choices (the
    window) as one line; ``on_engine(engine)`` runs once the engine is built (tests and
    benchmarks use it to slow the generator or watch it)."""

    def __init__(self, config: LiveSessionConfig, report: Callable[[str], None] | None = None,
                 on_engine: Callable[[LiveEngine], None] | None = None) -> None:
        self.config = config
        c, b, o = config, config.backend, config.output
        # what the user typed is checked before the (slow) bundle load: the token, the picture
        self.token = read_token_file(c.servers.token_file) if c.servers.token_file else None
        fallback = _fallback(c.source.fallback_image)
        source = make_source(c.source)
        # One compute thread runs the models one at a time (runtime.loop.engine), so ORT's
        # workers may busy-wait between runs as in batch generation. Measured on 2 cores,
        # small-random int4 (bench_live.py rtf): live chunks cost 1.20x batch per second of
        # music with spinning off, 1.00-1.02x with it on. With plenty of headroom the engine
        # turns it off again after measuring (loop.budget.SPIN_BELOW): idle spinning burns cores.
        self.pipeline = OnnxPipeline.load(b.engines, threads=b.threads, spinning=True, provider=b.provider,
                                          cuda_graph=b.cuda_graph, encodec=b.encodec,
                                          encodec_chunk=c.engine.chunk_frames)
        if c.engine.prompt is not None:  # a bad prompt or a bundle without text: one error now, not per frame
            self.pipeline.encode_text(c.engine.prompt)
        self.rate = o.rate or (self.pipeline.sample_rate if o.no_audio else device_rate(o.device))
        # The bundle's channels (2: a stereo checkpoint) run through to the sound card and the
        # WAV; the playout and the sinks take them from the ring, a reload must keep them.
        channels = self.pipeline.channels
        ring = RingBuffer(int(self.rate * (c.engine.buffer_seconds + RING_SPARE_SECONDS)), channels)
        self.recorder = LiveRecording(o.record, self.rate, max_bytes=int(o.record_max_mb * 2**20),
                                      channels=channels) if o.record else None
        self.playout = Playout(ring, self.rate, target=c.engine.buffer_seconds, low_water=c.engine.low_water,
                               recorder=self.recorder, stall_seconds=c.engine.stall_seconds,
                               preroll=c.engine.preroll_seconds)
        self.watch = ThreadWatch(stuck_after=c.engine.thread_stuck_seconds)
        self.step_latency = _step_latency() if c.servers.http else None
        self.engine = LiveEngine(
            self.pipeline, SourceThread(source, stale_after=c.source.stale_after), c.engine, self.playout, self.rate,
            fallback=fallback, report=report or print, watch=self.watch,
            control=partial(LiveControl, reload_dir=c.servers.reload_dir or str(Path(b.engines).resolve().parent))
            if c.servers.any else None,
            observe_step=None if self.step_latency is None else self.step_latency.observe)
        if on_engine is not None:
            on_engine(self.engine)
        self.sink = ClockSink(ring, self.rate) if o.no_audio else SoundDeviceSink(ring, self.rate, o.device)
        self.notifier = SystemdNotifier()  # a no-op unless systemd started us with Type=notify
        self.reporter = StatusReporter(self.engine, self.sink, o.metrics, metrics_max_bytes=int(o.metrics_max_mb * 2**20),
                                       notifier=self.notifier)
        self.servers = self._servers()

    def _servers(self) -> list:
        """The status page / metrics / control (HTTP), OSC and WebSocket servers asked for,
        bound now and started by :meth:`run`; all share the engine's one LiveControl."""
        s, engine = self.config.servers, self.engine
        servers, refusals = [], Counter()  # one count of refusals for /metrics
        if s.http:
            from img2music.runtime.control.http_server import LiveHttpServer

            servers.append(LiveHttpServer(self.reporter, *s.http, provider=self.config.backend.provider,
                                          control=engine.control, token=self.token, latest_frame=engine.source.latest,
                                          step_latency=self.step_latency, allow_hosts=s.allow_hosts,
                                          public_metrics=s.public_metrics, refusals=refusals))
        if s.osc:
            from img2music.runtime.control.osc_server import LiveOscServer

            servers.append(LiveOscServer(engine.control, *s.osc, refusals=refusals))
        if s.ws:
            from img2music.runtime.control.ws_server import LiveWebSocketServer

            http_port = servers[0].address[1] if s.http else None
            servers.append(LiveWebSocketServer(self.reporter, engine.control, *s.ws, token=self.token,
                                               latest_frame=engine.source.latest, allow_hosts=s.allow_hosts,
                                               http_port=http_port, refusals=refusals))
        return servers

    def run(self) -> str:
        """Play until ``duration``, Ctrl-C or SIGTERM; returns the summary (see :func:`summary`)."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (systemd stop) ends the run like Ctrl-C; SIGINT is installed explicitly
            # since a shell that starts us in the background leaves it ignored
            previous = (signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, signal.default_int_handler))
        stopped = "finished"
        self.watch.install()
        try:
            self.playout.start()
            self.sink.start()
            self.reporter.start()
            for server in self.servers:
                server.start()
            self.watch.watch("playout", self.playout.background.thread, lambda: self.playout.beat)
            self.watch.watch("sound output", self.sink.background.thread)
            self.watch.watch("status", self.reporter.background.thread)
            for server in self.servers:  # a control server that died ends the run (systemd restarts it)
                self.watch.watch(f"{server.background.name} server", server.background.thread)
            self.engine.run()
        except KeyboardInterrupt:
            stopped = "stopped"
        finally:
            last = self._close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous[0])
                signal.signal(signal.SIGINT, previous[1])
        text = summary(stopped, last)
        if self.recorder is not None:
            text += "\n" + self.recorder.describe()
        return text

    def _close(self) -> dict:
        """Everything in reverse; what was generated reaches the recorder. The last snapshot."""
        self.watch.uninstall()
        self.engine.stop_event.set()
        self.playout.close()
        self.playout.finish()
        try:
            self.playout.feed()  # whatever was generated reaches the recorder
        except Exception as exc:  # the playout's own fault: the error that ended the run goes on
            log.error("the last audio could not be flushed: %s", exc)
        self.sink.close()
        for server in self.servers:
            server.close()
        last = self.reporter.close()
        self.notifier.close()
        if self.recorder is not None:
            self.recorder.close()
        return last


def summary(stopped: str, last: dict) -> str:
    """The line a run ends with: music, scenes, underflows, the ladder's steps, RTF, outages."""
    text = (f"{stopped}: {last['music_s']:.2f} s of music, {last['scene_changes']} scene changes, "
            f"{last['underflows']} underflows, {last['reconnects']} source reconnects, "
            f"degrade cheaper/repeat/silence {last['degrade_cheaper']}/{last['degrade_repeats']}/"
            f"{last['degrade_silences']}, RTF {last['rtf']:.2f}")
    if last.get("paused_s"):
        text += f", {last['paused_s']:.1f} s paused"
    if last.get("bundle_reloads") or last.get("bundle_reload_failures"):
        text += f", bundle reloads {last['bundle_reloads']} (failed {last['bundle_reload_failures']})"
    if last["sink_outages"]:
        text += f", {last['sink_outages']} sound output outages ({last['sink_outage_s']:.1f} s)"
    return text


def _fallback(path: str | None) -> np.ndarray:
    """(H, W, 3) RGB: the picture the music starts from while the source has no frame."""
    return default_fallback_image() if path is None else np.asarray(load_image(path))


def _step_latency():
    from img2music.runtime.control.metrics import step_latency_histogram

    return step_latency_histogram()


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (systemd stop) ends the run like Ctrl-C
