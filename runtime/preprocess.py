"""Test-time preprocessing of the three streams, exactly as the reference computes it.

Every function takes the decoded uint8 RGB image (see `images.decode_image`) and reproduces one
rule of the reference (REFERENCE.md, the reference's `training/dataset/abstract_dataset.py`
`load_rgb` / `__getitem__` and `preprocessing/preprocess.py` `crop_face_with_margin`), with the
reference's own OpenCV calls so resampling is identical. Where the reference mishandles an input
(a *quirk*), the function applies a documented rule instead and returns a note saying so.
Pure NumPy/OpenCV: the runtime never imports torch.
"""

from __future__ import annotations

import numbers
import reprlib
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from .errors import DfdError
from .images import DEFAULT_MAX_PIXELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACE_CROP_SIZE = 256  # the reference resizes the face window to this before the 252 centre crop
FACE_CROP_MARGIN = 1.3  # the face window is a square of side max(w, h) * 1.3 around the box centre
# How far beyond each edge of an image a detected face box may reach, as a fraction of its long side:
# the face cascade's last step looks in a copy with a grey border this wide and keeps the part of a
# box on the border (as the reference does), so a face cut by the image's edge keeps its size.
FACE_BOX_REACH = 0.2
# The most pixels the small-image upscale may create: the decoder's own limit on any image the
# runtime holds. Only an image over ~1000:1 reaches it (1x1008 -> 252x254016), and without it a
# few-kilobyte 1x60000 PNG would make cv2.resize allocate 11 GB for a 252x252 crop.
MAX_UPSCALED_PIXELS = DEFAULT_MAX_PIXELS


class PreprocessError(DfdError, ValueError):
    """Input the preprocessing cannot use (wrong array type, unusable face box)."""


def preprocessing_record(sizes: Mapping[str, int]) -> dict[str, Any]:
    """The preprocessing this module applies, for the streams of ``sizes`` (name -> input size), as
    an engine set's manifest records it: the build writes it, and the runtime compares a set's
    record with it on open, since a record describing other rules (an edited crop margin) would
    be run with these while claiming otherwise. The normalisation is the one value the runtime
    takes from the record."""
    streams = {
        "global": {"op": "center_crop",
                   "smaller_than_size": "upscale (INTER_CUBIC) so the short side equals size, then center crop"},
        "face": {"op": "face_crop_then_center_crop", "crop_margin": FACE_CROP_MARGIN, "crop_size": FACE_CROP_SIZE,
                 "crop_interpolation": "INTER_AREA", "no_face": "original image", "min_face_area_fraction": "1/9"},
        "fusion": {"op": "resize", "interpolation": "INTER_AREA if height > size, INTER_CUBIC if height < size",
                   "height_equals_size": "resize to size x size (INTER_AREA if the width shrinks, else INTER_CUBIC)"},
    }
    return {"decoder": "opencv imread IMREAD_COLOR, BGR->RGB, uint8",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            **{name: {**rule, "size": sizes[name]} for name, rule in streams.items() if name in sizes}}


@dataclass(frozen=True)
class StreamInput:
    tensor: np.ndarray  # float32 [3,H,W] normalised
    notes: tuple[str, ...]


def _require_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        described = (f"shape {rgb.shape} dtype {rgb.dtype}" if isinstance(rgb, np.ndarray)
                     else type(rgb).__name__)
        raise PreprocessError(f"expected a non-empty uint8 HxWx3 RGB image, got {described}")


