"""Time versions of the fused preprocessing kernel against each other, interleaved in one process.

For a lent GPU machine, beside gpu_check.py: kernel tuning compares variants whose differences are
a few percent, and these machines drift by that much between processes, so every variant runs in
the same process, on the same images, interleaved (A B C ... A B C), and only ratios count.

    python benchmarks/preprocess_variants.py --out variants.json \\
        old=/tmp/old/runtime/kernels:pixels new=runtime/kernels:pixels new_rows=runtime/kernels:rows

Each variant is NAME=DIR[:DECOMPOSITION[:PIXELS_PER_TASK]]. DIR holds kernel files that replace
runtime/kernels' (a file DIR lacks comes from runtime/kernels), e.g. an older commit's:

    mkdir -p /tmp/old && git archive d3e73d9 runtime/kernels | tar -x -C /tmp/old

DECOMPOSITION is ``pixels`` (the default), ``rows`` or ``columns``; a column launch's grid follows
the version's own kColumnRows (read from its preprocess.cuh), so columns of other heights compare
directly. PIXELS_PER_TASK is how many output pixels one thread of the per-pixel kernel computes in
that version: 2 since the pair kernel, 1 before it (b9e8324 and older); it sets the launch grid.

For every case of gpu_check.THROUGHPUT_CASES (or --cases) and both dtypes, each variant writes into
its own NaN-filled tensors, and the report says whether it wrote the same bits as the first variant.
It then times them over --rounds rounds with gpu_check.timed. A device-to-device copy is timed in the
same process, so each variant's share of the copy bandwidth is the one gpu_check.py's bar uses
(gpu_check.fused_bytes: each byte counted once). The best round counts; the rounds' spread says how
far to trust a difference.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check  # noqa: E402 - the sibling script, for its timer, byte count and job packing

from dfd.runtime import cuda_kernels  # noqa: E402


@dataclass
class Variant:
    """One version of the kernels, loaded on the GPU."""

    name: str
    directory: Path
    decomposition: str
    pixels_per_task: int
    kernels: cuda_kernels.CudaKernels | None = None
    column_blocks_per_image: int = cuda_kernels.COLUMN_BLOCKS_PER_IMAGE  # set by load from kColumnRows


def parse_variant(spec: str) -> Variant:
    """NAME=DIR[:DECOMPOSITION[:PIXELS_PER_TASK]] (see the module docstring)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR[:DECOMPOSITION[:PIXELS_PER_TASK]], not {spec!r}")
    directory, _, tail = rest.partition(":")
    decomposition, _, per_task = tail.partition(":")
    decomposition = decomposition or "pixels"
    if decomposition not in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: decomposition must be one of {cuda_kernels.PREPROCESS_DECOMPOSITIONS}")
    if not per_task.isdigit() and per_task:
        raise argparse.ArgumentTypeError(f"{spec!r}: pixels per task must be a whole number")
    pixels_per_task = int(per_task or 2)
    if cuda_kernels.PIXELS_PER_IMAGE % pixels_per_task:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: {pixels_per_task} does not divide {cuda_kernels.PIXELS_PER_IMAGE} pixels")
    if not Path(directory).is_dir():
        raise argparse.ArgumentTypeError(f"{spec!r}: {directory} is not a folder")
    return Variant(name, Path(directory), decomposition, pixels_per_task)


