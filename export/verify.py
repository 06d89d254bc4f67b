"""``dfd-export verify``: is an engine set still the fp32 detector, on clean and degraded images?

The engine set runs through the lean runtime; the reference is the fp32 PyTorch stream modules
rebuilt from the same checkpoints (or the same random seed) that the manifest records. Both get
the identical preprocessed tensors, so every difference is the engine's. Reported per stream:
max and mean |ΔP(fake)|; for the ensemble: how often the discretised vote stays the same, and
which images' votes changed. The paper's point is robustness under degradation, so degraded
copies are checked too (``--degrade``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dfd.calibration.degrade import fixed_degradation
from dfd.calibration.sources import builtin_photographs, list_images
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError
from dfd.runtime.images import ImageError, decode_image
from dfd.runtime.manifest import Manifest
from dfd.runtime.vote import discretised_vote, softmax_fake_probability

from .build import BuildRequest, load_stream_module
from .checkpoint import LoraSettings
from .configs import ClipVisionConfig, DinoV2Config

VERIFY_DEGRADATIONS = ("jpeg10", "blur3", "noise25", "compound_a", "compound_b")
# Acceptance thresholds per precision: (max |ΔP|, mean |ΔP|, min vote agreement)
DEFAULT_THRESHOLDS = {"fp32": (1e-4, 1e-4, 1.0), "fp16": (5e-3, 5e-3, 1.0), "int8": (1.0, 0.02, 0.95)}


def engine_set_precision(manifest: Manifest) -> str:
    """The lowest precision among the set's streams: the one whose thresholds apply."""
    precisions = {s.precision for s in manifest.streams.values()}
    return next((p for p in ("int8", "fp16") if p in precisions), "fp32")


@dataclass
class VerifyReport:
    precision: str
    images: int = 0
    per_condition: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, dict[str, float]] = field(default_factory=dict)
    vote_agreement: float = 1.0
    changed_votes: list[dict[str, Any]] = field(default_factory=list)
    failed_images: list[dict[str, str]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _reference_streams(detector: Detector, weights_dir: Path | None) -> dict[str, torch.nn.Module]:
    """The fp32 PyTorch streams the set was built from, rebuilt from what its manifest records."""
    raw = detector.manifest.raw
    build = raw.get("build", {})
    recorded = build.get("weights_dir")
    weights = Path(weights_dir) if weights_dir else (Path(recorded) if recorded else None)
    if raw.get("random_weights"):
        if weights_dir:
            raise DfdError(f"--weights-dir {weights_dir}: this engine set was built with random weights, not from "
                           f"checkpoints, so there is nothing to load from it; leave --weights-dir out")
        weights = None
    elif weights is None or not weights.is_dir():
        raise DfdError(f"the checkpoints this set was built from ({recorded}) are not there; pass --weights-dir")
    lora = LoraSettings(**build.get("lora", {})) if build.get("lora") else LoraSettings()
    modules = {}
    for name in detector.streams:
        arch = raw["streams"][name]["architecture"]
        dino = DinoV2Config(**arch["dinov2"])
        clip = ClipVisionConfig(**arch["clip"]) if "clip" in arch else None
        request = BuildRequest(out_dir=Path("."), weights_dir=weights, seed=build.get("seed", 0), lora=lora)
        module, source = load_stream_module(name, request, dino, clip)
        expected = raw["streams"][name].get("source", {}).get("checkpoint")
        if expected and source["checkpoint"] and source["checkpoint"]["sha256"] != expected["sha256"]:
            raise DfdError(f"{name}: checkpoint {source['checkpoint']['file']} differs from the one the set was built from")
        modules[name] = module
    return modules


def _image_sources(images_dir: Path | None) -> list[tuple[str, Path | np.ndarray]]:
    """(label, source) of each image to verify: a file of ``images_dir``, decoded only when its
    turn comes, so a folder of photographs is never held in memory at once; or a built-in
    photograph (a few, already decoded)."""
    if images_dir is None:
        return builtin_photographs()
    return [(str(path), path) for path in list_images(images_dir)]


def verify_engine_set(engine_dir: Path, images_dir: Path | None = None, degrade: bool = False,
                      weights_dir: Path | None = None, thresholds: tuple[float, float, float] | None = None,
                      backend: str = "auto") -> VerifyReport:
    # host preprocessing: each stream graph is compared with torch on the very tensor it ran
    detector = Detector.open(engine_dir, backend=backend, gpu_preprocessing=False)
    precision = engine_set_precision(detector.manifest)
    max_abs, max_mean, min_agreement = thresholds or DEFAULT_THRESHOLDS[precision]
    reference = _reference_streams(detector, weights_dir)
    report = VerifyReport(precision, thresholds={"max_abs_dp": max_abs, "mean_dp": max_mean,
                                                 "min_vote_agreement": min_agreement})
    conditions = [("clean", None)] + ([(d, fixed_degradation(d)) for d in VERIFY_DEGRADATIONS] if degrade else [])
    sources = _image_sources(images_dir)
    deltas: dict[str, list[float]] = {s: [] for s in detector.streams}
    counts = {condition: [0, 0] for condition, _ in conditions}  # votes that agree, images compared
    progress = tqdm(total=len(sources) * len(conditions), desc="verify", unit="img", file=sys.stderr)
    for label, source in sources:
        try:  # one decode per image for all conditions; one unreadable file does not stop the others
            rgb = decode_image(source).rgb if isinstance(source, Path) else source
        except ImageError as error:
            report.failed_images.append({"image": label, "error": str(error)})
            progress.update(len(conditions))
            continue
        for condition, transform in conditions:
            image = transform(rgb) if transform else rgb
            prepared = detector.prepare(image, f"{label} [{condition}]")
            progress.update(1)
            if not prepared.detection.ok:
                report.failed_images.append({"image": prepared.detection.image, "error": prepared.detection.error})
                continue
            engine_p, reference_p = {}, {}
            for stream in detector.streams:
                batch = prepared.tensors[stream][None]
                engine_p[stream] = float(softmax_fake_probability(detector.backend.run(stream, batch))[0])
                with torch.no_grad():
                    logits = reference[stream](torch.from_numpy(batch)).numpy()
                reference_p[stream] = float(softmax_fake_probability(logits)[0])
                deltas[stream].append(abs(engine_p[stream] - reference_p[stream]))
            engine_vote = discretised_vote(engine_p, detector.vote_weights).score
            reference_vote = discretised_vote(reference_p, detector.vote_weights).score
            same = engine_vote == reference_vote
            counts[condition][0] += same
            counts[condition][1] += 1
            if not same:
                report.changed_votes.append({"image": prepared.detection.image, "engine": engine_vote,
                                             "reference": reference_vote})
    progress.close()
    report.per_condition = {condition: {"images": compared, "vote_agreement": agreed / compared if compared else None}
                            for condition, (agreed, compared) in counts.items()}
    agree = sum(agreed for agreed, _ in counts.values())
    total = report.images = sum(compared for _, compared in counts.values())
    if total == 0:
        first = (f"; the first, {report.failed_images[0]['image']}: {report.failed_images[0]['error']}"
                 if report.failed_images else "")
        raise DfdError(f"no image could be verified ({len(report.failed_images)} could not be read{first})")
    report.vote_agreement = agree / total
    report.streams = {s: {"max_abs_dp": float(np.max(d)), "mean_abs_dp": float(np.mean(d))} for s, d in deltas.items()}
    report.passed = (report.vote_agreement >= min_agreement
                     and all(v["max_abs_dp"] <= max_abs and v["mean_abs_dp"] <= max_mean for v in report.streams.values()))
    return report
