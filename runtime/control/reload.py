"""Another engine bundle while the music plays (``POST /control {"bundle": "/path"}``).

:meth:`BundleReloader.reserve` runs in the requester's thread: the path must be a
directory whose manifest reads (sizes checked, no hashes: milliseconds) and describes the
same audio (sample rate, frame rate, codebooks) with room for this run's windows; anything
else is refused before a byte is loaded, and only one reload runs at a time. The loading
itself (every hash verified, sessions created with this run's provider, threads and
spinning) runs in a background thread while the old bundle keeps playing; on two cores it
competes with the decoder for a moment, which the playout's buffer absorbs. A bundle that
fails to load is logged and reported (``GET /control``, the status line, the page); the
music goes on with the old one. A loaded bundle is swapped in by the compute thread
between two actions (:meth:`BundleReloader.swap_if_ready`, ``LiveEngine.swap_pipeline``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from img2music.basics.errors import Img2MusicError
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.control.guard import loggable
from img2music.runtime.control.requests import ControlError

log = logging.getLogger(__name__)

SAME = (("audio", "sample_rate"), ("audio", "frame_rate"), ("audio", "hop_length"), ("audio", "channels"),
        ("decoder", "num_codebooks"))
"""Model facts a reloaded bundle must share with the running one: the playout, the
resampler and the recording carry on unchanged."""


def incompatibility(running, candidate, window_frames: int) -> str | None:
    """Why ``candidate`` (a ModelConfig) cannot replace ``running`` in this run, or None."""
    for part, name in SAME:
        old, new = getattr(getattr(running, part), name), getattr(getattr(candidate, part), name)
        if old != new:
            return f"its {part} {name} is {new}, this run's is {old}"
    if candidate.decoder.max_frames < window_frames:
        return f"its decoder holds {candidate.decoder.max_frames} frames, this run's windows go up to {window_frames}"
    return None


class BundleReloader:
    """One reload at a time: ``idle`` -> ``loading`` -> ``ready`` -> swapped (``idle``), or ``failed``."""

    def __init__(self, engine, load=None, root: str | None = None) -> None:
        self.engine = engine
        self.load = load or _load_like
        """(path, running pipeline) -> a new pipeline (tests replace it)."""
        self.root = None if root is None else Path(root).resolve()
        """Bundles are reloaded from inside this folder only (None: anywhere, for tests of the
        reload alone; a live session always gives one)."""
        self.state = "idle"
        self.path: str | None = None
        """The bundle being loaded, or the last one tried."""
        self.error: str | None = None
        """Why the last reload failed (None after a success)."""
        self.reloads = 0
        self.failures = 0
        self._ready = None
        self._lock = threading.Lock()

    def reserve(self, path: str) -> str:
        """In the requester's thread: check ``path`` and claim the one reload slot; returns the
        absolute path. Raises ``runtime.control.requests.ControlError`` (400 bad path, 403 outside
        the reload folder, 409 busy or incompatible)."""
        root = Path(path).expanduser()
        if self.root is not None and self.root not in root.resolve().parents:
            raise ControlError(f"bundle: reloads come from {self.root} only (--reload-dir)", status=403)
        if not root.is_dir():
            raise ControlError(f"bundle: no such directory: {loggable(path, 200)}")
        try:
            candidate = load_bundle(root, verify_hashes=False).model
        except Img2MusicError as exc:
            raise ControlError(f"bundle: {exc}") from None
        engine = self.engine
        limit = engine.budget.max_frames if engine.budget is not None else (
            engine.window.window_frames if engine.window is not None else 0)
        why = incompatibility(engine.pipeline.bundle.model, candidate, limit)
        if why is None and candidate.text is None and getattr(engine.prompt, "text", None) is not None:
            why = "a prompt is in force and it has no text encoder (clear the prompt first)"
        if why is not None:
            raise ControlError(f"bundle {path} does not fit this run: {why}", status=409)
        with self._lock:
            if self.state in ("loading", "ready"):
                raise ControlError(f"bundle {self.path} is still loading: one reload at a time", status=409)
            self.state, self.path, self.error = "loading", str(root.resolve()), None
        return self.path

    def start(self, path: str) -> None:
        """Load ``path`` (as :meth:`reserve` returned it) in a background thread."""
        threading.Thread(target=self._load, args=(path, self.engine.pipeline), name="bundle-reload",
                         daemon=True).start()

    def _load(self, path: str, running) -> None:
        try:
            pipeline = self.load(path, running)
        except Exception as exc:  # any failure leaves the old bundle playing
            with self._lock:
                self.state, self.error = "failed", str(exc)
                self.failures += 1
            log.error("bundle reload from %s failed, the music goes on with %s: %s", path, running.bundle.root, exc)
            return
        with self._lock:
            self._ready, self.state = pipeline, "ready"
        log.info("bundle %s loaded: swapping it in at the next chunk", path)

    def swap_if_ready(self) -> None:
        """In the compute thread, between actions: a loaded bundle takes over."""
        if self.state != "ready":
            return
        with self._lock:
            pipeline, self._ready = self._ready, None
        try:
            self.engine.swap_pipeline(pipeline)
        except Exception as exc:  # the new bundle would not start: keep playing the old one
            with self._lock:
                self.state, self.error = "failed", f"swapping in: {exc}"
                self.failures += 1
            log.error("bundle %s could not take over, the music goes on with the old one: %s", self.path, exc)
            return
        with self._lock:
            self.state = "idle"
            self.reloads += 1

    def status(self) -> dict:
        """What ``GET /control`` and the status show: the bundle playing and the last reload."""
        with self._lock:
            return {"bundle": str(self.engine.pipeline.bundle.root), "reload": self.state, "reload_path": self.path,
                    "reload_error": self.error}


def _load_like(path: str, running):
    """The bundle at ``path`` with the running pipeline's session options (provider, threads,
    spinning as they are now, CUDA graphs), every file's hash verified."""
    from img2music.runtime.pipeline.onnx_pipeline import OnnxPipeline

    o = running.options
    pipeline = OnnxPipeline.load(path, threads=o.threads, provider=o.provider, spinning=o.spinning,
                                 cuda_graph=o.cuda_graph, encodec=o.encodec, encodec_chunk=o.encodec_chunk)
    why = incompatibility(running.bundle.model, pipeline.bundle.model, 0)
    if why is not None:  # the manifest changed since the request was checked
        raise Img2MusicError(f"does not fit this run: {why}")
    return pipeline
