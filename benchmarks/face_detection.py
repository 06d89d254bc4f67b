"""Face localisation under degradation and for small faces: the default locator (BlazeFace's
letterbox pass plus MTCNN for faces of 40 pixels and up that the letterbox loses) against
BlazeFace alone and MTCNN alone, and a sweep of MTCNN's O-Net threshold.

Degrades real face photographs that ship in registry packages (scikit-image's astronaut and
cameraman, matplotlib's Grace Hopper) the way the challenge's test images are degraded, runs the
default locator (ONNX Runtime, CPU) on each with the plain pass only and with the full cascade,
and checks that a face was found *at the face* (IoU >= 0.5 with a hand-checked box, so a false
positive elsewhere does not count as a success). Small faces: a side-by-side composite of the three
photographs, and synthetic group photographs (the three faces pasted at 40-100 pixels onto
face-free photographs, degraded), compared for three detectors. Face-free photographs, at native
size and enlarged 2x, are run through the whole cascade: any face reported there is a false one.
The cascade's working resolution (``CASCADE_MAX_SIDE``) is compared with the full resolution the
reference filters at, step by step, on the face photographs enlarged 4x and the face-free ones.

    .venv/bin/python benchmarks/face_detection.py [--out benchmarks/face_detection.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import skimage
import skimage.data

from dfd.export.bench.environment import cpu_description
from dfd.export.face_detector import export_face_detector_onnx
from dfd.export.mtcnn import export_mtcnn_onnx
from dfd.runtime.face_cascade import ALL_STRATEGIES, CASCADE_MAX_SIDE, CascadeImage, enhance
from dfd.runtime.face_detection import (
    DEFAULT_MIN_FACE_PX,
    DEFAULT_SCORE_THRESHOLD,
    SMALL_FACE_THRESHOLDS,
    Detections,
    FaceLocator,
    FaceResult,
    onnxruntime_detector,
    select_face,
)
from dfd.runtime.mtcnn import MtcnnDetector, onnxruntime_mtcnn

# Hand-checked face boxes (x1, y1, x2, y2), read off zoomed, gridded renderings of each photo:
# forehead/hairline to chin, cheek to cheek.
HAND_BOXES = {
    "astronaut": (178.0, 80.0, 270.0, 178.0),
    "grace_hopper": (160.0, 135.0, 360.0, 335.0),
    "cameraman": (195.0, 125.0, 255.0, 192.0),
}
MIN_IOU = 0.5
REPEATS = 3

# Synthetic group photographs (group_photographs): face sizes (long side of the hand box, pixels)
# from the smallest the default locator looks for (min_face_px=40) up to where one letterbox of a
# 1920-pixel image already resolves them (100 px -> 10 input pixels, still too few), two widths.
GROUP_SEED = 0
GROUP_WIDTHS = (1280, 1920)
GROUP_FACE_SIZES = (40, 48, 56, 64, 80, 100)
GROUP_DEGRADATIONS = ("clean", "jpeg_q10", "noise_sigma25", "blur_sigma3")
# A detection counts for a pasted face at IoU >= 0.4: at 40-64
# pixels a box a few pixels off already loses 0.1 of IoU, and pasted faces never overlap, so a
# 0.4 match cannot be another face.
GROUP_MATCH_IOU = 0.4
FACE_FREE_SCALES = (1, 2)
# The cascade's working resolutions compared (long side; None: full resolution, as the reference
# runs it), on the face photographs enlarged 4x and the face-free photographs.
CASCADE_SIDES = (None, 768, 1024, 1536)
ENLARGED_SCALE = 4
# O-Net thresholds swept to choose SMALL_FACE_THRESHOLDS[2] (facenet-pytorch's default is 0.7).
ONET_THRESHOLDS = (0.7, 0.8, 0.9, 0.95, 0.98)


def face_photographs() -> dict[str, np.ndarray]:
    """RGB uint8 face photographs from installed packages."""
    import matplotlib.cbook

    grace = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {
        "astronaut": skimage.data.astronaut(),
        "grace_hopper": cv2.cvtColor(grace, cv2.COLOR_BGR2RGB),
        "cameraman": cv2.cvtColor(skimage.data.camera(), cv2.COLOR_GRAY2RGB),
    }


def terrain_rendering() -> np.ndarray:
    """A landscape-like photograph stand-in: matplotlib's topography/bathymetry sample, hill-shaded."""
    import matplotlib.cbook
    from matplotlib.colors import LightSource

    with np.load(matplotlib.cbook.get_sample_data("topobathy.npz", asfileobj=False)) as data:
        elevation = data["topo"].astype(np.float64)
    import matplotlib.cm

    shaded = LightSource(azdeg=315, altdeg=45).shade(elevation, cmap=matplotlib.cm.gist_earth, blend_mode="soft")
    rgb = (shaded[..., :3] * 255).astype(np.uint8)
    return cv2.resize(rgb, (rgb.shape[1] * 3, rgb.shape[0] * 3), interpolation=cv2.INTER_CUBIC)


