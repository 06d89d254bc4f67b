"""The degradation engine: determinism, each op's measurable effect (checked against OpenCV, NumPy
and Pillow computations written from the reference's formulas), shapes, errors and the file verb."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from scipy import linalg, ndimage, stats

from dfd.calibration.degrade import (
    FIXED_DEGRADATIONS,
    OPS,
    PAPER_SPEC,
    DegradationError,
    DegradationSpec,
    apply_op,
    degrade,
    fixed_degradation,
)

ALL_OPS_SPEC = DegradationSpec(op_probabilities=tuple((name, 1.0) for name in OPS), recompress_p=1.0)


def flat(value: int, shape=(64, 80)) -> np.ndarray:
    return np.full((*shape, 3), value, dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def laplacian_variance(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def blockiness(rgb: np.ndarray) -> float:
    """Mean horizontal step across 8-pixel block borders over the mean step elsewhere."""
    steps = np.abs(np.diff(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64), axis=1))
    at_border = np.arange(steps.shape[1]) % 8 == 7
    return float(steps[:, at_border].mean() / steps[:, ~at_border].mean())


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_and_record(photo):
    first, first_ops = degrade(photo, rng(7))
    second, second_ops = degrade(photo, rng(7))
    assert first.tobytes() == second.tobytes()
    assert first_ops == second_ops


def test_different_seeds_differ(photo):
    results = {degrade(photo, rng(seed))[0].tobytes() for seed in range(4)}
    assert len(results) == 4


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_is_deterministic(photo, name):
    assert np.array_equal(apply_op(name, photo, 0.7, rng(3)), apply_op(name, photo, 0.7, rng(3)))


def test_paper_spec_matches_reference_config():
    """dinov2_252.yaml: op_p 0.3, Beta(1.2, 1.2); shared slots split with the reference's odds."""
    probabilities = dict(PAPER_SPEC.op_probabilities)
    assert (PAPER_SPEC.beta_a, PAPER_SPEC.beta_b, PAPER_SPEC.max_strength) == (1.2, 1.2, 1.0)
    assert probabilities["jpeg"] == pytest.approx(0.3)
    assert probabilities["grayscale"] + probabilities["colour_cast"] == pytest.approx(0.3)
    noise_slot = [probabilities[name] for name in ("speckle_noise", "poisson_noise", "salt_and_pepper")]
    assert noise_slot == pytest.approx([0.3 * 0.33, 0.3 * 0.33, 0.3 * 0.34])
    assert set(probabilities) == set(OPS)


def test_strengths_follow_the_beta_draw(photo):
    small = photo[:24, :24]
    strengths = [op.strength for seed in range(150) for op in degrade(small, rng(seed))[1]]
    assert len(strengths) > 300
    assert 0.0 <= min(strengths) and max(strengths) <= 1.0
    # Beta(1.2, 1.2) has mean 0.5 and standard deviation sqrt(1.44 / (5.76 * 3.4)) = 0.271
    assert np.mean(strengths) == pytest.approx(0.5, abs=0.05)
    assert np.std(strengths) == pytest.approx(0.271, abs=0.04)


def test_strengths_follow_the_specs_beta_parameters():
    """The paper's Beta(1.2, 1.2) is too close to uniform for a few hundred draws to tell apart, so
    an asymmetric Beta(5, 1) scaled by 0.8 shows the spec's parameters are the ones drawn from:
    400 strengths pass a Kolmogorov-Smirnov test against it and fail one against a uniform draw."""
    spec = DegradationSpec(op_probabilities=(("grayscale", 1.0),), beta_a=5.0, beta_b=1.0, max_strength=0.8,
                           recompress_p=0.0)
    strengths = [op.strength for seed in range(400) for op in degrade(flat(128, (4, 4)), rng(seed), spec)[1]]
    assert len(strengths) == 400
    assert stats.kstest(strengths, stats.beta(5.0, 1.0, scale=0.8).cdf).pvalue > 0.01
    assert stats.kstest(strengths, stats.uniform(scale=0.8).cdf).pvalue < 1e-9


# ------------------------------------------------------------------------------ each op


def test_jpeg_full_strength_is_quality_10(photo):
    encoded = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 10])[1]
    expected = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    out = apply_op("jpeg", photo, 1.0, rng())
    assert np.array_equal(out, expected)
    assert np.array_equal(fixed_degradation("jpeg10")(photo), expected)
    assert psnr(photo, out) < 30.0
    assert blockiness(out) > 1.5 * blockiness(photo)


def test_jpeg_quality_grows_as_strength_drops(photo):
    errors = [psnr(photo, apply_op("jpeg", photo, s, rng())) for s in (1.0, 0.5, 0.0)]
    assert errors[0] < errors[1] < errors[2]


def _reference_smoothing_kernel(strength: float, seed: int) -> tuple[np.ndarray, str]:
    """The reference's add_smoothing2 kernel, written from its formulas with scipy, its draws
    replayed from the op's seed: anisotropic Gaussian pdf with covariance V D V^-1 on a side of
    2 int(max variance) + 1, fspecial-style isotropic Gaussian, or a box."""
    replay, spread = rng(seed), 30.0 * strength
    draw = replay.random()
    if draw < 1 / 3:
        l1, l2 = spread * replay.random(2)
        size = int(max(l1, l2)) * 2 + 1
        theta = replay.random() * np.pi
        v = np.array([np.cos(theta), np.sin(theta)])
        basis = np.array([[v[0], v[1]], [v[1], -v[0]]])
        covariance = basis @ np.diag([l1, l2]) @ np.linalg.inv(basis)
        center = size / 2.0 + 0.5
        kernel = np.array([[stats.multivariate_normal.pdf([x - center + 1, y - center + 1], mean=[0, 0],
                                                          cov=covariance) for x in range(size)] for y in range(size)])
        return kernel / kernel.sum(), "anisotropic"
    if draw < 2 / 3:
        size = 2 * int(replay.integers(2, 12)) + 3
        sigma = spread * replay.random()
        half = (size - 1.0) / 2.0
        x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
        kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
        kernel[kernel < 1e-8 * kernel.max()] = 0
        return kernel / kernel.sum(), "isotropic"
    side = int(replay.integers(3, max(3, int(30 * strength)) + 1))
    return np.ones((side, side)) / side ** 2, f"box {side}"


