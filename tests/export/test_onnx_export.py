"""ONNX export: contract, op census and parity with the reference network on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import LORA_ALPHA, LORA_R
from dfd.export import onnx_files
from dfd.export.checkpoint import LoraSettings, load_reference_checkpoint
from dfd.export.configs import load_clip_config, load_dinov2_config
from dfd.export.onnx_export import ExportError, check_stream_onnx, export_stream_onnx, op_census
from dfd.export.streams import STREAM_SPECS, build_stream
from reference_preprocessing import stream_batch


@pytest.fixture(scope="module")
def exported(reference_ensemble, tmp_path_factory):
    """Each tiny stream exported once: name -> (onnx path, loaded module)."""
    dino = load_dinov2_config(reference_ensemble.models_dir)
    clip = load_clip_config(reference_ensemble.models_dir)
    root = tmp_path_factory.mktemp("onnx")
    result = {}
    for name in ("global", "face", "fusion"):
        module = build_stream(name, dino, clip)
        path = reference_ensemble.weights_dir / STREAM_SPECS[name].checkpoint
        module.load_state_dict(load_reference_checkpoint(path, name, dino, clip, LoraSettings(LORA_R, LORA_ALPHA)))
        files = export_stream_onnx(module, root / f"{name}.onnx", STREAM_SPECS[name].input_size)
        assert files == [root / f"{name}.onnx"]
        result[name] = root / f"{name}.onnx"
    return result


def _p_fake(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].numpy()


@pytest.mark.parametrize("name", ["global", "face", "fusion"])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_reference_network(exported, reference_ensemble, photographs, name, batch):
    rng = np.random.default_rng(7)
    images = list(photographs.values()) + [rng.integers(0, 256, (300, 280, 3), dtype=np.uint8) for _ in range(2)]
    pixels = stream_batch(images[:batch], name)
    session = ort.InferenceSession(str(exported[name]), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixels": pixels.numpy()})[0]
    assert logits.shape == (batch, 2) and logits.dtype == np.float32
    reference = reference_ensemble.p_fake(name, pixels).numpy()
    assert np.max(np.abs(_p_fake(logits) - reference)) <= 1e-4


@pytest.mark.parametrize("name,depth_norms", [("global", 2 * 2 + 1), ("face", 2 * 2 + 1), ("fusion", (2 * 2 + 1) + (2 * 2 + 2))])
def test_op_census(exported, name, depth_norms):
    census = op_census(onnx.load(str(exported[name])))
    assert census["Resize"] == 0
    assert census["LayerNormalization"] == depth_norms
    assert census["ReduceMean"] == 0  # LayerNorm must not be decomposed


@pytest.mark.parametrize("name", ["global", "fusion"])
def test_graph_interface(exported, name):
    model = onnx.load(str(exported[name]))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("pixels", "logits")
    size = STREAM_SPECS[name].input_size
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, size, size]
    assert out.type.tensor_type.shape.dim[1].dim_value == 2


def test_contract_check_rejects_wrong_size(exported):
    with pytest.raises(ExportError, match=r"\[N,3,224,224\]"):
        check_stream_onnx(exported["global"], 224)


def _stream_like_graph(path, *, out_shape=("N", 2), out_type=onnx.TensorProto.FLOAT, layer_norm=True,
                       opset=18):
    """A graph with the stream interface: pixels [N,3,4,4] -> (LayerNormalization) -> logits."""
    from onnx import helper

    nodes = [helper.make_node("ReduceMean", ["pixels"], ["pooled"], axes=[2, 3], keepdims=0)
             if opset < 18 else helper.make_node("ReduceMean", ["pixels", "axes"], ["pooled"], keepdims=0)]
    if layer_norm:
        nodes.append(helper.make_node("LayerNormalization", ["pooled", "scale", "bias"], ["normed"]))
    nodes += [helper.make_node("MatMul", ["normed" if layer_norm else "pooled", "weight"], ["scores"]),
              helper.make_node("Cast", ["scores"], ["logits"], to=out_type)]
    initializers = [onnx.numpy_helper.from_array(np.ones(3, np.float32), "scale"),
                    onnx.numpy_helper.from_array(np.zeros(3, np.float32), "bias"),
                    onnx.numpy_helper.from_array(np.ones((3, out_shape[1]), np.float32), "weight"),
                    onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT,
                                                                               ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", out_type, list(out_shape))], initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize("breach, message", [
    ({"out_shape": ("N", 5)}, r"output must be \[N,2\] with a symbolic N"),
    ({"out_shape": (1, 2)}, r"output must be \[N,2\] with a symbolic N"),
    ({"out_shape": ("N", 2, 1)}, r"output must be \[N,2\] with a symbolic N"),
    ({"out_type": onnx.TensorProto.DOUBLE}, "output must be float32"),
    ({"layer_norm": False}, "no native LayerNormalization node"),
    ({"opset": 17}, "opset 17 < 18"),
])
def test_contract_check_covers_the_output_and_the_ops(breach, message, tmp_path):
    """Only the input side was checked: a graph giving float64 [N,5] passed the export's gate."""
    check_stream_onnx(_stream_like_graph(tmp_path / "good.onnx"), 4)
    with pytest.raises(ExportError, match=message):
        check_stream_onnx(_stream_like_graph(tmp_path / "bad.onnx", **breach), 4)


def test_a_graph_the_onnx_checker_refuses_is_an_export_error(tmp_path):
    """What torch's exporter wrote at --opset 17 (opset 18's Split(num_outputs) in an opset 17
    graph) ended the build in a 47-line ValidationError traceback."""
    path = _stream_like_graph(tmp_path / "split.onnx", opset=17)
    model = onnx.load(str(path))
    model.graph.node.append(onnx.helper.make_node("Split", ["logits"], ["a", "b"], axis=1, num_outputs=2))
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="the exported graph is not valid ONNX .*num_outputs"):
        check_stream_onnx(path, 4)


def test_opsets_below_18_are_refused_before_any_work(reference_ensemble, tmp_path):
    from click.testing import CliRunner

    from dfd.export.cli import main

    with pytest.raises(ExportError, match="opset must be within 18..22, got 17"):
        export_stream_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx", 4, opset=17)
    result = CliRunner().invoke(main, ["build", "--models-dir", str(reference_ensemble.models_dir), "--out",
                                       str(tmp_path / "e"), "--opset", "17"])
    assert result.exit_code == 1 and "is not in the range 18<=x<=22" in result.output


def test_large_models_use_external_data(reference_ensemble, tmp_path, photographs, monkeypatch):
    """Past the protobuf limit the weights go to a side file; here the limit is lowered."""
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 1024)
    dino = load_dinov2_config(reference_ensemble.models_dir)
    module = build_stream("global", dino, None)
    path = reference_ensemble.weights_dir / "dinov2_252.pth"
    module.load_state_dict(load_reference_checkpoint(path, "global", dino, None, LoraSettings(LORA_R, LORA_ALPHA)))
    (tmp_path / "global.onnx.orig").write_bytes(b"a user's copy, not the exporter's")
    files = export_stream_onnx(module, tmp_path / "global.onnx", 252)
    assert files == [tmp_path / "global.onnx", tmp_path / "global.onnx.data"]  # the copy beside them is not theirs
    assert files[1].stat().st_size > files[0].stat().st_size
    pixels = stream_batch(list(photographs.values()), "global")
    logits = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels.numpy()})[0]
    reference = reference_ensemble.p_fake("global", pixels).numpy()
    assert np.max(np.abs(_p_fake(logits) - reference)) <= 1e-4
