"""Writing audio files (soundfile) and choosing their names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import Img2MusicError


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


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Mono float32 WAV (no clipping or dither, so files compare exactly across backends)."""
    import soundfile as sf

    path = Path(path)
    try:
        sf.write(str(path), np.asarray(audio, dtype=np.float32), sample_rate, subtype="FLOAT")
    except (OSError, RuntimeError) as exc:
        raise Img2MusicError(f"cannot write {path}: {exc}") from exc
    return path
