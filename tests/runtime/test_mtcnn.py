"""The MTCNN pipeline against facenet-pytorch's own ``MTCNN.detect`` (the reference it reproduces),
fed by facenet's own P-/R-/O-Net modules and packaged weights, on real photographs; the area
resampler against ``torch.nn.functional.interpolate(mode="area")``; the pyramid limit, empty
stages, batching, bad input and the ONNX Runtime wiring."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
from torch.nn.functional import interpolate

from dfd.runtime import mtcnn
from dfd.runtime.mtcnn import (
    MAX_BATCH,
    AreaSampler,
    MtcnnDetector,
    MtcnnError,
    MtcnnFaces,
    onnxruntime_mtcnn,
)

# Head and shoulders of the astronaut, pasted at these heights into one canvas.
COMPOSITE_FACE_HEIGHTS = (30, 45, 70, 110, 170, 260)


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    return PNet().eval(), RNet().eval(), ONet().eval()


def torch_callable(net: torch.nn.Module, calls: list[int] | None = None):
    """A backend callable over a facenet module; records batch sizes in ``calls``."""

    def run(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        assert batch.dtype == np.float32 and batch.flags.c_contiguous
        if calls is not None:
            calls.append(batch.shape[0])
        with torch.no_grad():
            return tuple(output.numpy() for output in net(torch.from_numpy(batch)))

    return run


@pytest.fixture(scope="module")
def detector(networks) -> MtcnnDetector:
    return MtcnnDetector(*(torch_callable(net) for net in networks))


def composite() -> np.ndarray:
    """Several faces of different sizes side by side on a grey canvas."""
    head = skimage.data.astronaut()[20:220, 150:330]
    canvas = np.full((400, 900, 3), 200, np.uint8)
    x = 10
    for height in COMPOSITE_FACE_HEIGHTS:
        face = cv2.resize(head, (int(height * 0.9), height), interpolation=cv2.INTER_AREA)
        canvas[390 - height : 390, x : x + face.shape[1]] = face
        x += face.shape[1] + 8
    return canvas


PHOTOGRAPHS = {
    "astronaut": skimage.data.astronaut,
    "composite": composite,
    "camera": lambda: cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2RGB),
    "coffee": skimage.data.coffee,
}


def facenet_detect(rgb: np.ndarray, min_face: float, thresholds=(0.6, 0.7, 0.7)) -> MtcnnFaces:
    reference = MTCNN(keep_all=True, min_face_size=min_face, thresholds=list(thresholds))
    boxes, probs, points = reference.detect(rgb, landmarks=True)
    if boxes is None:
        return MtcnnFaces(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    return MtcnnFaces(boxes.astype(np.float64), np.asarray(probs, np.float64), points.astype(np.float64))


def by_position(faces: MtcnnFaces) -> MtcnnFaces:
    """facenet orders faces largest first, ours best score first: compare in left-to-right order."""
    order = np.lexsort((faces.boxes[:, 1], faces.boxes[:, 0]))
    return MtcnnFaces(faces.boxes[order], faces.scores[order], faces.landmarks[order])


def assert_same_faces(ours: MtcnnFaces, reference: MtcnnFaces) -> tuple[float, float]:
    assert len(ours) == len(reference)
    ours, reference = by_position(ours), by_position(reference)
    box_error = float(np.abs(ours.boxes - reference.boxes).max(initial=0.0))
    prob_error = float(np.abs(ours.scores - reference.scores).max(initial=0.0))
    assert box_error <= 0.5
    assert prob_error <= 1e-4
    assert np.abs(ours.landmarks - reference.landmarks).max(initial=0.0) <= 0.5
    return box_error, prob_error


# --------------------------------------------------------------------------- area resampling


def torch_area(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """facenet's resampling of an HxWxC array (channels-last NCHW view, as it builds it)."""
    tensor = torch.as_tensor(image.copy()).unsqueeze(0).permute(0, 3, 1, 2).type(torch.float32)
    return interpolate(tensor, size=(out_h, out_w), mode="area")[0].permute(1, 2, 0).numpy()


def test_area_sampler_equals_torch_area_interpolation() -> None:
    rng = np.random.default_rng(0)
    for _ in range(12):
        height, width = (int(v) for v in rng.integers(5, 160, size=2))
        out_h, out_w = (int(v) for v in rng.integers(3, 200, size=2))  # up, down, non-integer ratios
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        # uint8 pixels: window sums are exact, so the float32 result is bit-identical.
        np.testing.assert_array_equal(AreaSampler(pixels).resize(out_h, out_w), torch_area(pixels, out_h, out_w))


