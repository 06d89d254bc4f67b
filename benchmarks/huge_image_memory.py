"""How much memory ``Detector.detect`` takes on large photographs, and how much it keeps afterwards.

Why: the decoder accepts up to 64 MP by default, and on such a photograph without a face every
stage of face localisation runs: BlazeFace's letterbox, MTCNN's image pyramid at full resolution
(the small-face pass, whose summed-area table and P-Net activations scale with the image) and the
enhancement cascade. A service that embeds the runtime pays the peak on every such image and keeps
whatever the allocators do not give back, so both are measured.

Each photograph (skimage's coffee cup, enlarged, written as JPEG quality 90) is measured in its own
child process, which opens the engine set once, runs it on a small photograph (the sessions' first
runs allocate what later runs reuse) and then records, above the RSS of that warm Detector: the
peak of ``decode_image`` alone, then the peak and the RSS left after each of two ``detect`` calls
on the file (each peak is the kernel's exact VmHWM, reset before the call). Times are wall-clock
of each call. Each photograph is measured twice: as ``Detector.open`` builds the set, and with
P-Net's ONNX Runtime memory arena on (``onnxruntime_mtcnn(pnet_arena=True)``). Last, in this
process, MTCNN's small-face pass alone is timed with and without that arena, interleaved, at
12 and 64 MP: the arena trades memory kept for speed.

    .venv/bin/python benchmarks/huge_image_memory.py [--engines demo-out/engines] \\
        [--out benchmarks/results/huge-image-memory.json]

The engine set must package MTCNN (``make demo`` writes one to demo-out/engines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import skimage.data

# (width, height): 12 MP (a phone's 4:3 frame), 24 MP, 48 MP and 64 MP (the decoder's default limit)
SIZES = ((4000, 3000), (6000, 4000), (8000, 6000), (9216, 6912))
DETECT_CALLS = 2
TIMING_REPEATS = 5


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start a new peak: writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def measure(engines: str, image: str, pnet_arena: bool) -> dict:
    """One photograph in this (fresh) process: the increments above the warm Detector's RSS."""
    from dfd.runtime.detector import Detector
    from dfd.runtime.images import decode_image

    detector = Detector.open(engines, backend="onnxruntime")
    if pnet_arena:
        detector.face_locator.small_face_detector = packaged_mtcnn(engines, pnet_arena=True)
    # A first detect on a small photograph: the sessions' first runs allocate what every later
    # run reuses, which is the service's steady state, not the large photograph's cost.
    detector.detect([coffee(640, 480)])
    warm = _status_mib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    decoded = decode_image(image)
    record = {"warm_rss_mib": round(warm, 1),
              "decode": {"seconds": round(time.perf_counter() - start, 3),
                         "peak_mib": round(_status_mib("VmHWM") - warm, 1)},
              "detect": []}
    height, width = decoded.rgb.shape[:2]
    record["decoded_mib"] = round(height * width * 3 / 2**20, 1)
    del decoded
    for _ in range(DETECT_CALLS):
        _reset_peak()
        start = time.perf_counter()
        (result,) = detector.detect([image])
        seconds = time.perf_counter() - start
        if not result.ok:
            raise RuntimeError(f"detect failed on {image}: {result.error}")
        record["detect"].append({"seconds": round(seconds, 2), "peak_mib": round(_status_mib("VmHWM") - warm, 1),
                                 "retained_mib": round(_status_mib("VmRSS") - warm, 1),
                                 "face": result.face is not None})
    detector.close()
    return record


def packaged_mtcnn(engines: str, *, pnet_arena: bool):
    """The engine set's MTCNN as ``Detector.open`` builds it, with or without P-Net's arena."""
    from dfd.runtime.face_detection import SMALL_FACE_THRESHOLDS
    from dfd.runtime.mtcnn import onnxruntime_mtcnn

    graphs = (Path(engines) / f"mtcnn_{net}.onnx" for net in ("pnet", "rnet", "onet"))
    return onnxruntime_mtcnn(*graphs, thresholds=SMALL_FACE_THRESHOLDS, pnet_arena=pnet_arena)


def arena_timing(engines: str) -> dict:
    """MTCNN's small-face pass (as the locator calls it) with and without P-Net's arena, in this
    process, interleaved; median of ``TIMING_REPEATS`` after one untimed call each."""
    from dfd.runtime.face_detection import DEFAULT_MIN_FACE_PX, small_face_range

    detectors = {"without_arena": packaged_mtcnn(engines, pnet_arena=False),
                 "with_arena": packaged_mtcnn(engines, pnet_arena=True)}
    timing = {}
    for width, height in (SIZES[0], SIZES[-1]):
        rgb = coffee(width, height)
        low, high = small_face_range(height, width, DEFAULT_MIN_FACE_PX)
        seconds: dict[str, list[float]] = {name: [] for name in detectors}
        for repeat in range(TIMING_REPEATS + 1):
            for name, detector in detectors.items():
                start = time.perf_counter()
                detector.detect(rgb, min_face_px=low, max_face_px=high)
                if repeat:
                    seconds[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(times) for name, times in seconds.items()}
        timing[f"{width * height / 1e6:.0f} MP"] = {
            **{f"{name}_s": round(median, 3) for name, median in medians.items()},
            "without_over_with": round(medians["without_arena"] / medians["with_arena"], 3)}
    return timing


def coffee(width: int, height: int) -> np.ndarray:
    """skimage's coffee cup (RGB, no face through the whole cascade) at ``width`` x ``height``."""
    return cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def write_photographs(folder: Path) -> list[tuple[str, Path]]:
    photographs = []
    for width, height in SIZES:
        path = folder / f"coffee-{width}x{height}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(coffee(width, height), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        photographs.append((f"{width * height / 1e6:.0f} MP", path))
    return photographs


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True)
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="demo-out/engines", help="an engine set that packages MTCNN")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/huge-image-memory.json"))
    parser.add_argument("--measure", nargs=3, metavar=("ENGINES", "IMAGE", "ARENA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        engines, image, arena = args.measure
        print(json.dumps(measure(engines, image, pnet_arena=arena == "arena")))
        return
    if not (Path(args.engines) / "mtcnn_pnet.onnx").is_file():
        parser.error(f"{args.engines} is not an engine set with MTCNN; run `make demo` or pass --engines")

    from dfd.export.bench.environment import capture_environment

    warnings: list[str] = []
    results = {"benchmark": "huge_image_memory", "commit": _git_commit(),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "environment": capture_environment(warnings), "warnings": warnings, "engines": args.engines,
               "photographs": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for label, path in write_photographs(Path(work)):
            results["photographs"][label] = {}
            for variant, arena in (("default", "no-arena"), ("pnet_arena", "arena")):
                child = subprocess.run([sys.executable, __file__, "--measure", args.engines, str(path), arena],
                                       capture_output=True, text=True, check=True)
                record = json.loads(child.stdout.strip().splitlines()[-1])
                results["photographs"][label][variant] = record
                runs = ", ".join(f"{run['seconds']} s peak +{run['peak_mib']:.0f} MiB kept "
                                 f"+{run['retained_mib']:.0f} MiB" for run in record["detect"])
                print(f"{label} {variant}: decoded {record['decoded_mib']:.0f} MiB; detect {runs}", flush=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    results["pnet_arena_timing"] = arena_timing(args.engines)
    print("MTCNN time, without / with P-Net's arena:", results["pnet_arena_timing"], flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
