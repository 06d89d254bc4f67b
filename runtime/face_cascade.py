"""The reference's cascade of image enhancements, tried one by one when the plain face-detection
pass finds no face in a degraded image.

The reference (``preprocessing/preprocess.py``) retries RetinaFace on enhanced copies of an image
that yields no face: bilateral filter, median blurs, sharpen + CLAHE, non-local means, grey-level
equalisation, a gamma/upscale/unsharp "nuclear option" and a padded equalisation. Each step here
keeps the reference's order and parameters and runs on the BGR image as the reference does,
with two deliberate differences:

- The three GFPGAN restoration steps (the reference's 10, 11, 12) are skipped (no weights).
- A larger image is first shrunk to ``CASCADE_MAX_SIDE`` pixels (the reference filters at full
  resolution); :meth:`CascadeImage.to_original` maps boxes found there back.

The detector that looks at each enhanced copy, and the order in which the copies are tried, are
:class:`dfd.runtime.face_detection.FaceLocator`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import DfdError
from .images import check_rgb_image
from .preprocess import FACE_BOX_REACH

# The cascade's working resolution (long side, pixels): a larger image is shrunk to it (INTER_AREA)
# before the enhancement steps. The reference filters at full resolution for a RetinaFace that sees
# full resolution; the cascade's detector here sees a 192-pixel letterbox, where on a 12 MP photo a
# 9-pixel median or non-local means' 21-pixel window is under one input pixel, while the
# full-resolution cascade costs ~17 s there on 2 cores. benchmarks/face_detection.py
# ("cascade_resolution") compares 768, 1024, 1536 and full resolution step by step on 81 degraded
# face photographs enlarged to 2048-2400 px and 18 face-free ones: at 1024 the steps find the face
# in 688 of 729 runs (full resolution: 686), no resolution finds a false face, and the nine steps
# take 0.9 s instead of 3.7 s (median). Images of 1024 px and below are filtered as before.
CASCADE_MAX_SIDE = 1024


class FaceDetectionError(DfdError, ValueError):
    """Bad input to face localisation (not an RGB uint8 image, unknown strategy, bad outputs)."""


def fitted_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(width, height) of an image scaled, aspect ratio kept, so its long side is ``long_side``
    (Python round, at least 1 pixel): the letterbox's resize and the cascade's working copy."""
    scale = long_side / max(height, width)
    return min(long_side, max(1, round(width * scale))), min(long_side, max(1, round(height * scale)))


def check_rgb(rgb: object) -> None:
    """Refuse anything but an RGB uint8 image [H, W, 3] with a FaceDetectionError."""
    check_rgb_image(rgb, "face detection", FaceDetectionError)


@dataclass(frozen=True)
class Enhanced:
    """An enhanced image and how its pixel coordinates map back: ``original = (xy - offset) / scale``."""

    bgr: np.ndarray
    scale: float = 1.0
    offset: float = 0.0


def _clahe_on_lightness(bgr: np.ndarray, clip_limit: float) -> np.ndarray:
    lightness, a, b = cv2.split(cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB))
    lightness = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8)).apply(lightness)
    return cv2.cvtColor(cv2.merge((lightness, a, b)), cv2.COLOR_LAB2BGR)


class CascadeImage:
    """One image as the cascade's steps take it: in BGR, as the reference filters it, converted once
    for all steps, with the one intermediate two steps share. The reference runs non-local means,
    its slowest filter, with the same parameters for "nlmeans" and "nlmeans_clahe"; here it runs
    once per image, on the first of the two steps that needs it.

    ``max_side``: a larger image is first shrunk (``INTER_AREA``) to this long side, the working
    resolution of every step; :meth:`to_original` maps boxes found there back. See
    ``CASCADE_MAX_SIDE`` for why."""

    def __init__(self, rgb: np.ndarray, max_side: int | None = None) -> None:
        check_rgb(rgb)
        height, width = rgb.shape[:2]
        if max_side is not None and max(height, width) > max_side:
            rgb = cv2.resize(rgb, fitted_size(height, width, max_side), interpolation=cv2.INTER_AREA)
        self.bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        working_h, working_w = self.bgr.shape[:2]
        self._working_per_original = np.array([working_w / width, working_h / height] * 2)
        self._original_corner = np.array([width, height] * 2, dtype=np.float64)
        self._denoised: np.ndarray | None = None

    @property
    def denoised(self) -> np.ndarray:
        if self._denoised is None:
            self._denoised = cv2.fastNlMeansDenoisingColored(self.bgr, None, 15, 15, 7, 21)
        return self._denoised

    def to_original(self, boxes: np.ndarray, enhanced: Enhanced) -> np.ndarray:
        """Boxes ``[K, 4]`` found in ``enhanced`` (a step's output for this image) -> pixels of the
        image the cascade was given."""
        return (boxes - enhanced.offset) / enhanced.scale / self._working_per_original

    def extent(self, enhanced: Enhanced) -> tuple[np.ndarray, np.ndarray]:
        """Where a box found in ``enhanced`` may lie, as the lower and upper bound of ``[x1, y1, x2,
        y2]`` in pixels of the image the cascade was given: the image, and for the padded step its
        border too. RetinaFace clips a box to the image it is given, the padded one there, and the
        reference takes the padding off after, so a face cut by the image's edge (what the step is
        for) keeps the part of its box beyond it: its centre, its side and the 1/9 rule's area."""
        border = enhanced.offset / enhanced.scale / self._working_per_original
        return -border, self._original_corner + border


