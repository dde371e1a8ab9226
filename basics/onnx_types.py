"""Element types of every tensor in an ONNX graph, propagated node by node from its inputs and
initializers: ONNX's own shape inference does not know ONNX Runtime's contrib ops
(GroupQueryAttention, MultiHeadAttention, SkipLayerNormalization), which our graphs are full of.
Enough for the ops our graphs use (an output has its first input's type unless said otherwise)."""

from __future__ import annotations

ELEM = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
        10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def op_name(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def output_types(node, types: dict) -> list:
    """Element types of a node's outputs from its inputs'."""
    op = op_name(node)
    first = types.get(node.input[0]) if node.input else None
    if op in ("Shape", "Size"):
        return ["int64"]
    if op == "Cast":
        return [ELEM[attr(node, "to")]]
    if op == "Equal":
        return ["bool"]
    if op == "Where":
        return [types.get(node.input[1])]
    if op == "ConstantOfShape":
        value = attr(node, "value")
        return [ELEM[value.data_type] if value is not None else "float"]
    if op == "com.microsoft.GroupQueryAttention":  # output, present_key, present_value
        past = types.get(node.input[3]) if len(node.input) > 3 and node.input[3] else first
        return [first, past, past]
    return [first] * len(node.output)


def tensor_types(model) -> tuple[dict, dict]:
    """({tensor: element type name}, {initializer or Constant output: element count}) of a ModelProto."""
    graph = model.graph
    types = {v.name: ELEM.get(v.type.tensor_type.elem_type) for v in graph.input}
    sizes = {}
    for t in graph.initializer:
        types[t.name] = ELEM.get(t.data_type)
        count = 1
        for d in t.dims:
            count *= d
        sizes[t.name] = count
    for node in graph.node:
        if node.op_type == "Constant":
            value = attr(node, "value")
            types[node.output[0]] = ELEM.get(value.data_type)
            sizes[node.output[0]] = max(1, len(value.int64_data) + len(value.float_data) + len(value.int32_data))
            continue
        for name, kind in zip(node.output, output_types(node, types)):
            types[name] = kind
    return types, sizes