def test_smoothing_equals_scipys_convolution_with_the_reference_kernels(photo):
    """Every branch, even and odd boxes and a variance under 1 (a 1x1 kernel: no blur), against
    scipy.ndimage.convolve with mode="mirror", as the reference convolves."""
    image = photo[:60, :70].astype(np.float32) / 255
    kinds = set()
    for strength in (1.0, 0.3, 0.02):
        for seed in range(12):  # boxes: seeds 4, 5, 9, 10 (side 10 and 4 are even)
            kernel, kind = _reference_smoothing_kernel(strength, seed)
            kinds.add("even box" if kind.startswith("box") and kernel.shape[0] % 2 == 0 else kind.split()[0])
            kinds.add("identity" if kernel.shape == (1, 1) else "blur")
            expected = ndimage.convolve(image, kernel[..., None], mode="mirror")
            out = OPS["gaussian_blur"](image, strength, rng(seed))
            assert np.abs(out - expected).max() < 2e-6, (strength, seed, kind)
    assert kinds >= {"anisotropic", "isotropic", "box", "even box", "identity", "blur"}


def test_motion_blur_draws_its_line_as_the_reference(photo):
    """The kernel built column by column as the reference does (a near-vertical angle leaves the
    centre tap only: no blur), applied with OpenCV's filter2D as the reference applies it."""
    image = photo.astype(np.float32) / 255
    taps = []
    for strength in (1.0, 0.5, 0.1):
        for seed in range(6):
            size = int(max(3, 15 * strength * 0.8))
            size += size % 2 == 0
            angle = rng(seed).uniform(0, 180)
            center, slope = size // 2, np.tan(np.radians(angle))
            kernel = np.zeros((size, size))
            for x in range(size):
                y = int(slope * (x - center) + center)
                if 0 <= y < size:
                    kernel[y, x] = 1
            kernel /= kernel.sum()
            taps.append(int(np.count_nonzero(kernel)))
            expected = np.clip(cv2.filter2D(image, -1, kernel.astype(np.float32)), 0, 1)
            assert np.array_equal(OPS["motion_blur"](image, strength, rng(seed)), expected), (strength, seed)
    assert min(taps) == 1 and max(taps) == 13  # seed 1 at strength 1 is near vertical: the centre tap only
    assert laplacian_variance(apply_op("motion_blur", photo, 1.0, rng(0))) < 0.3 * laplacian_variance(photo)


def test_fixed_blur3_is_gaussian_sigma_3(photo):
    expected = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 3.0, borderType=cv2.BORDER_REFLECT_101)
    out = fixed_degradation("blur3")(photo)
    assert np.abs(out.astype(np.float32) - expected).max() <= 0.51 + 1e-3
    assert laplacian_variance(out) < 0.1 * laplacian_variance(photo)


def test_fixed_noise25_raises_residual_std_by_sigma():
    gray = flat(128, (200, 200))
    residual = fixed_degradation("noise25")(gray).astype(np.float64) - 128
    for channel in range(3):
        assert residual[..., channel].std() == pytest.approx(25.0, abs=0.8)
        assert abs(residual[..., channel].mean()) < 0.8


def test_gaussian_noise_sigma_and_channels_follow_the_reference_draw():
    """sigma = U{60..100} x s (U{2..100} x s one time in five); colour noise 70 % of the time, one
    value for all channels 20 %: the draws are replayed from the same seed and the noise measured.
    Seeds 0, 1 and 5 are colour noise, 2 and 3 luma noise (3 from U{2..100}). At s = 0.3 sigma
    stays under 30 grey levels, so clipping at 0 and 255 (4+ sigma from 128) does not bias the
    measured deviation. The correlated branch has its own test below."""
    gray = flat(128, (160, 160))
    strength = 0.3
    for seed in (0, 1, 2, 3, 5):
        replay = rng(seed)
        low = 2 if replay.random() < 0.2 else 60
        sigma = float(replay.integers(low, 101)) * strength
        kind = replay.random()
        assert kind < 0.9, seed
        residual = apply_op("gaussian_noise", gray, strength, rng(seed)).astype(np.float64) - 128
        for channel in range(3):
            assert residual[..., channel].std() == pytest.approx(sigma, rel=0.04), (seed, channel)
        luma = np.array_equal(residual[..., 0], residual[..., 1]) and np.array_equal(residual[..., 1], residual[..., 2])
        assert luma == (kind >= 0.7), seed


def test_correlated_gaussian_noise_has_the_references_covariance():
    """The 10 % branch (seeds 4 and 33): the reference's covariance |L^2 orth(A)^T diag(d) orth(B)|
    (scipy's orth, the draws replayed) is not symmetric, and the reference samples it with the
    legacy np.random.multivariate_normal, whose SVD factor gives the noise the covariance V^T S V.
    The op's noise over 90,000 pixels has the covariance of 90,000 legacy draws, within sampling
    error (0.5 %); the new Generator's factor (U S U^T) would be off by far more."""
    image = np.full((300, 300, 3), 0.5, np.float32)
    for strength, seed in ((0.3, 4), (0.25, 33)):  # sigma < 0.12: no clipping around 0.5
        replay = rng(seed)
        low = 2 if replay.random() < 0.2 else 60
        replay.integers(low, 101)
        assert replay.random() >= 0.9, seed
        first, scales, second = linalg.orth(replay.random((3, 3))), np.diag(replay.random(3)), linalg.orth(replay.random((3, 3)))
        covariance = np.abs((100 * strength / 255) ** 2 * (first.T @ scales @ second))
        with pytest.warns(RuntimeWarning, match="positive-semidefinite"):
            legacy = np.random.RandomState(seed).multivariate_normal(np.zeros(3), covariance, 90_000)
        noise = (OPS["gaussian_noise"](image, strength, rng(seed)) - image).reshape(-1, 3).astype(np.float64)
        tolerance = 0.03 * np.abs(covariance).max()
        assert np.abs(np.cov(noise.T) - np.cov(legacy.T)).max() < tolerance, seed
        left, singular, right = np.linalg.svd(covariance)
        assert np.abs((left * singular) @ left.T - right.T @ (singular[:, None] * right)).max() > 3 * tolerance


