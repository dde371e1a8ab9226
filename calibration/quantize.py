"""Quantized graphs: MatMulNBits weights (8 or 4 bit) and an int8 KV cache.

Weights: ONNX Runtime's ``MatMulNBitsQuantizer`` turns every MatMul with a constant
weight into ``MatMulNBits`` (symmetric, per block of input channels,
``accuracy_level=4`` = int8 compute on CPU). 4-bit blocks then get their scales from
a per-block search over clipped scales (``search_block_scales``): the quantizer itself
only offers absmax (round-to-nearest) scales. Measured on small-random, 2 cores,
guidance batch 2, int8 KV cache, graph alone (ms/step at 16 -> 1500 cached positions),
one run: 8-bit block 32: 18.1 -> 28.0, 64: 16.0 -> 25.7, 128: 15.4 -> 24.6,
256: 13.7 -> 23.1 (block 512 is not supported); 4-bit + 8-bit output heads, block 128:
11.6 -> 20.6, 256: 10.1 -> 19.2 (the scale search changes values, not speed).
Accuracy against fp32, teacher-forced over 120 steps and two conditionings, KL per
token: 8-bit block 128 0.00083, 256 0.00094 (top-1 agreement 0.93 / 0.95, within
noise); 4-bit block 128 0.0370, block 256 0.0447, block 256 with the scale search
0.0328 (weight MSE 1.23% -> 1.03% of the weights' power; block 128 absmax: 1.06%).
So both use block 256, and 4-bit searches its scales (for 8 bits the search gains 1%:
not worth its time). Asymmetric 4-bit (zero points) was no more accurate and slower
(12.6 ms at 16); HQQ's float zero points take a slow path (350 ms); fp32 compute
(accuracy_level 1) is 4x slower.
Dynamic/static QDQ (``quantize_dynamic``, optimum's q8 recipe) measured 26 -> 72 ms
in the prototype: MatMulNBits is both faster and keeps fp32 activations.

KV cache: the decoder graph is edited, not re-exported: each GroupQueryAttention
gets ``k_quant_type``/``v_quant_type`` = PER_CHANNEL, ``kv_cache_bit_width`` = 8 and
``k_scale.{i}``/``v_scale.{i}`` inputs (1, H, 1, 64); the cache inputs and outputs
become int8. The scales are fed at run time from the bundle's calibrated file.
(With 8-bit weights an fp32 cache measured 15.0 -> 23.8 against 15.4 -> 24.6:
ORT's int8-cache attention dequantizes as it reads, so the int8 cache buys 4x less
memory, 147 MB at 1500 positions instead of 590 MB, not time.)
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

WEIGHT_BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = {8: 256, 4: 256}
"""Decoder block sizes chosen by the measurements above."""
CLIP_BLOCK_SIZE = 128
"""The vision tower keeps the block it was measured with (cosine 0.9999 to fp32)."""
SCALE_SEARCH_RATIOS = tuple(float(r) for r in np.linspace(0.6, 0.975, 16))
"""Fractions of a 4-bit block's absmax tried as its clipping range, besides absmax itself."""

GQA_K_SCALE_INPUT, GQA_V_SCALE_INPUT = 12, 13  # positions in the op's input list (ORT >= 1.23)


def quantize_weights(model: onnx.ModelProto, bits: int, block_size: int | None = None,
                     keep_8bit: list[str] | None = None) -> onnx.ModelProto:
    """MatMul with constant weights -> MatMulNBits (symmetric, int8 compute); 4-bit codes
    and scales come from ``search_block_scales``.

    ``keep_8bit``: node names quantized to 8 bits instead (int4 bundles keep the
    output heads at 8 bits: teacher-forced agreement 0.645 -> 0.681 on small-random, block 128)."""
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    def run(model, bits, block_size, exclude):
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=4, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        return quantizer.model.model

    block_size = block_size or BLOCK_SIZE[bits]
    originals = _constant_matmul_weights(model, exclude=set(keep_8bit or [])) if bits == 4 else {}
    out = run(model, bits, block_size, list(keep_8bit or []))
    if originals:
        refine_4bit_scales(out, originals)
    if keep_8bit and bits != 8:
        out = run(out, 8, BLOCK_SIZE[8], None)  # only the excluded MatMuls are left with constant weights
    n = sum(node.op_type == "MatMulNBits" for node in out.graph.node)
    kept = len(keep_8bit or []) if bits != 8 else 0
    log.info("MatMulNBits: %d MatMuls quantized to %d bits (block %d), %d at 8 bits", n - kept, bits, block_size, kept)
    return out


def int8_kv_cache(model: onnx.ModelProto, num_heads: int, head_dim: int) -> onnx.ModelProto:
    """Edit a decoder_step graph in place: int8 cache with per-channel scale inputs."""
    graph = model.graph
    found = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        layer = node.input[3].rsplit(".", 1)[-1]  # past_key.{i}
        inputs = list(node.input) + [""] * (GQA_V_SCALE_INPUT + 1 - len(node.input))
        inputs[GQA_K_SCALE_INPUT], inputs[GQA_V_SCALE_INPUT] = f"k_scale.{layer}", f"v_scale.{layer}"
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend([
            helper.make_attribute("k_quant_type", "PER_CHANNEL"),
            helper.make_attribute("v_quant_type", "PER_CHANNEL"),
            helper.make_attribute("kv_cache_bit_width", 8),
        ])
        for kind in ("k", "v"):
            graph.input.append(
                helper.make_tensor_value_info(f"{kind}_scale.{layer}", TensorProto.FLOAT, [1, num_heads, 1, head_dim])
            )
        found += 1
    if not found:
        raise ValueError("no GroupQueryAttention node: not a decoder_step graph")
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key.", "past_value.", "present_key.", "present_value.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    return model


