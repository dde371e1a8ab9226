"""decoder_step_plain.onnx: one MusicGen decoder step in standard ONNX ops, for TensorRT.

TensorRT has none of ONNX Runtime's contrib ops (GroupQueryAttention,
MultiHeadAttention, SkipLayerNormalization) that ``decoder_step.onnx`` is built from,
so the TensorRT backend gets this graph: the same weights and maths in opset-17 ops
(LayerNormalization, MatMul, Softmax, Erf), and the KV cache as a *fixed buffer read at
a position input* (the fallback the TensorRT issue names where ``IKVCacheUpdateLayer``
is not available):

    inputs   input_ids (B2, K, 1) int64, position (1,) int64,
             past_key.{i} / past_value.{i} (B2, H, L_max, 64): the whole static cache,
             rows >= position are never read (masked), so the buffer is never cleared,
             cross_key.{i} / cross_value.{i} (B2, H, N, 64), cross_attention_bias (B2, 1, 1, N)
    outputs  logits (B2, K, V), new_key.{i} / new_value.{i} (B2, H, 1, 64): this step's
             row, which the runtime writes into the device cache at ``position``

Attention always spans L_max + 1 keys (the cache plus the new row), so every step has
the same shapes: one engine profile point, and a step that a CUDA graph can replay with
only ``position`` and the ids changing in device memory.
"""

from __future__ import annotations

import numpy as np

from basics.graph_specs import decoder_step_plain_spec
from export.onnx_graph import FLOAT, INT64, GraphBuilder, layer_norm, linear_weight

NEG = float(np.finfo(np.float32).min)


def _heads(g: GraphBuilder, x: str, heads: int, head_dim: int) -> str:
    """(B2, 1, D) -> (B2, H, 1, 64)."""
    return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 1, heads, head_dim])])], perm=[0, 2, 1, 3])


def _attend(g: GraphBuilder, q: str, keys: str, values: str, bias: str, d: int) -> str:
    """softmax(q K^T + bias) V, (B2, H, 1, 64) -> (B2, 1, D)."""
    scores = g.op("Add", [g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 1, 3, 2])]), bias])  # (B2, H, 1, L)
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), values])  # (B2, H, 1, 64)
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const([0, 1, d])])


def _gelu(g: GraphBuilder, x: str) -> str:
    """Exact (erf) GELU in opset-17 ops."""
    erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2), np.float32)])])
    return g.op("Mul", [g.op("Mul", [x, g.const(0.5, np.float32)]), g.op("Add", [erf, g.const(1.0, np.float32)])])


