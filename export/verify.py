"""``dfd-export verify``: is an engine set still the fp32 detector, on clean and degraded images?

The engine set runs through the lean runtime; the reference is the fp32 PyTorch stream modules
rebuilt from the same checkpoints (or the same random seed) that the manifest records. Both get
the identical preprocessed tensors, so every difference is the engine's. Reported per stream:
max and mean |ΔP(fake)|; for the ensemble: how often the discretised vote stays the same, and
which images' votes changed. The paper's point is robustness under degradation, so degraded
copies are checked too (``--degrade``), and each condition must keep the votes on its own.

A pass is only as good as its sample, so the report also says how many distinct photographs it
rests on (duplicates counted once), a lower confidence bound on the agreement, how many of the
photographs the set was calibrated on (agreement there is optimistic), and which engine set,
backend and images it measured.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dfd.calibration.degrade import degrade as paper_degrade
from dfd.calibration.degrade import fixed_degradation, image_rng
from dfd.calibration.sources import builtin_photographs, scan_image_folder
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError, first_few
from dfd.runtime.images import DEFAULT_MAX_PIXELS, ImageError, array_sha256, decode_image
from dfd.runtime.manifest import CONTENT_HASH_KEY, STREAM_ORDER, Manifest
from dfd.runtime.progress import progress_bar
from dfd.runtime.vote import discretised_vote, softmax_fake_probability

from .build import load_reference_stream
from .recorded_build import RecordedBuild, read_recorded_build

VERIFY_DEGRADATIONS = ("jpeg10", "blur3", "noise25", "compound_a", "compound_b")
# Acceptance thresholds per precision: (max |ΔP|, mean |ΔP|, min vote agreement)
DEFAULT_THRESHOLDS = {"fp32": (1e-4, 1e-4, 1.0), "fp16": (5e-3, 5e-3, 1.0), "int8": (1.0, 0.02, 0.95)}


def engine_set_precision(manifest: Manifest) -> str:
    """The lowest precision among the set's streams: the one whose thresholds apply."""
    precisions = {s.precision for s in manifest.streams.values()}
    return next((p for p in ("int8", "fp16") if p in precisions), "fp32")


VOTE_STEP = 0.1
MAX_VOTE_STEPS = 1
"""A vote may move by one step (0.1) where the weighted mean sits at a rounding boundary, which a
tiny |ΔP| can cross; a larger move means the engine computes something else, whatever the
agreement."""
CONFIDENCE = 0.95
FEW_DISTINCT_IMAGES = 30
"""Below this many distinct images the lower bound on the agreement is weak: with all 30 votes the
same it is 90.5 % (Clopper-Pearson, one-sided 95 %)."""
BUILTIN_IMAGES = "photographs shipped in installed packages"


@dataclass
class VerifyReport:
    precision: str
    backend: str = ""  # the backend the engines ran on, and why (``Detector.backend_reason``)
    engine_set_sha256: str = ""  # the manifest's content_sha256
    # what the engines were compared with: {"weights": "checkpoints", "checkpoints": {stream: {"file",
    # "sha256"}}} or {"weights": "random", "seed": n}
    reference: dict[str, Any] = field(default_factory=dict)
    image_source: str = ""  # the --images folder, or BUILTIN_IMAGES
    images: int = 0  # image x condition comparisons
    distinct_images: int = 0  # compared images with distinct decoded pixels
    duplicate_images: list[dict[str, str]] = field(default_factory=list)  # {"image", "same_as"}: verified once
    per_condition: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, dict[str, float]] = field(default_factory=dict)
    vote_agreement: float = 1.0
    # pooled over image x condition pairs, which are not independent (one photograph under several
    # degradations): optimistic beside the per-condition bounds
    vote_agreement_lower_bound: float = 0.0
    confidence: dict[str, Any] = field(default_factory=dict)  # {"level", "method"} of the lower bounds
    changed_votes: list[dict[str, Any]] = field(default_factory=list)
    # comparisons where the engine gave no probability ({"image", "streams"}: NaN/inf, e.g. an fp16
    # overflow): each counts as a changed vote and fails the set
    non_finite: list[dict[str, Any]] = field(default_factory=list)
    largest_vote_change: dict[str, Any] | None = None  # the changed vote with the most steps
    # verified images the set was calibrated on; "unknown" when its manifest does not record them;
    # None for a set without calibration (fp32)
    calibration_overlap: int | str | None = None
    failed_images: list[dict[str, str]] = field(default_factory=list)
    # {"image", "notes"}: how a verified image was decoded where it was not plain (truncated or corrupt
    # data filled in as cv2.imread fills it, a reduced decode, a conversion), as detect notes it
    decode_notes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # each rule broken, in words
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


