"""Code frames -> exact streamed audio, chunk by chunk: the one chain every caller uses.

A :class:`MusicStream` couples the generation core (``runtime.generation.core``) with the
exact streaming EnCodec decoder (``runtime.pipeline.encodec_stream``): each chunk generates code
frames and decodes what is final of them. Iterating a fixed-length stream yields chunks
until the piece ends (the last one carries the decoder's held-back tail, so the
concatenated chunks equal a full decode of the piece); an endless stream goes on until
the caller stops. ``generate.py`` writes the chunks to WAV files as they come; the
live engine calls :meth:`MusicStream.next_chunk` with the chunk size its playout
needs and changes the conditioning between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.core import CodeGenerator
from img2music.runtime.generation.sampling import SamplingConfig
from img2music.runtime.pipeline.encodec_stream import ChannelStreamDecoder, EncodecStreamDecoder
from img2music.runtime.pipeline.timing import StageTimer


@dataclass
class AudioChunk:
    """What one chunk produced: audio that carries its own rate and channels (as Piper's chunks do)."""

    audio: np.ndarray
    """(B, samples) float32 audio that is final ((B, samples, 2) for stereo); it lags the codes by
    the decoder's lookahead."""
    codes: np.ndarray
    """(B, K, n) the code frames generated for this chunk."""
    last: bool
    """The end of a fixed-length piece (the decoder's tail is included)."""
    sample_rate: int
    """Samples per second of :attr:`audio` (32000 for MusicGen's EnCodec)."""
    channels: int
    """1 (mono: ``audio`` is (B, samples)) or 2 (stereo: (B, samples, 2))."""


class MusicStream:
    """Audio of a started piece, chunk by chunk (see the module docstring)."""

    def __init__(self, generator: CodeGenerator, encodec: "EncodecStreamDecoder | ChannelStreamDecoder",
                 sampling: SamplingConfig, sample_rate: int, channels: int = 1,
                 chunk_frames: int = 50, directives: list[str] | None = None, timer: StageTimer | None = None) -> None:
        self.generator, self.encodec = generator, encodec
        self.sample_rate, self.channels = sample_rate, channels
        self.sampling = sampling
        """May change between chunks (guidance scale, temperature...)."""
        self.chunk_frames = chunk_frames
        self.directives = directives
        """The prompt-bank directive chosen per piece (None for a trained projector)."""
        self.timer = timer or StageTimer()
        """Seconds in the decoder and in EnCodec, accumulated over the chunks."""
        self.on_step: Callable[[], None] | None = None
        """Called after every decoder pass (the live engine's heartbeat to the playout)."""
        self.finished = False
        self._piece = generator.piece

    def next_chunk(self, frames: int | None = None) -> AudioChunk:
        """Generate ``frames`` more code frames (default ``chunk_frames``; fewer at a piece's end)
        and decode what of them is final."""
        if self.finished:
            raise Img2MusicError("the piece is complete")
        self._check_current()
        with self.timer.stage("decoder"):
            codes = self.generator.next_frames(frames or self.chunk_frames, self.sampling, self.on_step)  # (B, K, n)
        with self.timer.stage("encodec"):
            audio = self.encodec.push(codes)  # (B, samples)
            if self.generator.done:
                audio = np.concatenate([audio, self.encodec.flush()], axis=1)
                self.finished = True
        return AudioChunk(audio, codes, self.finished, self.sample_rate, self.channels)

    def __iter__(self) -> Iterator[AudioChunk]:
        while not self.finished:
            yield self.next_chunk()

    def blend_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Steer from the next chunk on, keeping the music so far in the cache (CodeGenerator)."""
        self._check_current()
        self.generator.blend_conditioning(conditioning, mask, weight)

    def swap_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> None:
        """Re-prime a window from the music so far under the new conditioning (CodeGenerator)."""
        self._check_current()
        self.generator.swap_conditioning(conditioning, mask, weight)

    def _check_current(self) -> None:
        if self.generator.piece != self._piece:
            raise Img2MusicError("this stream's generator started another piece (one decoder cache per pipeline)")