def test_speckle_noise_scales_with_the_pixel_and_follows_the_reference_draw():
    """img x (1 + n) with sigma(n) = U{2..25} x s / 255, replayed: on two flat levels the
    residual's deviation is level x sigma; seed 0 is one value for all channels, 1 per channel."""
    strength = 0.8
    for seed in (0, 1):
        replay = rng(seed)
        sigma = float(replay.integers(2, 26)) * strength / 255
        kind = replay.random()
        assert not 0.4 <= kind <= 0.6, seed
        for level in (0.2, 0.5):
            image = np.full((200, 200, 3), level, np.float32)
            residual = OPS["speckle_noise"](image, strength, rng(seed)).astype(np.float64) - level
            assert residual.std() == pytest.approx(level * sigma, rel=0.04), (seed, level)
            same = np.array_equal(residual[..., 0], residual[..., 2])
            assert same == (kind < 0.4), seed


def test_poisson_noise_has_the_shot_noise_variance_of_the_drawn_photon_count():
    """Variance level / photons around the grey level, photons = 10^U(2, 4) replayed; seed 0 is
    per channel, seed 1 the luma branch (one offset for all channels)."""
    image = np.full((200, 200, 3), 0.4, np.float32)
    branches = set()
    for seed in (0, 1):
        replay = rng(seed)
        photons = 10 ** (2 * replay.random() + 2)
        per_channel = replay.random() < 0.5
        branches.add(per_channel)
        out = OPS["poisson_noise"](image, 0.7, rng(seed)).astype(np.float64)
        level = np.round(0.4 * 255) / 255  # the op first rounds to grey levels, as the reference
        assert out.mean() == pytest.approx(level, abs=3e-3)
        assert out.var() == pytest.approx(level / photons, rel=0.05), seed
        assert np.array_equal(out[..., 0], out[..., 1]) != per_channel
    assert branches == {True, False}


def test_salt_and_pepper_share():
    gray = flat(128, (200, 200))
    out = apply_op("salt_and_pepper", gray, 1.0, rng())
    black = np.all(out == 0, axis=2).mean()
    white = np.all(out == 255, axis=2).mean()
    assert black == pytest.approx(0.05, abs=0.005)
    assert white == pytest.approx(0.05, abs=0.005)
    untouched = np.all(out == 128, axis=2).mean()
    assert untouched == pytest.approx(1.0 - black - white)


def test_grayscale_has_equal_channels_equal_to_opencv_luma(photo):
    out = apply_op("grayscale", photo, 0.5, rng())
    expected = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    for channel in range(3):
        assert np.array_equal(out[..., channel], expected)
    # between grey levels (after noise) the reference truncates to uint8 before OpenCV's luma
    noisy = np.clip(photo / 255.0 + rng(7).normal(0, 0.02, photo.shape), 0, 1).astype(np.float32)
    expected = cv2.cvtColor((noisy * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY) / np.float32(255)
    assert np.array_equal(OPS["grayscale"](noisy, 0.5, rng())[..., 1], expected)


def test_colour_fade_equals_pillows_image_enhance_color(photo):
    """The fade branch (seeds whose first draw is under 0.3) against Pillow's ImageEnhance.Color."""
    faded = 0
    for seed in range(12):
        replay = rng(seed)
        if replay.random() >= 0.3:
            continue
        factor = 0.1 + (max(0.2, 1.0 - 0.5) - 0.1) * replay.random()
        expected = np.asarray(ImageEnhance.Color(Image.fromarray(photo)).enhance(factor))
        assert np.array_equal(apply_op("colour_cast", photo, 0.5, rng(seed)), expected), seed
        faded += 1
    assert faded >= 2


def test_colour_cast_is_a_gain_or_a_fade(photo):
    changed = 0
    for seed in range(8):
        out = apply_op("colour_cast", photo, 1.0, rng(seed)).astype(np.float64)
        source = photo.astype(np.float64)
        unclipped = np.all(out < 255, axis=2)
        gains = [(out[..., c] * source[..., c])[unclipped].sum() / (source[..., c] ** 2)[unclipped].sum()
                 for c in range(3)]
        gain_residual = np.abs(out - source * np.array(gains))[unclipped].max()
        spread_ratio = out.std(axis=2).mean() / source.std(axis=2).mean()
        assert gain_residual <= 1.0 or spread_ratio < 0.95
        changed += not np.array_equal(out, photo)
    assert changed == 8


def test_chroma_subsampling_keeps_luma_loses_chroma(photo):
    out = apply_op("chroma_subsampling", photo, 0.5, rng())
    source_ycc = cv2.cvtColor(photo, cv2.COLOR_RGB2YCrCb)
    out_ycc = cv2.cvtColor(out, cv2.COLOR_RGB2YCrCb)
    assert np.abs(source_ycc[..., 0].astype(int) - out_ycc[..., 0]).mean() < 1.5
    chroma = out_ycc[..., 1].astype(int)
    # 2x2 blocks share one chroma value (up to the RGB round trip)
    assert np.abs(chroma[0::2, 0::2] - chroma[1::2, 1::2]).mean() < 1.0
    source_chroma = source_ycc[..., 1].astype(int)
    assert np.abs(source_chroma[0::2, 0::2] - source_chroma[1::2, 1::2]).mean() > 1.0


def _reference_chroma_subsampling(img: np.ndarray) -> np.ndarray:
    """The reference's add_chroma_subsampling, restated: truncate to bytes, YCrCb, Cr and Cb
    INTER_AREA to half size (at least 1), INTER_NEAREST back, RGB, /255 in float32."""
    if img.shape[0] < 2 or img.shape[1] < 2:
        return img
    y, cr, cb = cv2.split(cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2YCrCb))
    half = (max(1, cr.shape[1] // 2), max(1, cr.shape[0] // 2))
    cr, cb = (cv2.resize(cv2.resize(c, half, interpolation=cv2.INTER_AREA), (c.shape[1], c.shape[0]),
                         interpolation=cv2.INTER_NEAREST) for c in (cr, cb))
    return cv2.cvtColor(cv2.merge([y, cr, cb]), cv2.COLOR_YCrCb2RGB).astype(np.float32) / 255.0


def test_chroma_subsampling_equals_the_reference_on_odd_sizes_and_between_grey_levels(photo):
    noisy = np.clip(photo / 255.0 + rng(7).normal(0, 0.02, photo.shape), 0, 1).astype(np.float32)
    for image in (noisy, noisy[:101, :77], noisy[:2, :3], noisy[:1, :9]):
        expected = _reference_chroma_subsampling(image)
        out = OPS["chroma_subsampling"](image, 0.5, rng())
        assert out.dtype == np.float32 and np.array_equal(out, expected), image.shape


def test_moire_equals_the_reference_formula_with_its_draws_replayed(photo):
    """frequency U(0.5, 3) then angle U(0, pi), as the reference draws them; the grating on
    linspace coordinates (0..w over w points, not pixel indices), blended with 0.15 s."""
    image = photo.astype(np.float32) / 255.0
    height, width = image.shape[:2]
    for seed, strength in ((0, 1.0), (3, 0.4)):
        replay = rng(seed)
        frequency, angle = replay.uniform(0.5, 3.0), replay.uniform(0, np.pi)
        xx, yy = np.meshgrid(np.linspace(0, width, width), np.linspace(0, height, height))
        wave = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * frequency) + 1) / 2.0
        alpha = 0.15 * strength
        expected = np.clip(image * (1 - alpha) + wave[..., np.newaxis] * alpha, 0.0, 1.0)
        out = OPS["moire"](image, strength, rng(seed))
        assert np.abs(out - expected).max() < 1e-6, (seed, strength)


