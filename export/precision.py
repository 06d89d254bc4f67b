"""fp16 and INT8 stream graphs made from the fp32 stream ONNX: pure ONNX-to-ONNX transforms.

Precision is decided here, in ONNX, so ONNX Runtime on any CPU can measure what each precision
does to P(fake) and to the vote, and a strongly-typed TensorRT build then compiles exactly the
validated graph (ARCHITECTURE.md, "The one idea that makes it verifiable"). Nothing here imports
torch; the graphs keep the stream contract: ``pixels`` float32 [N,3,H,W] in, ``logits`` float32
[N,2] out, dynamic N.

Why our own passes and not NVIDIA ModelOpt (measured on this machine, ModelOpt 0.47.0)
------------------------------------------------------------------------------------------
``nvidia-modelopt[onnx]`` pins ``onnxruntime-gpu==1.24.*`` and ``onnx==1.21`` on x86. In the
project's environment (onnxruntime 1.31.1, onnx 1.23.2 when measured) that installs a second distribution of the
``onnxruntime`` module over the first and downgrades onnx, so it cannot be a dependency here.
In a scratch environment its AutoCast did run on CPU (0.9 s for the tiny fusion stream, LayerNorm
and Softmax excluded, default ``data_max=512``: max |delta logit| 1.0e-2 against fp32), but it
decides by value ranges only; it has no notion of the residual stream or of the heads, which we
want in fp32 by construction. ONNX Runtime's own ``quantize_static`` is in the environment, but
(1) its "Entropy" method uses 128 histogram bins for 128 quantized bins, so the KL search has a
single candidate and returns the max range: entropy and max would give the same graph; (2) its
histogram calibrator holds every calibrated intermediate of the whole calibration set in memory
(about 190 MB per image for a ViT-S stream, 48 GB for 256 images) before building histograms.
So both passes are written here, small and explicit:

fp16 (:func:`make_fp16_graph`)
    Every node runs in fp16 except, by construction, ``LayerNormalization`` and ``Softmax``
    (statistics and the exp-sum accumulate in fp32), the residual stream (every ``Add`` whose
    result reaches a LayerNormalization or another residual Add; the branches are cast up before
    they join it), the heads (every node after the last LayerNormalization of the towers: CLS
    pooling, the fusion MLP and the final Linear), and, by measurement with ONNX Runtime on the
    calibration array, every node with an input or output above 2**14 in magnitude (a factor 4
    below fp16's 65504, for inputs beyond the calibration set) or a tensor whose every value sits
    below fp16's smallest normal 2**-14 (underflow). The graph is strongly typed: explicit
    ``Cast`` nodes at every precision boundary, fp16 initializers for fp16 nodes, and every
    tensor's type written into ``value_info``, so a strongly-typed TensorRT build has no choice to
    make. ONNX Runtime 1.31 has CPU fp16 kernels for every op left in fp16 in these graphs (Conv,
    MatMul, Gemm, Add, Mul, Erf, Sigmoid, Div, data movement); the tests run the graphs on CPU.

INT8 (:func:`make_int8_graph`)
    Explicit QuantizeLinear/DequantizeLinear pairs in front of the linear layers only (MatMul and
    Gemm whose second input is a weight initializer; the attention score/context MatMuls between
    two activations stay fp32), int8 symmetric everywhere (zero point 0, what TensorRT's explicit
    quantization accepts): activations per tensor with scale amax/127, weights per output channel
    with scale max|w|/127. amax is calibrated in one pass over the calibration array, either
    ``max`` (the largest |x| seen) or ``entropy`` (TensorRT's KL-divergence threshold over a
    2048-bin histogram of |x| with 128 quantized bins; the histogram range doubles when a batch
    exceeds it, merging bin pairs, so one pass is exact). The patch-embedding Conv is never
    quantized (it is not a linear layer: under 1% of a ViT-S stream's multiply-adds, and it sees
    the raw pixels). ``keep_fp32`` names module paths (the exporter's ``pkg.torch.onnx.name_scopes``
    node metadata) whose linear layers stay fp32; the default keeps the heads. The numbers behind
    that choice are in benchmarks/precision_cpu.md.
    Entropy needs a real calibration set: on the tiny test streams, 4 images let it clip so hard
    that one image moved by 0.19 in P(fake) (max calibration: 0.008); 16 images bring it to 0.016.
    Deterministic by construction: fixed batch order, no temporary names, sorted outputs.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dfd.runtime.backends import onnxruntime_session_options
from dfd.runtime.errors import DfdError

from . import onnx_files
from .onnx_files import INPUT_NAME, OUTPUT_NAME, clear_graph_outputs
from dfd.runtime.vote import softmax_fake_probability


FP16_SAFE_MAX = 2.0**14
"""Largest |activation| left in fp16: a factor 4 below fp16's maximum 65504."""
FP16_MIN_NORMAL = 2.0**-14
"""fp16's smallest normal number; a tensor entirely below it keeps almost no precision."""

