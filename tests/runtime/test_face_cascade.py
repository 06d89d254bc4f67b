"""The enhancement cascade against the reference's own OpenCV calls, step by step, and the
geometry that maps boxes found in an enhanced copy back to the photograph."""

import cv2
import numpy as np
import pytest
import skimage.data

from dfd.runtime.errors import DfdError
from dfd.runtime.face_cascade import (
    ALL_STRATEGIES,
    CASCADE_MAX_SIDE,
    CascadeImage,
    Enhanced,
    FaceDetectionError,
    enhance,
    fitted_size,
)
from dfd.runtime.preprocess import FACE_BOX_REACH, face_window


def _clahe_lab(bgr: np.ndarray, clip_limit: float) -> np.ndarray:
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lightness, a, b = cv2.split(lab)
    lightness = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8)).apply(lightness)
    return cv2.cvtColor(cv2.merge((lightness, a, b)), cv2.COLOR_LAB2BGR)


def _gray_equalised(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)), cv2.COLOR_GRAY2BGR)


def _nuclear(img: np.ndarray) -> np.ndarray:
    table = np.array([((i / 255.0) ** (1.0 / 0.5)) * 255 for i in np.arange(0, 256)]).astype("uint8")
    bright = cv2.LUT(img, table)
    height, width = bright.shape[:2]
    upscaled = cv2.resize(bright, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
    unsharp = cv2.addWeighted(upscaled, 2.0, cv2.GaussianBlur(upscaled, (0, 0), 3.0), -1.0, 0)
    return _clahe_lab(unsharp, 4.0)


def _padded(img: np.ndarray) -> np.ndarray:
    pad = int(max(img.shape[:2]) * 0.2)
    return _gray_equalised(cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=[128, 128, 128]))


# Each step as the reference's detect_faces_with_fallbacks writes it, on the BGR image cv2.imread
# gives (its integer sharpening kernel included), in the reference's order without the GFPGAN steps.
REFERENCE_STEPS = {
    "bilateral": lambda img: cv2.bilateralFilter(img, 9, 75, 75),
    "median_heavy": lambda img: cv2.medianBlur(img, 9),
    "sharpen_clahe": lambda img: _clahe_lab(cv2.filter2D(img, -1, np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])), 3.0),
    "nlmeans": lambda img: cv2.fastNlMeansDenoisingColored(img, None, 15, 15, 7, 21),
    "median": lambda img: cv2.medianBlur(img, 5),
    "nlmeans_clahe": lambda img: _clahe_lab(cv2.fastNlMeansDenoisingColored(img, None, 15, 15, 7, 21), 2.5),
    "minmax_equalize": lambda img: _gray_equalised(cv2.normalize(img, None, alpha=0, beta=255, norm_type=cv2.NORM_MINMAX)),
    "gamma_upscale_unsharp_clahe": _nuclear,
    "padded_equalize": _padded,
}


