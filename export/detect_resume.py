"""Resuming an interrupted ``detect`` run (``--skip-scored FILE``): the images an earlier run's
output lists with a score are not scored again.

The earlier output is ``detect``'s own ``--format jsonl`` or ``--format csv`` (chosen by the
file's suffix), typically the very file the new run appends to with ``>>``. An image that failed
there is tried again. A run killed outright (SIGKILL, a lost machine) may leave its last row cut
short: that row is taken as not scored, so its image is scored again; a malformed row anywhere
else means the file is not a detect output, and is an error naming its line.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dfd.runtime.errors import DfdError
from dfd.runtime.line_files import JSONL_SUFFIXES, bounded_lines, normalised_spelling, open_line_file

from .cli_types import regular_file_output

REQUIRED_CSV_COLUMNS = ("image", "score", "error")
ENGINE_SET_FIELD = "engine_set"
"""The row's field (jsonl key, csv column) naming the engine set that scored it: its manifest's
``content_sha256``."""


class ScoredFileError(DfdError):
    """The ``--skip-scored`` file cannot be read or is not a ``detect`` output."""


@dataclass(frozen=True)
class ScoredImages:
    """What an earlier ``detect`` output says was scored."""

    path: Path
    images: frozenset[str]  # the images scored there, each as _spelling gives it
    failed: int  # rows there with an error: their images are tried again
    cut_row: bool  # the last row was cut short (a killed run): its image is scored again
    format: str  # "jsonl" or "csv", by the file's suffix
    whole_rows_bytes: int  # the file's bytes before the cut row (all of them when none is cut)
    engine_sets: frozenset[str | None]  # the sets that scored its rows; None: a row names none

    def holds(self, image: str) -> bool:
        """Whether ``image``, as ``detect`` lists it, was scored there."""
        return _spelling(image) in self.images


def _spelling(image: str) -> str:
    """An image as listed, normalised where that cannot make it another file (``./a.jpg`` is
    ``a.jpg``; ``link/../a.jpg`` stays as it is)."""
    return normalised_spelling(image) or image


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
        with open(path, "rb") as raw:
            bom = len(codecs.BOM_UTF8) if raw.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
        with open_line_file(path) as handle:
            lines = _CountedLines(bounded_lines(path, handle, ScoredFileError, "a detect output"), bom)
            rows = _csv_rows(path, lines) if suffix == ".csv" else _jsonl_rows(path, lines)
            scored, failed, cut_at, engine_sets = set(), 0, None, set()
            for row in rows:
                if isinstance(row, _CutRow):
                    cut_at = row.starts_at
                    continue
                image, score, error, engine_set = row
                if score is not None and not error:
                    scored.add(_spelling(image))
                    engine_sets.add(engine_set)
                else:
                    failed += 1
    except OSError as exc:
        raise ScoredFileError(f"cannot read {path}: {exc}") from None
    return ScoredImages(path, frozenset(scored), failed, cut_at is not None, "csv" if suffix == ".csv" else "jsonl",
                        lines.consumed if cut_at is None else cut_at, frozenset(engine_sets))


def check_engine_set(scored: ScoredImages, content_sha256: str, engine_dir: Path) -> str | None:
    """Refuse to resume with another engine set than the one that scored ``scored``'s rows: the
    images left would get another set's scores (fp16 beside fp32, another checkpoint), and nothing
    in the file would tell them apart. Returns a warning when some rows name no set (written by a
    dfd-export from before rows named it), whose set cannot be checked."""
    others = sorted(s for s in scored.engine_sets if s is not None and s != content_sha256)
    if others:
        named = ", ".join(f"{s[:12]}..." for s in others)
        raise ScoredFileError(f"{scored.path} holds scores from another engine set (content_sha256 {named}) than "
                              f"{engine_dir} ({content_sha256[:12]}...); the images left would be scored by another "
                              f"set than those already there. Resume with the set that scored them (dfd-export inspect "
                              f"SET shows its content_sha256), or score the images with this set into a new file "
                              f"without --skip-scored")
    if None in scored.engine_sets:
        return (f"some scored rows of {scored.path} do not name their engine set (written by an earlier dfd-export), "
                f"so whether {engine_dir} scored them cannot be checked")
    return None


class _CountedLines:
    """A file's lines, counting the bytes read so far (its byte-order mark included): where a cut
    row starts, so that a resumed run appending to the file can drop it."""

    def __init__(self, lines: Iterable[str], bom: int) -> None:
        self._lines = lines
        self.consumed = bom
        self.ended = True  # whether the last line read so far has its line end: detect writes every row whole

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            # the file is read as UTF-8 with surrogate escapes and its line ends untranslated, so
            # this gives back its own bytes
            self.consumed += len(line.encode("utf-8", "surrogateescape"))
            self.ended = line.endswith(("\n", "\r"))
            yield line


@dataclass(frozen=True)
class _CutRow:
    """The last row of a killed run, cut short: not scored."""

    starts_at: int  # the file's bytes before it


Row = tuple[str, object, object, object]  # (image, score, error, engine set)


def _jsonl_rows(path: Path, lines: _CountedLines) -> Iterator[Row | _CutRow]:
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
                yield _CutRow(lines.consumed - len(line.encode("utf-8", "surrogateescape")))
                return
            previous_cut = number
            continue
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or "score" not in record:
            raise ScoredFileError(f"{path}:{number}: not a line of detect's jsonl output (an object with \"image\" "
                                  f"and \"score\")")
        yield record["image"], record["score"], record.get("error"), _engine_set(record.get(ENGINE_SET_FIELD))
    if previous_cut is not None:
        raise ScoredFileError(f"{path}:{previous_cut}: not JSON, and the line is whole: not a detect output")


def _engine_set(value: object) -> str | None:
    """A row's engine set as read: a jsonl value that is no string is taken as none named."""
    return value if isinstance(value, str) and value else None


