"""Model sources: hub ids / local directories for users, presets for tests and benchmarks.

Real checkpoints load through transformers' ``from_pretrained``. No machine we build on
reaches a model hub, so a model that is neither a local directory nor in the local
cache gives one clear error that says how to get it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img2music.basics.checkpoint_limits import check, clip_problems, musicgen_problems
from img2music.basics.clip_image_config import ClipImageConfig
from img2music.basics.errors import Img2MusicError
from img2music.basics.model_config import AudioConfig, DecoderConfig, SamplingDefaults
from img2music.basics.presets import (
    TINY_CLIP_IMAGE_SIZE,
    check_preset,
    clip_config,
    is_tiny,
    musicgen_config,
    musicgen_generation_defaults,
)

log = logging.getLogger(__name__)

DEFAULT_MUSICGEN = "facebook/musicgen-small"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


@dataclass
class LoadedModels:
    """Everything the reference pipeline and the exporters need, in eval mode."""

    musicgen: Any
    """transformers ``MusicgenForConditionalGeneration`` (decoder + T5 + EnCodec)."""
    clip: Any
    """transformers ``CLIPModel`` (vision and text towers)."""
    t5_tokenizer: Any
    """Tokenizer of MusicGen's T5 text encoder."""
    clip_tokenizer: Any
    """Tokenizer of CLIP's text tower."""
    image_config: ClipImageConfig
    """CLIP preprocessing read from the checkpoint (preprocessor_config.json)."""
    source: dict = field(default_factory=dict)
    """Where the weights came from: {"preset": ...} or {"musicgen": id, "clip": id}."""

    @property
    def sample_rate(self) -> int:
        return int(self.musicgen.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return int(self.musicgen.config.audio_encoder.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self.musicgen.decoder.num_codebooks)

    @property
    def hop_length(self) -> int:
        return self.sample_rate // self.frame_rate

    def audio_config(self) -> AudioConfig:
        return AudioConfig(self.sample_rate, self.frame_rate, self.hop_length, self.audio_channels)

    @property
    def audio_channels(self) -> int:
        """Channels of the music: the decoder's (a stereo MusicGen decodes each with a mono EnCodec)."""
        return int(getattr(self.musicgen.config.decoder, "audio_channels", 1))

    def decoder_config(self) -> DecoderConfig:
        """The decoder facts a bundle records (and its decoder session runs on)."""
        dec, gen = self.musicgen.config.decoder, self.musicgen.generation_config
        return DecoderConfig(
            num_codebooks=self.num_codebooks, vocab_size=dec.vocab_size, pad_token_id=int(gen.pad_token_id),
            decoder_start_token_id=int(gen.decoder_start_token_id), hidden_size=dec.hidden_size,
            num_layers=dec.num_hidden_layers, num_heads=dec.num_attention_heads,
            head_dim=dec.hidden_size // dec.num_attention_heads, max_length=dec.max_position_embeddings,
            audio_channels=self.audio_channels,
        )

    def sampling_defaults(self) -> SamplingDefaults:
        """The checkpoint's generation_config.json settings."""
        gen = self.musicgen.generation_config
        return SamplingDefaults(guidance_scale=float(gen.guidance_scale or 3.0), top_k=int(gen.top_k or 250),
                                temperature=float(gen.temperature or 1.0))


def _require_torch_stack():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise Img2MusicError(
            f"{exc.name} is not installed; the PyTorch path needs the 'export' extra: pip install 'img2music[export]'"
        ) from exc


def build_preset(preset: str, seed: int = 0) -> LoadedModels:
    """Real architectures with random, seeded weights and locally built tokenizers."""
    check_preset(preset)
    _require_torch_stack()
    import torch
    from transformers import CLIPModel, GenerationConfig, MusicgenForConditionalGeneration

    from img2music.basics.prompt_bank import load_directives
    from img2music.basics.tiny_tokenizers import build_clip_tokenizer, build_t5_tokenizer

    corpus = load_directives()
    t5_tok = build_t5_tokenizer(corpus)
    clip_tok = build_clip_tokenizer(corpus)
    torch.manual_seed(seed)
    log.info("building preset %s (seed %d)", preset, seed)
    musicgen = MusicgenForConditionalGeneration(musicgen_config(preset, text_vocab_size=len(t5_tok)))
    _seed_codebooks(musicgen.audio_encoder, seed)
    musicgen.generation_config = GenerationConfig(**musicgen_generation_defaults())
    clip = CLIPModel(
        clip_config(
            preset, text_vocab_size=len(clip_tok), bos_id=clip_tok.bos_token_id,
            eos_id=clip_tok.eos_token_id, pad_id=clip_tok.pad_token_id,
        )
    )
    size = TINY_CLIP_IMAGE_SIZE if is_tiny(preset) else 224
    image_config = ClipImageConfig(shortest_edge=size, crop_height=size, crop_width=size)
    return LoadedModels(musicgen.eval(), clip.eval(), t5_tok, clip_tok, image_config, {"preset": preset, "seed": seed})


def _seed_codebooks(codec, seed: int) -> None:
    """EnCodec's ``post_init`` zeroes the codebooks, which would make every code decode
    to the same vector; random codebooks make the audio depend on the tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            embed = torch.randn(layer.codebook.embed.shape, generator=gen)
            layer.codebook.embed.copy_(embed)
            layer.codebook.embed_avg.copy_(embed)


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local path."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def from_pretrained(kind: str, name: str, loader):
    """Load a checkpoint; turn every way it can be missing into one clear message."""
    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.is_dir():
        raise Img2MusicError(f"{kind} model directory not found: {name}")
    try:
        if path.is_dir():
            return loader(str(path))
        try:
            return loader(name, local_files_only=True)
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
                raise
            return loader(name)
    except (OSError, ValueError) as exc:
        raise Img2MusicError(
            f"cannot load {kind} model {name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            f"On a machine with network access run `huggingface-cli download {name}` (or "
            f"`git clone https://huggingface.co/{name}`), copy the directory here and pass its path, "
            "or populate the Hugging Face cache and set HF_HUB_OFFLINE=1."
        ) from exc


def load_pretrained(musicgen: str = DEFAULT_MUSICGEN, clip: str = DEFAULT_CLIP) -> LoadedModels:
    """Load real checkpoints (hub ids or local directories) through transformers."""
    _require_torch_stack()
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    mg = from_pretrained("MusicGen", musicgen, MusicgenForConditionalGeneration.from_pretrained)
    t5_tok = from_pretrained("MusicGen tokenizer", musicgen, AutoTokenizer.from_pretrained)
    cm, clip_tok, image_config = load_clip(clip)
    check(musicgen_problems(mg.config), f"MusicGen checkpoint {musicgen!r}")
    check(clip_problems(cm.config, (image_config.crop_height, image_config.crop_width)), f"CLIP checkpoint {clip!r}")
    return LoadedModels(mg.eval(), cm, t5_tok, clip_tok, image_config, {"musicgen": musicgen, "clip": clip})


def load_clip(clip: str, kind: str = "CLIP"):
    """A CLIP checkpoint (hub id or local directory) -> (CLIPModel in eval mode, tokenizer, ClipImageConfig)."""
    _require_torch_stack()
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = from_pretrained(kind, clip, CLIPModel.from_pretrained)
    tokenizer = from_pretrained(f"{kind} tokenizer", clip, AutoTokenizer.from_pretrained)
    proc = from_pretrained(f"{kind} preprocessor", clip, CLIPImageProcessorPil.from_pretrained)
    return model.eval(), tokenizer, ClipImageConfig.from_preprocessor_config(proc.to_dict())


def load_models(preset: str | None = None, musicgen: str | None = None, clip: str | None = None, seed: int = 0) -> LoadedModels:
    """A preset, or checkpoints (missing ones default to musicgen-small / CLIP ViT-B/32)."""
    if preset is not None:
        if musicgen or clip:
            raise Img2MusicError("give either --preset or --musicgen/--clip, not both")
        return build_preset(preset, seed)
    return load_pretrained(musicgen or DEFAULT_MUSICGEN, clip or DEFAULT_CLIP)


def save_models(models: LoadedModels, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/musicgen`` and ``out_dir/clip`` as ordinary checkpoint directories."""
    import json

    out = Path(out_dir)
    mg_dir, clip_dir = out / "musicgen", out / "clip"
    models.musicgen.save_pretrained(mg_dir)
    models.t5_tokenizer.save_pretrained(mg_dir)
    models.clip.save_pretrained(clip_dir)
    models.clip_tokenizer.save_pretrained(clip_dir)
    (clip_dir / "preprocessor_config.json").write_text(
        json.dumps(models.image_config.to_preprocessor_config(), indent=2)
    )
    return mg_dir, clip_dir


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset_parameter_counts(preset: str) -> dict[str, int]:
    """Parameter counts of a preset's modules, built on the meta device (no memory, instant)."""
    check_preset(preset)
    _require_torch_stack()
    import torch
    from transformers import CLIPModel, MusicgenForConditionalGeneration

    # Tokenizer sizes only matter for the tiny preset (real sizes use the real vocabularies).
    with torch.device("meta"):
        mg = MusicgenForConditionalGeneration(musicgen_config(preset, text_vocab_size=400))
        clip = CLIPModel(clip_config(preset, text_vocab_size=49408, bos_id=49406, eos_id=49407, pad_id=49407))
    return {
        "musicgen_decoder": count_parameters(mg.decoder),
        "enc_to_dec_proj": count_parameters(mg.enc_to_dec_proj) if hasattr(mg, "enc_to_dec_proj") else 0,
        "t5_encoder": count_parameters(mg.text_encoder),
        "encodec": count_parameters(mg.audio_encoder),
        "clip_vision": count_parameters(clip.vision_model) + count_parameters(clip.visual_projection),
        "clip_text": count_parameters(clip.text_model) + count_parameters(clip.text_projection),
    }