def face_free_photographs() -> dict[str, np.ndarray]:
    """RGB uint8 photographs with no human face."""
    def rgb(gray: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)

    return {
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
        "hubble_deep_field": skimage.data.hubble_deep_field(),
        "coins": rgb(skimage.data.coins()),
        "brick": rgb(skimage.data.brick()),
        "grass": rgb(skimage.data.grass()),
        "retina": skimage.data.retina(),
        "terrain": terrain_rendering(),
    }


# --------------------------------------------------------------------------- degradations


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def noise(rgb: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noisy = rgb.astype(np.float64) + np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def gamma_dark(rgb: np.ndarray, gamma: float = 3.0) -> np.ndarray:
    return np.round(255.0 * (rgb / 255.0) ** gamma).astype(np.uint8)


def down_up(rgb: np.ndarray, factor: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": lambda x: x,
    "jpeg_q10": lambda x: jpeg(x, 10),
    "blur_sigma3": lambda x: blur(x, 3.0),
    "noise_sigma25": lambda x: noise(x, 25.0),
    "gamma_dark_3": lambda x: gamma_dark(x, 3.0),
    "down_up_4x": lambda x: down_up(x, 4),
    "compound_blur_noise_jpeg": lambda x: jpeg(noise(blur(x, 2.0), 20.0), 15),
    "compound_downup_dark_noise_jpeg": lambda x: jpeg(noise(gamma_dark(down_up(x, 4), 2.5), 15.0), 20),
    # harsher levels of the same families, where a single pass starts to fail
    "severe_jpeg_q5": lambda x: jpeg(x, 5),
    "severe_blur_sigma6": lambda x: blur(x, 6.0),
    "severe_noise_sigma50": lambda x: noise(x, 50.0),
    "severe_gamma_dark_5": lambda x: gamma_dark(x, 5.0),
    "severe_down_up_8x": lambda x: down_up(x, 8),
    "severe_compound": lambda x: jpeg(noise(blur(down_up(x, 4), 1.5), 35.0), 10),
}


# --------------------------------------------------------------------------- measurement


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def timed_locate(locator: FaceLocator, rgb: np.ndarray) -> tuple[FaceResult | None, float]:
    """Result and median wall time (ms) over REPEATS runs."""
    times, result = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = locator.locate(rgb)
        times.append((time.perf_counter() - start) * 1000)
    return result, float(np.median(times))


def group_composite() -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """No group photograph ships in a package: the three face photographs side by side, 512 high
    (Grace Hopper's 600 rows trimmed to the middle 512), with their hand-checked boxes shifted."""
    photos = face_photographs()
    photos["grace_hopper"] = photos["grace_hopper"][44:556]
    boxes, x = [], 0
    for name in ("astronaut", "grace_hopper", "cameraman"):
        x1, y1, x2, y2 = HAND_BOXES[name]
        top = 44 if name == "grace_hopper" else 0
        boxes.append((x1 + x, y1 - top, x2 + x, y2 - top))
        x += photos[name].shape[1]
    return np.hstack([photos["astronaut"], photos["grace_hopper"], photos["cameraman"]]), boxes


# --------------------------------------------------------------------------- small faces: detectors


@dataclass(frozen=True)
class Detectors:
    """The two networks behind the locators, on ONNX Runtime: BlazeFace and MTCNN's three."""

    blazeface: Callable
    mtcnn_paths: tuple[Path, Path, Path]

    def mtcnn(self, onet_threshold: float = SMALL_FACE_THRESHOLDS[2]) -> MtcnnDetector:
        thresholds = (*SMALL_FACE_THRESHOLDS[:2], onet_threshold)
        return onnxruntime_mtcnn(*self.mtcnn_paths, thresholds=thresholds)

    def default(self, onet_threshold: float = SMALL_FACE_THRESHOLDS[2], **kwargs) -> FaceLocator:
        return FaceLocator(self.blazeface, small_face_detector=self.mtcnn(onet_threshold), **kwargs)


class MtcnnOnly:
    """Ablation: MTCNN alone over every face size from ``DEFAULT_MIN_FACE_PX`` up (no BlazeFace),
    with the default thresholds. It shows what BlazeFace's letterbox pass adds."""

    def __init__(self, detector: MtcnnDetector) -> None:
        self.detector = detector

    def detect_faces(self, rgb: np.ndarray) -> Detections:
        found = self.detector.detect(rgb, min_face_px=DEFAULT_MIN_FACE_PX)
        return Detections(found.boxes, found.scores.astype(np.float64))


def comparison_locators(detectors: Detectors) -> dict[str, FaceLocator | MtcnnOnly]:
    return {
        "blazeface_only": FaceLocator(detectors.blazeface, min_face_px=None),
        "mtcnn_only": MtcnnOnly(detectors.mtcnn()),
        "default": detectors.default(),
    }


def face_patch(photo: np.ndarray, hand_box: tuple[float, ...], size: int, context: float = 2.0) -> tuple[np.ndarray, tuple[float, ...]]:
    """The square around a photograph's face (``context`` times the face's long side, mirrored
    past the photo's edges), resized so that the face's long side is ``size`` pixels; returns the
    patch and the face box inside it. The context keeps hair, neck and background around the face,
    as in a real group photograph, so the detector does not see a face pasted edge to edge."""
    x1, y1, x2, y2 = hand_box
    long_side = max(x2 - x1, y2 - y1)
    side = int(long_side * context)
    left, top = int((x1 + x2) / 2 - long_side * context / 2), int((y1 + y2) / 2 - long_side * context / 2)
    padded = cv2.copyMakeBorder(photo, side, side, side, side, cv2.BORDER_REFLECT)
    crop = padded[top + side : top + 2 * side, left + side : left + 2 * side]
    scale = size / long_side
    out = int(round(side * scale))
    patch = cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA)
    fx1, fy1 = (x1 - left) * scale, (y1 - top) * scale
    return patch, (fx1, fy1, fx1 + (x2 - x1) * scale, fy1 + (y2 - y1) * scale)