@pytest.fixture(scope="module")
def bright_18mp() -> np.ndarray:
    """One channel of bright pixels whose total passes 2**32, so the sampler's uint32 table wraps."""
    image = np.random.default_rng(5).integers(240, 256, size=(4300, 4300, 1), dtype=np.uint8)
    assert int(image.sum(dtype=np.uint64)) > 2**32
    return image


def test_area_sampler_is_exact_where_its_table_wraps(bright_18mp: np.ndarray) -> None:
    sampler = AreaSampler(bright_18mp)
    for out_h, out_w in ((37, 53), (1290, 1433)):
        np.testing.assert_array_equal(sampler.resize(out_h, out_w), torch_area(bright_18mp, out_h, out_w))
    # Regions ending at the last rows and columns read the table where it has wrapped most.
    top, left = np.array([4000, 0, 2100]), np.array([4100, 3000, 0])
    height, width = np.array([300, 4300, 2200]), np.array([200, 1300, 4300])
    crops = sampler.regions(top, left, height, width, 48, 48)
    for k in range(len(top)):
        region = bright_18mp[top[k] : top[k] + height[k], left[k] : left[k] + width[k]]
        np.testing.assert_array_equal(crops[k], torch_area(region, 48, 48))


def test_area_sampler_refuses_what_it_cannot_sum_exactly(bright_18mp: np.ndarray) -> None:
    with pytest.raises(MtcnnError, match="uint8"):
        AreaSampler(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(MtcnnError, match="rows of at most 8421504 pixels"):  # one row's sum would pass int32
        AreaSampler(np.zeros((1, 8_421_505, 1), np.uint8))
    with pytest.raises(MtcnnError, match="exact uint32 sum"):  # one 18.5 MP window: its sum passes 2**32
        AreaSampler(bright_18mp).resize(1, 1)
    with pytest.raises(MtcnnError, match="exact uint32 sum"):
        AreaSampler(bright_18mp).regions(np.array([0]), np.array([0]), np.array([4300]), np.array([4300]), 1, 1)


def test_area_regions_equal_torch_on_crops() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    top, left = np.array([0, 10, 37, 89]), np.array([0, 55, 3, 100])
    height, width = np.array([90, 7, 50, 1]), np.array([120, 64, 13, 20])
    for size in (24, 48):
        crops = AreaSampler(image).regions(top, left, height, width, size, size)
        for k in range(len(top)):
            region = image[top[k] : top[k] + height[k], left[k] : left[k] + width[k]]
            np.testing.assert_array_equal(crops[k], torch_area(region, size, size))


# --------------------------------------------------------------------------- parity with facenet


@pytest.mark.parametrize("min_face", [20, 40])
@pytest.mark.parametrize("name", list(PHOTOGRAPHS))
def test_detect_matches_facenet_mtcnn(detector: MtcnnDetector, name: str, min_face: int) -> None:
    rgb = PHOTOGRAPHS[name]()
    ours = detector.detect(rgb, min_face_px=min_face)
    reference = facenet_detect(rgb, min_face)
    assert_same_faces(ours, reference)
    expected_faces = {"astronaut": 1, "camera": 1, "coffee": 0, "composite": 6 if min_face == 20 else 5}
    assert len(ours) == expected_faces[name]
    assert ours.boxes.dtype == np.float64 and ours.landmarks.shape == (len(ours), 5, 2)
    assert np.all(np.diff(ours.scores) <= 0)  # best first


def test_many_candidates_are_batched_and_still_match_facenet(networks) -> None:
    """Loose thresholds give more than MAX_BATCH R-Net crops: chunked calls, same faces."""
    rnet_calls: list[int] = []
    pnet, rnet, onet = networks
    thresholds = (0.2, 0.5, 0.7)
    detector = MtcnnDetector(
        torch_callable(pnet), torch_callable(rnet, rnet_calls), torch_callable(onet), thresholds=thresholds
    )
    rgb = skimage.data.astronaut()
    ours = detector.detect(rgb, min_face_px=20)
    assert sum(rnet_calls) > MAX_BATCH
    assert max(rnet_calls) == MAX_BATCH and len(rnet_calls) == -(-sum(rnet_calls) // MAX_BATCH)
    assert_same_faces(ours, facenet_detect(rgb, 20, thresholds))


def test_pnet_runs_once_per_pyramid_level(networks) -> None:
    pnet_calls: list[int] = []
    pnet, rnet, onet = networks
    detector = MtcnnDetector(torch_callable(pnet, pnet_calls), torch_callable(rnet), torch_callable(onet))
    detector.detect(skimage.data.astronaut(), min_face_px=40)
    # 512 px: 12/40 * 512 = 153.6 shrinks by 0.709 to >= 12 eight times -> 8 levels.
    assert pnet_calls == [1] * 8 == [1] * len(detector.scales(512, 512, 40))


def test_pnet_bands_give_the_map_of_one_call(networks, monkeypatch) -> None:
    """A level run in bands of rows (as large photographs are) equals the level run whole."""
    pnet, rnet, onet = networks
    image = skimage.data.astronaut()
    heights: list[int] = []

    def recording_pnet(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        heights.append(batch.shape[2])
        return torch_callable(pnet)(batch)

    detector = MtcnnDetector(recording_pnet, torch_callable(rnet), torch_callable(onet))
    level = AreaSampler(image).resize(154, 154)  # the finest level at min_face_px=40
    whole = detector._pnet_level(level)
    # 20,000 pixels: (20000 // 154 - 10) // 2 = 59 map rows a band, the level's 72 rows in two calls,
    # the first fed input rows 0..127 (2 * 59 + 10), the last rows 118..153 (the ceil-mode edge).
    monkeypatch.setattr(mtcnn, "PNET_BAND_PIXELS", 20_000)
    heights.clear()
    banded = detector._pnet_level(level)
    assert heights == [128, 36]
    for one_call, in_bands in zip(whole, banded):
        assert in_bands.shape == one_call.shape == (1, in_bands.shape[1], 72, 72)
        np.testing.assert_allclose(in_bands, one_call, rtol=0, atol=1e-5)  # torch picks conv kernels by size
    faces = detector.detect(image, min_face_px=40)
    monkeypatch.undo()
    assert_same_faces(faces, detector.detect(image, min_face_px=40))


# --------------------------------------------------------------------------- pyramid limit


def test_scales_follow_facenet_and_max_face_drops_coarse_levels(detector: MtcnnDetector) -> None:
    all_scales = detector.scales(400, 900, 20)
    assert all_scales[0] == 0.6 and np.allclose(np.diff(np.log(all_scales)), np.log(0.709))
    assert 400 * all_scales[-1] >= 12 > 400 * all_scales[-1] * 0.709
    limited = detector.scales(400, 900, 20, max_face_px=60)
    assert limited == [s for s in all_scales if 12 / s <= 60] and 0 < len(limited) < len(all_scales)


def test_max_face_px_drops_large_faces_and_keeps_small_ones(detector: MtcnnDetector) -> None:
    rgb = composite()
    everything = by_position(detector.detect(rgb, min_face_px=20))
    small_only = by_position(detector.detect(rgb, min_face_px=20, max_face_px=40))
    widths = everything.boxes[:, 2] - everything.boxes[:, 0]
    assert len(everything) == 6 and np.all(np.diff(widths) > 0)  # left to right = small to large
    # The four faces up to ~46 px wide are still found, the two of 74 and 114 px are not: P-Net
    # also fires on faces somewhat larger than the 12-pixel cell of the coarsest level kept.
    assert len(small_only) == 4 and (small_only.boxes[:, 2] - small_only.boxes[:, 0]).max() <= 1.5 * 40
    np.testing.assert_allclose(small_only.boxes[:2], everything.boxes[:2], atol=0.5)
    kept, full = small_only.boxes, everything.boxes[:4]
    inter = np.prod(np.minimum(kept[:, 2:], full[:, 2:]) - np.maximum(kept[:, :2], full[:, :2]), axis=1)
    union = np.prod(kept[:, 2:] - kept[:, :2], axis=1) + np.prod(full[:, 2:] - full[:, :2], axis=1) - inter
    assert np.all(inter / union > 0.8)


# --------------------------------------------------------------------------- empty results


@pytest.mark.parametrize("shape", [(10, 10, 3), (19, 400, 3), (1, 1, 3)])
def test_images_smaller_than_min_face_have_no_faces(detector: MtcnnDetector, shape) -> None:
    faces = detector.detect(np.full(shape, 128, np.uint8), min_face_px=20)
    assert faces.boxes.shape == (0, 4) and faces.scores.shape == (0,) and faces.landmarks.shape == (0, 5, 2)


def test_empty_stages_return_empty_faces(networks) -> None:
    pnet, rnet, onet = networks
    rgb = skimage.data.astronaut()
    calls: list[int] = []

    def reject_all_pnet(batch):
        reg, prob = torch_callable(pnet)(batch)
        return reg, np.zeros_like(prob)

    def reject_all(run, output_count):
        def wrapped(batch):
            outputs = list(run(batch))
            outputs[-1] = np.zeros_like(outputs[-1])
            return tuple(outputs)

        assert output_count in (2, 3)
        return wrapped

    no_proposals = MtcnnDetector(reject_all_pnet, torch_callable(rnet, calls), torch_callable(onet, calls))
    no_refined = MtcnnDetector(torch_callable(pnet), reject_all(torch_callable(rnet), 2), torch_callable(onet, calls))
    no_output = MtcnnDetector(torch_callable(pnet), torch_callable(rnet), reject_all(torch_callable(onet), 3))
    for detector in (no_proposals, no_refined, no_output):
        faces = detector.detect(rgb, min_face_px=40)
        assert len(faces) == 0 and faces.boxes.shape == (0, 4) and faces.landmarks.shape == (0, 5, 2)
    assert calls == []  # later stages are not called with empty batches


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_bad_arrays_raise_mtcnn_error(detector: MtcnnDetector, image) -> None:
    with pytest.raises(MtcnnError, match="RGB uint8|empty"):
        detector.detect(image)


def test_bad_settings_raise_mtcnn_error(detector: MtcnnDetector, networks) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(MtcnnError, match="min_face_px"):
        detector.detect(rgb, min_face_px=0)
    with pytest.raises(MtcnnError, match="max_face_px"):
        detector.detect(rgb, min_face_px=40, max_face_px=20)
    runs = [torch_callable(net) for net in networks]
    with pytest.raises(MtcnnError, match="thresholds"):
        MtcnnDetector(*runs, thresholds=(0.6, 0.7))
    with pytest.raises(MtcnnError, match="factor"):
        MtcnnDetector(*runs, factor=1.2)


def test_networks_returning_wrong_shapes_raise_mtcnn_error(networks) -> None:
    pnet, rnet, onet = networks
    rgb = composite()  # not square: a transposed P-Net map has the wrong shape

    def transposed_pnet(batch):
        reg, prob = torch_callable(pnet)(batch)
        return reg.transpose(0, 1, 3, 2), prob.transpose(0, 1, 3, 2)

    def three_class_rnet(batch):
        reg, prob = torch_callable(rnet)(batch)
        return reg, np.concatenate([prob, prob[:, :1]], axis=1)

    def onet_without_landmarks(batch):
        reg, _, prob = torch_callable(onet)(batch)
        return reg, prob

    cases = [
        (MtcnnDetector(transposed_pnet, torch_callable(rnet), torch_callable(onet)), "run_pnet returned shapes"),
        (MtcnnDetector(torch_callable(pnet), three_class_rnet, torch_callable(onet)), "run_rnet returned shapes"),
        (MtcnnDetector(torch_callable(pnet), torch_callable(rnet), onet_without_landmarks), "run_onet must return 3"),
        (MtcnnDetector(lambda _: np.zeros(3), torch_callable(rnet), torch_callable(onet)), "run_pnet must return 2"),
    ]
    for detector, message in cases:
        with pytest.raises(MtcnnError, match=message):
            detector.detect(rgb, min_face_px=40)


# --------------------------------------------------------------------------- ONNX Runtime wiring


def export_onnx(net: torch.nn.Module, example_shape, outputs, path: Path, dynamic: dict[int, str]) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(example_shape),), str(path), input_names=["image"], output_names=list(outputs),
            dynamic_axes={"image": dynamic}, dynamo=False,
        )
    return path


def test_onnxruntime_mtcnn_matches_facenet(networks, tmp_path: Path, monkeypatch) -> None:
    pnet, rnet, onet = networks
    paths = (
        export_onnx(pnet, (1, 3, 37, 53), ("regression", "probability"), tmp_path / "p.onnx", {0: "n", 2: "h", 3: "w"}),
        export_onnx(rnet, (2, 3, 24, 24), ("regression", "probability"), tmp_path / "r.onnx", {0: "n"}),
        export_onnx(onet, (2, 3, 48, 48), ("regression", "landmarks", "probability"), tmp_path / "o.onnx", {0: "n"}),
    )
    rgb = composite()
    faces = onnxruntime_mtcnn(*paths).detect(rgb, min_face_px=20)
    assert_same_faces(faces, facenet_detect(rgb, 20))
    # P-Net's arena and P-Net bands change memory, not results: under ONNX Runtime, bit for bit.
    monkeypatch.setattr(mtcnn, "PNET_BAND_PIXELS", 20_000)  # the finest level (241 x 541) in 9 bands
    for pnet_arena in (False, True):
        again = onnxruntime_mtcnn(*paths, pnet_arena=pnet_arena).detect(rgb, min_face_px=20)
        for field in ("boxes", "scores", "landmarks"):
            np.testing.assert_array_equal(getattr(again, field), getattr(faces, field))

    with pytest.raises(MtcnnError, match="does not exist"):
        onnxruntime_mtcnn(tmp_path / "missing.onnx", paths[1], paths[2])
    with pytest.raises(MtcnnError, match="expected input 'image'"):
        onnxruntime_mtcnn(paths[0], paths[2], paths[2])  # O-Net graph where R-Net's belongs
    # P-Net and R-Net have the same input and output names: their shapes tell them apart
    with pytest.raises(MtcnnError, match=r"r.onnx is not MTCNN's P-Net: its input 'image' is \['n', 3, 24, 24\], "
                                         r"expected \[batch, 3, height, width\] \(any height and width\)"):
        onnxruntime_mtcnn(paths[1], paths[0], paths[2])
    with pytest.raises(MtcnnError, match=r"p.onnx is not MTCNN's R-Net: its input 'image' is \['n', 3, 'h', 'w'\], "
                                         r"expected \[batch, 3, 24, 24\]"):
        onnxruntime_mtcnn(paths[0], paths[0], paths[2])


def test_runtime_module_does_not_import_torch() -> None:
    code = "import sys, dfd.runtime.mtcnn; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- edges the photographs do not reach


def test_area_sampler_takes_one_to_four_channels_and_rows_up_to_its_limit() -> None:
    rng = np.random.default_rng(2)
    for channels in (1, 4):
        pixels = rng.integers(0, 256, size=(23, 31, channels), dtype=np.uint8)
        np.testing.assert_array_equal(AreaSampler(pixels).resize(9, 40), torch_area(pixels, 9, 40))
    with pytest.raises(MtcnnError, match="1-4"):
        AreaSampler(np.zeros((4, 4, 5), np.uint8))
    # 255 * 8,421,504 fits int32: the widest row it takes is summed exactly
    widest = np.full((1, 8_421_504, 1), 255, np.uint8)
    assert AreaSampler(widest).resize(1, 2).tolist() == [[[255.0], [255.0]]]
    with pytest.raises(MtcnnError, match="positive output size"):
        AreaSampler(np.zeros((4, 4, 3), np.uint8)).resize(3, 0)
    with pytest.raises(MtcnnError, match="positive output size"):
        AreaSampler(np.zeros((4, 4, 3), np.uint8)).resize(0, 3)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy IoU NMS in plain Python: candidates in score order, ties by index (a stable sort)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        def iou(j: int) -> float:
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            area = lambda k: (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])  # noqa: E731
            return w * h / (area(i) + area(j) - w * h)

        if all(iou(j) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_iou_nms_equals_torchvision_and_breaks_ties_by_candidate_order() -> None:
    from torchvision.ops import nms

    rng = np.random.default_rng(3)
    corners = rng.integers(0, 60, size=(300, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.integers(4, 30, size=(300, 2)).astype(np.float32)], axis=1)
    scores = rng.random(300).astype(np.float32)
    for threshold in (0.3, 0.5, 0.7):
        expected = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(mtcnn._iou_nms(boxes, scores, threshold), expected)
    # Three score levels, many exact ties: the earlier candidate of a tie wins.
    tied = rng.choice(np.array([0.9, 0.8, 0.7], np.float32), 300)
    assert mtcnn._iou_nms(boxes, tied, 0.5).tolist() == reference_nms(boxes, tied, 0.5)
    # IoU exactly at the threshold is kept (suppression is IoU > threshold): 2 / (4 + 2 - 2) = 0.5
    pair = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)
    assert mtcnn._iou_nms(pair, np.array([0.9, 0.8], np.float32), 0.5).tolist() == [0, 1]
    assert mtcnn._iou_nms(pair, np.array([0.9, 0.8], np.float32), 0.49).tolist() == [0]


