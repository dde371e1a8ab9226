"""``live.py --http HOST:PORT``: the status page, what a fleet's monitoring reads, and control.

- ``/metrics``: Prometheus text format (``runtime.control.metrics``), ``/healthz`` (200 while
  audio reached the sound card within :data:`HEALTHY_WITHIN` seconds, and while starting; 503
  when it stopped: the systemd watchdog's notion of health), ``/readyz`` (200 once the first
  audio reached the sound card).
- ``/``: the status page (``runtime.control.page``), live through ``/events``; ``/frame.jpg``,
  the newest camera frame (encoded once per frame, whoever asks how often).
- ``GET /control``: the sampling, transport, prompt, bundle and changes so far (JSON);
  ``POST /control``: a JSON object of changes (``runtime.control.requests``): 202 when
  accepted; 400 (bad JSON or value), 409 (not possible now), 413 (over :data:`MAX_BODY`
  bytes), 415 (not JSON), 429 (too soon after the last of its kind).

Who may read and steer: ``runtime.control.guard`` (Host, Origin, Content-Type, token, loopback).
What one client may cost: :data:`RATE` connections a second after a burst of :data:`BURST`
(later ones wait their turn, unanswered and without a thread, up to 2 s; past that, or past
:data:`MAX_WAITING` waiting, they are closed), at most :data:`MAX_CONNECTIONS` connections at
once and :data:`MAX_PER_CLIENT` from one client (more: 503 from the accepting thread, no thread
made), :data:`MAX_EVENT_STREAMS` event streams, headers within :data:`MAX_HEADER_BYTES` (431;
the request line within http.server's own 64 KiB, 414), the whole request (line, headers,
body) within :data:`IO_TIMEOUT` seconds of the connection's start, however slowly it trickles
in (the accepting thread shuts the socket of one past it), and every write within that many
seconds; nothing waits for a client at shutdown.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import json
import logging
import socket
import sys
import threading
import time
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.guard import ClientPace, ConnectionSlots, Guard, loggable
from img2music.runtime.control.metrics import LiveCollector, ScrapeCache, _prometheus, step_latency_histogram
from img2music.runtime.control.page import frame_jpeg, page_event, page_html

log = logging.getLogger(__name__)

MAX_BODY = 4096
"""Largest control request body, in bytes."""
HEALTHY_WITHIN = 5.0
"""Seconds without audio reaching the sound card after which /healthz says 503."""
MAX_CONNECTIONS = 32
MAX_PER_CLIENT = 16
"""Connections at once from one client (``guard.client_key``): one peer holds half at most."""
MAX_EVENT_STREAMS = 8
MAX_HEADER_BYTES = 16384
IO_TIMEOUT = 5.0
"""Seconds a client may take to send its whole request (or to take one write) before it is dropped."""
RATE, BURST = 20.0, 64
"""Connections per second per client address, after a burst of that many (``guard.ClientPace``):
the page and a scraper stay far inside it; 700 ``/frame.jpg`` a second took ~12 s of a minute's
music on two cores, in the request threads' CPU and interpreter lock alone."""
MAX_WAITING = 64
"""Connections waiting for their turn at once; more are closed unanswered."""
POLL = 0.05
"""Seconds between the accepting thread's looks at the waiting connections."""
JSON_TYPES = ("application/json",)


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); a bare port binds 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if sep and host.startswith("[") != host.endswith("]"):
        raise ValueError(f"not HOST:PORT: {text!r}")
    host = host[1:-1] if host.startswith("[") else host
    if sep and ":" in host and not text.startswith("["):
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    host = host if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"not HOST:PORT: {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    return host or "127.0.0.1", number


