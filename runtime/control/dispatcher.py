"""Changing a live run while it plays (``live.py --http``: ``POST /control``; OSC, WebSocket).

A request is a JSON object with any of :data:`FIELDS`; it is checked completely in the
caller's thread (types, ranges, unknown names, then what the run allows now: one message
naming the problem, and no change at all) and then queued; the compute thread applies it
between two actions, so a change never races a decoder pass. Sampling changes take effect
from the next chunk; ``"scene": "now"`` makes the newest frame the scene at once (a
performer's cue), with the usual smooth transition; ``"transport"`` pauses or resumes and
``"fade_out"`` fades to a pause (``runtime.loop.transport``); ``"bundle"`` loads another
engine bundle in the background and swaps it in when ready (``runtime.control.reload``);
``"prompt"`` (text, or null to clear) and ``"prompt_weight"`` change the text prompt joined to
the image, with the scene-change transition (``runtime.loop.prompt``).
Every accepted change is logged and counted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import Counter
from dataclasses import asdict, replace

from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.reload import BundleReloader
from img2music.runtime.control.requests import PROMPT_FIELDS, SAMPLING_FIELDS, ControlError, validate

log = logging.getLogger(__name__)


def answer(control: "LiveControl", message, refused: tuple[int, str] | None, source: str) -> tuple[int, dict]:
    """One control message (JSON text or bytes) from HTTP or a WebSocket -> (status, answer);
    nothing changes unless the status is 202."""
    if refused is not None:
        log.warning("control request from %s refused: %s", source, refused[1])
        return refused[0], {"error": refused[1]}
    try:
        request = json.loads(message)
    except (TypeError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return 400, {"error": f"not JSON: {exc}"}
    try:
        return 202, {"accepted": control.submit(request, source=source)}
    except ControlError as exc:
        return exc.status, {"error": str(exc)}


def _check_guidance(engine, value: float) -> None:
    if value > 1.0 and not engine.config.sampling.uses_guidance:
        raise ControlError("guidance was off when the run started (--guidance-scale <= 1): the scale "
                           "cannot be raised while running", status=409)


def _check_top_k(engine, value: int) -> None:
    vocab = engine.pipeline.bundle.model.decoder.vocab_size
    if value > vocab:
        raise ControlError(f"top_k must be in [0, {vocab}] (the codebook size), got {value}")


def _check_scene(engine, value: str) -> None:
    if engine.source.latest()[0] is None:
        raise ControlError("no frame yet to take a scene from", status=409)


def _check_prompt(engine, value: str | None) -> None:
    text = engine.pipeline.text
    if value is None:
        return
    if text is None:
        raise ControlError(f"the bundle {engine.pipeline.bundle.root} has no text encoder (built with --no-text or "
                           "before prompts existed): no prompt with it", status=409)
    try:
        text.token_ids(value)  # empty or too long: refused here, the music untouched
    except Img2MusicError as exc:
        raise ControlError(f"prompt: {exc}") from exc


CHECKS = {"guidance_scale": _check_guidance, "top_k": _check_top_k, "scene": _check_scene, "prompt": _check_prompt}
"""Field -> (engine, value) -> None or ControlError: what the run allows now, beyond the ranges."""


def _transport(control: "LiveControl", value: str) -> None:
    transport = control.engine.transport
    changed = transport.pause() if value == "pause" else transport.resume()
    if not changed:
        log.info("control: %s: the music is %s already, nothing to do", value, transport.state)


ACTIONS = {  # field -> (control, value) -> None, in the compute thread (sampling fields go together)
    "scene": lambda control, value: control.engine.force_scene(),
    "transport": _transport,
    "fade_out": lambda control, value: control.engine.transport.pause(value, why="fade out"),
    "bundle": lambda control, value: control.reloader.start(value),
}


class LiveControl:
    """The queue between requests (any thread) and the compute thread (:meth:`apply_pending`)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.reloader = BundleReloader(engine)
        self.changes: Counter = Counter()
        """Accepted changes per field (metrics)."""
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, body, source: str = "http") -> dict:
        """Check and queue; returns what was accepted. Raises :class:`ControlError`."""
        changes = validate(body)
        for name, value in changes.items():
            if name in CHECKS:
                CHECKS[name](self.engine, value)
        if "bundle" in changes:  # last: it claims the one reload slot
            changes["bundle"] = self.reloader.reserve(changes["bundle"])
        with self._lock:
            self.changes.update(changes.keys())
        self._queue.put(changes)
        log.info("control (%s): %s", source, ", ".join(f"{k}={v}" for k, v in changes.items()))
        return changes

    def apply_pending(self) -> None:
        """In the compute thread, between actions: everything queued, in order; then a
        reloaded bundle that finished loading takes over."""
        while True:
            try:
                changes = self._queue.get_nowait()
            except queue.Empty:
                break
            sampling = {k: v for k, v in changes.items() if k in SAMPLING_FIELDS}
            if sampling:
                self.engine.set_sampling(replace(self.engine.sampling, **sampling))
            prompt = {PROMPT_FIELDS[k]: v for k, v in changes.items() if k in PROMPT_FIELDS}
            if prompt:
                try:
                    self.engine.set_prompt(**prompt)
                except Exception as exc:  # checked at submit; a failing T5 run must not stop the music
                    log.error("prompt change failed, the music goes on as it was: %s", exc)
            for name, value in changes.items():
                if name in ACTIONS:
                    ACTIONS[name](self, value)
        self.reloader.swap_if_ready()

    def settings(self) -> dict:
        """What ``GET /control`` answers: the sampling in use, the transport state, the bundle
        playing and the last reload, and the changes so far."""
        s = asdict(self.engine.sampling)
        with self._lock:
            counts = dict(self.changes)
        prompt = self.engine.prompt
        return {"sampling": {k: s[k] for k in SAMPLING_FIELDS}, "transport": self.engine.transport.state,
                "prompt": prompt.text, "prompt_weight": prompt.weight,
                **self.reloader.status(), "changes": counts}
