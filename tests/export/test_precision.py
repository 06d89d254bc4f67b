"""fp16 and INT8 precision graphs of the tiny reference streams, measured on ONNX Runtime CPU
against the fp32 graphs on real photographs and their degraded versions (issue 4 acceptance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dfd.calibration.calibset import build_calibration_set
from dfd.calibration.degrade import fixed_degradation
from dfd.calibration.sources import builtin_photographs
from dfd.export import onnx_files, precision
from dfd.export.precision import (PrecisionError, fake_probabilities, make_fp16_graph, make_int8_graph,
                                  module_path, quantized_layers)
from dfd.runtime.preprocess import preprocess_face, preprocess_fusion, preprocess_global
from dfd.runtime.vote import discretised_vote_batch

STREAMS = ("global", "face", "fusion")
SIZES = {"global": 252, "face": 252, "fusion": 224}
PREPROCESS = {"global": preprocess_global, "face": preprocess_face, "fusion": preprocess_fusion}
DEGRADATIONS = ("jpeg10", "blur3", "noise25", "compound_a")


@pytest.fixture(scope="module")
def calibration():
    return build_calibration_set(builtin_photographs(), count=64, degrade_share=0.5, seed=0, progress=False)


@pytest.fixture(scope="module")
def evaluation():
    """Per stream: the packaged photographs (13, verify's default set) clean, then through each
    fixed degradation: 65 images, enough for a vote agreement to be a rate (on the 15 images of
    three photographs, one changed vote was 93 %, and passing had hung on having none)."""
    photographs = [rgb for _, rgb in builtin_photographs()]
    images = list(photographs)
    for name in DEGRADATIONS:
        images += [fixed_degradation(name)(rgb) for rgb in photographs]
    return {s: np.stack([PREPROCESS[s](rgb, size=SIZES[s]).tensor for rgb in images]) for s in STREAMS}


@pytest.fixture(scope="module")
def graphs(tiny_engine_set, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("precision")
    made = {"fp32": {s: tiny_engine_set / f"{s}.fp32.onnx" for s in STREAMS}}
    for variant in ("fp16", "int8-entropy", "int8-max"):
        made[variant] = {}
        for s in STREAMS:
            path = out / f"{s}.{variant}.onnx"
            if variant == "fp16":
                written = make_fp16_graph(made["fp32"][s], path, calibration.arrays[s])
            else:
                written = make_int8_graph(made["fp32"][s], path, calibration.arrays[s],
                                          method=variant.split("-")[1])
            assert written == [path]
            made[variant][s] = path
    return made


@pytest.fixture(scope="module")
def probabilities(graphs, evaluation):
    return {variant: {s: fake_probabilities(paths[s], evaluation[s]) for s in STREAMS}
            for variant, paths in graphs.items()}


def _votes(by_stream):
    return discretised_vote_batch(np.stack([by_stream[s] for s in STREAMS], axis=1))


def _types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def test_fp16_matches_fp32_on_clean_and_degraded_photographs(probabilities):
    reference, candidate = probabilities["fp32"], probabilities["fp16"]
    for s in STREAMS:
        delta = np.abs(candidate[s].astype(np.float64) - reference[s])
        assert delta.max() <= 5e-3, (s, delta.max())
    assert np.array_equal(_votes(candidate), _votes(reference))


@pytest.mark.parametrize("variant", ["int8-entropy", "int8-max"])
def test_int8_matches_fp32_on_clean_and_degraded_photographs(probabilities, variant):
    """Per stream, mean |dP| within verify's INT8 threshold (0.02) and no image off by half a vote
    step (measured: mean <= 0.015, max <= 0.043). The vote agreement is bounded by what errors of
    that size do to a discretised vote on these random tiny networks: their P spreads over
    [0, 1], so about one image in five has a stream within 0.01 of a digit boundary, and about
    one vote in ten changes (measured 85-91 % over 65 images: entropy 90.8 %, max 84.6 %, one
    image lower since one degraded calibration image changed with the engine's upscale cap).
    verify's 95 % default is a bar for trained networks (README: 96.9 % at ViT-S on 256
    calibration images). Measured through the runtime's ONNX Runtime options: without
    ``session.x64quantprecision`` this CPU (AVX2, no VNNI) gave mean |dP| 0.11 here."""
    reference, candidate = probabilities["fp32"], probabilities[variant]
    for s in STREAMS:
        delta = np.abs(candidate[s].astype(np.float64) - reference[s])
        assert delta.mean() <= 0.02 and delta.max() <= 0.05, (s, delta.mean(), delta.max())
    assert np.mean(_votes(candidate) == _votes(reference)) >= 0.80


def test_fp16_graph_keeps_io_norms_softmax_residual_and_heads_in_fp32(graphs):
    model = onnx.load(str(graphs["fp16"]["fusion"]))
    graph = model.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    declared = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    types = _types(model)
    produced = [name for node in graph.node for name in node.output]
    assert all(name in declared or name == "logits" for name in produced)  # strongly typed
    assert all(declared[name] == types[name] for name in declared)
    by_op = {}
    for node in graph.node:
        by_op.setdefault(node.op_type, []).append(node)
    for op in ("LayerNormalization", "Softmax"):
        for node in by_op[op]:
            assert types[node.input[0]] == types[node.output[0]] == TensorProto.FLOAT, node.name
    linear = [n for n in by_op["MatMul"] if ".blocks." in module_path(n) or ".resblocks." in module_path(n)]
    assert linear and all(types[n.output[0]] == TensorProto.FLOAT16 for n in linear)
    heads = [n for n in graph.node if module_path(n).startswith("head")]
    assert heads and all(types[o] == TensorProto.FLOAT for n in heads for o in n.output)
    residual = [n for n in by_op["Add"]
                if any(c.op_type == "LayerNormalization" and n.output[0] in c.input for c in graph.node)]
    assert residual and all(types[n.output[0]] == TensorProto.FLOAT for n in residual)
    assert by_op["Cast"]


def test_fp16_keeps_nodes_whose_activations_leave_fp16_range(tmp_path):
    """A synthetic stream whose middle activation reaches ~1e5 on the calibration data (the factor 1e4 itself is fp16-safe)."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((48, 8)).astype(np.float32), "big": np.array([1e4], np.float32),
               "w2": rng.standard_normal((8, 2)).astype(np.float32), "gamma": np.ones(8, np.float32),
               "beta": np.zeros(8, np.float32), "shape": np.array([0, -1], np.int64)}
    nodes = [helper.make_node("Reshape", ["pixels", "shape"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "w1"], ["hidden"], name="fc1"),
             helper.make_node("Mul", ["hidden", "big"], ["scaled"], name="scale_up"),
             helper.make_node("Relu", ["scaled"], ["relu"], name="relu"),
             helper.make_node("LayerNormalization", ["relu", "gamma", "beta"], ["normed"], name="norm"),
             helper.make_node("MatMul", ["normed", "w2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "synthetic",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    source = tmp_path / "synthetic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(source))
    pixels = rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    structural, measured = tmp_path / "structural.onnx", tmp_path / "measured.onnx"
    make_fp16_graph(source, structural)
    make_fp16_graph(source, measured, pixels)
    types = {"structural": _types(onnx.load(str(structural))), "measured": _types(onnx.load(str(measured)))}
    assert types["structural"]["scaled"] == TensorProto.FLOAT16  # no measurement: overflows
    assert types["measured"]["scaled"] == TensorProto.FLOAT
    assert types["measured"]["relu"] == TensorProto.FLOAT
    assert np.all(np.isfinite(fake_probabilities(measured, pixels)))
    assert not np.all(np.isfinite(fake_probabilities(structural, pixels)))


def test_int8_graph_quantizes_linear_layers_only(graphs):
    model = onnx.load(str(graphs["int8-entropy"]["fusion"]))
    graph = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    quantized, plain = [], []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        weight = producers.get(node.input[1])
        (quantized if weight is not None and weight.op_type == "DequantizeLinear" else plain).append(node)
    linear_paths = {module_path(n) for n in quantized}
    assert any(".mlp.fc1" in p for p in linear_paths) and any(".attn.qkv" in p for p in linear_paths)
    assert any(".mlp.c_fc" in p for p in linear_paths) and any(".attn" in p for p in linear_paths)
    assert not [p for p in linear_paths if p.startswith("head")]
    assert {n.op_type for n in plain} >= {"Conv", "Gemm", "MatMul"}  # patch embed, heads, attention
    for node in quantized:
        dq = producers[node.input[1]]
        assert initializers[dq.input[0]].dtype == np.int8
        assert not np.any(initializers[dq.input[2]])  # symmetric: zero point 0
        assert initializers[dq.input[1]].size == initializers[dq.input[0]].shape[1 if node.op_type == "MatMul" else 0]
        activation = producers[node.input[0]]
        assert activation.op_type == "DequantizeLinear"
        assert initializers[activation.input[2]].dtype == np.int8 and initializers[activation.input[2]] == 0
    # every layer, two of one module too (open_clip's attention: in_proj MatMul, out_proj Gemm)
    assert quantized_layers(graphs["int8-entropy"]["fusion"]) == [(module_path(n) or n.name, n.op_type)
                                                                 for n in quantized]
    assert len(linear_paths) < len(quantized)


def test_int8_graphs_are_byte_identical_when_built_twice(graphs, tiny_engine_set, calibration, tmp_path):
    again = tmp_path / "global.int8.onnx"
    make_int8_graph(tiny_engine_set / "global.fp32.onnx", again, calibration.arrays["global"], method="entropy")
    assert again.read_bytes() == graphs["int8-entropy"]["global"].read_bytes()


def test_entropy_clips_below_max_and_changes_the_graph(graphs):
    def activation_scales(path):
        model = onnx.load(str(path))
        return {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
                if t.name.endswith("__act_scale")}

    entropy, maximum = activation_scales(graphs["int8-entropy"]["global"]), activation_scales(graphs["int8-max"]["global"])
    assert entropy.keys() == maximum.keys()
    assert all(entropy[k] <= maximum[k] * (1 + 1e-6) for k in entropy)
    assert any(entropy[k] < 0.99 * maximum[k] for k in entropy)


def _reference_entropy_bins(counts, quantized_bins=128):
    """TensorRT's legacy entropy calibration written loop by loop (pytorch-quantization's form)."""
    best_kl, best_bins = np.inf, len(counts)
    last = int(np.flatnonzero(counts)[-1]) + 1
    for bins in range(quantized_bins, last + 1):
        reference = counts[:bins].astype(np.float64).copy()
        reference[-1] += counts[bins:].sum()
        level = [index * quantized_bins // bins if counts[index] else -1 for index in range(bins)]
        totals, members = np.zeros(quantized_bins), np.zeros(quantized_bins)
        for index in range(bins):
            if level[index] >= 0:
                totals[level[index]] += counts[index]
                members[level[index]] += 1
        candidate = np.array([totals[g] / members[g] if g >= 0 else 0.0 for g in level])
        p, q = reference / reference.sum(), candidate / candidate.sum()
        if np.any((p > 0) & (q == 0)):
            continue
        kl = np.sum(p[p > 0] * np.log(p[p > 0] / q[p > 0]))
        if kl < best_kl:
            best_kl, best_bins = kl, bins
    return best_bins


def test_entropy_threshold_matches_a_loop_by_loop_reference():
    rng = np.random.default_rng(3)
    counts = np.zeros(2048, dtype=np.int64)
    body = np.bincount(np.minimum(np.abs(rng.standard_normal(20000)) * 60, 299).astype(int), minlength=300)
    counts[:300] = body
    counts[[350, 410, 449]] = [3, 2, 1]  # sparse outliers
    histogram = precision._AbsHistogram(counts=counts.copy(), top=8.0)
    expected = 8.0 * _reference_entropy_bins(counts) / 2048
    assert histogram.entropy_threshold() == pytest.approx(expected)
    assert expected < 0.7 * 8.0 * 450 / 2048  # the outliers are clipped


def test_histogram_counts_every_value_once():
    rng = np.random.default_rng(4)
    values = np.abs(rng.standard_normal(10000))
    histogram = precision._AbsHistogram.of(values)
    expected = np.bincount(np.minimum((values * (2048 / histogram.top)).astype(int), 2047), minlength=2048)
    np.testing.assert_array_equal(histogram.counts, expected)


def test_histogram_range_doubling_is_exact():
    rng = np.random.default_rng(5)
    small, large = np.abs(rng.standard_normal(5000)), np.abs(4 * rng.standard_normal(5000))
    grown = precision._AbsHistogram.of(small)
    grown.add(large)
    top = grown.top
    edges = np.minimum((np.concatenate([small, large]) * (2048 / top)).astype(int), 2047)
    np.testing.assert_array_equal(grown.counts, np.bincount(edges, minlength=2048))


def test_bad_arguments_give_clear_errors(tiny_engine_set, calibration, tmp_path):
    source = tiny_engine_set / "global.fp32.onnx"
    with pytest.raises(PrecisionError, match="calibration method"):
        make_int8_graph(source, tmp_path / "x.onnx", calibration.arrays["global"], method="percentile")
    with pytest.raises(PrecisionError, match="calibration array must be"):
        make_int8_graph(source, tmp_path / "x.onnx", calibration.arrays["fusion"])
    with pytest.raises(PrecisionError, match="does not exist"):
        make_fp16_graph(tmp_path / "missing.onnx", tmp_path / "x.onnx")
    with pytest.raises(PrecisionError, match="no linear layer left"):
        make_int8_graph(source, tmp_path / "x.onnx", calibration.arrays["global"], keep_fp32=("dino", "head"))


def test_graphs_past_the_external_data_threshold_are_written_with_a_data_file(
        tiny_engine_set, calibration, tmp_path, monkeypatch):
    """The > 2 GB path (external data, shape inference without the tensor bytes), exercised by
    lowering the threshold instead of building a 2 GB graph: the graph written with a data file
    computes exactly what the same graph written inline computes."""
    source, array = tiny_engine_set / "global.fp32.onnx", calibration.arrays["global"][:4]
    makers = ((make_fp16_graph, "global.fp16.onnx", {}), (make_int8_graph, "global.int8.onnx", {"method": "max"}))
    (tmp_path / "inline").mkdir()
    inline = {name: make(source, tmp_path / "inline" / name, array, **options)[0] for make, name, options in makers}
    monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_THRESHOLD", 10_000)
    for make, name, options in makers:
        path = tmp_path / name
        written = make(source, path, array, **options)
        assert written == [path, tmp_path / f"{name}.data"]
        stored = onnx.load(str(path), load_external_data=False).graph.initializer
        assert any(t.data_location == TensorProto.EXTERNAL for t in stored)
        inline_stored = onnx.load(str(inline[name]), load_external_data=False).graph.initializer
        assert not any(t.data_location == TensorProto.EXTERNAL for t in inline_stored)
        assert np.array_equal(fake_probabilities(path, array), fake_probabilities(inline[name], array))


def test_the_work_folder_is_beside_the_output_and_removed(tiny_engine_set, calibration, tmp_path, monkeypatch):
    """The calibration probes wrote the weights' copy (4.4 GB at paper size) to /tmp, where a build
    killed outright (OOM, SIGKILL) left it for good; beside the output it is in the build's staging
    folder, which the next build clears."""
    source, out = tiny_engine_set / "global.fp32.onnx", tmp_path / "staging"  # not there yet: it is made
    folders = []

    def record(*args):
        folders.append(next(arg for arg in args if isinstance(arg, Path)))
        raise RuntimeError("stopped here")

    monkeypatch.setattr(precision, "_calibrate_amax", record)
    monkeypatch.setattr(precision, "_fp16_exceptions", record)
    with pytest.raises(RuntimeError, match="stopped here"):
        make_int8_graph(source, out / "global.int8.onnx", calibration.arrays["global"])
    with pytest.raises(RuntimeError, match="stopped here"):
        make_fp16_graph(source, out / "global.fp16.onnx", calibration.arrays["global"])
    assert [(f.parent, f.name[:10]) for f in folders] == [(out, ".dfd-int8-"), (out, ".dfd-fp16-")]
    assert list(out.iterdir()) == []
