"""How a service's memory behaves with preparation threads: several threads share one
``Detector`` and call ``detect`` without pause; the process's RSS is read after every phase of
calls, for ``prepare_workers=1``, for the default (one thread per core, at most 8), and for the
default with glibc's malloc held to two arenas (``MALLOC_ARENA_MAX=2``).

Why: each ``detect`` call prepares its images on threads of its own, so a service's threads
prepare more images at once than they would one at a time, and the allocators (glibc's arenas,
ONNX Runtime's) grow to the largest demand seen. That growth must level off, not climb call
after call: a leak would. glibc gives threads up to 8 arenas per core, and memory freed in one
arena is not reused by the others, so more threads leave more of it stranded; capping the arenas
shows whether that, not a leak, is the growth. Each configuration runs in a fresh interpreter, so
none inherits another's heap.

The images are four of the demo set's photographs resized to 300x300, passed as arrays, with face
detection off, so the calls are short and many (about 0.1 s each on two cores).

    .venv/bin/python benchmarks/service_memory.py [--engine-set demo-out/engines]
        [--threads 4] [--calls 100] [--phases 8] [--out benchmarks/results/service-memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

IMAGES_PER_CALL = 4
SIDE = 300
# name: (prepare_workers, what the child's environment adds)
CONFIGURATIONS = {"serial": (1, {}), "default": (None, {}), "default_arena_max_2": (None, {"MALLOC_ARENA_MAX": "2"})}


def resident_kib() -> int:
    """This process's resident set (Linux), read as ``dfd-export bench`` reads it."""
    from dfd.export.bench.environment import rss_bytes

    resident = rss_bytes()
    if resident is None:
        raise SystemExit("error: /proc/self/statm is unreadable (Linux only)")
    return resident // 1024


def run_configuration(engine_set: Path, images: Path, workers: int | None, threads: int, calls: int,
                      phases: int) -> dict:
    """In this interpreter: ``threads`` threads each make ``calls`` calls per phase; RSS after each."""
    import cv2

    from dfd.runtime.detector import Detector

    paths = sorted(images.glob("*.png"))[:IMAGES_PER_CALL]
    if len(paths) < IMAGES_PER_CALL:
        raise SystemExit(f"error: {images} holds fewer than {IMAGES_PER_CALL} PNG images; run make demo")
    arrays = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (SIDE, SIDE)) for p in paths]
    rows = []
    with Detector.open(engine_set, backend="onnxruntime", batch_size=IMAGES_PER_CALL, face_detection=False,
                       prepare_workers=workers) as detector:
        expected = [d.to_dict() for d in detector.detect(arrays)]
        mismatches = []

        def call_repeatedly() -> None:
            for _ in range(calls):
                if [d.to_dict() for d in detector.detect(arrays)] != expected:
                    mismatches.append(1)

        start = time.perf_counter()
        for phase in range(phases):
            pool = [threading.Thread(target=call_repeatedly) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            rows.append({"calls": (phase + 1) * calls * threads, "rss_kib": resident_kib(),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"workers {detector.prepare_workers}: {rows[-1]}", file=sys.stderr)
        if mismatches:
            raise SystemExit(f"error: {len(mismatches)} calls gave other results than the first")
        return {"prepare_workers": detector.prepare_workers, "phases": rows,
                "growth_after_first_phase_kib": rows[-1]["rss_kib"] - rows[0]["rss_kib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-set", type=Path, default=Path("demo-out/engines"),
                        help="an engine set with ONNX graphs (make demo writes demo-out/engines)")
    parser.add_argument("--images", type=Path, default=Path("demo-out/images"))
    parser.add_argument("--threads", type=int, default=4, help="service threads sharing the detector")
    parser.add_argument("--calls", type=int, default=100, help="calls per thread and phase")
    parser.add_argument("--phases", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/service-memory.json"))
    parser.add_argument("--child", choices=tuple(CONFIGURATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.engine_set / "manifest.json").is_file():
        sys.exit(f"error: {args.engine_set} is no engine set; run make demo, or give --engine-set")
    if args.child:
        workers = CONFIGURATIONS[args.child][0]
        print(json.dumps(run_configuration(args.engine_set, args.images, workers, args.threads, args.calls,
                                           args.phases)))
        return

    from dfd.export.bench.environment import capture_environment

    warnings: list[str] = []
    environment = capture_environment(warnings)
    configurations = {}
    for child, (_, variables) in CONFIGURATIONS.items():
        command = [sys.executable, __file__, "--child", child, "--engine-set", str(args.engine_set),
                   "--images", str(args.images), "--threads", str(args.threads), "--calls", str(args.calls),
                   "--phases", str(args.phases)]
        finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False,
                                  env={**os.environ, **variables})
        if finished.returncode != 0:
            sys.exit(f"error: the {child} run failed (exit {finished.returncode})")
        configurations[child] = {**json.loads(finished.stdout), "environment_variables": variables}
    result = {
        "benchmark": "service_memory",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/service_memory.py " + " ".join(sys.argv[1:]),
        "engine_set": str(args.engine_set.resolve()),
        "images": f"{IMAGES_PER_CALL} demo photographs resized to {SIDE}x{SIDE}, arrays, face detection off",
        "threads": args.threads,
        "calls_per_thread_and_phase": args.calls,
        "configurations": configurations,
        "environment": environment,
        "warnings": warnings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for child, figures in configurations.items():
        first, last = figures["phases"][0], figures["phases"][-1]
        print(f"{child} (prepare_workers={figures['prepare_workers']}): RSS {first['rss_kib'] / 1024:.0f} MiB after "
              f"{first['calls']} calls, {last['rss_kib'] / 1024:.0f} MiB after {last['calls']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
