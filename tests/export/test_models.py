"""Presets, checkpoint loading and parameter counts."""

import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.basics.models import build_preset, load_models, preset_parameter_counts
from img2music.basics.presets import DECODER_SIZES
from tests.conftest import max_abs


def expected_decoder_parameters(hidden: int, layers: int, ffn: int, vocab: int = 2048, codebooks: int = 4) -> int:
    """MusicGen decoder parameters from its architecture: no biases in attention/FFN,
    self- and cross-attention each 4 h x h, three LayerNorms per layer, one final
    LayerNorm, K embeddings of (vocab + 1) rows and K output heads."""
    per_layer = 8 * hidden * hidden + 2 * hidden * ffn + 3 * 2 * hidden
    return layers * per_layer + 2 * hidden + codebooks * (vocab + 1) * hidden + codebooks * hidden * vocab


@pytest.mark.parametrize("preset", ["small-random", "medium-random", "large-random"])
def test_real_size_parameter_counts(preset):
    counts = preset_parameter_counts(preset)
    size = DECODER_SIZES[preset]
    assert counts["musicgen_decoder"] == expected_decoder_parameters(size.hidden_size, size.num_layers, size.ffn_dim)
    assert counts["enc_to_dec_proj"] == 768 * size.hidden_size + size.hidden_size
    # t5-base encoder (embeddings 32128 x 768 + 12 layers), CLIP ViT-B/32 towers.
    assert 109e6 < counts["t5_encoder"] < 110.5e6
    assert 87e6 < counts["clip_vision"] < 88.5e6
    assert 63e6 < counts["clip_text"] < 64e6


def test_small_decoder_is_about_420m():
    assert abs(preset_parameter_counts("small-random")["musicgen_decoder"] - 420e6) < 2e6


def test_tiny_preset_is_deterministic_and_real(tiny_models):
    again = build_preset("tiny", seed=0)
    for a, b in zip(tiny_models.musicgen.state_dict().values(), again.musicgen.state_dict().values()):
        assert torch.equal(a, b)
    other = build_preset("tiny", seed=1)
    assert not torch.equal(tiny_models.musicgen.decoder.lm_heads[0].weight, other.musicgen.decoder.lm_heads[0].weight)
    # EnCodec codebooks are seeded (post_init zeroes them), so codes matter.
    for layer in tiny_models.musicgen.audio_encoder.quantizer.layers:
        assert layer.codebook.embed.abs().sum() > 0
    assert tiny_models.sample_rate == 32000 and tiny_models.frame_rate == 50 and tiny_models.num_codebooks == 4


def test_tokenizers_run_for_real(tiny_models):
    t5 = tiny_models.t5_tokenizer("slow contemplative cello solo, 60 BPM")
    assert t5["input_ids"][-1] == tiny_models.t5_tokenizer.eos_token_id
    assert max(t5["input_ids"]) < tiny_models.musicgen.config.text_encoder.vocab_size
    clip = tiny_models.clip_tokenizer("warm pads")
    assert clip["input_ids"][0] == tiny_models.clip_tokenizer.bos_token_id
    assert clip["input_ids"][-1] == tiny_models.clip.config.text_config.eos_token_id
    assert len(set(tiny_models.t5_tokenizer("brass fanfare")["input_ids"])) > 2


def test_checkpoint_dirs_load_through_from_pretrained(tiny_models, tiny_checkpoint_dirs, photos):
    mg_dir, clip_dir = tiny_checkpoint_dirs
    loaded = load_models(musicgen=mg_dir, clip=clip_dir)
    assert loaded.image_config == tiny_models.image_config
    text = ["gentle piano lullaby with music box"]
    a = tiny_models.t5_tokenizer(text, return_tensors="pt")
    b = loaded.t5_tokenizer(text, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        ha = tiny_models.musicgen.text_encoder(**a).last_hidden_state
        hb = loaded.musicgen.text_encoder(**b).last_hidden_state
        pixels = torch.randn(2, 3, 32, 32)
        ea = tiny_models.clip.get_image_features(pixel_values=pixels)
        eb = loaded.clip.get_image_features(pixel_values=pixels)
    assert max_abs(ha, hb) == 0.0
    assert max_abs(getattr(ea, "pooler_output", ea), getattr(eb, "pooler_output", eb)) == 0.0
    for layer_a, layer_b in zip(tiny_models.musicgen.audio_encoder.quantizer.layers,
                                loaded.musicgen.audio_encoder.quantizer.layers):
        assert torch.equal(layer_a.codebook.embed, layer_b.codebook.embed)


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(Img2MusicError, match="directory not found"):
        load_models(musicgen=str(tmp_path / "nope"), clip=str(tmp_path / "nope"))
    with pytest.raises(Img2MusicError, match="huggingface-cli download nobody/no-such-model"):
        load_models(musicgen="nobody/no-such-model", clip="nobody/no-such-clip")


def test_unknown_preset_and_mixed_sources():
    with pytest.raises(Img2MusicError, match="unknown preset"):
        load_models(preset="huge")
    with pytest.raises(Img2MusicError, match="either --preset"):
        load_models(preset="tiny", musicgen="facebook/musicgen-small")


def test_numpy_only_runtime_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import img2music.runtime.pipeline.preprocess, img2music.basics.prompt_bank, img2music.runtime.generation.delay_pattern, "
        "img2music.runtime.generation.sampling, img2music.runtime.audio.files, img2music.runtime.pipeline.timing, img2music.basics.errors; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_preset_repeats_exactly(tiny_models):
    """Same seed, same models, tokenizers and prompt bank: a rebuilt bundle is the same bundle
    (the T5 tokenizer's trainer alone orders tied pieces differently every time)."""
    import numpy as np

    from img2music.basics.prompt_bank import build_prompt_bank

    again = build_preset("tiny", seed=0)
    assert again.t5_tokenizer.backend_tokenizer.to_str() == tiny_models.t5_tokenizer.backend_tokenizer.to_str()
    a, b = build_prompt_bank(tiny_models), build_prompt_bank(again)
    np.testing.assert_array_equal(a.t5_hidden, b.t5_hidden)
    np.testing.assert_array_equal(a.text_embeds, b.text_embeds)