@dataclass(frozen=True)
class PastedFace:
    photo: str
    size: int  # long side of the hand-checked face box, in pixels of the group image
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class GroupPhotograph:
    name: str
    rgb: np.ndarray
    faces: list[PastedFace]


def group_photographs(seed: int = GROUP_SEED) -> list[GroupPhotograph]:
    """Synthetic group photographs: no photograph of several small faces ships in a package, so
    each face-free photograph (except the retina, which is not a scene) is scaled to 1280 and to
    1920 pixels wide and the three face photographs are pasted onto it, each at a face size drawn
    from ``GROUP_FACE_SIZES`` -- the range where a single 192-pixel letterbox loses them -- at a
    random place that does not overlap another pasted face. Seeded, so every run pastes the same."""
    rng = np.random.default_rng(seed)
    photos = face_photographs()
    groups = []
    for background_name, background in face_free_photographs().items():
        if background_name == "retina":
            continue
        for width in GROUP_WIDTHS:
            height = int(background.shape[0] * width / background.shape[1])
            canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_CUBIC)
            faces, occupied = [], []
            for photo_name, photo in photos.items():
                size = int(rng.choice(GROUP_FACE_SIZES))
                patch, (fx1, fy1, fx2, fy2) = face_patch(photo, HAND_BOXES[photo_name], size)
                x, y = free_place(rng, occupied, patch.shape[1], patch.shape[0], width, height)
                occupied.append((x, y, x + patch.shape[1], y + patch.shape[0]))
                canvas[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
                faces.append(PastedFace(photo_name, size, (fx1 + x, fy1 + y, fx2 + x, fy2 + y)))
            groups.append(GroupPhotograph(f"{background_name}@{width}", canvas, faces))
    return groups


def free_place(
    rng: np.random.Generator, occupied: list[tuple[int, int, int, int]], patch_w: int, patch_h: int, width: int, height: int
) -> tuple[int, int]:
    """A random top-left corner where a ``patch_w`` x ``patch_h`` patch overlaps none of ``occupied``."""
    for _ in range(50):
        x, y = int(rng.integers(0, width - patch_w)), int(rng.integers(0, height - patch_h))
        if all(x + patch_w < o[0] or x > o[2] or y + patch_h < o[1] or y > o[3] for o in occupied):
            return x, y
    raise RuntimeError(f"no free place for a {patch_w}x{patch_h} face patch in a {width}x{height} image")


def best_iou(box: tuple[float, ...], boxes: np.ndarray) -> float:
    return float(max((iou(box, tuple(other)) for other in boxes), default=0.0))


def _group_tally(locator, groups: list[GroupPhotograph]) -> dict:
    """One locator's ``detect_faces`` over every group photograph and degradation: per pasted face
    whether a detection matched it, every false detection, the time per image (one run each)."""
    found, false, ms = [], [], []
    for group in groups:
        pasted = np.array([face.box for face in group.faces])
        for degradation in GROUP_DEGRADATIONS:
            image = DEGRADATIONS[degradation](group.rgb)
            start = time.perf_counter()
            detections = locator.detect_faces(image)
            ms.append((time.perf_counter() - start) * 1000)
            for face in group.faces:
                found.append((face, degradation, best_iou(face.box, detections.boxes) >= GROUP_MATCH_IOU))
            for box, score in zip(detections.boxes, detections.scores):
                if best_iou(tuple(box), pasted) < GROUP_MATCH_IOU:
                    false.append(
                        {"image": group.name, "degradation": degradation, "box": [round(float(v), 1) for v in box], "score": round(float(score), 3)}
                    )
    return {
        "faces_found": recall([hit for _, _, hit in found]),
        "by_face_size": {str(size): recall([hit for face, _, hit in found if face.size == size]) for size in GROUP_FACE_SIZES},
        "by_photo": {name: recall([hit for face, _, hit in found if face.photo == name]) for name in HAND_BOXES},
        "by_degradation": {
            name: recall([hit for _, degradation, hit in found if degradation == name]) for name in GROUP_DEGRADATIONS
        },
        "false_detections": len(false),
        "false_detection_list": false,
        "median_ms_per_image": round(float(np.median(ms)), 1),
        "max_ms_per_image": round(float(max(ms)), 1),
    }


def group_recall(detectors: Detectors, groups: list[GroupPhotograph]) -> dict:
    """Per locator: pasted faces found (a detection with IoU >= GROUP_MATCH_IOU), by face size, by
    photograph and by degradation; false detections (IoU < GROUP_MATCH_IOU with every pasted
    face); the ``detect_faces`` time per image."""
    return {label: _group_tally(locator, groups) for label, locator in comparison_locators(detectors).items()}


def onet_threshold_sweep(detectors: Detectors, groups: list[GroupPhotograph]) -> dict:
    """The default locator's plain pass with each O-Net threshold of ``ONET_THRESHOLDS``: group
    faces found and false detections, and false faces on the face-free photographs at native size
    and 2x (the plain pass is where MTCNN runs; the cascade is BlazeFace only)."""
    face_free = [
        (name, scale, image if scale == 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC))
        for scale in FACE_FREE_SCALES
        for name, image in face_free_photographs().items()
    ]
    sweep = {}
    for threshold in ONET_THRESHOLDS:
        locator = detectors.default(threshold)
        tally = _group_tally(locator, groups)
        false_faces = []
        for name, scale, image in face_free:
            found = locator.detect_faces(image)
            for box, score in zip(found.boxes, found.scores):
                false_faces.append({"image": name, "scale": scale, "box": [round(float(v), 1) for v in box], "score": round(float(score), 3)})
        sweep[str(threshold)] = {
            "group_faces_found": tally["faces_found"],
            "group_by_photo": tally["by_photo"],
            "group_false_detections": tally["false_detections"],
            "group_false_detection_list": tally["false_detection_list"],
            "face_free_false_faces": false_faces,
        }
    return sweep


