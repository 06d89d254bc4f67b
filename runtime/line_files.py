"""Files of one line per image that users hand to ``detect`` (face boxes, an earlier run's output
to resume), read a line at a time, safely: names that are not UTF-8 kept as the folder listing
gives them, and a file without line breaks refused at its first long line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .errors import DfdError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Longer than any line detect writes (a path is at most 4096 bytes), short enough that a file
# without line breaks is refused before it fills the memory
MAX_LINE_CHARS = 1 << 20


def open_line_file(path: Path) -> TextIO:
    """Open a ``.csv`` or JSON-lines file of image names (face boxes, detect's output) for reading
    a line at a time. surrogateescape: a name that is not UTF-8 (detect writes such file names back
    as their own bytes) reads as the same str that listing the folder gives, so it still matches
    its image. CSV: newline="", line ends are left to the csv module, so a \r inside a quoted name
    stays one; JSON lines end at \n only (str.splitlines would also split at U+2028, form feeds and
    other characters a file name may hold; json.loads ignores a \r left at the end)."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape",
                newline="" if path.suffix.lower() == ".csv" else "\n")


def bounded_lines(path: Path, handle: TextIO, error: type[DfdError], what: str) -> Iterator[str]:
    """The file's lines, each at most MAX_LINE_CHARS long: a file without line breaks (a binary
    named .jsonl, say) is refused at its first long line (``error``, saying ``what`` the file
    should be) instead of read whole into memory."""
    number = 0
    while line := handle.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise error(f"{path}:{number}: a line of over {MAX_LINE_CHARS:,} characters; {what} has one short "
                        f"line per image")
        yield line


def normalised_spelling(path: str) -> str | None:
    """``path`` normalised by its spelling alone (``os.path.normpath``), or None where that could
    name another file: ``link/../a.jpg`` is ``a.jpg`` only when ``link`` is no symbolic link, which
    only the file system can tell. Image paths listed in these files are matched by it."""
    after_folder = False
    for part in Path(path).parts:
        if part == ".." and after_folder:
            return None
        after_folder = after_folder or part not in ("..", ".", os.sep)
    return os.path.normpath(path)
