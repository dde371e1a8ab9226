"""What a control request may ask and who may ask it (HTTP, OSC and WebSocket alike).

A request is a JSON object with any of :data:`FIELDS`; :func:`validate` checks types, ranges
and unknown names (one message naming the problem, and no change at all); :func:`refusal`
decides whether the sender may change the music. What the run allows *now* (a guidance
scale when guidance was off, a scene without a frame) is checked by the dispatcher.
"""

from __future__ import annotations

import hmac
import json
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    kind is int and float(value) != int(value)):  # finite first: int(nan) raises
                raise ControlError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            if not low <= value <= high:
                raise ControlError(f"{name} must be in [{low}, {high}], got {value}")
            value = kind(value)
        changes[name] = value
    for group in EXCLUSIVE:
        if all(name in changes for name in group):
            raise ControlError(f"give one of {', '.join(group)} per request, not both")
    return changes


MAX_DEPTH = 4
MAX_INT_DIGITS = 20


def parse_body(message):
    """A request body (JSON text or bytes) -> its value, or :class:`ControlError` (400) for what
    JSON allows and no request needs: NaN and Infinity, numbers past float (1e400) or 20 digits
    (10**400 would overflow the checks), nesting deeper than :data:`MAX_DEPTH` (a 2000-deep body
    exhausts the parser's recursion), text that is not UTF-8 or holds lone surrogates."""

    def constant(name):
        raise ControlError(f"not a finite number: {name}")

    def integer(text):
        if len(text.lstrip("-")) > MAX_INT_DIGITS:
            raise ControlError(f"a number of {len(text)} digits is no setting")
        return int(text)

    def real(text):
        value = float(text)
        if not math.isfinite(value):
            raise ControlError(f"not a finite number: {text[:40]}")
        return value

    try:
        value = json.loads(message, parse_constant=constant, parse_int=integer, parse_float=real)
    except ControlError:
        raise
    except RecursionError:
        raise ControlError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ControlError(f"not JSON: {exc}") from None
    _check_plain(value, 0)
    return value


def _check_plain(value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ControlError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ControlError("text with a lone surrogate (\\ud800-\\udfff) is not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)


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
