"""What a checkpoint must be for the runtime to run it, checked once when it is loaded.

Every size the runtime uses comes from the checkpoint's own config (positions, codebooks,
vocabulary, head size, frame rate, CLIP's text length and image size); these are the
combinations it cannot run. A checkpoint outside them is refused with one error naming
every problem, before any export work, instead of a traceback from deep inside an
export or a validation.
"""

from __future__ import annotations

from img2music.basics.errors import Img2MusicError


def decoder_problems(decoder) -> list[str]:
    """``MusicgenDecoderConfig`` -> what the exported decoder step cannot do with it."""
    problems = []
    hidden, heads = decoder.hidden_size, decoder.num_attention_heads
    if hidden % heads:
        problems.append(f"decoder hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    elif (hidden // heads) % 8:
        problems.append(f"decoder head size {hidden // heads} (hidden_size / num_attention_heads) is not a "
                        "multiple of 8, which ONNX Runtime's GroupQueryAttention needs")
    channels = getattr(decoder, "audio_channels", 1)
    if channels not in (1, 2):
        problems.append(f"decoder audio_channels {channels}: MusicGen is mono (1) or stereo (2)")
    elif decoder.num_codebooks % channels:
        problems.append(f"a stereo decoder interleaves left and right codebooks: {decoder.num_codebooks} "
                        "codebooks cannot be split in two")
    pad = decoder.pad_token_id
    if pad is None or not 0 <= pad <= decoder.vocab_size:
        problems.append(f"decoder pad_token_id {pad} is not a code id or the one past the vocabulary "
                        f"({decoder.vocab_size})")
    return problems


def musicgen_problems(config) -> list[str]:
    """``MusicgenConfig`` (decoder + EnCodec) -> what the runtime cannot do with it."""
    decoder, codec = config.decoder, config.audio_encoder
    problems = decoder_problems(decoder)
    hop = codec.hop_length  # the product of its upsampling ratios
    if codec.sampling_rate % hop:
        problems.append(f"EnCodec's frame rate {codec.sampling_rate} / {hop} is not a whole number of "
                        "frames per second")
    if codec.audio_channels != 1:
        problems.append(f"EnCodec with {codec.audio_channels} channels is not supported yet")
    per_channel = decoder.num_codebooks // max(1, getattr(decoder, "audio_channels", 1))  # stereo: 4 + 4
    if per_channel > codec.num_quantizers:
        problems.append(f"the decoder predicts {per_channel} codebooks per channel but EnCodec at "
                        f"{codec.target_bandwidths[-1]} kbps decodes {codec.num_quantizers}")
    if decoder.vocab_size > codec.codebook_size:
        problems.append(f"decoder vocab_size {decoder.vocab_size} exceeds EnCodec's codebook_size "
                        f"{codec.codebook_size}")
    frame_rate = codec.sampling_rate // hop
    span = per_channel  # the delay pattern's length: each channel's codebooks are delayed 0..per_channel-1
    if decoder.max_position_embeddings < frame_rate + span:
        problems.append(f"decoder max_position_embeddings {decoder.max_position_embeddings} holds less than "
                        f"1 s of music ({frame_rate} frames + {span} for the delay pattern)")
    return problems


def clip_problems(clip_config, crop: tuple[int, int]) -> list[str]:
    """``CLIPConfig`` and the preprocessor's crop (height, width) -> what CLIP cannot run."""
    size = clip_config.vision_config.image_size
    if tuple(crop) != (size, size):
        return [f"CLIP's preprocessor crops {crop[0]}x{crop[1]} but its vision tower takes {size}x{size} "
                "(preprocessor_config.json and config.json disagree)"]
    return []


def check(problems: list[str], what: str) -> None:
    if problems:
        raise Img2MusicError(f"{what} cannot be used: " + "; ".join(problems))
