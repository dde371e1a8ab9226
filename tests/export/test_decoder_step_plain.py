"""The TensorRT-ready decoder step (standard ONNX ops, static cache at a position) vs
transformers, run on ONNX Runtime's CPU provider: this part of the TensorRT path needs no GPU."""

import numpy as np
import onnx
import pytest
import torch

from basics.onnx_files import save_model
from export.decoder_step_plain import PlainStepRunner, build_decoder_step_plain
from runtime.onnx_session import create_session

MAX_LENGTH = 12


@pytest.fixture(scope="module")
def plain_graph(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "decoder_step_plain.onnx"
    save_model(build_decoder_step_plain(tiny_models.musicgen.decoder, max_length=MAX_LENGTH), path)
    return path


def test_only_standard_ops(plain_graph):
    model = onnx.load(str(plain_graph))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # nothing TensorRT lacks
    onnx.checker.check_model(model)


def test_steps_match_transformers_at_positions_0_1_and_max(plain_graph, tiny_models, tiny_bundle):
    mg = tiny_models.musicgen
    rng = np.random.default_rng(0)
    b2, k, n = 4, tiny_models.num_codebooks, 5
    cond = rng.standard_normal((b2, n, mg.config.text_encoder.hidden_size)).astype(np.float32)
    mask = np.ones((b2, n), np.int64)
    mask[1, 3:] = 0
    mask[3] = 0  # a guidance null row
    cond[3] = 0
    tokens = rng.integers(0, 2048, (b2, k, MAX_LENGTH))
    cross_session = create_session(tiny_bundle / "cross_kv.onnx")
    names = [o.name for o in cross_session.get_outputs()]
    cross = dict(zip(names, cross_session.run(names, {"conditioning": cond, "conditioning_mask": mask})))
    session = create_session(plain_graph)
    out_names = [o.name for o in session.get_outputs()]
    runner = PlainStepRunner(lambda feeds: dict(zip(out_names, session.run(out_names, feeds))),
                             mg.decoder.config.num_hidden_layers, b2, mg.decoder.config.num_attention_heads,
                             MAX_LENGTH, mg.decoder.config.hidden_size // mg.decoder.config.num_attention_heads)
    steps = [runner.step(tokens[:, :, t], cross).copy() for t in range(MAX_LENGTH)]
    with torch.no_grad():
        ref = mg.decoder(input_ids=torch.from_numpy(tokens).reshape(b2 * k, MAX_LENGTH),
                         encoder_hidden_states=mg.enc_to_dec_proj(torch.from_numpy(cond)),
                         encoder_attention_mask=torch.from_numpy(mask)).logits
    ref = ref.reshape(b2, k, MAX_LENGTH, -1).numpy()
    for t in (0, 1, MAX_LENGTH - 1):
        np.testing.assert_allclose(steps[t], ref[:, :, t], atol=1e-4, rtol=0)
