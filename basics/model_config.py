"""The model facts a bundle carries: what the runtime must know, and nothing it may guess.

Written at export from the loaded checkpoints (``basics.models.LoadedModels``) into the
manifest, parsed back by the runtime (``runtime.bundle.manifest``): one definition of
each fact for both sides. Frozen: the runtime reads them, never edits them.
"""

from __future__ import annotations

from dataclasses import dataclass

from img2music.basics.clip_image_config import ClipImageConfig


@dataclass(frozen=True)
class AudioConfig:
    """EnCodec's output."""

    sample_rate: int
    """Samples per second (32000)."""
    frame_rate: int
    """Code frames per second (50)."""
    hop_length: int
    """Samples per code frame (640)."""
    channels: int = 1
    """Audio channels of the music: 1, or 2 for a stereo MusicGen (EnCodec decodes each channel)."""


@dataclass(frozen=True)
class DecoderConfig:
    """The MusicGen decoder, as the step graph and its KV cache see it."""

    num_codebooks: int
    """K: codebooks emitted per step (4)."""
    vocab_size: int
    """Codes per codebook (2048)."""
    pad_token_id: int
    """Delay-pattern pad, one past the codebook (2048)."""
    decoder_start_token_id: int
    """Start token of every sequence (2048 for MusicGen)."""
    hidden_size: int
    """Decoder width."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Attention heads."""
    head_dim: int
    """Size of one head (64 for MusicGen)."""
    max_length: int
    """Positions the cache holds (2048, MusicGen's trained maximum)."""
    kv_cache: str = "groupqueryattention-inplace"
    """How the step graph keeps its cache."""
    audio_channels: int = 1
    """2 for a stereo decoder: codebooks interleaved left/right (even = left)."""

    @property
    def delay_span(self) -> int:
        """Codebooks per channel: codebook k is delayed by k // audio_channels steps, so the delay
        pattern spans this many positions (4 for mono K=4 and stereo K=8 alike)."""
        return self.num_codebooks // self.audio_channels

    @property
    def delays(self):
        """(K,) each codebook's delay in steps (numpy)."""
        import numpy as np

        return np.arange(self.num_codebooks) // self.audio_channels

    @property
    def max_frames(self) -> int:
        """Most audio frames one window can hold: the delay pattern adds its span to the positions."""
        return self.max_length - self.delay_span


@dataclass(frozen=True)
class ConditioningConfig:
    """What the projector hands the decoder."""

    text_dim: int
    """D_t5: width of a conditioning token (T5 space, 768 for t5-base)."""
    num_tokens: int
    """N: conditioning tokens per image."""
    projector: str
    """'prompt_bank', or the trained projector's kind ('mlp', 'transformer')."""
    directives: tuple[str, ...] | None = None
    """The prompt bank's directives, by ``directive_index`` (None for a trained projector)."""
    trained: dict | None = None
    """A trained projector's checkpoint, epoch and dataset (None for the prompt bank)."""


@dataclass(frozen=True)
class ClipConfig:
    """The CLIP image tower."""

    embed_dim: int
    """Image embedding size (512 for ViT-B/32)."""
    image: ClipImageConfig
    """Preprocessing read from the checkpoint."""


@dataclass(frozen=True)
class EncodecStreamConfig:
    """The exact streaming EnCodec decoder's carried LSTM state."""

    lstm_layers: int
    """LSTM layers (2)."""
    lstm_channels: int
    """LSTM width."""


@dataclass(frozen=True)
class TextConfig:
    """MusicGen's T5 text encoder in the bundle (``t5_encoder.onnx``) and its tokenizer."""

    tokenizer_file: str
    """The tokenizer in the ``tokenizers`` library's JSON format (appends T5's ``</s>``)."""
    max_tokens: int
    """Longest prompt in tokens, ``</s>`` included; longer prompts are refused, not cut."""
    vocab_size: int
    """Token ids the encoder's embedding holds."""


@dataclass(frozen=True)
class SamplingDefaults:
    """The checkpoint's own generation settings (its generation_config.json)."""

    guidance_scale: float
    top_k: int
    temperature: float


@dataclass(frozen=True)
class ModelConfig:
    """Every model fact of a bundle."""

    audio: AudioConfig
    decoder: DecoderConfig
    conditioning: ConditioningConfig
    clip: ClipConfig
    encodec_stream: EncodecStreamConfig
    generation_defaults: SamplingDefaults
    text: TextConfig | None = None
    """The text prompt path; None for a bundle built with ``--no-text`` (or before prompts)."""
