"""The compound degradation engine of the paper, reimplemented with NumPy and OpenCV only.

Why it exists: the detector was trained on images pushed through an extreme, randomly composed
chain of capture/transmission degradations (the reference's ``NoiseAugmentWrapper``), and the
deployment must keep the robustness this bought. INT8 calibration sets therefore contain degraded
images, and ``verify`` / the benchmarks compare precisions on degraded versions of photographs.

Faithfulness to the reference training code (``training/dataset/noise_augment_wrapper.py`` and
``training/config/detector/dinov2_252.yaml``):

* Strengths are drawn per op from Beta(a=1.2, b=1.2) (the config's ``use_beta``). With
  ``use_beta`` the reference ignores ``degradations_strength: 0.8``; ``max_strength`` (a multiplier
  of the Beta draw) is therefore 1.0 in :data:`PAPER_SPEC`.
* Each op fires with ``op_p = 0.3``, in a random order, after an optional "recompression prelude"
  (1–5 alternating JPEG / rescale cycles, itself taken with probability ``op_p``).
* ``global_p = 0.5`` (the share of images that enter the pipeline at all) is not part of one
  image's degradation: it is the default share of degraded images of a calibration set
  (``build --calib-degrade 0.5``).
* The reference's shared slots are split into independent ops with the same overall rates:
  grayscale (0.3 x 0.2) / colour cast (0.3 x 0.8); speckle (0.3 x 0.33), Poisson (0.3 x 0.33) and
  salt-and-pepper (0.3 x 0.34) noise. Ops split from one slot may both fire on an image, which
  the reference's slot excludes (for grayscale and colour cast about 1.4 % of images). Banding fires
  with 0.15: the reference skips it with probability equal to its strength (E = 0.5 under
  Beta(1.2, 1.2)), which this engine turns into that lower firing rate and strengths from
  Beta(1.2, 2.2), the strengths the reference's skip lets through (:data:`STRENGTH_SKIPPED_OPS`),
  so that an op recorded as applied did something. The text/patch "distractor" overlay (an
  occlusion augmentation, not a capture degradation) is not reproduced.
* JPEG quality is tied to the strength (95 at 0, 10 at 1) instead of uniform in [10, 95], so that a
  named op with a given strength is a well-defined degradation; the Beta draw keeps the mean
  quality of the reference. The prelude keeps the reference's uniform quality.
* A rescale leaves the image at its new size until the end, where one resize (linear, cubic or
  area) restores the input size, as in the reference: the ops after a rescale work at its scale.
  Upscales are capped so that the working image never exceeds 4x the input's pixels (nor 64 MP,
  unless the input is larger): the reference's scales multiply across the prelude and the rescale
  op (up to 2^6 per side), which its 252-pixel crops could afford and a whole photograph cannot
  (a 12 MP photograph would need hundreds of GB). About 1.7 % of images reach the cap; their
  draws are unchanged, only the upscale factor is clipped.
* The smoothing slot keeps the reference's three kernels (anisotropic Gaussian, isotropic
  Gaussian, box) and its kernel sizes; motion blur draws its line as the reference does.
* The reference degraded 252-pixel training crops; calibration sets degrade whole photographs, so
  the ops that scale with the image (vignetting, the number of glitch lines per image) act on the
  whole photograph rather than on its centre crop. A deployed detector receives whole degraded
  photographs, and that is what calibration must represent.

Images travel between ops as float32 RGB in [0, 1] (as in the reference) and are quantised to
uint8 once at the end. All randomness comes from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from dfd.runtime.errors import DfdError
from dfd.runtime.images import DEFAULT_MAX_PIXELS, array_sha256

FloatImage = np.ndarray
OpFunction = Callable[[FloatImage, float, np.random.Generator], FloatImage]

_BORDER = cv2.BORDER_REFLECT_101  # scipy.ndimage mode="mirror", what the reference convolves with


class DegradationError(DfdError, ValueError):
    """Bad input to the degradation engine (image, op name, spec or file arguments)."""


@dataclass(frozen=True)
class AppliedOp:
    """One op that fired while degrading an image, with the strength it was given."""

    name: str
    strength: float


# --------------------------------------------------------------------------------------------
# float helpers
# --------------------------------------------------------------------------------------------


def _to_float(rgb: np.ndarray) -> FloatImage:
    return rgb.astype(np.float32) / np.float32(255.0)


def _to_uint8(img: FloatImage) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _truncated_bytes(img: FloatImage) -> np.ndarray:
    """The reference's ``(img * 255).astype(np.uint8)`` hand-off to OpenCV's colour conversions
    and to PIL, which truncates (its JPEG step rounds, as ``_to_uint8``). The two agree on values
    that are whole grey levels, and differ by one level between them (after noise or a blur)."""
    return (np.clip(img, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray):
        raise DegradationError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DegradationError(
            f"expected a uint8 RGB image of shape (H, W, 3), got dtype {rgb.dtype} "
            f"and shape {rgb.shape}"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise DegradationError(f"image has no pixels (shape {rgb.shape})")


def _filter(img: FloatImage, kernel: np.ndarray, anchor: tuple[int, int] = (-1, -1)) -> FloatImage:
    return cv2.filter2D(img, -1, kernel.astype(np.float32), anchor=anchor, borderType=_BORDER)


def _jpeg_roundtrip(img: FloatImage, quality: int) -> FloatImage:
    bgr = cv2.cvtColor(_to_uint8(img), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise DegradationError(f"OpenCV could not JPEG-encode an image of shape {img.shape}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return _to_float(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def _jpeg_quality(strength: float) -> int:
    return int(np.clip(round(95.0 - 85.0 * strength), 10, 95))


# --------------------------------------------------------------------------------------------
# the ops: float32 RGB in [0, 1], strength in [0, 1], rng -> float32 RGB (of the same size, but
# for resize, which the compound pipeline and apply_op restore at the end, as the reference)
# --------------------------------------------------------------------------------------------


def _jpeg(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """JPEG re-encoding (OpenCV, 4:2:0), quality 95 at strength 0 down to 10 at strength 1."""
    return _jpeg_roundtrip(img, _jpeg_quality(strength))


def _gaussian_blur(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """The reference's smoothing slot (add_smoothing2), a third each, with spread w = 30 s:

    * anisotropic Gaussian: per-axis variances U(0, w), random orientation, on a square of side
      2 int(largest variance) + 1 (so a variance under 1 gives no blur, and small ones are cut);
    * isotropic Gaussian: sigma U(0, w) (a standard deviation here) on a square of side 7..25,
      taps below 1e-8 of the peak zeroed;
    * box: side U{3..max(3, int(w))}; an even side shifts the image by half a pixel.

    Convolved with the mirror border (scipy's ``mode="mirror"``, OpenCV's REFLECT_101)."""
    spread = 30.0 * strength
    draw = rng.random()
    if draw < 1.0 / 3.0:
        variances = spread * rng.random(2)
        side = int(variances.max()) * 2 + 1
        theta = rng.random() * math.pi
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        precision = rotation @ np.diag(1.0 / np.maximum(variances, 1e-12)) @ rotation.T
        half = side // 2
        grid = np.arange(-half, half + 1, dtype=np.float64)
        points = np.stack(np.meshgrid(grid, grid), axis=-1)  # (x, y) offsets from the centre
        kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", points, precision, points))
        return _filter(img, kernel / kernel.sum())
    if draw < 2.0 / 3.0:
        side = 2 * int(rng.integers(2, 12)) + 3
        sigma = max(spread * rng.random(), 1e-12)
        grid = np.arange(side, dtype=np.float64) - (side - 1) / 2.0
        kernel = np.exp(-(grid[None, :] ** 2 + grid[:, None] ** 2) / (2.0 * sigma * sigma))
        kernel[kernel < 1e-8 * kernel.max()] = 0.0
        return _filter(img, kernel / kernel.sum())
    side = int(rng.integers(3, max(3, int(spread)) + 1))
    # scipy's convolution centres an even box one pixel up-left of OpenCV's default anchor
    return _filter(img, np.full((side, side), 1.0 / side ** 2), anchor=((side - 1) // 2, (side - 1) // 2))


def _motion_blur(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Linear motion blur on a square of side int(max(3, 12 s)) (odd), at an angle U(0, 180)
    degrees, drawn as the reference does: one tap per column x at row int(tan(angle) (x - c) + c),
    truncated towards zero, kept when inside the square. So a steep angle leaves fewer taps (near
    vertical: the centre one only, no blur), as in the reference."""
    side = int(max(3.0, 15.0 * strength * 0.8))
    side += 1 - side % 2
    angle = rng.uniform(0.0, 180.0)
    center = side // 2
    columns = np.arange(side)
    rows = np.trunc(math.tan(math.radians(angle)) * (columns - center) + center)
    inside = (rows >= 0) & (rows < side)
    kernel = np.zeros((side, side), dtype=np.float64)
    kernel[rows[inside].astype(np.int64), columns[inside]] = 1.0
    return np.clip(_filter(img, kernel / kernel.sum()), 0.0, 1.0)


