"""decoder_step.onnx: MusicGen decoder steps with an in-place static KV cache.

One graph serves both uses, so the weights are stored once: ``input_ids`` is
(B2, K, S) with S = 1 for a generation step, or S tokens at once to prefill an empty
cache (re-priming a window for endless generation); logits are the last token's.

Why GroupQueryAttention: the cache is preallocated for the maximum length and the
step must not copy it. The past/present concat pattern (optimum's export) copies the
whole cache every step, so its cost grows with length (55 -> 169 ms from 16 to 1500
positions on two cores). ONNX Runtime's ``com.microsoft.GroupQueryAttention`` reads
``past_key``/``past_value`` of shape (B2, H, L_max, 64), writes only row
``seqlens_k`` and works in place when past and present are the same OrtValue (IO
binding, ``runtime.backends.ort_decoder``): 47 -> 67 ms in the prototype. It needs a
head size that is a multiple of 8 (64 for every MusicGen). TensorRT has no kernel for
it, so under ``--provider tensorrt`` this graph stays on the CUDA provider
(runtime/backends/providers.py).

Per layer (pre-LayerNorm, no biases, exact GELU)::

    x (B2, 1, D)
    qkv = LN1(x) @ [Wq | Wk | Wv]                   # (B2, 1, 3D), one fused MatMul
    x  += GQA(qkv, past, seqlens_k) @ Wo            # writes K/V row seqlens_k in place
    q   = LN2(x) @ (Wq_cross / sqrt(64))            # (B2, 1, D)
    x  += MHA(q, K_cross, V_cross, bias) @ Wo_cross # K/V (B2, H, N, 64) from cross_kv.onnx
    x  += GELU(LN3(x) @ W1) @ W2

then the final LayerNorm and the K output heads fused into one MatMul. Each residual
add and the LayerNorm after it are one ``SkipLayerNormalization`` and cross-attention
is one ``MultiHeadAttention``: on small-random int4 they were 96 Adds + 72
LayerNorms (1.8 ms/step) and 6 small ops per layer (2.3 ms/step), mostly dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from img2music.basics.checkpoint_limits import check, decoder_problems
from img2music.basics.graph_specs import LM_HEADS_NODE, decoder_step_spec
from img2music.export.onnx_graph import (
    FLOAT,
    INT32,
    INT64,
    MS_DOMAIN,
    GraphBuilder,
    layer_norm,
    linear_weight,
    skip_layer_norm,
)


@dataclass(frozen=True)
class DecoderWeights:
    """How decoder_step stores its MatMul weights: float32 (``bits`` None) or MatMulNBits."""

    bits: int | None = None
    """8 or 4: every MatMul weight quantized as it is written (``calibration.quantize``)."""
    block_size: int = 256
    """Input channels per quantization block."""
    heads_bits: int | None = None
    """The output heads' bits when they differ: int4 bundles keep them at 8 (teacher-forced
    agreement 0.645 -> 0.681 on small-random, block 128)."""


def build_decoder_step(decoder_lm, weights: DecoderWeights = DecoderWeights()) -> "onnx.ModelProto":  # noqa: F821
    """``MusicgenForCausalLM`` -> decoder_step ModelProto, float32 or with quantized weights.

    Quantized weights are made one MatMul at a time from the torch weights, so the float32
    graph never exists: musicgen-large's would be 13 GB beside the checkpoint's 13 GB."""
    cfg = decoder_lm.config
    dec = decoder_lm.model.decoder
    k_books, vocab, hidden = cfg.num_codebooks, cfg.vocab_size, cfg.hidden_size
    heads = cfg.num_attention_heads
    head_dim = hidden // heads
    layers = cfg.num_hidden_layers
    check(decoder_problems(cfg), "this MusicGen decoder")  # load_pretrained checked already; presets here
    spec = decoder_step_spec(k_books, vocab, layers, heads, head_dim)
    g = GraphBuilder("decoder_step")

    def matmul(x: str, name: str, weight: np.ndarray, bits: int | None = weights.bits, outputs=1) -> str:
        if bits is None:
            return g.op("MatMul", [x, g.weight(name, weight)], outputs=outputs)
        from img2music.calibration.quantize import quantize_matmul_weight

        packed, scales = quantize_matmul_weight(weight, bits, weights.block_size)
        return g.op("MatMulNBits", [x, g.weight(f"{name}_Q{bits}", packed), g.weight(f"{name}_scales", scales)],
                    outputs=outputs, domain=MS_DOMAIN, K=weight.shape[0], N=weight.shape[1], bits=bits,
                    block_size=weights.block_size, accuracy_level=4)  # int8 compute on the CPU
    for t in spec.inputs:
        g.input(t.name, {"int64": INT64, "int32": INT32, "float32": FLOAT}[t.dtype], t.shape)

    # Token embeddings: sum over codebooks of embed_k[ids[:, k, :]].
    ids = g.op("Split", ["input_ids"], outputs=k_books, axis=1) if k_books > 1 else ["input_ids"]
    embeds, codes = [], []
    for k in range(k_books):
        table = g.weight(f"embed_tokens.{k}", dec.embed_tokens[k].weight.detach().float().numpy())
        codes.append(g.op("Squeeze", [ids[k], g.const([1])]))  # (B2, S)
        embeds.append(g.op("Gather", [table, codes[k]], axis=0))  # (B2, S, D)
    x = g.op("Sum", embeds) if k_books > 1 else embeds[0]
    # Positions seqlens_k - S + 1 .. seqlens_k per row (seqlens_k = cached + S - 1; one step:
    # the count of cached positions; a prefill into an empty cache: 0 .. S-1). From seqlens_k,
    # not total_sequence_length: a captured CUDA graph keeps total fixed at the cache length
    # and only seqlens_k (a device tensor) moves. And from device tensors alone: on the CUDA
    # provider Shape() writes host memory, and arithmetic mixing it with seqlens_k needs a
    # host-device copy, which makes ONNX Runtime refuse graph capture (export.cuda_placement
    # checks the built graph). S - i for i = 0..S-1 is a reversed cumulative sum of ones shaped
    # like the codes; no Range either (ORT 1.32 rewrote Gather(table, Range) into a Slice that
    # failed at run time).
    ones = g.op("Add", [g.op("Mul", [codes[0], g.const(0)]), g.const(1)])  # (B2, S) int64 ones
    remaining = g.op("CumSum", [ones, g.const(1)], reverse=1)  # (B2, S): S, S-1, .., 1
    last = g.op("Unsqueeze", [g.op("Cast", ["seqlens_k"], to=INT64), g.const([1])])  # (B2, 1)
    pos_ids = g.op("Sub", [g.op("Add", [last, g.const(1)]), remaining])  # (B2, S)
    positions = g.weight("embed_positions", dec.embed_positions.weights.detach().float().numpy())
    x = g.op("Add", [x, g.op("Gather", [positions, pos_ids], axis=0)])  # (B2, S, D)
    seq_1 = g.op("Shape", ["input_ids"], start=2, end=3)  # [S] on the host: only Expand's shape reads it
    # The cross-attention mask, once for all layers: (B2, 1, 1, N) -> (B2, 1, S, N).
    bias_shape = g.op("Concat", [g.const([1, 1]), seq_1, g.const([1])], axis=0)
    cross_bias = g.op("Expand", ["cross_attention_bias", bias_shape])

    scaling = head_dim ** -0.5
    # Pre-LayerNorm blocks; each residual add is fused with the next LayerNorm
    # (SkipLayerNormalization returns both the normalised sum and the sum itself).
    h = layer_norm(g, x, dec.layers[0].self_attn_layer_norm, "layers.0.self_attn_layer_norm")
    for i, layer in enumerate(dec.layers):
        p = f"layers.{i}"
        # Self-attention, cache updated in place.
        sa = layer.self_attn
        w_qkv = np.concatenate([linear_weight(sa.q_proj), linear_weight(sa.k_proj), linear_weight(sa.v_proj)], axis=1)
        qkv = matmul(h, f"{p}.self_attn.qkv", w_qkv)  # (B2, 1, 3D)
        attn = g.op(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length"],
            outputs=[f"attn_{i}", f"present_key.{i}", f"present_value.{i}"],
            domain=MS_DOMAIN, num_heads=heads, kv_num_heads=heads, scale=float(scaling),
        )[0]  # (B2, 1, D)
        attn = matmul(attn, f"{p}.self_attn.out", linear_weight(sa.out_proj))
        h, x = skip_layer_norm(g, attn, x, layer.encoder_attn_layer_norm, f"{p}.encoder_attn_layer_norm")
        # Cross-attention over K/V precomputed once per conditioning (scaling folded into Wq).
        ca = layer.encoder_attn
        q = matmul(h, f"{p}.encoder_attn.q", linear_weight(ca.q_proj, scaling))  # (B2, 1, D)
        ctx = g.op("MultiHeadAttention", [q, f"cross_key.{i}", f"cross_value.{i}", "", "", cross_bias],
                   domain=MS_DOMAIN, num_heads=heads, scale=1.0)  # (B2, 1, D)
        ctx = matmul(ctx, f"{p}.encoder_attn.out", linear_weight(ca.out_proj))
        h, x = skip_layer_norm(g, ctx, x, layer.final_layer_norm, f"{p}.final_layer_norm")
        # Feed-forward.
        h = matmul(h, f"{p}.fc1", linear_weight(layer.fc1))
        h = g.op("Gelu", [h], domain=MS_DOMAIN)  # exact (erf) GELU, as transformers' "gelu"
        ffn = matmul(h, f"{p}.fc2", linear_weight(layer.fc2))
        next_norm = dec.layers[i + 1].self_attn_layer_norm if i + 1 < layers else dec.layer_norm
        next_name = f"layers.{i + 1}.self_attn_layer_norm" if i + 1 < layers else "layer_norm"
        h, x = skip_layer_norm(g, ffn, x, next_norm, next_name)

    heads_w = np.concatenate([linear_weight(head) for head in decoder_lm.lm_heads], axis=1)  # (D, K*V)
    h = g.op("Gather", [h, g.const([-1])], axis=1)  # the last token (B2, 1, D)
    logits = matmul(h, "lm_heads", heads_w, weights.heads_bits or weights.bits, outputs=[LM_HEADS_NODE])  # (B2, 1, K*V)
    logits = g.op("Reshape", [logits, g.const([0, k_books, vocab])])  # (B2, K, V)
    g.output(logits, "logits", FLOAT, spec.outputs[0].shape)
    for t in spec.outputs[1:]:
        g.output(t.name, t.name, FLOAT, t.shape)  # written by GroupQueryAttention
    return g.model({"graph": "decoder_step", "cache": "groupqueryattention-inplace",
                    "weights": "float32" if weights.bits is None else f"MatMulNBits {weights.bits}-bit"})
