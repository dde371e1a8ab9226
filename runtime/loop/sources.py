"""Frame sources for the live runtime (runtime.loop.source_thread keeps one alive).

A source is anything whose ``open()`` returns a connection with ``read() -> frame or
None`` and ``release()`` (simple sources return themselves):
OpenCV captures (camera index, ``/dev/video*``, RTSP/HTTP URL, GStreamer pipeline),
a video file (looped), a folder of images (slideshow) or generated scenes.
:class:`runtime.loop.source_thread.SourceThread` reads it in a daemon thread and hands out the newest *good*
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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from img2music.basics.errors import Img2MusicError

if TYPE_CHECKING:
    from img2music.runtime.loop.config import SourceConfig

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
    # OpenCV's and FFmpeg's own lines ("[ WARN:0@0.046] global cap_v4l.cpp ...") would repeat
    # in the journal on every reopen; our source thread logs one line per failure instead.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
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
        from img2music.runtime.pipeline.preprocess import load_image

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


def default_fallback_image(size: int = 224) -> np.ndarray:
    """The picture the music starts from while the camera has nothing yet: a calm dusk
    gradient (deep blue above, warm orange at the horizon), RGB uint8 (size, size, 3)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]  # 0 at the top
    top, horizon = np.array([25, 35, 90], np.float32), np.array([235, 140, 70], np.float32)
    image = (1 - t) * top + t * horizon  # (size, 1, 3)
    return np.repeat(image, size, axis=1).astype(np.uint8)


def make_source(config: "SourceConfig") -> FrameSource:
    """The one source a :class:`~runtime.loop.config.SourceConfig` names (it checked that exactly one is given)."""
    if config.custom is not None:
        return config.custom
    if config.camera is not None:
        return OpenCVSource(config.camera)
    if config.video is not None:
        return VideoFileSource(config.video)
    if config.images is not None:
        return ImageFolderSource(config.images, config.interval)
    return SyntheticSource(config.scene_seconds, config.seed)
