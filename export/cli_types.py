"""Click parameter types shared by the ``dfd-export`` verbs."""

from __future__ import annotations

import math

import click


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