def _csv_rows(path: Path, lines: _CountedLines) -> Iterator[Row | _CutRow]:
    zero_tail: list[int] = []  # the line where a zero-filled tail starts, once one is met
    reader = csv.DictReader(_refusing_nul(path, lines, zero_tail), strict=True)
    row_end = lines.consumed  # where the rows read so far end: the csv module reads no line ahead
    try:
        header = reader.fieldnames or ()
        missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
        if header and missing:
            raise ScoredFileError(f"{path}: the CSV header lacks {', '.join(missing)}: not detect's --format csv "
                                  f"output")
        row_end = lines.consumed
        short = None  # the line of a row with fewer cells than the header: only the last may be
        for row in reader:
            if short is not None:
                raise ScoredFileError(f"{path}:{short}: the row has fewer cells than the header; only the last row "
                                      f"of a killed run may be cut short")
            if None in row:
                raise ScoredFileError(f"{path}:{reader.line_num}: the row has more cells than the header")
            if not lines.ended:  # the file's last line, cut in its last cell (every cell may be there)
                yield _CutRow(row_end)
                return
            if any(row[c] is None for c in REQUIRED_CSV_COLUMNS):
                short = reader.line_num
                continue
            row_end = lines.consumed
            yield row["image"], row["score"] or None, row["error"], _engine_set(row.get(ENGINE_SET_FIELD))
        if short is not None or zero_tail:
            yield _CutRow(row_end)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):  # a quoted cell the killed run did not close
            yield _CutRow(row_end)
            return
        raise ScoredFileError(f"{path}:{reader.line_num + 1}: malformed CSV row ({exc})") from None


def _refusing_nul(path: Path, lines: _CountedLines, zero_tail: list[int]) -> Iterator[str]:
    """The lines up to a NUL, which detect never writes. The csv module reads one on Python 3.11 and
    later but calls it a malformed row on 3.10, so the rule is ours, the jsonl reader's: a last line
    without its line end (the zero-filled tail a power loss can leave) is where the rows end, and a
    NUL anywhere else, the header included, is no detect output."""
    for number, line in enumerate(lines, start=1):
        if "\0" in line:
            if number > 1 and not lines.ended:
                zero_tail.append(number)
                return
            raise ScoredFileError(f"{path}:{number}: a NUL byte: not detect's --format csv output")
        yield line


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
