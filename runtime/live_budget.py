"""The context budget: window and prompt lengths that this machine can generate in real time.

A decoder step costs more the more positions are cached (small-random int4, 2 cores:
9.5 ms at 16 positions, 20 ms at 1500), so the window length, not the model alone,
decides whether live generation keeps up. At start-up the live engine measures, on this
machine and bundle, the step cost at two cache lengths (cost = a + b * position), the
cost of a prefill per prompt frame and EnCodec's cost per second of audio; then it picks
the longest window (and, for it, the longest prompt) whose projected real-time factor
leaves headroom (<= 0.85: CLIP looks, transitions and the rest of the process need the
remainder). While running, it compares what chunks really cost with the projection; when
the machine slows down (another process, thermal throttling) it shortens the window,
and lengthens it again when the load goes.

A window cycle after a re-prime with P prompt frames: a prefill of P frames, then
W - P + K - 1 steps at positions P .. W + K - 1, for W - P new frames of music.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from runtime.generation import Windowing

log = logging.getLogger(__name__)

HEADROOM = 0.85
"""Largest projected real-time factor a chosen window may have."""
MIN_WINDOW_FRAMES = 250
"""Shortest window considered (5 s): shorter ones re-prime too often to sound continuous."""
MIN_KEEP_FRAMES = 50
"""Shortest prompt considered (1 s)."""
STEP_FRAMES = 50
"""Window and prompt lengths are tried in whole seconds."""
DRIFT = 1.25
"""Measured/projected cost that has moved this far from the last choice's makes a new choice."""


@dataclass(frozen=True)
class Costs:
    """What generation costs on this machine, in milliseconds."""

    step_base_ms: float
    """All-in step cost (graph + guidance + sampling) at no cached positions."""
    step_per_position_ms: float
    """Extra step cost per cached position."""
    prefill_per_frame_ms: float
    """Prefill cost per prompt frame."""
    encodec_per_second_ms: float
    """Streaming EnCodec cost per second of audio."""

    def scaled(self, factor: float) -> "Costs":
        return Costs(self.step_base_ms * factor, self.step_per_position_ms * factor,
                     self.prefill_per_frame_ms * factor, self.encodec_per_second_ms * factor)


def projected_rtf(costs: Costs, window: Windowing, num_codebooks: int, frame_rate: int) -> float:
    """Seconds of compute per second of music, averaged over a window cycle."""
    w, p, k = window.window_frames, window.keep_frames, num_codebooks
    steps = w - p + k - 1
    step_ms = steps * (costs.step_base_ms + costs.step_per_position_ms * (p + w + k - 1) / 2)
    music_s = (w - p) / frame_rate
    return (step_ms + costs.prefill_per_frame_ms * p) / 1000 / music_s + costs.encodec_per_second_ms / 1000


