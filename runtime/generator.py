"""The MusicGen generation loop on the exported decoder: delay pattern, guidance, sampling.

numpy + onnxruntime only. The guidance scale and the other sampling settings may
change between calls of :meth:`MusicGenerator.step` (e.g. between chunks); the
conditioning may be swapped with :meth:`MusicGenerator.set_conditioning` without
rebuilding any session.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.decoder_session import DecoderSession
from runtime.delay_pattern import apply_delay_pattern, check_frames, delay_pattern_mask, undelay
from runtime.errors import Img2MusicError
from runtime.logits_sampling import TokenSampler, apply_guidance, decoder_rows, with_null_branch
from runtime.sampling import SamplingConfig


class MusicGenerator:
    """Generates audio codes for a batch of conditionings."""

    def __init__(self, decoder: DecoderSession, pad_id: int) -> None:
        self.decoder = decoder
        self.pad_id = pad_id
        self.num_codebooks = decoder.shape.num_codebooks
        self.batch = 0
        self.guidance = False

    def set_conditioning(self, conditioning: np.ndarray, mask: np.ndarray, guidance: bool) -> None:
        """(B, N, D_t5) conditioning + (B, N) mask. With guidance the null branch (zero
        states, zero mask) is appended as rows B..2B-1, as transformers does."""
        self.batch = conditioning.shape[0]
        self.guidance = guidance
        if guidance:
            conditioning, mask = with_null_branch(conditioning, mask)
        self.decoder.set_conditioning(conditioning, mask)

    def begin(self, frames: int, seed: int) -> None:
        """Start a sequence that will hold ``frames`` audio frames."""
        k = self.num_codebooks
        check_frames(frames)
        length = frames + k
        if length - 1 > self.decoder.shape.max_length:
            raise Img2MusicError(
                f"one sequence holds at most {self.decoder.shape.max_length - k + 1} frames; asked for {frames}"
            )
        self.length = length
        self.pattern = delay_pattern_mask(k, length, self.pad_id)  # (K, L)
        self.sequence = np.full((self.batch, k, length), self.pad_id, dtype=np.int64)  # (B, K, L)
        self.t = 0
        self.sampler = TokenSampler(seed)
        self.decoder.reset()

    def seek(self, position: int) -> None:
        """Continue as if ``position`` steps had run (benchmarks: the cache rows before it
        hold whatever is in memory, so the tokens are meaningless but the cost is real)."""
        if not 0 <= position < self.length - 1:
            raise Img2MusicError(f"position {position} is outside this sequence (length {self.length})")
        self.t = position
        self.decoder.position = position

    @property
    def steps_left(self) -> int:
        return self.length - 1 - self.t

    def step(self, sampling: SamplingConfig) -> np.ndarray:
        """One decoder pass: returns the (B, K) tokens written at position t+1."""
        if self.steps_left <= 0:
            raise Img2MusicError("the sequence is complete")
        tokens = self.sequence[:, :, self.t]  # (B, K), delay pattern already applied
        logits = self.decoder.step(decoder_rows(tokens, self.guidance))  # (B2, K, V)
        if self.guidance:
            scores = apply_guidance(logits, self.batch, sampling.guidance_scale)
        else:
            scores = logits[: self.batch]
        new = self.sampler(scores, sampling)  # (B, K)
        self.t += 1
        self.sequence[:, :, self.t] = apply_delay_pattern(new[:, :, None], self.pattern[:, self.t : self.t + 1])[:, :, 0]
        return self.sequence[:, :, self.t]

    def codes(self) -> np.ndarray:
        """(B, K, F) un-delayed codes of the finished sequence."""
        return undelay(self.sequence, self.num_codebooks)

    def generate(self, frames: int, sampling: SamplingConfig, on_step: Callable[[], None] | None = None) -> np.ndarray:
        """All steps for ``frames`` frames -> (B, K, frames) codes."""
        if self.guidance != sampling.uses_guidance:
            raise Img2MusicError("guidance on/off must match set_conditioning(); change the scale freely")
        self.begin(frames, sampling.seed)
        while self.steps_left:
            self.step(sampling)
            if on_step is not None:
                on_step()
        return self.codes()
