"""Projectors: the prompt bank (zero-shot) and the Study II MLP."""

import numpy as np
import pytest
import torch

from img2music.basics.errors import Img2MusicError
from img2music.basics.prompt_bank import (
    MIN_DIRECTIVES,
    PromptBank,
    PromptBankProjector,
    build_prompt_bank,
    load_directives,
)
from img2music.runtime.pipeline.preprocess import preprocess_images
from img2music.training.projector import MLPProjector, MLPProjectorConfig


def test_directive_bank_is_curated():
    directives = load_directives()
    assert len(directives) >= MIN_DIRECTIVES
    assert len(set(directives)) == len(directives)
    # every directive states a tempo
    assert all("BPM" in d for d in directives)


@pytest.fixture(scope="module")
def bank(tiny_pipeline):
    return tiny_pipeline.projector.bank


def embed(pipeline, images):
    return pipeline.embed_images(preprocess_images(images, pipeline.models.image_config))


def test_bank_shapes_and_masks(bank, tiny_models):
    p = len(load_directives())
    d_t5 = tiny_models.musicgen.config.text_encoder.d_model
    assert bank.text_embeds.shape == (p, tiny_models.clip.config.projection_dim)
    np.testing.assert_allclose(np.linalg.norm(bank.text_embeds, axis=1), 1.0, atol=1e-5)
    assert bank.t5_hidden.shape[0] == p and bank.t5_hidden.shape[2] == d_t5
    assert bank.t5_mask.shape == bank.t5_hidden.shape[:2]
    lengths = bank.t5_mask.sum(axis=1)
    assert lengths.min() >= 2 and lengths.max() == bank.num_tokens
    # padded positions are exactly zero; real ones are not
    padded = bank.t5_mask == 0
    assert np.all(bank.t5_hidden[padded] == 0.0)
    assert np.all(np.abs(bank.t5_hidden[~padded]).sum(axis=-1) > 0)


def test_bank_t5_encoding_matches_text_encoder(bank, tiny_models):
    i = 7
    tokens = tiny_models.t5_tokenizer([bank.directives[i]], return_tensors="pt")
    with torch.no_grad():
        hidden = tiny_models.musicgen.text_encoder(**tokens).last_hidden_state[0].numpy()
    n = int(bank.t5_mask[i].sum())
    assert n == hidden.shape[0]
    np.testing.assert_allclose(bank.t5_hidden[i, :n], hidden, atol=1e-5)


def test_choice_is_deterministic_and_depends_on_the_image(tiny_pipeline, photos):
    projector = tiny_pipeline.projector
    images = list(photos.values())
    emb = embed(tiny_pipeline, images)
    first = projector(emb)
    second = projector(embed(tiny_pipeline, images))
    assert first.directives == second.directives
    assert torch.equal(first.conditioning, second.conditioning)
    assert first.conditioning.shape == (len(images), projector.bank.num_tokens, projector.bank.t5_hidden.shape[2])
    assert first.mask.shape == first.conditioning.shape[:2] and first.mask.dtype == torch.long
    assert len(set(first.directives)) >= 2, "different photos should pick different directives"
    # the chosen directive is the best-scoring one
    sims = projector.bank.similarities(emb.numpy())
    assert [projector.bank.directives[i] for i in sims.argmax(axis=1)] == first.directives
    np.testing.assert_allclose(first.scores, sims.max(axis=1), atol=1e-6)


def test_bank_round_trips_through_a_file(bank, tmp_path):
    path = tmp_path / "prompt_bank.npz"
    bank.save(path)
    loaded = PromptBank.load(path)
    assert loaded.directives == bank.directives
    np.testing.assert_array_equal(loaded.t5_hidden, bank.t5_hidden)
    np.testing.assert_array_equal(loaded.t5_mask, bank.t5_mask)
    with pytest.raises(Img2MusicError, match="do not fit"):
        bank.select(np.zeros((1, bank.text_embeds.shape[1] + 1), dtype=np.float32))


def test_build_with_custom_directives(tiny_models):
    small = build_prompt_bank(tiny_models, ["soft piano", "loud drums and distorted guitars, 140 BPM"])
    assert small.directives == ["soft piano", "loud drums and distorted guitars, 140 BPM"]
    assert small.t5_mask[0].sum() < small.t5_mask[1].sum()


@pytest.mark.parametrize("num_tokens", [1, 8])
def test_mlp_projector_shapes_and_gradients(num_tokens):
    torch.manual_seed(0)
    cfg = MLPProjectorConfig(clip_dim=16, cond_dim=32, num_tokens=num_tokens, hidden_dim=24)
    proj = MLPProjector(cfg)
    layers = [type(m).__name__ for m in proj.net]
    assert layers == ["Linear", "LayerNorm", "ReLU", "Dropout", "Linear"]
    x = torch.randn(3, 16)
    out = proj(x)
    assert out.conditioning.shape == (3, num_tokens, 32)
    assert torch.equal(out.mask, torch.ones(3, num_tokens, dtype=torch.long))
    out.conditioning.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    proj.eval()
    assert not torch.equal(proj(x).conditioning[0], proj(x).conditioning[1])


def test_prompt_bank_projector_accepts_torch(bank):
    proj = PromptBankProjector(bank)
    out = proj(torch.from_numpy(bank.text_embeds[[3, 11]]))
    # a directive's own text embedding picks that directive
    assert out.directives == [bank.directives[3], bank.directives[11]]


def test_prompt_bank_fits_a_clip_text_tower_shorter_than_77(tiny_models):
    """Limits come from the checkpoint's config: a CLIP text tower with 8 positions builds a
    bank (directives are cut to 8 tokens) instead of failing inside CLIP."""
    import dataclasses

    from transformers import CLIPModel

    config = tiny_models.clip.config.to_dict()
    config["text_config"]["max_position_embeddings"] = 8
    clip = CLIPModel(type(tiny_models.clip.config).from_dict(config)).eval()
    models = dataclasses.replace(tiny_models, clip=clip)
    long = "slow warm piano with soft strings and a distant choir, rain on the window, 60 BPM, gentle"
    bank = build_prompt_bank(models, [long, "loud drums"])
    assert bank.text_embeds.shape == (2, clip.config.projection_dim)
    assert np.isfinite(bank.text_embeds).all()
