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


def float16_storage_emulation(model: onnx.ModelProto, round_outputs: bool) -> onnx.ModelProto:
    """A float32 graph that stores every float16 tensor of ``model`` (a converted graph) as
    float16 would: each fp16 weight widened exactly, and a Cast to float16 and back after every
    node output that is float16 in ``model``. Each op then computes in float32 between fp16
    roundings, which is what the CUDA provider does (fp16 storage; its kernels accumulate in
    float32). On the CPU provider the converted graph itself does not show that: ops without a
    float16 CPU kernel (MatMul, the attention over cross K/V, Gelu) run in float32 between
    inserted casts that ONNX Runtime removes along a chain, so activations go unrounded.

    ``round_outputs``: also round float16 graph outputs (cross_kv's K/V); the decoder step's
    outputs are its in-place cache (rounded already: the K/V rows come from a rounded QKV) and
    its float32 logits. The I/O that was float16 becomes float32 (a float32 cache and cross K/V)."""
    from onnx import TensorProto, helper, numpy_helper

    from img2music.basics.onnx_types import tensor_types

    types, _ = tensor_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))
    for v in list(graph.input) + list(graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    outputs = {v.name for v in graph.output}
    nodes = []
    for node in graph.node:
        if node.op_type == "Cast" and helper.get_attribute_value(node.attribute[0]) == TensorProto.FLOAT16:
            node.attribute[0].i = TensorProto.FLOAT  # a conversion cast: rounded by the loop below
        nodes.append(node)
        for index, name in enumerate(node.output):
            if not name or types.get(name) != "float16" or (name in outputs and not round_outputs):
                continue
            raw = f"{name}__f32"
            node.output[index] = raw
            nodes += [helper.make_node("Cast", [raw], [f"{name}__f16"], to=TensorProto.FLOAT16),
                      helper.make_node("Cast", [f"{name}__f16"], [name], to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return out
