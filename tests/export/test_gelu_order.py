"""The GELU operand reorder: bit-identical values, and ONNX Runtime then fuses every GELU."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dfd.export.configs import DinoV2Config
from dfd.export.gelu_order import reorder_erf_gelu
from dfd.export.onnx_export import export_stream_onnx
from dfd.export.streams import build_stream

SQRT2 = math.sqrt(2.0)


def _gelu_graph(div_by: float = SQRT2, erf_used_twice: bool = False, last_mul_input: str = "x") -> onnx.ModelProto:
    """GELU as torch's exporter writes it: x * ((1 + erf(x / sqrt2)) * 0.5), as a Constant node
    for sqrt2 and initializers for the rest (the exporter uses both)."""
    nodes = [
        helper.make_node("Constant", [], ["s2"], value=numpy_helper.from_array(np.array(div_by, np.float32))),
        helper.make_node("Div", ["x", "s2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["a", "half"], ["h"]),
        helper.make_node("Mul", [last_mul_input, "h"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])]
    if erf_used_twice:
        nodes.append(helper.make_node("Neg", ["e"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 64]))
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]),
                        helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", 64])], outputs,
        [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model: onnx.ModelProto, feeds: dict, level: ort.GraphOptimizationLevel) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_reordered_gelu_is_bit_identical_and_fused_by_onnxruntime(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((200, 64)) * scale for scale in (1e-3, 1, 10, 1e4)]).astype(np.float32)
    feeds = {"x": x, "w": x}
    original = _gelu_graph()
    rewritten = _gelu_graph()
    assert reorder_erf_gelu(rewritten) == 1
    exact = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the Mul nodes as written
    assert np.array_equal(_run(original, feeds, exact).view(np.uint32), _run(rewritten, feeds, exact).view(np.uint32))
    reference = torch.nn.functional.gelu(torch.from_numpy(x.astype(np.float64))).numpy()
    # and it is GELU: float32 rounding of 1 + erf is the only error (cancellation for x << 0)
    assert np.all(np.abs(_run(rewritten, feeds, exact) - reference) <= 1e-6 * np.maximum(1.0, np.abs(x)))

    assert _optimized_ops(original, tmp_path)["Erf"] == 1  # the exporter's order is not fused
    fused = _optimized_ops(rewritten, tmp_path)
    assert fused["Gelu"] == 1 and fused["Erf"] == 0
    assert [n.name for n in original.graph.node] == [n.name for n in rewritten.graph.node]  # nodes kept


@pytest.mark.parametrize("variant", [dict(div_by=2.0), dict(erf_used_twice=True), dict(last_mul_input="w")])
def test_lookalikes_are_left_alone(variant):
    model = _gelu_graph(**variant)
    before = model.SerializeToString()
    assert reorder_erf_gelu(model) == 0
    assert model.SerializeToString() == before


def test_exported_gelu_stream_runs_fused_and_matches_the_module(tmp_path):
    """A DINOv2 with a GELU FFN (ViT-S/B/L; the paper's giant uses SwiGLU): after export every
    GELU is in the fusable order, ONNX Runtime fuses all of them, and the logits match torch."""
    config = DinoV2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=98)
    torch.manual_seed(0)
    module = build_stream("global", config, None)
    path = tmp_path / "global.onnx"
    export_stream_onnx(module, path, 252)
    model = onnx.load(str(path))
    assert Counter(n.op_type for n in model.graph.node)["Erf"] == 3  # still standard ONNX for TensorRT
    assert reorder_erf_gelu(model) == 0  # already in the fusable order
    assert _optimized_ops(model, tmp_path)["Erf"] == 0
    pixels = torch.randn(2, 3, 252, 252)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(pixels).numpy()
    assert np.max(np.abs(session.run(["logits"], {"pixels": pixels.numpy()})[0] - expected)) <= 1e-5