PAPER_COMPOUND = "paper_compound"
_PAPER_COMPOUND_TRIES = 100


def paper_compound(rgb: np.ndarray) -> np.ndarray:
    """One draw of the paper's random compound degradation engine, seeded by the image's pixels
    (the same image always gets the same draw). The fixed conditions miss most of its families
    (salt-and-pepper, glitch lines, moiré, banding, chroma subsampling, ...); across images this
    condition reaches them. A draw in which no operation fired is drawn again."""
    rng = image_rng(0, rgb)
    for _ in range(_PAPER_COMPOUND_TRIES):
        degraded, applied = paper_degrade(rgb, rng)
        if applied:
            return degraded
    return degraded


def vote_steps(engine: float, reference: float) -> int:
    """How many 0.1 steps two votes are apart. Votes are one-decimal floats (0.8 - 0.7 is
    0.10000000000000009), so the difference is rounded to whole steps, not compared with 0.1."""
    return round(abs(engine - reference) / VOTE_STEP)


def limit_as_typed(value: float) -> str:
    """A threshold as the user typed it: to 12 digits (``:g``'s 6 showed 2.98022500001e-07 as
    2.98023e-07, beside a measurement of the same digits), or whole where 12 digits would read back
    as another number. Shown so, a limit is never rounded onto the other side of a measurement."""
    text = f"{value:.12g}"
    return text if float(text) == value else repr(value)


def typed_decimal(value: float) -> Fraction:
    """The decimal a threshold was typed as, exactly: 0.9 is 9/10, not the binary float just above
    it, which 9 of 10 votes would fall short of."""
    return Fraction(limit_as_typed(value))


def _percent(share: Fraction, decimals: int) -> str:
    """``share`` as a percentage rounded half to even to ``decimals`` places, in exact arithmetic
    (a float's ×100 and ``:%`` round on their own)."""
    digits = str(round(share * 100 * 10**decimals)).rjust(decimals + 1, "0")  # a share is not negative
    whole, fraction = digits[:len(digits) - decimals], digits[len(digits) - decimals:]
    return f"{whole}{'.' + fraction if decimals else ''}%"


def share_text(share: float, decimals: int = 1) -> str:
    """A share as a percentage with ``decimals`` places, or more where fewer would round a share
    below 1 up to 100% or one above 0 down to 0%: 1999 of 2000 read "100.0%" beside a FAILED line
    that said 99.95% < 100%."""
    while True:
        shown = f"{share:.{decimals}%}"
        rounded_away = (share < 1 and float(shown[:-1]) >= 100) or (share > 0 and float(shown[:-1]) == 0)
        if not rounded_away or decimals >= 17:
            return shown
        decimals += 1


def lower_bound_text(bound: float, decimals: int = 1) -> str:
    """A confidence lower bound as a percentage rounded down, never up: rounded to the nearest, a
    bound of 99.763% read "lower bound 99.8%", a claim the data do not support."""
    scale = 100 * 10**decimals
    return _percent(Fraction(math.floor(Fraction(bound) * scale), scale), decimals)


def share_as_typed(share: float) -> str:
    """A share threshold as the percentage the user typed: 0.95 as "95%", 0.955 as "95.5%",
    0.9500000000000001 as "95.00000000000001%" (it read "95%", beside a failing 95.0%)."""
    typed = typed_decimal(share)
    decimals = 0
    while (typed * 100 * 10**decimals).denominator != 1:  # a decimal: it ends
        decimals += 1
    return _percent(typed, decimals)