def _gaussian_noise(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Additive Gaussian noise, sigma = U{60..100} x s (20 %: U{2..100} x s) on the 0-255 scale.

    70 % independent per channel (colour noise), 20 % one value for all channels (luma noise),
    10 % channel-correlated noise with the reference's random covariance
    |L^2 orth(U)^T diag(u) orth(U')| for L = 100 s / 255 (``_correlated_noise``).
    """
    low = 2 if rng.random() < 0.2 else 60
    sigma = float(rng.integers(low, 101)) * strength / 255.0
    kind = rng.random()
    branch = "colour" if kind < 0.7 else "luma" if kind < 0.9 else "correlated"
    noise = _channel_noise(branch, sigma, 100.0 * strength / 255.0, img.shape[:2], rng)
    return np.clip(img + noise.astype(np.float32), 0.0, 1.0)


def _channel_noise(branch: str, sigma: float, level: float, shape: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise of one of the reference's three noise branches, which its Gaussian and
    speckle noise share: "colour" (independent per channel) and "luma" (one value for all
    channels) of deviation ``sigma``, or "correlated" (``_correlated_noise`` at ``level``)."""
    if branch == "correlated":
        return _correlated_noise(level, shape, rng)
    return rng.normal(0.0, sigma, size=(*shape, 3 if branch == "colour" else 1))


def _orthonormal_basis(matrix: np.ndarray) -> np.ndarray:
    """scipy.linalg.orth: the left singular vectors spanning the range of ``matrix``."""
    left, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    rank = int((singular > max(matrix.shape) * np.finfo(float).eps * singular.max()).sum())
    return left[:, :rank]


def _correlated_noise(level: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The reference's third noise branch. Its "covariance" |L^2 A^T D B| (A, B orthonormal bases
    of two random matrices) is neither symmetric nor always positive semi-definite; NumPy's
    multivariate normal factors it by SVD all the same (noise = z sqrt(S) V^T), and so does this,
    without NumPy's warning."""
    first = _orthonormal_basis(rng.random((3, 3)))
    scales = np.diag(rng.random(3))
    second = _orthonormal_basis(rng.random((3, 3)))
    covariance = np.abs(level ** 2 * (first.T @ scales @ second))
    _, singular, right = np.linalg.svd(covariance)
    return rng.standard_normal((*shape, 3)) @ (np.sqrt(singular)[:, None] * right)


def _speckle_noise(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Multiplicative noise img x (1 + n), sigma(n) = U{2..25} x s on the 0-255 scale: 40 % per
    channel, 40 % one value for all channels, 20 % channel-correlated as in ``_gaussian_noise``
    (L = 25 s / 255), as the reference's add_speckle_noise with its defaults."""
    sigma = float(rng.integers(2, 26)) * strength / 255.0
    kind = rng.random()
    branch = "colour" if kind > 0.6 else "luma" if kind < 0.4 else "correlated"
    noise = _channel_noise(branch, sigma, 25.0 * strength / 255.0, img.shape[:2], rng)
    return np.clip(img + img * noise.astype(np.float32), 0.0, 1.0)


def _poisson_noise(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Shot noise at 10^U(2, 4) photons per unit intensity on the image rounded to grey levels:
    half the time per channel, half the time on the luma only (the same offset added to every
    channel). Strength-independent, as the reference's add_Poisson_noise."""
    quantised = np.clip(np.round(img.astype(np.float64) * 255.0), 0, 255) / 255.0
    photons = 10.0 ** (2.0 * rng.random() + 2.0)
    if rng.random() < 0.5:
        noisy = rng.poisson(quantised * photons).astype(np.float32) / np.float32(photons)
    else:
        luma = np.clip(np.round((quantised @ np.array([0.299, 0.587, 0.114])) * 255.0), 0, 255) / 255.0
        shot = rng.poisson(luma * photons).astype(np.float32) / np.float32(photons) - luma
        noisy = quantised + shot[..., None]
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def _salt_and_pepper(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Impulse noise: a share 0.1 s of the pixels set to black or white (half each)."""
    share = 0.1 * strength
    draw = rng.random(img.shape[:2])
    out = img.copy()
    out[draw < share / 2.0] = 0.0
    out[draw > 1.0 - share / 2.0] = 1.0
    return out


def _colour_cast(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """30 %: fade (PIL's ImageEnhance.Color x U(0.1, max(0.2, 1 - s)) on the truncated uint8
    image, as the reference); 70 %: per-channel gains U(1 -/+ 0.4 s).

    One cast in five is the reference's fixed green cast (0.8, 1.2, 0.8).
    """
    if rng.random() < 0.3:
        upper = max(0.2, 1.0 - strength)
        factor = 0.1 + (upper - 0.1) * rng.random()
        image = _truncated_bytes(img)
        return _to_float(_pil_blend(_pil_luma(image)[..., None], image, factor))
    gains = rng.uniform(1.0 - 0.4 * strength, 1.0 + 0.4 * strength, size=3)
    if rng.random() < 0.2:
        gains = np.array([0.8, 1.2, 0.8])
    return np.clip(img * gains.astype(np.float32), 0.0, 1.0)


def _grayscale(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Colour drop: OpenCV luma copied to all three channels (strength-independent)."""
    gray = cv2.cvtColor(_truncated_bytes(img), cv2.COLOR_RGB2GRAY)
    return _to_float(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))


def _chroma_subsampling(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """4:2:0-style chroma loss: Cr/Cb area-averaged 2x2, nearest upsampling (strength-independent)."""
    height, width = img.shape[:2]
    if height < 2 or width < 2:
        return img.copy()
    y, cr, cb = cv2.split(cv2.cvtColor(_truncated_bytes(img), cv2.COLOR_RGB2YCrCb))
    small = (width // 2, height // 2)
    cr = cv2.resize(cv2.resize(cr, small, interpolation=cv2.INTER_AREA), (width, height),
                    interpolation=cv2.INTER_NEAREST)
    cb = cv2.resize(cv2.resize(cb, small, interpolation=cv2.INTER_AREA), (width, height),
                    interpolation=cv2.INTER_NEAREST)
    return _to_float(cv2.cvtColor(cv2.merge([y, cr, cb]), cv2.COLOR_YCrCb2RGB))


def _banding(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Posterisation to int(32 - 14 s) levels per channel (the reference's range, 32 down to 18).
    In the compound pipeline its strength comes from Beta(a, b + 1) (see ``STRENGTH_SKIPPED_OPS``)."""
    levels = int(max(4.0, 32.0 - 28.0 * strength * 0.5))
    step = np.float32(255.0 / (levels - 1))
    return np.clip(np.round(img * np.float32(255.0) / step) * step / np.float32(255.0), 0.0, 1.0)


def _pil_blend(degenerate: np.ndarray | int, image: np.ndarray, factor: float) -> np.ndarray:
    """``ImageEnhance.*.enhance(factor)`` on uint8 RGB: PIL's ``Image.blend`` of the enhancer's
    degenerate image towards ``image``, computed in single precision, clipped and truncated."""
    low = np.asarray(degenerate, dtype=np.float32)
    blended = low + np.float32(factor) * (image.astype(np.float32) - low)
    return np.clip(blended, 0.0, 255.0).astype(np.uint8)


def _pil_luma(image: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L conversion: (19595 R + 38470 G + 7471 B + 2^15) >> 16, in integers."""
    weighted = image.astype(np.uint32) @ np.array([19595, 38470, 7471], dtype=np.uint32)
    return ((weighted + 0x8000) >> 16).astype(np.uint8)


def _pil_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _pil_blend(0, image, factor)


def _pil_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Towards the mean grey level of PIL's luma, rounded half up (``ImageEnhance.Contrast``)."""
    mean = int(_pil_luma(image).sum(dtype=np.int64) / (image.shape[0] * image.shape[1]) + 0.5)
    return _pil_blend(mean, image, factor)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Like Python's random.uniform: defined (and used by the reference) when low > high."""
    return low + (high - low) * float(rng.random())


def _brightness_contrast(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """45 %: darken (x U(max(0.02, 1 - 0.98 s), 1)); 45 %: brighten (x U(1, 1 + 1.5 s)) then
    flatten contrast (U(max(0.1, 1 - 0.9 s), 0.8)); 10 %: brightness or contrast x U(1 -/+ 0.5 s).
    PIL's ImageEnhance on the truncated uint8 image, as the reference."""
    image = _truncated_bytes(img)
    choice = rng.random()
    if choice < 0.45:
        image = _pil_brightness(image, _uniform(rng, max(0.02, 1.0 - 0.98 * strength), 1.0))
    elif choice < 0.90:
        image = _pil_brightness(image, _uniform(rng, 1.0, 1.0 + 1.5 * strength))
        image = _pil_contrast(image, _uniform(rng, max(0.1, 1.0 - 0.9 * strength), 0.8))
    else:
        enhance = _pil_brightness if rng.random() < 0.5 else _pil_contrast
        image = enhance(image, _uniform(rng, max(0.5, 1.0 - 0.5 * strength), 1.0 + 0.5 * strength))
    return _to_float(image)


def _chromatic_aberration(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Colour fringing: red shifted down-right, blue up-left by max(1, int(4 s)) pixels."""
    shift = min(max(1, int(4.0 * strength)), img.shape[0] - 1, img.shape[1] - 1)
    out = img.copy()
    if shift < 1:
        return out
    out[shift:, shift:, 0] = img[:-shift, :-shift, 0]
    out[:-shift, :-shift, 2] = img[shift:, shift:, 2]
    return out


def _moire(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Screen-capture interference: a sine grating (frequency U(0.5, 3) rad/px, random angle)
    blended with weight 0.15 s."""
    height, width = img.shape[:2]
    xx, yy = np.meshgrid(np.linspace(0, width, width), np.linspace(0, height, height))
    frequency = rng.uniform(0.5, 3.0)
    angle = rng.uniform(0.0, math.pi)
    wave = ((np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * frequency) + 1.0) / 2.0)
    alpha = np.float32(0.15 * strength)
    return np.clip(img * (1 - alpha) + wave[..., None].astype(np.float32) * alpha, 0.0, 1.0)


def _glitch_lines(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Transmission glitches: int(10 s) horizontal bands of 1..max(2, int(8 s)) rows, each either
    filled (40 %: black, white or grey) or rolled sideways by up to 30 s pixels."""
    height = img.shape[0]
    out = img.copy()
    for _ in range(int(10.0 * strength)):
        top = int(rng.integers(0, height))
        thickness = int(rng.integers(1, max(2, int(8.0 * strength)) + 1))
        if top + thickness >= height:
            continue
        if rng.random() < 0.4:
            fill = (0.0, 1.0, None)[int(rng.integers(0, 3))]
            out[top:top + thickness] = rng.uniform(0.2, 0.8) if fill is None else fill
        else:
            reach = int(30.0 * strength)
            shift = int(rng.integers(-reach, reach + 1))
            out[top:top + thickness] = np.roll(out[top:top + thickness], shift, axis=1)
    return out


def _vignetting(img: FloatImage, strength: float, rng: np.random.Generator) -> FloatImage:
    """Radial darkening: gain 1 - r/sqrt(2) x (0.4 + 0.4 s), r the normalised distance to the
    centre (corners keep 60 % at s = 0, 20 % at s = 1)."""
    height, width = img.shape[:2]
    uu, vv = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    radius = np.sqrt(uu ** 2 + vv ** 2)
    gain = np.clip(1.0 - radius / math.sqrt(2.0) * (0.4 + 0.4 * strength), 0.0, 1.0)
    return img * gain[..., None].astype(np.float32)


_RESTORE_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def _resize(img: FloatImage, strength: float, rng: np.random.Generator, *,
            max_pixels: int | None = None) -> FloatImage:
    """Rescale (the reference's add_resize with sf=2): 70 % down by U(0.25 / s, 1) (at least 0.1),
    20 % up by U(1, 2), 10 % unchanged; nearest-neighbour for half of the downscales, else linear /
    cubic / area. The image keeps its new size: the ops after it (and the rest of the
    recompression prelude) work at that size, and the scales of several rescales multiply, until
    ``_restore_size`` brings the image back at the end, as the reference's final resize. An
    upscale is clipped so that the result holds at most ``max_pixels`` (see
    :func:`working_pixel_limit`); the draws are the same either way."""
    height, width = img.shape[:2]
    draw = rng.random()
    if draw > 0.8:
        scale = rng.uniform(1.0, 2.0)
        if max_pixels is not None:
            scale = max(1.0, min(scale, math.sqrt(max_pixels / (height * width))))
    elif draw < 0.7:
        scale = float(np.clip(_uniform(rng, 0.25 / max(strength, 1e-6), 1.0), 0.1, 1.0))
    else:
        scale = 1.0
    if scale < 1.0 and rng.random() < 0.5:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = _RESTORE_INTERPOLATIONS[int(rng.integers(0, 3))]
    size = (max(1, int(scale * width)), max(1, int(scale * height)))
    scaled = cv2.resize(img, size, interpolation=interpolation)
    return np.clip(scaled.reshape(size[1], size[0], img.shape[2]), 0.0, 1.0)


def working_pixel_limit(height: int, width: int) -> int:
    """The most pixels the compound engine lets an image of this size grow to while degraded:
    4x the input (2x per side, one reference upscale), at most :data:`DEFAULT_MAX_PIXELS` unless
    the input is already larger, in which case it never grows."""
    pixels = height * width
    return max(pixels, min(4 * pixels, DEFAULT_MAX_PIXELS))


def _restore_size(img: FloatImage, height: int, width: int, rng: np.random.Generator) -> FloatImage:
    """The reference's last step: back to the input size, linear / cubic / area at random (not
    clipped there; the uint8 conversion clips). An image already at that size is left as it is,
    as OpenCV's resize to the same size copies it."""
    if img.shape[:2] == (height, width):
        return img
    interpolation = _RESTORE_INTERPOLATIONS[int(rng.integers(0, 3))]
    return cv2.resize(img, (width, height), interpolation=interpolation).reshape(height, width, img.shape[2])


OPS: dict[str, OpFunction] = {
    "jpeg": _jpeg,
    "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur,
    "gaussian_noise": _gaussian_noise,
    "speckle_noise": _speckle_noise,
    "poisson_noise": _poisson_noise,
    "salt_and_pepper": _salt_and_pepper,
    "colour_cast": _colour_cast,
    "grayscale": _grayscale,
    "chroma_subsampling": _chroma_subsampling,
    "banding": _banding,
    "brightness_contrast": _brightness_contrast,
    "chromatic_aberration": _chromatic_aberration,
    "moire": _moire,
    "glitch_lines": _glitch_lines,
    "vignetting": _vignetting,
    "resize": _resize,
}
"""Every named op. Each docstring gives its parameters as a function of the strength s."""


# --------------------------------------------------------------------------------------------
# the spec and the compound pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradationSpec:
    """What the compound pipeline may do to one image.

    ``op_probabilities``: (op name, probability it fires) pairs; the ops that fire run in a random
    order. Strength of each firing op: ``max_strength * Beta(beta_a, beta_b)``. With probability
    ``recompress_p`` the image first goes through ``recompress_cycles`` (inclusive range) cycles of
    JPEG (uniform quality 10..95) alternating with a rescale, as in the reference's prelude.
    """

    op_probabilities: tuple[tuple[str, float], ...]
    beta_a: float = 1.2
    beta_b: float = 1.2
    max_strength: float = 1.0
    recompress_p: float = 0.3
    recompress_cycles: tuple[int, int] = (1, 5)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.op_probabilities]
        unknown = sorted(set(names) - set(OPS))
        if unknown:
            raise DegradationError(f"unknown degradation op(s) {unknown}; known: {sorted(OPS)}")
        if len(set(names)) != len(names):
            raise DegradationError(f"an op is listed twice in the spec: {names}")
        for name, probability in self.op_probabilities:
            if not 0.0 <= probability <= 1.0:
                raise DegradationError(f"probability of {name!r} must be in [0, 1], got {probability}")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise DegradationError(f"Beta parameters must be > 0, got a={self.beta_a}, b={self.beta_b}")
        if not 0.0 <= self.max_strength <= 1.0:
            raise DegradationError(f"max_strength must be in [0, 1], got {self.max_strength}")
        if not 0.0 <= self.recompress_p <= 1.0:
            raise DegradationError(f"recompress_p must be in [0, 1], got {self.recompress_p}")
        low, high = self.recompress_cycles
        if not 1 <= low <= high:
            raise DegradationError(f"recompress_cycles must be 1 <= low <= high, got {self.recompress_cycles}")

    def to_dict(self) -> dict:
        """Plain JSON-able form, used in cache keys and manifests."""
        return asdict(self)


STRENGTH_SKIPPED_OPS = {"banding": 1}
"""Ops the reference skips with a probability equal to their strength (banding: ``if
random.random() < strength: return img``). Such an op fires with p x E[1 - s] (0.3 x 0.5 in
:data:`PAPER_SPEC`), and the strengths it fires with follow Beta(a, b) x (1 - s), that is
Beta(a, b + 1): the value here is added to b for it, so that a firing op always does something."""

_PAPER_OP_P = 0.3
PAPER_SPEC = DegradationSpec(
    op_probabilities=(
        ("jpeg", _PAPER_OP_P),
        ("gaussian_blur", _PAPER_OP_P),
        ("motion_blur", _PAPER_OP_P),
        ("gaussian_noise", _PAPER_OP_P),
        ("speckle_noise", _PAPER_OP_P * 0.33),
        ("poisson_noise", _PAPER_OP_P * 0.33),
        ("salt_and_pepper", _PAPER_OP_P * 0.34),
        ("colour_cast", _PAPER_OP_P * 0.8),
        ("grayscale", _PAPER_OP_P * 0.2),
        ("chroma_subsampling", _PAPER_OP_P),
        ("banding", _PAPER_OP_P * 0.5),
        ("brightness_contrast", _PAPER_OP_P),
        ("chromatic_aberration", _PAPER_OP_P),
        ("moire", _PAPER_OP_P),
        ("glitch_lines", _PAPER_OP_P),
        ("vignetting", _PAPER_OP_P),
        ("resize", _PAPER_OP_P),
    ),
    recompress_p=_PAPER_OP_P,
)
"""The reference training configuration (dinov2_252.yaml: op_p 0.3, Beta(1.2, 1.2))."""


def _recompress(img: FloatImage, spec: DegradationSpec, rng: np.random.Generator,
                applied: list[AppliedOp], max_pixels: int) -> FloatImage:
    low, high = spec.recompress_cycles
    cycles = int(rng.integers(low, high + 1))
    jpeg_first = rng.random() < 0.5
    rescale_strength = spec.max_strength * float(rng.beta(spec.beta_a, spec.beta_b))
    for step in range(2 * cycles):
        if (step % 2 == 0) == jpeg_first:
            quality = int(rng.integers(10, 96))
            img = _jpeg_roundtrip(img, quality)
            applied.append(AppliedOp("jpeg", (95.0 - quality) / 85.0))
        elif img.shape[0] > 10 and img.shape[1] > 10:
            img = _resize(img, rescale_strength, rng, max_pixels=max_pixels)
            applied.append(AppliedOp("resize", rescale_strength))
    return img


def degrade(rgb: np.ndarray, rng: np.random.Generator,
            spec: DegradationSpec = PAPER_SPEC) -> tuple[np.ndarray, list[AppliedOp]]:
    """Push one uint8 RGB image through the compound pipeline.

    Returns the degraded image (uint8, same shape) and the ops that fired, in order. The result
    depends only on the image, the spec and the generator's state, so a seeded generator gives
    the same bytes every time. An image may come back unchanged when no op fires. While degraded,
    the image never holds more than :func:`working_pixel_limit` pixels.
    """
    _check_rgb(rgb)
    img = _to_float(rgb)
    max_pixels = working_pixel_limit(*rgb.shape[:2])
    applied: list[AppliedOp] = []
    if rng.random() < spec.recompress_p:
        img = _recompress(img, spec, rng, applied, max_pixels)
    for index in rng.permutation(len(spec.op_probabilities)):
        name, probability = spec.op_probabilities[index]
        if rng.random() < probability:
            beta_b = spec.beta_b + STRENGTH_SKIPPED_OPS.get(name, 0)
            strength = spec.max_strength * float(rng.beta(spec.beta_a, beta_b))
            img = _apply_named(name, img, strength, rng, max_pixels)
            applied.append(AppliedOp(name, strength))
    return _to_uint8(_restore_size(img, *rgb.shape[:2], rng)), applied


def _apply_named(name: str, img: FloatImage, strength: float, rng: np.random.Generator,
                 max_pixels: int) -> FloatImage:
    """One op of :data:`OPS`; a rescale is held to ``max_pixels`` (the only op that grows the
    image)."""
    if name == "resize":
        return _resize(img, strength, rng, max_pixels=max_pixels)
    return OPS[name](img, strength, rng)


def apply_op(name: str, rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one named op (see :data:`OPS`) at a strength in [0, 1]; uint8 RGB in and out. Held
    to :func:`working_pixel_limit` as the compound pipeline is."""
    if name not in OPS:
        raise DegradationError(f"unknown degradation op {name!r}; known: {sorted(OPS)}")
    if not 0.0 <= strength <= 1.0:
        raise DegradationError(f"strength must be in [0, 1], got {strength}")
    _check_rgb(rgb)
    degraded = _apply_named(name, _to_float(rgb), float(strength), rng, working_pixel_limit(*rgb.shape[:2]))
    return _to_uint8(_restore_size(degraded, *rgb.shape[:2], rng))


# --------------------------------------------------------------------------------------------
# fixed, named degradations for benchmarks and `verify`
# --------------------------------------------------------------------------------------------


def _fixed_jpeg(quality: int) -> Callable[[FloatImage], FloatImage]:
    return lambda img: _jpeg_roundtrip(img, quality)


def _fixed_blur(sigma: float) -> Callable[[FloatImage], FloatImage]:
    return lambda img: cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=_BORDER).reshape(img.shape)


def _fixed_noise(sigma: float, seed: int) -> Callable[[FloatImage], FloatImage]:
    def add_noise(img: FloatImage) -> FloatImage:
        noise = np.random.default_rng(seed).normal(0.0, sigma / 255.0, size=img.shape)
        return np.clip(img + noise.astype(np.float32), 0.0, 1.0)
    return add_noise


def _fixed_gamma(gamma: float) -> Callable[[FloatImage], FloatImage]:
    return lambda img: np.power(img, np.float32(gamma))


def _fixed_down_up(factor: int) -> Callable[[FloatImage], FloatImage]:
    def down_up(img: FloatImage) -> FloatImage:
        height, width = img.shape[:2]
        small = cv2.resize(img, (max(1, width // factor), max(1, height // factor)),
                           interpolation=cv2.INTER_AREA)
        return np.clip(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
                       .reshape(img.shape), 0.0, 1.0)
    return down_up


def _fixed_gains(gains: tuple[float, float, float]) -> Callable[[FloatImage], FloatImage]:
    return lambda img: np.clip(img * np.array(gains, dtype=np.float32), 0.0, 1.0)


def _fixed_vignetting(strength: float) -> Callable[[FloatImage], FloatImage]:
    return lambda img: _vignetting(img, strength, np.random.default_rng(0))


def _chain(*steps: Callable[[FloatImage], FloatImage]) -> Callable[[FloatImage], FloatImage]:
    def run(img: FloatImage) -> FloatImage:
        for step in steps:
            img = step(img)
        return img
    return run


FIXED_DEGRADATIONS: dict[str, tuple[str, Callable[[FloatImage], FloatImage]]] = {
    "jpeg10": ("JPEG re-encoding at quality 10 (OpenCV, 4:2:0)", _fixed_jpeg(10)),
    "blur3": ("Gaussian blur, sigma 3 px (reflect-101 border)", _fixed_blur(3.0)),
    "noise25": ("additive Gaussian noise, sigma 25/255 per channel, fixed seed 0",
                _fixed_noise(25.0, seed=0)),
    "gamma_dark": ("dark exposure: gamma 2.2 applied to [0, 1] values", _fixed_gamma(2.2)),
    "down4_up": ("downscale by 4 (area) and upscale back (cubic)", _fixed_down_up(4)),
    "compound_a": ("re-shared photo: down 2 (area) / up (cubic), blur sigma 1, JPEG quality 30",
                   _chain(_fixed_down_up(2), _fixed_blur(1.0), _fixed_jpeg(30))),
    "compound_b": ("low-light phone capture: warm cast (1.1, 0.95, 0.8), gamma 1.6, noise "
                   "sigma 12 (seed 1), vignetting 0.5, JPEG quality 20",
                   _chain(_fixed_gains((1.1, 0.95, 0.8)), _fixed_gamma(1.6),
                          _fixed_noise(12.0, seed=1), _fixed_vignetting(0.5), _fixed_jpeg(20))),
}
"""Named, parameter-free degradations: (description, float function). Same bytes on every call."""


def fixed_degradation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The fixed degradation ``name`` (see :data:`FIXED_DEGRADATIONS`) as uint8 RGB -> uint8 RGB."""
    if name not in FIXED_DEGRADATIONS:
        raise DegradationError(
            f"unknown fixed degradation {name!r}; known: {', '.join(FIXED_DEGRADATIONS)}"
        )
    function = FIXED_DEGRADATIONS[name][1]

    def apply(rgb: np.ndarray) -> np.ndarray:
        _check_rgb(rgb)
        return _to_uint8(function(_to_float(rgb)))

    apply.__doc__ = FIXED_DEGRADATIONS[name][0]
    return apply


# --------------------------------------------------------------------------------------------
# seeds: one generator per image, drawn from the pixels (degrade, verify's degraded images)
# --------------------------------------------------------------------------------------------


def require_seed(seed: int) -> None:
    """Refuse a negative seed before any file is touched (NumPy refuses one too, but only when the
    first image's generator is made)."""
    if seed < 0:
        raise DegradationError(f"seed must be >= 0, got {seed}")


def image_rng(seed: int, rgb: np.ndarray) -> np.random.Generator:
    """The generator for one image: depends on the seed and the decoded pixels (their
    :func:`~dfd.runtime.images.array_sha256`), not on the file's name, folder or format, nor on
    the order in which images are processed. So adding a file does not change the others'
    degradations, and two different photographs that share a name (``real/x.jpg``,
    ``fake/x.jpg``) get unrelated draws."""
    require_seed(seed)
    return np.random.default_rng([seed, int(array_sha256(rgb)[:16], 16)])
