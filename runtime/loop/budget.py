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

Every cost is a median of several runs, EnCodec's measured streaming at the live chunk size, and
the costs are kept per host and bundle (``runtime.pipeline.host_cache``): a start-up with them
cached measures nothing (seconds less before the first audio) and chooses the window the last
start chose. What the running budget observes outranks the start-up guess: each re-choice keeps
its measured slowdown, and the next start projects with it.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from img2music.runtime.generation.core import Windowing

log = logging.getLogger(__name__)

HEADROOM = 0.85
"""Largest projected real-time factor a chosen window may have."""
MIN_WINDOW_SECONDS = 5
"""Shortest window considered: shorter ones re-prime too often to sound continuous (a
checkpoint with fewer positions gets its whole context instead)."""
LONGEST_WINDOW_SECONDS = 30
"""MusicGen's trained length."""
KEEP_SECONDS = (1, 5)
"""Shortest and longest prompt carried into the next window."""
SPIN_BELOW = 0.6
"""Projected RTF under which ORT's workers stop spinning: spinning saves up to 20 % of a
chunk's compute (bench_live.py rtf), and 0.6 * 1.2 is still under the 0.85 headroom."""
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

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in dataclasses.asdict(self).items()}


def projected_rtf(costs: Costs, window: Windowing, num_codebooks: int, frame_rate: int) -> float:
    """Seconds of compute per second of music, averaged over a window cycle."""
    w, p, k = window.window_frames, window.keep_frames, num_codebooks
    steps = w - p + k - 1
    step_ms = steps * (costs.step_base_ms + costs.step_per_position_ms * (p + w + k - 1) / 2)
    music_s = (w - p) / frame_rate
    return (step_ms + costs.prefill_per_frame_ms * p) / 1000 / music_s + costs.encodec_per_second_ms / 1000


