"""What the face cascade costs on a face-free photograph, the case where every step runs.

Why: when the plain pass finds no face, the locator runs the reference's nine enhancement steps,
and a photograph without a face (a landscape, a product shot) pays for all of them. Non-local
means is by far the slowest step, and the reference runs it twice with the same parameters
("nlmeans", then "nlmeans_clahe"); the runtime's ``CascadeImage`` computes it once. The reference
filters at full resolution; the locator filters at most ``CASCADE_MAX_SIDE`` pixels on the long
side. This script times, in one process and interleaved per repeat:

* ``each_step_alone``: every step at full resolution from the RGB image on its own
  (``enhance(rgb, step)``), as the reference computes them: two non-local means, nine BGR
  conversions;
* ``shared``: the steps in cascade order on one full-resolution ``CascadeImage``;
* ``locate_full_resolution``: the whole ``FaceLocator.locate`` (plain pass, then the cascade)
  with the packaged BlazeFace detector and the default small-face pass, the cascade at full
  resolution (``cascade_max_side=None``);
* ``locate``: the same at the default working resolution, as ``Detector.open`` builds it;
* ``plain_pass``: ``locate`` without the cascade (``detect --no-face-cascade``);

and checks that the two full-resolution ways give identical pixels for every step.

    .venv/bin/python benchmarks/face_cascade_cost.py [--out benchmarks/results/face-cascade-cost.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from dfd.export.bench.environment import capture_environment
from dfd.export.face_detector import export_face_detector_onnx
from dfd.export.mtcnn import export_mtcnn_onnx
from dfd.runtime.face_cascade import ALL_STRATEGIES, CASCADE_MAX_SIDE, CascadeImage, enhance
from dfd.runtime.face_detection import SMALL_FACE_THRESHOLDS, FaceLocator, onnxruntime_detector
from dfd.runtime.mtcnn import onnxruntime_mtcnn

# (width, height): about 1, 4 and 12 megapixels, the last a common phone camera's 4:3 frame
SIZES = ((1152, 864), (2304, 1728), (4000, 3000))
REPEATS = 2


def photograph(width: int, height: int) -> np.ndarray:
    """skimage's coffee cup (no face through the whole cascade) at ``width`` x ``height``."""
    return cv2.resize(skimage.data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def each_step_alone(rgb: np.ndarray) -> dict[str, np.ndarray]:
    return {step: enhance(rgb, step).bgr for step in ALL_STRATEGIES}


def shared(rgb: np.ndarray) -> dict[str, np.ndarray]:
    image = CascadeImage(rgb)
    return {step: enhance(image, step).bgr for step in ALL_STRATEGIES}


def timed(run, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - start, result


def packaged_locators(work: Path) -> dict[str, FaceLocator]:
    """The locator ``Detector.open`` builds from an engine set (BlazeFace plus the MTCNN pass), with
    its cascade at full resolution, at the working resolution, and without it."""
    face_onnx = work / "face_detector.onnx"
    export_face_detector_onnx(face_onnx)
    graphs = export_mtcnn_onnx(work / "mtcnn")
    small = onnxruntime_mtcnn(graphs["pnet"], graphs["rnet"], graphs["onet"], thresholds=SMALL_FACE_THRESHOLDS)
    blazeface = onnxruntime_detector(face_onnx)
    return {
        "locate_full_resolution": FaceLocator(blazeface, small_face_detector=small, cascade_max_side=None),
        "locate": FaceLocator(blazeface, small_face_detector=small),
        "plain_pass": FaceLocator(blazeface, small_face_detector=small, strategies=()),
    }


def measure(locators: dict[str, FaceLocator]) -> list[dict]:
    rows = []
    for width, height in SIZES:
        rgb = photograph(width, height)
        times: dict[str, list[float]] = {"each_step_alone": [], "shared": [], **{name: [] for name in locators}}
        for _ in range(REPEATS):
            alone_s, alone = timed(each_step_alone, rgb)
            shared_s, together = timed(shared, rgb)
            times["each_step_alone"].append(alone_s)
            times["shared"].append(shared_s)
            for name, locator in locators.items():
                seconds, found = timed(locator.locate, rgb)
                if found is not None:
                    raise SystemExit(f"{name}: the {width}x{height} photograph has a face ({found}); the cascade did not run")
                times[name].append(seconds)
            for step in ALL_STRATEGIES:
                if not np.array_equal(alone[step], together[step]):
                    raise SystemExit(f"{step}: the shared cascade image changed the step's pixels")
        best = {name: min(values) for name, values in times.items()}
        rows.append({
            "width": width, "height": height, "megapixels": round(width * height / 1e6, 2),
            "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
            "best_seconds": {name: round(value, 2) for name, value in best.items()},
            "steps_speedup": round(best["each_step_alone"] / best["shared"], 2),
            "working_resolution_speedup": round(best["locate_full_resolution"] / best["locate"], 2),
        })
        print(f"{width}x{height}: steps each alone {best['each_step_alone']:.2f} s, shared {best['shared']:.2f} s "
              f"({rows[-1]['steps_speedup']}x); locate {best['locate_full_resolution']:.2f} s with the cascade at full "
              f"resolution, {best['locate']:.2f} s at {CASCADE_MAX_SIDE} px, {best['plain_pass']:.2f} s without it",
              file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/face-cascade-cost.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = measure(packaged_locators(Path(work)))
    warnings: list[str] = []
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/face_cascade_cost.py",
        "environment": capture_environment(warnings),
        "warnings": warnings,
        "repeats": REPEATS,
        "cascade_steps": list(ALL_STRATEGIES),
        "cascade_max_side": CASCADE_MAX_SIDE,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "sizes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
