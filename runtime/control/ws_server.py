"""``live.py --ws [HOST:]PORT``: two-way control over a WebSocket (the ``websockets``
library's threaded server), for a performer's app or a lighting desk that speaks it.

Each connection gets ``{"type": "status", ...}`` once a second (what the status page shows)
and may send control requests, the same JSON objects as ``POST /control``; each is answered
``{"type": "answer", "status": 202, "accepted": {...}}`` or
``{"type": "answer", "status": 400, "error": "..."}`` (401/403/409/429 as over HTTP). The token
(``--http-token-file``) comes as ``Authorization: Bearer TOKEN`` on the handshake or as
``?token=TOKEN`` in the URL (browsers cannot set WebSocket headers); the same rules as HTTP
decide who may connect and change the music (``runtime.control.guard``): the handshake's Host
must be one the server answers to, its Origin absent (a program) or a page of this run's own
HTTP server, and off loopback it must carry the token. At most :data:`MAX_CLIENTS` at once
(more are closed with 1013, "try again later"); messages are bounded (4 KiB); a handshake
has :data:`~runtime.control.http_server.IO_TIMEOUT` seconds. Connections are paced per client
as HTTP's are and capped (:data:`MAX_SOCKETS`), both before a byte is read: one past either is
closed at once. Messages are paced too: past the burst they wait their turn in that client's
own thread; past 2 s of waiting the connection ends (1008).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from functools import partial
from urllib.parse import urlsplit

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.dispatcher import answer
from img2music.runtime.control.guard import ClientPace, ConnectionSlots, Guard, split_host
from img2music.runtime.control.http_server import BURST, IO_TIMEOUT, MAX_BODY, RATE
from img2music.runtime.control.page import page_event
from img2music.runtime.control.requests import refusal

log = logging.getLogger(__name__)

MAX_CLIENTS = 8
MAX_SOCKETS, MAX_SOCKETS_PER_CLIENT = 2 * MAX_CLIENTS, MAX_CLIENTS + 4
"""Connections at once, handshaking or connected, and from one client (``guard.client_key``):
websockets makes threads for each accepted socket and holds it up to :data:`IO_TIMEOUT` for its
handshake, so past these a socket is closed at once, before anything is read. One client can
hold every client slot and still be told 1013; another always has sockets left to try."""
TRY_AGAIN_LATER = 1013
"""WebSocket close code: the server is at capacity."""
POLICY_VIOLATION = 1008
"""WebSocket close code: a client past its pace."""


class LiveWebSocketServer:
    """One daemon thread accepting connections; one thread per connection (websockets.sync)."""

    def __init__(self, reporter, control, host: str, port: int, token: str | None = None,
                 latest_frame=None, allow_hosts: tuple[str, ...] = (), http_port: int | None = None,
                 refusals: Counter | None = None) -> None:
        try:
            from websockets.sync.server import serve
        except ImportError:
            raise Img2MusicError("--ws needs websockets: pip install 'img2music[live]'") from None
        self.reporter, self.control, self.token = reporter, control, token
        self.latest_frame = latest_frame or (lambda: (None, 0, float("inf")))
        self.guard = Guard(host, port, token, allow_hosts, refusals=refusals)
        self.loopback = self.guard.loopback
        if not self.loopback and token is None:
            raise Img2MusicError(f"--ws on {host} (off loopback) needs --http-token-file")
        self.http_port = http_port
        self.slots = ConnectionSlots(MAX_CLIENTS)
        self.sockets = ConnectionSlots(MAX_SOCKETS, MAX_SOCKETS_PER_CLIENT)
        self.accepts, self.pace = ClientPace(RATE, BURST), ClientPace(RATE, BURST)
        """Connections and messages per client, each paced on its own."""
        self.refusals = self.guard.refusals
        """Refusals by reason (``ws_...``), shared with the run's HTTP server's metrics."""
        self._closing = threading.Event()
        try:
            self.server = serve(self._handle, host, port, max_size=MAX_BODY, logger=log, compression=None,
                                process_request=self._check_handshake, open_timeout=IO_TIMEOUT, close_timeout=1.0)
        except OSError as exc:
            raise Img2MusicError(f"--ws: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.server.handler = partial(self._gate, self.server.handler)
        self.address = self.server.socket.getsockname()[:2]
        self.guard.port = self.address[1]
        self.background = BackgroundThread("websocket", self.server.serve_forever, interrupt=self.server.shutdown)

    def start(self) -> "LiveWebSocketServer":
        self.background.start()
        log.warning("WebSocket control on ws://%s:%d", *self.address)
        return self

    def _gate(self, handle, sock, address) -> None:
        """In the thread websockets made for an accepted socket, before it reads a byte: paced per
        client, capped (:data:`MAX_SOCKETS`); a socket past either is closed at once."""
        client, why = address[0], None
        if self.accepts.admit(client, queue=False) is None:
            why = "pace", f"over {RATE:g} WebSocket connections a second: closed"
        elif not self.sockets.take(client):
            why = "sockets", (f"{MAX_SOCKETS} WebSocket connections are open already, or "
                              f"{MAX_SOCKETS_PER_CLIENT} from this client: closed")
        if why is not None:
            self.guard.refuse("ws_" + why[0], client, why[1])
            sock.close()
            handle(sock, address)  # on a closed socket it ends at once, and unregisters its thread
            return
        try:
            handle(sock, address)
        finally:
            self.sockets.give(client)

    def _origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """No Origin (a program), or a page of this run's HTTP (or this) server: its port, and a
        host this server answers to by name or the one the handshake itself names."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
            host, port = split_host(parts.netloc), parts.port
        except ValueError:  # "http://[::1", "http://h:99999": no page of ours
            return False
        ports = {self.address[1]} | ({self.http_port} if self.http_port else set())
        return parts.scheme in ("http", "https") and port in ports and self.guard.origin_host_ok(host, host_header)

    def _check_handshake(self, connection, request):
        """Before the upgrade: Host, Origin and (off loopback) the token; a refusal is an HTTP answer."""
        client = connection.remote_address[0]
        why = None
        if not self.guard.host_ok(request.headers.get("Host")):
            why = ("host", 421, "this server does not answer to that host")
        elif not self._origin_ok(request.headers.get("Origin"), request.headers.get("Host")):
            why = ("origin", 403, "pages from another origin do not connect here")
        elif not self.loopback and not self.guard.token_ok(self.guard.token_given(request.headers, request.path)):
            why = ("token", 401, "off loopback the token is needed (?token= or Authorization: Bearer)")
        if why is None:
            return None
        self.guard.refuse("ws_" + why[0], client, why[2])
        return connection.respond(why[1], why[2] + "\n")

    def _handle(self, connection) -> None:
        client = connection.remote_address[0]
        if not self.slots.take():
            self.guard.refuse("ws_clients", client, f"{MAX_CLIENTS} WebSocket clients are connected already")
            connection.close(TRY_AGAIN_LATER, "too many clients")
            return
        request = connection.request
        refused = refusal(self.token, self.guard.token_given(request.headers, request.path), self.loopback)
        try:
            while not self._closing.is_set():
                event = page_event(self.reporter.last, self.control, self.latest_frame()[1])
                if event is not None:
                    connection.send(json.dumps({"type": "status", **event}))
                try:
                    message = connection.recv(timeout=1.0)
                except TimeoutError:
                    continue
                if not self._paced(client):
                    self.guard.refuse("ws_pace", client, f"over {RATE:g} messages a second: closed")
                    connection.close(POLICY_VIOLATION, "too many messages")
                    return
                if refused is not None:
                    self.guard.refuse("ws_token", client, refused[1])
                status, reply = answer(self.control, message, refused, f"websocket {client}")
                connection.send(json.dumps({"type": "answer", "status": status, **reply}))
        except Exception as exc:  # the client went away (ConnectionClosed) or sent a frame too large
            log.debug("websocket %s closed: %s", client, exc)
        finally:
            self.slots.give()

    def _paced(self, client: str) -> bool:
        """Wait for this client's turn (in its own connection's thread); False: past 2 s of it."""
        wait = self.pace.admit(client)
        if wait:
            time.sleep(wait)
        return wait is not None

    def close(self) -> None:
        self._closing.set()
        self.background.stop()
