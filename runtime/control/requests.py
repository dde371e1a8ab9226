"""What a control request may ask and who may ask it (HTTP, OSC and WebSocket alike).

A request is a JSON object with any of :data:`FIELDS`; :func:`validate` checks types, ranges
and unknown names (one message naming the problem, and no change at all); :func:`refusal`
decides whether the sender may change the music. What the run allows *now* (a guidance
scale when guidance was off, a scene without a frame) is checked by the dispatcher.
"""

from __future__ import annotations

import hmac
import math

FIELDS = {  # name -> (type, low, high): numbers in range, strings by length; or the allowed words
    "guidance_scale": (float, 1.0, 20.0),
    "temperature": (float, 0.05, 5.0),
    "top_k": (int, 0, 1 << 20),  # and at most the bundle's vocabulary (checked in submit)
    "top_p": (float, 0.0, 1.0),
    "scene": ("now",),
    "transport": ("pause", "resume"),
    "fade_out": (float, 0.1, 60.0),  # seconds of audio, then paused
    "bundle": (str, 1, 4096),  # an engine bundle directory (checked in submit)
    "prompt": (str, 1, 2000),  # or null: no prompt (its tokens are checked in submit)
    "prompt_weight": (float, 0.0, 10.0),  # runtime.generation.conditioning.PROMPT_WEIGHT_RANGE
}
NULLABLE = ("prompt",)
"""Fields whose null means 'none' (clear the prompt)."""
PROMPT_FIELDS = {"prompt": "text", "prompt_weight": "weight"}
"""Applied together (one transition), under LiveEngine.set_prompt's names."""
SAMPLING_FIELDS = ("guidance_scale", "temperature", "top_k", "top_p")
EXCLUSIVE = (("transport", "fade_out"),)
"""Fields that contradict each other in one request."""


class ControlError(ValueError):
    """A request that changes nothing; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def validate(body) -> dict:
    """A parsed JSON body -> the changes it asks for, or :class:`ControlError`."""
    if not isinstance(body, dict) or not body:
        raise ControlError(f"expected a JSON object with any of: {', '.join(FIELDS)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ControlError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    changes = {}
    for name, value in body.items():
        rule = FIELDS[name]
        if value is None and name in NULLABLE:
            pass
        elif isinstance(rule[0], str):
            if value not in rule:
                raise ControlError(f"{name} must be one of {', '.join(map(repr, rule))}, got {value!r}")
        elif rule[0] is str:
            if not isinstance(value, str) or not rule[1] <= len(value) <= rule[2] or "\0" in value:
                raise ControlError(f"{name} must be a string of {rule[1]} to {rule[2]} characters, got {value!r:.80}")
        else:
            kind, low, high = rule
            # JSON true/false are ints to Python; 3.0 is a fine top_k, 3.5 is not
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and float(value) != int(value)) or not math.isfinite(value):
                raise ControlError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            if not low <= value <= high:
                raise ControlError(f"{name} must be in [{low}, {high}], got {value}")
            value = kind(value)
        changes[name] = value
    for group in EXCLUSIVE:
        if all(name in changes for name in group):
            raise ControlError(f"give one of {', '.join(group)} per request, not both")
    return changes


def refusal(expected: str | None, given: str | None, loopback: bool) -> tuple[int, str] | None:
    """Who may change the music (HTTP and WebSocket alike): (status, why) to refuse, or None.
    With a token set, only requests carrying it; without one, only on a loopback address."""
    if expected is None:
        return None if loopback else (403, "control on a non-loopback address needs --http-token-file")
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        return 401, "missing or wrong token (Authorization: Bearer TOKEN)"
    return None


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    return header.removeprefix("Bearer ") if header and header.startswith("Bearer ") else None
