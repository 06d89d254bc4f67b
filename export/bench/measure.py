"""The measurement: both pipelines interleaved on the same images, and the result document."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dfd.calibration.degrade_files import write_png
from dfd.runtime.errors import first_few, os_error_text
from dfd.runtime.images import DEFAULT_MAX_PIXELS, DecodedImage

from . import BenchError
from .environment import PeakRss, available_memory_bytes, capture_environment, gpu_memory_used_mib, \
    process_peak_rss_bytes, rss_bytes
from .flops import ensemble_flops
from .pipelines import (STAGES, RuntimePipeline, TorchReferencePipeline, reference_cannot_open, reference_cannot_take,
                        reference_vote)

SCHEMA = "dfd-bench/1"
PERCENTILES = (50, 90, 99)
# Both pipelines resident need about twice the weights; leave room for activations and the OS.
RESIDENT_MEMORY_FACTOR = 2.3
DEFAULT_IMAGE_COUNT = 8


def summarise(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50/p90/p99 (linear interpolation, so always ordered), mean, min, max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise BenchError("no timings to summarise")
    out = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    out.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()))
    return out


def _batch_report(batch: int, totals: Sequence[float], stages: Sequence[dict[str, float]],
                  ensemble_flops_per_image: int | None) -> dict[str, Any]:
    latency = summarise(totals)
    names = [s for s in STAGES if any(s in row for row in stages)]
    stage_ms = {name: summarise([row.get(name, 0.0) for row in stages]) for name in names}
    stage_sum = sum(v["p50"] for v in stage_ms.values())
    report = {
        "batch_size": batch,
        "iterations": len(totals),
        "latency_ms": latency,
        "per_image_ms_p50": latency["p50"] / batch,
        "throughput_images_per_s": batch / (latency["p50"] / 1e3),
        "stages_ms": {name: {"p50": v["p50"], "mean": v["mean"]} for name, v in stage_ms.items()},
        "stage_sum_ms_p50": stage_sum,
    }
    if ensemble_flops_per_image:
        report["achieved_gflop_per_s"] = ensemble_flops_per_image * batch / (latency["p50"] / 1e3) / 1e9
    return report


@dataclass
class BenchImages:
    """The image files a benchmark scores, described for its result document."""

    paths: list[Path]
    source: str  # where they came from
    sizes: list[tuple[int, int]]  # (width, height) of each, as decoded
    skipped: list[dict[str, str]]  # files (and sub-folders) of the folder that could not be read or used, and why
    folder_warnings: tuple[str, ...] = ()  # the folder's files without an image suffix, links not followed

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": len(self.paths), "names": [p.name for p in self.paths],
                "sizes": [f"{w}x{h}" for w, h in self.sizes],
                "skipped": self.skipped}


def bench_images(images_dir: Path | None, work_dir: Path, count: int = DEFAULT_IMAGE_COUNT,
                 stream_sizes: Mapping[str, int] | None = None, compare_torch: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> BenchImages:
    """The image files to score: ``count`` of them at most. A folder's file that cannot be read,
    that the runtime refuses for the streams' ``stream_sizes`` (too elongated to crop), or (with
    ``compare_torch``) that the reference-style pipeline cannot open or take or would read at
    another size (a JPEG over ``max_pixels``, which the runtime decodes reduced), is left out and
    reported: one bad file must not sink a benchmark. A folder's files are taken in order until
    ``count`` are usable; the rest are not opened (the timed batches use only the first
    ``max(batch sizes)`` images, and every image is scored once by each pipeline for the sanity
    check, so a dataset folder would otherwise be scored whole).

    Without a folder: photographs shipped inside installed packages (scikit-image, matplotlib),
    written losslessly as PNG so every pipeline reads the same pixels from a file.
    """
    from dfd.calibration.sources import builtin_photographs, scan_image_folder
    from dfd.runtime.images import ImageError, decode_image
    from dfd.runtime.preprocess import unscorable_reason

    sizes_by_stream = stream_sizes or {}
    paths: list[Path] = []
    sizes: list[tuple[int, int]] = []
    if images_dir is not None:
        found = scan_image_folder(Path(images_dir))
        files = found.images
        skipped = [{"image": folder, "error": why} for folder, why in found.unlisted()]
        for path in files:
            if len(paths) == count:
                break
            unopenable = reference_cannot_open(path) if compare_torch else None
            if unopenable:
                skipped.append({"image": str(path), "error": unopenable})
                continue
            try:
                decoded = decode_image(path, max_pixels=max_pixels)
            except ImageError as error:
                skipped.append({"image": str(path), "error": str(error)})
                continue
            height, width = decoded.rgb.shape[:2]
            refused = unscorable_reason(height, width, sizes_by_stream)
            if not refused and compare_torch:
                refused = (_read_whole_by_the_reference(decoded) if decoded.reduction > 1
                           else reference_cannot_take(width, height, sizes_by_stream))
            if refused:
                skipped.append({"image": str(path), "error": refused})
            else:
                paths.append(path)
                sizes.append((width, height))
        if not paths:
            raise BenchError(f"no image in {images_dir} could be used; the first: {skipped[0]['error']}")
        unused = len(files) - len(paths) - (len(skipped) - len(found.unreadable))
        source = f"folder {images_dir}" + (f" (its first {len(paths)} readable images; {unused} more not used)"
                                           if unused else "")
        return BenchImages(paths, source, sizes, skipped, tuple(found.warnings(Path(images_dir))))
    for name, rgb in builtin_photographs():
        height, width = rgb.shape[:2]
        # the photographs' rule is --compare torch's, with or without it, so both runs time the same images
        if unscorable_reason(height, width, sizes_by_stream) or reference_cannot_take(width, height, sizes_by_stream):
            continue
        path = work_dir / (name.replace(":", "_").rsplit(".", 1)[0] + ".png")
        try:
            write_png(path, rgb)
        except OSError as error:  # cv2.imwrite's failure was ignored and the run failed later, unclearly
            raise BenchError(f"cannot write the benchmark's temporary image {path}: {os_error_text(error)} "
                             f"(set TMPDIR to a folder with room)") from error
        paths.append(path)
        sizes.append((width, height))
        if len(paths) == count:
            break
    if not paths:
        raise BenchError(f"no built-in photograph fits the streams' input sizes {dict(sizes_by_stream)}; "
                         f"pass --images DIR")
    source = "photographs shipped in installed packages (scikit-image, matplotlib), as PNG"
    return BenchImages(paths, source, sizes, skipped=[])


def _read_whole_by_the_reference(decoded: DecodedImage) -> str:
    """Why a JPEG the runtime decoded reduced (over --max-pixels) is left out of --compare torch."""
    full_height, full_width = decoded.full_size_hw
    return (f"a JPEG of {full_width}x{full_height}, over --max-pixels, is decoded reduced (1/{decoded.reduction}) "
            "by the runtime and at full size by the reference pipeline (--compare torch), which would then not "
            "score the same pixels; raise --max-pixels to include it")


def batch_memory_floor(images: BenchImages, batch: int, stream_sizes: Sequence[int]) -> int:
    """Bytes a batch of ``batch`` images holds at once however it runs: its decoded RGB images
    (cycled through ``images`` as ``_batch_of`` cycles them) and each stream's float32 input.
    A floor, not an estimate: activations, engines and the decoders come on top."""
    pixels = [width * height for width, height in images.sizes]
    cycles, rest = divmod(batch, len(pixels))
    decoded = 3 * (cycles * sum(pixels) + sum(pixels[:rest]))
    return decoded + batch * sum(3 * size * size * 4 for size in stream_sizes)


def _batch_of(paths: Sequence[Path], size: int, iteration: int = 0) -> list[Path]:
    """The ``iteration``-th batch of ``size`` images, walking on through ``paths`` (and round again)
    from one iteration to the next: every batch size then times the same mix of images (batch 1
    timed the first image only, and one face-free image in batch 2 made it look 3x slower)."""
    return [paths[(iteration * size + i) % len(paths)] for i in range(size)]


@dataclass(frozen=True)
class BenchSettings:
    engine_dir: Path
    images_dir: Path | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    warmup: int = 2
    iterations: int = 20
    compare_torch: bool = False
    backend: str = "auto"
    label: str | None = None
    weights_dir: Path | None = None  # compare_torch: checkpoints moved since the build (default: the manifest's)
    max_pixels: int = DEFAULT_MAX_PIXELS  # the decoding limit (decode_image)


def _check(settings: BenchSettings) -> None:
    if not settings.batch_sizes or any(b < 1 for b in settings.batch_sizes):
        raise BenchError(f"batch sizes must be positive integers, got {settings.batch_sizes}")
    if settings.iterations < 1 or settings.warmup < 0:
        raise BenchError("--iterations must be at least 1 and --warmup at least 0")
    if settings.weights_dir is not None and not settings.compare_torch:
        raise BenchError("--weights-dir is used only by --compare torch (the engines need no checkpoints)")


def _engine_set_summary(manifest) -> dict[str, Any]:
    entries = manifest.entries()
    return {
        "path": str(Path(manifest.root).resolve()),
        "random_weights": manifest.random_weights,
        "streams": {name: {"input_size": e.input_size, "precision": e.precision, "backend": e.backend,
                           "bytes": sum(f.bytes for f in e.files)} for name, e in manifest.streams.items()},
        "bytes": sum(f.bytes for e in entries for f in e.files),
        "created_utc": manifest.raw.get("created_utc"),
        "build": manifest.raw.get("build"),
    }


def _sanity(runtime_detections: list, torch_probs: dict[str, np.ndarray], weights: dict[str, float]) -> dict[str, Any]:
    """Do both pipelines compute the same thing? Per-stream max |dP| and the vote agreement."""
    streams = list(torch_probs)
    deltas = {s: float(max(abs(d.streams[s] - float(torch_probs[s][i])) for i, d in enumerate(runtime_detections)))
              for s in streams}
    same = sum(d.score == reference_vote({s: float(torch_probs[s][i]) for s in streams}, weights)
               for i, d in enumerate(runtime_detections))
    return {"images": len(runtime_detections), "max_abs_delta_p": deltas,
            "votes_equal": int(same), "votes_total": len(runtime_detections)}


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] = lambda m: None,
                  tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Measure ``settings`` and return the JSON-ready result document.

    ``progress`` receives phase descriptions, ``tick`` is called once per measured iteration.
    """
    from dfd.runtime.manifest import load_manifest

    _check(settings)
    warnings: list[str] = []
    started = datetime.now(timezone.utc)
    environment = capture_environment(warnings, torch_details=settings.compare_torch)
    manifest = load_manifest(settings.engine_dir)
    flops = ensemble_flops(manifest)
    per_image_flops = flops["per_image"]["ensemble"]
    if manifest.random_weights:
        if settings.weights_dir is not None:
            raise BenchError(f"--weights-dir {settings.weights_dir}: this engine set was built with random weights, "
                             f"and the torch pipeline rebuilds them from the recorded seed; leave --weights-dir out")
        warnings.append("the engine set has RANDOM weights: the timings are real, the scores mean nothing")
    if settings.warmup == 0:
        warnings.append("--warmup 0: each batch size's first recorded iteration includes one-time costs (memory "
                        "arenas, kernel choices for a new shape), which p90/p99 and, with few iterations, p50 and "
                        "the speed-up show")

    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as tmp, ExitStack() as opened:
        # the set first: a set the runtime refuses (a graph that is not what its manifest says) is
        # the error to report, not the images chosen for the sizes that manifest gives
        memory: dict[str, Any] = {"rss_before_bytes": rss_bytes()}
        available = available_memory_bytes()  # before the runtime takes its share, as the checks below assume
        progress("open engine set")
        with PeakRss() as open_peak:
            runtime = RuntimePipeline(settings.engine_dir, settings.backend, settings.max_pixels)
        opened.callback(runtime.close)  # on every way out: on TensorRT it holds GPU buffers and streams
        memory["runtime_rss_after_open_bytes"] = rss_bytes()
        memory["runtime_open_peak_rss_bytes"] = open_peak.peak
        stream_sizes = {name: entry.input_size for name, entry in manifest.streams.items()}
        images = bench_images(settings.images_dir, Path(tmp), max(DEFAULT_IMAGE_COUNT, *settings.batch_sizes),
                              stream_sizes, settings.compare_torch, settings.max_pixels)
        paths = images.paths
        warnings.extend(images.folder_warnings)
        if images.skipped:
            names = [f"{Path(item['image']).name} ({item['error']})" for item in images.skipped]
            warnings.append(f"left out {len(names)} input(s) that could not be read or used: {first_few(names, 3)}")
        largest = max(settings.batch_sizes)
        if settings.images_dir is not None and len(paths) < largest:
            warnings.append(f"{settings.images_dir} gave {len(paths)} usable image(s), fewer than the largest batch "
                            f"size {largest}: its batches repeat images, each decoded again")
        floor = batch_memory_floor(images, largest, list(stream_sizes.values()))
        if available is not None and floor > available:
            raise BenchError(f"a batch of {largest} holds at least {floor / 1e9:.1f} GB at once (its decoded "
                             f"images and float32 stream inputs) and {available / 1e9:.1f} GB of memory is "
                             f"available; measure smaller batch sizes")
        engine_bytes = _engine_set_summary(manifest)["bytes"]
        resident = not settings.compare_torch or available is None or \
            engine_bytes * RESIDENT_MEMORY_FACTOR < available
        if not resident:
            warnings.append(f"both pipelines do not fit in memory together ({engine_bytes / 1e9:.1f} GB of weights, "
                            f"{available / 1e9:.1f} GB available): they ran one after the other, not interleaved, "
                            f"so the ratio is more exposed to load changes")

        face_localisation = {"present": runtime.detector.face_locator is not None}
        if not face_localisation["present"]:
            face_localisation["reason"] = "the engine set has no face detector (or it is switched off)"
        distinct = list(paths)
        runtime_detections = runtime.end_to_end(distinct)[1]
        face_inputs = {}
        if settings.compare_torch:
            from dfd.runtime.images import decode_image
            from dfd.runtime.preprocess import reencode_like_reference_face_file

            # the reference's offline cropping step: the face input, saved as a JPEG's crop file is
            # (re-encoded) and read back, so both pipelines' face streams see the same pixels
            face_inputs = {p: reencode_like_reference_face_file(
                runtime.detector.face_stream_image(decode_image(str(p), max_pixels=settings.max_pixels).rgb),
                p.suffix)[0] for p in distinct}

        samples: dict[str, dict[int, dict[str, list]]] = {"runtime": {}, "torch": {}}
        torch_pipeline = None
        sanity = None

        def measure_runtime(batch: list[Path], record: bool) -> None:
            total, _ = runtime.end_to_end(batch)
            stages = runtime.staged(batch)
            if record:
                row = samples["runtime"].setdefault(len(batch), {"totals": [], "stages": []})
                row["totals"].append(total)
                row["stages"].append(stages)

        def measure_torch(batch: list[Path], record: bool) -> None:
            start = time.perf_counter()
            stages, _ = torch_pipeline.run(batch)
            total = time.perf_counter() - start
            if record:
                row = samples["torch"].setdefault(len(batch), {"totals": [], "stages": []})
                row["totals"].append(total)
                row["stages"].append(stages)

        def open_torch() -> Any:
            progress("build the PyTorch reference pipeline")
            pipeline = TorchReferencePipeline(manifest, face_inputs, settings.weights_dir)
            memory["torch_rss_after_open_bytes"] = rss_bytes()
            return pipeline

        interrupted: list[int] = []  # the batch size Ctrl-C (or SIGTERM) stopped, if any

        def loop(measures: list[Callable[[list[Path], bool], None]]) -> None:
            """Each batch size's warm-up and recorded iterations. An interrupt keeps the batch sizes
            measured to the end (hours of measurement at paper size) and drops the one it cut short;
            with none finished it ends the run."""
            for batch_size in settings.batch_sizes:
                try:
                    progress(f"batch {batch_size}: warm-up")
                    for iteration in range(settings.warmup):
                        for measure in measures:
                            measure(_batch_of(paths, batch_size, iteration), False)
                    progress(f"batch {batch_size}: measure")
                    for iteration in range(settings.iterations):
                        for measure in measures:
                            measure(_batch_of(paths, batch_size, settings.warmup + iteration), True)
                            tick()
                except KeyboardInterrupt:
                    for by_batch in samples.values():
                        by_batch.pop(batch_size, None)
                    if not any(samples.values()):
                        raise
                    interrupted.append(batch_size)
                    return

        if not settings.compare_torch:
            with PeakRss() as peak:
                loop([measure_runtime])
            memory["runtime_peak_rss_bytes"] = peak.peak
        elif resident:
            torch_pipeline = open_torch()
            _, torch_probs = torch_pipeline.run(distinct)
            sanity = _sanity(runtime_detections, torch_probs, manifest.vote_weights)
            with PeakRss() as peak:
                loop([measure_runtime, measure_torch])
            memory["interleaved_peak_rss_bytes"] = peak.peak
        else:
            with PeakRss() as peak:
                loop([measure_runtime])
            memory["runtime_peak_rss_bytes"] = peak.peak
            memory["gpu_memory_used_mib_runtime"] = gpu_memory_used_mib()
            runtime.close()
            if not interrupted:
                with PeakRss() as peak:
                    torch_pipeline = open_torch()
                    _, torch_probs = torch_pipeline.run(distinct)
                    sanity = _sanity(runtime_detections, torch_probs, manifest.vote_weights)
                    loop([measure_torch])
                memory["torch_peak_rss_bytes"] = peak.peak
        memory["gpu_memory_used_mib"] = gpu_memory_used_mib()
        if torch_pipeline is not None and torch_pipeline.device.type == "cuda":
            memory["torch_gpu_max_allocated_bytes"] = torch_pipeline.torch.cuda.max_memory_allocated()
        memory["process_peak_rss_bytes"] = process_peak_rss_bytes()

    if interrupted:
        finished = sorted(set().union(*(by_batch for by_batch in samples.values())))
        warnings.append(f"interrupted while measuring batch {interrupted[0]}: the results hold the batch sizes "
                        f"measured to the end ({', '.join(map(str, finished))}) and no other")
    runs = {}
    labels = {"runtime": runtime.label, "torch": torch_pipeline.label if torch_pipeline else None}
    for name, by_batch in samples.items():
        if by_batch:
            runs[name] = {
                "label": labels[name],
                "batches": {str(b): _batch_report(b, v["totals"], v["stages"], per_image_flops)
                            for b, v in by_batch.items()},
            }
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "label": settings.label,
        "created_utc": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "command": sys.argv,
        "interrupted": bool(interrupted),
        "settings": {"batch_sizes": list(settings.batch_sizes), "warmup": settings.warmup,
                     "iterations": settings.iterations, "compare": "torch" if settings.compare_torch else None,
                     "backend": settings.backend, "interleaved": settings.compare_torch and resident},
        "images": images.to_dict(),
        "engine_set": _engine_set_summary(manifest),
        "face_localisation": face_localisation,
        "flops": flops,
        "environment": environment,
        "memory": memory,
        "runs": runs,
        "warnings": warnings,
    }
    if torch_pipeline is not None:
        result["torch_weights"] = torch_pipeline.weights_note
        result["sanity"] = sanity
        result["speedup"] = {
            str(b): {
                "end_to_end_p50": runs["torch"]["batches"][str(b)]["latency_ms"]["p50"]
                / runs["runtime"]["batches"][str(b)]["latency_ms"]["p50"],
                "streams_p50": _streams_ms(runs["torch"]["batches"][str(b)])
                / _streams_ms(runs["runtime"]["batches"][str(b)]),
                "without_face_localisation_p50": runs["torch"]["batches"][str(b)]["stage_sum_ms_p50"]
                / _stage_sum_without_face(runs["runtime"]["batches"][str(b)]),
            }
            for b in settings.batch_sizes
            if str(b) in runs.get("torch", {}).get("batches", {}) and str(b) in runs["runtime"]["batches"]
        }
        torch_pipeline.close()
    environment["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return result


def _streams_ms(batch_report: dict[str, Any]) -> float:
    return sum(v["p50"] for k, v in batch_report["stages_ms"].items() if k.startswith("stream:"))


def _stage_sum_without_face(batch_report: dict[str, Any]) -> float:
    """The runtime's stage sum less face localisation: the reference localises faces offline in a
    separate script, so this is the like-for-like comparison with its pipeline."""
    face = batch_report["stages_ms"].get("face_localisation", {"p50": 0.0})["p50"]
    return batch_report["stage_sum_ms_p50"] - face