def test_banding_posterises_to_the_reference_levels(photo):
    out = apply_op("banding", photo, 1.0, rng())
    levels = 18  # int(max(4, 32 - 28 * 1.0 * 0.5))
    allowed = np.round(np.round(np.arange(256) / (255 / (levels - 1))) * (255 / (levels - 1)))
    for channel in range(3):
        assert len(np.unique(out[..., channel])) <= levels
        assert set(np.unique(out[..., channel])) <= set(allowed.astype(np.uint8))


def _uniform(generator: np.random.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(generator.random())


def _pillow_brightness_contrast(rgb: np.ndarray, strength: float, seed: int) -> tuple[np.ndarray, str]:
    """The reference's add_enhance_advanced with Pillow's own ImageEnhance, its random draws
    replayed from the op's seeded generator."""
    replay, image = rng(seed), Image.fromarray(rgb)
    choice = replay.random()
    if choice < 0.45:
        factor = _uniform(replay, max(0.02, 1.0 - 0.98 * strength), 1.0)
        return np.asarray(ImageEnhance.Brightness(image).enhance(factor)), "darken"
    if choice < 0.90:
        image = ImageEnhance.Brightness(image).enhance(_uniform(replay, 1.0, 1.0 + 1.5 * strength))
        factor = _uniform(replay, max(0.1, 1.0 - 0.9 * strength), 0.8)
        return np.asarray(ImageEnhance.Contrast(image).enhance(factor)), "brighten and flatten"
    enhancer = ImageEnhance.Brightness if replay.random() < 0.5 else ImageEnhance.Contrast
    factor = _uniform(replay, max(0.5, 1.0 - 0.5 * strength), 1.0 + 0.5 * strength)
    return np.asarray(enhancer(image).enhance(factor)), enhancer.__name__


def test_brightness_contrast_equals_pillows_image_enhance(photo):
    """Bit-exact against Pillow on every branch (seeds 4 and 10 take the 10 % one-enhancer branch,
    contrast and brightness), at two strengths, on a photograph and on an image between grey
    levels (after noise), which the reference truncates to uint8 before PIL sees it."""
    noisy = np.clip(photo / 255.0 + rng(99).normal(0, 0.02, photo.shape), 0, 1).astype(np.float32)
    noisy_bytes = (noisy * np.float32(255)).astype(np.uint8)
    branches = set()
    for strength in (1.0, 0.4):
        for seed in range(12):
            expected, branch = _pillow_brightness_contrast(photo, strength, seed)
            branches.add(branch)
            assert np.array_equal(apply_op("brightness_contrast", photo, strength, rng(seed)), expected), (seed, branch)
            expected, _ = _pillow_brightness_contrast(noisy_bytes, strength, seed)
            degraded = OPS["brightness_contrast"](noisy, strength, rng(seed))
            assert np.array_equal(np.rint(degraded * 255).astype(np.uint8), expected), (seed, branch)
    assert branches == {"darken", "brighten and flatten", "Brightness", "Contrast"}


def test_chromatic_aberration_shifts_red_and_blue(photo):
    out = apply_op("chromatic_aberration", photo, 1.0, rng())
    shift = 4  # max(1, int(4 * 1.0))
    assert np.array_equal(out[shift:, shift:, 0], photo[:-shift, :-shift, 0])
    assert np.array_equal(out[:-shift, :-shift, 2], photo[shift:, shift:, 2])
    assert np.array_equal(out[..., 1], photo[..., 1])


def test_moire_adds_a_bounded_grating():
    gray = flat(128, (100, 100))
    delta = apply_op("moire", gray, 1.0, rng()).astype(np.float64) - 128
    # img (1 - a) + wave a with wave in [0, 1], a = 0.15: delta in [-0.15 x 128, 0.15 x 127]
    assert delta.min() >= -0.15 * 128 - 1 and delta.max() <= 0.15 * 127 + 1
    assert delta.std() > 5
    assert np.array_equal(delta[..., 0], delta[..., 2])


def test_glitch_lines_touch_whole_rows_only(photo):
    out = apply_op("glitch_lines", photo, 1.0, rng(2))
    changed_rows = np.any(out != photo, axis=(1, 2))
    assert 0 < changed_rows.sum() < photo.shape[0]
    assert np.array_equal(apply_op("glitch_lines", photo, 0.0, rng(2)), photo)


def _reference_glitch_lines(image: np.ndarray, strength: float, replay: np.random.Generator) -> tuple[np.ndarray, set]:
    """The reference's add_glitch_and_shift step by step, its random.randint / random.random /
    random.uniform draws taken from ``replay`` (randint's inclusive bounds as integers(a, b + 1)).
    The reference builds [0.0, 1.0, uniform(0.2, 0.8)] before choosing, so it always draws the
    grey; this engine draws it only when grey is chosen, and the replay follows this engine's
    order, which draws the same distribution. Returns the kinds of band it made."""
    height = image.shape[0]
    out, kinds = image.copy(), set()
    for _ in range(int(10 * strength)):
        top = int(replay.integers(0, height - 1 + 1))
        thickness = int(replay.integers(1, max(2, int(8 * strength)) + 1))
        if top + thickness >= height:
            kinds.add("skipped")
            continue
        if replay.random() < 0.4:
            choice = int(replay.integers(0, 3))
            out[top:top + thickness, :] = (0.0, 1.0)[choice] if choice < 2 else replay.uniform(0.2, 0.8)
            kinds.add(("black", "white", "grey")[choice])
        else:
            shift = int(replay.integers(-int(30 * strength), int(30 * strength) + 1))
            out[top:top + thickness, :] = np.roll(out[top:top + thickness, :], shift, axis=1)
            kinds.add("rolled")
    return np.clip(out, 0.0, 1.0), kinds


def test_glitch_lines_equal_the_reference_steps_with_their_draws_replayed(photo):
    """Bit-exact on every kind of band (black, white, grey, rolled; a band running off the bottom
    skipped), on the photograph and on a 12-row strip where bands reach the last row."""
    image = photo.astype(np.float32) / 255.0
    kinds = set()
    for picture in (image, image[:12]):
        for seed in range(8):
            for strength in (1.0, 0.55):
                expected, made = _reference_glitch_lines(picture, strength, rng(seed))
                kinds |= made
                out = OPS["glitch_lines"](picture, strength, rng(seed))
                assert out.dtype == np.float32 and np.array_equal(out, expected), (picture.shape, seed, strength)
    assert kinds == {"black", "white", "grey", "rolled", "skipped"}


def test_vignetting_darkens_corners_more_than_centre():
    out = apply_op("vignetting", flat(200, (101, 121)), 1.0, rng()).astype(np.float64)
    assert out[50, 60].mean() == pytest.approx(200, abs=2)
    # corner: radius sqrt(2) -> gain 1 - (0.4 + 0.4) = 0.2
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        assert corner.mean() == pytest.approx(40, abs=1)


RESTORE = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)


