"""Face localisation for the facial stream: BlazeFace full-range decoding, the small-face pass
(MTCNN, :mod:`dfd.runtime.mtcnn`), the reference's face selection rule, and the locator that runs
them with the degradation-robust cascade of image enhancements (:mod:`dfd.runtime.face_cascade`).

Why this shape: the reference (``preprocessing/preprocess.py``) localises faces with RetinaFace and,
when a degraded image yields nothing, retries on enhanced copies of the image. RetinaFace weights
cannot be shipped, so the network here is MediaPipe's BlazeFace full-range (exported to ONNX by
``dfd.export.face_detector``); everything around the network -- letterbox, anchors, decoding,
MediaPipe's weighted NMS, mapping back to the original pixels, selection and cascade -- is NumPy/
OpenCV, so that any backend (ONNX Runtime now, TensorRT later) only has to provide a
function ``image [N,3,192,192] float32 in [-1,1] -> (regressors [N,2304,16], logits [N,2304,1])``.
BlazeFace sees a 192-pixel letterbox and so loses small faces in large photographs; MTCNN, whose
image pyramid runs at full resolution, looks for those (``small_face_range``).

Deliberate differences from MediaPipe/the reference, all documented where they happen:

- The letterbox shrinks with ``INTER_AREA`` (MediaPipe warps with bilinear sampling, which aliases
  badly when a multi-megapixel photo is brought down to 192 pixels); enlarging uses
  ``INTER_LINEAR``. The mapping back is exact for the resize actually performed.
- Boxes are floats in original-image pixels, clipped to the image a pass was given (RetinaFace
  clips too): for the cascade's padded step that is the image with its border, so a box there can
  reach beyond the photograph by up to the border, as the reference's does. The reference's
  ``int()`` truncation after the 2x-upscale strategy is not reproduced.
- The cascade skips the reference's three GFPGAN steps and filters a large image at
  ``CASCADE_MAX_SIDE`` pixels (see :mod:`dfd.runtime.face_cascade`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backends import onnxruntime_session_options
from .face_cascade import (
    ALL_STRATEGIES,
    CASCADE_MAX_SIDE,
    STRATEGIES,
    CascadeImage,
    FaceDetectionError,
    check_rgb,
    enhance,
    fitted_size,
)
from .mtcnn import PNET_CELL, MtcnnDetector

INPUT_SIZE = 192
NUM_ANCHORS = 2304
NUM_COORDS = 16
NUM_KEYPOINTS = 6
ANCHOR_STRIDES = (4,)
ANCHOR_OFFSET = 0.5
# MediaPipe's TensorsToDetectionsCalculator clips logits to +-100 before the sigmoid.
SCORE_CLIPPING = 100.0
# MediaPipe's face-detection graphs: weighted NMS, IoU > 0.3 merges.
MIN_SUPPRESSION_THRESHOLD = 0.3
# MediaPipe's default min_detection_confidence is 0.5. When the threshold was chosen, the highest
# score any cascade pass gave a face-free photograph was 0.491 (coins, padded_equalize); the lowest
# true face the plain pass finds in benchmarks/face_detection.json scores 0.554 (the cameraman's
# profile under severe compound degradation). 0.55 sits between the two.
DEFAULT_SCORE_THRESHOLD = 0.55
# Smallest face (input pixels) BlazeFace full-range finds reliably in a 192 letterbox: a face the
# letterbox shrinks below this is left to the small-face detector (MTCNN).
RESOLVED_FACE_INPUT_PX = 20.0
# Faces of this many image pixels and up are looked for, as the reference's full-resolution
# RetinaFace finds them; None: the BlazeFace letterbox pass only.
DEFAULT_MIN_FACE_PX: float | None = 40.0
# The smallest min_face_px: MTCNN's P-Net window. A smaller face is found only in the image
# upscaled PNET_CELL / min_face_px times per side (0.1 px: 120x, a 49 GiB pyramid level for a
# 512x600 photograph), and a face that small is of no use to the face stream anyway.
SMALLEST_FACE_PX = float(PNET_CELL)
# MTCNN looks for faces up to this many times the smallest size the letterbox resolves, so that
# faces around that size are seen by both detectors (BlazeFace's recall is not a step function).
SMALL_FACE_OVERLAP = 2.0
# MTCNN's P-Net, R-Net and O-Net thresholds. P-Net and R-Net keep facenet-pytorch's defaults. O-Net
# 0.9 is the reference's RetinaFace threshold and the best trade of benchmarks/face_detection.py's
# sweep: 187 of 192 pasted faces with 1 false detection in the group photographs and no false face
# on the face-free photographs (0.8: 189 / 4 and 3 false faces on the motorcycle; 0.95: 181 / 0).
SMALL_FACE_THRESHOLDS = (0.6, 0.7, 0.9)
# An MTCNN face overlapping a BlazeFace face by more than this IoU is the same face: BlazeFace's
# box and score stand (it is the detector the score threshold and the cascade are tuned for).
SAME_FACE_IOU = 0.3
# The reference: "if the top score beats the second by >= 0.02 take it".
SCORE_MARGIN = 0.02

# The name a face found without any enhancement step carries (``FaceResult.strategy``).
PLAIN = "plain"

RunDetector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FaceResult:
    """The face chosen for the facial stream."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    score: float
    strategy: str  # "plain" or the name of the cascade step that found it
    count: int  # faces found by that step


