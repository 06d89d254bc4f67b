"""Writing a file so that readers see either the old file or the whole new one.

Degraded copies and cached calibration sets are read back later (by ``verify --images``, by the
next build), so an interrupted or failed write must never leave a truncated file under the real
name, nor touch any other file of the user's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a hidden temporary file beside ``path`` (a name no other file has, so
    each writer has its own) and rename it to ``path``; on any failure the temporary file is
    removed and the error raised. Python opens the file, so any name the file system takes
    works (OpenCV's ``imwrite`` crashes on names that are not valid UTF-8)."""
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
