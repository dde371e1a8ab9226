"""``live.py --record``: a recording that runs for weeks and outlives a full disk.

One :class:`~runtime.audio.files.WavRecorder` per segment, 16-bit PCM with the bundle's
channels (2 for a stereo bundle; a header valid after every flush, so SIGKILL or a power
cut loses at most the last second):

- **never overwrites**: ``room.wav`` taken (an earlier run, a restart by systemd) ->
  ``room.1.wav``, ``room.2.wav``, ... the first free name;
- **rotates by size** (``max_bytes``, default 1 GiB, ~4.7 h at 32 kHz): a WAV cannot hold
  more than 4 GiB and one file per few hours is what a person can open;
- **a full disk pauses it, the music goes on**: one error line, the segment closed with a
  valid header, and every ``retry_every`` seconds a look at the free space; with
  ``reserve_bytes`` free again the recording resumes in the next segment. What was played
  meanwhile is counted (:attr:`lost_samples`) and reported, not silently missing.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.audio.files import WavRecorder, printable

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2  # PCM_16, per channel


class LiveRecording:
    """Segments of ``path``; :meth:`write` never raises for a full or failing disk. Samples
    are counted in frames (one per channel each)."""

    def __init__(self, path: str, rate: int, max_bytes: int = 2**30, retry_every: float = 10.0,
                 reserve_bytes: int = 64 * 2**20, clock=time.monotonic, channels: int = 1) -> None:
        self.base, self.rate, self.channels = Path(path), rate, channels
        self.max_samples = max(rate, (max_bytes - 44) // (BYTES_PER_SAMPLE * channels))  # 44: the header
        self.retry_every, self.reserve_bytes, self.clock = retry_every, reserve_bytes, clock
        self.segments: list[WavRecorder] = []
        self.lost_samples = 0
        self.pauses = 0
        self.failed: str | None = None  # why the recording last paused
        self._retry_at = 0.0
        self._paused_since = 0  # lost_samples when the current pause began
        self.current: WavRecorder | None = self._open_next()  # a bad path fails here, at start-up
        if self.current.path != str(self.base):
            log.warning("%s exists: recording to %s (nothing is overwritten)", printable(self.base),
                        printable(self.current.path))

    @property
    def path(self) -> str:
        return self.segments[0].path

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.segments)

    @property
    def state(self) -> str:
        return "recording" if self.current is not None else "paused"

    def _open_next(self) -> WavRecorder:
        n, candidate = 0, self.base
        taken = {Path(s.path) for s in self.segments}
        while candidate.exists() or candidate in taken:
            n += 1
            candidate = self.base.with_name(f"{self.base.stem}.{n}{self.base.suffix}")
        recorder = WavRecorder(str(candidate), self.rate, subtype="PCM_16", channels=self.channels)
        self.segments.append(recorder)
        return recorder

    def write(self, audio: np.ndarray) -> None:
        """(S,) mono or (S, channels) frames."""
        if self.current is None and not self._resume():
            self.lost_samples += len(audio)
            return
        if self.current.samples + len(audio) > self.max_samples:
            self.current.close()
            log.info("recording continues in a new file (%.0f s in %s)", self.current.samples / self.rate,
                     printable(self.current.path))
            if not self._start_segment():
                self.lost_samples += len(audio)
                return
        try:
            self.current.write(audio)
        except Img2MusicError as exc:  # disk full or failing: WavRecorder closed the file
            self._pause(str(exc))
            self.lost_samples += len(audio)

    def _start_segment(self) -> bool:
        try:
            self.current = self._open_next()
            return True
        except Img2MusicError as exc:
            self._pause(str(exc))
            return False

    def _pause(self, why: str) -> None:
        self.failed, self.current = why, None
        self.pauses += 1
        self._paused_since = self.lost_samples
        self._retry_at = self.clock() + self.retry_every
        log.error("recording paused after %.1f s: %s; the music goes on, retrying every %.0f s",
                  self.samples / self.rate, why, self.retry_every)

    def _resume(self) -> bool:
        if self.clock() < self._retry_at:
            return False
        self._retry_at = self.clock() + self.retry_every
        try:
            free = shutil.disk_usage(self.base.resolve().parent).free
        except OSError:
            return False
        if free < self.reserve_bytes:
            return False
        if not self._start_segment():
            return False
        log.warning("recording resumed in %s (%.1f s were not recorded)", printable(self.current.path),
                    (self.lost_samples - self._paused_since) / self.rate)
        return True

    def close(self) -> None:
        if self.current is not None:
            self.current.close()

    def describe(self) -> str:
        """For the summary: where the music went and what is missing."""
        text = f"recorded {self.samples / self.rate:.2f} s to {printable(self.path)}"
        if len(self.segments) > 1:
            text += f" (+{len(self.segments) - 1} more: {', '.join(printable(s.path) for s in self.segments[1:])})"
        if self.lost_samples:
            text += f"; {self.lost_samples / self.rate:.2f} s not recorded ({self.pauses} pauses: {self.failed})"
        return text
