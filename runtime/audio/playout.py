"""Between the generator and the sink: keeps the ring fed, degrades when it cannot.

The generator thread :meth:`Playout.submit` s fresh audio (already at the device rate);
a light feeder thread (:meth:`Playout.run`) moves it into the ring every ``tick``
seconds and records it. When the generator is slower than real time the feeder steps
down a ladder that keeps music playing, counting each step:

1. ``cheaper`` — buffered audio fell below half the target: :attr:`level` 1 tells the
   generator to switch to cheaper settings (the live engine: longer chunks, and its
   context budget a shorter window);
2. ``repeat`` — the ring is about to run dry (below ``low_water``) with nothing fresh:
   the last ``repeat_seconds`` of fresh music are played again, crossfaded in and out,
   as often as needed while fresh audio keeps arriving;
3. ``silence`` — only after a stall: for ``stall_seconds`` neither fresh audio nor a
   sign of work (:meth:`Playout.progress`, which the live engine calls after every decoder
   step) — a generator that has stopped, not one that is slow: on a host slowed far enough
   that one chunk takes longer than the limit, the music keeps repeating. The music fades to silence (blocks of zeros
   written on purpose, so the sound card never underflows). Before the first audio there
   is nothing to play and nothing is written.

Fresh audio after a repeat is crossfaded in; after silence it fades in. The level
climbs back to 0 (a ``recovery``) once the buffer is back at the target. The last
``crossfade`` samples written are always held back so that whatever comes next can
be crossfaded onto them.

The playout carries the ring's channels (``ring.channels``: 1, or 2 for a stereo bundle):
every array here is (S,) or (S, C) frames (runtime.audio.frames), the repeat and silence
fills have the music's channels, and every fade and crossfade scales a frame's channels
alike, so the stereo image survives the ladder. Counts and positions are in frames.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from img2music.basics.background import BackgroundThread
from img2music.runtime.audio.frames import frame_shape, per_frame, silence
from img2music.runtime.audio.recording import LiveRecording
from img2music.runtime.audio.sinks import RingBuffer

log = logging.getLogger(__name__)


@dataclass
class DegradeCounts:
    cheaper: int = 0
    """Times the generator was told to switch to cheaper settings."""
    repeats: int = 0
    """Crossfaded repeats of the last audio inserted."""
    silences: int = 0
    """Fades to silence (stalls)."""
    silence_seconds: float = 0.0
    """Seconds of deliberate silence written."""
    recoveries: int = 0
    """Returns to level 0 after a degradation."""
    fill_seconds: float = 0.0
    """Seconds of repeated audio the stream gained (repeats less their crossfade overlaps)."""
    latencies: list = field(default_factory=list)
    """Resolved markers: (label, seconds from the marker's start to its sample leaving the
    ring, the start time)."""


TARGET_RAMP = 0.25
"""Seconds of buffer target gained per second after a short pre-roll: slower than a generator at
RTF 0.8 fills it (0.25 s per second), so the ladder is never tripped by its own ramp."""


class Playout:
    def __init__(self, ring: RingBuffer, rate: int, target: float, low_water: float = 0.15,
                 recorder: LiveRecording | None = None, crossfade: float = 0.05, repeat_seconds: float = 1.0,
                 stall_seconds: float = 10.0, tick: float = 0.01, clock=time.monotonic,
                 preroll: float | None = None) -> None:
        self.ring, self.rate, self.recorder = ring, rate, recorder
        self.channels = ring.channels
        self.target, self.low_water, self.tick = target, low_water, tick
        self.preroll = target if preroll is None else min(preroll, target)
        """Seconds buffered before the sound starts; the ladder's target then grows to ``target`` at
        :data:`TARGET_RAMP` seconds per second (the first audio sooner, the full buffer soon after)."""
        self._primed_at: float | None = None
        self.xfade = max(1, int(crossfade * rate))
        self.repeat_len = max(2 * self.xfade, int(repeat_seconds * rate))
        self.stall_seconds, self.clock = stall_seconds, clock
        self._last_fresh = clock()
        self._last_progress = float("-inf")
        self.counts = DegradeCounts()
        self.level = 0
        self.fresh_out = 0  # fresh samples moved toward the ring (held tail included)
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._held = silence(0, self.channels)  # last frames, not yet in the ring
        self._history = silence(self.repeat_len, self.channels)  # last fresh audio, for repeats
        self._after = None  # None | "repeat" | "silence": how the next fresh audio must join
        self._markers: list[tuple[int, str, float]] = []  # (fresh sample, label, start time)
        self._pending_markers: list[tuple[int, str, float]] = []  # (ring sample, label, start time)
        self._finished = False
        self._primed = False  # pre-roll: nothing reaches the ring until the target is buffered
        self.background = BackgroundThread("playout", self.run)
        """The feeder thread (:meth:`run`)."""
        self.beat = time.monotonic()

    # -- generator side -------------------------------------------------------------
    def progress(self) -> None:
        """The generator is working (called per decoder step): not a stall, however slow."""
        self._last_progress = self.clock()

    def submit(self, audio: np.ndarray) -> None:
        """Fresh audio at the device rate: (S,) mono, (S, C) for the ring's C channels."""
        audio = np.asarray(audio, dtype=np.float32).reshape(frame_shape(-1, self.channels))
        if len(audio):
            with self._lock:
                self._queue.append(audio)
                self._queued += len(audio)

    def mark(self, fresh_sample: int, label: str, start_time: float) -> None:
        """Report when fresh sample ``fresh_sample`` leaves the ring, timed from ``start_time``."""
        with self._lock:
            self._markers.append((fresh_sample, label, start_time))

    def buffered(self) -> float:
        """Seconds of audio ahead of the sound card (ring + held + queued)."""
        return (self.ring.available() + len(self._held) + self._queued) / self.rate

    def finish(self) -> None:
        """No more fresh audio: write everything out (held tail included)."""
        self._finished = True

    def drained(self) -> bool:
        return self._finished and self._queued == 0 and len(self._held) == 0 and self.ring.available() == 0

    # -- feeder side ----------------------------------------------------------------
    def start(self) -> "Playout":
        self.background.start()
        return self

    def close(self) -> None:
        self.background.stop()

    def run(self) -> None:
        while not self.background.stopping.is_set():
            self.feed()
            self.beat = time.monotonic()  # the supervisor's sign of progress (runtime.loop.thread_watch)
            self.background.wait(self.tick)

    def feed(self) -> None:
        """One feeder tick (public so tests can drive it deterministically)."""
        if not self._primed:
            if self._queued < self.preroll * self.rate and not self._finished:
                return
            self._primed, self._primed_at = True, self.clock()
        with self._lock:
            chunks = list(self._queue)
            self._queue.clear()
            self._queued = 0
        for chunk in chunks:
            self._push_fresh(chunk)
        if self._finished and not self._queue:
            self._emit_held()
            self.ring.end_of_stream = True
        elif not chunks:
            self._maybe_degrade()
        self._level_from_buffer()
        self._resolve_markers()
        # Everything written that was neither fresh music nor deliberate silence was repeated.
        extra = self.ring.written + len(self._held) - self.fresh_out
        self.counts.fill_seconds = max(0.0, extra / self.rate - self.counts.silence_seconds)

    def _push_fresh(self, audio: np.ndarray) -> None:
        self._last_fresh = self.clock()
        start = self.fresh_out
        self.fresh_out += len(audio)
        with self._lock:
            due = [m for m in self._markers if m[0] < self.fresh_out]
            self._markers = [m for m in self._markers if m[0] >= self.fresh_out]
        ring_base = self.ring.written + len(self._held)  # where this audio starts in the ring
        if self._after == "repeat":
            audio = self._crossfade_join(audio)
            ring_base = self.ring.written + len(self._held) - self.xfade
        elif self._after == "silence":
            audio = audio.copy()
            n = min(self.xfade, len(audio))
            audio[:n] *= per_frame(np.linspace(0.0, 1.0, n, dtype=np.float32), audio)
        self._after = None
        for sample, label, t0 in due:
            self._pending_markers.append((ring_base + max(0, sample - start), label, t0))
        keep = len(self._history)
        self._history = np.concatenate([self._history, audio])[-keep:]
        self._write(audio)

    def _crossfade_join(self, audio: np.ndarray) -> np.ndarray:
        """Equal-power crossfade of the held tail onto the head of ``audio``."""
        n = min(self.xfade, len(self._held), len(audio))
        if n == 0:
            return audio
        t = np.linspace(0.0, np.pi / 2, n, dtype=np.float32)
        head = self._held[-n:] * per_frame(np.cos(t), audio) + audio[:n] * per_frame(np.sin(t), audio)
        self._held = self._held[:-n]
        return np.concatenate([head, audio[n:]])

    def _write(self, audio: np.ndarray) -> None:
        """Append to the stream: everything but the last ``xfade`` samples goes to the ring."""
        data = np.concatenate([self._held, audio]) if len(self._held) else audio
        cut = max(0, len(data) - self.xfade)
        self._to_ring(data[:cut])
        self._held = data[cut:].copy()

    def _emit_held(self) -> None:
        if len(self._held):
            self._to_ring(self._held)
            self._held = silence(0, self.channels)

    def _to_ring(self, audio: np.ndarray) -> None:
        done = 0
        while done < len(audio) and not self.background.stopping.is_set():
            done += self.ring.write(audio[done:])
            if done < len(audio):
                time.sleep(self.tick)  # ring full: the sink drains in real time
        if self.recorder is not None and len(audio):
            self.recorder.write(audio)  # a full disk pauses the recording, never the music

    def _maybe_degrade(self) -> None:
        if self._finished or self.fresh_out == 0:
            return  # before the first audio there is nothing to degrade
        if self.ring.available() / self.rate >= self.low_water:
            return
        stalled = self.clock() - max(self._last_fresh, self._last_progress) > self.stall_seconds
        if not stalled:
            self.counts.repeats += 1
            self.level = max(self.level, 2)
            log.info("playout: generator behind, repeating the last %.2f s", self.repeat_len / self.rate)
            repeat = self._crossfade_join(self._history.copy())
            self._write(repeat)
            self._after = "repeat"
            return
        if self._after != "silence":
            self.counts.silences += 1
            self.level = 3
            log.warning("playout: no fresh audio and no generator progress for %.0f s, fading to silence",
                        self.stall_seconds)
            n = len(self._held)
            self._to_ring(self._held * per_frame(np.linspace(1.0, 0.0, n, dtype=np.float32), self._held))
            self._held = silence(0, self.channels)
            self._after = "silence"
        block = silence(int(0.1 * self.rate), self.channels)
        self.counts.silence_seconds += len(block) / self.rate
        self._to_ring(block)

    def target_now(self) -> float:
        """The buffer the ladder aims at: from the pre-roll up to ``target`` (see :attr:`preroll`)."""
        if self._primed_at is None or self.preroll >= self.target:
            return self.target
        return min(self.target, self.preroll + TARGET_RAMP * (self.clock() - self._primed_at))

    def _level_from_buffer(self) -> None:
        buffered, target = self.buffered(), self.target_now()
        if self.level > 0 and buffered >= target and self._after is None:
            self.level = 0
            self.counts.recoveries += 1
            log.info("playout: caught up (%.2f s buffered)", buffered)
        elif self.level == 0 and self.fresh_out > 0 and not self._finished and buffered < target / 2:
            self.level = 1
            self.counts.cheaper += 1

    def _resolve_markers(self) -> None:
        now = time.monotonic()
        still = []
        for ring_sample, label, t0 in self._pending_markers:
            if self.ring.consumed > ring_sample:
                self.counts.latencies.append((label, now - t0, t0))
            else:
                still.append((ring_sample, label, t0))
        self._pending_markers = still
