"""Model configurations for the built-in presets (random weights, real architectures).

- ``tiny``: the real transformers architectures at toy sizes, built in well under a
  second; every code path users run with real weights runs on these in tests.
- ``tiny-stereo``: ``tiny`` with a stereo decoder as facebook/musicgen-stereo-* have it: 8
  codebooks, left and right interleaved (even = left), each channel's 4 delayed by 0..3;
  EnCodec stays mono and decodes each channel.
- ``small-random`` / ``medium-random`` / ``large-random``: the exact configs of
  facebook/musicgen-small / -medium / -large (decoder + t5-base + EnCodec 32 kHz) and
  openai/clip-vit-base-patch32, with random weights: same compute as the released
  checkpoints, so timings are real.

The real sizes were checked against the checkpoints' conversion scripts (audiocraft ->
transformers) and config.json files. Every field that differs from a config class
default is set explicitly (``T5Config()`` defaults are t5-small's).
"""

from __future__ import annotations

from dataclasses import dataclass

PRESETS = ("tiny", "tiny-stereo", "small-random", "medium-random", "large-random")

MUSICGEN_SPECIAL_ID = 2048
"""pad = bos = decoder start token of the MusicGen decoder (one past the codebook)."""


@dataclass(frozen=True)
class DecoderSize:
    """Size of the MusicGen decoder."""

    hidden_size: int
    """Model width (head dim is hidden_size / num_heads = 64 for the real sizes)."""
    num_layers: int
    """Number of decoder layers."""
    num_heads: int
    """Attention heads in self- and cross-attention."""
    ffn_dim: int
    """Width of the feed-forward layer."""


DECODER_SIZES = {
    "tiny": DecoderSize(hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128),
    "tiny-stereo": DecoderSize(hidden_size=64, num_layers=2, num_heads=4, ffn_dim=128),
    "small-random": DecoderSize(hidden_size=1024, num_layers=24, num_heads=16, ffn_dim=4096),
    "medium-random": DecoderSize(hidden_size=1536, num_layers=48, num_heads=24, ffn_dim=6144),
    "large-random": DecoderSize(hidden_size=2048, num_layers=48, num_heads=32, ffn_dim=8192),
}

TINY_CLIP_IMAGE_SIZE = 32
"""The tiny CLIP's input resolution (patch 8 -> 16 patches)."""


def is_tiny(preset: str) -> bool:
    return preset.startswith("tiny")


def is_stereo(preset: str) -> bool:
    return preset.endswith("-stereo")


def check_preset(name: str) -> None:
    from img2music.basics.errors import Img2MusicError

    if name not in PRESETS:
        raise Img2MusicError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def musicgen_config(preset: str, text_vocab_size: int):
    """MusicgenConfig (decoder + T5 text encoder + EnCodec 32 kHz) for a preset."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    check_preset(preset)
    size = DECODER_SIZES[preset]
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        num_hidden_layers=size.num_layers,
        ffn_dim=size.ffn_dim,
        num_attention_heads=size.num_heads,
        hidden_size=size.hidden_size,
        activation_function="gelu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        scale_embedding=False,
        num_codebooks=8 if is_stereo(preset) else 4,
        audio_channels=2 if is_stereo(preset) else 1,
        pad_token_id=MUSICGEN_SPECIAL_ID,
        bos_token_id=MUSICGEN_SPECIAL_ID,
        tie_word_embeddings=False,
    )
    if is_tiny(preset):
        text = T5Config(
            vocab_size=text_vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="relu", dropout_rate=0.1, is_encoder_decoder=False,
        )
        codec_hidden, codec_filters = 16, 4
    else:
        # t5-base; the tokenizer may be smaller than the vocab (we cannot download t5's).
        text = T5Config(
            vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
            num_heads=12, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="relu", dropout_rate=0.1, is_encoder_decoder=False,
        )
        codec_hidden, codec_filters = 128, 64
    codec = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        hidden_size=codec_hidden,
        num_filters=codec_filters,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        norm_type="weight_norm",
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        use_causal_conv=False,
        pad_mode="reflect",
        compress=2,
        num_lstm_layers=2,
        trim_right_ratio=1.0,
        codebook_size=2048,
        codebook_dim=codec_hidden,
        use_conv_shortcut=False,
        target_bandwidths=[2.2],
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)


def clip_config(preset: str, text_vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """CLIPConfig for a preset (ViT-B/32 for the random real-size presets)."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    check_preset(preset)
    tokens = dict(vocab_size=text_vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if is_tiny(preset):
        text = CLIPTextConfig(
            hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", **tokens,
        )
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
            num_attention_heads=4, image_size=TINY_CLIP_IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu",
        )
        projection_dim = 16
    else:
        text = CLIPTextConfig(
            hidden_size=512, intermediate_size=2048, projection_dim=512, num_hidden_layers=12,
            num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", **tokens,
        )
        vision = CLIPVisionConfig(
            hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
            num_attention_heads=12, image_size=224, patch_size=32, hidden_act="quick_gelu",
        )
        projection_dim = 512
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def musicgen_generation_defaults() -> dict:
    """The generation settings shipped in facebook/musicgen-*'s generation_config.json."""
    return dict(
        decoder_start_token_id=MUSICGEN_SPECIAL_ID,
        pad_token_id=MUSICGEN_SPECIAL_ID,
        bos_token_id=MUSICGEN_SPECIAL_ID,
        do_sample=True,
        guidance_scale=3.0,
        top_k=250,
        max_length=1500,
    )