def _reference_rescale(img: np.ndarray, strength: float, replay: np.random.Generator,
                       max_pixels: float = np.inf) -> np.ndarray:
    """The reference's add_resize(sf=2), its draws replayed: the image keeps its new size. An
    upscale past ``max_pixels`` is clipped to it, the engine's documented cap (the reference has
    none); the draws stay the same."""
    draw = replay.random()
    if draw > 0.8:
        scale = max(1.0, min(replay.uniform(1, 2), np.sqrt(max_pixels / (img.shape[0] * img.shape[1]))))
    elif draw < 0.7:
        low = 0.5 / 2 / strength
        scale = float(np.clip(low + (1 - low) * replay.random(), 0.1, 1))
    else:
        scale = 1.0
    nearest = scale < 1.0 and replay.random() < 0.5
    interpolation = cv2.INTER_NEAREST if nearest else RESTORE[int(replay.integers(0, 3))]
    size = (max(1, int(scale * img.shape[1])), max(1, int(scale * img.shape[0])))
    return np.clip(cv2.resize(img, size, interpolation=interpolation).reshape(size[1], size[0], 3), 0, 1)


def test_ops_after_a_rescale_work_at_its_size_until_the_final_resize(photo):
    """With resize and salt-and-pepper both firing, the pipeline equals the reference's order of
    events replayed: the rescale keeps its size, salt-and-pepper (when it comes after) marks
    pixels of the rescaled image, and one resize at the end restores the input size. Seeds cover
    both orders, and rescales that change the size."""
    spec = DegradationSpec(op_probabilities=(("resize", 1.0), ("salt_and_pepper", 1.0)), recompress_p=0.0)
    image = photo[:90, :120]
    firsts, rescaled = set(), 0
    for seed in range(10):
        replay = rng(seed)
        assert not replay.random() < 0.0  # the prelude's draw
        img = image.astype(np.float32) / np.float32(255)
        names = [spec.op_probabilities[index][0] for index in replay.permutation(2)]
        for name in names:
            assert replay.random() < 1.0
            strength = float(replay.beta(1.2, 1.2))
            img = _reference_rescale(img, strength, replay) if name == "resize" else OPS[name](img, strength, replay)
        if img.shape[:2] != image.shape[:2]:
            rescaled += 1
            img = cv2.resize(img, (image.shape[1], image.shape[0]), interpolation=RESTORE[int(replay.integers(0, 3))])
        expected = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
        out, applied = degrade(image, rng(seed), spec)
        assert np.array_equal(out, expected), (seed, names)
        assert [op.name for op in applied] == names
        firsts.add(names[0])
    assert firsts == {"resize", "salt_and_pepper"} and rescaled >= 5


