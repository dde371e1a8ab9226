"""The one generation core: a decoder session in, audio code frames out (numpy only).

- ``core``: :class:`CodeGenerator` (guidance, sampling, the delay pattern, windows past the
  trained length) and :class:`Windowing`.
- ``decoder_session``: the interface every backend's decoder implements.
- ``sampling``: :class:`SamplingConfig` and the sampler that applies it to logits.
- ``delay_pattern``: MusicGen's delay pattern and the arithmetic of steps, frames, samples.
- ``conditioning``: image tokens, text tokens, or both, and their weights.

May import: img2music.basics.
"""