# --------------------------------------------------------------------------- cascade resolution


def enlarged_face_cases() -> list[tuple[dict, np.ndarray, tuple[float, ...]]]:
    """The face photographs under every condition, enlarged ``ENLARGED_SCALE`` times with
    ``INTER_CUBIC`` (2048-2400 px), in both orders: degraded then enlarged (a poor photograph saved
    large: the degradation is as coarse as the face) and enlarged then degraded (a large photograph
    degraded at its own size); with the hand box scaled."""
    cases = []
    for photo, image in face_photographs().items():
        hand_box = tuple(v * ENLARGED_SCALE for v in HAND_BOXES[photo])
        big = cv2.resize(image, None, fx=ENLARGED_SCALE, fy=ENLARGED_SCALE, interpolation=cv2.INTER_CUBIC)
        for degradation, degrade in DEGRADATIONS.items():
            meta = {"image": photo, "degradation": degradation}
            poor = cv2.resize(degrade(image), None, fx=ENLARGED_SCALE, fy=ENLARGED_SCALE, interpolation=cv2.INTER_CUBIC)
            cases.append(({**meta, "order": "degrade_then_enlarge"}, poor, hand_box))
            if degradation != "clean":
                cases.append(({**meta, "order": "enlarge_then_degrade"}, degrade(big), hand_box))
    return cases