def keep_for(window_frames: int, frame_rate: int) -> int:
    """The prompt for a window: a sixth of it (5 s of 30 s), at least 1 s, at most 5 s, and
    never more than half the window; so a shorter window keeps proportionally less rather
    than becoming mostly prompt."""
    low, high = KEEP_SECONDS[0] * frame_rate, KEEP_SECONDS[1] * frame_rate
    return max(1, min(max(low, min(high, window_frames // 6)), window_frames // 2))


def window_candidates(frame_rate: int, max_frames: int) -> list[int]:
    """Window lengths to try, longest first: whole seconds from 30 down to 5, capped by the
    decoder's positions (``max_frames``, from the checkpoint's config)."""
    longest = min(LONGEST_WINDOW_SECONDS * frame_rate, max_frames)
    shortest = min(MIN_WINDOW_SECONDS * frame_rate, longest)
    return sorted({longest, *range(shortest, longest, frame_rate)}, reverse=True)


def choose_window(costs: Costs, num_codebooks: int, frame_rate: int, max_frames: int,
                  headroom: float = HEADROOM) -> tuple[Windowing, float]:
    """The longest window (its prompt from :func:`keep_for`) projected at or under
    ``headroom``; when none is, the cheapest one there is. Returns (window, RTF)."""
    best = None
    for w in window_candidates(frame_rate, max_frames):
        window = Windowing(w, keep_for(w, frame_rate))
        rtf = projected_rtf(costs, window, num_codebooks, frame_rate)
        if rtf <= headroom:
            return window, rtf
        if best is None or rtf < best[1]:
            best = (window, rtf)
    return best


def measure_costs(pipeline, conditioning, mask, sampling, positions: tuple[int, int] = (16, 1024),
                  steps: int = 6, chunk_frames: int = 25, runs: int = 3) -> Costs:
    """Time the generation core on ``pipeline`` (the generator's current piece is ended): each cost
    the median of ``steps`` steps or ``runs`` prefills, EnCodec streaming ``chunk_frames`` at a time."""
    gen = pipeline.generator
    d = pipeline.bundle.model.decoder
    gen.start(conditioning, mask, sampling, window=Windowing(d.max_frames, d.max_frames // 2))
    per_position = {}
    for pos in sorted({min(p, d.max_frames - steps - 4) for p in positions}):  # a short decoder: its own limit
        gen.seek(pos)
        gen.step(sampling)  # warm-up: this length's first run
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            gen.step(sampling)
            times.append(time.perf_counter() - start)
        per_position[pos] = statistics.median(times) * 1000
    (p0, t0), (p1, t1) = min(per_position.items()), max(per_position.items())
    slope = max(0.0, (t1 - t0) / (p1 - p0)) if p1 > p0 else 0.0
    frames = min(100, d.max_frames // 2)
    tokens = np.full((gen.batch * (2 if gen.guidance else 1), d.num_codebooks, frames), d.pad_token_id, np.int64)
    gen.decoder.prefill(tokens)  # warm-up
    prefills = []
    for _ in range(runs):
        start = time.perf_counter()
        gen.decoder.prefill(tokens)
        prefills.append((time.perf_counter() - start) * 1000 / frames)
    codes = np.random.default_rng(0).integers(0, d.vocab_size, (1, d.num_codebooks, chunk_frames * (runs + 2)))
    stream = pipeline.stream_decoder(1)
    stream.push(codes[:, :, :chunk_frames])  # warm-up
    pushes = []
    for i in range(1, runs + 2):
        start = time.perf_counter()
        stream.push(codes[:, :, i * chunk_frames:(i + 1) * chunk_frames])
        pushes.append((time.perf_counter() - start) * 1000 * pipeline.frame_rate / chunk_frames)
    return Costs(max(0.0, t0 - slope * p0), slope, statistics.median(prefills), statistics.median(pushes))


class ContextBudget:
    """The window in use, re-chosen when measured chunk costs drift from the projection."""

    def __init__(self, costs: Costs, num_codebooks: int, frame_rate: int, max_frames: int,
                 headroom: float = HEADROOM, horizon: float = 15.0, clock=time.monotonic,
                 remember=None) -> None:
        self.costs, self.k, self.rate, self.max_frames = costs, num_codebooks, frame_rate, max_frames
        self.headroom, self.horizon, self.clock = headroom, horizon, clock
        self.remember = remember
        """Called with the costs the running budget measured (scaled) at each re-choice: the host
        cache keeps them for the next start (None: forgotten)."""
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
        if self.remember is not None:
            self.remember(self.costs.scaled(slowdown))
        self._samples.clear()
        self._since_change = now
        return window


def start_window(pipeline, conditioning, mask, sampling, configured: Windowing | None = None,
                 chunk_frames: int = 25) -> tuple[Windowing, float, Costs, "ContextBudget | None", str]:
    """At start-up: this machine's costs (kept per host and bundle: measured only when not kept
    yet); the budget's window (or the configured one) and its projected RTF; and with plenty of
    headroom (under :data:`SPIN_BELOW`) the sessions re-created with ORT's threads sleeping
    between runs. Returns (window, projected RTF, costs, budget or None when configured, where the
    costs came from: 'kept' or 'measured')."""
    d = pipeline.bundle.model.decoder
    cache = pipeline.host_cache
    name = f"costs@{chunk_frames}"

    def remember(costs: Costs) -> None:
        cache.put(name, {"costs": costs.to_dict(), "spinning": pipeline.options.spinning})

    def choose(costs: Costs):
        if configured is not None:
            return configured, projected_rtf(costs, configured, d.num_codebooks, pipeline.frame_rate), costs, None
        budget = ContextBudget(costs, d.num_codebooks, pipeline.frame_rate, d.max_frames, remember=remember)
        return budget.window, budget.projected, costs, budget

    kept = cache.get(name)
    if kept is not None:
        if not kept.get("spinning", True) and pipeline.options.spinning:
            pipeline.set_spinning(False)
        return choose(Costs(**kept["costs"])) + ("kept",)
    chosen = choose(measure_costs(pipeline, conditioning, mask, sampling, chunk_frames=chunk_frames))
    if chosen[1] < SPIN_BELOW and pipeline.options.spinning:
        # Plenty of headroom: ORT's workers busy-waiting between runs would burn cores for
        # nothing (tiny bundle, 2 cores: 0.61 cores used with spinning, 0.18 without), and an
        # installation runs for weeks. Sessions re-created without it, costs measured again.
        pipeline.set_spinning(False)
        chosen = choose(measure_costs(pipeline, conditioning, mask, sampling, chunk_frames=chunk_frames))
        log.info("projected RTF under %.1f: onnxruntime's threads sleep between runs", SPIN_BELOW)
    remember(chosen[2])
    return chosen + ("measured",)


def describe_start(costs: Costs, window: Windowing, rtf: float, frame_rate: int, seconds: float,
                   configured: bool, source: str = "measured", encodec: str = "float32") -> str:
    """The start-up choice as one line (the live engine prints it)."""
    where = f"{seconds:.1f} s to measure" if source == "measured" else "kept from an earlier start on this host"
    return (f"context budget ({where}: step {costs.step_base_ms:.1f} ms "
            f"+ {costs.step_per_position_ms * 1000:.2f} ms per 1000 positions, EnCodec "
            f"{costs.encodec_per_second_ms:.0f} ms/s, {encodec} front): window {window.window_frames / frame_rate:.0f} s, "
            f"keep {window.keep_frames / frame_rate:.0f} s{' (as configured)' if configured else ''}, "
            f"projected RTF {rtf:.2f}"
            + ("" if rtf <= HEADROOM else " — above the headroom: this machine is too slow for "
               "this bundle, expect repeats"))
