"""The source thread: keeps a frame source alive in the background (reopen with back-off
when it fails, stalls or blocks) and hands the newest good frame to the live engine."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from img2music.basics.background import BackgroundThread
from img2music.runtime.loop.sources import FrameSource, sanitize_frame

log = logging.getLogger(__name__)


@dataclass
class SourceStats:
    frames: int = 0
    """Good frames delivered."""
    dropped: int = 0
    """Frames that were None, garbage or raised."""
    reconnects: int = 0
    """Times the source was released and reopened (stale, blocked or failing)."""
    open_failures: int = 0
    """Failed open() attempts."""


class SourceThread:
    """Keeps a source alive in the background; :meth:`latest` gives the newest good frame."""

    def __init__(self, source: FrameSource, stale_after: float = 3.0, max_failures: int = 25,
                 backoff: tuple[float, float] = (0.5, 10.0)) -> None:
        self.source = source
        self.stale_after, self.max_failures = stale_after, max_failures
        self.backoff_min, self.backoff_max = backoff
        self.stats = SourceStats()
        self._frame: np.ndarray | None = None
        self._frame_time = 0.0
        self._frame_id = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._bad_in_row = 0
        self.background = BackgroundThread("source-supervisor", self._supervise)
        """The supervisor: opens the source, watches the reader, reopens with back-off."""
        self._reader: threading.Thread | None = None

    def start(self) -> "SourceThread":
        self.background.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop reading and release the connection: the reader is waited for (a read returns
        within a frame period) so that no thread is inside OpenCV when the process exits.
        One still blocked after ``timeout`` (a hung network stream) is left; live.py's ``cli()``
        then exits without the interpreter's teardown."""
        self.background.stop(timeout)
        reader = self._reader
        if reader is not None:
            reader.join(timeout=timeout)

    @property
    def state(self) -> str:
        """'streaming' (a good frame within ``stale_after``), 'waiting' (none yet),
        'open failed N times' or 'stalled' (frames had come, then stopped)."""
        _, _, age = self.latest()
        if age <= self.stale_after:
            return "streaming"
        if self.stats.open_failures:
            return f"open failed {self.stats.open_failures} times"
        return "waiting" if age == float("inf") else "stalled"

    def latest(self) -> tuple[np.ndarray | None, int, float]:
        """(frame or None, frame id, age in seconds; inf before the first frame)."""
        with self._lock:
            age = time.monotonic() - self._frame_time if self._frame is not None else float("inf")
            return self._frame, self._frame_id, age

    def _deliver(self, frame: np.ndarray) -> None:
        with self._lock:
            self._frame, self._frame_time = frame, time.monotonic()
            self._frame_id += 1
        self.stats.frames += 1

    def _read_loop(self, connection, generation: int, failed: threading.Event) -> None:
        """One connection: read until told to stop or too many failures in a row, then
        release it (a reader abandoned while blocked releases when read() returns)."""
        try:
            self._read_frames(connection, generation, failed)
        finally:
            try:
                connection.release()
            except Exception as exc:
                log.debug("source release failed: %s", exc)

    def _read_frames(self, connection, generation: int, failed: threading.Event) -> None:
        failures = 0
        bgr = getattr(self.source, "bgr", True)
        while not self.background.stopping.is_set() and generation == self._generation:
            try:
                frame = sanitize_frame(connection.read(), bgr=bgr)
            except Exception as exc:  # a driver error must not end the music
                log.debug("source read failed: %s", exc)
                frame = None
            if generation != self._generation:
                break  # abandoned while blocked: the frame belongs to a dead connection
            if frame is None:
                self.stats.dropped += 1
                failures += 1
                self._bad_in_row = failures
                if failures >= self.max_failures:
                    failed.set()
                    return
                time.sleep(0.01)
                continue
            failures = self._bad_in_row = 0
            self._deliver(frame)

    def _supervise(self) -> None:
        delay = self.backoff_min
        attempt = 0
        while not self.background.stopping.is_set():
            try:
                connection = self.source.open()
            except Exception as exc:
                self.stats.open_failures += 1
                attempt += 1
                log.warning("%s: open failed (%s); retry %d in %.1f s", self.source.name, exc, attempt, delay)
                self.background.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self._generation += 1
            generation, failed = self._generation, threading.Event()
            opened, frames_before, self._bad_in_row = time.monotonic(), self.stats.frames, 0
            reader = threading.Thread(target=self._read_loop, args=(connection, generation, failed), name="source-reader",
                                      daemon=True)
            reader.start()
            self._reader = reader
            reason = None
            while not self.background.stopping.is_set():
                if failed.is_set():
                    reason = f"{self.max_failures} bad reads in a row"
                    break
                with self._lock:
                    last = max(self._frame_time, opened)
                if time.monotonic() - last > self.stale_after:
                    why = f"{self._bad_in_row} bad reads in a row" if self._bad_in_row else "stalled or blocked"
                    reason = f"no good frame for {self.stale_after:.1f} s ({why})"
                    break
                self.background.wait(0.05)
            self._generation += 1  # the reader sees it and stops; a blocked one is abandoned
            if reason is None:
                break
            if self.stats.frames > frames_before:
                delay = self.backoff_min  # this connection had worked: start the back-off again
            self.stats.reconnects += 1
            attempt += 1
            log.warning("%s: %s; reconnecting (attempt %d) in %.1f s", self.source.name, reason, attempt, delay)
            self.background.wait(delay)
            delay = min(delay * 2, self.backoff_max)
