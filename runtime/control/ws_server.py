"""``live.py --ws [HOST:]PORT``: two-way control over a WebSocket (the ``websockets``
library's threaded server), for a performer's app or a lighting desk that speaks it.

Each connection gets ``{"type": "status", ...}`` once a second (what the status page shows)
and may send control requests, the same JSON objects as ``POST /control``; each is answered
``{"type": "answer", "status": 202, "accepted": {...}}`` or
``{"type": "answer", "status": 400, "error": "..."}`` (401/403/409 as over HTTP). The token
(``--http-token-file``) comes as ``Authorization: Bearer TOKEN`` on the handshake or as
``?token=TOKEN`` in the URL (browsers cannot set WebSocket headers); the same rule as HTTP
decides who may change the music. Messages are bounded (4 KiB).
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import parse_qs, urlsplit

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.dispatcher import answer
from img2music.runtime.control.http_server import LOOPBACK, MAX_BODY
from img2music.runtime.control.page import page_event
from img2music.runtime.control.requests import bearer, refusal

log = logging.getLogger(__name__)


class LiveWebSocketServer:
    """One daemon thread accepting connections; one thread per connection (websockets.sync)."""

    def __init__(self, reporter, control, host: str, port: int, token: str | None = None,
                 latest_frame=None) -> None:
        try:
            from websockets.sync.server import serve
        except ImportError:
            raise Img2MusicError("--ws needs websockets: pip install 'img2music[live]'") from None
        self.reporter, self.control, self.token = reporter, control, token
        self.latest_frame = latest_frame or (lambda: (None, 0, float("inf")))
        self.loopback = host in LOOPBACK
        self._closing = threading.Event()
        try:
            self.server = serve(self._handle, host, port, max_size=MAX_BODY, logger=log)
        except OSError as exc:
            raise Img2MusicError(f"--ws: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = self.server.socket.getsockname()[:2]
        self.background = BackgroundThread("websocket", self.server.serve_forever, interrupt=self.server.shutdown)

    def start(self) -> "LiveWebSocketServer":
        self.background.start()
        log.warning("WebSocket control on ws://%s:%d", *self.address)
        return self

    def _token(self, connection) -> str | None:
        request = connection.request
        return bearer(request.headers.get("Authorization")) or (
            parse_qs(urlsplit(request.path).query).get("token") or [None])[0]

    def _handle(self, connection) -> None:
        refused = refusal(self.token, self._token(connection), self.loopback)
        client = connection.remote_address[0]
        try:
            while not self._closing.is_set():
                event = page_event(self.reporter.last, self.control, self.latest_frame()[1])
                if event is not None:
                    connection.send(json.dumps({"type": "status", **event}))
                try:
                    message = connection.recv(timeout=1.0)
                except TimeoutError:
                    continue
                status, reply = answer(self.control, message, refused, f"websocket {client}")
                connection.send(json.dumps({"type": "answer", "status": status, **reply}))
        except Exception as exc:  # the client went away (ConnectionClosed) or sent a frame too large
            log.debug("websocket %s closed: %s", client, exc)

    def close(self) -> None:
        self._closing.set()
        self.background.stop()