def test_min_nms_equals_facenets_nms_numpy() -> None:
    from facenet_pytorch.models.utils.detect_face import nms_numpy

    rng = np.random.default_rng(4)
    corners = (rng.random((300, 2)) * 80).astype(np.float32)
    boxes = np.concatenate([corners, corners + (4 + rng.random((300, 2)) * 40).astype(np.float32)], axis=1)
    for scores in (rng.random(300).astype(np.float32), rng.choice(np.array([0.9, 0.8, 0.7], np.float32), 300)):
        for threshold in (0.3, 0.7):
            expected = nms_numpy(boxes, scores, threshold, "Min")
            np.testing.assert_array_equal(mtcnn._min_nms(boxes, scores, threshold), expected)
    # 'Min' overlap with 1-based areas: 7 x 10 shared pixels over the smaller 10 x 10 box = 0.7, kept
    pair = np.array([[0, 0, 9, 9], [3, 0, 12, 9]], np.float32)
    assert mtcnn._min_nms(pair, np.array([0.9, 0.8], np.float32), 0.7).tolist() == [0, 1]
    assert mtcnn._min_nms(pair, np.array([0.9, 0.8], np.float32), 0.69).tolist() == [0]
    # a small box inside a large one overlaps it fully by 'Min' (IoU would be 0.1)
    nested = np.array([[0, 0, 29, 29], [10, 10, 19, 19]], np.float32)
    assert mtcnn._min_nms(nested, np.array([0.8, 0.9], np.float32), 0.7).tolist() == [1]