def cascade_steps(locator: FaceLocator, rgb: np.ndarray, max_side: int | None, hand_box: tuple[float, ...] | None) -> dict:
    """Every cascade step on ``rgb`` at the working resolution ``max_side`` with the cascade's
    detector (the letterbox pass), as ``FaceLocator.detect_with_cascade`` runs each one: the steps
    that miss the face at ``hand_box`` (no detection with IoU >= MIN_IOU; None on a face-free
    photograph, ``hand_box`` None), the steps that find faces elsewhere and how many (every face
    is false on a face-free photograph), the ``outcome``, which
    is what the cascade reports after a plain-pass miss (the first step that finds any face, the
    reference's selection among its faces), and the time of all nine steps."""
    height, width = rgb.shape[:2]
    start = time.perf_counter()
    image = CascadeImage(rgb, max_side)
    missed, false_faces, outcome = [], {}, None
    for step in ALL_STRATEGIES:
        enhanced = enhance(image, step)
        found = locator.detect_faces(cv2.cvtColor(enhanced.bgr, cv2.COLOR_BGR2RGB), small_faces=False)
        boxes = np.clip(image.to_original(found.boxes, enhanced), 0, [width, height, width, height])
        overlaps = [float(iou(tuple(box), hand_box)) if hand_box else 0.0 for box in boxes]
        if not any(o >= MIN_IOU for o in overlaps):
            missed.append(step)
        if any(o < MIN_IOU for o in overlaps):
            false_faces[step] = sum(o < MIN_IOU for o in overlaps)
        if outcome is None and len(found):
            chosen = select_face(boxes, found.scores, (height, width))
            outcome = {"strategy": step, "iou": round(overlaps[chosen], 3), "score": round(float(found.scores[chosen]), 3)}
    return {"seconds": round(time.perf_counter() - start, 2), "steps_missing_the_face": missed if hand_box else None,
            "false_faces": false_faces, "outcome": outcome}