def _reference_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """The reference's add_JPEG_noise at a given quality: single2uint (round), RGB to BGR,
    OpenCV encode and decode, back to RGB, uint2single (float64 / 255 cast to float32)."""
    bgr = cv2.cvtColor(np.uint8((img.clip(0, 1) * 255.0).round()), cv2.COLOR_RGB2BGR)
    decoded = cv2.imdecode(cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])[1], 1)
    return cv2.cvtColor(np.float32(decoded / 255.0), cv2.COLOR_BGR2RGB)


def test_the_recompression_prelude_equals_the_reference_steps_replayed(photo):
    """The reference's prelude, its draws replayed: randint(1, 5) cycles, JPEG first or second
    (one coin), one strength for all its rescales, JPEG at a uniform quality 10..95 alternating
    with a rescale that keeps its size (skipped once a side is 10 pixels or less), one resize at
    the end. Seeds cover both orders, one to five cycles, the skip of a rescale, and upscales
    that meet the engine's cap of 4x the input's pixels."""
    spec = DegradationSpec(op_probabilities=(), recompress_p=1.0)
    image = photo[:48, :40]
    limit = 4 * image.shape[0] * image.shape[1]  # the engine's cap on the working image
    orders, cycle_counts, skipped, capped = set(), set(), 0, 0
    for seed in range(40):
        replay = rng(seed)
        assert replay.random() < 1.0
        cycles, jpeg_first, strength = int(replay.integers(1, 6)), replay.random() < 0.5, float(replay.beta(1.2, 1.2))
        img, expected_ops = image.astype(np.float32) / np.float32(255), []
        for step in range(2 * cycles):
            if (step % 2 == 0) if jpeg_first else (step % 2 == 1):
                quality = int(replay.integers(10, 96))
                img = _reference_jpeg(img, quality)
                expected_ops.append(("jpeg", (95 - quality) / 85))
            elif img.shape[0] > 10 and img.shape[1] > 10:
                peek = copy.deepcopy(replay)
                capped += peek.random() > 0.8 and peek.uniform(1, 2) ** 2 * img.shape[0] * img.shape[1] > limit
                img = _reference_rescale(img, strength, replay, limit)
                expected_ops.append(("resize", strength))
            else:
                skipped += 1
        if img.shape[:2] != image.shape[:2]:
            img = cv2.resize(img, (image.shape[1], image.shape[0]), interpolation=RESTORE[int(replay.integers(0, 3))])
        out, applied = degrade(image, rng(seed), spec)
        assert np.array_equal(out, np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)), seed
        assert [(op.name, pytest.approx(op.strength)) for op in applied] == expected_ops, seed
        orders.add(jpeg_first)
        cycle_counts.add(cycles)
    assert orders == {True, False} and cycle_counts == {1, 2, 3, 4, 5} and skipped > 0 and capped > 0


def test_resize_keeps_its_size_alone_and_apply_op_restores_it(photo):
    image = photo.astype(np.float32) / 255
    sizes = {OPS["resize"](image, 1.0, rng(seed)).shape for seed in range(6)}
    assert len(sizes) > 1 and all(size[2] == 3 for size in sizes)
    for seed in range(6):
        assert apply_op("resize", photo, 1.0, rng(seed)).shape == photo.shape


def test_banding_strengths_are_those_the_references_skip_lets_through():
    """The reference skips banding with probability equal to its strength; strengths that pass
    follow Beta(1.2, 1.2) x (1 - s), i.e. Beta(1.2, 2.2), which this engine draws from directly."""
    spec = DegradationSpec(op_probabilities=(("banding", 1.0),), recompress_p=0.0)
    strengths = [op.strength for seed in range(400) for op in degrade(flat(128, (4, 4)), rng(seed), spec)[1]]
    assert len(strengths) == 400
    assert stats.kstest(strengths, stats.beta(1.2, 2.2).cdf).pvalue > 0.01
    assert stats.kstest(strengths, stats.beta(1.2, 1.2).cdf).pvalue < 1e-6


def test_resize_loses_detail(photo):
    ratios = [laplacian_variance(apply_op("resize", photo, 1.0, rng(seed))) / laplacian_variance(photo)
              for seed in range(6)]
    assert np.median(ratios) < 0.6
    assert laplacian_variance(fixed_degradation("down4_up")(photo)) < 0.1 * laplacian_variance(photo)


def test_gamma_dark_follows_gamma_2_2(photo):
    expected = np.rint(255.0 * (photo / 255.0) ** 2.2)
    assert np.abs(fixed_degradation("gamma_dark")(photo) - expected).max() <= 1
    assert fixed_degradation("gamma_dark")(photo).mean() < 0.7 * photo.mean()


@pytest.mark.parametrize("name", ["compound_a", "compound_b"])
def test_compound_fixed_degradations(photo, name):
    degraded = fixed_degradation(name)
    first = degraded(photo)
    assert np.array_equal(first, degraded(photo))
    assert psnr(photo, first) < 30


# ------------------------------------------------------------------------------ shapes and errors


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 7), (3, 5), (17, 31)])
def test_shapes_and_dtype_preserved(shape):
    image = rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for name in OPS:
        for strength in (0.0, 1.0):
            out = apply_op(name, image, strength, rng())
            assert out.shape == image.shape and out.dtype == np.uint8, name
    for name in FIXED_DEGRADATIONS:
        out = fixed_degradation(name)(image)
        assert out.shape == image.shape and out.dtype == np.uint8, name
    for seed in range(3):
        out, applied = degrade(image, rng(seed), ALL_OPS_SPEC)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert {op.name for op in applied} >= set(OPS) - {"resize"}


