"""MTCNN face detection (P-Net -> R-Net -> O-Net) as a small-face pass beside BlazeFace.

Why: BlazeFace (``face_detection.py``) looks at a 192-pixel letterbox and misses the small and
profile faces of large group photographs; MTCNN scans an image pyramid at full resolution. This
module is everything around the three networks, in NumPy and OpenCV, so any backend (ONNX Runtime now,
TensorRT later) only has to provide three callables:

- ``run_pnet``: ``[1, 3, H, W]`` float32 -> ``(regression [1, 4, h, w], probability [1, 2, h, w])``
- ``run_rnet``: ``[N, 3, 24, 24]`` -> ``(regression [N, 4], probability [N, 2])``
- ``run_onet``: ``[N, 3, 48, 48]`` -> ``(regression [N, 4], landmarks [N, 10], probability [N, 2])``

The reference behaviour is ``facenet_pytorch.MTCNN(keep_all=True).detect`` (facenet-pytorch 2.6.0,
``models/utils/detect_face.py``), whose weights ``dfd.export.mtcnn`` exports. It computes in
float32; the box arithmetic here does too, operation for operation, because ``floor``/``trunc`` of
coordinates decide which pixels a crop contains and a float64 rewrite would move crops by a pixel
near integer boundaries. Its quirks are kept on purpose:

- Resampling is ``interpolate(mode="area")`` = adaptive average pooling (window ``floor(i*in/out)``
  to ``ceil((i+1)*in/out)``), not ``cv2.INTER_AREA``; computed from one integral image shared by
  every pyramid level and every crop (uint32 that wraps: see ``AreaSampler``), and bit-exact with
  torch on uint8 pixels (window sums are exact integers; ``sum / kh / kw`` in float32 as torch
  divides).
- P-Net's box regression uses ``x2 - x1`` as the width, R-Net's and O-Net's use ``x2 - x1 + 1``.
- Crops are the in-image part of each box (1-based ``pad`` then ``[y - 1 : ey]``), stretched to the
  network size: out-of-image parts are not zero-padded as in the original MTCNN.
- The final NMS is the 'Min' overlap (intersection / smaller area, 1-based areas).

Differences, each deliberate:

- A box whose in-image part is empty gets no crop and is dropped; facenet skips its crop but keeps
  the box, which misaligns every later box with the network outputs.
- Ties of exactly equal scores are broken by candidate order (stable sort) everywhere; torchvision's
  ``batched_nms`` re-sorts with an unstable sort once it has more than 1000 boxes.
- Faces come out best score first (facenet's ``detect`` re-orders them largest first).
- ``max_face_px`` skips the pyramid levels that only look for large faces (see ``scales``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backends import onnxruntime_session_options
from .errors import DfdError
from .images import check_rgb_image

RunPNet = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
RunRNet = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
RunONet = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

# P-Net is a fully convolutional 12x12 detector with one pooling of stride 2.
PNET_CELL = 12
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48
# facenet's fixed_batch_process chunk, which also bounds the memory of one network call.
MAX_BATCH = 512
# Input pixels per P-Net call: a larger pyramid level runs in bands of rows (see _pnet_level).
PNET_BAND_PIXELS = 1 << 21
# The largest area-resampling window whose uint8 sum fits uint32 (255 * pixels < 2**32), and the
# pixels per band in which the summed-area table is built and read (~24 MB of int32 per band).
MAX_WINDOW_PIXELS = (2**32 - 1) // 255
_TABLE_BAND_PIXELS = 1 << 21
PIXEL_MEAN = np.float32(127.5)
PIXEL_SCALE = np.float32(0.0078125)
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_FACTOR = 0.709


class MtcnnError(DfdError, ValueError):
    """Bad input to MTCNN detection (not an RGB uint8 image, bad settings, bad network outputs)."""


@dataclass(frozen=True)
class MtcnnNms:
    """IoU thresholds of MTCNN's four suppressions (facenet's values)."""

    per_scale: float = 0.5  # P-Net candidates within one pyramid level
    across_scales: float = 0.7  # P-Net candidates of all levels together
    refine: float = 0.7  # after R-Net
    output: float = 0.7  # after O-Net, 'Min' overlap


@dataclass(frozen=True)
class MtcnnFaces:
    """The faces of one image, best score first, in that image's pixels."""

    boxes: np.ndarray  # [K, 4] float64 x1, y1, x2, y2
    scores: np.ndarray  # [K] float64 O-Net face probability
    landmarks: np.ndarray  # [K, 5, 2] float64 (x, y): eyes, nose, mouth corners

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _no_faces() -> MtcnnFaces:
    return MtcnnFaces(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


# --------------------------------------------------------------------------- area resampling


def _window_bounds(
    length: np.ndarray | int, out: int, origin: np.ndarray | int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling windows along one axis: output ``i`` averages input
    ``floor(i*length/out) .. ceil((i+1)*length/out) - 1``; ``length``/``origin`` may be per-region
    arrays ``[N]``, then the bounds are ``[N, out]``."""
    length = np.asarray(length, dtype=np.int64)[..., None]
    index = np.arange(out, dtype=np.int64)
    start = (index * length) // out
    end = -((-(index + 1) * length) // out)
    origin = np.asarray(origin, dtype=np.int64)[..., None]
    return origin + start, origin + end


class AreaSampler:
    """``torch.nn.functional.interpolate(mode="area")`` of a uint8 image and of regions of it.

    Why an integral image: every pyramid level and every R-/O-Net crop is an area resampling of
    the same image, so one summed-area table serves them all and each output pixel costs four
    look-ups, whatever the window size or ratio (up or down).

    Why uint32 that wraps: a window's sum is a difference of table entries, and differences modulo
    2**32 give the exact sum of any window under ``MAX_WINDOW_PIXELS`` (255 * pixels < 2**32), even
    where the table's own entries wrap (they do on images above 16.8 MP). That halves the table of
    the exact float64 alternative: 12 bytes per RGB pixel instead of 24, 0.76 GB instead of 1.5 GB
    for a 64 MP photograph (benchmarks/huge_image_memory.py). The table is built in bands of rows
    whose own sums fit int32, so OpenCV never overflows and the wrap is NumPy's defined unsigned
    arithmetic. MTCNN's windows are tiny beside the limit: its smallest pyramid level keeps a 12-px
    short side and its crops are 24 or 48 px, so only a window of a multi-gigapixel image could
    reach it, and that is refused rather than summed wrongly."""

    def __init__(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0 \
                or not 1 <= image.shape[2] <= 4:
            raise MtcnnError(f"area resampling needs a non-empty uint8 [H, W, 1-4] array, "
                             f"got {image.dtype} of shape {image.shape}")
        height, width, channels = image.shape
        widest = np.iinfo(np.int32).max // 255  # a band is at least one row, and its sums are int32
        if width > widest:
            raise MtcnnError(f"area resampling takes rows of at most {widest} pixels, got {width}")
        self._integral = np.zeros((height + 1, width + 1, channels), np.uint32)
        band = max(1, _TABLE_BAND_PIXELS // width)
        for top in range(0, height, band):
            bottom = min(height, top + band)
            local = cv2.integral(np.ascontiguousarray(image[top:bottom]), sdepth=cv2.CV_32S)
            local = local.reshape(bottom - top + 1, width + 1, channels)[1:].view(np.uint32)
            np.add(local, self._integral[top], out=self._integral[top + 1 : bottom + 1])
        self.height, self.width = height, width

    def resize(self, out_h: int, out_w: int) -> np.ndarray:
        """The whole image at ``out_h`` x ``out_w``: ``[out_h, out_w, C]`` float32. Windows of a
        whole-image resize are a grid, so rows and columns are differenced one after the other, a
        band of output rows at a time (the row strips span the image's full width)."""
        _check_output_size(out_h, out_w)
        row_start, row_end = _window_bounds(self.height, out_h)
        col_start, col_end = _window_bounds(self.width, out_w)
        rows, cols = row_end - row_start, col_end - col_start
        _check_window_pixels(rows, cols)
        sums = np.empty((out_h, out_w, self._integral.shape[2]), np.uint32)
        band = max(1, _TABLE_BAND_PIXELS // (self.width + 1))
        for first in range(0, out_h, band):
            part = slice(first, first + band)
            strips = self._integral[row_end[part]] - self._integral[row_start[part]]
            np.subtract(strips[:, col_end], strips[:, col_start], out=sums[part])
        return sums.astype(np.float32) / rows.astype(np.float32)[:, None, None] / cols.astype(np.float32)[:, None]

    def regions(
        self, top: np.ndarray, left: np.ndarray, height: np.ndarray, width: np.ndarray, out_h: int, out_w: int
    ) -> np.ndarray:
        """Regions ``[top, top+height) x [left, left+width)`` (arrays ``[N]``, inside the image, not
        empty), each resampled to ``out_h`` x ``out_w``: ``[N, out_h, out_w, C]`` float32."""
        _check_output_size(out_h, out_w)
        row_start, row_end = _window_bounds(height, out_h, top)
        col_start, col_end = _window_bounds(width, out_w, left)
        rows, cols = row_end - row_start, col_end - col_start
        _check_window_pixels(rows, cols)
        stride = self.width + 1
        table = self._integral.reshape(-1, self._integral.shape[2])

        def corner(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return np.take(table, rows[:, :, None] * stride + cols[:, None, :], axis=0)

        sums = corner(row_end, col_end)
        sums -= corner(row_start, col_end)
        sums -= corner(row_end, col_start)
        sums += corner(row_start, col_start)
        rows, cols = rows.astype(np.float32)[:, :, None, None], cols.astype(np.float32)[:, None, :, None]
        return sums.astype(np.float32) / rows / cols


def _check_output_size(out_h: int, out_w: int) -> None:
    if out_h < 1 or out_w < 1:
        raise MtcnnError(f"area resampling needs a positive output size, got {out_h}x{out_w}")


def _check_window_pixels(rows: np.ndarray, cols: np.ndarray) -> None:
    """Refuse windows whose uint8 sum could pass 2**32, where the wrapping table would be wrong."""
    largest = int(rows.max(initial=0)) * int(cols.max(initial=0))
    if largest > MAX_WINDOW_PIXELS:
        raise MtcnnError(
            f"area resampling window of {largest} pixels is above the {MAX_WINDOW_PIXELS} an exact "
            f"uint32 sum allows; resample to a larger output size"
        )


# --------------------------------------------------------------------------- box arithmetic (float32)


def _iou_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS as torchvision's CPU ``nms`` computes it: score order (stable), IoU with 0-based
    areas in float32, suppress when IoU > ``threshold``. Kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for position in range(len(order)):
        if suppressed[position]:
            continue
        keep.append(order[position])
        rest = slice(position + 1, None)
        w = np.maximum(np.float32(0), np.minimum(x2[position], x2[rest]) - np.maximum(x1[position], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[position], y2[rest]) - np.maximum(y1[position], y1[rest]))
        inter = w * h
        overlap = inter / (areas[position] + areas[rest] - inter)
        suppressed[rest] |= overlap.astype(np.float64) > threshold
    return np.array(keep, dtype=np.int64)


def _min_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet's final NMS (``nms_numpy`` with 'Min'): 1-based areas, overlap = intersection over
    the smaller area, keep when overlap <= ``threshold``; candidates taken from the end of NumPy's
    default ascending argsort, as facenet does, so exact ties resolve the same way."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    remaining = np.argsort(scores)
    keep = []
    while remaining.size:
        best, rest = remaining[-1], remaining[:-1]
        keep.append(best)
        w = np.maximum(np.float32(0), np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + one)
        overlap = (w * h) / np.minimum(areas[best], areas[rest])
        remaining = rest[overlap <= np.float32(threshold)]
    return np.array(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool) -> np.ndarray:
    """Shift box edges by ``offsets`` times the box size; P-Net's size is ``x2 - x1``, R-/O-Net's
    (``inclusive``) ``x2 - x1 + 1``."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    if inclusive:
        size = size + np.float32(1)
    return boxes + offsets * np.concatenate([size, size], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """facenet's ``rerec``: the square of side max(w, h) with the same centre."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(axis=1, keepdims=True)
    corner = boxes[:, 0:2] + size * np.float32(0.5) - side * np.float32(0.5)
    return np.concatenate([corner, corner + side], axis=1)


# --------------------------------------------------------------------------- checks


def _checked_outputs(name: str, outputs: object, expected: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """A network's outputs as float32 arrays of the expected shapes, or a readable error."""
    if not isinstance(outputs, (tuple, list)) or len(outputs) != len(expected):
        raise MtcnnError(f"{name} must return {len(expected)} arrays, got {type(outputs).__name__}")
    arrays = [np.asarray(output, dtype=np.float32) for output in outputs]
    shapes = tuple(array.shape for array in arrays)
    if shapes != tuple(expected):
        raise MtcnnError(f"{name} returned shapes {list(shapes)}; expected {list(expected)}")
    if not all(np.isfinite(array).all() for array in arrays):
        raise MtcnnError(f"{name} returned non-finite values")
    return arrays


def _network_input(pixels: np.ndarray) -> np.ndarray:
    """``[..., H, W, 3]`` area-resampled pixels -> ``[..., 3, H, W]`` float32, (x - 127.5) / 128."""
    normalised = (pixels - PIXEL_MEAN) * PIXEL_SCALE
    return np.ascontiguousarray(np.moveaxis(normalised, -1, -3), dtype=np.float32)


def pnet_map_size(size: int) -> int:
    """P-Net's output length for an input length: conv3, ceil-mode pool 2, conv3, conv3."""
    return (size - 2 + 1) // 2 - 4


# --------------------------------------------------------------------------- the detector


class MtcnnDetector:
    """facenet-pytorch's MTCNN cascade around three backend callables (see the module docstring)."""

    def __init__(
        self,
        run_pnet: RunPNet,
        run_rnet: RunRNet,
        run_onet: RunONet,
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        nms: MtcnnNms = MtcnnNms(),
    ) -> None:
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t < 1.0 for t in thresholds):
            raise MtcnnError(f"thresholds must be three probabilities in [0, 1), got {thresholds}")
        if not 0.0 < factor < 1.0:
            raise MtcnnError(f"the pyramid factor must be in (0, 1), got {factor}")
        overlaps = (nms.per_scale, nms.across_scales, nms.refine, nms.output)
        if not all(0.0 < t <= 1.0 for t in overlaps):
            raise MtcnnError(f"NMS thresholds must be in (0, 1], got {nms}")
        self._run_pnet, self._run_rnet, self._run_onet = run_pnet, run_rnet, run_onet
        self.thresholds = thresholds
        self.factor = float(factor)
        self.nms = nms

    def scales(
        self, height: int, width: int, min_face_px: float = 20.0, max_face_px: float | None = None
    ) -> list[float]:
        """The pyramid: ``12 / min_face_px`` times powers of ``factor`` while the scaled short side
        is >= 12 (facenet's loop, in the same float64 steps).

        ``max_face_px`` drops the levels whose P-Net cell (``12 / scale`` image pixels) is larger:
        MTCNN is the small-face pass, BlazeFace's letterbox pass already finds large faces, and the
        coarse levels are the ones that cost crops of large textures for R-/O-Net. It is a pyramid
        limit, not a size filter: P-Net also fires on faces somewhat larger than its cell, so faces
        up to ~1.5x ``max_face_px`` may still come out (the test composite, ``max_face_px=40``: a
        46-px-wide face is found, 74 and 114 px ones are not)."""
        if not np.isfinite(min_face_px) or min_face_px <= 0:
            raise MtcnnError(f"min_face_px must be a positive number, got {min_face_px}")
        if max_face_px is not None and not max_face_px >= min_face_px:
            raise MtcnnError(f"max_face_px must be None or >= min_face_px ({min_face_px}), got {max_face_px}")
        scale = 12.0 / min_face_px
        short_side = min(height, width) * scale
        scales = []
        while short_side >= 12:
            if max_face_px is None or PNET_CELL / scale <= max_face_px:
                scales.append(scale)
            scale *= self.factor
            short_side *= self.factor
        return scales

    def detect(self, rgb: np.ndarray, *, min_face_px: float = 20.0, max_face_px: float | None = None) -> MtcnnFaces:
        """Every face MTCNN finds in ``rgb`` (HxWx3 uint8 RGB) of at least ``min_face_px`` pixels
        (and, roughly, at most ``max_face_px``); an image smaller than ``min_face_px`` has none."""
        check_rgb_image(rgb, "MTCNN", MtcnnError)
        height, width = rgb.shape[:2]
        scales = self.scales(height, width, min_face_px, max_face_px)
        if not scales:
            return _no_faces()
        sampler = AreaSampler(rgb)
        boxes = self._propose(sampler, scales)
        if len(boxes):
            boxes = self._refine(sampler, boxes)
        if not len(boxes):
            return _no_faces()
        return self._finish(sampler, boxes)

    # ---- stage 1: P-Net on every pyramid level

    def _propose(self, sampler: AreaSampler, scales: list[float]) -> np.ndarray:
        """P-Net candidate boxes ``[K, 4]`` float32, suppressed per level then across levels,
        regressed and squared (each later stage scores them anew)."""
        found_boxes, found_scores, found_offsets = [], [], []
        for scale in scales:
            out_h, out_w = int(sampler.height * scale + 1), int(sampler.width * scale + 1)
            offsets, probability = self._pnet_level(sampler.resize(out_h, out_w))
            face = probability[0, 1]
            rows, cols = np.nonzero(face >= np.float32(self.thresholds[0]))
            cells = np.stack([cols, rows], axis=1).astype(np.float32) * np.float32(PNET_STRIDE)
            scale32 = np.float32(scale)
            boxes = np.concatenate(
                [np.floor((cells + np.float32(1)) / scale32), np.floor((cells + np.float32(PNET_CELL)) / scale32)],
                axis=1,
            )
            level_scores = face[rows, cols]
            keep = _iou_nms(boxes, level_scores, self.nms.per_scale)
            found_boxes.append(boxes[keep])
            found_scores.append(level_scores[keep])
            found_offsets.append(offsets[0][:, rows[keep], cols[keep]].T)
        boxes, scores, offsets = (np.concatenate(found) for found in (found_boxes, found_scores, found_offsets))
        keep = _iou_nms(boxes, scores, self.nms.across_scales)
        return _square(_regress(boxes[keep], offsets[keep], inclusive=False))

    def _pnet_level(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P-Net's ``(regression [1, 4, h, w], probability [1, 2, h, w])`` for one pyramid level
        ``[H, W, 3]``, run on bands of about ``PNET_BAND_PIXELS`` input pixels.

        Why bands: P-Net's activations are ~20 floats per input pixel, 0.6 GB at the finest level
        of a 64 MP photograph. It is fully convolutional and map row ``j`` sees input rows
        ``2j .. 2j + 11`` only, so bands of map rows fed those input rows (starting on an even row,
        so the ceil-mode pool pairs the same rows) give the same map as one call."""
        out_h, out_w = level.shape[:2]
        map_h, map_w = pnet_map_size(out_h), pnet_map_size(out_w)
        context = PNET_CELL - PNET_STRIDE  # input rows a band needs beyond 2 per map row
        band = max(1, (PNET_BAND_PIXELS // out_w - context) // PNET_STRIDE)
        offsets, probability = [], []
        for first in range(0, map_h, band):
            rows = min(band, map_h - first)
            pixels = level[PNET_STRIDE * first : PNET_STRIDE * (first + rows) + context]
            outputs = _checked_outputs("run_pnet", self._run_pnet(_network_input(pixels)[None]),
                                       [(1, 4, rows, map_w), (1, 2, rows, map_w)])
            offsets.append(outputs[0])
            probability.append(outputs[1])
        return np.concatenate(offsets, axis=2), np.concatenate(probability, axis=2)

    # ---- stages 2 and 3: crops through R-Net and O-Net

    def _crops(self, sampler: AreaSampler, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Network inputs ``[N, 3, size, size]`` of the in-image part of each box (facenet's 1-based
        ``pad``: truncate, clip to ``[1, w]``/``[1, h]``, crop ``[y - 1 : ey, x - 1 : ex]``) and the
        mask of boxes that had a non-empty part."""
        corners = np.trunc(boxes).astype(np.int64)
        x = np.maximum(corners[:, 0], 1)
        y = np.maximum(corners[:, 1], 1)
        ex = np.minimum(corners[:, 2], sampler.width)
        ey = np.minimum(corners[:, 3], sampler.height)
        valid = (ey > y - 1) & (ex > x - 1)
        x, y, ex, ey = x[valid], y[valid], ex[valid], ey[valid]
        pixels = sampler.regions(y - 1, x - 1, ey - y + 1, ex - x + 1, size, size)
        return _network_input(pixels), valid

    def _run_batched(self, name: str, run: Callable, inputs: np.ndarray, widths: Sequence[int]) -> list[np.ndarray]:
        """One call per ``MAX_BATCH`` crops; outputs ``[N, width]`` each, concatenated."""
        parts = []
        for start in range(0, len(inputs), MAX_BATCH):
            chunk = inputs[start : start + MAX_BATCH]
            parts.append(_checked_outputs(name, run(chunk), [(len(chunk), w) for w in widths]))
        return [np.concatenate(column) for column in zip(*parts)]

    def _refine(self, sampler: AreaSampler, boxes: np.ndarray) -> np.ndarray:
        """R-Net on the candidates: threshold, NMS, regression (inclusive sizes), squaring."""
        inputs, valid = self._crops(sampler, boxes, RNET_SIZE)
        boxes = boxes[valid]
        if not len(boxes):
            return boxes
        offsets, probability = self._run_batched("run_rnet", self._run_rnet, inputs, (4, 2))
        scores = probability[:, 1]
        passed = scores > np.float32(self.thresholds[1])
        boxes, scores, offsets = boxes[passed], scores[passed], offsets[passed]
        keep = _iou_nms(boxes, scores, self.nms.refine)
        return _square(_regress(boxes[keep], offsets[keep], inclusive=True))

    def _finish(self, sampler: AreaSampler, boxes: np.ndarray) -> MtcnnFaces:
        """O-Net on the refined boxes: threshold, landmarks, regression, 'Min' NMS."""
        inputs, valid = self._crops(sampler, boxes, ONET_SIZE)
        boxes = boxes[valid]
        if not len(boxes):
            return _no_faces()
        offsets, landmarks, probability = self._run_batched("run_onet", self._run_onet, inputs, (4, 10, 2))
        scores = probability[:, 1]
        passed = scores > np.float32(self.thresholds[2])
        boxes, scores, offsets, landmarks = boxes[passed], scores[passed], offsets[passed], landmarks[passed]
        one = np.float32(1)
        size = boxes[:, 2:4] - boxes[:, 0:2] + one
        points = np.stack(
            [
                size[:, 0:1] * landmarks[:, :5] + boxes[:, 0:1] - one,
                size[:, 1:2] * landmarks[:, 5:] + boxes[:, 1:2] - one,
            ],
            axis=-1,
        )
        boxes = _regress(boxes, offsets, inclusive=True)
        keep = _min_nms(boxes, scores, self.nms.output)
        return MtcnnFaces(
            boxes[keep].astype(np.float64).reshape(-1, 4),
            scores[keep].astype(np.float64),
            points[keep].astype(np.float64).reshape(-1, 5, 2),
        )


# --------------------------------------------------------------------------- ONNX Runtime


PNET_OUTPUTS = ("regression", "probability")
RNET_OUTPUTS = ("regression", "probability")
ONET_OUTPUTS = ("regression", "landmarks", "probability")
OUTPUT_WIDTHS = {"regression": 4, "probability": 2, "landmarks": 10}
INPUT_NAME = "image"


def _shape_problem(inputs: list, outputs: list, side: int | None) -> str | None:
    """Why a graph's declared shapes are not the stage's (None when they are): its input is
    ``[batch, 3, side, side]`` (P-Net: any height and width, one per pyramid level) and each
    output ``[batch, width]`` (P-Net: ``[batch, width, h, w]``, a map). Another stage's graph,
    swapped in under a consistent manifest, opened and then failed every image reaching it."""
    shape = list(inputs[0].shape)
    fixed = [dim for dim in shape[2:] if isinstance(dim, int)]
    if len(shape) != 4 or shape[1] != 3 or (shape[2:] != [side, side] if side else fixed):
        wanted = f"[batch, 3, {side}, {side}]" if side else "[batch, 3, height, width] (any height and width)"
        return f"input {INPUT_NAME!r} is {shape}, expected {wanted}"
    rank = 2 if side else 4
    for output in outputs:
        dims = list(output.shape)
        if len(dims) != rank or dims[1] != OUTPUT_WIDTHS[output.name]:
            wanted = f"[batch, {OUTPUT_WIDTHS[output.name]}" + ("]" if side else ", h, w]")
            return f"output {output.name!r} is {dims}, expected {wanted}"
    return None


def _onnxruntime_callable(path: str | Path, outputs: tuple[str, ...], options, providers: list[str],
                          side: int | None) -> Callable:
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise MtcnnError(f"MTCNN ONNX file {path} does not exist")
    try:
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise MtcnnError(f"onnxruntime cannot load {path}: {exc}") from exc
    inputs = [i.name for i in session.get_inputs()]
    names = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(names) != sorted(outputs):
        raise MtcnnError(
            f"{path} has inputs {inputs} and outputs {names}; expected input {INPUT_NAME!r} and outputs {list(outputs)}"
        )
    problem = _shape_problem(session.get_inputs(), session.get_outputs(), side)
    if problem:
        stage = {None: "P-Net", RNET_SIZE: "R-Net", ONET_SIZE: "O-Net"}[side]
        raise MtcnnError(f"{path} is not MTCNN's {stage}: its {problem}")

    def run(image: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run(list(outputs), {INPUT_NAME: image}))

    return run


def onnxruntime_mtcnn(
    pnet_path: str | Path,
    rnet_path: str | Path,
    onet_path: str | Path,
    providers: Sequence[str] | None = None,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    factor: float = DEFAULT_FACTOR,
    pnet_arena: bool = False,
) -> MtcnnDetector:
    """An ``MtcnnDetector`` over ONNX Runtime sessions of the graphs ``dfd.export.mtcnn`` writes
    (input ``image``; outputs ``regression``, ``probability`` and, for O-Net, ``landmarks``).

    ``pnet_arena``: whether P-Net's session keeps ONNX Runtime's CPU memory arena. Off by default:
    P-Net's input changes size with every pyramid level and band, and the arena keeps the largest
    it has seen, growing by doubling. A Detector that had run two 64 MP photographs kept +677 MiB
    with it and +370 MiB without. Without it MTCNN takes 3-9 % longer on a 12 MP photograph (2-3 %
    of ``detect``) and 16-18 % on a 64 MP one (benchmarks/huge_image_memory.py, two runs). R-Net
    and O-Net run fixed-size batches and always keep theirs."""
    options = onnxruntime_session_options()
    pnet_options = onnxruntime_session_options()
    pnet_options.enable_cpu_mem_arena = pnet_arena
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    return MtcnnDetector(
        _onnxruntime_callable(pnet_path, PNET_OUTPUTS, pnet_options, chosen, None),
        _onnxruntime_callable(rnet_path, RNET_OUTPUTS, options, chosen, RNET_SIZE),
        _onnxruntime_callable(onet_path, ONET_OUTPUTS, options, chosen, ONET_SIZE),
        thresholds=thresholds,
        factor=factor,
    )
