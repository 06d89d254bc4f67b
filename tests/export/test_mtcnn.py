"""Our MTCNN modules (PyTorch and their ONNX export) against facenet-pytorch's own PNet/RNet/ONet,
loaded by facenet's code from its packaged weights, on real photographs and random inputs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import skimage.data
import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

from dfd.export.mtcnn import (
    MtcnnModelError,
    MtcnnONet,
    MtcnnPNet,
    MtcnnRNet,
    default_mtcnn_weights_dir,
    export_mtcnn_onnx,
)

# Same weights, same float32 ops: only accumulation order may differ (ONNX Runtime's kernels).
TOLERANCE = 1e-5
# [H, W] of P-Net inputs: the 12x12 minimum (one output cell), odd non-square, a full VGA frame
PNET_SIZES = [(12, 12), (37, 53), (64, 64), (480, 640)]
# The astronaut's face in skimage's 512x512 photograph (facenet's MTCNN box, squared): y0, y1, x0, x1
ASTRONAUT_FACE = (62, 172, 169, 279)


def _normalised(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """[3, H, W] float32 input the way facenet-pytorch builds it: RGB, (pixel - 127.5) / 128."""
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((resized - 127.5) * 0.0078125).transpose(2, 0, 1).copy()


def _batch(height: int, width: int, face_crop: bool = False) -> np.ndarray:
    """Astronaut (or its face), coffee cup, and uniform noise over the normalised range."""
    astronaut = skimage.data.astronaut()
    if face_crop:
        y0, y1, x0, x1 = ASTRONAUT_FACE
        astronaut = astronaut[y0:y1, x0:x1]
    noise = np.random.default_rng(height * 1000 + width).uniform(-1, 1, (3, height, width))
    return np.stack(
        [_normalised(astronaut, height, width), _normalised(skimage.data.coffee(), height, width), noise]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def facenet_nets() -> dict[str, torch.nn.Module]:
    return {"pnet": PNet().eval(), "rnet": RNet().eval(), "onet": ONet().eval()}


@pytest.fixture(scope="module")
def our_nets() -> dict[str, torch.nn.Module]:
    return {"pnet": MtcnnPNet(), "rnet": MtcnnRNet(), "onet": MtcnnONet()}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnxruntime.InferenceSession]:
    paths = export_mtcnn_onnx(tmp_path_factory.mktemp("mtcnn"))
    return {
        name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in paths.items()
    }


def _run_torch(net: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in net(torch.from_numpy(images))]


def _assert_close(actual: list[np.ndarray], reference: list[np.ndarray], what: str) -> None:
    assert len(actual) == len(reference), what
    for index, (a, r) in enumerate(zip(actual, reference)):
        assert a.shape == r.shape, f"{what} output {index}: shape {a.shape} != {r.shape}"
        error = np.abs(a - r).max()
        assert error <= TOLERANCE, f"{what} output {index}: max abs error {error:.2e}"


@pytest.mark.parametrize("size", PNET_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pnet_reproduces_facenet_at_any_size(size, facenet_nets, our_nets, sessions) -> None:
    images = _batch(*size)
    reference = _run_torch(facenet_nets["pnet"], images)
    height, width = size
    cells = (int(np.ceil((height - 2) / 2)) - 4, int(np.ceil((width - 2) / 2)) - 4)
    assert reference[0].shape == (3, 4, *cells) and reference[1].shape == (3, 2, *cells)
    _assert_close(_run_torch(our_nets["pnet"], images), reference, f"torch pnet {size}")
    for batch in (slice(0, 1), slice(0, 3)):
        outputs = sessions["pnet"].run(["regression", "probability"], {"image": images[batch]})
        _assert_close(outputs, [r[batch] for r in reference], f"onnx pnet {size} batch {batch.stop}")


@pytest.mark.parametrize(("name", "size"), [("rnet", 24), ("onet", 48)])
def test_rnet_onet_reproduce_facenet(name, size, facenet_nets, our_nets, sessions) -> None:
    images = _batch(size, size, face_crop=True)
    reference = _run_torch(facenet_nets[name], images)
    _assert_close(_run_torch(our_nets[name], images), reference, f"torch {name}")
    output_names = [o.name for o in sessions[name].get_outputs()]
    for batch in (slice(0, 1), slice(0, 3)):
        outputs = sessions[name].run(output_names, {"image": images[batch]})
        _assert_close(outputs, [r[batch] for r in reference], f"onnx {name} batch {batch.stop}")


def test_outputs_find_the_astronaut_and_nothing_on_grey(sessions) -> None:
    # 512 -> 64 px makes the ~100-px face ~13 px, P-Net's 12-px window; cell (i, j) sees
    # input pixels [2i, 2i+12) x [2j, 2j+12)
    _, probability = sessions["pnet"].run(None, {"image": _batch(64, 64)[:1]})
    y0, y1, x0, x1 = (v * 64 / 512 for v in ASTRONAUT_FACE)
    centres = np.arange(probability.shape[2]) * 2 + 6
    rows = (centres >= y0) & (centres <= y1)
    cols = (centres >= x0) & (centres <= x1)
    assert probability[0, 1][np.ix_(rows, cols)].max() > 0.9
    np.testing.assert_allclose(probability.sum(axis=1), 1.0, atol=1e-6)
    grey = np.zeros((1, 3, 64, 64), np.float32)  # pixel 127.5 everywhere
    assert sessions["pnet"].run(None, {"image": grey})[1][0, 1].max() < 0.5
    # R-Net and O-Net: the face crop is a face, a crop of the astronaut's suit is not
    astronaut = skimage.data.astronaut()
    y0, y1, x0, x1 = ASTRONAUT_FACE
    for name, size in (("rnet", 24), ("onet", 48)):
        face, suit = astronaut[y0:y1, x0:x1], astronaut[300:440, 300:440]
        crops = np.stack([_normalised(face, size, size), _normalised(suit, size, size)])
        probability = sessions[name].run(["probability"], {"image": crops})[0]
        assert probability[0, 1] > 0.9 and probability[1, 1] < 0.5, f"{name}: {probability[:, 1]}"


def test_onnx_graphs_follow_the_contract(tmp_path: Path) -> None:
    paths = export_mtcnn_onnx(tmp_path, opset=18)
    assert paths == {
        "pnet": tmp_path / "mtcnn_pnet.onnx",
        "rnet": tmp_path / "mtcnn_rnet.onnx",
        "onet": tmp_path / "mtcnn_onet.onnx",
    }
    expected = {
        "pnet": (["batch", 3, "height", "width"], ["regression", "probability"]),
        "rnet": (["batch", 3, 24, 24], ["regression", "probability"]),
        "onet": (["batch", 3, 48, 48], ["regression", "landmarks", "probability"]),
    }
    for name, path in paths.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"} and not model.functions
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
        (image,) = model.graph.input
        dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
        input_shape, output_names = expected[name]
        assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [isinstance(d, str) for d in dims] == [isinstance(d, str) for d in input_shape]
        assert [d for d in dims if isinstance(d, int)] == [d for d in input_shape if isinstance(d, int)]
        assert [o.name for o in model.graph.output] == output_names


def test_missing_or_corrupt_weights_are_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MtcnnModelError, match="pnet.pt"):
        MtcnnPNet(tmp_path)
    (tmp_path / "pnet.pt").write_bytes(b"not a pickle")
    with pytest.raises(MtcnnModelError, match="not a readable"):
        MtcnnPNet(tmp_path)
    shutil.copy(default_mtcnn_weights_dir() / "rnet.pt", tmp_path / "pnet.pt")  # wrong network's weights
    with pytest.raises(MtcnnModelError, match="does not fit MtcnnPNet"):
        MtcnnPNet(tmp_path)
    torch.save(torch.zeros(3), tmp_path / "onet.pt")
    with pytest.raises(MtcnnModelError, match="not a state dict"):
        MtcnnONet(tmp_path)
    with pytest.raises(MtcnnModelError):
        export_mtcnn_onnx(tmp_path / "out", weights_dir=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(MtcnnModelError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        default_mtcnn_weights_dir()