def test_bad_inputs_raise_readable_errors(photo):
    with pytest.raises(DegradationError, match="unknown degradation op 'sepia'"):
        apply_op("sepia", photo, 0.5, rng())
    with pytest.raises(DegradationError, match="uint8 RGB"):
        apply_op("jpeg", photo.astype(np.float32), 0.5, rng())
    with pytest.raises(DegradationError, match="uint8 RGB"):
        degrade(photo[..., 0], rng())
    with pytest.raises(DegradationError, match="strength"):
        apply_op("jpeg", photo, 1.5, rng())
    with pytest.raises(DegradationError, match="jpeg10"):
        fixed_degradation("jpeg5")
    with pytest.raises(DegradationError, match="unknown degradation op"):
        DegradationSpec(op_probabilities=(("jpg", 0.5),))
    with pytest.raises(DegradationError, match="probability"):
        DegradationSpec(op_probabilities=(("jpeg", 1.5),))


# ------------------------------------------------------------------------------ bounded growth


def test_the_working_image_never_grows_past_four_times_the_input(monkeypatch):
    """Upscales multiply across the prelude and the rescale op (up to 2^6 per side): a 2000x1500
    photograph grew to 128 MP and the run died for memory. Capped at 4x the input's pixels; the
    cap is reached (so the test exercises it) and the result still has the input's size."""
    import dfd.calibration.degrade as module

    sizes: list[int] = []
    original = module._resize

    def recording_resize(img, strength, rng, **kwargs):
        out = original(img, strength, rng, **kwargs)
        sizes.append(out.shape[0] * out.shape[1])
        return out

    monkeypatch.setattr(module, "_resize", recording_resize)
    growth = DegradationSpec(op_probabilities=(("resize", 1.0),), recompress_p=1.0, recompress_cycles=(5, 5))
    image = flat(128, shape=(40, 30))
    largest = 0
    for seed in range(300):
        sizes.clear()
        out, _ = degrade(image, rng(seed), growth)
        assert out.shape == image.shape
        largest = max(largest, *sizes)
    assert 3.6 * image[..., 0].size <= largest <= 4 * image[..., 0].size


def test_one_rescale_op_is_held_to_the_same_limit(monkeypatch):
    """apply_op('resize') upscaled by up to 2 per side whatever the image's size (a 40 MP
    photograph grew to 160 MP); it meets the compound pipeline's limit (lowered here to 2x the
    input so that small images reach it)."""
    import dfd.calibration.degrade as module

    sizes: list[int] = []
    resize = module.cv2.resize

    def recording_resize(img, size, **kwargs):
        sizes.append(size[0] * size[1])
        return resize(img, size, **kwargs)

    image = flat(128, shape=(40, 30))
    monkeypatch.setattr(module, "DEFAULT_MAX_PIXELS", 2 * image[..., 0].size)
    monkeypatch.setattr(module.cv2, "resize", recording_resize)
    for seed in range(40):
        assert apply_op("resize", image, 0.5, rng(seed)).shape == image.shape
    assert 1.8 * image[..., 0].size <= max(sizes) <= 2 * image[..., 0].size


def test_the_working_pixel_limit():
    from dfd.calibration.degrade import working_pixel_limit

    assert working_pixel_limit(100, 200) == 80_000
    assert working_pixel_limit(5000, 5000) == 64_000_000  # 4x would be 100 MP
    assert working_pixel_limit(9000, 8000) == 72_000_000  # already above 64 MP: never grows




# ------------------------------------------------------------------------------ settings, draws and fixed chains


def test_paper_spec_is_the_documented_table():
    """Every rate of the module docstring: op_p 0.3, the shared slots split (0.2 / 0.8 and
    0.33 / 0.33 / 0.34 of 0.3), banding 0.3 x 0.5, the prelude 0.3 with 1 to 5 cycles."""
    expected = {name: 0.3 for name in OPS}
    expected.update(speckle_noise=0.3 * 0.33, poisson_noise=0.3 * 0.33, salt_and_pepper=0.3 * 0.34,
                    colour_cast=0.3 * 0.8, grayscale=0.3 * 0.2, banding=0.3 * 0.5)
    assert dict(PAPER_SPEC.op_probabilities) == pytest.approx(expected)
    assert (PAPER_SPEC.recompress_p, PAPER_SPEC.recompress_cycles) == (pytest.approx(0.3), (1, 5))


def test_spec_and_image_limits_raise_readable_errors(photo):
    with pytest.raises(DegradationError, match="listed twice"):
        DegradationSpec(op_probabilities=(("jpeg", 0.5), ("moire", 0.1), ("jpeg", 0.2)))
    with pytest.raises(DegradationError, match="probability of 'jpeg'"):
        DegradationSpec(op_probabilities=(("jpeg", -0.1),))
    for a, b in ((0.0, 1.2), (1.2, 0.0), (1.2, -1.0)):
        with pytest.raises(DegradationError, match="Beta parameters"):
            DegradationSpec(op_probabilities=(), beta_a=a, beta_b=b)
    for value in (-0.1, 1.5):
        with pytest.raises(DegradationError, match="max_strength"):
            DegradationSpec(op_probabilities=(), max_strength=value)
        with pytest.raises(DegradationError, match="recompress_p"):
            DegradationSpec(op_probabilities=(), recompress_p=value)
    for cycles in ((0, 2), (3, 2)):
        with pytest.raises(DegradationError, match="recompress_cycles"):
            DegradationSpec(op_probabilities=(), recompress_cycles=cycles)
    assert DegradationSpec(op_probabilities=(), recompress_cycles=(2, 2)).recompress_cycles == (2, 2)
    with pytest.raises(DegradationError, match="strength"):
        apply_op("jpeg", photo, -0.1, rng())
    for shape in ((0, 5, 3), (5, 0, 3)):
        with pytest.raises(DegradationError, match="no pixels"):
            apply_op("jpeg", np.zeros(shape, np.uint8), 0.5, rng())


