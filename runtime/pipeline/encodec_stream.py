"""Exact streaming EnCodec decode: carried LSTM state, held-back lookahead, no re-decoding.

EnCodec 32 kHz is not causal, yet a stream can equal the full decode (tested to >= 90 dB SNR):

- front (``encodec_stream_front.onnx``): codes -> embeddings -> first conv (kernel 7,
  3 frames each side, so it needs 3 future code frames) -> LSTM, whose (h, c) state is
  carried from chunk to chunk (the LSTM only looks back);
- back (``encodec_stream_back.onnx``): the upsampling stack on a window of LSTM frames;
  its receptive field is about one frame each side, so each window carries
  ``LEFT_CONTEXT`` frames before and ``RIGHT_CONTEXT`` after the frames it emits, and the
  context's audio is cropped away.

Audio therefore leaves ``3 + RIGHT_CONTEXT`` code frames (80 ms) behind the newest code
frame. The sequence edges reproduce the full decode's reflect padding: the first chunk
reflects the first code frames, :meth:`EncodecStreamDecoder.flush` the last ones.
Memory stays bounded: only the context frames are kept between chunks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from img2music.basics.errors import Img2MusicError

CONV_HALF_KERNEL = 3
"""Frames the first convolution reads on each side (kernel 7)."""
LEFT_CONTEXT = 2
"""LSTM frames kept before an emitted window."""
RIGHT_CONTEXT = 1
"""LSTM frames held back after an emitted window (lookahead)."""
LOOKAHEAD_FRAMES = CONV_HALF_KERNEL + RIGHT_CONTEXT

FrontFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
BackFn = Callable[[np.ndarray], np.ndarray]


class ChannelStreamDecoder:
    """A stereo MusicGen's stream: each channel's codebooks (k::C, even = left) decoded as its
    own mono row by one :class:`EncodecStreamDecoder` of batch B * C, as transformers decodes
    left and right apart. (B, K, T) codes -> (B, samples, C) audio."""

    def __init__(self, decoder: "EncodecStreamDecoder", channels: int) -> None:
        self.decoder, self.channels = decoder, channels

    def _rows(self, codes: np.ndarray) -> np.ndarray:
        b, k, t = codes.shape
        c = self.channels
        return codes.reshape(b, k // c, c, t).transpose(0, 2, 1, 3).reshape(b * c, k // c, t)  # (B*C, K/C, T)

    def _frames(self, audio: np.ndarray) -> np.ndarray:
        return audio.reshape(-1, self.channels, audio.shape[1]).transpose(0, 2, 1)  # (B*C, S) -> (B, S, C)

    def push(self, codes: np.ndarray) -> np.ndarray:
        return self._frames(self.decoder.push(self._rows(codes)))

    def flush(self) -> np.ndarray:
        return self._frames(self.decoder.flush())

    def reset(self) -> None:
        self.decoder.reset()


class EncodecStreamDecoder:
    """Feed code chunks with :meth:`push`, end with :meth:`flush`; audio comes out in order.

    ``front(codes (B, K, T), h, c) -> (lstm_frames (B, C, T - 6), h, c)`` runs the first
    conv without padding (the caller's window carries the context) and the LSTM;
    ``back(lstm_frames (B, C, W)) -> audio (B, W * hop)``.
    """

    def __init__(self, front: FrontFn, back: BackFn, lstm_state_shape: tuple[int, int, int], hop: int) -> None:
        self.front, self.back = front, back
        self.state_shape = lstm_state_shape  # (layers, B, C)
        self.hop = hop
        self.reset()

    def reset(self) -> None:
        layers, batch, channels = self.state_shape
        self.h = np.zeros((layers, batch, channels), dtype=np.float32)
        self.c = np.zeros_like(self.h)
        self.codes = None  # (B, K, n): code frames from index codes_start on
        self.codes_start = 0
        self.received = 0  # code frames pushed so far
        self.lstm = None  # (B, C, m): LSTM frames from index lstm_start on
        self.lstm_start = 0
        self.lstm_done = 0  # LSTM frames computed so far
        self.emitted = 0  # frames of audio emitted so far
        self.finished = False

    @property
    def batch(self) -> int:
        return self.state_shape[1]

    def push(self, codes: np.ndarray) -> np.ndarray:
        """(B, K, n) new code frames -> (B, samples) audio that is now final (may be empty)."""
        if self.finished:
            raise Img2MusicError("the stream was flushed; reset() before pushing again")
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 3 or codes.shape[0] != self.batch:
            raise Img2MusicError(f"codes must be (B={self.batch}, K, frames), got {codes.shape}")
        self.codes = codes if self.codes is None else np.concatenate([self.codes, codes], axis=2)
        self.received += codes.shape[2]
        self._run_front(self.received - CONV_HALF_KERNEL, end=False)
        return self._run_back(self.lstm_done - RIGHT_CONTEXT, end=False)

    def flush(self) -> np.ndarray:
        """The rest of the audio, with the full decode's reflect padding at the end."""
        if self.received < CONV_HALF_KERNEL + 1:
            raise Img2MusicError(f"a stream needs at least {CONV_HALF_KERNEL + 1} code frames")
        self._run_front(self.received, end=True)
        audio = self._run_back(self.lstm_done, end=True)
        self.finished = True
        return audio

    def _code_window(self, first: int, last: int, end: bool) -> np.ndarray:
        """Code frames first..last-1 (may run past both ends), reflected at the sequence edges."""
        n = self.received
        index = np.arange(first, last)
        index = np.where(index < 0, -index, index)  # reflect at the start (excludes frame 0)
        if end:
            index = np.where(index > n - 1, 2 * (n - 1) - index, index)  # reflect at the end
        if index.min() < self.codes_start or index.max() >= n:
            raise AssertionError("code window outside the kept buffer")
        return self.codes[:, :, index - self.codes_start]

    def _run_front(self, upto: int, end: bool) -> None:
        """Compute LSTM frames lstm_done..upto-1."""
        start = self.lstm_done
        if upto <= start or self.received < CONV_HALF_KERNEL + 1:
            return
        window = self._code_window(start - CONV_HALF_KERNEL, upto + CONV_HALF_KERNEL, end)
        frames, self.h, self.c = self.front(window, self.h, self.c)  # (B, C, upto - start)
        self.lstm = frames if self.lstm is None else np.concatenate([self.lstm, frames], axis=2)
        self.lstm_done = upto
        keep_from = max(0, upto - CONV_HALF_KERNEL)  # codes the next window still reads
        if keep_from > self.codes_start:
            self.codes = self.codes[:, :, keep_from - self.codes_start :]
            self.codes_start = keep_from

    def _run_back(self, upto: int, end: bool) -> np.ndarray:
        """Audio of frames emitted..upto-1."""
        if upto <= self.emitted:
            return np.zeros((self.batch, 0), dtype=np.float32)
        first = max(0, self.emitted - LEFT_CONTEXT)
        last = self.lstm_done if end else min(self.lstm_done, upto + RIGHT_CONTEXT)
        window = self.lstm[:, :, first - self.lstm_start : last - self.lstm_start]
        audio = self.back(window)  # (B, (last - first) * hop)
        lo = (self.emitted - first) * self.hop
        out = audio[:, lo : lo + (upto - self.emitted) * self.hop]
        self.emitted = upto
        keep_from = max(0, upto - LEFT_CONTEXT)
        if keep_from > self.lstm_start:
            self.lstm = self.lstm[:, :, keep_from - self.lstm_start :]
            self.lstm_start = keep_from
        return np.ascontiguousarray(out, dtype=np.float32)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of ``test`` against ``reference`` in dB (inf when equal)."""
    noise = np.sum((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2)
    signal = np.sum(np.asarray(reference, np.float64) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))


def onnx_stream_functions(front_session, back_session) -> tuple[FrontFn, BackFn]:
    """(front, back) callables over the bundle's two stream graphs."""

    def front(codes, h, c):
        frames, h_out, c_out = front_session.run(None, {"audio_codes": codes, "lstm_h": h, "lstm_c": c})
        return frames, h_out, c_out

    def back(frames):
        return back_session.run(None, {"lstm_frames": np.ascontiguousarray(frames)})[0][:, 0]

    return front, back
