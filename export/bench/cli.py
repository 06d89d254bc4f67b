"""``dfd-export bench``: the command."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from ..cli_errors import fail_interrupted, handles_errors, printable, require_stdout, warn
from ..cli_types import GivenPath, Verb, engine_dir_argument, files_a_run_reads, is_stdout, max_pixels_option, \
    prepare_output_file, write_output_file
from .measure import BenchSettings, run_benchmark
from .plot import plot_format, write_plot


def _parse_batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    entries = [v.strip() for v in value.split(",")]
    if not any(entries):
        raise click.BadParameter("expected at least one batch size, like 1,4,16")
    # plain digits: int() also takes "1_0" (10), and an empty entry ("1,,2") was a typo passed over
    if not all(re.fullmatch(r"[+-]?\d+", v) for v in entries):
        raise click.BadParameter(f"expected comma-separated integers like 1,4,16, got {value!r}")
    sizes = tuple(int(v) for v in entries)
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"batch sizes must be positive, got {value!r}")
    return tuple(sorted(set(sizes)))


def _summary_lines(result: dict[str, Any]) -> list[str]:
    """The table printed after a run; headed by its --label, which names it on screen too and
    not only in the --json and --plot files."""
    lines = [printable(f"run: {result['label']}")] if result.get("label") else []
    lines.append(f"{'pipeline':8} {'batch':>5} {'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'img/s':>8}")
    for name, run in result["runs"].items():
        for b, r in run["batches"].items():
            lat = r["latency_ms"]
            lines.append(f"{name:8} {b:>5} {lat['p50']:>10.1f} {lat['p90']:>10.1f} {lat['p99']:>10.1f} "
                         f"{r['throughput_images_per_s']:>8.2f}")
    for b, ratio in result.get("speedup", {}).items():
        lines.append(f"speed-up vs torch at batch {b}: {ratio['end_to_end_p50']:.2f}x end to end, "
                     f"{ratio['without_face_localisation_p50']:.2f}x without face localisation, "
                     f"{ratio['streams_p50']:.2f}x streams only")
    return lines


@click.command("bench", cls=Verb)
@engine_dir_argument
@click.option("--images", "images_dir", type=GivenPath(file_okay=False, exists=True), default=None,
              help="Folder of images to score, searched with its sub-folders: its first readable ones, as many "
                   "as the largest batch size (at least 8); with --compare torch, of at least 252x252 (the "
                   "reference pipeline's crop; smaller ones are left out with a warning) [default: photographs "
                   "shipped in installed packages].")
@click.option("--batch-sizes", default="1,4,16", show_default=True, callback=_parse_batch_sizes,
              help="Comma-separated batch sizes to measure.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Unrecorded iterations per batch size before measuring.")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Recorded iterations per batch size (and pipeline).")
@click.option("--compare", type=click.Choice(["torch"]), default=None,
              help="Also measure the reference-style PyTorch eager pipeline on the same images.")
@click.option("--weights-dir", type=GivenPath(file_okay=False, exists=True), default=None,
              help="--compare torch: the checkpoints the set was built from, if they moved since the build "
                   "[default: the folder its manifest records].")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True, help="Runtime backend to measure.")
@click.option("--label", default=None, help="A name for this run, kept in the JSON and the plot title, and "
                                             "printed above the summary.")
@click.option("--json", "json_out", type=GivenPath(dir_okay=False), default=None,
              help="Write the full result document here.")
@click.option("--plot", "plot_out", type=GivenPath(dir_okay=False), default=None,
              help="Write a plot here, in the format its suffix names (.png, .svg, .pdf, .jpg, ...; PNG without a "
                   "suffix); needs matplotlib.")
@max_pixels_option("is scored on its reduced decode (1/2 .. 1/8; with --compare torch it is left out, as the "
                   "reference pipeline would read it at full size)", "is left out with a warning",
                   "A batch holds its decoded images (3 bytes a pixel each)")
@handles_errors
def bench(engine_dir, images_dir, batch_sizes, warmup, iterations, compare, weights_dir, backend, label, json_out,
          plot_out, max_pixels):
    """Measure an engine set: latency percentiles, throughput and per-stage time per batch size,
    optionally next to the reference PyTorch pipeline (--compare torch)."""
    from dfd.runtime.manifest import load_manifest, verify_files
    from dfd.runtime.progress import progress_bar

    if json_out is None or is_stdout(json_out) or is_stdout(plot_out):  # a results file keeps them without one
        require_stdout()
    if json_out is not None and plot_out is not None and json_out.resolve() == plot_out.resolve():
        raise click.BadParameter(f"{json_out} is the --json file too; the plot would replace the results",
                                 param_hint="--plot")
    manifest = None  # the build record --compare torch rebuilds the reference from, its digest checked
    if compare == "torch":
        manifest = load_manifest(engine_dir, verify=False)
        verify_files(manifest, hashes=False)
    read = files_a_run_reads(images_dir, manifest, weights_dir)
    for path, option in ((json_out, "--json"), (plot_out, "--plot")):
        prepare_output_file(path, option, engine_dir, inputs=read)
    image_format = plot_format(plot_out) if plot_out is not None else None  # a missing matplotlib fails now
    settings = BenchSettings(engine_dir=engine_dir, images_dir=images_dir, batch_sizes=batch_sizes,
                             warmup=warmup, iterations=iterations, compare_torch=compare == "torch",
                             backend=backend, label=label, weights_dir=weights_dir, max_pixels=max_pixels)
    pipelines = 2 if settings.compare_torch else 1
    bar = progress_bar(total=len(batch_sizes) * iterations * pipelines, desc="bench", unit="it")
    try:
        result = run_benchmark(settings, progress=bar.set_description, tick=lambda: bar.update(1))
    finally:
        bar.close()
    for warning in result["warnings"]:
        warn(warning)
    # the files before the summary on stdout, whose failure (a full disk, > /dev/full) must not lose them;
    # the measurement first, then the plot drawn from it
    if json_out is not None:
        text = (json.dumps(result, indent=2) + "\n").encode("utf-8")
        write_output_file(json_out, lambda file: file.write(text))
        click.echo(printable(f"results written: {json_out}"), err=True)
    if plot_out is not None:
        write_output_file(plot_out, lambda file: write_plot(result, file, image_format))
        click.echo(printable(f"plot written: {plot_out}"), err=True)
    to_stderr = is_stdout(json_out) or is_stdout(plot_out) or sys.stdout is None  # >&- with --json FILE
    for line in _summary_lines(result):
        click.echo(line, err=to_stderr)
    if result["interrupted"]:
        fail_interrupted()
