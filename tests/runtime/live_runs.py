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


def run_session(bundle, source, engine, threads: int = 2, stale_after: float = 3.0, on_engine=None, **output) -> str:
    """One live run of ``bundle`` from ``source`` (any FrameSource) with ``engine`` (an EngineConfig),
    as a program embedding img2music would start it; ``output``: OutputConfig's fields (headless
    unless ``no_audio=False``). Returns the run's summary."""
    from img2music.runtime import BackendConfig, LiveSession, LiveSessionConfig, OutputConfig, SourceConfig

    output.setdefault("no_audio", True)
    config = LiveSessionConfig(BackendConfig(str(bundle), threads=threads),
                               SourceConfig(custom=source, stale_after=stale_after), engine, OutputConfig(**output))
    return LiveSession(config, on_engine=on_engine).run()
