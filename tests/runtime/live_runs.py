"""What a live run's recording should hold, and its metrics while it runs, for the tests that
run live end to end."""

import json
from pathlib import Path


def played_seconds(duration: float, last: dict) -> float:
    """A recording of a ``duration`` run (``last``: its final metrics row) holds the music and the
    paused silence (``duration``) plus what the playout ladder added. Tiny keeps up, but a shared
    host can stall any process for a second: the ladder then repeats recent music, which is the
    product working, not a failure; a lost or doubled sample still shows."""
    return duration + last["degrade_fill_s"] + last["degrade_silence_s"]


def last_metrics(path) -> dict:
    """The newest complete line of a running ``--metrics`` file ({} before the first)."""
    path = Path(path)
    for line in reversed(path.read_text().splitlines() if path.exists() else []):
        try:
            return json.loads(line)
        except ValueError:
            continue  # a line being written
    return {}
