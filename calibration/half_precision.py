"""fp16 graphs for GPU bundles: ONNX Runtime's own float16 converter, inputs and outputs chosen.

ONNX Runtime's CUDA ``GroupQueryAttention`` runs in float16/bfloat16 only (an fp32 decoder's
attention would fall back to the CPU), so a GPU bundle's decoder computes in float16 end
to end: weights, activations, the in-place KV cache and the cross-attention K/V. Only the
logits leave it in float32 (sampling runs on the host), and the conditioning enters
``cross_kv`` in float32 as the projector makes it. CLIP's vision tower computes in
float16 behind float32 pixels and embeddings. The projector (a selection, or a small
MLP) and EnCodec stay float32: the streaming decoder's LSTM state is carried across
chunks, where float16 rounding would accumulate.

Masks stay exact in float16: ``cross_kv`` writes the dtype's minimum where a token is
masked, and a masked token's keys are zero (its conditioning is zeroed first), so a
fully masked row (the guidance null branch) sums finite equal scores, never ``-inf``.
"""

from __future__ import annotations

import onnx

KEEP_FLOAT32_IO = {
    "decoder_step": ["logits"],
    "cross_kv": ["conditioning", "conditioning_log_weight"],
    "clip_vision": True,
}
"""Per converted graph: the inputs/outputs left float32 (True: all of them)."""


def to_float16(model: onnx.ModelProto, graph: str) -> onnx.ModelProto:
    """One bundle graph in float16 (``KEEP_FLOAT32_IO`` says which of its I/O stay float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=KEEP_FLOAT32_IO[graph], disable_shape_infer=True,
                                    force_fp16_initializers=True)
