"""Resuming an interrupted ``detect`` run (``--skip-scored FILE``): the images an earlier run's
output lists with a score are not scored again.

The earlier output is ``detect``'s own ``--format jsonl`` or ``--format csv`` (chosen by the
file's suffix), typically the very file the new run appends to with ``>>``. An image that failed
there is tried again. A run killed outright (SIGKILL, a lost machine) may leave its last row cut
short: that row is taken as not scored, so its image is scored again; a malformed row anywhere
else means the file is not a detect output, and is an error naming its line.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dfd.runtime.errors import DfdError
from dfd.runtime.face_boxes import JSONL_SUFFIXES, bounded_lines, open_line_file

from .cli_types import regular_file_output

REQUIRED_CSV_COLUMNS = ("image", "score", "error")


class ScoredFileError(DfdError):
    """The ``--skip-scored`` file cannot be read or is not a ``detect`` output."""


@dataclass(frozen=True)
class ScoredImages:
    """What an earlier ``detect`` output says was scored."""

    path: Path
    images: frozenset[str]  # normalised paths (os.path.normpath) of the images scored there
    failed: int  # rows there with an error: their images are tried again
    cut_row: bool  # the last row was cut short (a killed run): its image is scored again

    def holds(self, image: str) -> bool:
        """Whether ``image``, as ``detect`` lists it, was scored there."""
        return os.path.normpath(image) in self.images


def load_scored_images(path: Path) -> ScoredImages:
    """Read an earlier ``detect`` output, a line at a time (memory grows with the images it
    names, not with its text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".csv" and suffix not in JSONL_SUFFIXES:
        raise ScoredFileError(f"{path}: --skip-scored reads detect's --format jsonl (.jsonl) or --format csv (.csv) "
                              f"output, not {suffix or 'a file without suffix'}")
    if not path.is_file():  # a device behind the name would never end a line
        raise ScoredFileError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    try:
        with open_line_file(path) as handle:
            lines = bounded_lines(path, handle, ScoredFileError, "a detect output")
            rows = _csv_rows(path, lines) if suffix == ".csv" else _jsonl_rows(path, lines)
            scored, failed, cut_row = set(), 0, False
            for image, score, error in rows:
                if image is None:
                    cut_row = True
                elif score is not None and not error:
                    scored.add(os.path.normpath(image))
                else:
                    failed += 1
    except OSError as exc:
        raise ScoredFileError(f"cannot read {path}: {exc}") from None
    return ScoredImages(path, frozenset(scored), failed, cut_row)


Row = tuple[str | None, object, object]  # (image, score, error); image None: the cut-short last row


def _jsonl_rows(path: Path, lines: Iterable[str]) -> Iterator[Row]:
    previous_cut = None  # the line number of a row that did not parse and ended the file so far
    for number, line in enumerate(lines, start=1):
        if previous_cut is not None:
            raise ScoredFileError(f"{path}:{previous_cut}: not JSON; only the last line of a killed run may be cut "
                                  f"short")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if not line.endswith("\n"):  # the run was killed while writing it
                yield None, None, None
                return
            previous_cut = number
            continue
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "score" not in record:
            raise ScoredFileError(f"{path}:{number}: not a line of detect's jsonl output (an object with \"image\" "
                                  f"and \"score\")")
        yield record["image"], record["score"], record.get("error")
    if previous_cut is not None:
        raise ScoredFileError(f"{path}:{previous_cut}: not JSON, and the line is whole: not a detect output")


def _csv_rows(path: Path, lines: Iterable[str]) -> Iterator[Row]:
    reader = csv.DictReader(lines, strict=True)
    try:
        header = reader.fieldnames or ()
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
        if header and missing:
            raise ScoredFileError(f"{path}: the CSV header lacks {', '.join(missing)}: not detect's --format csv "
                                  f"output")
        short = None  # the line of a row with fewer cells than the header: only the last may be
        for row in reader:
            if short is not None:
                raise ScoredFileError(f"{path}:{short}: the row has fewer cells than the header; only the last row "
                                      f"of a killed run may be cut short")
            if None in row:
                raise ScoredFileError(f"{path}:{reader.line_num}: the row has more cells than the header")
            if any(row[c] is None for c in REQUIRED_CSV_COLUMNS):
                short = reader.line_num
                continue
            yield row["image"], row["score"] or None, row["error"]
        if short is not None:
            yield None, None, None
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):  # a quoted cell the killed run did not close
            yield None, None, None
            return
        raise ScoredFileError(f"{path}:{reader.line_num + 1}: malformed CSV row ({exc})") from None


def refuse_stdout_over(path: Path) -> None:
    """``detect ... --skip-scored out.jsonl > out.jsonl``: the shell emptied the file before detect
    started, so the run would score everything again while the user believes it resumes."""
    found = regular_file_output(sys.stdout)
    if found is None:
        return  # a pipe, a terminal, a test's buffer: not the file
    _, status, appending = found
    try:
        same = os.path.samestat(status, os.stat(path))
    except OSError:
        return
    if same and not appending:
        raise ScoredFileError(f"stdout writes over {path}, the --skip-scored file ('>' emptied it before detect "
                              f"started, so the rows it held are gone); to resume a run, append with '>>'")
