"""``dfd-export degrade``: degraded copies of images, for verify and benchmarks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dfd.runtime.errors import first_few

from .cli_errors import handles_errors, printable, require_stdout, warn
from .cli_types import DEGRADING_MEMORY, FiniteFloatRange, OutputFolder, Verb, flags_given, max_pixels_option
from .image_arguments import expand_inputs, is_folder


@click.command(cls=Verb)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=OutputFolder(outside_engine_sets=True),
              help="Folder for the degraded copies (PNG, lossless), all in this one folder: an image "
                   "becomes <its name without its suffix>.png there (a.jpg -> a.png), and images whose names "
                   "share that stem (a.jpg and a.png, or a.jpg in two folders; case ignored) get -1, -2, ... "
                   "suffixes in input order; each line printed says which file became which.")
@click.option("--fixed", type=str, default=None, callback=lambda ctx, param, value: _check_fixed(value),
              help="One fixed degradation for every image: jpeg10, blur3, noise25, gamma_dark, down4_up, "
                   "compound_a or compound_b. Default: the paper's random compound degradation.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random draws: the compound degradation and, with --share, which images are degraded.")
@click.option("--share", type=FiniteFloatRange(0, 1), default=1.0, show_default=True,
              help="Fraction of images degraded, with --fixed too (a seeded draw per image; the rest are "
                   "copied unchanged).")
@click.option("--recursive", is_flag=True, help="Also take the images in sub-folders of a folder (never the copies "
              "degrade wrote into --out). An --out inside a folder given, holding images degrade did not write "
              "there, is refused with or without it.")
@click.option("--force", is_flag=True, help="Replace files that already exist in --out (an input is never replaced).")
@click.option("--resume", is_flag=True, help="Keep the copies an earlier, interrupted run wrote into --out from the "
              "same images with the same settings (as recorded in its hidden .dfd-degrade-copies.jsonl, and "
              "unchanged since) and degrade the rest.")
@max_pixels_option("is degraded from its reduced decode (1/2 .. 1/8, noted)", "fails on its own line",
                   DEGRADING_MEMORY)
@handles_errors
def degrade(inputs, out_dir, fixed, seed, share, recursive, force, resume, max_pixels):
    """Write degraded copies of images (the paper's compound degradation engine), for verify and
    benchmarks: INPUTS are image files and folders, each image becomes one PNG in --out, and each
    line printed says which file became which (and what decoding converted: EXIF rotation, alpha,
    16-bit, a reduced decode of a huge JPEG). Each image's draw depends on --seed and its pixels,
    not its name. One unreadable image is reported and the others still processed (exit 2).
    Nothing is overwritten without --force, and an input never; --resume goes on where an
    interrupted run stopped."""
    from dfd.calibration.degrade import DegradationError
    from dfd.calibration.degrade_files import degrade_files
    from dfd.runtime.progress import progress_bar, stderr_is_terminal

    require_stdout()  # each line says which file became which: lost without one, for a run that exits 0
    if fixed is not None and share >= 1 and flags_given(click.get_current_context(), ("seed",)):
        warn("--seed has no effect: a --fixed degradation draws nothing, and with --share 1 every image is degraded")
    paths, problems = _degrade_inputs(inputs, out_dir, recursive)
    for given, message in problems:
        click.echo(printable(f"error: {given or repr(given)}: {message}"), err=True)
    if not paths:
        if problems:
            sys.exit(2)
        raise DegradationError("no images to degrade")
    failed, kept, written = len(problems), 0, 0
    results = degrade_files([Path(p) for p in paths], out_dir, seed=seed, fixed=fixed, share=share, replace=force,
                            resume=resume, max_pixels=max_pixels)
    # the bar only on a terminal, where each line is written above it: in a log the line each
    # image gets is its progress already
    with progress_bar(total=len(paths), desc="degrade", unit="image", leave=False,
                      disable=len(paths) < 2 or not stderr_is_terminal()) as bar:
        for result in results:
            with bar.external_write_mode(file=sys.stderr):
                if result.output is not None:
                    notes = f"  ({'; '.join(result.notes)})" if result.notes else ""
                    # with a share, which images are the degraded ones is the label a user needs
                    kind = ("" if share >= 1 else "  [degraded]" if result.degraded
                            else "  [clean copy: outside the --share]")
                    kept, written = kept + result.kept, written + (not result.kept)
                    click.echo(printable(f"{result.source} -> {result.output}{kind}"
                                         f"{'  [kept: written by an earlier run]' if result.kept else ''}{notes}"))
                else:
                    failed += 1
                    click.echo(printable(f"error: {result.error}"), err=True)  # the message names the file
            bar.update(1)
    if kept:
        click.echo(f"kept {kept} cop(ies) an earlier run wrote, wrote {written} new one(s)", err=True)
    if failed:
        click.echo(f"{failed} of {len(paths) + len(problems)} input(s) failed", err=True)
        sys.exit(2)


def _check_fixed(name: str | None) -> str | None:
    """A --fixed name degrade knows, checked before the inputs are scanned (a bad name came after
    the scan's warnings, or after "no images" with exit 2)."""
    from dfd.calibration.degrade import FIXED_DEGRADATIONS

    if name is not None and name not in FIXED_DEGRADATIONS:
        raise click.BadParameter(f"unknown fixed degradation {name!r}; known: {', '.join(FIXED_DEGRADATIONS)}")
    return name


def _degrade_inputs(inputs: tuple[str, ...], out_dir: Path, recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """The images to degrade, each once (by resolved path, first spelling kept), and the problems.
    A folder argument that holds --out leaves out the copies degrade wrote there earlier (with a
    warning), and refuses an --out that holds anything else, scanned (--recursive) or not: those
    are the user's images (a sub-folder of originals), which --force would have replaced as if they
    were old copies. An image or folder named explicitly is always taken, since the output checks
    already refuse to overwrite an input. An --out that is a folder argument itself is refused: its images and their
    copies would be one folder."""
    from dfd.calibration.degrade import DegradationError
    from dfd.calibration.degrade_files import is_recorded_copy, recorded_copies

    # realpath, not Path.resolve: a symbolic link loop among the images stopped the run with a
    # traceback (Python 3.11 raises RuntimeError); the loop fails on its own line when it is read
    out_root = Path(os.path.realpath(out_dir))
    images: list[str] = []
    problems: list[tuple[str, str]] = []
    left_out: list[str] = []
    not_copies: list[str] = []  # images inside --out that degrade did not write there
    records: dict[Path, dict[str, list[dict]]] = {}  # folder inside --out -> the copies recorded there
    seen: set[Path] = set()
    repeated = 0
    out_in_a_folder_given = False
    for given in inputs:
        given_root = Path(os.path.realpath(given))
        folder_given = is_folder(given)
        if folder_given and given_root == out_root:
            raise DegradationError(f"--out {out_dir} is the folder {given} of the images to degrade; write the "
                                   f"degraded copies to another folder")
        found, given_problems = expand_inputs((given,), recursive=recursive)
        problems += given_problems
        scans_out = folder_given and given_root in out_root.parents
        out_in_a_folder_given = out_in_a_folder_given or scans_out
        for image in found:
            resolved = Path(os.path.realpath(image))
            if scans_out and out_root in resolved.parents:
                folder = Path(image).parent
                if folder not in records:
                    records[folder] = recorded_copies(folder)
                (left_out if is_recorded_copy(Path(image), records[folder]) else not_copies).append(image)
            elif resolved in seen:
                repeated += 1
            else:
                seen.add(resolved)
                images.append(image)
    if out_in_a_folder_given and not recursive:
        # not scanned, yet --force would replace the originals there whose names the copies take
        not_copies += _images_not_recorded_as_copies(out_dir)
    if not_copies:
        raise DegradationError(f"--out {out_dir} lies inside a folder being degraded and holds {len(not_copies)} "
                               f"image(s) that degrade did not write there (originals?): {first_few(not_copies)}; "
                               f"choose an --out outside the folders being degraded, or a new one")
    if left_out:
        warn(f"left out {len(left_out)} earlier degraded cop(ies) inside --out {out_dir}: {first_few(left_out)}")
    if repeated:
        warn(f"{repeated} image(s) given more than once (or through links to one file) are degraded once")
    return images, problems


def _images_not_recorded_as_copies(folder: Path) -> list[str]:
    """The images directly in ``folder`` that degrade did not write there (none where it does not
    exist or holds no image)."""
    from dfd.calibration.degrade_files import is_recorded_copy, recorded_copies
    from dfd.calibration.sources import ImageSourceError, scan_image_folder

    try:
        found = scan_image_folder(folder, recursive=False).images
    except ImageSourceError:
        return []
    copies = recorded_copies(folder)
    return [str(image) for image in found if not is_recorded_copy(image, copies)]
