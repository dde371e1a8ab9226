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
who can send it UDP packets can change the music. A message that is refused (unknown
address, wrong argument) is logged once per address and changes nothing. Addresses without
an argument ignore any they are sent (a button's press and release both trigger them;
pause and resume are harmless twice).
"""

from __future__ import annotations

import logging

from img2music.basics.background import BackgroundThread
from img2music.basics.errors import Img2MusicError

log = logging.getLogger(__name__)

PREFIX = "/img2music/"
NULL = object()
"""A route's value meaning JSON null (clear the field)."""
ADDRESSES = {  # address after the prefix -> (control field, its value; None: the message's one argument)
    "guidance": ("guidance_scale", None), "temperature": ("temperature", None), "top_k": ("top_k", None),
    "top_p": ("top_p", None), "scene": ("scene", "now"), "pause": ("transport", "pause"),
    "resume": ("transport", "resume"), "fade_out": ("fade_out", None), "bundle": ("bundle", None),
    "prompt": ("prompt", None), "prompt_weight": ("prompt_weight", None), "prompt_clear": ("prompt", NULL),
}


class LiveOscServer:
    """Messages -> ``runtime.control.dispatcher.LiveControl.submit``; a daemon thread."""

    def __init__(self, control, host: str, port: int) -> None:
        try:
            from pythonosc.dispatcher import Dispatcher
            from pythonosc.osc_server import BlockingOSCUDPServer
        except ImportError:
            raise Img2MusicError("--osc needs python-osc: pip install 'img2music[live]'") from None
        self.control = control
        self.received = 0
        self.refused = 0
        self._warned: set[str] = set()
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._handle)
        try:
            # one thread, not a thread per datagram: a pause then a resume must apply in that
            # order, and handling a message only queues it for the compute thread
            self.server = BlockingOSCUDPServer((host, port), dispatcher)
        except OSError as exc:
            raise Img2MusicError(f"--osc: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.address = self.server.server_address[:2]
        self.background = BackgroundThread("osc", self.server.serve_forever, interrupt=self.server.shutdown)

    def start(self) -> "LiveOscServer":
        self.background.start()
        log.warning("OSC control on udp://%s:%d (%s*)", *self.address, PREFIX)
        return self

    def _handle(self, address: str, *args) -> None:
        from img2music.runtime.control.requests import ControlError

        self.received += 1
        route = ADDRESSES.get(address[len(PREFIX):]) if address.startswith(PREFIX) else None
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
        except ControlError as exc:
            self.refused += 1
            if address not in self._warned:  # a desk sending a wrong fader 30 times a second: one line
                self._warned.add(address)
                log.warning("OSC %s refused: %s", address, exc)

    def close(self) -> None:
        self.background.stop()
        self.server.server_close()