def cascade_resolution_sweep(detectors: Detectors) -> dict:
    """Each working resolution of ``CASCADE_SIDES`` (None: the full resolution, as the reference
    runs the cascade) on the enlarged face photographs and the face-free photographs at native
    size and 2x: step by step, where the faces found are, what the cascade would report, and
    the time of the nine steps (one run each)."""
    locator = FaceLocator(detectors.blazeface, min_face_px=None)
    face_free = [
        ({"image": name, "scale": scale}, image if scale == 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC), None)
        for scale in FACE_FREE_SCALES
        for name, image in face_free_photographs().items()
    ]
    rows = []
    for kind, cases in (("face", enlarged_face_cases()), ("face_free", face_free)):
        for meta, rgb, hand_box in cases:
            row = {"kind": kind, **meta, "size": f"{rgb.shape[1]}x{rgb.shape[0]}", "by_side": {}}
            for side in CASCADE_SIDES:
                row["by_side"][str(side)] = cascade_steps(locator, rgb, side, hand_box)
            rows.append(row)
            print(f"cascade resolution: {kind} {meta}", file=sys.stderr, flush=True)
    faces = [row for row in rows if row["kind"] == "face"]
    free = [row for row in rows if row["kind"] == "face_free"]

    def outcome_at_face(row: dict, side_key: str) -> bool:
        outcome = row["by_side"][side_key]["outcome"]
        return outcome is not None and outcome["iou"] >= MIN_IOU

    summary = {}
    for side in CASCADE_SIDES:
        key, full = str(side), str(None)
        summary[key] = {
            "face_images": len(faces),
            "step_runs": len(faces) * len(ALL_STRATEGIES),
            "steps_at_face": sum(len(ALL_STRATEGIES) - len(row["by_side"][key]["steps_missing_the_face"]) for row in faces),
            "steps_with_false_faces": {
                "face_images": sum(len(row["by_side"][key]["false_faces"]) for row in faces),
                "face_free_images": sum(len(row["by_side"][key]["false_faces"]) for row in free),
            },
            "outcome_at_face": sum(outcome_at_face(row, key) for row in faces),
            "outcome_at_face_where_full_resolution_is_not": sum(
                outcome_at_face(row, key) and not outcome_at_face(row, full) for row in faces),
            "outcome_not_at_face_where_full_resolution_is": sum(
                outcome_at_face(row, full) and not outcome_at_face(row, key) for row in faces),
            "face_free_images": len(free),
            "face_free_false_outcomes": [row["image"] + f"@{row['scale']}x" for row in free if row["by_side"][key]["outcome"]],
            "median_seconds": {
                kind: round(float(np.median([row["by_side"][key]["seconds"] for row in rows if row["kind"] == kind])), 2)
                for kind in ("face", "face_free")
            },
            "max_seconds": round(float(max(row["by_side"][key]["seconds"] for row in rows)), 2),
        }
    return {"summary": summary, "images": rows}


def recall(hits: list[bool]) -> str:
    return f"{sum(hits)}/{len(hits)}"


def composite_faces(detectors: Detectors) -> dict:
    """Per locator: faces of the 1536x512 composite found (IoU >= MIN_IOU with the hand boxes)."""
    composite, hand_boxes = group_composite()
    result = {}
    for label, locator in comparison_locators(detectors).items():
        found = locator.detect_faces(composite)
        result[label] = {
            "faces": len(hand_boxes),
            "faces_found": sum(best_iou(hand, found.boxes) >= MIN_IOU for hand in hand_boxes),
            "detections": len(found),
        }
    return result


def face_free_false_faces(detectors: Detectors) -> dict:
    """Per locator and scale (native, and 2x with INTER_CUBIC, which makes every texture look
    like it came from a larger photograph and so brings MTCNN in): the face ``locate`` reports
    on each face-free photograph through the whole cascade (any face is a false one), and the time
    (one run; on a miss every cascade step runs)."""
    result = {}
    locators = {"blazeface_only": FaceLocator(detectors.blazeface, min_face_px=None), "default": detectors.default()}
    for label, locator in locators.items():
        rows = []
        for scale in FACE_FREE_SCALES:
            for name, image in face_free_photographs().items():
                if scale != 1:
                    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                start = time.perf_counter()
                face = locator.locate(image)
                ms = (time.perf_counter() - start) * 1000
                rows.append(
                    {
                        "image": name,
                        "scale": scale,
                        "size": f"{image.shape[1]}x{image.shape[0]}",
                        "face": None if face is None else {"box": [round(v, 1) for v in face.box], "score": round(face.score, 3), "strategy": face.strategy},
                        "ms": round(ms, 1),
                    }
                )
        result[label] = {
            f"false_faces_at_{scale}x": [row["image"] for row in rows if row["scale"] == scale and row["face"]]
            for scale in FACE_FREE_SCALES
        } | {"images": rows}
    return result