def beside_limit(value: float, limit: float) -> tuple[str, str]:
    """A |dP| measurement and the limit it broke, the measurement with as many digits as it takes
    to read on the side of the limit it is on ("5.00e-03 > 0.005" read as a contradiction)."""
    above = value > limit
    for digits in range(2, 18):  # 17 significant digits read back as the float itself
        shown = f"{value:.{digits}e}"
        if (float(shown) > limit) if above else (float(shown) < limit):
            break
    return shown, limit_as_typed(limit)


def share_beside_limit(agreed: int, compared: int, limit: float) -> tuple[str, str]:
    """An agreement and the minimum it fell short of, as percentages, the agreement with as many
    decimals as it takes to read below the minimum as typed: "100.0% < 100%" (1999 of 2000) and
    "95.00000000000000000% < 95.0%" read as contradictions. Exact: the share is a ratio of counts
    and the minimum the decimal typed, so no rounding of either decides the side."""
    share, bound = Fraction(agreed, compared), typed_decimal(limit)
    decimals = 1
    while not Fraction(_percent(share, decimals)[:-1]) < bound * 100:
        decimals += 1  # ends: the share is below the bound, and enough decimals read it there
    return _percent(share, decimals), share_as_typed(limit)


def judge(counts: Mapping[str, Sequence[int]], changed_votes: Sequence[Mapping[str, Any]],
          condition_streams: Mapping[str, Mapping[str, Mapping[str, float]]],
          thresholds: tuple[float, float, float], non_finite: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Each rule the comparison breaks, in words; none: it passes.

    ``counts``: condition -> (votes that stayed the same, images compared); ``changed_votes``:
    {"image", "reference", "engine", "steps"}; ``condition_streams``: condition -> stream ->
    {"max_abs_dp", "mean_abs_dp"}; ``thresholds``: (max |ΔP|, mean |ΔP|, min vote agreement);
    ``non_finite``: {"image", "streams"} where the engine gave NaN/inf. Each condition must reach
    the agreement and the |ΔP| limits on its own, since a pooled figure lets a degradation that
    breaks the engine hide behind the clean images, and robustness to degradation is what the
    detector is for. A vote that moves more than one step, or an engine that gives no
    probability, fails whatever the agreement.
    """
    max_abs, max_mean, min_agreement = thresholds
    failures = []
    for condition, (agreed, compared) in counts.items():
        if compared == 0:
            failures.append(f"{condition}: no image could be compared")
        elif Fraction(agreed, compared) < typed_decimal(min_agreement):
            shown, limit = share_beside_limit(agreed, compared, min_agreement)
            failures.append(f"{condition}: vote agreement {shown} < {limit} ({agreed} of {compared} votes the same)")
    moved = sorted((c for c in changed_votes if c["steps"] > MAX_VOTE_STEPS), key=lambda c: -c["steps"])
    if moved:
        worst, others = moved[0], len(moved) - 1
        failures.append(f"{worst['image']}: vote {worst['reference']} -> {worst['engine']} moved {worst['steps']} steps"
                        + (f" ({others} other vote(s) moved more than {MAX_VOTE_STEPS} step too)" if others else ""))
    if non_finite:
        first = non_finite[0]
        failures.append(f"{len(non_finite)} comparison(s) gave a non-finite engine probability; the first: "
                        f"{first['image']} ({', '.join(first['streams'])} stream)")
    for condition, streams in condition_streams.items():
        for stream, values in streams.items():
            for key, what, limit in (("max_abs_dp", "max", max_abs), ("mean_abs_dp", "mean", max_mean)):
                if values[key] > limit:
                    shown, shown_limit = beside_limit(values[key], limit)
                    failures.append(f"{condition}: {stream}: {what} |dP| {shown} > {shown_limit}")
    return failures


def clopper_pearson_lower_bound(agreed: int, compared: int, confidence: float = CONFIDENCE) -> float:
    """Exact (Clopper-Pearson) one-sided lower confidence bound on a proportion: its coverage is
    never below ``confidence``, however few the images."""
    from scipy.stats import beta

    return 0.0 if agreed == 0 else float(beta.ppf(1 - confidence, agreed, compared - agreed + 1))


def wilson_lower_bound(agreed: int, compared: int, confidence: float = CONFIDENCE) -> float:
    """Wilson score one-sided lower confidence bound: needs no scipy; near 100 % agreement it is a
    little higher (less cautious) than Clopper-Pearson's."""
    z = NormalDist().inv_cdf(confidence)
    share = agreed / compared
    centre = share + z * z / (2 * compared)
    spread = z * math.sqrt(share * (1 - share) / compared + z * z / (4 * compared * compared))
    return max(0.0, (centre - spread) / (1 + z * z / compared))


def agreement_bound() -> tuple[str, Callable[[int, int], float]]:
    """The lower-bound method and its name for the report: Clopper-Pearson where scipy is
    installed (scikit-image brings it; dfd-export does not depend on it), else Wilson."""
    if importlib.util.find_spec("scipy") is None:
        return f"Wilson score, one-sided {CONFIDENCE:.0%}", wilson_lower_bound
    return f"Clopper-Pearson (exact), one-sided {CONFIDENCE:.0%}", clopper_pearson_lower_bound


def _reference_streams(build: RecordedBuild, weights_dir: Path | None,
                       report: VerifyReport) -> dict[str, torch.nn.Module]:
    """The fp32 PyTorch streams the set was built from, rebuilt from what its manifest records;
    ``report.reference`` says which."""
    weights = build.checkpoint_folder(weights_dir)
    if build.random_weights:
        if weights_dir:
            raise DfdError(f"--weights-dir {weights_dir}: this engine set was built with random weights, not from "
                           f"checkpoints, so there is nothing to load from it; leave --weights-dir out")
    elif weights is None or not weights.is_dir():
        if weights_dir:
            raise DfdError(f"--weights-dir {weights_dir} is not a folder of checkpoints")
        raise DfdError(f"the checkpoints this set was built from ({build.weights_dir}) are not there; "
                       f"pass --weights-dir")
    modules = {}
    for name, stream in build.streams.items():
        modules[name] = load_reference_stream(build, name, weights)
        if stream.checkpoint:
            report.reference.setdefault("checkpoints", {})[name] = {
                "file": str(weights / stream.checkpoint.file), "sha256": stream.checkpoint.sha256}
    report.reference["weights"] = "checkpoints" if weights else "random"
    if weights is None:
        report.reference["seed"] = build.seed
    return modules


def _image_sources(images_dir: Path | None, report: VerifyReport) -> tuple[list[tuple[str, Path | np.ndarray]],
                                                                          list[str]]:
    """(label, source) of each image to verify: a file of ``images_dir``, decoded only when its
    turn comes, so a folder of photographs is never held in memory at once; or a built-in
    photograph (a few, already decoded). And warnings about the folder: the files left out by
    their suffix, the linked folders not followed. A sub-folder that cannot be listed goes to
    ``report.failed_images``, as a file that cannot be read does: left out, or with --strict a
    failure."""
    if images_dir is None:
        return builtin_photographs(), []
    found = scan_image_folder(images_dir)
    report.failed_images += [{"image": folder, "error": why} for folder, why in found.unlisted()]
    return [(str(path), path) for path in found.images], found.warnings(Path(images_dir))


def _stream_probabilities(detector: Detector, reference: Mapping[str, torch.nn.Module],
                          tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """P(fake) of each stream from the engine and from the fp32 reference, on the very same tensor."""
    engine_p, reference_p = {}, {}
    for stream in detector.streams:
        batch = tensors[stream][None]
        engine_p[stream] = float(softmax_fake_probability(detector.backend.run(stream, batch))[0])
        with torch.no_grad():
            logits = reference[stream](torch.from_numpy(batch)).numpy()
        reference_p[stream] = float(softmax_fake_probability(logits)[0])
    return engine_p, reference_p


Condition = tuple[str, Callable[[np.ndarray], np.ndarray] | None]  # a name and its transform (None: clean)


@dataclass
class _Tally:
    """What the comparisons add up to, before the report summarises it."""

    counts: dict[str, list[int]]  # condition -> [votes that stayed the same, images compared]
    deltas: dict[str, dict[str, list[float]]]  # condition -> stream -> |ΔP| of every comparison
    verified: dict[str, str] = field(default_factory=dict)  # array_sha256 -> label, of compared images
    first_seen: dict[str, str] = field(default_factory=dict)  # array_sha256 -> label of the first image


def _compare_images(detector: Detector, reference: Mapping[str, torch.nn.Module],
                    sources: Sequence[tuple[str, Path | np.ndarray]],
                    conditions: Sequence[Condition], report: VerifyReport) -> _Tally:
    """Run every distinct image under every condition through both; changed votes, unreadable
    images and duplicates go to ``report``. A duplicate (the same decoded pixels as an earlier
    image, under any name or format) is verified once: it would only repeat the same votes and
    make the sample look larger than it is."""
    tally = _Tally({condition: [0, 0] for condition, _ in conditions},
                   {condition: {s: [] for s in detector.streams} for condition, _ in conditions})
    with progress_bar(total=len(sources) * len(conditions), desc="verify", unit="img") as progress:
        for label, source in sources:
            _compare_image(detector, reference, label, source, conditions, report, tally, progress)
    return tally


def _compare_image(detector: Detector, reference: Mapping[str, torch.nn.Module], label: str,
                   source: Path | np.ndarray, conditions: Sequence[Condition], report: VerifyReport,
                   tally: _Tally, progress: tqdm) -> None:
    """One image under every condition. The clean condition gets the file itself, as ``detect``
    does: a JPEG's face input is then re-encoded as the reference's crop step does."""
    try:  # one decode per image for all conditions; one unreadable file does not stop the others
        decoded = decode_image(source, max_pixels=detector.max_pixels) if isinstance(source, Path) else None
    except ImageError as error:
        report.failed_images.append({"image": label, "error": str(error)})
        progress.update(len(conditions))
        return
    rgb = source if decoded is None else decoded.rgb
    digest = array_sha256(rgb)
    if digest in tally.first_seen:
        report.duplicate_images.append({"image": label, "same_as": tally.first_seen[digest]})
        progress.update(len(conditions))
        return
    tally.first_seen[digest] = label
    if decoded is not None and decoded.notes:
        report.decode_notes.append({"image": label, "notes": list(decoded.notes)})
    left_out_under: list[str] = []  # the conditions under which it could not be prepared
    reasons: list[str] = []  # why, each reason once
    for condition, transform in conditions:
        image = transform(rgb) if transform else source if isinstance(source, Path) else rgb
        prepared = detector.prepare(image, f"{label} [{condition}]")
        progress.update(1)
        if not prepared.detection.ok:
            left_out_under.append(condition)
            if prepared.detection.error not in reasons:
                reasons.append(prepared.detection.error)
            continue
        engine_p, reference_p = _stream_probabilities(detector, reference, prepared.tensors)
        tally.verified[digest] = label
        tally.counts[condition][1] += 1
        broken = [s for s, p in engine_p.items() if not 0.0 <= p <= 1.0]  # NaN fails both comparisons
        for stream in detector.streams:  # the streams that gave a probability count, whatever the others gave
            if stream not in broken:
                tally.deltas[condition][stream].append(abs(engine_p[stream] - reference_p[stream]))
        if broken:
            report.non_finite.append({"image": prepared.detection.image, "streams": broken})
            continue
        engine_vote = discretised_vote(engine_p, detector.vote_weights).score
        reference_vote = discretised_vote(reference_p, detector.vote_weights).score
        tally.counts[condition][0] += engine_vote == reference_vote
        if engine_vote != reference_vote:
            report.changed_votes.append({"image": prepared.detection.image, "engine": engine_vote,
                                         "reference": reference_vote,
                                         "steps": vote_steps(engine_vote, reference_vote)})
    if left_out_under:  # one input, however many of its conditions it was left out of
        report.failed_images.append({"image": label, "error": "; ".join(reasons), "conditions": left_out_under})


def _calibration_overlap(build: RecordedBuild, verified: Mapping[str, str]) -> tuple[int | str | None, list[str]]:
    """How many verified images the set was calibrated on, and the warning that goes with it.
    Agreement on a calibration image is optimistic: the INT8 ranges were fitted to it. A set
    without calibration (fp32) says nothing; a manifest written before the calibration images'
    hashes were recorded cannot tell."""
    if not build.calibrated:
        return None, []
    if build.calibration_images is None:
        return "unknown", ["this engine set's manifest does not record which images it was calibrated on (built "
                           "before that was recorded), so whether verified images were among them is unknown; "
                           "rebuild the set to know"]
    shared = [label for digest, label in verified.items() if digest in build.calibration_images]
    if not shared:
        return 0, []
    return len(shared), [f"{len(shared)} of the {len(verified)} verified image(s) were calibration images of this set "
                         f"({first_few(shared, 3)}): agreement on them is optimistic; verify with --images on "
                         f"photographs the set was not calibrated on"]


def _delta_summary(deltas: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """stream -> {"max_abs_dp", "mean_abs_dp"} of its |ΔP|s (streams without one left out: every
    comparison of that condition gave a non-finite probability)."""
    return {s: {"max_abs_dp": float(np.max(d)), "mean_abs_dp": float(np.mean(d))} for s, d in deltas.items() if d}


def _reference_warnings(build: RecordedBuild, report: VerifyReport) -> list[str]:
    """What limits the comparison itself: a random-weights reference is rebuilt from the seed, which
    only reproduces the build's weights under the same torch; a set of fewer streams is not the
    paper's ensemble."""
    warnings = []
    if report.reference.get("weights") == "random":
        built_with = build.versions.get("torch")
        # the package version, as the build records it: torch.__version__ adds the wheel's local
        # tag (2.14.1+cu130), which is no other torch
        try:
            running = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:  # a torch without package metadata (a source tree)
            running = torch.__version__.split("+")[0]
        warnings.append(f"this engine set has RANDOM weights: the reference is rebuilt from seed "
                        f"{report.reference['seed']}" + (
                            f", under torch {running} where the set was built under torch {built_with}; "
                            f"large differences may be the reference's, not the engine's"
                            if built_with and built_with != running else ""))
    streams = list(build.streams)
    if len(streams) < len(STREAM_ORDER):
        warnings.append(f"this engine set has only the {', '.join(streams)} stream(s): the votes compared are "
                        f"theirs, not the paper's three-stream ensemble")
    return warnings


def _sample_warnings(report: VerifyReport, bound: Callable[[int, int], float]) -> list[str]:
    """Why the sample may be weaker than its image x condition count suggests."""
    warnings = []
    if report.failed_images:
        warnings.append(f"{len(report.failed_images)} input(s) could not be read or prepared, so the comparison "
                        f"leaves them out (listed in failed_images)")
    if report.decode_notes:
        first = report.decode_notes[0]
        warnings.append(f"{len(report.decode_notes)} verified image(s) were not decoded plainly (truncated or corrupt "
                        f"data, a reduced decode, a conversion; listed in decode_notes), so they are not the "
                        f"photographs they may seem; the first, {first['image']}: {'; '.join(first['notes'])}")
    if report.duplicate_images:
        pairs = [f"{d['image']} = {d['same_as']}" for d in report.duplicate_images]
        warnings.append(f"{len(pairs)} image(s) have the same decoded pixels as an earlier one and were verified "
                        f"once: {first_few(pairs, 3, separator='; ')}")
    distinct = report.distinct_images
    if distinct < FEW_DISTINCT_IMAGES:
        warnings.append(f"only {distinct} distinct image(s) were verified, so the {CONFIDENCE:.0%} lower bound on "
                        f"each condition's vote agreement is weak (with every vote the same it is "
                        f"{bound(distinct, distinct):.1%}); pass --images with a folder of more photographs (at "
                        f"least {FEW_DISTINCT_IMAGES}, a few hundred is better)")
    return warnings


def verify_engine_set(engine_dir: Path, images_dir: Path | None = None, degrade: bool = False,
                      weights_dir: Path | None = None, thresholds: tuple[float, float, float] | None = None,
                      backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                      strict: bool = False) -> VerifyReport:
    """Compare the engine set with its fp32 PyTorch streams; ``thresholds`` (max |ΔP|, mean |ΔP|,
    min vote agreement) default by precision (``DEFAULT_THRESHOLDS``). ``max_pixels`` is the
    decoding limit (``decode_image``): a larger JPEG is compared on its reduced decode, as detect
    scores it, any other larger image is reported unreadable. An input that cannot be read or
    prepared is left out with a warning, or, with ``strict``, also fails the set: a release gate
    should not pass on fewer images than it was given."""
    # host preprocessing: each stream graph is compared with torch on the very tensor it ran
    with Detector.open(engine_dir, backend=backend, gpu_preprocessing=False, max_pixels=max_pixels) as detector:
        return _verify_with(detector, images_dir, degrade, weights_dir, thresholds, strict)


def _verify_with(detector: Detector, images_dir: Path | None, degrade: bool, weights_dir: Path | None,
                 thresholds: tuple[float, float, float] | None, strict: bool) -> VerifyReport:
    precision = engine_set_precision(detector.manifest)
    limits = thresholds or DEFAULT_THRESHOLDS[precision]
    method, bound = agreement_bound()
    max_abs, max_mean, min_agreement = limits
    report = VerifyReport(
        precision, backend=detector.backend_reason, engine_set_sha256=detector.manifest.raw[CONTENT_HASH_KEY],
        image_source=str(images_dir) if images_dir is not None else BUILTIN_IMAGES,
        confidence={"level": CONFIDENCE, "method": method},
        thresholds={"max_abs_dp": max_abs, "mean_dp": max_mean, "min_vote_agreement": min_agreement,
                    "min_vote_agreement_applies_to": "each condition",
                    "max_vote_change": round(MAX_VOTE_STEPS * VOTE_STEP, 1),
                    "non_finite": "fail", "unreadable_inputs": "fail" if strict else "left out"})
    build = read_recorded_build(detector.manifest)
    reference = _reference_streams(build, weights_dir, report)
    conditions = [("clean", None)]
    if degrade:
        conditions += [(d, fixed_degradation(d)) for d in VERIFY_DEGRADATIONS] + [(PAPER_COMPOUND, paper_compound)]
    sources, folder_warnings = _image_sources(images_dir, report)
    tally = _compare_images(detector, reference, sources, conditions, report)
    agree = sum(agreed for agreed, _ in tally.counts.values())
    total = report.images = sum(compared for _, compared in tally.counts.values())
    if total == 0:
        first = (f"; the first, {report.failed_images[0]['image']}: {report.failed_images[0]['error']}"
                 if report.failed_images else "")
        raise DfdError(f"no image could be verified ({len(report.failed_images)} could not be read{first})")
    report.distinct_images = len(tally.verified)
    condition_streams = {condition: _delta_summary(deltas) for condition, deltas in tally.deltas.items()}
    report.per_condition = {
        condition: {"images": compared, "vote_agreement": agreed / compared if compared else None,
                    "vote_agreement_lower_bound": bound(agreed, compared) if compared else None,
                    "streams": condition_streams[condition]}
        for condition, (agreed, compared) in tally.counts.items()}
    report.vote_agreement, report.vote_agreement_lower_bound = agree / total, bound(agree, total)
    report.streams = _delta_summary({s: [d for deltas in tally.deltas.values() for d in deltas[s]]
                                     for s in detector.streams})
    report.largest_vote_change = max(report.changed_votes, key=lambda c: c["steps"], default=None)
    report.calibration_overlap, overlap_warnings = _calibration_overlap(build, tally.verified)
    report.warnings = (_reference_warnings(build, report) + folder_warnings
                       + _sample_warnings(report, bound) + overlap_warnings)
    report.failures = judge(tally.counts, report.changed_votes, condition_streams, limits, report.non_finite)
    if strict and report.failed_images:
        first = report.failed_images[0]
        report.failures.append(f"{len(report.failed_images)} input(s) could not be read or prepared (strict); the "
                               f"first, {first['image']}: {first['error']}")
    report.passed = not report.failures
    return report
