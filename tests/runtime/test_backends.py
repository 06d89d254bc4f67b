"""The ONNX Runtime backend: sessions configured so that the set's sessions do not fight for cores."""

from __future__ import annotations

import numpy as np

from dfd.runtime.backends import OnnxRuntimeBackend, onnxruntime_session_options
from dfd.runtime.manifest import load_manifest

SPINNING = "session.intra_op.allow_spinning"


def test_session_options_turn_thread_spinning_off():
    options = onnxruntime_session_options(intra_op_threads=3)
    assert options.get_session_config_entry(SPINNING) == "0"
    assert options.intra_op_num_threads == 3


def test_every_stream_session_runs_without_spinning_and_returns_logits(tiny_engine_set):
    backend = OnnxRuntimeBackend(load_manifest(tiny_engine_set))
    for name, session in backend.sessions.items():
        assert session.get_session_options().get_session_config_entry(SPINNING) == "0", name
        size = session.get_inputs()[0].shape[-1]
        logits = backend.run(name, np.zeros((2, 3, size, size), np.float32))
        assert logits.shape == (2, 2) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_int8_products_are_exact_on_every_cpu():
    """An explicit Q/DQ MatMul whose u8 x s8 pairs would overflow 16 bits: ONNX Runtime's fused
    integer kernel saturated on x86 CPUs without VNNI (this CI machine's AVX2 EPYC among them),
    and the runtime's session options take exact kernels there. Compared with the dequantized
    product computed in float64 (exact for these integers)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    rng = np.random.default_rng(0)
    pixels = np.where(rng.random((4, k)) < 0.5, 1.0, -1.0).astype(np.float32)  # quantizes to +-127
    weight = np.where(rng.random((k, 8)) < 0.5, 127, -127).astype(np.int8)
    weight[:, 0] = np.where(pixels[0] > 0, 127, -127)  # every pair of row 0 x column 0 at the limit
    scale = np.float32(1.0 / 127)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
         numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), onnxruntime_session_options(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": pixels})
    exact = (np.rint(pixels / scale).astype(np.float64) * scale) @ (weight.astype(np.float64) * scale)
    assert abs(exact[0, 0] - k) < 1e-4  # the case that saturates
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-5)
