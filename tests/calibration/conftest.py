"""Fixtures shared by the calibration tests."""

from __future__ import annotations

import numpy as np
import pytest

from dfd.calibration.sources import builtin_photographs


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 160x164 crop of a real photograph (face and texture), odd-free but not block-aligned."""
    return dict(builtin_photographs())["skimage:astronaut.png"][40:200, 180:344].copy()