def _constant_matmul_weights(model: onnx.ModelProto, exclude: set[str]) -> dict[str, np.ndarray]:
    """Copies of the (K, N) weights the quantizer will replace (it edits the model in place).
    Holds the decoder's fp32 weights once more while it is quantized (1.3 GB for small)."""
    inits = {init.name: init for init in model.graph.initializer}
    return {node.input[1]: numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            for node in model.graph.node
            if node.op_type == "MatMul" and node.name not in exclude and node.input[1] in inits}


class BlockCodes(NamedTuple):
    """A weight's blockwise codes, and how far they and the absmax codes are from it."""

    codes: np.ndarray
    """(N, blocks, block) int8 offsets from the zero point."""
    scales: np.ndarray
    """(N, blocks) float32."""
    error: float
    """Sum of squared differences between the codes' values and the weight."""
    absmax_error: float
    """The same for the quantizer's own absmax codes."""


def search_block_scales(weight: np.ndarray, bits: int, block_size: int,
                        ratios: tuple[float, ...] = SCALE_SEARCH_RATIOS) -> BlockCodes:
    """Symmetric blockwise codes for a (K, N) weight in MatMulNBits' layout.

    Per block of ``block_size`` input channels, the scale is ``ratio * v / -2**(bits-1)``
    (``v`` the block's largest-magnitude value, so that it lands on the most negative
    code, as MLAS does) for the ratio with the least squared error. Absmax (ratio 1.0,
    the quantizer's own round-to-nearest codes) is the first candidate, so the result is
    never worse than the quantizer's; ``ratios=()`` returns exactly those codes."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = weight  # the quantizer pads K with zeros; zeros quantize exactly
    w = np.ascontiguousarray(padded.T).reshape(n, blocks, block_size)  # (N, blocks, block)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    peak = np.take_along_axis(w, np.abs(w).argmax(-1)[..., None], -1)[..., 0]  # (N, blocks), signed

    def codes(scale: np.ndarray) -> np.ndarray:
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)  # MLAS: 0 for an all-zero block
        return np.clip(np.rint(w * inverse[..., None]), lo, hi)

    def error(scale: np.ndarray) -> np.ndarray:
        return ((codes(scale) * scale[..., None] - w) ** 2).sum(-1)  # (N, blocks)

    best_scale = (peak / np.float32(lo)).astype(np.float32)
    best_error = error(best_scale)
    absmax_error = float(best_error.sum())
    for ratio in ratios:
        scale = (np.float32(ratio) * peak / np.float32(lo)).astype(np.float32)
        candidate = error(scale)
        better = candidate < best_error
        best_error = np.where(better, candidate, best_error)
        best_scale = np.where(better, scale, best_scale)
    return BlockCodes(codes(best_scale).astype(np.int8), best_scale, float(best_error.sum()), absmax_error)


def pack_codes(codes: np.ndarray, bits: int, rows: int | None = None) -> np.ndarray:
    """(N, blocks, block) signed codes -> MatMulNBits' uint8 blob (N, blocks, block * bits / 8):
    zero point 2**(bits-1) added; at 4 bits two codes per byte, the even one in the low nibble.
    Codes past ``rows`` (K padded up to whole blocks) are stored as 0, as the quantizer does."""
    unsigned = (codes.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    if rows is not None:
        flat = unsigned.reshape(unsigned.shape[0], -1)
        flat[:, rows:] = 0
    if bits == 8:
        return unsigned
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)


def refine_4bit_scales(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> None:
    """Replace the codes and scales of every 4-bit MatMulNBits by ``search_block_scales``'."""
    inits = {init.name: init for init in model.graph.initializer}
    before = after = 0.0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs.get("bits") != 4:
            continue
        if len(node.input) > 3 and node.input[3]:
            raise ValueError(f"{node.name}: expected symmetric 4-bit weights (no zero points)")
        source = node.input[1].removesuffix("_Q4")
        if source not in originals:
            raise ValueError(f"{node.name}: no original weight {source!r} to search scales for")
        weight = originals[source]
        found = search_block_scales(weight, 4, attrs["block_size"])
        blob, scale_init = inits[node.input[1]], inits[node.input[2]]
        packed = pack_codes(found.codes, 4, rows=weight.shape[0]).reshape(tuple(blob.dims))
        blob.CopyFrom(numpy_helper.from_array(packed, blob.name))
        scale_init.CopyFrom(numpy_helper.from_array(found.scales.reshape(tuple(scale_init.dims)), scale_init.name))
        before += found.absmax_error
        after += found.error
    if before:
        log.info("4-bit scale search: squared weight error %.4g -> %.4g (%.1f%% less)",
                 before, after, 100 * (1 - after / before))
