"""The live loop: frames -> scenes -> endless tokens -> streamed audio -> sound card / WAV.

Threads: the source (runtime.live_sources), the scene thread (CLIP at a bounded rate,
runtime.scene), the playout feeder (runtime.playout), the sink (runtime.audio_sink);
the generator runs in the caller's thread, so Ctrl-C lands where the state is.

Transitions: a confirmed scene change moves the conditioning from the old scene to the
new one in ``transition_seconds``, one step per chunk, by linear interpolation of the
T5-space conditioning, **keeping the decoder's KV cache** (one cross_kv run per chunk,
a few ms). The music so far stays in the cache, so the melody carries on while the
cross-attention is steered. Measured alternatives (benchmarks/bench_live.py):
re-priming the window on every chunk of a transition costs a prefill of ``keep``
frames each time (seconds on CPU), and crossfading two streams doubles the decoder's
work for the whole transition — neither fits a two-core real-time budget.
``transition_mode="reprime"`` keeps the re-prime path for comparison.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from basics.errors import Img2MusicError
from runtime.audio_sink import Resampler
from runtime.generation import Windowing
from runtime.live_sources import FrameSource, SourceThread
from runtime.onnx_pipeline import Conditioning
from runtime.playout import Playout
from runtime.preprocess import preprocess_images
from runtime.sampling import SamplingConfig
from runtime.scene import FrameGate, SceneConfig, SceneTracker

log = logging.getLogger(__name__)


@dataclass
class LiveConfig:
    chunk_frames: int = 25
    """Code frames generated per chunk (50 per second); halved while falling behind."""
    buffer_seconds: float = 1.0
    """Audio kept ahead of the sound card; also the pre-roll before sound starts."""
    low_water: float = 0.15
    """Seconds left in the ring at which the playout starts repeating audio."""
    transition_seconds: float = 4.0
    """Length of the conditioning blend after a scene change (0 = immediate swap)."""
    transition_mode: str = "blend"
    """'blend' (interpolate conditioning, keep the cache) or 'reprime' (re-prime per chunk)."""
    embed_interval: float = 0.25
    """Seconds between looks at the newest frame; CLIP runs only when its thumbnail moved
    (scene.FrameGate), so a short interval costs little while the picture stands still."""
    window_seconds: float = 30.0
    """Length of one generation window (MusicGen's trained length); capped by the bundle."""
    keep_seconds: float = 5.0
    """Music carried into the next window as its prompt when a window is full."""
    duration: float | None = None
    """Stop after this many seconds of music (None: run until stopped)."""
    stale_after: float = 3.0
    """Seconds without a good frame before the source is reopened."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """Scene-change detection."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Guidance, temperature, top-k/p and seed."""


@dataclass
class Scene:
    conditioning: np.ndarray  # (1, N, D)
    mask: np.ndarray  # (1, N)
    directive: str | None
    started: float  # monotonic time of the first frame that showed it


def blend(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], alpha: float):
    """Conditioning part-way from ``old`` to ``new`` (alpha in [0, 1]); masks are unioned,
    a token present on one side only is weighted by that side's share."""
    if alpha >= 1.0:
        return new
    (oc, om), (nc, nm) = old, new
    n = max(oc.shape[1], nc.shape[1])
    oc, nc = (np.pad(c, ((0, 0), (0, n - c.shape[1]), (0, 0))) for c in (oc, nc))
    om, nm = (np.pad(m, ((0, 0), (0, n - m.shape[1]))) for m in (om, nm))
    cond = (1 - alpha) * oc * om[..., None] + alpha * nc * nm[..., None]  # (1, N, D)
    return cond.astype(np.float32), np.maximum(om, nm)


