"""Put the exporter's exact GELU into the operand order ONNX Runtime fuses.

torch's exporter writes ``nn.GELU()`` as ``x * ((1 + erf(x / sqrt2)) * 0.5)``. ONNX Runtime's
``GeluFusion`` only recognises ``(x * 0.5) * (1 + erf(x / sqrt2))`` (or ``(x * (1 + erf)) * 0.5``),
so every GELU of a stream ran as five element-wise passes over the MLP's widest tensor. Swapping
the two Mul nodes' operands gives the same float bit for bit, because multiplying by 0.5 is
exact in binary floating point, and ONNX Runtime then runs one Gelu (or BiasGelu) kernel.
Measured at ViT-S on this 2-core CPU, paired runs of the graph before and after: 4-7 % faster
(median time ratio 1.043 / 1.067 for the global stream at batch 1 / 4, 1.037 / 1.039 for fusion).
The paper's networks barely change: DINOv2-giant's FFN is SwiGLU and CLIP-L uses quick_gelu, both
of which ONNX Runtime already fuses; only the fusion head's one GELU is affected there. The graph
keeps standard ONNX ops and node names, so TensorRT and the precision passes see the same graph
as before (TensorRT fuses either order itself).
"""

from __future__ import annotations

import math

import onnx
from onnx import numpy_helper


def reorder_erf_gelu(model: onnx.ModelProto) -> int:
    """Rewrite every exported exact GELU of ``model``'s main graph in place; returns how many."""
    graph = model.graph
    constants = _scalar_constants(graph)
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in outputs:
            return None
        return users[0]

    def other_input(node: onnx.NodeProto, known: str) -> str | None:
        rest = [name for name in node.input if name != known]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    rewritten = 0
    for erf in [node for node in graph.node if node.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is(constants, div.input[1], math.sqrt(2.0)):
            continue
        x = div.input[0]
        add = only_consumer(erf.output[0], "Add")
        if add is None or not _is(constants, other_input(add, erf.output[0]), 1.0):
            continue
        half_mul = only_consumer(add.output[0], "Mul")
        half = other_input(half_mul, add.output[0]) if half_mul is not None else None
        if half_mul is None or not _is(constants, half, 0.5):
            continue
        x_mul = only_consumer(half_mul.output[0], "Mul")
        if x_mul is None or other_input(x_mul, half_mul.output[0]) != x:
            continue
        # x * ((1 + erf) * 0.5)  ->  (x * 0.5) * (1 + erf); both nodes keep their names and outputs
        half_mul.input[:] = [x, half]
        x_mul.input[:] = [half_mul.output[0], add.output[0]]
        rewritten += 1
    return rewritten


def _scalar_constants(graph: onnx.GraphProto) -> dict[str, float]:
    """Single-element float constants by name, from initializers and Constant nodes."""
    values: dict[str, float] = {}
    tensors = [(t.name, t) for t in graph.initializer if not t.external_data]
    tensors += [(node.output[0], attr.t) for node in graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
    for name, tensor in tensors:
        # judge the size from the dims: converting every weight matrix just to find scalars is waste
        if tensor.data_type in floats and math.prod(tensor.dims) == 1:
            values[name] = float(numpy_helper.to_array(tensor).reshape(()))
    return values


def _is(constants: dict[str, float], name: str | None, value: float) -> bool:
    """True when ``name`` is a constant equal to ``value`` at float32 precision (as ORT compares)."""
    return name is not None and name in constants and abs(constants[name] - value) <= 1e-6 * abs(value)
