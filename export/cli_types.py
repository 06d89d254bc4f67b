"""Click parameter types shared by the ``dfd-export`` verbs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import click

from dfd.calibration.atomic_files import write_atomically
from dfd.runtime.errors import DfdError, os_error_text
from dfd.runtime.manifest import engine_set_files


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities.

    Click checks a range by comparison, and NaN passes every comparison it makes, so
    ``--max-abs-dp nan`` or ``--calib-degrade nan`` would be taken as given: a verify gate that
    can never pass, a calibration share that is no share. Without bounds it is a finite float.
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def prepare_output_file(path: Path | None, option: str, engine_dir: Path | None = None,
                        inputs: Sequence[Path] = ()) -> None:
    """Create an output file's folder and check the file can be written before the run: a bad
    path then fails at once instead of after minutes (hours at paper size) of measurement. The
    check opens the file for appending (which changes nothing, and is removed again if it was
    not there): a permission test such as ``os.access`` says yes to root for any path. Never an
    output: a file of the engine set being measured (its manifest.json, a graph), anything else
    inside its folder (a later ``build --force`` there would refuse the stranger), or one of
    ``inputs``, the files the run reads (checkpoints, images)."""
    if path is None:
        return
    existed = path.exists()
    if engine_dir is not None and existed:
        if any(_same_file(path, engine_dir / name) for name in engine_set_files(engine_dir) or ()):
            raise click.BadParameter(f"{path} is a file of the engine set {engine_dir}; writing there would "
                                     f"destroy the set", param_hint=option)
    if engine_dir is not None and engine_dir.resolve() in path.resolve().parents:
        raise click.BadParameter(f"{path} is inside the engine set's folder {engine_dir}; write reports "
                                 f"beside it, not in it", param_hint=option)
    if existed and any(_same_file(path, source) for source in inputs):
        raise click.BadParameter(f"{path} is a file this run reads (a checkpoint or an image); writing there "
                                 f"would destroy it", param_hint=option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create the folder for {path}: {os_error_text(exc)}",
                                 param_hint=option) from exc
    try:
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {os_error_text(exc)}", param_hint=option) from exc


def write_output_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a report (``verify --json``, ``bench --json/--plot``) with ``write`` and put it in
    place only once it is whole: a full disk or an interrupt leaves the earlier file as it was, not
    a truncated one; the error names the file."""
    try:
        write_atomically(path, write)
    except OSError as exc:
        raise DfdError(f"cannot write {path}: {os_error_text(exc)}") from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