def _bilateral(image: CascadeImage) -> Enhanced:
    return Enhanced(cv2.bilateralFilter(image.bgr, 9, 75, 75))


def _median_heavy(image: CascadeImage) -> Enhanced:
    return Enhanced(cv2.medianBlur(image.bgr, 9))


def _sharpen_clahe(image: CascadeImage) -> Enhanced:
    kernel = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32)
    return Enhanced(_clahe_on_lightness(cv2.filter2D(image.bgr, -1, kernel), 3.0))


def _nlmeans(image: CascadeImage) -> Enhanced:
    return Enhanced(image.denoised)


def _median(image: CascadeImage) -> Enhanced:
    return Enhanced(cv2.medianBlur(image.bgr, 5))


def _nlmeans_clahe(image: CascadeImage) -> Enhanced:
    return Enhanced(_clahe_on_lightness(image.denoised, 2.5))


def _minmax_equalize(image: CascadeImage) -> Enhanced:
    stretched = cv2.normalize(image.bgr, None, alpha=0, beta=255, norm_type=cv2.NORM_MINMAX)
    equalised = cv2.equalizeHist(cv2.cvtColor(stretched, cv2.COLOR_BGR2GRAY))
    return Enhanced(cv2.cvtColor(equalised, cv2.COLOR_GRAY2BGR))


# The reference names this "brighten" with gamma 0.5 but raises to 1/0.5 = 2, which darkens
# mid-tones; kept as the reference computes it (truncating astype, as it does).
_GAMMA_LUT = (((np.arange(256) / 255.0) ** (1.0 / 0.5)) * 255).astype(np.uint8)


def _gamma_upscale_unsharp_clahe(image: CascadeImage) -> Enhanced:
    """The reference's "nuclear option": gamma LUT, 2x cubic upscale, unsharp mask, CLAHE 4.0.
    Detections are in the 2x image, hence ``scale=2``."""
    bright = cv2.LUT(image.bgr, _GAMMA_LUT)
    height, width = bright.shape[:2]
    upscaled = cv2.resize(bright, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
    unsharp = cv2.addWeighted(upscaled, 2.0, cv2.GaussianBlur(upscaled, (0, 0), 3.0), -1.0, 0)
    return Enhanced(_clahe_on_lightness(unsharp, 4.0), scale=2.0)


def _padded_equalize(image: CascadeImage) -> Enhanced:
    """Grey border of `FACE_BOX_REACH` (20%) of the long side, then grey-level equalisation;
    ``offset=pad``."""
    pad = int(max(image.bgr.shape[:2]) * FACE_BOX_REACH)
    padded = cv2.copyMakeBorder(image.bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=[128, 128, 128])
    equalised = cv2.equalizeHist(cv2.cvtColor(padded, cv2.COLOR_BGR2GRAY))
    return Enhanced(cv2.cvtColor(equalised, cv2.COLOR_GRAY2BGR), offset=float(pad))


# The reference's fallback order, GFPGAN steps (its 10, 11, 12) left out.
STRATEGIES: dict[str, Callable[[CascadeImage], Enhanced]] = {
    "bilateral": _bilateral,
    "median_heavy": _median_heavy,
    "sharpen_clahe": _sharpen_clahe,
    "nlmeans": _nlmeans,
    "median": _median,
    "nlmeans_clahe": _nlmeans_clahe,
    "minmax_equalize": _minmax_equalize,
    "gamma_upscale_unsharp_clahe": _gamma_upscale_unsharp_clahe,
    "padded_equalize": _padded_equalize,
}
ALL_STRATEGIES: tuple[str, ...] = tuple(STRATEGIES)


def enhance(image: np.ndarray | CascadeImage, strategy: str) -> Enhanced:
    """Apply one cascade step to an RGB image (in BGR, as the reference does); result is BGR.
    Pass a `CascadeImage` to run several steps on one image without repeating shared work."""
    if strategy not in STRATEGIES:
        raise FaceDetectionError(f"unknown face-detection strategy {strategy!r}; known: {', '.join(ALL_STRATEGIES)}")
    return STRATEGIES[strategy](image if isinstance(image, CascadeImage) else CascadeImage(image))
