"""What preparing images on threads gains: ``Detector.detect`` with ``prepare_workers=1`` (each
image decoded, face-localised and preprocessed in the calling thread, between batches, as before
the option existed) against the default (one thread per core, at most 8), in one process,
interleaved per repeat.

Why: on a GPU the engines take milliseconds per image and the host's preparation hundreds, so
the host decides throughput. This machine has no GPU, so two figures are taken:

* ``detect``: the whole call on the given engine set with ONNX Runtime on the CPU, where the
  streams compete with the preparation threads for the same cores;
* ``prepare_only``: the preparation alone (``Detector.prepare`` per image, on the pool's threads
  or in turn), the part a GPU leaves to the host.

The photographs are skimage's astronaut (a face), chelsea (a cat), coffee, rocket and a
micrograph, upscaled to 1280-1920 px and saved as JPEG (quality 90): a face-free one runs the
face cascade, as it does in a real folder of photographs.
Every run's detections must equal the serial run's, or the script fails.

    .venv/bin/python benchmarks/prepare_workers.py [--engine-set demo-out/engines]
        [--out benchmarks/results/prepare-workers.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import skimage.data

from dfd.export.bench.environment import capture_environment
from dfd.runtime.detector import Detector
from dfd.runtime.preparation import PixelBudget, default_prepare_workers, prepared_in_order

PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
LONG_SIDES = (1280, 1600, 1920)
IMAGES = 24
REPEATS = 3
BATCH_SIZE = 8


def write_photographs(folder: Path) -> list[Path]:
    paths = []
    for index in range(IMAGES):
        name = PHOTOGRAPHS[index % len(PHOTOGRAPHS)]
        rgb = getattr(skimage.data, name)()
        rgb = rgb[..., :3] if rgb.ndim == 3 else cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        height, width = rgb.shape[:2]
        scale = LONG_SIDES[index % len(LONG_SIDES)] / max(height, width)
        resized = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_CUBIC)
        path = folder / f"{index:02d}-{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(resized, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_detect(engine_set: Path, paths: list[Path], workers: int) -> tuple[float, list[dict]]:
    with Detector.open(engine_set, backend="onnxruntime", batch_size=BATCH_SIZE, prepare_workers=workers) as detector:
        detector.detect(paths[:2])  # sessions and arenas warm
        start = time.perf_counter()
        detections = detector.detect(paths)
        return time.perf_counter() - start, [d.to_dict() for d in detections]


def time_prepare(engine_set: Path, paths: list[Path], workers: int) -> tuple[float, list[dict]]:
    with Detector.open(engine_set, backend="onnxruntime", batch_size=BATCH_SIZE, prepare_workers=1) as detector:
        detector.prepare(paths[0], "warm-up")
        jobs = [(lambda path=path: detector.prepare(path, str(path)), (path,)) for path in paths]
        start = time.perf_counter()
        prepared = list(prepared_in_order(jobs, workers, PixelBudget(detector.max_pixels),
                                          ahead=BATCH_SIZE + workers - 1))
        seconds = time.perf_counter() - start
        return seconds, [p.detection.to_dict() for p in prepared]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-set", type=Path, default=Path("demo-out/engines"),
                        help="an engine set with ONNX graphs (make demo writes demo-out/engines)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare-workers.json"))
    args = parser.parse_args()
    if not (args.engine_set / "manifest.json").is_file():
        sys.exit(f"error: {args.engine_set} is no engine set; run make demo, or give --engine-set")
    parallel = default_prepare_workers()
    if parallel == 1:
        sys.exit("error: this machine gives the process one core: there is nothing to compare")
    warnings: list[str] = []
    environment = capture_environment(warnings)
    figures: dict[str, dict[int, list[float]]] = {"detect": {1: [], parallel: []},
                                                  "prepare_only": {1: [], parallel: []}}
    with tempfile.TemporaryDirectory() as work:
        paths = write_photographs(Path(work))
        for repeat in range(REPEATS):
            for name, run in (("detect", time_detect), ("prepare_only", time_prepare)):
                serial_s, serial = run(args.engine_set, paths, 1)
                threads_s, threaded = run(args.engine_set, paths, parallel)
                if threaded != serial:
                    raise SystemExit(f"{name}: {parallel} workers gave other results than one")
                figures[name][1].append(serial_s)
                figures[name][parallel].append(threads_s)
                print(f"repeat {repeat + 1}/{REPEATS} {name}: 1 worker {serial_s:.2f} s, "
                      f"{parallel} workers {threads_s:.2f} s", file=sys.stderr)
    summary = {
        name: {"median_s": {str(w): round(statistics.median(t), 3) for w, t in runs.items()},
               "ms_per_image": {str(w): round(1000 * statistics.median(t) / IMAGES, 1) for w, t in runs.items()},
               "speedup": round(statistics.median(a / b for a, b in zip(runs[1], runs[parallel])), 2),
               "runs_s": {str(w): [round(v, 3) for v in t] for w, t in runs.items()}}
        for name, runs in figures.items()}
    result = {
        "benchmark": "prepare_workers",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/prepare_workers.py " + " ".join(sys.argv[1:]),
        "engine_set": str(args.engine_set.resolve()),
        "images": f"{IMAGES} JPEGs (q90), skimage {', '.join(PHOTOGRAPHS)} at long side {LONG_SIDES} px",
        "batch_size": BATCH_SIZE,
        "workers_compared": [1, parallel],
        "identical_results": True,
        "results": summary,
        "environment": environment,
        "warnings": warnings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
