"""Writing audio files (soundfile) and choosing their names.

:class:`WavRecorder` appends as audio is made (``generate.py`` per chunk, the live
recorder per playout block): flushed every second, so the header stays valid, and
closed on exit, Ctrl-C or SIGTERM included.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from img2music.basics.errors import Img2MusicError


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


def read_mono(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """An audio file as float32 mono (channels averaged) and its rate; one clear error if unreadable."""
    import soundfile

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:
        raise Img2MusicError(f"cannot read audio {path}: {exc}") from None
    return audio.mean(axis=1), int(rate)


def printable(text: str | os.PathLike) -> str:
    """A file name as it can be printed and passed to libsndfile: bytes that are not UTF-8
    (kept by Python as surrogate escapes) become U+FFFD instead of a UnicodeEncodeError."""
    return os.fsencode(text).decode("utf-8", "replace")


def wav_names(image_paths: Sequence[str | os.PathLike]) -> list[str]:
    """``photo.jpg`` -> ``photo.wav``; a name already taken gets ``-2``, ``-3``... (also when
    an input's own stem is ``photo-2``): one distinct file per input, never an overwrite.
    Stems that are not valid UTF-8 get U+FFFD where the bad bytes were."""
    taken: set[str] = set()
    names = []
    for path in image_paths:
        stem = printable(Path(path).stem) or "image"
        name, n = f"{stem}.wav", 1
        while name.casefold() in taken:  # casefold: one file on case-insensitive file systems
            n += 1
            name = f"{stem}-{n}.wav"
        taken.add(name.casefold())
        names.append(name)
    return names


class WavRecorder:
    """Appends audio to a WAV file ((S,) mono, or (S, channels) frames); :meth:`close` finalizes it.

    ``subtype``: soundfile's sample format ("FLOAT": float32, what ``generate.py`` writes;
    "PCM_16": what every WAV reader, Python's ``wave`` included, reads). Every second the
    data is flushed and the header's RIFF and data sizes are rewritten to match, so a process
    killed without warning (SIGKILL, power loss) leaves a WAV that strict readers read up to
    the last flush: libsndfile itself only writes the sizes when the file is closed.
    A failed write (disk full) raises :class:`Img2MusicError` once and stops the recording:
    :attr:`failed` says why, :attr:`samples` what the file holds."""

    def __init__(self, path: str, rate: int, flush_every: float = 1.0, subtype: str = "FLOAT",
                 channels: int = 1) -> None:
        import soundfile

        try:
            self.file = soundfile.SoundFile(path, mode="w", samplerate=rate, channels=channels, subtype=subtype)
            self._header = open(path, "r+b")  # noqa: SIM115 - held open to patch the sizes
        except (RuntimeError, OSError) as exc:  # soundfile raises LibsndfileError (a RuntimeError)
            raise Img2MusicError(f"cannot write {printable(path)}: {exc}") from None
        self.path, self.rate, self.subtype = path, rate, subtype
        self.samples = 0
        self.failed: str | None = None
        self._flush_every = int(flush_every * rate)
        self._since_flush = 0
        self._data_offset: int | None = None
        self._lock = threading.Lock()

    def write(self, audio: np.ndarray) -> None:
        with self._lock:
            if self.file.closed:
                return
            if self.subtype.startswith("PCM"):
                audio = np.clip(audio, -1.0, 1.0)  # integer samples wrap around instead of clipping
            try:
                self.file.write(audio)
                self.samples += len(audio)
                self._since_flush += len(audio)
                if self._since_flush >= self._flush_every:
                    self.file.flush()
                    self._patch_sizes()
                    self._since_flush = 0
            except (RuntimeError, OSError) as exc:  # a full disk is a LibsndfileError("System error.")
                self.failed = f"cannot write {printable(self.path)}: {_reason(exc)}"
                self._close()
                raise Img2MusicError(self.failed) from None

    def _patch_sizes(self) -> None:
        """RIFF size and data size as the file stands now (the data chunk comes last)."""
        f = self._header
        if self._data_offset is None:
            f.seek(12)  # after "RIFF", size, "WAVE"
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return  # no data chunk yet: nothing to patch
                chunk, size = head[:4], struct.unpack("<I", head[4:])[0]
                if chunk == b"data":
                    self._data_offset = f.tell()
                    break
                f.seek(size + (size & 1), os.SEEK_CUR)
        end = f.seek(0, os.SEEK_END)
        f.seek(4)
        f.write(struct.pack("<I", end - 8))
        f.seek(self._data_offset - 4)
        f.write(struct.pack("<I", end - self._data_offset))
        f.flush()

    def _close(self) -> None:
        if not self._header.closed:
            self._header.close()
        if not self.file.closed:
            try:
                self.file.close()  # writes the final header
            except (RuntimeError, OSError):
                pass  # the disk is full: the sizes patched at the last flush stand

    def close(self) -> None:
        with self._lock:
            self._close()


def _reason(exc: Exception) -> str:
    """libsndfile reports a full disk as "System error."; say what it is."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    text = str(exc)
    return f"{text} (disk full?)" if "System error" in text else text
