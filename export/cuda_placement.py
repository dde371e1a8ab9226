"""Can ONNX Runtime capture this graph as a CUDA graph? Decided from the graph alone, on any machine.

ONNX Runtime 1.31 refuses graph capture at session creation when the partitioned graph
holds a memcpy node (``inference_session.cc``: "This session cannot use the graph capture
feature as requested by the user as all compute graph nodes have not been partitioned to the
CUDAExecutionProvider"). A copy appears where a node on the CUDA provider reads a tensor that
lives on the host (or the other way round) through an input its kernel does not declare as
a host input. Which tensors live on the host follows a rule this module re-applies
(``core/framework/fallback_cpu_capability.cc``, ``GetCpuPreferredNodes``):

1. outputs a CUDA kernel declares as host memory (``Shape``, ``Size``) are host tensors,
   and so are all outputs of a node the CUDA provider has no kernel for (it runs on the CPU);
2. their consumers are candidates, taken in topological order; a candidate moves to the CPU
   when none of its inputs is float16/bfloat16 and every input is a small initializer, a
   graph input, or a host tensor that its CUDA kernel does not take as a host input; its
   outputs are then host tensors and its consumers candidates too.

Then every edge is checked: a node on the CUDA provider reading a host tensor through a
device input, or a CPU node reading a device tensor, needs a copy. The kernel facts below
(types, host inputs and outputs) are copied from ONNX Runtime's CUDA kernel registrations
(main at 89b01b4, 2026-08, cross-checked against the strings of the 1.31.1 wheel) for the ops
our graphs use; an op not listed is an error, not a guess. What this cannot see: nodes ONNX
Runtime's own graph optimizations add at session creation (fusions of ours are already
fused: SkipLayerNormalization, MultiHeadAttention, GroupQueryAttention).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from img2music.basics.errors import Img2MusicError
from img2music.basics.onnx_types import op_name as _op
from img2music.basics.onnx_types import tensor_types

FIXED = frozenset({"float", "float16", "bfloat16", "double", "int8", "int16", "int32", "int64", "uint8", "uint16",
                   "uint32", "uint64", "bool"})
"""CUDA's "AllFixedSize" type list."""
NUMBERS = frozenset({"float", "float16", "bfloat16", "double", "int8", "int16", "int32", "int64", "uint8", "uint16",
                     "uint32", "uint64"})
HFD = frozenset({"float", "float16", "bfloat16", "double"})
HALF = frozenset({"float16", "bfloat16"})
SMALL_INITIALIZER = 100
"""Elements: ORT's kSmallInitializerThreshold (an initializer this small may go to the CPU)."""


@dataclass(frozen=True)
class Kernel:
    """One CUDA kernel's facts: the types of its typed input, which inputs it reads from host
    memory and which outputs it writes there."""

    types: frozenset
    typed_input: int = 0
    host_inputs: frozenset = field(default_factory=frozenset)
    host_outputs: frozenset = field(default_factory=frozenset)


def _k(types, typed_input=0, host_inputs=(), host_outputs=()) -> Kernel:
    return Kernel(frozenset(types), typed_input, frozenset(host_inputs), frozenset(host_outputs))


CUDA_KERNELS = {
    "Shape": _k(FIXED, host_outputs=(0,)),
    "Size": _k(FIXED, host_outputs=(0,)),
    "Gather": _k(FIXED),
    "Squeeze": _k(FIXED, host_inputs=(1,)),
    "Unsqueeze": _k(FIXED, host_inputs=(1,)),
    "Cast": _k(FIXED),
    "Add": _k(NUMBERS), "Sub": _k(NUMBERS), "Mul": _k(NUMBERS), "Div": _k(NUMBERS),
    "Equal": _k(NUMBERS | {"bool"}),
    "Where": _k({"uint8", "int32", "int64", "float", "double", "float16", "bfloat16"}, typed_input=1),
    "Range": _k({"float", "double", "int16", "int32", "int64"}, host_inputs=(0, 1, 2)),
    "CumSum": _k({"int32", "int64", "uint32", "uint64", "float", "double", "float16"}, host_inputs=(1,)),
    "Concat": _k(FIXED),
    "Expand": _k(FIXED, host_inputs=(1,)),
    "Split": _k(FIXED, host_inputs=(1,)),
    "Sum": _k(HFD),
    "Reshape": _k(FIXED, host_inputs=(1,)),
    "Slice": _k(FIXED, host_inputs=(1, 2, 3, 4)),
    "ConstantOfShape": _k(FIXED, host_inputs=(0,)),
    "MatMul": _k(HFD),
    "LayerNormalization": _k(HFD),
    "Transpose": _k(FIXED),
    "Identity": _k(FIXED),
    "Softmax": _k(HFD),
    "Tanh": _k(HFD), "Sigmoid": _k(HFD), "Erf": _k(HFD), "Sqrt": _k(HFD), "Pow": _k(HFD),
    "com.microsoft.GroupQueryAttention": _k(HALF, host_inputs=(6,)),  # no float32 kernel
    "com.microsoft.MultiHeadAttention": _k(HFD - {"double"}),
    "com.microsoft.SkipLayerNormalization": _k(HFD - {"double"}),
    "com.microsoft.Gelu": _k(HFD),
    "com.microsoft.MatMulNBits": _k(HFD - {"double"}),
}
"""(domain.)op -> its CUDA kernel. Only ops with a kernel on every registered opset we export."""

