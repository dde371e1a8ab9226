"""Frame sources for the live runtime, and the thread that keeps one alive.

A source is anything whose ``open()`` returns a connection with ``read() -> frame or
None`` and ``release()`` (simple sources return themselves):
OpenCV captures (camera index, ``/dev/video*``, RTSP/HTTP URL, GStreamer pipeline),
a video file (looped), a folder of images (slideshow) or generated scenes.
:class:`SourceThread` reads it in a daemon thread and hands out the newest *good*
frame (RGB uint8) with its age. Nothing a source does is fatal to the music:

- ``read()`` that raises, returns ``None`` or returns garbage is counted and dropped
  (:func:`sanitize_frame` repairs what can be repaired: 1/4 channels, uint16/float,
  huge frames; drops the rest);
- a source that stops delivering or blocks is detected by the age of the last good
  frame (``stale_after``); its reader is abandoned (a blocked ``read()`` cannot be
  interrupted, so the old thread is left to release its connection whenever read()
  returns), and the source is reopened with exponential back-off, and the music goes on meanwhile from the
  last conditioning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from basics.errors import Img2MusicError

log = logging.getLogger(__name__)

MIN_SIDE = 16
"""Frames smaller than this on a side are dropped (nothing CLIP can use)."""
MAX_SIDE = 640
"""Larger frames are shrunk to this longest side: CLIP sees 224 px, and a 8K frame
held as the 'last good frame' would cost 100 MB."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class Connection(Protocol):
    def read(self) -> np.ndarray | None: ...
    def release(self) -> None: ...


class FrameSource(Protocol):
    name: str
    bgr: bool

    def open(self) -> Connection: ...


def _cv2():
    try:
        import cv2
    except ImportError:
        raise Img2MusicError("camera, video and image sources need OpenCV: pip install 'img2music[live]'") from None
    return cv2


def sanitize_frame(frame, bgr: bool = True) -> np.ndarray | None:
    """Any array a source may produce -> (H, W, 3) RGB uint8, or None when unusable."""
    if not isinstance(frame, np.ndarray) or frame.size == 0 or frame.ndim not in (2, 3):
        return None
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] not in (3, 4):
        return None
    h, w = frame.shape[:2]
    if min(h, w) < MIN_SIDE:
        return None
    if frame.dtype == np.uint8:
        pass
    elif frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            return None
        # floats in [0, 1] are the common convention; anything larger is taken as 0..255
        scale = 255.0 if float(frame.max(initial=0.0)) <= 1.0 else 1.0
        frame = np.clip(frame * scale, 0, 255).astype(np.uint8)
    else:
        return None  # bool, object, int64 counters...: not an image
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]  # alpha carries no scene
    if bgr:
        frame = frame[:, :, ::-1]
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        frame = _cv2().resize(np.ascontiguousarray(frame), size, interpolation=_cv2().INTER_AREA)
    return np.ascontiguousarray(frame)


class _Capture:
    """One opened cv2.VideoCapture."""

    def __init__(self, capture) -> None:
        self.capture = capture

    def read(self):
        ok, frame = self.capture.read()
        return frame if ok else None

    def release(self) -> None:
        self.capture.release()


class OpenCVSource:
    """A camera index, ``/dev/video*`` path, stream URL or GStreamer pipeline (contains '!')."""

    bgr = True

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.name = f"camera {spec}"

    def _open_capture(self):
        cv2 = _cv2()
        if self.spec.isdigit():
            capture = cv2.VideoCapture(int(self.spec))
        elif "!" in self.spec:
            capture = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        else:
            capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            hint = " (pip's OpenCV has no GStreamer; use JetPack's OpenCV)" if "!" in self.spec else ""
            raise OSError(f"cannot open {self.spec}{hint}")
        return capture

    def open(self) -> _Capture:
        return _Capture(self._open_capture())