def run(detectors: Detectors) -> dict:
    plain = detectors.default(strategies=())
    cascade = detectors.default()
    cases = []
    for photo, image in face_photographs().items():
        for degradation, degrade in DEGRADATIONS.items():
            degraded = degrade(image)
            case = {"image": photo, "degradation": degradation}
            for mode, locator in (("plain", plain), ("cascade", cascade)):
                result, ms = timed_locate(locator, degraded)
                overlap = iou(result.box, HAND_BOXES[photo]) if result else 0.0
                case[mode] = {
                    "found": result is not None and overlap >= MIN_IOU,
                    "iou": round(overlap, 3),
                    "score": round(result.score, 3) if result else None,
                    "strategy": result.strategy if result else None,
                    "ms": round(ms, 1),
                }
            cases.append(case)
    face_free = face_free_false_faces(detectors)
    resolution = cascade_resolution_sweep(detectors)
    native_default = [row for row in face_free["default"]["images"] if row["scale"] == 1]
    group_images = group_photographs()
    groups = group_recall(detectors, group_images)
    degraded_cases = [c for c in cases if c["degradation"] != "clean"]
    summary = {
        "locator": (f"default: BlazeFace letterbox + MTCNN from min_face_px={DEFAULT_MIN_FACE_PX}, thresholds "
                    f"{SMALL_FACE_THRESHOLDS}; cascade at up to {CASCADE_MAX_SIDE} px"),
        "face_cases": len(cases),
        "found_plain": sum(c["plain"]["found"] for c in cases),
        "found_cascade": sum(c["cascade"]["found"] for c in cases),
        "degraded_cases": len(degraded_cases),
        "degraded_found_plain": sum(c["plain"]["found"] for c in degraded_cases),
        "degraded_found_cascade": sum(c["cascade"]["found"] for c in degraded_cases),
        "rescued_by_cascade": sum(c["cascade"]["found"] and not c["plain"]["found"] for c in cases),
        "median_ms_plain": round(float(np.median([c["plain"]["ms"] for c in cases])), 1),
        "median_ms_cascade": round(float(np.median([c["cascade"]["ms"] for c in cases])), 1),
        "max_ms_cascade": float(max(c["cascade"]["ms"] for c in cases)),
        "face_free_images": len(native_default),
        "face_free_false_positives": sum(row["face"] is not None for row in native_default),
        "median_ms_face_free_full_cascade": round(float(np.median([row["ms"] for row in native_default])), 1),
        "group_faces_found": {label: g["faces_found"] for label, g in groups.items()},
        "group_false_detections": {label: g["false_detections"] for label, g in groups.items()},
        "face_free_false_faces": {
            label: {key: value for key, value in f.items() if key.startswith("false_faces")} for label, f in face_free.items()
        },
        "cascade_resolution": resolution["summary"],
    }
    return {
        "summary": summary,
        "composite": composite_faces(detectors),
        "onet_threshold_sweep": onet_threshold_sweep(detectors, group_images),
        "groups": groups,
        "cases": cases,
        "face_free": face_free,
        "cascade_resolution": resolution,
    }


def environment(command: list[str]) -> dict:
    import matplotlib

    return {
        "command": " ".join(command),
        "machine": platform.machine(),
        "cpu": cpu_description()["model"],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit_image": skimage.__version__,
        "matplotlib": matplotlib.__version__,
        "score_threshold": DEFAULT_SCORE_THRESHOLD,
        "small_face_thresholds": list(SMALL_FACE_THRESHOLDS),
        "min_iou_with_hand_box": MIN_IOU,
        "min_iou_with_pasted_face": GROUP_MATCH_IOU,
        "timing": (
            f"face photographs: median of {REPEATS} runs; group and face-free photographs: one run; "
            "wall clock, ONNX Runtime CPUExecutionProvider, on a machine shared with other jobs"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "face_detector.onnx"
        export_face_detector_onnx(onnx_path)
        mtcnn = export_mtcnn_onnx(Path(folder))
        detectors = Detectors(onnxruntime_detector(onnx_path), (mtcnn["pnet"], mtcnn["rnet"], mtcnn["onet"]))
        python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
        report = {"environment": environment([python, *sys.argv]), **run(detectors)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