def test_settings_out_of_range_raise_mtcnn_error(detector: MtcnnDetector, networks) -> None:
    runs = [torch_callable(net) for net in networks]
    for thresholds in ((0.6, 0.7, 1.0), (-0.1, 0.7, 0.7)):
        with pytest.raises(MtcnnError, match="thresholds"):
            MtcnnDetector(*runs, thresholds=thresholds)
    with pytest.raises(MtcnnError, match="factor"):
        MtcnnDetector(*runs, factor=1.0)  # a pyramid that never shrinks
    for nms in (mtcnn.MtcnnNms(per_scale=0.0), mtcnn.MtcnnNms(output=1.5)):
        with pytest.raises(MtcnnError, match="NMS thresholds"):
            MtcnnDetector(*runs, nms=nms)
    rgb = np.zeros((64, 64, 3), np.uint8)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(MtcnnError, match="min_face_px"):
            detector.detect(rgb, min_face_px=bad)


def test_scales_at_their_limits_and_with_another_factor(detector: MtcnnDetector, networks) -> None:
    # short side 20 at min_face_px 20: 20 * 12 / 20 = 12 exactly, one level (facenet: while >= 12)
    assert detector.scales(20, 50, 20) == [0.6]
    # max_face_px equal to min_face_px keeps the first level, whose cell is exactly 20 px
    assert detector.scales(400, 900, 20, max_face_px=20) == [0.6]
    halving = MtcnnDetector(*(torch_callable(net) for net in networks), factor=0.5)
    assert halving.scales(100, 200, 20) == [0.6, 0.3, 0.15]  # short sides 60, 30, 15 (then 7.5)


