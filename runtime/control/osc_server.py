"""``live.py --osc [HOST:]PORT``: the same control as ``POST /control``, over OSC (UDP), for
lighting desks, Max/MSP, TouchDesigner (``python-osc``'s server, one thread: messages apply in
the order they arrive).

| address | arguments | does |
|---|---|---|
| ``/img2music/guidance`` | float 1-20 | guidance scale |
| ``/img2music/temperature`` | float 0.05-5 | sampling temperature |
| ``/img2music/top_k`` | int | top-k (0: all) |
| ``/img2music/top_p`` | float 0-1 | nucleus mass (0: off) |
| ``/img2music/scene`` | none | the newest frame becomes the scene now |
| ``/img2music/pause`` | none | fade out in 50 ms, then silence (the decoder rests) |
| ``/img2music/resume`` | none | fade back in (50 ms) |
| ``/img2music/fade_out`` | float 0.1-60 | fade out over that many seconds, then pause |
| ``/img2music/bundle`` | string | load that engine bundle, swap it in when ready |
| ``/img2music/prompt`` | string | set the text prompt joined to the image (scene-change transition) |
| ``/img2music/prompt_weight`` | float 0-10 | how much the prompt counts against the image |
| ``/img2music/prompt_clear`` | none | back to the image alone |

OSC has no authentication: the server binds 127.0.0.1 unless a host is given, and anyone
who can send it UDP packets can change the music. A message that is refused (unknown or
over-long address, wrong argument) changes nothing and is logged at most once a second per
sender, its address escaped and cut (an address is never kept: 8 kB addresses, all different,
once grew the process by 56 MB). Past :data:`RATE` messages a second from one sender (after a
burst as long), datagrams are dropped before they are parsed. Addresses without
an argument ignore any they are sent (a button's press and release both trigger them;
pause and resume are harmless twice).
"""

from __future__ import annotations

import logging
import socket
import sys
from collections import Counter

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.guard import ClientPace, Guard, loggable

log = logging.getLogger(__name__)

PREFIX = "/img2music/"
RATE = 200.0
"""Messages a second per sender (and the burst): a desk's faders send tens."""
MAX_ADDRESS = 64
"""Longest address looked at (the longest known is 26 characters)."""
NULL = object()
"""A route's value meaning JSON null (clear the field)."""
ADDRESSES = {  # address after the prefix -> (control field, its value; None: the message's one argument)
    "guidance": ("guidance_scale", None), "temperature": ("temperature", None), "top_k": ("top_k", None),
    "top_p": ("top_p", None), "scene": ("scene", "now"), "pause": ("transport", "pause"),
    "resume": ("transport", "resume"), "fade_out": ("fade_out", None), "bundle": ("bundle", None),
    "prompt": ("prompt", None), "prompt_weight": ("prompt_weight", None), "prompt_clear": ("prompt", NULL),
}


def short_addresses(data: bytes, depth: int = 0) -> bool:
    """Every address in an OSC datagram (a message, or a bundle of them) is at most
    :data:`MAX_ADDRESS` bytes, read from the raw bytes: python-osc's dispatcher compiles each
    address it is sent into a regular expression (kept in ``re``'s cache: 512 of 8 kB addresses
    held ~28 MB), so a long one is dropped before it is parsed."""
    if data.startswith(b"#bundle\0"):
        at = 16  # "#bundle\0" and the 8-byte time tag
        while at + 4 <= len(data) and depth < 4:
            size = int.from_bytes(data[at:at + 4], "big")
            if not short_addresses(data[at + 4:at + 4 + size], depth + 1):
                return False
            at += 4 + size
        return depth < 4
    return 0 < data.find(b"\0", 0, MAX_ADDRESS + 1)


class LiveOscServer:
    """Messages -> ``runtime.control.dispatcher.LiveControl.submit``; a daemon thread."""

    def __init__(self, control, host: str, port: int, refusals: Counter | None = None) -> None:
        try:
            from pythonosc.dispatcher import Dispatcher
            from pythonosc.osc_server import BlockingOSCUDPServer
        except ImportError:
            raise Img2MusicError("--osc needs python-osc: pip install 'img2music[live]'") from None
        self.control = control
        self.received = 0
        self.guard = Guard(host, port, None, refusals=refusals)  # for its counted, rate-limited refusals
        self.refusals = self.guard.refusals
        """Refused messages (``osc...``), shared with the run's HTTP server's metrics."""
        pace = self.pace = ClientPace(RATE, int(RATE))
        refusals, guard = self.refusals, self.guard

        class PacedServer(BlockingOSCUDPServer):
            def verify_request(self, request, client_address) -> bool:  # before the datagram is parsed
                if pace.admit(client_address[0], queue=False) is None:
                    refusals["osc_pace"] += 1
                    return False
                if not short_addresses(request[0]):
                    refusals["osc"] += 1
                    return False
                return True

            def handle_error(self, request, client_address) -> None:  # not socketserver's traceback
                guard.refuse("osc", f"osc {client_address[0]}", f"the datagram failed: {sys.exc_info()[1]!r}")

        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._handle, needs_reply_address=True)
        try:
            # one thread, not a thread per datagram: a pause then a resume must apply in that
            # order. Handling a message queues it for the compute thread; a new prompt's T5 and a
            # bundle's manifest are the exceptions, run here (a second at most, once a second at
            # most), and datagrams arriving meanwhile wait in the socket's buffer
            self.server = PacedServer((host, port), dispatcher, family=socket.AF_INET6 if ":" in host else None)
        except OSError as exc:
            raise Img2MusicError(f"--osc: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = self.server.server_address[:2]
        self.background = BackgroundThread("osc", self.server.serve_forever, interrupt=self.server.shutdown)

    def start(self) -> "LiveOscServer":
        self.background.start()
        log.warning("OSC control on udp://%s:%d (%s*)", *self.address, PREFIX)
        return self

    def _handle(self, sender, address: str, *args) -> None:
        from img2music.runtime.control.requests import ControlError

        self.received += 1
        route = None
        if len(address) <= MAX_ADDRESS and address.startswith(PREFIX):
            route = ADDRESSES.get(address[len(PREFIX):])
        try:
            if route is None:
                raise ControlError(f"unknown address; known: {', '.join(PREFIX + a for a in ADDRESSES)}")
            name, value = route
            if value is NULL:
                body = {name: None}
            elif value is not None:
                body = {name: value}
            elif len(args) != 1:
                raise ControlError(f"expects one argument, got {len(args)}")
            else:
                body = {name: args[0]}
            self.control.submit(body, source="osc")
        except ControlError as exc:  # a desk sending a wrong fader 30 times a second: a line a second
            self.guard.refuse("osc", f"osc {sender[0]}", f"{loggable(address, 80)}: {exc}")

    def close(self) -> None:
        self.background.stop()
        self.server.server_close()