def build_decoder_step_plain(decoder_lm, max_length: int | None = None) -> "onnx.ModelProto":  # noqa: F821
    """``MusicgenForCausalLM`` -> decoder_step_plain ModelProto (fp32; precision is set later)."""
    cfg = decoder_lm.config
    dec = decoder_lm.model.decoder
    k_books, vocab, d, heads = cfg.num_codebooks, cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads
    head_dim, layers = d // heads, cfg.num_hidden_layers
    max_length = max_length or cfg.max_position_embeddings
    spec = decoder_step_plain_spec(k_books, vocab, layers, heads, head_dim, max_length)
    g = GraphBuilder("decoder_step_plain")
    for t in spec.inputs:
        g.input(t.name, {"int64": INT64, "float32": FLOAT}[t.dtype], t.shape)

    ids = g.op("Split", ["input_ids"], outputs=k_books, axis=1) if k_books > 1 else ["input_ids"]
    embeds = []
    for k in range(k_books):
        table = g.weight(f"embed_tokens.{k}", dec.embed_tokens[k].weight.detach().float().numpy())
        embeds.append(g.op("Gather", [table, g.op("Squeeze", [ids[k], g.const([1])])], axis=0))  # (B2, 1, D)
    x = g.op("Sum", embeds) if k_books > 1 else embeds[0]
    positions = g.weight("embed_positions", dec.embed_positions.weights.detach().float().numpy())
    x = g.op("Add", [x, g.op("Gather", [positions, "position"], axis=0)])  # (B2, 1, D)
    # Self-attention mask over [cache rows 0..L_max-1, new row]: cached rows below
    # `position` and the new row are visible; stale rows of the static buffer are not.
    index = g.weight("cache_index", np.arange(max_length + 1, dtype=np.int64))  # (L+1,)
    visible = g.op("Or", [g.op("Less", [index, "position"]), g.op("Equal", [index, g.const(max_length)])])
    self_bias = g.op("Reshape", [g.op("Where", [visible, g.const(0.0, np.float32), g.const(NEG, np.float32)]),
                                 g.const([1, 1, 1, max_length + 1])])

    scaling = head_dim ** -0.5
    for i, layer in enumerate(dec.layers):
        p = f"layers.{i}"
        sa = layer.self_attn
        h = layer_norm(g, x, layer.self_attn_layer_norm, f"{p}.self_attn_layer_norm")
        q = _heads(g, g.op("MatMul", [h, g.weight(f"{p}.self_attn.q", linear_weight(sa.q_proj, scaling))]),
                   heads, head_dim)
        k_new = _heads(g, g.op("MatMul", [h, g.weight(f"{p}.self_attn.k", linear_weight(sa.k_proj))]),
                       heads, head_dim)  # (B2, H, 1, 64)
        v_new = _heads(g, g.op("MatMul", [h, g.weight(f"{p}.self_attn.v", linear_weight(sa.v_proj))]),
                       heads, head_dim)
        g.op("Identity", [k_new], outputs=[f"new_key.{i}"])
        g.op("Identity", [v_new], outputs=[f"new_value.{i}"])
        keys = g.op("Concat", [f"past_key.{i}", k_new], axis=2)  # (B2, H, L+1, 64)
        values = g.op("Concat", [f"past_value.{i}", v_new], axis=2)
        attn = _attend(g, q, keys, values, self_bias, d)
        x = g.op("Add", [x, g.op("MatMul", [attn, g.weight(f"{p}.self_attn.out", linear_weight(sa.out_proj))])])
        ca = layer.encoder_attn
        h = layer_norm(g, x, layer.encoder_attn_layer_norm, f"{p}.encoder_attn_layer_norm")
        q = _heads(g, g.op("MatMul", [h, g.weight(f"{p}.encoder_attn.q", linear_weight(ca.q_proj, scaling))]),
                   heads, head_dim)
        ctx = _attend(g, q, f"cross_key.{i}", f"cross_value.{i}", "cross_attention_bias", d)
        x = g.op("Add", [x, g.op("MatMul", [ctx, g.weight(f"{p}.encoder_attn.out", linear_weight(ca.out_proj))])])
        h = layer_norm(g, x, layer.final_layer_norm, f"{p}.final_layer_norm")
        h = _gelu(g, g.op("MatMul", [h, g.weight(f"{p}.fc1", linear_weight(layer.fc1))]))
        x = g.op("Add", [x, g.op("MatMul", [h, g.weight(f"{p}.fc2", linear_weight(layer.fc2))])])

    h = layer_norm(g, x, dec.layer_norm, "layer_norm")
    heads_w = np.concatenate([linear_weight(head) for head in decoder_lm.lm_heads], axis=1)  # (D, K*V)
    logits = g.op("Reshape", [g.op("MatMul", [h, g.weight("lm_heads", heads_w)]), g.const([0, k_books, vocab])])
    g.output(logits, "logits", FLOAT, spec.outputs[0].shape)
    for t in spec.outputs[1:]:
        g.output(t.name, t.name, FLOAT, t.shape)
    return g.model({"graph": "decoder_step_plain", "cache": "static-position", "max_length": str(max_length)})


class PlainStepRunner:
    """Runs decoder_step_plain on any ``run(inputs) -> outputs`` backend with a host-side
    static cache (ONNX Runtime here; the TensorRT backend keeps the cache on the device)."""

    def __init__(self, run, num_layers: int, batch: int, heads: int, max_length: int, head_dim: int) -> None:
        self.run, self.layers = run, num_layers
        self.cache = {f"past_{kind}.{i}": np.zeros((batch, heads, max_length, head_dim), np.float32)
                      for i in range(num_layers) for kind in ("key", "value")}
        self.position = 0

    def step(self, input_ids: np.ndarray, cross: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {"input_ids": input_ids[..., None].astype(np.int64), "position": np.array([self.position]),
                 **cross, **self.cache}
        out = self.run(feeds)
        for i in range(self.layers):
            for kind in ("key", "value"):
                self.cache[f"past_{kind}.{i}"][:, :, self.position] = out[f"new_{kind}.{i}"][:, :, 0]
        self.position += 1
        return out["logits"]