def stub_pnet(regression: Sequence[float], probability: float, calls: list | None = None):
    """P-Net whose first map cell has ``probability`` of a face and ``regression``, every other 0."""

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if calls is not None:
            calls.append(batch.copy())
        h, w = mtcnn.pnet_map_size(batch.shape[2]), mtcnn.pnet_map_size(batch.shape[3])
        reg, prob = np.zeros((1, 4, h, w), np.float32), np.zeros((1, 2, h, w), np.float32)
        reg[0, :, 0, 0] = regression
        prob[0, 1, 0, 0] = probability
        return reg, prob

    return run


def stub_stage(probability: float, calls: list, landmarks: bool):
    """R-Net (or O-Net with ``landmarks``): zero regression, every crop the same face probability."""

    def run(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        calls.append(batch.copy())
        n = len(batch)
        reg, prob = np.zeros((n, 4), np.float32), np.tile(np.float32([1 - probability, probability]), (n, 1))
        return (reg, np.full((n, 10), 0.5, np.float32), prob) if landmarks else (reg, prob)

    return run


def test_scores_exactly_at_a_threshold_follow_facenet() -> None:
    """P-Net keeps a cell at its threshold (facenet: probs >= thresh), R-Net and O-Net drop one
    (score > threshold); each stage compares with its own threshold."""
    rgb = np.full((20, 20, 3), 100, np.uint8)  # min_face_px 20: one level, scale 0.6, a 2 x 2 map
    thresholds = (0.6, 0.5, 0.8)
    p, r, o = (np.float32(t) for t in thresholds)

    def faces(pnet_p: float, rnet_p: float, onet_p: float) -> tuple[int, int, int]:
        rnet_calls, onet_calls = [], []
        found = MtcnnDetector(stub_pnet((0, 0, 0, 0), pnet_p), stub_stage(rnet_p, rnet_calls, False),
                              stub_stage(onet_p, onet_calls, True), thresholds=thresholds).detect(rgb, min_face_px=20)
        return len(rnet_calls), len(onet_calls), len(found)

    assert faces(p, 0.6, 0.9) == (1, 1, 1)  # 0.6 passes R-Net's 0.5, not O-Net's 0.8
    assert faces(np.nextafter(p, np.float32(0)), 0.6, 0.9) == (0, 0, 0)
    assert faces(p, r, 0.9) == (1, 0, 0)
    assert faces(p, 0.6, o) == (1, 1, 0)
    # the one face: cell (0, 0) at scale 0.6 is [floor(1 / 0.6), floor(12 / 0.6)] = [1, 20] per axis,
    # its landmarks at half of the 20-pixel box: 20 * 0.5 + 1 - 1 = 10
    rnet_calls, onet_calls = [], []
    found = MtcnnDetector(stub_pnet((0, 0, 0, 0), p), stub_stage(0.6, rnet_calls, False),
                          stub_stage(0.9, onet_calls, True), thresholds=thresholds).detect(rgb, min_face_px=20)
    assert found.boxes.tolist() == [[1.0, 1.0, 20.0, 20.0]] and found.scores.tolist() == [float(np.float32(0.9))]
    assert np.all(found.landmarks == 10.0)


def test_a_box_with_no_pixel_in_the_image_is_dropped_and_one_pixel_is_a_crop() -> None:
    """A P-Net box regressed up-left of the image: ending at 0.5 it has no pixel inside and is
    dropped before R-Net (which is then not called at all); ending at 1.5 its in-image part is
    the top-left pixel, which R-Net gets stretched to 24 x 24."""
    rgb = np.random.default_rng(6).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 200, 60)
    # cell (0, 0) at scale 0.6 is the box [1, 1, 20, 20] (P-Net width x2 - x1 = 19)
    for end, crops in ((0.5, 0), (1.5, 1)):
        offsets = ((-11.0 - 1) / 19, (-11.0 - 1) / 19, (end - 20) / 19, (end - 20) / 19)  # a square, -11 .. end
        rnet_calls: list[np.ndarray] = []
        detector = MtcnnDetector(stub_pnet(offsets, 0.9), stub_stage(0.0, rnet_calls, False), stub_stage(0.9, [], True))
        faces = detector.detect(rgb, min_face_px=20)
        assert len(faces) == 0 and faces.boxes.shape == (0, 4)
        assert sum(len(batch) for batch in rnet_calls) == crops
    expected = (np.float32([10, 200, 60]) - np.float32(127.5)) * np.float32(0.0078125)
    np.testing.assert_array_equal(rnet_calls[0][0], np.broadcast_to(expected[:, None, None], (3, 24, 24)))


