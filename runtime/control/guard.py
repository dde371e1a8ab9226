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
- **Costs**: each client (an address; all of loopback one client, an IPv6 /64 one) is paced (:class:`ClientPace`): past a burst, its requests
  wait their turn at a steady rate, and past a few seconds of waiting they are dropped
  unanswered, so a flood of even the cheapest request cannot take the CPU (and Python's
  interpreter lock) from the thread that makes the music. Refused requests are logged at most
  once per second per client, and every user-given text in a log line is escaped
  (:func:`loggable`).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
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
    """The host part of a ``Host`` header (``name:port``, ``[v6]:port``), lower case, without a
    trailing dot; ``""`` for one that names no host (empty, an unclosed bracket)."""
    if header is None:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else ""
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name[:-1] if name.endswith(".") and not _is_ip(name[:-1] or "x") else name


def client_key(address: str) -> str:
    """Whose budget a request comes out of: an IPv4 address; every loopback address is one client
    (a local program can send from any of 127/8); an IPv6 address by its /64 (what one host on a
    LAN is given)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Guard:
    """The policy of one server (HTTP or WebSocket) bound to ``host``; see the module docstring."""

    def __init__(self, host: str, port: int, token: str | None, allow_hosts: tuple[str, ...] = (),
                 public_metrics: bool = False, clock=time.monotonic, refusals: Counter | None = None) -> None:
        self.host, self.port, self.token = host, port, token
        self.loopback = host in LOOPBACK
        self.public_metrics = public_metrics
        self.hosts = {h.lower() for h in (host, "localhost", *allow_hosts)}
        self.clock = clock
        self.refusals = refusals if refusals is not None else Counter()
        """Refused requests by reason: one Counter for a run's servers (the metrics read it)."""
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}

    def host_ok(self, header: str | None) -> bool:
        """The ``Host`` header names this server (no header: an HTTP/1.0 client, a program; a
        browser always sends one)."""
        name = split_host(header)
        return name is None or name in self.hosts or (bool(name) and _is_ip(name))

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """No Origin (not a browser), or the page this server itself served (same host and port)."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
            netloc = parts.netloc.lower()
        except ValueError:  # "http://[::1" and the like: no origin of ours
            return False
        return parts.scheme in ("http", "https") and bool(host_header) and netloc == host_header.strip().lower()

    def origin_host_ok(self, host: str | None, host_header: str | None) -> bool:
        """An Origin's host for a page served by a sibling server of this run (another port): a
        name this server answers to or the host the request itself names, never any IP literal
        (a page served from any address would pass)."""
        return bool(host) and (host in self.hosts or host == split_host(host_header))

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

    def refuse(self, reason: str, client: str, why: str) -> None:
        """Count a refusal under ``reason``, and log it at most once per second per client."""
        self.refusals[reason] += 1
        now = self.clock()
        with self._lock:
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
    clients), and at most ``per_client`` of them from one client (:func:`client_key`), so one
    peer cannot hold them all; the server that takes a slot counts its refusals."""

    def __init__(self, limit: int, per_client: int | None = None) -> None:
        self.limit, self.per_client = limit, per_client or limit
        self.active = 0
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str = "") -> bool:
        key = client_key(client)
        with self._lock:
            if self.active >= self.limit or self._held.get(key, 0) >= self.per_client:
                return False
            self.active += 1
            self._held[key] = self._held.get(key, 0) + 1
            return True

    def give(self, client: str = "") -> None:
        key = client_key(client)
        with self._lock:
            self.active -= 1
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]


class ClientPace:
    """Requests per client at most ``rate`` a second after a ``burst`` (the generic cell rate
    algorithm: one "next turn" time per client, no timers). :meth:`admit` says how long a request
    waits for its turn, or None when it would wait over ``max_wait`` (drop it). The status page
    asks about twice a second and a Prometheus scrape every few seconds: far inside the pace."""

    def __init__(self, rate: float, burst: int, max_wait: float = 2.0, clock=time.monotonic) -> None:
        self.interval, self.tolerance = 1.0 / rate, (burst - 1) / rate  # the burst-th waits no turn
        self.max_wait, self.clock = max_wait, clock
        self._turn: dict[str, float] = {}
        self._prune_at = 1024
        self._lock = threading.Lock()

    def admit(self, client: str, queue: bool = True) -> float | None:
        """Seconds this request of ``client`` (an address: :func:`client_key` says whose budget)
        waits for its turn (0: none), or None: drop it (it would wait over ``max_wait``, or at all
        with ``queue=False``, for datagrams that cannot wait)."""
        key, now = client_key(client), self.clock()
        with self._lock:
            turn = max(self._turn.get(key, now), now)
            wait = turn - self.tolerance - now
            wait = 0.0 if wait < 1e-6 else wait  # float sums of the interval: 3 * 0.05 - 0.15 > 0
            if wait > (self.max_wait if queue else 0.0):
                return None
            self._turn[key] = turn + self.interval
            if len(self._turn) > self._prune_at:  # many clients: forget those whose turn has come
                self._turn = {c: t for c, t in self._turn.items() if t > now}
                self._prune_at = max(1024, 2 * len(self._turn))  # amortized: not a rebuild per request
            return wait