def normalise(rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 HxWx3 -> float32 [3,H,W], bit-exact with torchvision `Normalize(ToTensor(img))`.

    Reference rule: `ToTensor` divides the uint8 values by 255 in float32, `Normalize` subtracts
    the float32 mean and divides by the float32 std, per channel. Each step is one correctly
    rounded float32 operation, so the same operations in NumPy float32 give identical bits.
    """
    _require_rgb(rgb)
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
    scaled = rgb.astype(np.float32) / np.float32(255)
    normalised = (scaled - mean32) / std32
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def _upscaled_for_crop(height: int, width: int, size: int) -> tuple[int, int] | None:
    """(height, width) an image smaller than ``size`` on a side is upscaled to before its center
    crop (short side ``size``, aspect ratio kept, Python round), or None when it is large enough.

    Raises PreprocessError when that upscale would exceed MAX_UPSCALED_PIXELS. Both the host and
    the fused GPU path size the upscale here, so they refuse the same images."""
    if height >= size and width >= size:
        return None
    upscaled = (size, round(width * size / height)) if height <= width else (round(height * size / width), size)
    pixels = upscaled[0] * upscaled[1]
    if pixels > MAX_UPSCALED_PIXELS:
        raise PreprocessError(
            f"image {width}x{height} is too elongated to score: the {size}x{size} center crop "
            f"needs its short side upscaled to {size}, which would make it {upscaled[1]}x{upscaled[0]} "
            f"({pixels / 1e6:.0f} MP, over the {MAX_UPSCALED_PIXELS / 1e6:.0f} MP the runtime upscales an image "
            f"to, a fixed limit that the decoding limit, max_pixels or --max-pixels, does not change); the "
            f"reference cannot score it either")
    return upscaled


def unscorable_reason(height: int, width: int, stream_sizes: Mapping[str, int]) -> str | None:
    """Why the preprocessing of these streams (name -> input size) refuses an image of this size,
    or None. The crop streams (all but fusion, which resizes any shape) refuse one too elongated
    to upscale (``_upscaled_for_crop``). For tools that choose images before scoring them
    (calibration sets, ``bench``): they leave such an image out with this reason, as ``detect``
    fails it alone, instead of stopping when they reach it."""
    try:
        for stream, size in stream_sizes.items():
            if stream != "fusion":
                _upscaled_for_crop(height, width, size)
    except PreprocessError as error:
        return str(error)
    return None


def center_crop_notes(height: int, width: int, size: int = 252) -> tuple[str, ...]:
    """The note `center_crop` returns for an image of this size (the GPU path, which crops on the
    device, reports the same)."""
    upscaled = _upscaled_for_crop(height, width, size)
    if upscaled is None:
        return ()
    new_height, new_width = upscaled
    # width x height, as the decoder's notes and limits give an image's size
    return (f"image {width}x{height} is smaller than {size} on a side: upscaled to "
            f"{new_width}x{new_height} with bicubic interpolation (aspect ratio kept) before "
            f"the {size}x{size} center crop; the reference would have substituted another "
            f"image's prediction",)


def center_crop(rgb: np.ndarray, size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """The reference's zero-interpolation center crop: rows top..top+size, columns left..left+size.

    Reference rule: top = (h - size) // 2, left = (w - size) // 2, pure slicing (no resampling).
    Quirk rule: the reference raises for an image smaller than `size` on either side and its
    loader silently substitutes another image's prediction. Here such an image is first upscaled
    with cv2.INTER_CUBIC, keeping the aspect ratio, so its short side becomes `size` and its long
    side round(long * size / short) (Python round, half to even), then center cropped; the
    returned note says so. An image so elongated that the upscale would pass MAX_UPSCALED_PIXELS
    is refused with a PreprocessError.
    """
    _require_rgb(rgb)
    height, width = rgb.shape[:2]
    notes = center_crop_notes(height, width, size)
    upscaled = _upscaled_for_crop(height, width, size)
    if upscaled is not None:
        height, width = upscaled
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    top = (height - size) // 2
    left = (width - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size]), notes


def preprocess_global(rgb: np.ndarray, size: int = 252, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> StreamInput:
    """Global stream: the `size` center crop of the original image (see `center_crop`), normalised."""
    cropped, notes = center_crop(rgb, size)
    return StreamInput(normalise(cropped, mean, std), notes)


def resize_fusion_notes(height: int, width: int, size: int = 224) -> tuple[str, ...]:
    """The note `resize_fusion` returns for an image of this size (the reference's quirk of an
    image exactly `size` high and not `size` wide)."""
    if height != size or width == size:
        return ()
    shrinks = width > size
    return (f"image is exactly {size} high but {width} wide: resized to {size}x{size} with "
            f"{'area' if shrinks else 'bicubic'} interpolation (the reference would not resize it "
            f"and its batch would fail)",)


def resize_fusion(rgb: np.ndarray, size: int = 224) -> tuple[np.ndarray, tuple[str, ...]]:
    """The fusion stream's resize to size x size (aspect ratio not kept), as the reference does it.

    Reference rule: `cv2.resize(img, (size, size))` with INTER_AREA when the height is greater
    than `size`, INTER_CUBIC when it is smaller; the width plays no part in the choice.
    Quirk rule: the reference leaves an image exactly `size` high untouched, which breaks its
    batch when the width differs. Here it is resized to size x size with INTER_AREA if the width
    shrinks, INTER_CUBIC if it grows, with a note; a size x size image is returned unchanged.
    """
    _require_rgb(rgb)
    height, width = rgb.shape[:2]
    if height > size:
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA), ()
    if height < size:
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC), ()
    if width == size:
        return rgb, ()
    interpolation = cv2.INTER_AREA if width > size else cv2.INTER_CUBIC
    return (cv2.resize(rgb, (size, size), interpolation=interpolation),
            resize_fusion_notes(height, width, size))


def preprocess_fusion(rgb: np.ndarray, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> StreamInput:
    """Fusion stream: the original image resized to size x size (see `resize_fusion`), normalised."""
    resized, notes = resize_fusion(rgb, size)
    return StreamInput(normalise(resized, mean, std), notes)


def box_corners(box: Sequence[float]) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of a face box as floats; PreprocessError unless four finite, ordered corners."""
    if isinstance(box, (str, bytes)) or not isinstance(box, (Sequence, np.ndarray)):
        raise PreprocessError(f"a face box is a sequence (x1, y1, x2, y2) of numbers; got {reprlib.repr(box)}")
    if len(box) != 4:
        raise PreprocessError(f"a face box is (x1, y1, x2, y2); got {len(box)} values")
    if not all(isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) for value in box):
        raise PreprocessError(f"face box coordinates must be numbers; got {reprlib.repr(tuple(box))}")
    try:
        x1, y1, x2, y2 = (float(value) for value in box)
    except OverflowError:
        raise PreprocessError(f"face box coordinates are too large to be pixels: {reprlib.repr(tuple(box))}") from None
    shown = f"({x1:g}, {y1:g}, {x2:g}, {y2:g})"  # numpy's scalars print as np.float64(...)
    if not all(np.isfinite((x1, y1, x2, y2))):
        raise PreprocessError(f"face box has non-finite coordinates: {shown}")
    if x2 < x1 or y2 < y1:
        raise PreprocessError(f"face box {shown} has x2 < x1 or y2 < y1")
    return x1, y1, x2, y2