def test_networks_returning_non_finite_values_raise_mtcnn_error() -> None:
    def nan_pnet(batch):
        reg, prob = stub_pnet((0, 0, 0, 0), 0.9)(batch)
        reg[0, 0, 0, 0] = np.nan
        return reg, prob

    detector = MtcnnDetector(nan_pnet, stub_stage(0.9, [], False), stub_stage(0.9, [], True))
    with pytest.raises(MtcnnError, match="run_pnet returned non-finite values"):
        detector.detect(np.zeros((20, 20, 3), np.uint8), min_face_px=20)


def test_onnxruntime_mtcnn_passes_its_settings_and_checks_output_widths(networks, tmp_path: Path,
                                                                          monkeypatch) -> None:
    import onnxruntime

    pnet, rnet, onet = networks
    paths = (
        export_onnx(pnet, (1, 3, 37, 53), ("regression", "probability"), tmp_path / "p.onnx", {0: "n", 2: "h", 3: "w"}),
        export_onnx(rnet, (2, 3, 24, 24), ("regression", "probability"), tmp_path / "r.onnx", {0: "n"}),
        export_onnx(onet, (2, 3, 48, 48), ("regression", "landmarks", "probability"), tmp_path / "o.onnx", {0: "n"}),
    )
    providers: list[list[str]] = []
    session = onnxruntime.InferenceSession

    def recording_session(*args, **kwargs):  # records the providers asked for, opens on the CPU
        providers.append(kwargs["providers"])
        return session(*args, **{**kwargs, "providers": ["CPUExecutionProvider"]})

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    detector = onnxruntime_mtcnn(*paths, ("SomeExecutionProvider", "CPUExecutionProvider"),
                                 thresholds=(0.5, 0.6, 0.65), factor=0.5)
    assert detector.thresholds == (0.5, 0.6, 0.65) and detector.factor == 0.5
    assert providers == [["SomeExecutionProvider", "CPUExecutionProvider"]] * 3
    monkeypatch.undo()
    with pytest.raises(MtcnnError, match="does not exist"):  # a folder is not a graph file
        onnxruntime_mtcnn(tmp_path, paths[1], paths[2])

    class SwappedWidths(torch.nn.Module):  # R-Net's input and output names, widths 2 and 4 swapped
        def forward(self, image):
            flat = image.mean(dim=(2, 3))
            return flat[:, :2], torch.cat([flat, flat[:, :1]], dim=1)

    swapped = export_onnx(SwappedWidths(), (2, 3, 24, 24), ("regression", "probability"), tmp_path / "s.onnx", {0: "n"})
    with pytest.raises(MtcnnError, match=r"s.onnx is not MTCNN's R-Net: its output 'regression' is \[.*, 2\], "
                                         r"expected \[batch, 4\]"):
        onnxruntime_mtcnn(paths[0], swapped, paths[2])


