"""Click parameter types shared by the ``dfd-export`` verbs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import click

from dfd.runtime.errors import os_error_text


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


def prepare_output_file(path: Path | None, option: str) -> None:
    """Create an output file's folder and check it takes files before the run: a bad path then
    fails at once instead of after minutes (hours at paper size) of measurement."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create the folder for {path}: {os_error_text(exc)}",
                                 param_hint=option) from exc
    if not os.access(path.parent, os.W_OK):
        raise click.BadParameter(f"cannot write into {path.parent}", param_hint=option)
