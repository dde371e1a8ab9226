"""A small helper for writing ONNX graphs node by node (onnx.helper underneath).

The decoder step and cross-attention graphs are written directly rather than traced:
they use ONNX Runtime's ``com.microsoft.GroupQueryAttention`` with an in-place KV
cache, which no torch exporter emits, and tracing would bake the Python cache logic
into the graph. Weights come from the transformers modules; export-time validation
(``export.validation``) compares every graph with those modules.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MS_DOMAIN = "com.microsoft"

FLOAT, INT32, INT64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


class GraphBuilder:
    """Collects nodes, initializers and I/O; :meth:`model` returns the ``ModelProto``.

    Initializers are written straight into the model's graph: ``helper.make_graph`` and
    ``make_model`` copy every tensor they are given, and at musicgen-medium size (6 GB of
    fp32 weights) two extra copies were what ran a 24 GB machine out of memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self._model = onnx.ModelProto()
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._ids = itertools.count()
        self._consts: dict[tuple, str] = {}

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        self._model.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small constant (shapes, axes, scalars), shared between nodes."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(f"const_{len(self._consts)}", array)
        return self._consts[key]

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
           domain: str | None = None, **attrs) -> str | list[str]:
        """Add a node; returns its output name (or names, when more than one)."""
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}_{next(self._ids)}" for _ in range(outputs)]
        # Named after the first output, so tools (quantizers, profilers) can address nodes.
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=outputs[0], domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def model(self, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        model, self._model = self._model, onnx.ModelProto()  # the builder lets go of the weights
        graph = model.graph
        graph.name = self.name
        graph.node.extend(self.nodes)
        graph.input.extend(self.inputs)
        graph.output.extend(self.outputs)
        model.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
        model.producer_name = "img2music"
        model.ir_version = 8  # readable by onnxruntime >= 1.14 (JetPack's builds included)
        for key, value in (metadata or {}).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=str(value)))
        return model


def layer_norm(g: GraphBuilder, x: str, module, prefix: str) -> str:
    """nn.LayerNorm -> LayerNormalization over the last axis."""
    w = g.weight(f"{prefix}.weight", module.weight.detach().float().numpy())
    b = g.weight(f"{prefix}.bias", module.bias.detach().float().numpy())
    return g.op("LayerNormalization", [x, w, b], axis=-1, epsilon=float(module.eps))


def linear_weight(module, scale: float = 1.0) -> np.ndarray:
    """nn.Linear weight (out, in) -> MatMul weight (in, out)."""
    return (module.weight.detach().float().numpy().T * scale).astype(np.float32)


def skip_layer_norm(g: GraphBuilder, x: str, residual: str, module, prefix: str) -> tuple[str, str]:
    """(LayerNorm(x + residual), x + residual) in one com.microsoft.SkipLayerNormalization."""
    w = g.weight(f"{prefix}.weight", module.weight.detach().float().numpy())
    b = g.weight(f"{prefix}.bias", module.bias.detach().float().numpy())
    normed, total = f"{prefix}.out", f"{prefix}.residual"
    g.op("SkipLayerNormalization", [x, residual, w, b], outputs=[normed, "", "", total], domain=MS_DOMAIN,
         epsilon=float(module.eps))
    return normed, total
