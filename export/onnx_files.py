"""The rules every ONNX graph the build writes follows: its names, which opsets, and where its
weights go.

protobuf cannot serialise a message past 2 GB, so a graph whose tensors come near that limit
keeps them in one ``<graph>.data`` file beside it. Shared by the fp32 exporter (which needs
torch) and the precision passes (which must not), hence its own torch-free module.
"""

from __future__ import annotations

from pathlib import Path

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
"""The stream graph contract (ARCHITECTURE.md): input ``pixels`` [N,3,H,W], output ``logits`` [N,2]."""

DEFAULT_OPSET = 18
MIN_OPSET = 18
"""Native LayerNormalization needs 17, but torch's exporter writes opset 18 and its conversion down
to 17 keeps opset 18's ``Split(num_outputs)``, which opset 17 does not have (the checker refuses
the graph); TensorRT 10, the oldest this project builds for, parses opset 18."""
MAX_OPSET = 22
"""From opset 23 torch's exporter fuses each attention into one ``Attention`` node with its softmax
inside, which the precision passes would run wholly in fp16 (they keep ``Softmax`` in fp32);
from 26 it writes an ``Attention`` the ONNX checker does not know."""

PROTOBUF_LIMIT_BYTES = 2 * 1024**3
# Tensors plus graph overhead: stay well clear of protobuf's hard limit.
EXTERNAL_DATA_THRESHOLD = int(PROTOBUF_LIMIT_BYTES * 0.9)


def needs_external_data(tensor_bytes: int) -> bool:
    """Whether a graph with this many bytes of tensors must keep them outside its protobuf."""
    return tensor_bytes > EXTERNAL_DATA_THRESHOLD


def data_file_of(graph: Path) -> Path:
    """The one external-data file a graph keeps its tensors in, beside it (``x.onnx.data``)."""
    return graph.with_name(graph.name + ".data")


def clear_graph_outputs(graph: Path) -> Path:
    """Create the folder and remove a previous graph and its data file (a stale ``.data`` next to
    a new small graph would be hashed into the manifest); returns the data file's path."""
    graph.parent.mkdir(parents=True, exist_ok=True)
    data_file = data_file_of(graph)
    for stale in (graph, data_file):
        stale.unlink(missing_ok=True)
    return data_file
