"""The live loop: frames -> scenes -> endless tokens -> streamed audio -> sound card / WAV.

Threads at the edges: the source (runtime.loop.source_thread), the playout feeder
(runtime.audio.playout), the sink (runtime.audio.sinks), the status reporter; the compute thread
checks them between its actions (runtime.loop.thread_watch) and ends the run when one died. Everything that computes runs in one
thread, the caller's (so Ctrl-C lands where the state is): looks at the newest frame
(thumbnail gate, CLIP, scene tracking) and music chunks, one at a time. On two cores two
models running at once would each get half the cores and their thread pools would fight
over them; one at a time, each gets both. :func:`next_action` decides what comes next:
music while the buffer is under its target, a look when one is due (a look that is
overdue comes first, so scene changes are still seen while generation is behind), and
otherwise a wait for exactly as long as the buffer has to spare, not a polling loop.

The window is chosen at start-up by the context budget (runtime.loop.budget) from what a
step costs on this machine, and re-chosen while running when the machine slows down or
recovers; ``window_seconds`` / ``keep_seconds`` fix it instead. When the playout falls
behind (its level >= 1) the chunks get longer, which costs less per second of music;
the playout itself repeats recent music rather than going silent (runtime.audio.playout).

Transitions: a confirmed scene change moves the conditioning from the old scene to the
new one in ``transition_seconds``, one step per second of music, by linear interpolation of the
T5-space conditioning, **keeping the decoder's KV cache** (one cross_kv run per chunk,
a few ms). The music so far stays in the cache, so the melody carries on while the
cross-attention is steered. Measured alternatives (benchmarks/bench_live.py):
re-priming the window on every chunk of a transition costs a prefill of ``keep``
frames each time (seconds on CPU), and crossfading two streams doubles the decoder's
work for the whole transition — neither fits a two-core real-time budget.
``transition_mode="reprime"`` keeps the re-prime path for comparison.

Pause, resume and fade out (runtime.loop.transport) shape the audio submitted; while
paused no decoder runs and silence keeps the buffer full. A reloaded bundle
(runtime.control.reload) takes over between two actions (:meth:`LiveEngine.swap_pipeline`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.audio import frames as audio_frames
from img2music.runtime.audio.playout import Playout
from img2music.runtime.audio.resampler import Resampler
from img2music.runtime.generation.conditioning import Conditioning
from img2music.runtime.generation.core import Windowing
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.loop.budget import ContextBudget, describe_start, start_window
from img2music.runtime.loop.config import EngineConfig
from img2music.runtime.loop.prompt import LivePrompt
from img2music.runtime.loop.scene import FrameGate, Scene, SceneTracker, blend
from img2music.runtime.loop.source_thread import SourceThread
from img2music.runtime.loop.sources import default_fallback_image
from img2music.runtime.loop.thread_watch import ThreadWatch
from img2music.runtime.loop.transport import Transport
from img2music.runtime.pipeline.encodec_stream import LOOKAHEAD_FRAMES
from img2music.runtime.pipeline.preprocess import preprocess_images

log = logging.getLogger(__name__)

MAX_LOOK_DELAY = 0.5
"""Seconds a due look may wait for music chunks while generation is behind."""
MAX_CHUNK_FRAMES = 100
"""Longest chunk when behind (2 s)."""
TRANSITION_STEP_SECONDS = 1.0
"""Music between two steps of a transition: each step is a cross_kv run (~60 ms on two
cores), so one per second rather than one per chunk; four 1 s steps still sound gradual."""
PAUSED_WAKE = 0.05
"""Seconds the compute thread sleeps between looks at the buffer and the control while paused."""


def next_action(now: float, buffered: float, target: float, next_look: float) -> tuple[str, float]:
    """('look' | 'generate' | 'wait', seconds to wait): what the compute thread does next."""
    if now >= next_look + MAX_LOOK_DELAY:
        return "look", 0.0
    if buffered < target:
        return "generate", 0.0
    if now >= next_look:
        return "look", 0.0
    return "wait", max(0.002, min(next_look - now, buffered - target))


class LiveEngine:
    """Runs one live session on an OnnxPipeline; ``sink`` drains ``playout.ring``. ``report``
    gets the start-up choices (the window) as one line (default: the log)."""

    def __init__(self, pipeline, source: SourceThread, config: EngineConfig, playout: Playout, out_rate: int, *,
                 fallback: np.ndarray | None = None, report: Callable[[str], None] | None = None,
                 watch: ThreadWatch | None = None, control: Callable[["LiveEngine"], object] | None = None,
                 observe_step: Callable[[float], None] | None = None) -> None:
        self.pipeline, self.config, self.playout, self.source = pipeline, config, playout, source
        self.report = report or log.info
        self.fallback = default_fallback_image() if fallback is None else fallback
        """(H, W, 3) RGB: the picture the music starts from while the source has no frame."""
        self.sampling = config.sampling
        """The sampling in use: the config's at the start, control requests' from then on."""
        self.tracker = SceneTracker(config.scene)
        self.gate = FrameGate(config.scene)
        self.budget: ContextBudget | None = None
        self.window: Windowing | None = None  # chosen at start-up
        self.stream = None  # the MusicStream, once the first scene is known
        self.channels = pipeline.channels  # 2 for a stereo bundle: every chunk is (S, 2) from here on
        self.resampler = Resampler(pipeline.sample_rate, out_rate, self.channels)
        self.ratio = out_rate / pipeline.sample_rate
        self.hop = pipeline.bundle.model.audio.hop_length
        self.stop_event = threading.Event()
        self._pending: Scene | None = None
        self.scene: Scene | None = None
        self._applied = None  # (conditioning, mask, weight) bound now
        self._transition = None  # (from, to, stage, stages)
        self._next_stage_frame = 0
        self._next_look = 0.0
        self._last_frame_id = None
        self.frames_done = 0
        self.music_samples = 0  # fresh samples submitted at the model rate
        self.transport = Transport(pipeline.sample_rate)
        self.prompt = LivePrompt(config.prompt, config.prompt_weight)
        """Pause / resume / fade out (runtime.loop.transport), applied to every chunk submitted."""
        self.embed_errors = 0
        self.fallback_used = False
        self.control = None if control is None else control(self)
        """The control queue (runtime.control.dispatcher.LiveControl, made by ``control(engine)``)
        whose requests are applied between actions, or None."""
        self.observe_step = observe_step
        """Called with each decoder pass's seconds (sampling included), or None."""
        self._last_step = 0.0
        self.watch = watch
        """The thread watch of the edge threads, checked between actions (None: unchecked)."""
        self.rtf = 0.0
        self._step_seconds = 0.0
        self.compute = {"look": 0.0, "transition": 0.0, "chunk": 0.0}
        """Seconds the compute thread spent on each kind of work."""

    @property
    def busy_seconds(self) -> float:
        """Seconds the compute thread spent computing (looks, transitions, chunks)."""
        return sum(self.compute.values())

    # -- looking at frames ----------------------------------------------------------
    def _look(self, now: float, interval: float) -> None:
        """The newest frame, if new: thumbnail gate, then CLIP and the scene tracker."""
        self._next_look = now + interval
        frame, frame_id, age = self.source.latest()
        if frame is None or frame_id == self._last_frame_id:
            return
        self._last_frame_id = frame_id
        start = time.perf_counter()
        try:
            if self.gate(frame, now, must=bool(self.tracker.candidates)):
                self._embed(frame, now - age)
        except Exception as exc:  # a bad frame must not stop the music
            self.embed_errors += 1
            log.warning("embedding a frame failed: %s", exc)
        self.compute["look"] += time.perf_counter() - start

    def _embed(self, frame: np.ndarray, frame_time: float, force: bool = False) -> None:
        pixels = preprocess_images([frame], self.pipeline.image_config)
        embedding = self.pipeline.embed_images(pixels)[0]  # (D_clip,)
        scene = self.tracker.force(embedding, frame_time) if force else self.tracker.update(embedding, frame_time)
        if scene is None:
            return
        cond, mask, directives = self.pipeline.project(scene[None])
        self._pending = self.prompt.scene(self.pipeline, cond, mask, directives[0] if directives else None,
                                          self.tracker.change_started)
        log.info("scene change %d (distance %.3f)%s", self.tracker.changes, self.tracker.last_distance,
                 f": {directives[0]}" if directives else "")

    def force_scene(self) -> None:
        """The newest frame becomes the scene now (``POST /control {"scene": "now"}``)."""
        frame, _, age = self.source.latest()
        if frame is not None:
            self._embed(frame, time.monotonic() - age, force=True)

    def set_prompt(self, **fields) -> None:
        """New prompt ``text`` (None clears) and/or ``weight``: the current scene re-composed, with
        the usual transition (``runtime.loop.prompt``)."""
        scene = self.prompt.change(self.pipeline, self._pending or self.scene, **fields)
        if scene is not None:
            self._pending = scene

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """New sampling settings from the next chunk on (guidance on/off stays as started)."""
        self.sampling = sampling
        if self.stream is not None:
            self.stream.sampling = sampling

    def _take_scene(self) -> Scene | None:
        scene, self._pending = self._pending, None
        return scene

    def wait_for_first_scene(self) -> Scene:
        """Look often until a frame makes the first scene; after ``first_frame_wait`` seconds
        without one (camera missing, stream down at start) the fallback image makes it, so
        the music starts anyway, and the camera takes over as a scene change once it delivers."""
        started = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            self._look(now, 0.02)
            scene = self._take_scene()
            if scene is not None:
                return scene
            if now - started >= self.config.first_frame_wait:
                log.warning("no frame from %s after %.0f s (%s): playing from the fallback image until it delivers",
                            self.source.source.name, self.config.first_frame_wait, self.source.state)
                self.fallback_used = True
                self._embed(self.fallback, now)
                scene = self._take_scene()
                if scene is not None:
                    return scene
            self.stop_event.wait(0.02)
        raise KeyboardInterrupt

    # -- music --------------------------------------------------------------------
    def _choose_window(self, first: Scene) -> Windowing:
        """The context budget's choice from this machine's step costs, or the configured window."""
        c, p = self.config, self.pipeline
        configured = None
        if c.window_seconds is not None or c.keep_seconds is not None:
            configured = Windowing.from_seconds(30.0 if c.window_seconds is None else c.window_seconds,
                                                5.0 if c.keep_seconds is None else c.keep_seconds, p.frame_rate,
                                                p.bundle.model.decoder.max_frames)
        start = time.perf_counter()
        window, rtf, costs, self.budget, source = start_window(p, first.conditioning, first.mask, self.sampling,
                                                                 configured, chunk_frames=c.chunk_frames)
        self.report(describe_start(costs, window, rtf, p.frame_rate, time.perf_counter() - start,
                                   configured is not None, source, p.encodec_choice["front"]))
        return window

    def _apply(self, scene: Scene) -> None:
        """Start the transition to ``scene`` (called between chunks)."""
        c = self.config
        stages = max(1, math.ceil(c.transition_seconds / TRANSITION_STEP_SECONDS))
        self._transition = (self._applied, scene.bound, 0, stages)
        self._next_stage_frame = self.frames_done
        self.scene = scene
        self.playout.mark(self._fresh_position(), "scene", scene.started)

    def _fresh_position(self) -> int:
        """Where the next code frame's audio starts among the fresh samples (device rate)."""
        return int((self.frames_done * self.hop + self.transport.silence_samples) * self.ratio)

    def _advance_transition(self) -> None:
        start = time.perf_counter()
        old, new, stage, stages = self._transition
        stage += 1
        cond, mask, weight = self._applied = blend(old, new, stage / stages)
        if self.config.transition_mode == "reprime":
            self.stream.swap_conditioning(cond, mask, weight)
        else:
            self.stream.blend_conditioning(cond, mask, weight)
        self._transition = None if stage >= stages else (old, new, stage, stages)
        self.compute["transition"] += time.perf_counter() - start

    def _target(self) -> float:
        """Buffer target, raised ahead of a window re-prime so its prefill is hidden."""
        target = self.config.buffer_seconds
        generator = self.stream.generator
        if generator.frames_until_reprime <= 2 * self._chunk():
            estimate = generator.last_reprime_seconds
            if estimate is None:  # not measured yet: a prefill runs ~5x faster than steps
                estimate = 0.2 * self.window.keep_frames * self._step_seconds
            target += 1.25 * estimate
        return target

    def _chunk(self) -> int:
        """Longer chunks while behind: fewer calls, less per second of music. The first chunk is
        just the pre-roll (and the streaming decoder's lookahead): the sound starts after one chunk."""
        chunk = self.config.chunk_frames
        if self.frames_done == 0:
            preroll = min(self.config.preroll_seconds, self.config.buffer_seconds)
            return min(MAX_CHUNK_FRAMES, math.ceil(preroll * self.pipeline.frame_rate) + LOOKAHEAD_FRAMES)
        return min(MAX_CHUNK_FRAMES, 2 * chunk) if self.playout.level >= 1 else chunk

    def run(self) -> None:
        """Until ``duration`` is reached or :attr:`stop_event` is set (KeyboardInterrupt passes through)."""
        c = self.config
        self.source.start()
        if self.watch is not None:
            self.watch.watch("source", self.source.background.thread)
        try:
            first = self.wait_for_first_scene()
            self.scene, self._applied = first, first.bound
            self.window = self._choose_window(first)
            self.stream = self._start_stream(first)
            total = None if c.duration is None else int(round(c.duration * self.pipeline.sample_rate))
            while not self.stop_event.is_set():
                if total is not None and self.audio_samples >= total:
                    break
                if self.watch is not None:
                    self.watch.check()  # a dead or hung thread ends the run, non-zero
                if self.control is not None:
                    self.control.apply_pending()  # also swaps in a reloaded bundle
                if self.transport.paused:
                    self._paused_tick(total)
                    continue
                now = time.monotonic()
                action, wait = next_action(now, self.playout.buffered(), self._target(), self._next_look)
                if action == "look":
                    self._look(now, c.embed_interval)
                elif action == "wait":
                    self.stop_event.wait(wait)
                else:
                    scene = self._take_scene()
                    if scene is not None:
                        self._apply(scene)
                    if self._transition is not None and self.frames_done >= self._next_stage_frame:
                        self._advance_transition()
                        self._next_stage_frame = self.frames_done + TRANSITION_STEP_SECONDS * self.pipeline.frame_rate
                    self._generate(self._chunk(), total)
            if total is not None and self.audio_samples >= total:
                self._finish()  # exactly S seconds: the stream is cut there, not ended
        finally:
            self.stop_event.set()
            self.source.stop()

    def _start_stream(self, scene: Scene):
        stream = self.pipeline.stream(conditioning=Conditioning(scene.conditioning, scene.mask, weight=scene.weight),
                                      sampling=self.sampling, chunk_frames=self.config.chunk_frames,
                                      window=self.window)
        stream.on_step = self._on_step
        return stream

    def swap_pipeline(self, pipeline) -> None:
        """A reloaded bundle (runtime.control.reload) takes over at this chunk boundary: a new piece
        from the newest frame embedded by its CLIP and projector (another decoder cannot go on
        from this one's cache), crossfaded onto the old stream's last audio."""
        frame, _, age = self.source.latest()
        old, self.pipeline = self.pipeline, pipeline
        try:
            self._embed(self.fallback if frame is None else frame, time.monotonic() - age, force=True)
            scene = self._take_scene()
            stream = self._start_stream(scene)
        except Exception:
            self.pipeline = old
            raise
        try:
            tail = self.stream.encodec.flush()[0]  # the old stream's held-back last audio
        except Img2MusicError:  # no chunk generated yet: nothing held back
            tail = np.zeros(0, np.float32)
        self.stream, self.scene, self._applied, self._transition = stream, scene, scene.bound, None
        self.transport.crossfade_from(tail)
        self.playout.mark(self._fresh_position(), "bundle", scene.started)
        log.info("bundle %s took over: a new piece from the newest frame%s", pipeline.bundle.root,
                 f": {scene.directive}" if scene.directive else "")

    def _paused_tick(self, total: int | None) -> None:
        """Paused: no decoder, no looks. Silence keeps the buffer at its target, so the sound card,
        the playout's ladder, the watchdog and the recording see audio flowing."""
        short = self.config.buffer_seconds - self.playout.buffered()
        if short > 0:
            frames = int(short * self.pipeline.sample_rate) + self.hop
            self._submit(audio_frames.silence(frames, self.channels), total, silence=True)
        self.stop_event.wait(PAUSED_WAKE)

    @property
    def audio_samples(self) -> int:
        """Samples submitted at the model rate: music, and silence while paused (``duration`` counts both)."""
        return self.music_samples + self.transport.silence_samples

    def _on_step(self) -> None:
        """After every decoder pass: the playout's heartbeat (slow is not stalled: no silence
        while steps come) and the step's latency to :attr:`observe_step` (``--http``)."""
        now = time.perf_counter()
        if self.observe_step is not None:
            self.observe_step(now - self._last_step)
        self._last_step = now
        self.playout.progress()

    def _generate(self, frames: int, total: int | None) -> None:
        start = self._last_step = time.perf_counter()
        audio = self.stream.next_chunk(frames).audio[0]
        self.frames_done += frames
        self._submit(audio, total)
        took = time.perf_counter() - start
        self.compute["chunk"] += took
        self._step_seconds = took / frames
        rtf = self._step_seconds * self.pipeline.frame_rate
        self.rtf = 0.8 * self.rtf + 0.2 * rtf if self.rtf else rtf  # moving average for the status line
        if self.budget is not None:
            window = self.budget.observe(took, frames / self.pipeline.frame_rate, behind=self.playout.level >= 1)
            if window is not None:
                self.stream.generator.set_window(window)
                self.window = window

    def _submit(self, audio: np.ndarray, total: int | None, silence: bool = False) -> None:
        if total is not None:
            audio = audio[: max(0, total - self.audio_samples)]
        if silence:
            self.transport.silence_samples += len(audio)
        else:
            self.music_samples += len(audio)
        self.playout.submit(self.resampler(self.transport.shape(audio)))

    def _finish(self) -> None:
        """Duration reached: the resampler's tail, then let the sink play everything out."""
        self.playout.submit(self.resampler(audio_frames.silence(0, self.channels), last=True))
        self.playout.finish()
        deadline = time.monotonic() + self.playout.buffered() + 5
        while not self.playout.drained() and time.monotonic() < deadline:
            if self.watch is not None:
                self.watch.check()
            time.sleep(0.01)
        if not self.playout.drained():
            raise Img2MusicError("the sink stopped draining audio")
