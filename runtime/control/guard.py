"""Who may read and steer a live run over the network, and what one client may cost.

Installations run a kiosk browser on the same machine and sit on venue networks, so every
request is assumed hostile until it proves otherwise:

- **Host**: a request must name a host the server answers to: the bind address, ``localhost``,
  an IP literal (a name an attacker's DNS can re-point, "rebinding", is never one of those) or
  a name given with ``--http-allow-host``. Otherwise 421, before anything else is read.
- **Origin**: a browser names the page that sent a request; one from another origin never
  changes the music (403), over HTTP or in a WebSocket handshake. A program sends no Origin.
- **Content-Type**: ``POST /control`` takes ``application/json`` only (415): a page on another
  origin can send a form or a ``no-cors`` fetch without asking, but not a JSON body.
- **Token**: with ``--http-token-file`` every control request carries it (``Authorization:
  Bearer TOKEN``, or ``?token=`` where a header cannot be set). Without one, control is for
  whoever sits at the console: a loopback bind only. A bind off loopback without a token
  refuses to start, unless ``--http-public-metrics`` opens ``/metrics``, ``/healthz`` and
  ``/readyz`` alone; off loopback, reads other than those (the status page, camera frames,
  ``/events``, ``GET /control``) need the token too.
- **Costs**: refused requests are logged at most once per second per client, and every
  user-given text in a log line is escaped (:func:`loggable`).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

from img2music.runtime.control.requests import bearer

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")
PUBLIC_READS = ("/metrics", "/healthz", "/readyz")
"""What ``--http-public-metrics`` opens off loopback without a token."""
LOG_EVERY = 1.0
"""Seconds between two logged refusals of one client."""


def loggable(text, limit: int = 200) -> str:
    """User-given text for a log line: control characters and newlines escaped (no forged log
    lines, no terminal escapes), cut to ``limit`` characters."""
    out = str(text)[:limit].encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return out + ("..." if len(str(text)) > limit else "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def split_host(header: str | None) -> str | None:
    """The host part of a ``Host`` header (``name:port``, ``[v6]:port``), lower case."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else None
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """The policy of one server (HTTP or WebSocket) bound to ``host``; see the module docstring."""

    def __init__(self, host: str, port: int, token: str | None, allow_hosts: tuple[str, ...] = (),
                 public_metrics: bool = False, clock=time.monotonic) -> None:
        self.host, self.port, self.token = host, port, token
        self.loopback = host in LOOPBACK
        self.public_metrics = public_metrics
        self.hosts = {h.lower() for h in (host, "localhost", *allow_hosts)}
        self.clock = clock
        self.refused = 0
        """Requests refused by this policy (metrics)."""
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def host_ok(self, header: str | None) -> bool:
        """The ``Host`` header names this server (no header: an HTTP/1.0 client, a program)."""
        name = split_host(header)
        return name is None or name in self.hosts or _is_ip(name)

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """No Origin (not a browser), or the page this server itself served (same host and port)."""
        if origin is None:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host_header) and parts.netloc.lower() == \
            host_header.strip().lower()

    def token_given(self, headers, path: str) -> str | None:
        return bearer(headers.get("Authorization")) or (parse_qs(urlsplit(path).query).get("token") or [None])[0]

    def token_ok(self, given: str | None) -> bool:
        import hmac

        return self.token is not None and given is not None and hmac.compare_digest(given.encode(),
                                                                                    self.token.encode())

    def read_refusal(self, path: str, given: str | None) -> tuple[int, str] | None:
        """Why a read of ``path`` is refused (status, reason), or None."""
        if self.loopback or self.token_ok(given):
            return None
        if path in PUBLIC_READS and (self.public_metrics or self.token is None):
            return None
        return 401, "this read needs the token off loopback (Authorization: Bearer TOKEN or ?token=)"

    def note_refusal(self, client: str, why: str) -> None:
        """Count a refusal and log it, at most once per second per client."""
        now = self.clock()
        with self._lock:
            self.refused += 1
            last = self._logged.get(client)
            if last is not None and now - last < LOG_EVERY:
                return
            self._logged[client] = now
            if len(self._logged) > 256:  # many clients: forget the oldest
                for key in sorted(self._logged, key=self._logged.get)[:128]:
                    del self._logged[key]
        log.warning("request from %s refused: %s", loggable(client, 64), loggable(why))


class ConnectionSlots:
    """At most ``limit`` at once of one kind of client (connections, event streams, WebSocket
    clients); the refusals are counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                return False
            self.active += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.active -= 1
