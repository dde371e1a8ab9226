"""Exported graphs vs the transformers modules, and the bundle manifest (tiny preset)."""


import numpy as np
import pytest
import torch

from img2music.basics.model_config import AudioConfig
from img2music.export.validation import FP32_TOLERANCE
from img2music.runtime.bundle.loading import load_bundle
from img2music.runtime.bundle.manifest import RUNTIME_GRAPHS
from tests.conftest import max_abs


def test_build_validates_every_graph(tiny_bundle):
    validation = load_bundle(tiny_bundle).manifest.provenance.validation
    checked = {c["graph"] for c in validation}
    # + the stream-vs-full-decode SNR checks (float32 and int8-LSTM fronts), the text encoder and its
    # tokenizer (ids vs transformers)
    assert checked == set(RUNTIME_GRAPHS) | {"encodec_stream", "encodec_stream_int8_lstm", "t5_encoder", "tokenizer"}
    for c in validation:
        if c["graph"] == "encodec_stream":
            assert c["max_abs_diff"] == 0.0 and float(c["detail"].split()[1]) >= 90.0, c  # SNR in dB
        elif c["graph"] == "encodec_stream_int8_lstm":
            assert c["max_abs_diff"] == 0.0 and float(c["detail"].split()[1]) >= 60.0, c
        elif c["graph"] == "tokenizer":
            assert c["max_abs_diff"] == 0.0 and c["detail"] == "8 of 8 prompts tokenized identically", c
        else:
            assert c["max_abs_diff"] <= c["tolerance"] == FP32_TOLERANCE, c


def test_manifest_describes_the_bundle(tiny_bundle, tiny_models):
    m = load_bundle(tiny_bundle).manifest
    assert m.schema_version == 2
    assert m.model.audio == AudioConfig(sample_rate=32000, frame_rate=50, hop_length=640, channels=1)
    dec = tiny_models.musicgen.config.decoder
    assert m.model.decoder.num_layers == dec.num_hidden_layers and m.model.decoder.max_length == 2048
    assert m.model.decoder.pad_token_id == 2048 and m.model.decoder.num_codebooks == 4
    assert len(m.model.conditioning.directives) >= 120
    assert all(len(f.sha256) == 64 and f.bytes > 0 for f in m.files.values())
    assert {g.opset for g in m.graphs.values()} == {17}
    assert "onnxruntime" in m.provenance.tools and "transformers" in m.provenance.tools
    # EnCodec once (the streaming graphs serve every path, the front also with an int8 LSTM); T5 for prompts
    assert set(m.graphs) == set(RUNTIME_GRAPHS) | {"t5_encoder", "encodec_stream_front_int8"}
    assert m.graphs["encodec_stream_front_int8"].precision == "int8"
    assert m.model.text is not None and m.model.text.tokenizer_file in m.files


def test_decoder_step_matches_transformers_up_to_the_last_position(tiny_onnx, tiny_models):
    """Teacher-forced random codes for all 2048 positions, guidance rows included; logits
    compared at the first, middle and last cache positions, and the cache rows."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from img2music.export.validation import validation_conditioning

    mg = tiny_models.musicgen
    cond, mask = validation_conditioning(tiny_models, batch=1, cond_len=5, seed=3)
    decoder = tiny_onnx.decoder
    decoder.set_conditioning(cond, mask)
    rng = np.random.default_rng(0)
    compare_at = {0, 1, 2, 1023, 1500, 2047}
    ids = rng.integers(0, 2049, (2, 4, 2048))  # (B2, K, positions)
    with torch.no_grad():  # transformers over the whole sequence at once: causal, the same as step by step
        states = mg.enc_to_dec_proj(torch.from_numpy(cond)) * torch.from_numpy(mask)[..., None]
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = mg.decoder(input_ids=torch.from_numpy(ids).reshape(-1, 2048), encoder_hidden_states=states,
                         encoder_attention_mask=torch.from_numpy(mask), past_key_values=cache, use_cache=True)
    cache = out.past_key_values
    ref_logits = out.logits.reshape(2, 4, 2048, -1)  # (B2, K, positions, V)
    diffs = {}
    for pos in range(2048):
        ours = decoder.step(ids[:, :, pos])
        if pos in compare_at:
            diffs[pos] = max_abs(ours, ref_logits[:, :, pos])
    assert set(diffs) == compare_at
    assert max(diffs.values()) <= FP32_TOLERANCE, diffs
    for layer in range(mg.config.decoder.num_hidden_layers):
        ref = cache.self_attention_cache.layers[layer]
        assert max_abs(decoder.cache_rows(layer, "key", 2048), ref.keys) <= FP32_TOLERANCE
        assert max_abs(decoder.cache_rows(layer, "value", 2048), ref.values) <= FP32_TOLERANCE
    with pytest.raises(Exception, match="re-prime"):
        decoder.step(rng.integers(0, 2048, (2, 4)))


def test_projector_graph_picks_like_the_prompt_bank(tiny_onnx, tiny_pipeline, photos):
    from img2music.runtime.pipeline.preprocess import preprocess_images

    images = list(photos.values())
    pixels = preprocess_images(images, tiny_onnx.image_config)
    embeds = tiny_onnx.embed_images(pixels)
    ref_embeds = tiny_pipeline.embed_images(pixels).numpy()
    assert max_abs(embeds, ref_embeds) <= FP32_TOLERANCE
    cond, mask, directives = tiny_onnx.project(embeds)
    ref = tiny_pipeline.projector(torch.from_numpy(embeds))
    assert directives == ref.directives
    np.testing.assert_array_equal(mask, ref.mask.numpy())
    assert max_abs(cond, ref.conditioning) == 0.0


@pytest.mark.parametrize("frames", [4, 17, 120])
def test_encodec_graph_any_length(tiny_onnx, tiny_models, frames):
    codes = np.random.default_rng(frames).integers(0, 2048, (2, 4, frames))
    with torch.no_grad():
        ref = tiny_models.musicgen.audio_encoder.decode(torch.from_numpy(codes)[None], [None]).audio_values[:, 0]
    ours = tiny_onnx.decode_audio(codes)
    assert ours.shape == (2, frames * 640)
    assert max_abs(ours, ref) <= FP32_TOLERANCE


def test_too_few_frames_are_refused(tiny_onnx):
    from img2music.basics.errors import Img2MusicError

    with pytest.raises(Img2MusicError, match="at least 4 frames"):
        tiny_onnx.decode_audio(np.zeros((1, 4, 3), dtype=np.int64))
