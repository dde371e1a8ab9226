"""cross_kv.onnx: conditioning -> every layer's cross-attention K/V, once per conditioning.

Cross-attention keys and values depend only on the conditioning, so they are never
recomputed per step. MusicGen's ``enc_to_dec_proj`` (T5 width -> decoder width) is
inside; the projected states are zeroed where the mask is 0, as in transformers.
K and V come out as (B2, H, N, 64), the layout MultiHeadAttention takes for
precomputed keys and values. The additive mask uses float32's min, not -inf, so a fully
masked row (the guidance null branch) gives uniform weights over zero values
(output exactly 0, as in transformers) instead of NaN.

``conditioning_log_weight`` log(w) is added to the attention scores of a token: its share
of the attention is w times what it would be otherwise, before the softmax renormalises.
That is how a text prompt is weighed against the image's tokens
(``runtime.generation.conditioning``); all zeros is plain transformers, a very negative value drops
the token. The runtime takes the log (of w floored at 1e-30: log 0 would be -inf and a
fully masked row NaN) because the values stay representable in float16 bundles, where a
1e-30 inside the graph would round to 0.
"""

from __future__ import annotations

import numpy as np

from img2music.basics.graph_specs import cross_kv_spec
from img2music.export.onnx_graph import FLOAT, INT64, GraphBuilder, linear_weight

FLOAT32_MIN = float(np.finfo(np.float32).min)


def build_cross_kv(musicgen) -> "onnx.ModelProto":  # noqa: F821
    """``MusicgenForConditionalGeneration`` -> cross_kv ModelProto (fp32)."""
    cfg = musicgen.config.decoder
    text_dim = musicgen.config.text_encoder.hidden_size
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    head_dim = hidden // heads
    spec = cross_kv_spec(text_dim, cfg.num_hidden_layers, heads, head_dim)
    g = GraphBuilder("cross_kv")
    g.input("conditioning", FLOAT, spec.inputs[0].shape)
    g.input("conditioning_mask", INT64, spec.inputs[1].shape)
    g.input("conditioning_log_weight", FLOAT, spec.inputs[2].shape)

    states = "conditioning"  # (B2, N, D_t5)
    proj = getattr(musicgen, "enc_to_dec_proj", None)
    if proj is not None:
        states = g.op("MatMul", [states, g.weight("enc_to_dec_proj.weight", linear_weight(proj))])
        states = g.op("Add", [states, g.weight("enc_to_dec_proj.bias", proj.bias.detach().float().numpy())])
    mask = g.op("Cast", ["conditioning_mask"], to=FLOAT)  # (B2, N)
    states = g.op("Mul", [states, g.op("Unsqueeze", [mask, g.const([2])])])  # (B2, N, D)

    split_heads = g.const([0, 0, heads, head_dim])  # (B2, N, H, 64)
    for i, layer in enumerate(musicgen.decoder.model.decoder.layers):
        ca = layer.encoder_attn
        k = g.op("Reshape", [g.op("MatMul", [states, g.weight(f"layers.{i}.k", linear_weight(ca.k_proj))]), split_heads])
        v = g.op("Reshape", [g.op("MatMul", [states, g.weight(f"layers.{i}.v", linear_weight(ca.v_proj))]), split_heads])
        g.output(g.op("Transpose", [k], perm=[0, 2, 1, 3]), f"cross_key.{i}", FLOAT, spec.outputs[2 * i].shape)
        g.output(g.op("Transpose", [v], perm=[0, 2, 1, 3]), f"cross_value.{i}", FLOAT, spec.outputs[2 * i + 1].shape)
    # (mask - 1) * |min| + mask * log(w): log(w) where attended, float32 min where masked.
    bias = g.op("Mul", [g.op("Sub", [mask, g.const(1.0, np.float32)]), g.const(-FLOAT32_MIN, np.float32)])
    bias = g.op("Add", [bias, g.op("Mul", [mask, "conditioning_log_weight"])])  # (B2, N)
    bias = g.op("Unsqueeze", [bias, g.const([1, 2])])  # (B2, 1, 1, N)
    g.output(bias, "cross_attention_bias", FLOAT, spec.outputs[-1].shape)
    return g.model({"graph": "cross_kv"})