def parse_case(text: str) -> tuple[int, int, int]:
    """BATCHxHEIGHTxWIDTH, e.g. 32x1080x1440."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected BATCHxHEIGHTxWIDTH, not {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """Comma-separated cases, e.g. 32x1080x1440,8x3000x4000: one argument, so that the variants
    may follow --cases on the command line."""
    return [parse_case(part) for part in text.split(",")]


def column_blocks_per_image(header: str) -> int:
    """Blocks per image of a column launch of the version whose preprocess.cuh is ``header``: its
    output rows (2 crops and the fusion stream) over its kColumnRows; the runtime's count for a
    version without column kernels (its variants cannot ask for them)."""
    found = re.search(r"constexpr int kColumnRows = (\d+);", header)
    if found is None:
        return cuda_kernels.COLUMN_BLOCKS_PER_IMAGE
    return cuda_kernels.ROWS_PER_IMAGE // int(found.group(1))


def load(variant: Variant, work: Path) -> None:
    """Compile and load the variant's kernels: its files over runtime/kernels', in a folder of its
    own (the NVRTC cache is keyed by the sources, so variants never share a build)."""
    folder = work / variant.name
    folder.mkdir()
    for name in cuda_kernels.KERNEL_SOURCES + cuda_kernels.KERNEL_HEADERS:
        own = variant.directory / name
        shutil.copy(own if own.exists() else cuda_kernels.KERNEL_DIR / name, folder / name)
    variant.column_blocks_per_image = column_blocks_per_image((folder / "preprocess.cuh").read_text())
    default = cuda_kernels.KERNEL_DIR
    cuda_kernels.KERNEL_DIR = folder
    try:
        variant.kernels = cuda_kernels.CudaKernels(0)
    finally:
        cuda_kernels.KERNEL_DIR = default


@contextmanager
def launch_geometry(variant: Variant) -> Iterator[None]:
    """The launch grids of the variant's version: threads per image of the per-pixel kernel, blocks
    per image of the column kernel."""
    defaults = cuda_kernels.TASKS_PER_IMAGE, cuda_kernels.COLUMN_BLOCKS_PER_IMAGE
    cuda_kernels.TASKS_PER_IMAGE = cuda_kernels.PIXELS_PER_IMAGE // variant.pixels_per_task
    cuda_kernels.COLUMN_BLOCKS_PER_IMAGE = variant.column_blocks_per_image
    try:
        yield
    finally:
        cuda_kernels.TASKS_PER_IMAGE, cuda_kernels.COLUMN_BLOCKS_PER_IMAGE = defaults


def compare(torch, variants: list[Variant], cases, rounds: int, repeat: int, copy_bytes: int) -> dict:
    """The report: copy bandwidth, then per case and dtype each variant's best time, rounds, share
    of the copy bandwidth and whether it wrote the first variant's bits."""
    copy_bw = gpu_check.copy_bandwidth(torch, copy_bytes, repeat)
    report: dict = {"copy_bandwidth_GBps": copy_bw / 1e9, "cases": {}}
    stream = torch.cuda.current_stream().cuda_stream
    for batch, h, w in cases:
        images, jobs = gpu_check.throughput_batch(torch, batch, h, w)  # jobs point into images
        for half in (False, True):
            dtype, bits = (torch.float16, torch.int16) if half else (torch.float32, torch.int32)
            outs = {v.name: [torch.full((batch, 3, s, s), float("nan"), dtype=dtype, device="cuda")
                             for s in (gpu_check.CROP, gpu_check.CROP, gpu_check.FUSION)] for v in variants}

            def run(v: Variant) -> None:
                with launch_geometry(v):
                    v.kernels.preprocess(jobs.data_ptr(), batch, tuple(o.data_ptr() for o in outs[v.name]),
                                         half=half, stream=stream, decomposition=v.decomposition)

            for v in variants:
                run(v)
            torch.cuda.synchronize()
            first = outs[variants[0].name]
            seconds: dict[str, list[float]] = {v.name: [] for v in variants}
            for _ in range(rounds):
                for v in variants:
                    seconds[v.name].append(gpu_check.timed(torch, lambda: run(v), repeat))
            read, written = gpu_check.fused_bytes(batch, h, w, 2 if half else 4)
            key = f"{batch}x{h}x{w} {'fp16' if half else 'fp32'}"
            report["cases"][key] = {v.name: {
                "us": 1e6 * min(seconds[v.name]),
                "rounds_us": [1e6 * s for s in seconds[v.name]],
                "fraction_of_copy_bandwidth": (read + written) / min(seconds[v.name]) / copy_bw,
                "same_bits_as_" + variants[0].name: all(
                    torch.equal(a.view(bits), b.view(bits)) for a, b in zip(outs[v.name], first)),
            } for v in variants}
            print(key, {name: round(r["us"], 1) for name, r in report["cases"][key].items()},
                  file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=DIR[:DECOMPOSITION[:PIXELS_PER_TASK]]",
                        help="a kernel version to time; the first is the one whose bits the others must write")
    parser.add_argument("--cases", type=parse_cases, metavar="BxHxW[,BxHxW...]",
                        default=list(gpu_check.THROUGHPUT_CASES), help="batches to time (default: gpu_check's)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--repeat", type=int, default=20, help="launches per timed group (default 20)")
    parser.add_argument("--copy-bytes", type=int, default=1 << 28, help="size of the timed copy")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    names = [v.name for v in args.variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    import torch

    with tempfile.TemporaryDirectory() as work:
        for variant in args.variants:
            load(variant, Path(work))
        report = {"gpu": args.variants[0].kernels.info.name,
                  "variants": {v.name: {"directory": str(v.directory), "decomposition": v.decomposition,
                                        "pixels_per_task": v.pixels_per_task} for v in args.variants}}
        report.update(compare(torch, args.variants, args.cases, args.rounds, args.repeat, args.copy_bytes))
        for variant in args.variants:
            variant.kernels.close()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