@dataclass(frozen=True)
class Detections:
    """All faces one detector pass found, in original-image pixels, best score first. A score is
    BlazeFace's for the faces it found and MTCNN's O-Net probability for the small faces only MTCNN
    found (both are face probabilities; neither is RetinaFace's)."""

    boxes: np.ndarray  # [K, 4] float64 x1, y1, x2, y2
    scores: np.ndarray  # [K] float64

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# --------------------------------------------------------------------------- input geometry


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits inside the 192x192 input, to map detections back."""

    offset_x: int
    offset_y: int
    resized_w: int
    resized_h: int
    image_w: int
    image_h: int

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Input-pixel coordinates (..., 2) -> original-image pixel coordinates (pixel edges)."""
        scale = np.array([self.image_w / self.resized_w, self.image_h / self.resized_h])
        return (xy - np.array([self.offset_x, self.offset_y])) * scale


def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Fit ``rgb`` into ``size`` x ``size`` keeping its aspect ratio, centred, black borders, as
    MediaPipe's ImageToTensorCalculator (``keep_aspect_ratio``, ``BORDER_ZERO``) does; returns the
    network input ``[1, 3, size, size]`` float32 in [-1, 1] (borders are -1) and the geometry."""
    check_rgb(rgb)
    h, w = rgb.shape[:2]
    resized_w, resized_h = fitted_size(h, w, size)
    interpolation = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (resized_w, resized_h), interpolation=interpolation)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    offset_x = (size - resized_w) // 2
    offset_y = (size - resized_h) // 2
    canvas[offset_y : offset_y + resized_h, offset_x : offset_x + resized_w] = resized
    tensor = canvas.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
    return np.ascontiguousarray(tensor, dtype=np.float32), Letterbox(
        offset_x, offset_y, resized_w, resized_h, w, h
    )


def ssd_anchors(
    input_size: int = INPUT_SIZE, strides: Sequence[int] = ANCHOR_STRIDES, offset: float = ANCHOR_OFFSET
) -> np.ndarray:
    """Anchor centres ``[A, 2]`` (x, y) in [0, 1], row-major per layer, as MediaPipe's
    SsdAnchorsCalculator makes them for the full-range model (one layer of stride 4, one
    fixed-size anchor per cell: aspect ratio 1 and no interpolated scale)."""
    centres = []
    for stride in strides:
        cells = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres.append(np.stack([(xs + offset) / cells, (ys + offset) / cells], axis=-1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float64)


# --------------------------------------------------------------------------- decoding


def decode(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    score_threshold: float,
    input_size: int = INPUT_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw outputs -> (boxes [K,4] x1,y1,x2,y2, scores [K], keypoints [K,6,2]) in
    normalised input coordinates, keeping anchors whose sigmoid score is >= ``score_threshold``
    and whose box is not inverted (MediaPipe's TensorsToDetectionsCalculator)."""
    regressors = np.asarray(regressors, dtype=np.float64).reshape(-1, NUM_COORDS)
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if regressors.shape[0] != anchors.shape[0] or logits.shape[0] != anchors.shape[0]:
        raise FaceDetectionError(
            f"detector returned {regressors.shape[0]} boxes and {logits.shape[0]} scores "
            f"for {anchors.shape[0]} anchors"
        )
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -SCORE_CLIPPING, SCORE_CLIPPING)))
    values = regressors / input_size  # fixed-size anchors: width = height = 1
    centre = values[:, 0:2] + anchors
    half = values[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = values[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    keep = (scores >= score_threshold) & (values[:, 2] >= 0) & (values[:, 3] >= 0)
    return boxes[keep], scores[keep], keypoints[keep]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = (box[2] - box[0]) * (box[3] - box[1]) + areas - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def weighted_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float = MIN_SUPPRESSION_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-maximum suppression: the best remaining detection absorbs every
    remaining one whose IoU with it is > ``threshold``; the merged box is the score-weighted mean
    of the cluster, the merged score is the best one's. Best score first. (MediaPipe merges the
    keypoints the same way; the locator uses boxes only, so they are not merged.)"""
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_scores = [], []
    while order.size:
        top = order[0]
        overlap = _iou(boxes[top], boxes[order])
        cluster = order[overlap > threshold]
        if cluster.size == 0:  # degenerate (zero-area) box: keep it alone
            cluster = order[:1]
        weights = scores[cluster][:, None]
        out_boxes.append((boxes[cluster] * weights).sum(0) / weights.sum())
        out_scores.append(scores[top])
        order = order[~np.isin(order, cluster)]
    if not out_scores:
        return np.zeros((0, 4)), np.zeros(0)
    return np.array(out_boxes), np.array(out_scores)


# --------------------------------------------------------------------------- selection


def select_face(boxes: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int]) -> int:
    """The reference's choice among several faces (index into ``boxes``).

    1. If the best score beats the second best by >= 0.02, take the best.
    2. Else the largest box that contains the image centre (borders included).
    3. Else the box whose centre is nearest the image centre.
    Ties: the reference sorts ``(score, key)`` and takes ``max`` over ``(area, key)``, where the keys
    are RetinaFace's strings ``face_1``, ``face_2``, ... compared as strings (``face_9`` beats
    ``face_10``); the same keys are made here from the detection order. ``min`` over distances
    keeps the earlier detection in step 3.
    """
    if len(scores) == 0:
        raise FaceDetectionError("select_face needs at least one detection")
    if len(scores) == 1:
        return 0
    indices = list(range(len(scores)))
    keys = [f"face_{i + 1}" for i in indices]
    by_score = sorted(indices, key=lambda i: (scores[i], keys[i]), reverse=True)
    if scores[by_score[0]] - scores[by_score[1]] >= SCORE_MARGIN:
        return by_score[0]
    height, width = image_hw
    cx, cy = width / 2.0, height / 2.0
    containing = [
        i for i in indices if boxes[i, 0] <= cx <= boxes[i, 2] and boxes[i, 1] <= cy <= boxes[i, 3]
    ]
    if containing:
        areas = {i: (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) for i in containing}
        return max(containing, key=lambda i: (areas[i], keys[i]))
    distances = [((boxes[i, 0] + boxes[i, 2]) / 2 - cx) ** 2 + ((boxes[i, 1] + boxes[i, 3]) / 2 - cy) ** 2 for i in indices]
    return int(np.argmin(distances))


# --------------------------------------------------------------------------- small faces


def small_face_range(height: int, width: int, min_face_px: float | None) -> tuple[float, float] | None:
    """The face sizes (image pixels, smallest and largest) the small-face detector looks for, or
    None when the letterbox already resolves a ``min_face_px`` face.

    Why: the reference's RetinaFace runs at full resolution and finds small faces, which take part
    in its selection rule (a small face with a clearly higher score wins and then fails the 1/9
    rule); BlazeFace sees a 192-pixel letterbox, where a 40-pixel face of a 1536-pixel photo is
    five pixels wide. MTCNN's image pyramid finds such faces at full resolution.
    """
    if min_face_px is None:
        return None
    resolved = max(height, width) * RESOLVED_FACE_INPUT_PX / INPUT_SIZE
    if min_face_px >= resolved:
        return None
    return float(min_face_px), float(SMALL_FACE_OVERLAP * resolved)


# --------------------------------------------------------------------------- the locator


class FaceLocator:
    """Finds the face the facial stream should look at: a plain pass, then (only if it found
    nothing) the enhancement cascade in the reference's order; the first step that finds any face
    wins and the reference's selection rule picks one of its faces.

    The plain pass is BlazeFace on a 192-pixel letterbox plus, on images large enough that the
    letterbox loses ``min_face_px`` faces, the small-face detector (MTCNN) at full resolution.
    Only the plain pass looks for small faces: the cascade is there to rescue the face of a
    degraded image, and a face the facial stream can use (>= 1/9 of the image) is large in the
    letterbox; running MTCNN's image pyramid on every enhanced copy would multiply the cost of a
    cascade that already runs non-local means."""

    def __init__(
        self,
        run_detector: RunDetector,
        *,
        small_face_detector: MtcnnDetector | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        strategies: Sequence[str] = ALL_STRATEGIES,
        min_face_px: float | None = DEFAULT_MIN_FACE_PX,
        cascade_max_side: int | None = CASCADE_MAX_SIDE,
    ) -> None:
        unknown = [name for name in strategies if name not in STRATEGIES]
        if unknown:
            raise FaceDetectionError(
                f"unknown face-detection strategies {unknown}; known: {', '.join(ALL_STRATEGIES)}"
            )
        if not 0.0 < score_threshold < 1.0:
            raise FaceDetectionError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if min_face_px is not None and not (math.isfinite(min_face_px) and min_face_px >= SMALLEST_FACE_PX):
            raise FaceDetectionError(
                f"min_face_px must be None (the letterbox pass only) or at least {SMALLEST_FACE_PX:g} pixels, MTCNN's "
                f"smallest window (a smaller face is found only in an upscaled image), got {min_face_px}")
        if cascade_max_side is not None and cascade_max_side < INPUT_SIZE:
            raise FaceDetectionError(
                f"cascade_max_side must be None or at least the letterbox's {INPUT_SIZE} px, got {cascade_max_side}"
            )
        self._run_detector = run_detector
        self.small_face_detector = small_face_detector
        self.score_threshold = score_threshold
        self.strategies = tuple(strategies)
        self.min_face_px = min_face_px
        self.cascade_max_side = cascade_max_side
        self._anchors = ssd_anchors()

    def detect_faces(self, rgb: np.ndarray, *, small_faces: bool = True) -> Detections:
        """Every face one pass finds in ``rgb``, in its pixels, clipped to it, best score first.

        BlazeFace sees the whole image letterboxed; with ``small_faces``, a small-face detector and
        an image where a ``min_face_px`` face would shrink below what the letterbox resolves,
        MTCNN adds the faces of :func:`small_face_range` that BlazeFace did not find.
        """
        check_rgb(rgb)
        height, width = rgb.shape[:2]
        boxes, scores = self._letterbox_pass(rgb)
        sizes = small_face_range(height, width, self.min_face_px)
        if small_faces and self.small_face_detector is not None and sizes is not None:
            small = self.small_face_detector.detect(rgb, min_face_px=sizes[0], max_face_px=sizes[1])
            new = np.array(
                [len(boxes) == 0 or _iou(box, boxes).max() <= SAME_FACE_IOU for box in small.boxes], dtype=bool
            )
            boxes = np.concatenate([boxes, small.boxes[new].reshape(-1, 4)])
            scores = np.concatenate([scores, small.scores[new].astype(np.float64)])
            order = np.argsort(-scores, kind="stable")
            boxes, scores = boxes[order], scores[order]
        boxes = np.clip(boxes, 0, [width, height, width, height])
        return Detections(boxes, scores)

    def _letterbox_pass(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BlazeFace on the letterboxed image: boxes (original pixels) and scores after
        MediaPipe's weighted NMS (IoU is unchanged by the per-axis scaling of the letterbox, so
        merging here equals merging in the network's coordinates)."""
        tensor, geometry = letterbox(rgb)
        outputs = self._run_detector(tensor)
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
            raise FaceDetectionError("run_detector must return (regressors, scores)")
        regressors, logits = (np.asarray(o) for o in outputs)
        expected = ((1, NUM_ANCHORS, NUM_COORDS), (1, NUM_ANCHORS, 1))
        if (regressors.shape, logits.shape) != expected:
            raise FaceDetectionError(
                f"run_detector returned shapes {regressors.shape} and {logits.shape}; expected {expected}"
            )
        boxes, scores, _ = decode(regressors[0], logits[0], self._anchors, self.score_threshold)
        boxes, scores = weighted_nms(boxes, scores)
        return geometry.to_original(boxes.reshape(-1, 2, 2) * INPUT_SIZE).reshape(-1, 4), scores

    def detect_with_cascade(self, rgb: np.ndarray) -> tuple[Detections, str | None]:
        """The first pass that finds a face (plain, then each enabled strategy), its detections in
        ORIGINAL-image pixels and its name; ``(empty, None)`` when every pass fails."""
        detections = self.detect_faces(rgb)
        if len(detections):
            return detections, PLAIN
        cascade_image = CascadeImage(rgb, self.cascade_max_side)
        for name in self.strategies:
            enhanced = enhance(cascade_image, name)
            found = self.detect_faces(cv2.cvtColor(enhanced.bgr, cv2.COLOR_BGR2RGB), small_faces=False)
            if len(found):
                boxes = np.clip(cascade_image.to_original(found.boxes, enhanced), *cascade_image.extent(enhanced))
                return Detections(boxes, found.scores), name
        return detections, None

    def locate(self, rgb: np.ndarray) -> FaceResult | None:
        """The face to crop for the facial stream, or None when no pass finds one."""
        detections, strategy = self.detect_with_cascade(rgb)
        if strategy is None:
            return None
        chosen = select_face(detections.boxes, detections.scores, rgb.shape[:2])
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[chosen])
        return FaceResult((x1, y1, x2, y2), float(detections.scores[chosen]), strategy, len(detections))


def onnxruntime_detector(onnx_path: str | Path, providers: Sequence[str] | None = None) -> RunDetector:
    """``run_detector`` backed by an ONNX Runtime session on the exported BlazeFace graph."""
    import onnxruntime

    path = Path(onnx_path)
    if not path.is_file():
        raise FaceDetectionError(f"face detector ONNX file {path} does not exist")
    try:
        session = onnxruntime.InferenceSession(
            str(path),
            sess_options=onnxruntime_session_options(),
            providers=list(providers) if providers else ["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise FaceDetectionError(f"onnxruntime cannot load {path}: {exc}") from exc
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    if sorted(output_names) != ["regressors", "scores"]:
        raise FaceDetectionError(f"{path} outputs {output_names}; expected 'regressors' and 'scores'")

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regressors, scores = session.run(["regressors", "scores"], {input_name: image})
        return regressors, scores

    return run
