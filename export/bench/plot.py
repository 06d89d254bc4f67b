"""The benchmark's plot: latency per image against batch size, and per-stage time."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..cli_errors import printable
from . import BenchError
from .pipelines import STAGES

STAGE_COLOURS = {"decode": "#8c8c8c", "face_localisation": "#b07aa1", "preprocess": "#f28e2b",
                 "stream:global": "#4e79a7", "stream:face": "#76b7b2", "stream:fusion": "#59a14f",
                 "vote": "#e15759"}


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; the bench calls it before measuring, so a
    missing optional extra is said in a second, not after the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib (an optional extra): pip install matplotlib") from exc
    return plt


def plot_format(path: Path) -> str:
    """The image format ``--plot`` writes to ``path``: its suffix's (``.svg``, ``.pdf``, ``.jpg``,
    ...) or PNG for a name without one (``/dev/stdout``, a pipe). Called before the run: left to
    matplotlib, an unknown suffix failed after the whole run and a name without one became
    ``name.png``; a ``.jpg`` given PNG data misled every viewer that trusts the name."""
    plt = pyplot()
    suffix = path.suffix.lower().removeprefix(".")
    if not suffix:
        return "png"
    figure = plt.figure(figsize=(1, 1))
    try:
        known = figure.canvas.get_supported_filetypes()
        if suffix in known:
            figure.savefig(io.BytesIO(), format=suffix)  # a format whose writer is missing fails now
            return suffix
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        raise BenchError(f"--plot {path}: matplotlib cannot write .{suffix} here ({exc}); use .png, .svg or "
                         f".pdf") from exc
    finally:
        plt.close(figure)
    raise BenchError(f"--plot {path}: .{suffix} is not an image format matplotlib writes; use one of "
                     f"{', '.join('.' + name for name in known)} (or a name without a suffix for PNG)")


def write_plot(result: dict[str, Any], file: BinaryIO, image_format: str) -> None:
    """Latency per image vs batch size (p50, bars to p90) and stacked per-stage bars per image, in
    ``image_format`` (see :func:`plot_format`) into ``file``. The batch sizes every pipeline
    finished (all of them unless the run was interrupted)."""
    plt = pyplot()
    runs = result["runs"]
    batch_sizes = [b for b in result["settings"]["batch_sizes"]
                   if all(str(b) in run["batches"] for run in runs.values())]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, run in runs.items():
        p50 = [run["batches"][str(b)]["latency_ms"]["p50"] / b for b in batch_sizes]
        p90 = [run["batches"][str(b)]["latency_ms"]["p90"] / b for b in batch_sizes]
        # one 2xN array: matplotlib 3.10 reads a list of arrays through a NumPy conversion deprecated
        # in 1.25 (a DeprecationWarning on one batch size, an error once NumPy removes it)
        left.errorbar(batch_sizes, p50, yerr=np.array([np.zeros(len(p50)), np.subtract(p90, p50)]), marker="o",
                      capsize=3, label=f"{name} (p50, bar to p90)")
    left.set_xscale("log", base=2)
    left.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("ms per image")
    left.set_title("end-to-end latency per image")
    left.grid(alpha=0.3)
    left.legend()
    width = 0.8 / max(1, len(runs))
    tallest = 0.0
    for index, (name, run) in enumerate(runs.items()):
        bottoms = np.zeros(len(batch_sizes))
        positions = np.arange(len(batch_sizes)) + (index - (len(runs) - 1) / 2) * width
        for stage in STAGES:
            values = np.array([run["batches"][str(b)]["stages_ms"].get(stage, {"mean": 0.0})["mean"] / b
                               for b in batch_sizes])
            if not values.any():
                continue
            right.bar(positions, values, width * 0.95, bottom=bottoms, color=STAGE_COLOURS[stage],
                      label=stage if index == 0 or stage not in right.get_legend_handles_labels()[1] else None)
            bottoms += values
        for x, top in zip(positions, bottoms):
            right.text(x, top, name, ha="center", va="bottom", fontsize=7, rotation=90)
        tallest = max(tallest, float(bottoms.max()))
    right.set_ylim(0, tallest * 1.18)  # room for the pipeline names above the tallest bar
    right.set_xticks(np.arange(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    right.set_ylabel("ms per image (mean)")
    right.set_title("per-stage time")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    title = result.get("label") or Path(result["engine_set"]["path"]).name
    # a --label is the user's text: "$" pairs are no math to typeset (a stray "\\frac" raised), control
    # characters no glyphs
    figure.suptitle(printable(f"{title}: {result['environment']['cpu']['model']}"), fontsize=10, parse_math=False)
    figure.tight_layout()
    figure.savefig(file, format=image_format, dpi=110)
    plt.close(figure)
