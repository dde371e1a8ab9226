"""The one generation core: a decoder session in, audio code frames out.

Everything between the decoder's logits and the code frames lives here, once:
classifier-free guidance, sampling, MusicGen's delay pattern and the windows that take
generation past the trained length. Every caller goes through :class:`CodeGenerator`:
``generate.py`` and the live engine (through ``runtime.pipeline.music_stream``), the
benchmarks, the KV calibration and the accuracy report.

Delay pattern: codebook k lags k steps behind codebook 0. In a window whose position 0
is the start token, the step that writes position p gives codebook k its code for
frame p-1-k; the pad id goes where that frame does not exist (p <= k, the start) or lies
past the end of a fixed-length piece (transformers' ``build_delay_pattern_mask`` puts
pads there too, and the last K-1 steps see them as inputs: a fixed-length piece of F
frames equals transformers ``generate`` with ``max_length=F+K``, token for token).
One step completes one frame (codebook K-1's), after the first K-1. Stereo checkpoints
interleave left and right codebooks and delay each channel's like a mono piece
(``runtime.generation.delay_pattern``): read K as the delay span S = K / 2 in the arithmetic above.

Windows: MusicGen was trained on 30 s (1500 steps) and positions stop at 2048. When a
window is full, its last ``keep_frames`` frames become the prompt of the next, laid out
in the delay pattern behind a fresh start token and prefilled into an empty cache in
one run (``DecoderSession.prefill``), as audiocraft's ``extend_stride`` does; while a
codebook is still inside the prompt (the first K-1 steps), its sampled token is replaced
by the prompt's, as transformers does for an audio prompt. Frames come out once, in
order, across windows. A fixed-length piece is the same loop with an end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from img2music.basics.errors import Img2MusicError
from img2music.runtime.generation.decoder_session import DecoderSession
from img2music.runtime.generation.delay_pattern import check_frames, is_padding, written_frames
from img2music.runtime.generation.sampling import (
    SamplingConfig,
    TokenSampler,
    apply_guidance,
    decoder_rows,
    with_null_branch,
)


@dataclass(frozen=True)
class Windowing:
    """How long a window is, and how much of it primes the next."""

    window_frames: int = 1500
    """Frames per window (1500 = 30 s, MusicGen's trained length)."""
    keep_frames: int = 600
    """Frames of a full window carried into the next as its prompt (600 = 12 s: audiocraft's
    default extend_stride of 18 s over 30 s windows)."""

    @classmethod
    def from_seconds(cls, window_seconds: float, keep_seconds: float, frame_rate: int,
                     max_frames: int) -> "Windowing":
        """Seconds -> frames; the window capped by the decoder's positions, the prompt at half a window."""
        window = max(8, min(int(window_seconds * frame_rate), max_frames))
        return cls(window, max(1, min(int(keep_seconds * frame_rate), window // 2)))


class CodeGenerator:
    """Owns one decoder session and its cache; produces (B, K) code frames.

    ``start`` begins a piece (fixed length, or endless with ``frames=None``);
    ``next_frames`` hands out the next frames; the conditioning may be blended (cache
    kept) or swapped (window re-primed) between calls, and the sampling settings may
    change between calls. A new ``start`` ends the previous piece."""

    def __init__(self, decoder: DecoderSession) -> None:
        self.decoder = decoder
        config = decoder.config
        self.k, self.pad_id = config.num_codebooks, config.pad_token_id
        self._books = np.arange(self.k)  # (K,)
        self._delays = config.delays  # (K,) k, or k // 2 for stereo
        self.span = config.delay_span  # positions the delay pattern adds (K mono, K / 2 stereo)
        self.piece = 0
        """Increments at every start(): lets a stream notice that it was superseded."""
        self.reprimes = 0
        self.last_reprime_seconds: float | None = None
        self.batch = 0
        self.guidance = False

    # -- a piece ----------------------------------------------------------------
    def start(self, conditioning: np.ndarray, mask: np.ndarray, sampling: SamplingConfig,
              frames: int | None = None, window: Windowing | None = None, weight: np.ndarray | None = None) -> None:
        """Begin a piece for (B, N, D) conditioning + (B, N) mask (+ (B, N) token weights, see
        ``runtime.generation.conditioning``): ``frames`` frames, or endless with None. Guidance on or off is
        fixed here (the batch doubles); its scale is not."""
        window = window or Windowing()
        self._check_window(window)
        if frames is not None:
            check_frames(frames)
        self.batch, self.guidance = conditioning.shape[0], sampling.uses_guidance
        self.window, self.total = window, math.inf if frames is None else frames
        self.sampler = TokenSampler(sampling.seed)
        self.emitted = 0  # frames handed out since start()
        self.reprimes = 0
        self.piece += 1
        self._set_conditioning(conditioning, mask, reset=True, weight=weight)
        self._new_window(np.zeros((self.batch, self.k, 0), dtype=np.int64), window_start=0)

    def _check_window(self, window: Windowing) -> None:
        max_frames = self.decoder.config.max_frames
        if not 0 < window.keep_frames < window.window_frames:
            raise Img2MusicError(f"keep_frames must be in (0, window_frames); got {window.keep_frames} of "
                                 f"{window.window_frames}")
        if window.window_frames > max_frames:
            raise Img2MusicError(f"a window holds at most {max_frames} frames; got {window.window_frames}")

    def set_window(self, window: Windowing) -> None:
        """Another window length (the live context budget's): a window already past it ends at the
        next step (re-primed with the new prompt length), a longer one applies from the next window."""
        self._check_window(window)
        self.window = window

    def generate(self, conditioning: np.ndarray, mask: np.ndarray, frames: int, sampling: SamplingConfig,
                 on_step: Callable[[], None] | None = None, window: Windowing | None = None,
                 weight: np.ndarray | None = None) -> np.ndarray:
        """A whole fixed-length piece: (B, K, frames) codes."""
        self.start(conditioning, mask, sampling, frames=frames, window=window, weight=weight)
        return self.next_frames(frames, sampling, on_step)

    @property
    def done(self) -> bool:
        """A fixed-length piece has handed out all its frames."""
        return self.emitted >= self.total

    def next_frames(self, count: int, sampling: SamplingConfig,
                    on_step: Callable[[], None] | None = None) -> np.ndarray:
        """The next ``count`` frames (B, K, n): n == count, fewer only at a piece's end.
        ``on_step`` is called after every decoder pass."""
        if sampling.uses_guidance and not self.guidance:
            raise Img2MusicError("guidance was off at start(); start again with a guidance scale > 1")
        out = np.empty((self.batch, self.k, count), dtype=np.int64)  # (B, K, count)
        n = 0
        while n < count and not self.done:
            frame = self.step(sampling)
            if on_step is not None:
                on_step()
            if frame is not None:
                out[:, :, n] = frame
                n += 1
        return out[:, :, :n]

    def step(self, sampling: SamplingConfig) -> np.ndarray | None:
        """One decoder pass; returns the (B, K) frame it completed, or None (the first K-1
        steps of a window complete no new frame)."""
        if self.done:
            raise Img2MusicError("the piece is complete")
        if self.t + 1 >= min(self.sequence.shape[2], self.window.window_frames + self.span):
            self._reprime(self.frames[:, :, max(0, self.count - self.window.keep_frames) : self.count])
        if self._pending is not None:
            logits, self._pending = self._pending, None
        else:
            logits = self.decoder.step(decoder_rows(self.sequence[:, :, self.t], self.guidance))  # (B2, K, V)
        new = self.sampler(self._guided(logits, sampling.guidance_scale), sampling)  # (B, K)
        pos = self.t + 1
        local = written_frames(pos, self._delays)  # (K,) the window frame each codebook writes
        prompt = (local >= 0) & (local < self.prompt_frames)
        if prompt.any():
            new[:, prompt] = self.frames[:, self._books[prompt], local[prompt]]
        new[:, is_padding(self.window_start + local, self.total)] = self.pad_id
        self.sequence[:, :, pos] = new
        self.t = pos
        complete = pos - self.span  # the most delayed codebooks just wrote this frame
        if complete < self.prompt_frames:
            return None
        frame = self.sequence[:, self._books, complete + 1 + self._delays]  # (B, K)
        self.frames[:, :, self.count] = frame
        self.count += 1
        self.emitted += 1
        return frame

    # -- conditioning -----------------------------------------------------------
    def blend_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> None:
        """New conditioning from the next step on, keeping the cache: cheap (one cross_kv run),
        so a live transition can move the conditioning a little every chunk."""
        self._set_conditioning(conditioning, mask, reset=False, weight=weight)

    def swap_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, weight: np.ndarray | None = None) -> None:
        """New conditioning, same music so far: the window's last frames re-prime a new cache."""
        self._set_conditioning(conditioning, mask, reset=True, weight=weight)
        self._reprime(self.frames[:, :, max(0, self.count - self.window.keep_frames) : self.count])

    def _set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, reset: bool,
                          weight: np.ndarray | None) -> None:
        if conditioning.shape[0] != self.batch:
            raise Img2MusicError(f"conditioning for {conditioning.shape[0]} pieces, the piece has {self.batch}")
        if self.guidance:  # the null branch (zero states, zero mask) as rows B..2B-1, as transformers does
            conditioning, mask = with_null_branch(conditioning, mask)
            if weight is not None:  # the null rows are fully masked: their weights are never used
                weight = np.concatenate([weight, np.ones_like(weight)])
        self.decoder.set_conditioning(conditioning, mask, reset=reset, weight=weight)

    # -- windows ----------------------------------------------------------------
    @property
    def frames_until_reprime(self) -> int:
        """Steps left in this window before the next re-prime."""
        return min(self.sequence.shape[2], self.window.window_frames + self.span) - 1 - self.t

    @property
    def tokens(self) -> np.ndarray:
        """(B, K, t+1) the window's delayed decoder inputs so far (start token first): what a
        teacher-forced comparison feeds (calibration.accuracy)."""
        return self.sequence[:, :, : self.t + 1].copy()

    def _new_window(self, prompt: np.ndarray, window_start: int) -> None:
        """A window whose first frames are ``prompt`` (B, K, P), frame ``window_start`` of the piece."""
        b, k, p = prompt.shape
        w = self.window.window_frames
        self.frames = np.empty((b, k, w), dtype=np.int64)  # (B, K, W) un-delayed frames, prompt first
        self.frames[:, :, :p] = prompt
        self.count, self.prompt_frames, self.window_start = p, p, window_start
        self.sequence = np.full((b, k, w + self.span), self.pad_id, dtype=np.int64)  # (B, K, W+S), start at 0
        for i, d in enumerate(self._delays):
            self.sequence[:, i, 1 + d : 1 + d + p] = prompt[:, i]
        self.t = 0  # last position written
        self._pending = None  # logits for position t + 1 from a prefill

    def _reprime(self, prompt: np.ndarray) -> None:
        p = prompt.shape[2]
        self._new_window(prompt.copy(), self.window_start + self.count - p)
        if p == 0:
            self.decoder.reset()
            return
        tokens = self.sequence[:, :, : p + 1]  # start token + codebook 0's prompt (the others delayed)
        start = time.perf_counter()
        self._pending = self.decoder.prefill(decoder_rows(tokens, self.guidance)).copy()
        self.last_reprime_seconds = time.perf_counter() - start
        self.t = p
        self.reprimes += 1

    # -- teacher forcing and benchmarks -------------------------------------------
    def score(self, tokens: np.ndarray, guidance_scale: float) -> np.ndarray:
        """Teacher forcing: one decoder pass on given (B, K) tokens at the next cache position
        -> the guided (B, K, V) scores sampling would see. The generated sequence is left
        behind: start() again before generating."""
        return self._guided(self.decoder.step(decoder_rows(tokens, self.guidance)), guidance_scale)

    def seek(self, position: int) -> None:
        """Continue as if ``position`` steps had run in this window (benchmarks: the cache rows
        before it hold whatever is in memory, so the tokens are meaningless but the cost is real)."""
        if not 0 <= position < self.sequence.shape[2] - 1:
            raise Img2MusicError(f"position {position} is outside this window ({self.sequence.shape[2]} positions)")
        self.t, self._pending = position, None
        self.decoder.position = position

    def _guided(self, logits: np.ndarray, scale: float) -> np.ndarray:
        """(B2, K, V) logits -> (B, K, V) scores: ``uncond + g * (cond - uncond)`` under guidance."""
        return apply_guidance(logits, self.batch, scale) if self.guidance else logits[: self.batch]
