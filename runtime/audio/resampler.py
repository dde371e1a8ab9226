"""Model rate -> device rate with soxr's streaming resampler: no seams between chunks.

The live playout resamples before the ring (the sound card's rate); training and the
evaluation bring paired audio to a model's rate with the same class.
"""

from __future__ import annotations

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.audio.frames import frame_shape


class Resampler:
    """Streaming model-rate -> device-rate conversion (soxr, high quality)."""

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1) -> None:
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        self._stream = None
        if in_rate != out_rate:
            try:
                import soxr
            except ImportError:
                raise Img2MusicError(f"resampling {in_rate} -> {out_rate} Hz needs soxr: "
                                     "pip install 'img2music[live]'") from None
            # one stream for all channels: soxr takes (frames, channels) and keeps them in step
            self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality="HQ")

    def __call__(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """(S,) or (S, C) at ``in_rate`` -> the same channels at ``out_rate``."""
        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(frame_shape(-1, self.channels))
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio, last=last)