@pytest.fixture(scope="module")
def photograph() -> np.ndarray:
    """An RGB photograph of odd size (both parities of every filter's border), low-contrast so that
    the min-max stretch changes it."""
    rgb = cv2.resize(skimage.data.astronaut(), (171, 133), interpolation=cv2.INTER_AREA)
    return (rgb // 2 + 40).astype(np.uint8)


def test_the_steps_are_the_references_in_its_order() -> None:
    assert ALL_STRATEGIES == tuple(REFERENCE_STEPS)


@pytest.mark.parametrize("strategy", list(REFERENCE_STEPS))
def test_each_step_equals_the_references_opencv_calls(photograph, strategy) -> None:
    """Bit-exact on the BGR image, at full resolution (no working-resolution shrink below 1024 px)."""
    bgr = cv2.cvtColor(photograph, cv2.COLOR_RGB2BGR)
    expected = REFERENCE_STEPS[strategy](bgr)
    image = CascadeImage(photograph, max_side=1024)
    got = enhance(image, strategy)
    assert got.bgr.dtype == np.uint8 and got.bgr.shape == expected.shape
    np.testing.assert_array_equal(got.bgr, expected)
    np.testing.assert_array_equal(enhance(photograph, strategy).bgr, expected)


def test_each_steps_own_geometry_maps_its_corners_back(photograph) -> None:
    """The 2x step scales and the padded step offsets: the enhanced copy's image corners come back
    as the photograph's."""
    height, width = photograph.shape[:2]
    image = CascadeImage(photograph)
    pad = int(max(height, width) * 0.2)
    corners = {"gamma_upscale_unsharp_clahe": [0.0, 0.0, 2.0 * width, 2.0 * height],
               "padded_equalize": [pad, pad, pad + width, pad + height], "median": [0.0, 0.0, width, height]}
    for strategy, box in corners.items():
        back = image.to_original(np.array([box], dtype=float), enhance(image, strategy))
        np.testing.assert_allclose(back, [[0.0, 0.0, width, height]])



def test_only_the_2x_and_padded_steps_change_the_geometry(photograph) -> None:
    """Every other step returns a copy of the working image's size at scale 1 and offset 0, so its
    boxes map back unchanged; the 2x step doubles both sides, the padded one adds 34 = int(0.2 *
    171) on each."""
    image = CascadeImage(photograph)
    changed = {"gamma_upscale_unsharp_clahe": (2.0, 0.0, (266, 342, 3)), "padded_equalize": (1.0, 34.0, (201, 239, 3))}
    for strategy in ALL_STRATEGIES:
        got = enhance(image, strategy)
        assert (got.scale, got.offset, got.bgr.shape) == changed.get(strategy, (1.0, 0.0, (133, 171, 3))), strategy

def test_working_resolution_geometry_is_exact_per_axis() -> None:
    """2001x1333 shrinks to 1024x682: the two axes scale by different factors, and the whole
    working image, or a step's 2x enlargement of it, or its padded copy, maps back to the whole
    photograph."""
    image = CascadeImage(np.zeros((1333, 2001, 3), np.uint8), max_side=1024)
    assert image.bgr.shape == (682, 1024, 3)
    whole = np.array([[0.0, 0.0, 2001.0, 1333.0]])
    np.testing.assert_allclose(image.to_original(np.array([[0.0, 0.0, 1024.0, 682.0]]), Enhanced(image.bgr)), whole)
    doubled = Enhanced(image.bgr, scale=2.0)
    np.testing.assert_allclose(image.to_original(np.array([[0.0, 0.0, 2048.0, 1364.0]]), doubled), whole)
    padded = Enhanced(image.bgr, offset=204.0)
    np.testing.assert_allclose(image.to_original(np.array([[204.0, 204.0, 1228.0, 886.0]]), padded), whole)
    small = CascadeImage(np.zeros((300, 500, 3), np.uint8), max_side=1024)
    assert small.bgr.shape == (300, 500, 3)
    assert CascadeImage(np.zeros((1333, 2001, 3), np.uint8)).bgr.shape == (1333, 2001, 3)



def test_a_larger_image_is_shrunk_with_inter_area_and_each_step_runs_on_that(photograph) -> None:
    """A strip 40x171 with a working long side of 100: its long side (not its short one) is over
    the limit, and the working copy is OpenCV's INTER_AREA shrink to 100x23, then in BGR."""
    strip = np.ascontiguousarray(photograph[:40])
    image = CascadeImage(strip, max_side=100)
    working = cv2.cvtColor(cv2.resize(strip, (100, 23), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(image.bgr, working)
    np.testing.assert_array_equal(enhance(image, "median").bgr, cv2.medianBlur(working, 5))
    # the working resolution benchmarked (see CASCADE_MAX_SIDE's comment): a 12 MP photograph at 1024
    assert CascadeImage(np.zeros((3000, 4000, 3), np.uint8), max_side=CASCADE_MAX_SIDE).bgr.shape == (768, 1024, 3)


def test_the_extent_is_the_photograph_and_the_steps_border_in_its_pixels() -> None:
    """2001x1333 works at 1024x682, where the padded step's border is int(0.2 * 1024) = 204
    pixels: 204 * 2001 / 1024 photograph pixels across, 204 * 1333 / 682 down. Every bound of
    [x1, y1, x2, y2] is the whole photograph and that border (x1 may lie as far right as x2)."""
    image = CascadeImage(np.zeros((1333, 2001, 3), np.uint8), max_side=1024)
    padded = enhance(image, "padded_equalize")
    assert padded.offset == 204.0
    across, down = 204 * 2001 / 1024, 204 * 1333 / 682
    lower, upper = image.extent(padded)
    np.testing.assert_allclose(lower, [-across, -down, -across, -down])
    np.testing.assert_allclose(upper, [2001 + across, 1333 + down, 2001 + across, 1333 + down])
    lower, upper = image.extent(enhance(image, "gamma_upscale_unsharp_clahe"))  # 2x, no border
    np.testing.assert_allclose(lower, [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(upper, [2001.0, 1333.0, 2001.0, 1333.0])
    lower, upper = image.extent(Enhanced(image.bgr, scale=2.0, offset=204.0))  # a border in a 2x copy: half
    np.testing.assert_allclose(lower, [-across / 2, -down / 2, -across / 2, -down / 2])
    np.testing.assert_allclose(upper, [2001 + across / 2, 1333 + down / 2, 2001 + across / 2, 1333 + down / 2])


def test_non_local_means_runs_once_per_image_for_both_steps_that_need_it(photograph, monkeypatch) -> None:
    """The cascade's slowest filter: "nlmeans" and "nlmeans_clahe" share one run on a
    `CascadeImage`; a plain array is a new image each time."""
    expected = REFERENCE_STEPS["nlmeans"](cv2.cvtColor(photograph, cv2.COLOR_RGB2BGR))
    calls = []
    denoise = cv2.fastNlMeansDenoisingColored

    def counted(*args):
        calls.append(args[0].shape)
        return denoise(*args)

    monkeypatch.setattr(cv2, "fastNlMeansDenoisingColored", counted)
    image = CascadeImage(photograph)
    first = enhance(image, "nlmeans")
    enhance(image, "nlmeans_clahe")
    enhance(image, "nlmeans")
    assert calls == [(133, 171, 3)]
    np.testing.assert_array_equal(first.bgr, expected)
    enhance(photograph, "nlmeans")
    enhance(photograph, "nlmeans")
    assert len(calls) == 3

@pytest.mark.parametrize(("height", "width", "long_side", "expected"), [
    (1333, 2001, 1024, (1024, 682)),   # 682.17 rounds down
    (1334, 2001, 1024, (1024, 683)),   # 682.68 rounds up, not down as int() would
    (2001, 1333, 1024, (682, 1024)),
    (100, 300, 192, (192, 64)),
    (1, 5000, 192, (192, 1)),          # never below one pixel
    (5000, 1, 192, (1, 192)),          # in width either
    (480, 480, 192, (192, 192)),
])
def test_fitted_size_keeps_the_aspect_ratio_with_the_long_side_given(height, width, long_side, expected) -> None:
    assert fitted_size(height, width, long_side) == expected


def test_bad_input_is_a_clear_error(photograph) -> None:
    with pytest.raises(FaceDetectionError, match="unknown face-detection strategy 'gfpgan'"):
        enhance(photograph, "gfpgan")
    with pytest.raises(FaceDetectionError, match="RGB uint8"):
        CascadeImage(photograph[..., 0])
    with pytest.raises(FaceDetectionError, match="RGB uint8"):
        enhance(photograph.astype(np.float32), "median")



@pytest.mark.parametrize("caught", [DfdError, ValueError])
def test_bad_input_is_caught_as_a_dfd_error_and_as_a_value_error(photograph, caught) -> None:
    """What a caller may catch: the project's error, or Python's for a bad argument."""
    with pytest.raises(caught, match="unknown face-detection strategy"):
        enhance(photograph, "gfpgan")

@pytest.mark.parametrize("height, width", [(4800, 6400), (6400, 4401), (4401, 4399), (7, 6400), (6400, 3),
                                           (4500, 4500), (3001, 6001)])
def test_the_largest_box_the_padded_step_can_find_crops(height: int, width: int) -> None:
    """`face_window` refuses a window wider than any box a detector can find for the image makes: a
    box over the whole of the padded step's extent, at the working resolution and at full, with
    rounded working sizes and extreme aspect ratios, still crops. It had refused an extreme
    close-up of a 6400x4800 photograph whose box reached 100 pixels past each side."""
    for max_side in (CASCADE_MAX_SIDE, None):
        image = CascadeImage(np.zeros((height, width, 3), np.uint8), max_side=max_side)
        pad = int(max(image.bgr.shape[:2]) * FACE_BOX_REACH)
        lower, upper = image.extent(Enhanced(image.bgr, offset=float(pad)))
        box = [float(lower[0]), float(lower[1]), float(upper[2]), float(upper[3])]
        left, top, right, bottom = face_window(box, image_hw=(height, width))
        assert max(right - left, bottom - top) > 1.3 * max(height, width), (box, max_side)
