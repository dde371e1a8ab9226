"""The live run's text prompt: joined to every scene's image tokens (``runtime.generation.conditioning``).

``live.py --prompt TEXT --prompt-weight W`` sets it at start; ``POST /control
{"prompt": "...", "prompt_weight": 1.5}`` (or ``null`` to clear), the WebSocket and OSC
change it while playing. A change re-composes the current scene (its image tokens are
kept) and goes through the same smooth transition as a scene change; a new scene from the
camera gets the prompt in force. T5 runs once per new prompt (the pipeline keeps the last
few encodings), in the thread that sent it (``runtime.control.dispatcher``), so the compute
thread finds it kept; a weight change alone costs no T5.
"""

from __future__ import annotations

import logging
import time

from img2music.runtime.generation.conditioning import Conditioning, check_prompt_weight, with_prompt
from img2music.runtime.loop.scene import Scene

log = logging.getLogger(__name__)


class LivePrompt:
    """The prompt in force and its weight; changed in the compute thread only."""

    def __init__(self, text: str | None = None, weight: float = 1.0) -> None:
        self.text, self.weight = text, check_prompt_weight(weight)
        self.changes = 0

    def scene(self, pipeline, conditioning, mask, directive: str | None, started: float) -> Scene:
        """A scene from an image's (1, N, D) tokens + (1, N) mask, with the prompt in force joined."""
        image = (conditioning, mask)
        if self.text is None:
            return Scene(conditioning, mask, directive, started, image=image)
        joined = with_prompt(Conditioning(conditioning, mask), *pipeline.encode_text(self.text), self.text,
                             self.weight)
        return Scene(joined.conditioning, joined.mask, directive, started, joined.weight, image, self.text)

    def change(self, pipeline, current: Scene | None, **fields) -> Scene | None:
        """New ``text`` (None clears it) and/or ``weight``; returns the current scene re-composed
        (to transition to), or None before the first scene."""
        text = fields.get("text", self.text)
        weight = check_prompt_weight(fields.get("weight", self.weight))
        if text is not None:
            pipeline.encode_text(text)  # fails here, before anything changes
        self.text, self.weight = text, weight
        self.changes += 1
        log.info("prompt: %s", "cleared" if text is None else f"{text!r} (weight {weight:g})")
        if current is None or current.image is None:
            return None
        return self.scene(pipeline, *current.image, current.directive, time.monotonic())
