"""Face boxes a user already has (from RetinaFace as the reference runs it, a tracker, a labelling
tool), read from a file and matched to the images ``dfd-export detect`` scores.

Two formats, chosen by the file's suffix:

* ``.csv`` with a header holding ``image,x1,y1,x2,y2`` (other columns are ignored); a row whose
  four box cells are all empty gives that image no box;
* ``.jsonl`` / ``.ndjson``: one object per line, ``{"image": "a.jpg", "box": [x1, y1, x2, y2]}``;
  ``"box": null`` gives no box. A line of ``detect --format jsonl`` output (no ``"box"``, the box in
  ``"face"``) is read too: its face box when it has one, else no box.

An empty file is an error (a failed redirect, not a list of images without boxes).

So ``detect``'s own jsonl or csv output is a face-box file: a second run with ``--face-boxes``
crops exactly the faces the first run used (the boxes are written unrounded), which is how one
compares two engine sets, or precisions, with face localisation held fixed, or corrects a few
boxes by hand.

``image`` is the image's path as ``detect`` lists it, or its bare file name when that name is
unique among the images. Boxes are in pixels of the image as decoded (EXIF orientation applied).
All of the file is read before anything is scored, so a malformed line stops the run at once
with its line number instead of after hours of scoring; a box that parses but is unusable for
its image (not finite, x2 < x1, outside the image) fails only that image, as in the Python API.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DfdError
from .line_files import JSONL_SUFFIXES, bounded_lines, normalised_spelling, open_line_file

Box = tuple[float, float, float, float]
BOX_COLUMNS = ("x1", "y1", "x2", "y2")  # also the box columns of detect's csv output, which this reads back
CSV_COLUMNS = ("image", *BOX_COLUMNS)


class FaceBoxFileError(DfdError):
    """The face-box file cannot be read, or an entry in it is malformed or ambiguous."""


@dataclass(frozen=True)
class FaceBoxFile:
    """The entries of a face-box file: image key -> box, in file order."""

    path: Path
    boxes: dict[str, Box]

    def assign(self, images: Sequence[str]) -> tuple[dict[str, Box], list[str]]:
        """Match entries to ``images``: (image -> box, keys that matched no image).

        A key matches an image whose path is the same once normalised (where no ``..`` follows a
        folder, which may be a link), else the same file: the key
        resolved from the current folder or, when it names a folder, from the boxes file's folder
        (an earlier ``detect``'s output lists paths as given where it ran, which another folder
        spells differently). A key without a folder also matches images with that file name,
        which is an error when they are several different files (the user has to say which)."""
        by_path: dict[str, list[str]] = {}
        by_name: dict[str, list[str]] = {}
        for image in images:
            spelled = normalised_spelling(image)
            if spelled is not None:
                by_path.setdefault(spelled, []).append(image)
            by_name.setdefault(Path(image).name, []).append(image)
        by_file: dict[str, list[str]] = {}  # resolved (file-system lookups) only once a key needs it
        assigned: dict[str, Box] = {}
        unused: list[str] = []
        for key, box in self.boxes.items():
            spelled = normalised_spelling(key)
            matches = None if spelled is None else by_path.get(spelled)
            if matches is None:
                if not by_file:
                    for image in images:
                        by_file.setdefault(os.path.realpath(image), []).append(image)
                matches = self._same_file(key, by_file)
            if matches is None and os.path.basename(key) == key:
                matches = by_name.get(key)
                files = {os.path.realpath(image): image for image in reversed(matches or ())}
                distinct = sorted(files.values())  # one spelling of each different file
                if len(distinct) > 1:
                    shown = ", ".join(distinct[:3]) + (", ..." if len(distinct) > 3 else "")
                    raise FaceBoxFileError(f"{self.path}: the entry for {key!r} matches {len(distinct)} images "
                                           f"({shown}); write the image's path as detect lists it")
            if matches is None:
                unused.append(key)
                continue
            for image in matches:
                if image in assigned and assigned[image] != box:
                    raise FaceBoxFileError(f"{self.path}: {image} gets two different boxes "
                                           f"({assigned[image]} and {box}, the second from {key!r})")
                assigned[image] = box
        return assigned, unused

    def _same_file(self, key: str, by_file: dict[str, list[str]]) -> list[str] | None:
        """The images that are the file ``key`` names, from here or from the boxes file's folder."""
        places = [key]
        if not os.path.isabs(key) and os.path.basename(key) != key:
            places.append(os.path.join(self.path.parent, key))
        for place in places:
            try:
                matches = by_file.get(os.path.realpath(place))
            except (OSError, ValueError):  # a name too long to resolve, a NUL character
                continue
            if matches:
                return matches
        return None