FP16_KEEP_OPS = frozenset({
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSumExp", "Pow", "Sqrt", "Reciprocal",
})
"""Normalisation, softmax and reductions: accumulations that fp16 loses precision or range in."""
_TYPE_FROM_ATTRIBUTE_OPS = frozenset({
    "Cast", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike",
})
_ANY_TYPE_INPUT_OPS = frozenset({"Shape", "Size"})

DEFAULT_KEEP: tuple[str, ...] = ("head",)
"""Module paths whose linear layers stay fp32 in the INT8 graph: the stream heads."""
CALIBRATION_METHODS = ("entropy", "max")
INT8_MAX = 127
_ENTROPY_BINS = 2048
_ENTROPY_QUANTIZED_BINS = 128
_CALIBRATION_BATCH = 4


class PrecisionError(DfdError, ValueError):
    """A precision graph cannot be made from the given graph or calibration data."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _load(path: Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise PrecisionError(f"ONNX graph {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as error:  # onnx raises DecodeError, OSError, ValueError...
        raise PrecisionError(f"cannot read ONNX graph {path}: {error}") from error


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def _save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` like export_stream_onnx does (one ``<name>.data`` file past 2 GB), check
    it with onnx.checker by path (strict type inference), return every file written."""
    path = Path(path)
    data_file = clear_graph_outputs(path)
    external = onnx_files.needs_external_data(_tensor_bytes(model))
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return [path, data_file] if external else [path]


def _detach_large_tensors(model: onnx.ModelProto) -> dict[str, bytes]:
    """Take the bytes of every large initializer out of ``model`` (marked external instead)."""
    held: dict[str, bytes] = {}
    for tensor in model.graph.initializer:
        if len(tensor.raw_data) > 1024:
            held[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="held-in-memory")
    return held


def _attach_tensors(model: onnx.ModelProto, held: Mapping[str, bytes]) -> None:
    for tensor in model.graph.initializer:
        if tensor.name in held and tensor.data_location == TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            tensor.raw_data = held[tensor.name]


def _infer_shapes(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """ONNX shape/type inference, also for models past protobuf's 2 GB limit: there it runs on
    the graph with its large tensors marked external (inference needs their shapes, not their
    bytes), and the bytes are put back afterwards."""
    if not onnx_files.needs_external_data(_tensor_bytes(model)):
        return onnx.shape_inference.infer_shapes(model, **options)
    held = _detach_large_tensors(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, **options)
    finally:
        _attach_tensors(model, held)
    _attach_tensors(inferred, held)
    return inferred


def _check_stream_io(model: onnx.ModelProto, path: Path) -> None:
    graph = model.graph
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise PrecisionError(f"{path}: expected a stream graph with input '{INPUT_NAME}' and output "
                             f"'{OUTPUT_NAME}'")
    for value in (graph.input[0], graph.output[0]):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise PrecisionError(f"{path}: '{value.name}' must be float32 (make precision graphs "
                                 f"from the fp32 export)")


def _check_calibration(calibration: np.ndarray, model: onnx.ModelProto, what: str) -> np.ndarray:
    array = np.asarray(calibration)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    if array.ndim != 4 or list(array.shape[1:]) != dims or array.shape[0] < 1:
        raise PrecisionError(f"{what}: calibration array must be [N,{','.join(map(str, dims))}] with "
                             f"N >= 1, got shape {array.shape}")
    if array.dtype != np.float32 or not np.all(np.isfinite(array)):
        raise PrecisionError(f"{what}: calibration array must be finite float32, got {array.dtype}")
    return array


# --------------------------------------------------------------------------------------------
# running graphs
# --------------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto, workdir: Path) -> ort.InferenceSession:
    options = onnxruntime_session_options()
    options.log_severity_level = 3
    if onnx_files.needs_external_data(_tensor_bytes(model)):
        path = workdir / "probe.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="probe.onnx.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the float32 tensors ``names``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probe


def _batches(array: np.ndarray, batch: int) -> Iterable[np.ndarray]:
    for start in range(0, len(array), batch):
        yield np.ascontiguousarray(array[start:start + batch])


def fake_probabilities(graph_path: Path, arrays: np.ndarray, batch: int = 8) -> np.ndarray:
    """P(fake) per image from a stream graph on ONNX Runtime CPU ([N] float32)."""
    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise PrecisionError(f"ONNX graph {graph_path} does not exist")
    options = onnxruntime_session_options()  # the runtime's, so the same numbers
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    logits = [session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0] for chunk in _batches(arrays, batch)]
    return softmax_fake_probability(np.concatenate(logits))


