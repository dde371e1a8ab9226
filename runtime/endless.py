"""Endless generation: past MusicGen's trained length by re-priming a window.

MusicGen was trained on 30 s (1500 steps) and positions stop at 2048. Like audiocraft's
``extend_stride``, when the window is full the last ``keep_frames`` audio frames become
the prompt of a new window: they are laid out in the delay pattern behind a fresh start
token, prefilled into an empty cache in one run (``DecoderSession.prefill``), and
generation goes on; positions restart at 0, so the model never runs past its trained
length. While a codebook is still inside the prompt (the first K-1 steps after a
re-prime) its sampled token is replaced by the prompt's, as transformers does with a
prompt's delay-pattern mask. Frames come out once, in order, across windows.
"""

from __future__ import annotations

import time

import numpy as np

from runtime.decoder_session import DecoderSession
from runtime.errors import Img2MusicError
from runtime.logits_sampling import TokenSampler, apply_guidance, decoder_rows, with_null_branch
from runtime.sampling import SamplingConfig


class EndlessGenerator:
    """Generates audio frames without end for a batch of conditionings."""

    def __init__(self, decoder: DecoderSession, pad_id: int, window_frames: int = 1500, keep_frames: int = 600) -> None:
        k = decoder.shape.num_codebooks
        if not 0 < keep_frames < window_frames:
            raise Img2MusicError(f"keep_frames must be in (0, window_frames); got {keep_frames} of {window_frames}")
        if window_frames + k > decoder.shape.max_length:
            raise Img2MusicError(f"a window holds at most {decoder.shape.max_length - k} frames; got {window_frames}")
        self.decoder, self.pad_id, self.k = decoder, pad_id, k
        self.window_frames, self.keep_frames = window_frames, keep_frames
        self.reprimes = 0
        self.last_reprime_seconds: float | None = None

    def start(self, conditioning: np.ndarray, mask: np.ndarray, guidance: bool, seed: int = 0) -> None:
        """Begin a new piece for (B, N, D) conditioning (the cache starts empty)."""
        self.batch, self.guidance = conditioning.shape[0], guidance
        if guidance:
            conditioning, mask = with_null_branch(conditioning, mask)
        self.decoder.set_conditioning(conditioning, mask)
        self.sampler = TokenSampler(seed)
        self._new_window(prompt=np.zeros((self.batch, self.k, 0), dtype=np.int64))

    def swap_conditioning(self, conditioning: np.ndarray, mask: np.ndarray) -> None:
        """New conditioning, same music so far: the window's frames re-prime the new cache."""
        if self.guidance:
            conditioning, mask = with_null_branch(conditioning, mask)
        self.decoder.set_conditioning(conditioning, mask)
        self._reprime(self.frames[:, :, -min(self.keep_frames, self.frames.shape[2]):])

    def blend_conditioning(self, conditioning: np.ndarray, mask: np.ndarray) -> None:
        """New conditioning from the next step on, keeping the cache: cheap (one cross_kv
        run), so a live transition can move the conditioning a little every chunk."""
        if self.guidance:
            conditioning, mask = with_null_branch(conditioning, mask)
        self.decoder.set_conditioning(conditioning, mask, reset=False)

    @property
    def frames_until_reprime(self) -> int:
        """Steps left in this window before the next re-prime."""
        return self.sequence.shape[2] - 1 - self.t

    def _new_window(self, prompt: np.ndarray) -> None:
        """Delayed layout of a window starting with ``prompt`` (B, K, P) frames."""
        b, k, p = prompt.shape
        self.prompt_frames = p
        self.frames = prompt.copy()  # un-delayed frames of this window, prompt included
        length = self.window_frames + k
        self.sequence = np.full((b, k, length), self.pad_id, dtype=np.int64)  # (B, K, L), start token at 0
        for i in range(k):
            self.sequence[:, i, 1 + i : 1 + i + p] = prompt[:, i]
        self.t = 0  # last position written
        self.pending = None  # logits for position t + 1 from a prefill

    def _reprime(self, prompt: np.ndarray) -> None:
        self._new_window(prompt)
        p = prompt.shape[2]
        if p == 0:
            self.decoder.reset()
            return
        tokens = self.sequence[:, :, : p + 1]  # start token + codebook 0's prompt (others delayed)
        start = time.perf_counter()
        self.pending = self.decoder.prefill(decoder_rows(tokens, self.guidance)).copy()
        self.last_reprime_seconds = time.perf_counter() - start
        self.t = p
        self.reprimes += 1

    def _step(self, sampling: SamplingConfig) -> None:
        if self.t + 1 >= self.sequence.shape[2]:
            self._reprime(self.frames[:, :, -self.keep_frames:])
        if self.pending is not None:
            logits, self.pending = self.pending, None
        else:
            tokens = self.sequence[:, :, self.t]
            logits = self.decoder.step(decoder_rows(tokens, self.guidance))
        scores = apply_guidance(logits, self.batch, sampling.guidance_scale) if self.guidance else logits[: self.batch]
        new = self.sampler(scores, sampling)  # (B, K)
        pos = self.t + 1
        for i in range(self.k):
            frame = pos - 1 - i
            if frame < 0:
                new[:, i] = self.pad_id  # the start of the delay pattern
            elif frame < self.prompt_frames:
                new[:, i] = self.frames[:, i, frame]  # still inside the prompt
        self.sequence[:, :, pos] = new
        self.t = pos
        complete = pos - self.k  # codebook K-1 just wrote this frame
        if complete >= self.prompt_frames:
            frame = np.stack([self.sequence[:, i, complete + 1 + i] for i in range(self.k)], axis=1)  # (B, K)
            self.frames = np.concatenate([self.frames, frame[:, :, None]], axis=2)

    def next_frames(self, count: int, sampling: SamplingConfig) -> np.ndarray:
        """The next ``count`` complete frames (B, K, count), generating and re-priming as needed."""
        out = []
        while len(out) < count:
            before = self.frames.shape[2]
            self._step(sampling)
            if self.frames.shape[2] > before:
                out.append(self.frames[:, :, -1])
        return np.stack(out, axis=2)