def keep_for(window_frames: int) -> int:
    """The prompt for a window: a sixth of it (5 s of 30 s), at least 1 s, at most 5 s; so a
    shorter window keeps proportionally less rather than becoming mostly prompt."""
    return max(MIN_KEEP_FRAMES, min(250, window_frames // 6))


def choose_window(costs: Costs, num_codebooks: int, frame_rate: int, max_frames: int,
                  headroom: float = HEADROOM, longest: int = 1500) -> tuple[Windowing, float]:
    """The longest window (in whole seconds, its prompt from :func:`keep_for`) projected at
    or under ``headroom``; when none is, the cheapest one there is. Returns (window, RTF)."""
    best = None
    for w in range(min(longest, max_frames), MIN_WINDOW_FRAMES - 1, -STEP_FRAMES):
        window = Windowing(w, keep_for(w))
        rtf = projected_rtf(costs, window, num_codebooks, frame_rate)
        if rtf <= headroom:
            return window, rtf
        if best is None or rtf < best[1]:
            best = (window, rtf)
    return best


def measure_costs(pipeline, conditioning, mask, sampling, positions: tuple[int, int] = (16, 1024),
                  steps: int = 6) -> Costs:
    """Time the generation core on ``pipeline`` (the generator's current piece is ended)."""
    gen = pipeline.generator
    d = pipeline.bundle.model.decoder
    gen.start(conditioning, mask, sampling, window=Windowing(d.max_frames, d.max_frames // 2))
    per_position = {}
    for pos in positions:
        gen.seek(min(pos, d.max_frames - steps - 4))
        gen.step(sampling)  # warm-up: this length's first run
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            gen.step(sampling)
            times.append(time.perf_counter() - start)
        per_position[pos] = statistics.median(times) * 1000
    (p0, t0), (p1, t1) = per_position.items()
    slope = max(0.0, (t1 - t0) / (p1 - p0))
    tokens = np.full((gen.batch * (2 if gen.guidance else 1), d.num_codebooks, 100), d.pad_token_id, np.int64)
    gen.decoder.prefill(tokens)  # warm-up
    start = time.perf_counter()
    gen.decoder.prefill(tokens)
    prefill = (time.perf_counter() - start) * 1000 / 100
    codes = np.random.default_rng(0).integers(0, d.vocab_size, (1, d.num_codebooks, 60))
    stream = pipeline.stream_decoder(1)
    stream.push(codes[:, :, :10])  # warm-up
    start = time.perf_counter()
    stream.push(codes[:, :, 10:])
    encodec = (time.perf_counter() - start) * 1000 * pipeline.frame_rate / 50
    return Costs(max(0.0, t0 - slope * p0), slope, prefill, encodec)


class ContextBudget:
    """The window in use, re-chosen when measured chunk costs drift from the projection."""

    def __init__(self, costs: Costs, num_codebooks: int, frame_rate: int, max_frames: int,
                 headroom: float = HEADROOM, horizon: float = 15.0, clock=time.monotonic) -> None:
        self.costs, self.k, self.rate, self.max_frames = costs, num_codebooks, frame_rate, max_frames
        self.headroom, self.horizon, self.clock = headroom, horizon, clock
        self.slowdown = 1.0
        """Measured / projected cost, as of the last re-choice."""
        self.window, self.projected = choose_window(costs, num_codebooks, frame_rate, max_frames, headroom)
        """The window in use and its projected RTF at the start-up costs."""
        self.changes = 0
        self._samples: deque[tuple[float, float, float]] = deque()  # (time, compute s, music s)
        self._since_change = clock()

    def measured_rtf(self, since: float = float("-inf")) -> float | None:
        """Compute seconds per second of music over the horizon (or the samples after ``since``)."""
        recent = [(c, m) for t, c, m in self._samples if t >= since]
        music = sum(m for _, m in recent)
        return sum(c for c, _ in recent) / music if music else None

    def observe(self, compute_seconds: float, music_seconds: float, behind: bool = False) -> Windowing | None:
        """One chunk's cost; returns a new window when the budget changes it."""
        now = self.clock()
        self._samples.append((now, compute_seconds, music_seconds))
        while self._samples and self._samples[0][0] < now - self.horizon:
            self._samples.popleft()
        measured = self.measured_rtf()
        if measured is None or now - self._since_change < self.horizon:
            return None  # judge a window only on a full horizon of its own chunks
        slowdown = measured / self.projected
        drifted = slowdown > self.slowdown * DRIFT or slowdown < self.slowdown / DRIFT
        if not (drifted or (behind and measured > self.headroom)):
            return None
        # the newest third of the horizon: a load that changed mid-horizon is judged as it is now
        slowdown = self.measured_rtf(since=now - self.horizon / 3) / self.projected
        window, _ = choose_window(self.costs.scaled(slowdown), self.k, self.rate, self.max_frames, self.headroom)
        if window == self.window:
            return None
        projected = projected_rtf(self.costs, window, self.k, self.rate)
        log.info("context budget: measured RTF %.2f (%.2fx the projection): window %d -> %d frames, keep %d -> %d",
                 measured, slowdown, self.window.window_frames, window.window_frames, self.window.keep_frames,
                 window.keep_frames)
        self.window, self.projected, self.slowdown = window, projected, slowdown
        self.changes += 1
        self._samples.clear()
        self._since_change = now
        return window