# --------------------------------------------------------------------------------------------
# graph structure
# --------------------------------------------------------------------------------------------


def _hoist_constants(graph: onnx.GraphProto) -> None:
    """Turn ``Constant`` nodes holding a tensor into initializers (one way to hold weights)."""
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and node.domain in ("", "ai.onnx"):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = _infer_shapes(model, strict_mode=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name:
                consumers[name].append(index)
    return consumers


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {name: index for index, node in enumerate(graph.node) for name in node.output}


def _nodes_feeding(graph: onnx.GraphProto, targets: set[int]) -> set[int]:
    """Indices of the nodes with a path to any node in ``targets`` (targets included)."""
    producers = _producers(graph)
    seen, stack = set(targets), list(targets)
    while stack:
        for name in graph.node[stack.pop()].input:
            index = producers.get(name)
            if index is not None and index not in seen:
                seen.add(index)
                stack.append(index)
    return seen


def head_nodes(graph: onnx.GraphProto) -> set[int]:
    """Nodes after the towers' last LayerNormalization: pooling and the heads."""
    norms = {i for i, n in enumerate(graph.node) if n.op_type == "LayerNormalization"}
    if not norms:
        raise PrecisionError("graph has no LayerNormalization: not a stream graph of this project")
    feeding = _nodes_feeding(graph, norms)
    return {i for i in range(len(graph.node)) if i not in feeding}


def residual_adds(graph: onnx.GraphProto) -> set[int]:
    """The Adds that carry the residual stream: an Add whose result a LayerNormalization reads,
    or an Add of two activations whose result another residual Add reads."""
    initializers = {t.name for t in graph.initializer}
    consumers = _consumers(graph)
    adds = [i for i, n in enumerate(graph.node) if n.op_type == "Add"]
    residual: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index in adds:
            if index in residual:
                continue
            node = graph.node[index]
            readers = [graph.node[c] for c in consumers.get(node.output[0], [])]
            feeds_norm = any(r.op_type == "LayerNormalization" for r in readers)
            two_activations = not any(name in initializers for name in node.input)
            feeds_residual = any(c in residual for c in consumers.get(node.output[0], []))
            if feeds_norm or (two_activations and feeds_residual):
                residual.add(index)
                changed = True
    return residual


def module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module a node was exported from (``''`` when the exporter did not say)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _matches(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


# --------------------------------------------------------------------------------------------
# fp16
# --------------------------------------------------------------------------------------------


def _activation_extremes(model: onnx.ModelProto, names: Sequence[str], calibration: np.ndarray,
                         workdir: Path) -> dict[str, float]:
    """max |x| of each float32 tensor in ``names`` over the calibration array (ONNX Runtime)."""
    session = _session(_with_outputs(model, names), workdir)
    outputs = [o.name for o in session.get_outputs()]
    extremes = dict.fromkeys(outputs, 0.0)
    for chunk in _batches(calibration, _CALIBRATION_BATCH):
        for name, value in zip(outputs, session.run(outputs, {INPUT_NAME: chunk})):
            if value.size:
                extremes[name] = max(extremes[name], float(np.max(np.abs(value))))
    return extremes


def _fp16_exceptions(model: onnx.ModelProto, types: Mapping[str, int],
                     calibration: np.ndarray | None, workdir: Path) -> set[int]:
    """Indices of the nodes that must stay fp32 (see the module docstring)."""
    graph = model.graph
    keep = head_nodes(graph) | residual_adds(graph)
    keep |= {i for i, n in enumerate(graph.node)
             if n.op_type in FP16_KEEP_OPS | _TYPE_FROM_ATTRIBUTE_OPS or OUTPUT_NAME in n.output}
    unsafe_weights = set()
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            values = np.abs(numpy_helper.to_array(tensor))
            if values.size and (values.max() > FP16_SAFE_MAX or 0 < values.max() < FP16_MIN_NORMAL):
                unsafe_weights.add(tensor.name)
    keep |= {i for i, n in enumerate(graph.node) if unsafe_weights.intersection(n.input)}
    if calibration is not None:
        activations = sorted({name for node in graph.node for name in node.output
                              if types.get(name) == TensorProto.FLOAT})
        extremes = _activation_extremes(model, activations, calibration, workdir)
        for index, node in enumerate(graph.node):
            for name in (*node.input, *node.output):
                value = extremes.get(name)
                if value is not None and (value > FP16_SAFE_MAX or 0 < value < FP16_MIN_NORMAL):
                    keep.add(index)
    return keep


def _convert_to_fp16(model: onnx.ModelProto, types: Mapping[str, int], keep: set[int]) -> None:
    """Rewrite ``model`` in place: fp16 everywhere except nodes in ``keep``, Casts at borders."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    fp16_initializers: dict[str, str] = {}
    precision = {i.name: TensorProto.FLOAT for i in graph.input}
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        low = index not in keep
        want = TensorProto.FLOAT16 if low else TensorProto.FLOAT
        if node.op_type not in _ANY_TYPE_INPUT_OPS:
            for position, name in enumerate(node.input):
                if not name or types.get(name) != TensorProto.FLOAT:
                    continue
                if name in initializers:
                    if low:
                        if name not in fp16_initializers:
                            half = numpy_helper.from_array(
                                numpy_helper.to_array(initializers[name]).astype(np.float16),
                                f"{name}__fp16")
                            graph.initializer.append(half)
                            fp16_initializers[name] = half.name
                        node.input[position] = fp16_initializers[name]
                    continue
                if precision.get(name, TensorProto.FLOAT) != want:
                    key = (name, want)
                    if key not in casts:
                        suffix = "fp16" if low else "fp32"
                        casts[key] = f"{name}__{suffix}"
                        nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want,
                                                      name=f"{name}__cast_{suffix}"))
                    node.input[position] = casts[key]
        for name in node.output:
            if types.get(name) == TensorProto.FLOAT:
                precision[name] = want
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _write_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Re-infer every tensor's type and shape so the file states them all (strong typing)."""
    del model.graph.value_info[:]
    return _infer_shapes(model, strict_mode=True, data_prop=True)


@contextmanager
def _work_folder(out_path: Path, kind: str) -> Iterator[Path]:
    """A temporary folder for the calibration probes, beside ``out_path`` (a build's staging
    folder, which the next build clears): a process killed outright (OOM, SIGKILL) left the probe's
    copy of the weights (4.4 GB at paper size) in /tmp for good."""
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".dfd-{kind}-", dir=Path(out_path).parent) as workdir:
        yield Path(workdir)


def make_fp16_graph(fp32_path: Path, out_path: Path, calibration: np.ndarray | None = None) -> list[Path]:
    """Write the mixed-precision fp16 graph of the fp32 stream graph at ``fp32_path``.

    ``calibration``: the stream's calibration array [N,3,H,W] float32; with it, nodes whose
    activations leave fp16's safe range stay fp32 (without it only the structural rules apply).
    Returns every file written (the graph, plus ``<name>.data`` past 2 GB).
    """
    model = _load(fp32_path)
    _check_stream_io(model, Path(fp32_path))
    if calibration is not None:
        calibration = _check_calibration(calibration, model, "fp16 graph")
    _hoist_constants(model.graph)
    types = _elem_types(model)
    with _work_folder(out_path, "fp16") as workdir:
        keep = _fp16_exceptions(model, types, calibration, workdir)
    _convert_to_fp16(model, types, keep)
    model = _write_value_info(model)
    return _save(model, out_path)


# --------------------------------------------------------------------------------------------
# INT8: calibration
# --------------------------------------------------------------------------------------------


@dataclass
class _AbsHistogram:
    """Histogram of |x| on [0, top) with a fixed number of bins; ``top`` doubles as needed."""

    counts: np.ndarray
    top: float

    @classmethod
    def of(cls, values: np.ndarray) -> _AbsHistogram:
        top = float(values.max()) if values.size else 0.0
        histogram = cls(np.zeros(_ENTROPY_BINS, dtype=np.int64), top if top > 0 else 1.0)
        histogram.add(values)
        return histogram

    def add(self, values: np.ndarray) -> None:
        peak = float(values.max()) if values.size else 0.0
        while peak > self.top:  # merge bin pairs: exact, and the same result in any chunking
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
            self.top *= 2.0
        index = np.minimum((values * (_ENTROPY_BINS / self.top)).astype(np.int64), _ENTROPY_BINS - 1)
        self.counts += np.bincount(index, minlength=_ENTROPY_BINS)

    def entropy_threshold(self) -> float:
        """TensorRT's entropy calibration: the clipping threshold minimising KL(P || Q)."""
        counts = self.counts.astype(np.float64)
        last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 1
        if last <= _ENTROPY_QUANTIZED_BINS:
            return self.top * last / _ENTROPY_BINS
        best, best_bins = np.inf, last
        tail = np.cumsum(counts[::-1])[::-1]
        for bins in range(_ENTROPY_QUANTIZED_BINS, last + 1):
            reference = counts[:bins].copy()
            if bins < _ENTROPY_BINS:
                reference[-1] += tail[bins]
            divergence = _kl_after_quantization(counts[:bins], reference)
            if divergence < best:
                best, best_bins = divergence, bins
        return self.top * best_bins / _ENTROPY_BINS


def _kl_after_quantization(clipped: np.ndarray, reference: np.ndarray) -> float:
    """KL(reference || candidate): ``reference`` is the histogram clipped at this threshold with
    the clipped tail added to its last bin; the candidate merges ``clipped`` (tail not added) into
    128 levels and spreads each evenly over its non-empty bins (TensorRT's entropy calibrator)."""
    bins = len(clipped)
    group = (np.arange(bins) * _ENTROPY_QUANTIZED_BINS) // bins  # level of each source bin
    nonzero = clipped != 0
    sums = np.bincount(group, weights=clipped, minlength=_ENTROPY_QUANTIZED_BINS)
    filled = np.bincount(group, weights=nonzero, minlength=_ENTROPY_QUANTIZED_BINS)
    candidate = np.where(nonzero, sums[group] / np.maximum(filled[group], 1), 0.0)
    p = reference / reference.sum()
    q_total = candidate.sum()
    if q_total == 0:
        return np.inf
    q = candidate / q_total
    support = p > 0
    if np.any(q[support] == 0):
        return np.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def _calibrate_amax(model: onnx.ModelProto, names: Sequence[str], calibration: np.ndarray,
                    method: str, workdir: Path) -> dict[str, float]:
    """amax per activation tensor: ``max`` |x|, or the ``entropy`` threshold."""
    session = _session(_with_outputs(model, names), workdir)
    wanted = sorted(set(names))
    peaks = dict.fromkeys(wanted, 0.0)
    histograms: dict[str, _AbsHistogram] = {}
    for chunk in _batches(calibration, _CALIBRATION_BATCH):
        for name, value in zip(wanted, session.run(wanted, {INPUT_NAME: chunk})):
            magnitude = np.abs(value).ravel()
            peaks[name] = max(peaks[name], float(magnitude.max()) if magnitude.size else 0.0)
            if method == "entropy":
                if name in histograms:
                    histograms[name].add(magnitude)
                else:
                    histograms[name] = _AbsHistogram.of(magnitude)
    if method == "max":
        return peaks
    return {name: min(peaks[name], histograms[name].entropy_threshold()) for name in wanted}


# --------------------------------------------------------------------------------------------
# INT8: Q/DQ insertion
# --------------------------------------------------------------------------------------------


def _linear_layers(graph: onnx.GraphProto, keep_fp32: Sequence[str]) -> list[tuple[int, int]]:
    """(node index, weight axis) of every MatMul/Gemm with a 2-D weight initializer, outside
    ``keep_fp32``. The axis is the weight's output-channel axis."""
    initializers = {t.name: t for t in graph.initializer}
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            continue
        if node.input[0] in initializers or _matches(module_path(node), keep_fp32):
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attributes.get("transA", 0):
            continue
        axis = 0 if node.op_type == "Gemm" and attributes.get("transB", 0) else 1
        layers.append((index, axis))
    return layers


def _quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: (int8 weight, float32 scale per channel)."""
    reduce_axis = 1 - axis
    amax = np.max(np.abs(weight), axis=reduce_axis).astype(np.float32)
    scale = np.where(amax > 0, amax / INT8_MAX, np.float32(1.0)).astype(np.float32)
    shape = (-1, 1) if axis == 0 else (1, -1)
    quantized = np.clip(np.rint(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def _insert_qdq(model: onnx.ModelProto, layers: Sequence[tuple[int, int]],
                amax: Mapping[str, float]) -> None:
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "qdq__zero_point")
    new_initializers = [zero]
    activation_dq: dict[str, str] = {}
    weight_q: dict[tuple[str, int], tuple[str, str, str]] = {}
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for index, axis in layers:
        node = graph.node[index]
        activation, weight_name = node.input[0], node.input[1]
        if activation not in activation_dq:
            scale = max(amax[activation], 1e-12) / INT8_MAX
            scale_name = f"{activation}__act_scale"
            new_initializers.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name))
            quantized, dequantized = f"{activation}__q", f"{activation}__dq"
            before[index] += [
                helper.make_node("QuantizeLinear", [activation, scale_name, zero.name], [quantized],
                                 name=f"{activation}__quantize"),
                helper.make_node("DequantizeLinear", [quantized, scale_name, zero.name], [dequantized],
                                 name=f"{activation}__dequantize"),
            ]
            activation_dq[activation] = dequantized
        key = (weight_name, axis)
        if key not in weight_q:  # a weight two layers share is quantized once per axis it is read along
            stem = weight_name if all(w != weight_name for w, _ in weight_q) else f"{weight_name}__axis{axis}"
            quantized_weight, scale = _quantize_weight(numpy_helper.to_array(initializers[weight_name]), axis)
            weight_q[key] = (f"{stem}__int8", f"{stem}__scale", f"{stem}__zero_point")
            new_initializers += [numpy_helper.from_array(values, name) for values, name in
                                 zip((quantized_weight, scale, np.zeros(scale.shape, dtype=np.int8)), weight_q[key])]
        int8_name, scale_name, zeros_name = weight_q[key]
        dequantized_weight = f"{weight_name}__dq_{node.name or index}"
        before[index].append(helper.make_node("DequantizeLinear", [int8_name, scale_name, zeros_name],
                                              [dequantized_weight], axis=axis,
                                              name=f"{dequantized_weight}__dequantize"))
        node.input[0], node.input[1] = activation_dq[activation], dequantized_weight
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(before.get(index, ()))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def make_int8_graph(fp32_path: Path, out_path: Path, calibration: np.ndarray, *,
                    method: str = "entropy", keep_fp32: Sequence[str] = DEFAULT_KEEP) -> list[Path]:
    """Write the explicit Q/DQ INT8 graph of the fp32 stream graph at ``fp32_path``.

    ``calibration``: the stream's calibration array [N,3,H,W] float32 (from
    ``dfd.calibration.calibset``); ``method``: ``"entropy"`` or ``"max"``; ``keep_fp32``: module
    path prefixes whose linear layers stay fp32. Same inputs give byte-identical files. Returns
    every file written.
    """
    if method not in CALIBRATION_METHODS:
        raise PrecisionError(f"calibration method {method!r} is not available; choose from "
                             f"{', '.join(CALIBRATION_METHODS)}")
    if isinstance(keep_fp32, str):
        raise PrecisionError("keep_fp32 must be a sequence of module paths, not one string")
    model = _load(fp32_path)
    _check_stream_io(model, Path(fp32_path))
    calibration = _check_calibration(calibration, model, "INT8 graph")
    _hoist_constants(model.graph)
    layers = _linear_layers(model.graph, tuple(keep_fp32))
    if not layers:
        raise PrecisionError(f"{fp32_path}: no linear layer left to quantize (keep_fp32={list(keep_fp32)})")
    activations = sorted({model.graph.node[index].input[0] for index, _ in layers})
    with _work_folder(out_path, "int8") as workdir:
        amax = _calibrate_amax(model, activations, calibration, method, workdir)
    _insert_qdq(model, layers, amax)
    del model.graph.value_info[:]
    model = _infer_shapes(model, strict_mode=True)
    return _save(model, out_path)


def quantized_layers(graph_path: Path) -> list[tuple[str, str]]:
    """(module path, op type) of every MatMul/Gemm in an INT8 graph whose weight is dequantized
    from int8, in graph order (for censuses and reports). A list, not a mapping by path: one
    module can hold two layers (open_clip's attention: its in_proj MatMul and out_proj Gemm)."""
    model = onnx.load(str(graph_path), load_external_data=False)
    dequantized = {n.output[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0].endswith("__int8")}
    return [(module_path(n) or n.name, n.op_type) for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in dequantized]


__all__ = [
    "CALIBRATION_METHODS", "DEFAULT_KEEP", "FP16_SAFE_MAX", "PrecisionError",
    "fake_probabilities", "head_nodes", "make_fp16_graph", "make_int8_graph", "module_path",
    "quantized_layers", "residual_adds",
]
