"""Quantized graphs: MatMulNBits weights (8 or 4 bit) and an int8 KV cache.

Weights: ``MatMulNBits`` (symmetric, per block of input channels, ``accuracy_level=4`` =
int8 compute on CPU) with ONNX Runtime's own codes. The decoder is written with them
directly, one weight at a time from the checkpoint (``quantize_matmul_weight``, called by
``export.decoder_step``): no float32 decoder graph is quantized, which at musicgen-large
size would not fit 24 GB. Traced graphs (CLIP, T5) go through the ``MatMulNBitsQuantizer``
(``quantize_weights``). 4-bit blocks get their scales from a per-block search over
clipped scales (``search_block_scales``): the quantizer itself only offers absmax
(round-to-nearest) scales. Measured on small-random, 2 cores,
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
from onnx import TensorProto, helper

log = logging.getLogger(__name__)

WEIGHT_BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = {8: 256, 4: 256}
"""Decoder block sizes chosen by the measurements above."""
CLIP_BLOCK_SIZE = 128
"""The vision tower keeps the block it was measured with (cosine 0.9999 to fp32)."""
SCALE_SEARCH_RATIOS = tuple(float(r) for r in np.linspace(0.6, 0.975, 16))
"""Fractions of a 4-bit block's absmax tried as its clipping range, besides absmax itself."""

GQA_K_SCALE_INPUT, GQA_V_SCALE_INPUT = 12, 13  # positions in the op's input list (ORT >= 1.23)


def quantize_weights(model: onnx.ModelProto, block_size: int = CLIP_BLOCK_SIZE) -> onnx.ModelProto:
    """A traced graph's MatMuls with constant weights -> 8-bit MatMulNBits (symmetric, int8
    compute), by ONNX Runtime's ``MatMulNBitsQuantizer`` (clip_vision, t5_encoder). The decoder
    is written quantized instead (``quantize_matmul_weight``)."""
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True, accuracy_level=4,
                                     algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    log.info("MatMulNBits: %d MatMuls quantized to 8 bits (block %d)",
             sum(node.op_type == "MatMulNBits" for node in out.graph.node), block_size)
    return out


def quantize_matmul_weight(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (K, N) float32 MatMul weight -> MatMulNBits' (packed (N, blocks, block * bits / 8) uint8,
    scales (N, blocks) float32), symmetric. The codes are ONNX Runtime's own (the C++ kernel its
    ``MatMulNBitsQuantizer`` calls, so a graph written with them equals one the quantizer rewrote);
    at 4 bits each block's scale then comes from ``search_block_scales``. Lets the decoder graph be
    written quantized from the checkpoint's weights, never as a float32 graph first."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    if bits == 4:
        found = search_block_scales(weight, 4, block_size)
        return pack_codes(found.codes, 4, rows=weight.shape[0]), found.scales
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits)
    packed, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(weight, np.float32))
    return packed, scales


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


def quantize_lstm(src, dst) -> None:
    """A graph with its LSTMs as ONNX Runtime's DynamicQuantizeLSTM (int8 weights per tensor,
    activations quantized per call): the streaming EnCodec front's variant. On small-random,
    25-frame chunks, 2 threads, AVX-512 VNNI: the LSTM 25 -> 8 ms per second of audio, 75 dB
    SNR against the float32 stream. Whether it is faster is the host's to say: the runtime
    measures both (``runtime.pipeline.encodec_choice``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