def load_face_boxes(path: Path) -> FaceBoxFile:
    """Read a ``.csv`` or ``.jsonl`` face-box file; FaceBoxFileError naming the line of any problem.

    The file is read a line at a time, so memory grows with the boxes it holds, not with its text
    (detect's jsonl output of a million images is about 230 MB)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".csv" and suffix not in JSONL_SUFFIXES:
        raise FaceBoxFileError(f"{path}: face boxes are read from a .csv file (columns image,x1,y1,x2,y2) or a "
                               f".jsonl file (lines like {{\"image\": \"a.jpg\", \"box\": [x1, y1, x2, y2]}}), "
                               f"not {suffix or 'a file without suffix'}")
    try:
        mode = path.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            # /dev/zero behind a link named boxes.jsonl never ends a line: reading it fills the memory
            raise FaceBoxFileError(f"{path} is a device, not a file of face boxes")
        with open_line_file(path) as handle:
            lines = bounded_lines(path, handle, FaceBoxFileError, "a face-box file")
            leading = _through_first_content(lines)
            if not leading or not leading[-1].strip():
                # an output redirect that failed, not a file saying "no boxes" (a header, or null boxes)
                raise FaceBoxFileError(f"{path} is empty: it names no image (a file of images without boxes "
                                       f"says so per image, e.g. detect's own output)")
            lines = itertools.chain(leading, lines)
            return FaceBoxFile(path, _boxes_by_image(path, _read_csv(path, lines) if suffix == ".csv"
                                                     else _read_jsonl(path, lines)))
    except OSError as exc:
        raise FaceBoxFileError(f"cannot read face boxes from {path}: {exc}") from None


def _boxes_by_image(path: Path, entries: Iterable[tuple[int, str, Box]]) -> dict[str, Box]:
    boxes: dict[str, Box] = {}
    for line, key, box in entries:
        if not key.strip():
            raise FaceBoxFileError(f"{path}:{line}: the image name is empty")
        if key in boxes and boxes[key] != box:  # the same box again: detect's output for an image given twice
            raise FaceBoxFileError(f"{path}:{line}: a second, different box for {key!r}; give one box per image")
        boxes[key] = box
    return boxes


def _through_first_content(lines: Iterator[str]) -> list[str]:
    """The lines up to and including the first that is not blank (all of them when none is)."""
    leading = []
    for line in lines:
        leading.append(line)
        if line.strip():
            break
    return leading


def _read_csv(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, str, Box]]:
    # rows are split by the csv module itself, on \r and \n outside quotes only, so a quoted name
    # holding a line break (which detect's csv writes so) reads back whole; strict, so a stray quote
    # that would swallow every following row into one cell is an error instead
    reader = csv.DictReader(_refusing_nul(path, lines), strict=True)
    try:
        yield from _csv_entries(path, reader)
    except csv.Error as exc:  # line_num counts the lines of complete rows: the bad one starts after them
        raise FaceBoxFileError(f"{path}:{reader.line_num + 1}: malformed CSV row ({exc}); a quote that opens "
                               f"a cell must close it, and a quote inside a quoted cell is written twice") from None


def _refusing_nul(path: Path, lines: Iterable[str]) -> Iterator[str]:
    """The lines, refusing one that holds a NUL: no image name holds one, and the csv module reads
    it on Python 3.11 and later but calls it a malformed row on 3.10, so the check is ours."""
    for number, line in enumerate(lines, start=1):
        if "\0" in line:
            found = _shown(line.rstrip("\r\n"))
            raise FaceBoxFileError(f"{path}:{number}: a NUL byte, which no image name holds: not a CSV of face "
                                   f"boxes (found {found})")
        yield line


def _csv_entries(path: Path, reader: csv.DictReader) -> Iterator[tuple[int, str, Box]]:
    header = reader.fieldnames or ()
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise FaceBoxFileError(f"{path}: the CSV header lacks {', '.join(missing)} (it needs "
                               f"{','.join(CSV_COLUMNS)}; found {_shown(','.join(header)) or 'no header'})")
    twice = [c for c in CSV_COLUMNS if header.count(c) > 1]
    if twice:  # DictReader would silently take the last of them
        raise FaceBoxFileError(f"{path}: the CSV header names {', '.join(twice)} more than once")
    for row in reader:
        line = reader.line_num
        if None in row:  # more cells than the header has columns: the box columns cannot be trusted
            raise FaceBoxFileError(f"{path}:{line}: the row has {len(header) + len(row[None])} cells and the "
                                   f"header {len(header)} columns")
        values = [row[c] for c in BOX_COLUMNS]
        if all(not (v or "").strip() for v in values):
            continue  # no box for this image (detect's csv writes its rows without a face so)
        # the name exactly as written: detect writes names with leading or trailing spaces unquoted
        yield line, row["image"] or "", _box(path, line, values)


def _shown(text: str, limit: int = 80) -> str:
    """A file's text as an error message may show it: cut short, and escaped when it is not
    printable (a binary file named .csv put control bytes and NULs on the terminal)."""
    cut = text[:limit] + ("..." if len(text) > limit else "")
    return cut if cut.isprintable() else ascii(cut)


def _read_jsonl(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, str, Box]]:
    for line, content in enumerate(lines, start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as exc:
            raise FaceBoxFileError(f"{path}:{line}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise FaceBoxFileError(f"{path}:{line}: JSON nested too deeply to be a face box") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or (
                "box" not in record and "face" not in record):
            raise FaceBoxFileError(f"{path}:{line}: expected an object with \"image\" (a string) and "
                                   f"\"box\" ([x1, y1, x2, y2] or null), or a line of detect's jsonl output")
        box = record["box"] if "box" in record else _detect_output_box(path, line, record["face"])
        if box is None:
            continue
        if not isinstance(box, list):
            raise FaceBoxFileError(f"{path}:{line}: \"box\" must be a list [x1, y1, x2, y2], not {box!r}")
        yield line, record["image"], _box(path, line, box)


def _detect_output_box(path: Path, line: int, face: object) -> object:
    """The box of a ``detect --format jsonl`` line's ``"face"``: None when the image had no face
    box there (no face found, a face-crop file, or the line is an error). detect writes an object
    or null there; anything else (a string, a bare list) is a malformed line, not "no box"."""
    if face is None:
        return None
    if not isinstance(face, dict):
        raise FaceBoxFileError(f"{path}:{line}: \"face\" must be an object holding \"box\" (as detect's jsonl "
                               f"writes it) or null, not {_shown(repr(face))}")
    return face.get("box")


def _box(path: Path, line: int, values: list) -> Box:
    if len(values) != 4 or any(v is None or isinstance(v, bool) for v in values):
        raise FaceBoxFileError(f"{path}:{line}: a box is four numbers x1, y1, x2, y2; got {values!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        raise FaceBoxFileError(f"{path}:{line}: a box is four numbers x1, y1, x2, y2; got {values!r}") from None
    return x1, y1, x2, y2