class _CappedLines:
    """The request's reader while its headers are parsed: more than ``limit`` bytes of them is
    http.client's own "header line too long" (431), not memory."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.left = inner, limit

    def readline(self, size: int = -1) -> bytes:
        line = self.inner.readline(min(size if size >= 0 else self.left + 1, self.left + 1))
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong("headers")
        return line

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Handler(BaseHTTPRequestHandler):
    """One request; :attr:`live` is the :class:`LiveHttpServer` (set per server by a subclass)."""

    live: "LiveHttpServer"
    timeout = IO_TIMEOUT
    protocol_version = "HTTP/1.0"  # one request per connection: a held connection costs one slot, briefly

    def parse_request(self) -> bool:
        self.rfile, inner = _CappedLines(self.rfile, MAX_HEADER_BYTES), self.rfile
        try:
            ok = super().parse_request()
        finally:
            self.rfile = inner
        if ok and not self.live.guard.host_ok(self.headers.get("Host")):
            self._refuse("host", 421, f"this server does not answer to {loggable(self.headers.get('Host'), 80)}")
            return False
        return ok

    def do_GET(self):
        server, path = self.live, self.path.split("?", 1)[0]
        refused = server.guard.read_refusal(path, server.guard.token_given(self.headers, self.path))
        if refused is not None:
            self._refuse("token", *refused)
        elif path == "/metrics":
            self._send(200, server.scrape.text(), _prometheus().CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            code, text = server.health() if path == "/healthz" else server.ready()
            self._send(code, text.encode() + b"\n", "text/plain; charset=utf-8")
        elif path == "/control" and server.control is not None:
            self._json(200, server.control.settings())
        elif path == "/":
            self._send(200, page_html(), "text/html; charset=utf-8")
        elif path == "/frame.jpg":
            self._send(200, server.frame_jpeg(), "image/jpeg")
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
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media not in JSON_TYPES:
            self._refuse("content_type", 415, "POST /control takes Content-Type: application/json")
        elif not server.guard.origin_ok(self.headers.get("Origin"), self.headers.get("Host")):
            self._refuse("origin", 403, f"requests from {loggable(self.headers.get('Origin'), 80)} do not "
                                        "change the music")
        else:
            code, answer = server.handle_control(self.headers, self.rfile, self.client_address[0], self.path)
            self._json(code, answer)

    def do_PUT(self):
        self._send(405, b"GET /metrics, /healthz, /readyz, /control; POST /control\n",
                   "text/plain; charset=utf-8")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _events(self) -> None:
        """Server-sent events: the page's view of the newest snapshot, once a second."""
        server = self.live
        self.server.answering(self.request)  # an open stream: its writes are timed, not its life
        if not server.event_slots.take():
            self._refuse("event_streams", 503, f"{MAX_EVENT_STREAMS} event streams are open already")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            while not server.closing.is_set():
                event = page_event(server.reporter.last, server.control, server.latest_frame()[1])
                if event is not None:
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                server.closing.wait(1.0)
        except OSError:  # the page was closed, or stopped reading (IO_TIMEOUT)
            pass
        finally:
            server.event_slots.give()

    def _refuse(self, reason: str, code: int, why: str) -> None:
        self.live.guard.refuse(reason, self.client_address[0], why)
        self._json(code, {"error": why})

    def _json(self, code: int, answer: dict) -> None:
        self._send(code, json.dumps(answer).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.server.answering(self.request)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # the path without its query: ?token= is never logged
        line = fmt % args
        if "?" in line:
            line = line.split("?", 1)[0] + "?... " + line.rsplit('"', 1)[-1].strip()
        log.debug("http %s %s", self.client_address[0], loggable(line))


class _BoundedServer(ThreadingHTTPServer):
    """At most :data:`MAX_CONNECTIONS` handler threads; more are answered 503 by the accepting
    thread and closed. Nothing waits for handlers at close (``block_on_close``): a client that
    holds a connection cannot hold the process."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 2 * MAX_CONNECTIONS  # the listen backlog: past the cap, clients get the 503, not a stall

    def __init__(self, address, handler, slots: ConnectionSlots, refused, pace: ClientPace) -> None:
        self.slots, self.refused, self.pace = slots, refused, pace
        self.reading: dict = {}
        """socket -> the time by which its whole request must have come (the handler removes it
        when it answers; the accepting thread shuts those past it)."""
        self._reading_lock = threading.Lock()
        self.waiting: list = []
        """(when, tie-break, socket, address) heap of connections waiting for their turn."""
        self._ties = itertools.count()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        """In the accepting thread: paced, then capped, then a handler thread."""
        wait = self.pace.admit(client_address[0])
        if wait is None or (wait > 0 and len(self.waiting) >= MAX_WAITING):
            self.refused("pace", client_address[0], f"over {RATE:g} connections a second: closed unanswered")
            self.shutdown_request(request)
        elif wait > 0:
            heapq.heappush(self.waiting, (time.monotonic() + wait, next(self._ties), request, client_address))
        else:
            self._start(request, client_address)

    def handle_error(self, request, client_address):
        """A handler raised: a client that hung up mid-answer is routine (a debug line); anything
        else is counted and logged at most once a second per client, never socketserver's
        traceback on stderr, which a client could repeat at will."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("http %s hung up: %s", client_address[0], loggable(repr(exc), 200))
        else:
            self.refused("error", client_address[0], f"the request failed: {type(exc).__name__}: {exc}")

    def service_actions(self):
        """Between two accepts (at least every :data:`POLL` s): the waiting whose turn came, and
        the requests still not in past their time (a client trickling a byte every few seconds
        never trips a per-read timeout)."""
        now = time.monotonic()
        while self.waiting and self.waiting[0][0] <= now:
            _, _, request, client_address = heapq.heappop(self.waiting)
            self._start(request, client_address)
        with self._reading_lock:
            late = [(r, who) for r, (by, who) in self.reading.items() if by <= now]
            for request, _ in late:
                del self.reading[request]
        for request, who in late:
            self.refused("slow", who, f"its request took over {IO_TIMEOUT:g} s: dropped")
            try:
                request.shutdown(socket.SHUT_RDWR)  # the handler's read ends; it closes the socket
            except OSError:
                pass

    def answering(self, request) -> None:
        """The handler read the whole request: no deadline on it any more."""
        with self._reading_lock:
            self.reading.pop(request, None)

    def server_close(self):
        super().server_close()
        for _, _, request, _ in self.waiting:
            self.shutdown_request(request)
        self.waiting.clear()

    def _start(self, request, client_address):
        if not self.slots.take(client_address[0]):
            self.refused("connections", client_address[0], f"{MAX_CONNECTIONS} connections are open already, "
                                                           f"or {MAX_PER_CLIENT} from this client")
            try:
                request.settimeout(0.1)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._reading_lock:
            self.reading[request] = (time.monotonic() + IO_TIMEOUT, client_address[0])
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.answering(request)
            self.slots.give(client_address[0])


class LiveHttpServer:
    """Serves the page, /metrics, /healthz, /readyz and /control for one live run from a daemon thread."""

    def __init__(self, reporter, host: str, port: int, provider: str = "cpu", control=None,
                 token: str | None = None, latest_frame=None, clock=time.monotonic, step_latency=None,
                 allow_hosts: tuple[str, ...] = (), public_metrics: bool = False,
                 refusals: Counter | None = None) -> None:
        pc = _prometheus()
        self.reporter, self.control, self.token, self.clock = reporter, control, token, clock
        self.latest_frame = latest_frame or (lambda: (None, 0, float("inf")))
        """() -> (RGB frame or None, frame id, age): the source's newest frame."""
        self.guard = Guard(host, port, token, allow_hosts, public_metrics, refusals=refusals)
        self.loopback = self.guard.loopback
        if not self.loopback and token is None and not public_metrics:
            raise Img2MusicError(f"--http on {host} (off loopback) needs --http-token-file, or "
                                 "--http-public-metrics to serve /metrics, /healthz and /readyz alone")
        self.refusals = self.guard.refusals
        """Refused requests by reason, shared with the OSC and WebSocket servers of the run (metrics)."""
        self.closing = threading.Event()
        """Set by :meth:`close`: ends the event streams."""
        self.connection_slots = ConnectionSlots(MAX_CONNECTIONS, MAX_PER_CLIENT)
        self.event_slots = ConnectionSlots(MAX_EVENT_STREAMS)
        self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=self.registry)
        self.registry.register(LiveCollector(reporter, provider, control, refusals=lambda: dict(self.refusals)))
        self.step_latency = step_latency if step_latency is not None else step_latency_histogram()
        """Observed by the live engine after every decoder pass."""
        self.registry.register(self.step_latency)
        self.scrape = ScrapeCache(self.registry, clock=clock)
        self._frame_cache = (None, b"")
        try:
            self.httpd = _BoundedServer((host, port), type("Handler", (_Handler,), {"live": self}),
                                        self.connection_slots, self.guard.refuse, ClientPace(RATE, BURST))
        except OSError as exc:
            raise Img2MusicError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = self.httpd.server_address[:2]
        self.guard.port = self.address[1]
        self.background = BackgroundThread("http", partial(self.httpd.serve_forever, POLL),
                                           interrupt=self.httpd.shutdown)

    def start(self) -> "LiveHttpServer":
        self.background.start()
        host, port = self.address
        where = "" if self.loopback else " (reachable from the network)"
        log.warning("serving the status page, /metrics, /healthz and /readyz on http://%s:%d%s",
                    f"[{host}]" if ":" in host else host, port, where)
        return self

    def frame_jpeg(self) -> bytes:
        """The newest frame as a JPEG thumbnail, encoded once per frame."""
        frame, frame_id, _ = self.latest_frame()
        cached_id, data = self._frame_cache
        if cached_id != frame_id or not data:
            data = frame_jpeg(frame)
            self._frame_cache = (frame_id, data)
        return data

    def handle_control(self, headers, body, client: str, path: str = "/control") -> tuple[int, dict]:
        """One ``POST /control`` past the Host, Content-Type and Origin checks: (status, JSON
        answer); nothing changes unless 202."""
        from img2music.runtime.control.dispatcher import answer
        from img2music.runtime.control.requests import refusal

        source = f"http {client}"
        refused = refusal(self.token, self.guard.token_given(headers, path), self.loopback)
        if refused is not None:
            self.guard.refuse("token", client, refused[1])
            return refused[0], {"error": refused[1]}  # the body is not read
        try:
            length = int(headers.get("Content-Length", ""))
        except ValueError:
            return 411, {"error": "Content-Length required"}
        if length < 0:
            return 400, {"error": "a negative Content-Length"}
        if length > MAX_BODY:
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