def face_window(box: Sequence[float], margin: float = FACE_CROP_MARGIN,
                image_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the reference's square face window (see `crop_face`);
    PreprocessError when the window has no area, or, given the image's (height, width), when it
    is over `DEFAULT_MAX_PIXELS` and wider than any box a detector can find for the image makes it
    (one reaching `FACE_BOX_REACH` beyond each edge): a box far larger than its image (a coordinate
    mistake) would otherwise allocate gigabytes of padding."""
    x1, y1, x2, y2 = box_corners(box)
    box_w = x2 - x1
    box_h = y2 - y1
    cx = x1 + box_w / 2
    cy = y1 + box_h / 2
    side = max(box_w, box_h) * margin
    if not all(np.isfinite((cx, cy, side))):  # finite corners whose width or centre overflow
        raise PreprocessError(f"face box {reprlib.repr(tuple(box))} is too large to be pixels: its "
                              f"{margin} margin window is not a finite size")
    left, top = int(cx - side / 2), int(cy - side / 2)
    right, bottom = int(cx + side / 2), int(cy + side / 2)
    if right <= left or bottom <= top:
        raise PreprocessError(f"face box {tuple(box)} is too small to crop: the {margin} margin "
                              f"window is {right - left}x{bottom - top} pixels")
    if image_hw is not None:
        img_h, img_w = image_hw
        width, height = right - left, bottom - top
        widest = margin * (1 + 2 * FACE_BOX_REACH) * max(img_w, img_h) + 2
        if width * height > DEFAULT_MAX_PIXELS and max(width, height) > widest:
            shown = [str(n) if n < 10**9 else f"{float(n):.3g}" for n in (width, height)]
            raise PreprocessError(
                f"face box {tuple(box)} makes a {shown[0]}x{shown[1]} crop window, mostly black padding, "
                f"for a {img_w}x{img_h} image (boxes are x1, y1, x2, y2 in pixels of the image)")
    return left, top, right, bottom


def crop_face(rgb: np.ndarray, box: Sequence[float], *, margin: float = FACE_CROP_MARGIN,
              out_size: int = FACE_CROP_SIZE) -> np.ndarray:
    """The reference's face crop (`crop_face_with_margin`): square around the box, black padding.

    Reference rule, in this exact float64 arithmetic: w = x2 - x1, h = y2 - y1,
    cx = x1 + w / 2, cy = y1 + h / 2, side = max(w, h) * margin; the window is
    [int(cx - side / 2), int(cx + side / 2)) horizontally and likewise vertically, with int()
    truncating toward zero (so the window can be one pixel off square). Pixels of the window
    outside the image are black (the reference pads with cv2.copyMakeBorder BORDER_CONSTANT 0 and
    slices the padded image; filling a black canvas with the overlapping part gives the same
    pixels without allocating the padded image). The window is resized to out_size x out_size
    with cv2.INTER_AREA. The reference crops the original decoded image, not the enhanced copy
    its detector may have seen.
    """
    _require_rgb(rgb)
    img_h, img_w = rgb.shape[:2]
    left, top, right, bottom = face_window(box, margin, (img_h, img_w))
    window = np.zeros((bottom - top, right - left, 3), dtype=np.uint8)
    src_top, src_bottom = max(top, 0), min(bottom, img_h)
    src_left, src_right = max(left, 0), min(right, img_w)
    if src_bottom > src_top and src_right > src_left:
        window[src_top - top:src_bottom - top, src_left - left:src_right - left] = \
            rgb[src_top:src_bottom, src_left:src_right]
    return cv2.resize(window, (out_size, out_size), interpolation=cv2.INTER_AREA)


def face_is_too_small(box: Sequence[float], image_hw: tuple[int, int]) -> bool:
    """The reference's 1/9-area rule: True when the face box covers under 1/9 of the image.

    Reference rule: (x2 - x1) * (y2 - y1) < (img_w * img_h) / 9.0, strictly less; a face exactly
    1/9 of the image is cropped. When True the reference feeds the original image to the face
    stream instead of the crop.
    """
    x1, y1, x2, y2 = box_corners(box)
    img_h, img_w = image_hw
    return (x2 - x1) * (y2 - y1) < (img_w * img_h) / 9.0


def preprocess_face(face_rgb: np.ndarray, size: int = 252, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> StreamInput:
    """Face stream: the `size` center crop (see `center_crop`) of the face image, normalised.

    The face image is the 256x256 `crop_face` result, a user's pre-cropped face file, or the
    original image when no usable face was found, as in the reference's cropped data set.
    """
    cropped, notes = center_crop(face_rgb, size)
    return StreamInput(normalise(cropped, mean, std), notes)


# The suffixes the reference's face-cropping step accepts (preprocess.py: .jpg, .jpeg, .png) whose
# cv2.imwrite is lossy: JPEG at OpenCV's default quality 95.
FACE_REENCODE_SUFFIXES = frozenset({".jpg", ".jpeg"})
FACE_REENCODE_NOTE = ("face stream: face image re-encoded as {suffix} at OpenCV's default quality, as the "
                      "reference's crop files are")


def reencode_like_reference_face_file(face_rgb: np.ndarray, suffix: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The face image as the reference's face stream would read it back from disk.

    The reference's face-cropping step takes .jpg, .jpeg and .png files and saves every face input
    (the crop, or the original image when no usable face is found) with ``cv2.imwrite`` under the
    input's file name; the face stream then decodes that file. For a JPEG the face stream
    therefore sees a quality-95 re-encode, not the raw crop, and this reproduces it. The
    reference's published scoring lists PNG files only (its test JSON builder), where the
    round trip changes nothing, so the JPEG rule follows its cropping step rather than a run it
    published. Formats the cropping step does not take (WebP, JPEG 2000, ...) have no reference
    behaviour: their face stream gets the crop itself.
    """
    suffix = suffix.lower()
    if suffix not in FACE_REENCODE_SUFFIXES:
        return face_rgb, ()
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(face_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PreprocessError(f"OpenCV cannot encode the face image as {suffix}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), (FACE_REENCODE_NOTE.format(suffix=suffix),)