def test_box_regression_and_squaring_equal_facenets_on_boxes_that_are_not_square() -> None:
    from facenet_pytorch.models.utils.detect_face import bbreg, rerec

    rng = np.random.default_rng(7)
    corners = (rng.random((50, 2)) * 100).astype(np.float32)
    boxes = np.concatenate([corners, corners + (5 + rng.random((50, 2)) * 60).astype(np.float32)], axis=1)
    offsets = (rng.random((50, 4)) - 0.5).astype(np.float32)
    expected = bbreg(torch.from_numpy(boxes.copy()), torch.from_numpy(offsets)).numpy()  # R-/O-Net: x2 - x1 + 1
    np.testing.assert_allclose(mtcnn._regress(boxes, offsets, inclusive=True), expected, rtol=0, atol=1e-4)
    # P-Net's regression (facenet's stage one, inline): width x2 - x1, height y2 - y1
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    np.testing.assert_allclose(mtcnn._regress(boxes, offsets, inclusive=False), boxes + offsets * size, rtol=0, atol=1e-4)
    squared = rerec(torch.from_numpy(np.concatenate([boxes, np.zeros((50, 1), np.float32)], axis=1))).numpy()[:, :4]
    np.testing.assert_allclose(mtcnn._square(boxes), squared, rtol=0, atol=1e-4)


