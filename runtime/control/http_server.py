"""``live.py --http HOST:PORT``: what a fleet's monitoring reads, over plain HTTP.

- ``/metrics``: Prometheus text format (``prometheus_client``), read from the same
  per-second snapshot as the status line and the JSONL metrics (one source of truth), plus
  the client library's standard ``process_*`` metrics (RSS, CPU seconds, open files).
- ``/healthz``: alive. 200 while audio reached the sound card within the last
  :data:`HEALTHY_WITHIN` seconds (and while starting, before the first audio); 503 when it
  stopped: the systemd watchdog's notion of health.
- ``/readyz``: 200 once the first audio reached the sound card, 503 before.

- ``/``: the status page (``runtime.control.page``: frame thumbnail, directive, buffer, RTF and
  degradation chart, scene log, source and sink state), live through ``/events``.
- ``GET /control``: the sampling in use, the transport state (playing, fading, paused), the
  bundle playing and the last reload, and the changes so far (JSON).
- ``POST /control``: a JSON object of changes (``runtime.control.requests``): 202 when
  accepted; 400 (bad JSON, unknown field, out of range), 409 (not possible now), 413 (over
  :data:`MAX_BODY` bytes) with a message and no effect on the music.

The reads are served without a token on any address (``--http 0.0.0.0:9090`` exposes them
on the network: say so to whoever runs the firewall). ``POST /control`` needs
``Authorization: Bearer TOKEN`` when a token is set (``--http-token-file``), and is refused
(403) on a non-loopback address without one. The server is the standard library's threaded
one: a scrape a second costs nothing next to the decoder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.page import frame_jpeg, page_event, page_html

log = logging.getLogger(__name__)

MAX_BODY = 4096
"""Largest control request body, in bytes."""
LOOPBACK = ("127.0.0.1", "::1", "localhost")
HEALTHY_WITHIN = 5.0
"""Seconds without audio reaching the sound card after which /healthz says 503."""


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); a bare port binds 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not HOST:PORT: {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    return host or "127.0.0.1", number


def _prometheus():
    try:
        import prometheus_client
    except ImportError:
        raise Img2MusicError("--http needs prometheus_client: pip install 'img2music[live]'") from None
    return prometheus_client


COUNTERS = {  # snapshot key -> (metric name without _total, help)
    "music_s": ("img2music_music_seconds", "Seconds of music generated"),
    "underflows": ("img2music_underflows", "Sound-card reads that found the buffer short"),
    "underflow_s": ("img2music_underflow_seconds", "Seconds of silence from buffer underflows"),
    "sink_outages": ("img2music_sound_output_outages", "Times the sound output went away"),
    "sink_outage_s": ("img2music_sound_output_outage_seconds", "Seconds without sound output (ended outages)"),
    "reconnects": ("img2music_source_reconnects", "Times the frame source was reopened"),
    "open_failures": ("img2music_source_open_failures", "Failed attempts to open the frame source"),
    "scene_changes": ("img2music_scene_changes", "Scene changes"),
    "frames": ("img2music_source_frames", "Frames read from the source"),
    "recorded_s": ("img2music_recorded_seconds", "Seconds of music recorded"),
    "record_lost_s": ("img2music_record_lost_seconds", "Seconds of music not recorded (disk full)"),
    "paused_s": ("img2music_paused_seconds", "Seconds of silence written while paused"),
    "degrade_fill_s": ("img2music_degrade_fill_seconds", "Seconds of repeated audio the playout ladder inserted"),
    "degrade_silence_s": ("img2music_degrade_silence_seconds", "Seconds of silence the playout ladder inserted"),
    "bundle_reloads": ("img2music_bundle_reloads", "Bundles swapped in while running"),
    "bundle_reload_failures": ("img2music_bundle_reload_failures", "Bundle reloads that failed (the old one played on)"),
}
GAUGES = {
    "buffer_s": ("img2music_buffer_seconds", "Seconds of audio buffered ahead of the sound card"),
    "rtf": ("img2music_real_time_factor", "Compute seconds per second of music (under 1 keeps up)"),
    "frame_age_s": ("img2music_frame_age_seconds", "Age of the newest frame"),
    "degrade_level": ("img2music_degrade_level", "Playout ladder: 0 normal, 1 cheaper, 2 repeat, 3 silence"),
    "first_audio_s": ("img2music_time_to_first_audio_seconds", "Seconds from start to the first audio out"),
    "uptime_s": ("img2music_uptime_seconds", "Seconds since the live run started"),
    "paused": ("img2music_paused", "1 while paused (silence on purpose, no decoder), 0 while playing or fading"),
}
DEGRADE_STEPS = ("cheaper", "repeats", "silences")
SOURCE_STATES = ("waiting", "open failed", "stalled", "streaming")


class LiveCollector:
    """A prometheus_client collector over the reporter's newest snapshot."""

    def __init__(self, reporter, provider: str = "cpu", control=None) -> None:
        self.reporter, self.provider, self.control = reporter, provider, control

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self.reporter.last or {}
        for key, (name, text) in COUNTERS.items():
            if s.get(key) is not None:
                yield CounterMetricFamily(name, text, value=float(s[key]))
        for key, (name, text) in GAUGES.items():
            if s.get(key) is not None:
                yield GaugeMetricFamily(name, text, value=float(s[key]))
        steps = CounterMetricFamily("img2music_degrade_steps", "Playout ladder steps taken", labels=["step"])
        for step in DEGRADE_STEPS:
            steps.add_metric([step], float(s.get(f"degrade_{step}", 0)))
        yield steps
        state = s.get("source_state", "")
        source = GaugeMetricFamily("img2music_source_state", "1 for the frame source's current state",
                                   labels=["state"])
        for name in SOURCE_STATES:
            source.add_metric([name], 1.0 if state.startswith(name) else 0.0)
        yield source
        if self.control is not None:
            changes = CounterMetricFamily("img2music_control_changes", "Accepted control changes", labels=["field"])
            for name, count in self.control.settings()["changes"].items():
                changes.add_metric([name], float(count))
            yield changes
        build = self.reporter.build
        yield InfoMetricFamily("img2music_build", "Version, bundle, precision and provider", value={
            "version": build.get("version", ""), "bundle": build.get("bundle", ""),
            "precision": build.get("precision", ""), "provider": self.provider})


STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def step_latency_histogram():
    """The decoder-step latency histogram: observed by the live engine after every decoder pass,
    served on ``/metrics`` (made before both, so neither is patched into the other)."""
    return _prometheus().Histogram("img2music_decoder_step_seconds", "One decoder pass with guidance and sampling",
                                   registry=None, buckets=STEP_BUCKETS)


class _Handler(BaseHTTPRequestHandler):
    """One request; :attr:`live` is the :class:`LiveHttpServer` (set per server by a subclass)."""

    live: "LiveHttpServer"

    def do_GET(self):
        server, pc = self.live, _prometheus()
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, pc.generate_latest(server.registry), pc.CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            code, text = server.health() if path == "/healthz" else server.ready()
            self._send(code, text.encode() + b"\n", "text/plain; charset=utf-8")
        elif path == "/control" and server.control is not None:
            self._json(200, server.control.settings())
        elif path == "/":
            self._send(200, page_html(), "text/html; charset=utf-8")
        elif path == "/frame.jpg":
            self._send(200, frame_jpeg(server.latest_frame()[0]), "image/jpeg")
        elif path == "/events":
            self._events()
        else:
            self._send(404, b"not found: try /, /metrics, /healthz, /readyz or /control\n",
                       "text/plain; charset=utf-8")

    def do_POST(self):
        server = self.live
        if self.path.split("?", 1)[0] != "/control" or server.control is None:
            self._send(405, b"only POST /control changes anything\n", "text/plain; charset=utf-8")
            return
        code, answer = server.handle_control(self.headers, self.rfile, self.client_address[0])
        self._json(code, answer)

    def do_PUT(self):
        self._send(405, b"GET /metrics, /healthz, /readyz, /control; POST /control\n",
                   "text/plain; charset=utf-8")

    do_DELETE = do_PATCH = do_PUT

    def _events(self) -> None:
        """Server-sent events: the page's view of the newest snapshot, once a second."""
        server = self.live
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            while not server.closing.is_set():
                event = page_event(server.reporter.last, server.control, server.latest_frame()[1])
                if event is not None:
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                server.closing.wait(1.0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed

    def _json(self, code: int, answer: dict) -> None:
        self._send(code, json.dumps(answer).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug("http %s " + fmt, self.client_address[0], *args)


class LiveHttpServer:
    """Serves the page, /metrics, /healthz, /readyz and /control for one live run from a daemon thread."""

    def __init__(self, reporter, host: str, port: int, provider: str = "cpu", control=None,
                 token: str | None = None, latest_frame=None, clock=time.monotonic, step_latency=None) -> None:
        pc = _prometheus()
        self.reporter, self.control, self.token, self.clock = reporter, control, token, clock
        self.latest_frame = latest_frame or (lambda: (None, 0, float("inf")))
        """() -> (RGB frame or None, frame id, age): the source's newest frame."""
        self.closing = threading.Event()
        """Set by :meth:`close`: ends the event streams."""
        self.loopback = host in LOOPBACK
        self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=self.registry)
        self.registry.register(LiveCollector(reporter, provider, control))
        self.step_latency = step_latency if step_latency is not None else step_latency_histogram()
        """Observed by the live engine after every decoder pass."""
        self.registry.register(self.step_latency)
        try:
            self.httpd = ThreadingHTTPServer((host, port), type("Handler", (_Handler,), {"live": self}))
        except OSError as exc:
            raise Img2MusicError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.background = BackgroundThread("http", self.httpd.serve_forever, interrupt=self.httpd.shutdown)

    def start(self) -> "LiveHttpServer":
        self.background.start()
        host, port = self.address
        where = "" if self.loopback else " (reachable from the network)"
        log.warning("serving the status page, /metrics, /healthz and /readyz on http://%s:%d%s", host, port, where)
        if self.control is not None and self.token is None and not self.loopback:
            log.warning("POST /control is refused on %s without --http-token-file", host)
        return self

    def handle_control(self, headers, body, client: str) -> tuple[int, dict]:
        """One ``POST /control``: (status, JSON answer); nothing changes unless 202."""
        from img2music.runtime.control.dispatcher import answer
        from img2music.runtime.control.requests import bearer, refusal

        source = f"http {client}"
        refused = refusal(self.token, bearer(headers.get("Authorization")), self.loopback)
        if refused is not None:
            return answer(self.control, None, refused, source)  # the body is not read
        try:
            length = int(headers.get("Content-Length", ""))
        except ValueError:
            return 411, {"error": "Content-Length required"}
        if not 0 <= length <= MAX_BODY:
            return 413, {"error": f"request body over {MAX_BODY} bytes"}
        return answer(self.control, body.read(length), None, source)

    def ready(self) -> tuple[int, str]:
        if self.reporter.first_audio_at is None:
            return 503, "starting: no audio has reached the sound card yet"
        return 200, "ready"

    def health(self) -> tuple[int, str]:
        if self.reporter.first_audio_at is None:
            return 200, "starting"
        silent = self.clock() - self.reporter.last_flowing_at
        if silent > HEALTHY_WITHIN:
            return 503, f"no music has reached the sound card for {silent:.0f} s"
        return 200, "ok"

    def close(self) -> None:
        self.closing.set()  # ends the event streams
        self.background.stop()
        self.httpd.server_close()
