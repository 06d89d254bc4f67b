"""Export one stream module to ONNX under the stream contract of ARCHITECTURE.md.

Contract: input ``pixels`` float32 [N,3,H,W] (already normalised), output ``logits`` float32
[N,2]; dynamic N, static H/W; opset 17..22; native ``LayerNormalization``; no ``Resize`` (the
position grid is baked in); external data only when the file would pass protobuf's 2 GB limit.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

from dfd.runtime.errors import DfdError

from . import onnx_files
from .gelu_order import reorder_erf_gelu
from .onnx_files import DEFAULT_OPSET, INPUT_NAME, MAX_OPSET, MIN_OPSET, OUTPUT_NAME, clear_graph_outputs



class ExportError(DfdError, RuntimeError):
    """The exported graph violates the stream contract."""


def parameter_bytes(module: nn.Module) -> int:
    """The bytes of a module's parameters: what decides whether its graph needs external data."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_names: tuple[str, ...],
    dynamic_axes: dict[int, torch.export.Dim],
    opset: int,
    *,
    external: bool = False,
) -> None:
    """Write a one-input ``module`` as ONNX at ``path`` with torch's torch.export-based exporter
    (torch's maintained path), ``dynamic_axes`` of the input symbolic. Every graph the project
    ships (streams, BlazeFace, MTCNN) goes through this one call, so they share exporter settings;
    stale outputs of an earlier export at ``path`` are removed first."""
    clear_graph_outputs(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about its own internals
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_shapes=(dynamic_axes,),
            opset_version=opset,
            dynamo=True,
            external_data=external,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=external)


def export_stream_onnx(module: nn.Module, path: Path, input_size: int, opset: int = DEFAULT_OPSET) -> list[Path]:
    """Write ``module`` as ONNX to ``path``; returns every file written (graph + external data).

    Uses the torch.export-based exporter (torch's maintained path); the example batch is 2 so the
    batch dimension cannot be specialised to 1.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be within {MIN_OPSET}..{MAX_OPSET}, got {opset}: below {MIN_OPSET} torch's "
                          f"exporter writes graphs the ONNX checker refuses; above {MAX_OPSET} attention is one fused "
                          f"node whose softmax the fp16 and INT8 passes cannot keep in fp32")
    path = Path(path)
    external = onnx_files.needs_external_data(parameter_bytes(module))
    example = torch.zeros(2, 3, input_size, input_size, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    export_graph(module.eval(), example, path, INPUT_NAME, (OUTPUT_NAME,), {0: batch}, opset, external=external)
    order_gelu_for_onnxruntime(path)
    check_stream_onnx(path, input_size)
    # the exporter names the data file after the graph, next to it (onnx_files.data_file_of)
    return [path, onnx_files.data_file_of(path)] if external else [path]


def order_gelu_for_onnxruntime(path: Path) -> int:
    """Rewrite the graph at ``path`` so ONNX Runtime fuses its GELUs (see ``gelu_order``); the
    weights, external or not, are not touched. Returns the number of GELUs rewritten."""
    model = onnx.load(str(path), load_external_data=False)
    rewritten = reorder_erf_gelu(model)
    if rewritten:
        onnx.save(model, str(path))
    return rewritten


def op_census(model: onnx.ModelProto) -> Counter:
    """Node count per op type, including nodes inside local functions and subgraphs."""
    counts: Counter = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            counts[node.op_type] += 1
    return counts


def check_stream_onnx(path: Path, input_size: int) -> None:
    """Validate a stream graph against the contract (ARCHITECTURE.md: ``pixels`` float32
    [N,3,H,W] in, ``logits`` float32 [N,2] out, symbolic N, opset >= MIN_OPSET, native
    LayerNormalization, no Resize); raise ``ExportError`` naming the breach."""
    try:
        onnx.checker.check_model(str(path))  # by path: works past 2 GB with external data
    except onnx.checker.ValidationError as exc:
        first_line = (str(exc).strip().splitlines() or ["invalid"])[0]
        raise ExportError(f"{path}: the exported graph is not valid ONNX ({first_line})") from exc
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}'")
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[0].dim_param or [d.dim_value for d in dims[1:]] != [3, input_size, input_size]:
        raise ExportError(f"{path}: input must be [N,3,{input_size},{input_size}] with a symbolic N")
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 2 or not out_dims[0].dim_param or out_dims[1].dim_value != 2:
        raise ExportError(f"{path}: output must be [N,2] with a symbolic N")
    for value, name in ((graph.input[0], "input"), (graph.output[0], "output")):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"{path}: {name} must be float32")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(f"{path}: opset {opset} < {MIN_OPSET}")
    census = op_census(model)
    if census["Resize"]:
        raise ExportError(f"{path}: {census['Resize']} Resize node(s); the position grid must be baked in")
    if not census["LayerNormalization"]:
        raise ExportError(f"{path}: no native LayerNormalization node; the fp16 pass keeps those in fp32 by type")
