"""Writing audio files (soundfile) and choosing their names.

:class:`WavRecorder` appends as audio is made (``generate.py`` per chunk, the live
recorder per playout block): flushed every second, so the header stays valid, and
closed on exit, Ctrl-C or SIGTERM included.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from basics.errors import Img2MusicError


def prepare_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` (and parents) and check it is writable, before any work is done."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".img2music-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise Img2MusicError(f"cannot write to output directory {out}: {exc.strerror or exc}") from exc
    return out


def wav_names(image_paths: Sequence[str | os.PathLike]) -> list[str]:
    """``photo.jpg`` -> ``photo.wav``; repeated stems get ``-2``, ``-3``..."""
    seen: dict[str, int] = {}
    names = []
    for path in image_paths:
        stem = Path(path).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.wav" if seen[stem] == 1 else f"{stem}-{seen[stem]}.wav")
    return names


class WavRecorder:
    """Appends mono float32 audio to a WAV file; :meth:`close` finalizes it."""

    def __init__(self, path: str, rate: int, flush_every: float = 1.0) -> None:
        import soundfile

        try:
            self.file = soundfile.SoundFile(path, mode="w", samplerate=rate, channels=1, subtype="FLOAT")
        except (RuntimeError, OSError) as exc:  # soundfile raises LibsndfileError (a RuntimeError)
            raise Img2MusicError(f"cannot write {path}: {exc}") from None
        self.path, self.rate = path, rate
        self.samples = 0
        self._flush_every = int(flush_every * rate)
        self._since_flush = 0
        self._lock = threading.Lock()

    def write(self, audio: np.ndarray) -> None:
        with self._lock:
            if self.file.closed:
                return
            try:
                self.file.write(audio)
                self.samples += len(audio)
                self._since_flush += len(audio)
                if self._since_flush >= self._flush_every:
                    self.file.flush()  # rewrites the header: a killed process still leaves a valid WAV
                    self._since_flush = 0
            except (RuntimeError, OSError) as exc:  # a full disk is a LibsndfileError("System error.")
                raise Img2MusicError(f"cannot write {self.path}: {exc} (disk full?)") from None

    def close(self) -> None:
        with self._lock:
            if not self.file.closed:
                self.file.close()