@dataclass
class Placement:
    """Where ONNX Runtime would run each node, and the copies that would stop graph capture."""

    on_cpu: list[str]
    """Nodes on the CPU: without a CUDA kernel, or moved there by the fallback rule."""
    copies: list[str]
    """One line per edge that needs a host-device copy (empty: the graph can be captured)."""

    @property
    def capturable(self) -> bool:
        return not self.copies


def placement(model, host_inputs: frozenset = frozenset()) -> Placement:
    """ONNX Runtime's node placement for ``model`` on the CUDA provider. ``host_inputs``: the
    graph inputs the runtime binds in host memory (the rest are device buffers)."""
    graph = model.graph
    types, sizes = tensor_types(model)
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    graph_inputs = {v.name for v in graph.input}
    small = {name for name, count in sizes.items() if count <= SMALL_INITIALIZER}
    initializers = set(sizes)
    kernel_of, cpu, host = {}, set(), set()
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    candidates: list[int] = []
    for i, n in enumerate(nodes):
        kernel = CUDA_KERNELS.get(_op(n))
        if kernel is None:
            raise Img2MusicError(f"the CUDA placement check does not know {_op(n)} (node {n.name}): add its kernel "
                                 "facts from ONNX Runtime's CUDA registrations to export/cuda_placement.py")
        typed = n.input[kernel.typed_input] if kernel.typed_input < len(n.input) else ""
        if types.get(typed) not in kernel.types:
            cpu.add(i)  # no CUDA kernel for this type: the whole node runs on the CPU
            host.update(n.output)
            for out in n.output:
                candidates += consumers.get(out, [])
            continue
        kernel_of[i] = kernel
        for index in kernel.host_outputs:
            host.add(n.output[index])
            candidates += consumers.get(n.output[index], [])
    heapq.heapify(candidates)
    seen = set()
    while candidates:
        i = heapq.heappop(candidates)
        if i in seen or i not in kernel_of:
            continue
        seen.add(i)
        if _falls_back(nodes[i], kernel_of[i], types, small, graph_inputs, host):
            cpu.add(i)
            host.update(nodes[i].output)
            for out in nodes[i].output:
                for c in consumers.get(out, []):
                    heapq.heappush(candidates, c)
    copies = []
    for i, n in enumerate(nodes):
        for index, name in enumerate(n.input):
            if not name or name in initializers:
                continue  # initializers are placed where their consumer reads them, at load
            on_host = name in host if name in producer else name in host_inputs
            if i in cpu:
                wants_host = True
            else:
                wants_host = index in kernel_of[i].host_inputs
            if on_host != wants_host:
                where = "CPU" if i in cpu else "CUDA"
                copies.append(f"{_op(n)} {n.name} (on {where}) reads {name} from "
                              f"{'host' if on_host else 'device'} memory as input {index}")
    return Placement(on_cpu=[nodes[i].name or _op(nodes[i]) for i in sorted(cpu)], copies=copies)


def _falls_back(node, kernel: Kernel, types, small, graph_inputs, host) -> bool:
    """ORT's test for one candidate: every input small/graph input or a host tensor not taken
    as a host input, and none in half precision."""
    for index, name in enumerate(node.input):
        if not name:
            continue
        if types.get(name) in HALF:
            return False
        if name in small or name in graph_inputs:
            continue
        if name not in host or index in kernel.host_inputs:
            return False
    return True


def check_capturable(model, graph: str, host_inputs: frozenset = frozenset()) -> Placement:
    """:func:`placement`, and one clear error when the graph could not be captured."""
    found = placement(model, host_inputs)
    if not found.capturable:
        raise Img2MusicError(f"{graph} cannot run as a CUDA graph: ONNX Runtime would insert a host-device copy "
                             f"({len(found.copies)}): " + "; ".join(found.copies[:4]))
    return found