class _PacedFile(_Capture):
    """A video file read at its own frame rate and rewound at the end."""

    def __init__(self, capture) -> None:
        super().__init__(capture)
        fps = capture.get(_cv2().CAP_PROP_FPS)
        self.period = 1.0 / fps if 1 <= fps <= 240 else 1 / 25
        self.next_time = time.monotonic()

    def read(self):
        delay = self.next_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_time = max(self.next_time + self.period, time.monotonic() - self.period)
        ok, frame = self.capture.read()
        if not ok:  # end of file: rewind
            self.capture.set(_cv2().CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        return frame if ok else None


class VideoFileSource(OpenCVSource):
    """A video file played at its own frame rate, looped at the end (installations run for days)."""

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise Img2MusicError(f"video file not found: {path}")
        super().__init__(path)
        self.name = f"video {Path(path).name}"

    def open(self) -> _PacedFile:
        return _PacedFile(self._open_capture())


class ImageFolderSource:
    """A slideshow: each image of a folder (sorted) for ``interval`` seconds, looped."""

    bgr = False

    def __init__(self, folder: str, interval: float = 10.0) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise Img2MusicError(f"image folder not found: {folder}")
        self.paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise Img2MusicError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        self.name = f"images {root}"
        self.interval = interval
        self.start = time.monotonic()
        self._shown: tuple[int, np.ndarray] | None = None  # decoded once per slide, not per frame

    def open(self):
        return self

    def read(self):
        from runtime.preprocess import load_image

        time.sleep(0.04)  # a camera-like frame rate; the content changes every interval
        index = int((time.monotonic() - self.start) / self.interval) % len(self.paths)
        if self._shown is None or self._shown[0] != index:
            # a corrupt file raises (every time it comes up): counted and dropped
            self._shown = (index, np.asarray(load_image(self.paths[index])))
        return self._shown[1]

    def release(self) -> None:
        pass


class SyntheticSource:
    """Generated scenes for machines without a camera: a new random scene (colour field
    and shapes) every ``scene_seconds``, with per-frame sensor noise (``noise``: its standard
    deviation in 0-255 units; 0 is a still camera with clean cuts)."""

    bgr = False

    def __init__(self, scene_seconds: float = 6.0, seed: int = 0, size: int = 160, fps: float = 25.0,
                 noise: float = 4.0) -> None:
        self.name = "synthetic scenes"
        self.scene_seconds, self.seed, self.size, self.period = scene_seconds, seed, size, 1.0 / fps
        self.start = time.monotonic()
        self._scene_index, self._scene = -1, None
        # Sensor noise from a few precomputed fields in turn: drawing 77k normals per frame at
        # 25 fps took ~5 % of a core, which a benchmark's generator would feel.
        rng = np.random.default_rng(seed + 10_000)
        self._noise = [rng.normal(0, noise, (size, size, 3)).astype(np.float32) for _ in range(8)]
        self._frames = 0

    def scene_at(self, index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index))
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[:, :, None]
        image = a * (1 - t) + b * t  # (S, S, 3) gradient
        for _ in range(int(rng.integers(2, 7))):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[inside] = rng.uniform(0, 255, 3)
        return image.astype(np.float32)

    def open(self):
        return self

    def read(self):
        time.sleep(self.period)
        index = int((time.monotonic() - self.start) / self.scene_seconds)
        if index != self._scene_index:
            self._scene_index, self._scene = index, self.scene_at(index)
        self._frames += 1
        noise = self._noise[self._frames % len(self._noise)]
        return np.clip(self._scene + noise, 0, 255).astype(np.uint8)

    def release(self) -> None:
        pass


def make_source(camera: str | None = None, video: str | None = None, images: str | None = None,
                synthetic: bool = False, interval: float = 10.0, scene_seconds: float = 6.0,
                seed: int = 0) -> FrameSource:
    """The one source the CLI flags name (exactly one must be given)."""
    given = [x for x in (camera, video, images) if x is not None] + ([True] if synthetic else [])
    if len(given) != 1:
        raise Img2MusicError("give exactly one source: --camera, --video, --images or --synthetic")
    if camera is not None:
        if camera.startswith("/dev/") and not os.path.exists(camera):
            raise Img2MusicError(f"camera device not found: {camera}")
        return OpenCVSource(camera)
    if video is not None:
        return VideoFileSource(video)
    if images is not None:
        return ImageFolderSource(images, interval)
    return SyntheticSource(scene_seconds, seed)


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
        self._stop = threading.Event()
        self._generation = 0
        self._bad_in_row = 0
        self._supervisor: threading.Thread | None = None

    def start(self) -> "SourceThread":
        self._supervisor = threading.Thread(target=self._supervise, name="source-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2)

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
        while not self._stop.is_set() and generation == self._generation:
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
        while not self._stop.is_set():
            try:
                connection = self.source.open()
            except Exception as exc:
                self.stats.open_failures += 1
                attempt += 1
                log.warning("%s: open failed (%s); retry %d in %.1f s", self.source.name, exc, attempt, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self._generation += 1
            generation, failed = self._generation, threading.Event()
            opened, frames_before, self._bad_in_row = time.monotonic(), self.stats.frames, 0
            reader = threading.Thread(target=self._read_loop, args=(connection, generation, failed), name="source-reader",
                                      daemon=True)
            reader.start()
            reason = None
            while not self._stop.is_set():
                if failed.is_set():
                    reason = f"{self.max_failures} bad reads in a row"
                    break
                with self._lock:
                    last = max(self._frame_time, opened)
                if time.monotonic() - last > self.stale_after:
                    why = f"{self._bad_in_row} bad reads in a row" if self._bad_in_row else "stalled or blocked"
                    reason = f"no good frame for {self.stale_after:.1f} s ({why})"
                    break
                self._stop.wait(0.05)
            self._generation += 1  # the reader sees it and stops; a blocked one is abandoned
            if reason is None:
                break
            if self.stats.frames > frames_before:
                delay = self.backoff_min  # this connection had worked: start the back-off again
            self.stats.reconnects += 1
            attempt += 1
            log.warning("%s: %s; reconnecting (attempt %d) in %.1f s", self.source.name, reason, attempt, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max)