def test_poisson_noise_rounds_to_grey_levels_first_with_its_draws_replayed():
    """The reference's add_Poisson_noise on an image between grey levels: rounded to whole levels,
    photons 10^U(2, 4), per channel or one luma offset (the luma itself rounded to a level)."""
    image = np.random.default_rng(8).random((40, 50, 3)).astype(np.float32)
    branches = set()
    for seed in (0, 1):
        replay = rng(seed)
        photons = 10 ** (2 * replay.random() + 2)
        quantised = np.clip(np.round(image.astype(np.float64) * 255), 0, 255) / 255
        if replay.random() < 0.5:
            noisy, branch = replay.poisson(quantised * photons).astype(np.float32) / np.float32(photons), "channels"
        else:
            gray = np.clip(np.round(np.dot(quantised, [0.299, 0.587, 0.114]) * 255), 0, 255) / 255
            shot = replay.poisson(gray * photons).astype(np.float32) / np.float32(photons) - gray
            noisy, branch = quantised + shot[..., np.newaxis], "luma"
        branches.add(branch)
        expected = np.clip(noisy, 0, 1)
        np.testing.assert_allclose(OPS["poisson_noise"](image, 0.7, rng(seed)), expected, rtol=0, atol=1e-6)
    assert branches == {"channels", "luma"}


def test_colour_gains_and_strong_fades_follow_the_reference_draw(photo):
    """The gain branch, replayed: three gains U(1 -/+ 0.4 s), one time in five the fixed green cast
    (0.8, 1.2, 0.8); at s = 0.9 a fade's factor is U(0.1, 0.2) (the upper bound held at 0.2)."""
    image = photo.astype(np.float32) / 255
    kinds = set()
    for seed in range(30):
        replay = rng(seed)
        if replay.random() < 0.3:
            factor = 0.1 + (0.2 - 0.1) * replay.random()
            expected = np.asarray(ImageEnhance.Color(Image.fromarray(photo)).enhance(factor))
            assert np.array_equal(apply_op("colour_cast", photo, 0.9, rng(seed)), expected), seed
            kinds.add("fade")
            continue
        gains = replay.uniform(0.64, 1.36, size=3)
        green = replay.random() < 0.2
        if green:
            gains = np.array([0.8, 1.2, 0.8])
        expected = np.clip(image * gains.astype(np.float32), 0, 1)
        assert np.array_equal(OPS["colour_cast"](image, 0.9, rng(seed)), expected), seed
        kinds.add("green" if green else "gains")
    assert kinds == {"fade", "green", "gains"}


def test_chromatic_aberration_shift_is_held_inside_a_small_image():
    """max(1, int(4 s)) = 4 pixels, but at most one less than each side: 2 on a 3 x 5 image."""
    image = rng(2).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    out = apply_op("chromatic_aberration", image, 1.0, rng())
    assert np.array_equal(out[2:, 2:, 0], image[:-2, :-2, 0])
    assert np.array_equal(out[:-2, :-2, 2], image[2:, 2:, 2])
    assert np.array_equal(out[..., 1], image[..., 1])


def test_fixed_noise25_is_independent_per_channel():
    residual = fixed_degradation("noise25")(flat(128, (200, 200))).astype(np.float64) - 128
    channels = residual.reshape(-1, 3).T
    assert np.abs(np.corrcoef(channels) - np.eye(3)).max() < 0.05


def test_fixed_down4_up_is_area_down_then_cubic_up(photo):
    image = photo.astype(np.float32) / 255
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // 4, height // 4), interpolation=cv2.INTER_AREA)
    expected = np.clip(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert np.array_equal(fixed_degradation("down4_up")(photo), np.rint(expected * 255).astype(np.uint8))


def test_fixed_compound_b_is_a_warm_cast():
    """Gains (1.1, 0.95, 0.8) then gamma 1.6 on flat grey: red above green above blue."""
    out = fixed_degradation("compound_b")(flat(128, (100, 100))).astype(np.float64)
    red, green, blue = (out[40:60, 40:60, c].mean() for c in range(3))
    # 255 (128 / 255 x gain)^1.6 = 99, 78, 59 before vignetting; JPEG 20 moves flat colours a little
    assert red > green + 10 > blue + 20


def test_gaussian_noise_branch_draw_between_six_and_seven_tenths_is_colour_noise():
    """Seed 9's branch draw is 0.603: colour noise (under 0.7), one value per channel, as replayed."""
    replay = rng(9)
    low = 2 if replay.random() < 0.2 else 60
    sigma = float(replay.integers(low, 101)) * 0.3
    assert 0.6 <= replay.random() < 0.7
    residual = apply_op("gaussian_noise", flat(128, (160, 160)), 0.3, rng(9)).astype(np.float64) - 128
    assert not np.array_equal(residual[..., 0], residual[..., 1])
    for channel in range(3):
        assert residual[..., channel].std() == pytest.approx(sigma, rel=0.04)


def test_the_prelude_skips_its_rescales_once_either_side_is_ten_pixels_or_less():
    """The reference rescales in the prelude only while both sides are above 10 pixels: a tall
    8-pixel-wide strip and a wide 8-pixel-high one get JPEG cycles only."""
    spec = DegradationSpec(op_probabilities=(), recompress_p=1.0)
    for image in (flat(128, (60, 8)), flat(128, (8, 60))):
        for seed in range(6):
            out, applied = degrade(image, rng(seed), spec)
            assert {op.name for op in applied} == {"jpeg"} and out.shape == image.shape, (image.shape, seed)


def test_an_image_that_keeps_its_size_costs_no_draw_for_the_final_resize():
    """verify's paper_compound draws again from the same generator when nothing fired, so the
    draws degrade consumes are part of its result: with no op and no prelude, exactly the
    prelude's coin and the (empty) op order, no interpolation draw for a resize that is not needed."""
    generator = rng(5)
    out, applied = degrade(flat(90, (12, 14)), generator, DegradationSpec(op_probabilities=(), recompress_p=0.0))
    replay = rng(5)
    replay.random()
    replay.permutation(0)
    assert applied == [] and np.array_equal(out, flat(90, (12, 14)))
    assert generator.random() == replay.random()
