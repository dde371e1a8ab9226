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

import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, replace

from img2music.basics.errors import Img2MusicError
from img2music.runtime.control.guard import loggable
from img2music.runtime.control.reload import BundleReloader
from img2music.runtime.control.requests import PROMPT_FIELDS, SAMPLING_FIELDS, ControlError, parse_body, validate

log = logging.getLogger(__name__)


def answer(control: "LiveControl", message, refused: tuple[int, str] | None, source: str) -> tuple[int, dict]:
    """One control message (JSON text or bytes) from HTTP or a WebSocket -> (status, answer);
    nothing changes unless the status is 202. Refusals are the caller's to log (rate-limited:
    ``runtime.control.guard``)."""
    if refused is not None:
        return refused[0], {"error": refused[1]}
    try:
        return 202, {"accepted": control.submit(parse_body(message), source=source)}
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


def _encode_prompt(engine, value: str) -> None:
    """T5 in the requester's thread (opening the encoder the first time, a second or more): the
    compute thread then finds the encoding kept and the music does not wait for it."""
    try:
        engine.pipeline.text.encode(value)
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


SPACING = {"scene": 1.0, "prompt": 1.0}
"""Seconds between two accepted requests of a field that buys real work: a forced scene runs
CLIP and a transition, a new prompt T5 (in the requester's thread) and a transition; sooner is
429 (a burst costs one). A weight alone costs a transition and no T5: it is always accepted,
and the prompt's fields are applied at most once per ``SPACING["prompt"]`` (the newest wins, so
a fader's last position is the one heard)."""


class LiveControl:
    """Requests (any thread) to the compute thread (:meth:`apply_pending`): the newest pending
    change of each kind wins and is applied once, between two actions; expensive kinds are
    spaced (:data:`SPACING`). So no burst of requests buys a burst of work."""

    def __init__(self, engine, clock=time.monotonic, reload_dir: str | None = None) -> None:
        self.engine, self.clock = engine, clock
        self.reloader = BundleReloader(engine, root=reload_dir)
        self.changes: Counter = Counter()
        """Accepted changes per field (metrics)."""
        self._pending: dict = {}
        self._last: dict[str, float] = {}
        self._prompt_applied = float("-inf")
        self._lock = threading.Lock()

    def submit(self, body, source: str = "http") -> dict:
        """Check and queue; returns what was accepted. Raises :class:`ControlError`."""
        changes = validate(body)
        for name, value in changes.items():
            if name in CHECKS:
                CHECKS[name](self.engine, value)
        claimed = self._claim(set(changes) & set(SPACING))
        try:
            if changes.get("prompt") is not None:
                _encode_prompt(self.engine, changes["prompt"])
            if "bundle" in changes:  # last: it claims the one reload slot
                changes["bundle"] = self.reloader.reserve(changes["bundle"])
        except BaseException:  # nothing changes: the spacing claimed is given back
            with self._lock:
                self._last.update(claimed)
            raise
        with self._lock:
            if {"transport", "fade_out"} & set(changes):  # exclusive: the newer of the two wins
                self._pending.pop("transport", None)
                self._pending.pop("fade_out", None)
            self._pending.update(changes)  # and the newer of each field
            self.changes.update(changes.keys())
        log.info("control (%s): %s", loggable(source, 64),
                 ", ".join(f"{k}={loggable(repr(v), 120)}" for k, v in changes.items()))
        return changes

    def _claim(self, kinds: set) -> dict:
        """Checked and claimed at once (two requests racing cannot both pass): 429 for a kind
        sooner than its spacing; the claims' previous times, to give back."""
        now = self.clock()
        with self._lock:
            for kind in kinds:
                wait = self._last.get(kind, float("-inf")) + SPACING[kind] - now
                if wait > 0:
                    raise ControlError(f"a {kind} change was accepted {SPACING[kind] - wait:.1f} s ago: at most one "
                                       f"per {SPACING[kind]:g} s (try again in {wait:.1f} s)", status=429)
            claimed = {kind: self._last.get(kind, float("-inf")) for kind in kinds}
            self._last.update({kind: now for kind in kinds})
        return claimed

    def apply_pending(self) -> None:
        """In the compute thread, between actions: what is pending, once each (sampling, prompt,
        scene, transport, bundle); then a reloaded bundle that finished loading takes over. The
        prompt's fields wait while the last prompt change is under ``SPACING["prompt"]`` old."""
        now = self.clock()
        with self._lock:
            changes, self._pending = self._pending, {}
            if now - self._prompt_applied < SPACING["prompt"]:
                for name in PROMPT_FIELDS:
                    if name in changes:
                        self._pending[name] = changes.pop(name)
            elif PROMPT_FIELDS.keys() & changes.keys():
                self._prompt_applied = now
        sampling = {k: v for k, v in changes.items() if k in SAMPLING_FIELDS}
        if sampling:
            self.engine.set_sampling(replace(self.engine.sampling, **sampling))
        prompt = {PROMPT_FIELDS[k]: v for k, v in changes.items() if k in PROMPT_FIELDS}
        if prompt:
            try:
                self.engine.set_prompt(**prompt)
            except Exception as exc:  # checked at submit; a failing T5 run must not stop the music
                log.error("prompt change failed, the music goes on as it was: %s", exc)
        for name in ACTIONS:
            if name in changes:
                ACTIONS[name](self, changes[name])
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