class LiveEngine:
    """Runs one live session on an OnnxPipeline; ``sink`` drains ``playout.ring``."""

    def __init__(self, pipeline, source: FrameSource, config: LiveConfig, playout: Playout, out_rate: int) -> None:
        self.pipeline, self.config, self.playout = pipeline, config, playout
        self.source = SourceThread(source, stale_after=config.stale_after)
        self.tracker = SceneTracker(config.scene)
        self.gate = FrameGate(config.scene)
        self.window = Windowing.from_seconds(config.window_seconds, config.keep_seconds, pipeline.frame_rate,
                                             pipeline.bundle.model.decoder.max_frames)
        self.stream = None  # the MusicStream, once the first scene is known
        self.resampler = Resampler(pipeline.sample_rate, out_rate)
        self.ratio = out_rate / pipeline.sample_rate
        self.hop = pipeline.bundle.model.audio.hop_length
        self.stop_event = threading.Event()
        self._scene_lock = threading.Lock()
        self._pending: Scene | None = None
        self.scene: Scene | None = None
        self._applied = None  # (conditioning, mask) bound now
        self._transition = None  # (from, to, stage, stages)
        self.frames_done = 0
        self.music_samples = 0  # fresh samples submitted at the model rate
        self.embed_errors = 0
        self.rtf = 0.0
        self._step_seconds = 0.0
        self.busy_seconds = 0.0
        """Seconds the generator thread spent computing (transitions and chunks)."""

    # -- scene thread -----------------------------------------------------------
    def _scene_loop(self) -> None:
        last_id = None
        while not self.stop_event.is_set():
            frame, frame_id, age = self.source.latest()
            if frame is not None and frame_id != last_id:
                last_id = frame_id
                try:
                    if self.gate(frame, time.monotonic(), must=bool(self.tracker.candidates)):
                        self._embed(frame, time.monotonic() - age)
                except Exception as exc:  # a bad frame must not stop the music
                    self.embed_errors += 1
                    log.warning("embedding a frame failed: %s", exc)
            # until the first scene, look often: the music waits for it
            self.stop_event.wait(self.config.embed_interval if self.scene is not None else 0.02)

    def _embed(self, frame: np.ndarray, frame_time: float) -> None:
        pixels = preprocess_images([frame], self.pipeline.image_config)
        embedding = self.pipeline.embed_images(pixels)[0]  # (D_clip,)
        scene = self.tracker.update(embedding, frame_time)
        if scene is None:
            return
        cond, mask, directives = self.pipeline.project(scene[None])
        with self._scene_lock:
            self._pending = Scene(cond, mask, directives[0] if directives else None, self.tracker.change_started)
        log.info("scene change %d (distance %.3f)%s", self.tracker.changes, self.tracker.last_distance,
                 f": {directives[0]}" if directives else "")

    def _take_scene(self) -> Scene | None:
        with self._scene_lock:
            scene, self._pending = self._pending, None
        return scene

    # -- generator --------------------------------------------------------------
    def wait_for_first_scene(self) -> Scene:
        warned = time.monotonic()
        while not self.stop_event.is_set():
            scene = self._take_scene()
            if scene is not None:
                return scene
            if time.monotonic() - warned > 5:
                log.warning("waiting for a first frame from %s", self.source.source.name)
                warned = time.monotonic()
            time.sleep(0.02)
        raise KeyboardInterrupt

    def _apply(self, scene: Scene) -> None:
        """Start the transition to ``scene`` (called between chunks)."""
        c = self.config
        stages = max(1, math.ceil(c.transition_seconds * self.pipeline.frame_rate / c.chunk_frames))
        self._transition = (self._applied, (scene.conditioning, scene.mask), 0, stages)
        self.scene = scene
        start_sample = self.frames_done * self.hop * self.ratio
        self.playout.mark(int(start_sample), "scene", scene.started)

    def _advance_transition(self) -> None:
        start = time.perf_counter()
        old, new, stage, stages = self._transition
        stage += 1
        cond, mask = blend(old, new, stage / stages)
        if self.config.transition_mode == "reprime":
            self.stream.swap_conditioning(cond, mask)
        else:
            self.stream.blend_conditioning(cond, mask)
        self._applied = (cond, mask)
        self._transition = None if stage >= stages else (old, new, stage, stages)
        self.busy_seconds += time.perf_counter() - start

    def _target(self) -> float:
        """Buffer target, raised ahead of a window re-prime so its prefill is hidden."""
        target = self.config.buffer_seconds
        generator = self.stream.generator
        if generator.frames_until_reprime <= 2 * self.config.chunk_frames:
            estimate = generator.last_reprime_seconds
            if estimate is None:  # not measured yet: a prefill runs ~5x faster than steps
                estimate = 0.2 * self.window.keep_frames * self._step_seconds
            target += 1.25 * estimate
        return target

    def _chunk(self) -> int:
        chunk = self.config.chunk_frames
        return max(4, chunk // 2) if self.playout.level >= 1 else chunk

    def run(self) -> None:
        """Until ``duration`` is reached or :attr:`stop_event` is set (KeyboardInterrupt passes through)."""
        c = self.config
        self.source.start()
        scene_thread = threading.Thread(target=self._scene_loop, name="scene", daemon=True)
        scene_thread.start()
        try:
            first = self.wait_for_first_scene()
            self.scene, self._applied = first, (first.conditioning, first.mask)
            self.stream = self.pipeline.stream(conditioning=Conditioning(first.conditioning, first.mask),
                                               sampling=c.sampling, chunk_frames=c.chunk_frames, window=self.window)
            total = None if c.duration is None else int(round(c.duration * self.pipeline.sample_rate))
            while not self.stop_event.is_set():
                if total is not None and self.music_samples >= total:
                    break
                if self.playout.buffered() >= self._target():
                    time.sleep(0.005)
                    continue
                scene = self._take_scene()
                if scene is not None:
                    self._apply(scene)
                if self._transition is not None:
                    self._advance_transition()
                self._generate(self._chunk(), total)
            if total is not None and self.music_samples >= total:
                self._finish()  # exactly S seconds: the stream is cut there, not ended
        finally:
            self.stop_event.set()
            self.source.stop()
            scene_thread.join(timeout=5)

    def _generate(self, frames: int, total: int | None) -> None:
        start = time.perf_counter()
        audio = self.stream.next_chunk(frames).audio[0]
        self.frames_done += frames
        self._submit(audio, total)
        took = time.perf_counter() - start
        self.busy_seconds += took
        self._step_seconds = took / frames
        rtf = self._step_seconds * self.pipeline.frame_rate
        self.rtf = 0.8 * self.rtf + 0.2 * rtf if self.rtf else rtf  # moving average for the status line

    def _submit(self, audio: np.ndarray, total: int | None) -> None:
        if total is not None:
            audio = audio[: max(0, total - self.music_samples)]
        self.music_samples += len(audio)
        self.playout.submit(self.resampler(audio))

    def _finish(self) -> None:
        """Duration reached: the resampler's tail, then let the sink play everything out."""
        self.playout.submit(self.resampler(np.zeros(0, dtype=np.float32), last=True))
        self.playout.finish()
        deadline = time.monotonic() + self.playout.buffered() + 5
        while not self.playout.drained() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.playout.drained():
            raise Img2MusicError("the sink stopped draining audio")