def test_candidates_of_different_levels_are_suppressed_together() -> None:
    """factor 0.9 on a 24 x 24 image: two levels (scales 0.6 and 0.54), whose first cells are the
    boxes [1, 1, 20, 20] and [1, 1, 22, 22], IoU 19^2 / 21^2 = 0.82 > 0.7: only the better one
    (the finer level's, 0.9 against 0.8) reaches R-Net."""
    levels: list[tuple[int, int]] = []

    def two_level_pnet(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels.append(batch.shape[2:])
        return stub_pnet((0, 0, 0, 0), (0.9, 0.8)[len(levels) - 1])(batch)

    rnet_calls: list[np.ndarray] = []
    detector = MtcnnDetector(two_level_pnet, stub_stage(0.0, rnet_calls, False), stub_stage(0.9, [], True),
                             factor=0.9)
    rgb = np.random.default_rng(9).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    assert len(detector.detect(rgb, min_face_px=20)) == 0
    assert levels == [(15, 15), (13, 13)]
    # the one crop is the 20-pixel box [1, 20] of the finer level: the image's first 20 x 20 pixels
    (crops,) = rnet_calls
    expected = (torch_area(rgb[:20, :20], 24, 24) - np.float32(127.5)) * np.float32(0.0078125)
    assert crops.shape == (1, 3, 24, 24)
    np.testing.assert_array_equal(crops[0], expected.transpose(2, 0, 1))


def test_the_last_suppression_is_by_the_smaller_box() -> None:
    """Three levels of a 40 x 40 image give the boxes [1, 20], [2, 28] and [3, 39] per axis, which
    no IoU suppression merges (IoU 0.45, 0.52, 0.21); O-Net's 'Min' overlap (1-based areas) is
    0.90 and 0.81 against the best (the finest level's box, first to O-Net), so one face comes out."""
    rnet_calls: list[np.ndarray] = []
    onet_scores = np.float32([0.95, 0.85, 0.75])

    def onet(batch: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(batch)
        return (np.zeros((n, 4), np.float32), np.full((n, 10), 0.5, np.float32),
                np.stack([1 - onet_scores[:n], onet_scores[:n]], axis=1))

    detector = MtcnnDetector(stub_pnet((0, 0, 0, 0), 0.9), stub_stage(0.9, rnet_calls, False), onet)
    faces = detector.detect(np.full((40, 40, 3), 90, np.uint8), min_face_px=20)
    assert [len(batch) for batch in rnet_calls] == [3]
    assert len(faces) == 1 and faces.scores.tolist() == [float(onet_scores[0])]
    assert faces.boxes.tolist() == [[1.0, 1.0, 20.0, 20.0]]
