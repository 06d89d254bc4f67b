"""Degraded copies of image files (``dfd-export degrade``): one lossless PNG per input in one
output folder, named so that no two inputs share a copy and no input is overwritten, written whole
or not at all, and recorded in the folder's hidden copies record so a later run tells degrade's own
copies from the user's images (originals) there.

Why apart from :mod:`dfd.calibration.degrade`: that module is the degradation engine (pixels in,
pixels out); this one is the file work around it, which only the CLI verb and the demo need.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dfd.runtime.atomic_files import missing_folders, remove_empty_folders, write_atomically
from dfd.runtime.errors import DfdError, first_few, os_error_text
from dfd.runtime.images import DEFAULT_MAX_PIXELS, ImageError, decode_image_file
from dfd.runtime.manifest import sha256_file

from .degrade import PAPER_SPEC, DegradationError, DegradationSpec, degrade, fixed_degradation, image_rng, require_seed


@dataclass(frozen=True)
class DegradedFile:
    """What became of one input of :func:`degrade_files`: the PNG written, or why not (a message
    that names the file), and the conversions its decoding applied (``DecodedImage.notes``)."""

    source: Path
    output: Path | None
    error: str | None = None
    notes: tuple[str, ...] = ()
    degraded: bool = True  # False: a clean copy, left out of the degraded share (``share`` < 1)
    kept: bool = False  # True: an earlier run's copy of this image with these settings, kept (``resume``)


@dataclass(frozen=True)
class CopySettings:
    """What decides a copy's bytes besides its image. A copy an earlier run wrote from the same
    image with the same settings (and the same versions of the code that computes it) is the copy
    this run would write, so a resumed run keeps it instead of computing it again. The decoding
    limit decides only for an image above it (:meth:`differences`)."""

    seed: int
    fixed: str | None
    share: float
    max_pixels: int
    spec: DegradationSpec

    @functools.cached_property
    def made_with(self) -> dict:
        """The settings as the copies record keeps them (JSON), compared on a resume
        (:meth:`differences`); worked out once (the installed version is looked up in the package
        metadata)."""
        try:
            version = importlib.metadata.version("dfd-export")
        except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
            version = "unknown"
        seed_counts = self.fixed is None or self.share < 1  # a fixed degradation of every image draws nothing
        return {"seed": self.seed if seed_counts else None, "fixed": self.fixed, "share": self.share,
                "max_pixels": self.max_pixels,
                "spec": None if self.fixed is not None else hashlib.sha256(repr(self.spec).encode()).hexdigest(),
                "versions": {"dfd-export": version, "opencv": cv2.__version__, "numpy": np.__version__}}

    def differences(self, entry: dict) -> list[str]:
        """The settings of :attr:`made_with` that a copies record ``entry`` was written with
        otherwise, as "seed 4 (not 5)" (none: this run writes that copy again). ``max_pixels``
        counts only where the image is above either limit: below both, each run decodes it whole,
        and a run that failed on one large image goes on with a higher limit keeping the others."""
        made_with = entry.get("made_with") if isinstance(entry.get("made_with"), dict) else {}
        pixels = entry.get("pixels")
        recorded_limit = made_with.get("max_pixels")
        below_both = (type(pixels) is int and type(recorded_limit) is int
                      and pixels <= min(recorded_limit, self.max_pixels))
        return [f"{key} {made_with.get(key)!r} (not {value!r})" for key, value in self.made_with.items()
                if made_with.get(key) != value and not (key == "max_pixels" and below_both)]


def _output_paths(inputs: Sequence[Path], out_dir: Path) -> list[Path]:
    """One PNG (lossless, so the file holds exactly the degraded pixels) per input; inputs that
    share a stem get -1, -2, ... suffixes in input order. Stems that differ only in case do too:
    on a file system that ignores case (macOS, Windows shares, exFAT) IMG_1.png and img_1.png are
    one file, and the second image replaced the first's copy unnoticed."""
    taken: set[str] = set()
    outputs = []
    for path in inputs:
        stem, counter = path.stem, 0
        candidate = f"{stem}.png"
        while candidate.casefold() in taken:
            counter += 1
            candidate = f"{stem}-{counter}.png"
        taken.add(candidate.casefold())
        outputs.append(out_dir / candidate)
    return outputs


def degrade_files(inputs: list[Path], out_dir: Path, *, seed: int, fixed: str | None,
                  spec: DegradationSpec = PAPER_SPEC, share: float = 1.0, replace: bool = False,
                  resume: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[DegradedFile]:
    """Degrade image files into ``out_dir`` as PNGs, yielding a :class:`DegradedFile` as each is
    written, so a caller can report progress and an interrupt leaves a true account.

    ``fixed`` names a fixed degradation (then ``spec`` does not matter); otherwise each image
    goes through :func:`degrade` with :func:`image_rng` (seed, pixels). ``share`` < 1 degrades
    only that fraction of the images (a draw from the same generator, so seeded per image) and
    copies the others unchanged, to build mixed clean/degraded folders. An image that cannot be
    read, degraded or written is reported (as an error message that names it) and the others are
    still processed. ``max_pixels`` is the decoding limit (``decode_image``): a larger JPEG is
    degraded from its reduced decode, with a note, and any other larger image is refused.
    ``resume`` keeps the outputs an earlier (interrupted) run recorded writing from the same
    images with the same settings, unchanged since, and degrades the rest.

    Raises ``DegradationError`` before anything is written (``out_dir`` included) when an output
    would be one of the inputs (whichever input: ``x.jpg`` writes ``x.png``, which may be another
    input), or, unless ``replace``, when an output file already exists that ``resume`` does not keep.
    """
    if not 0.0 <= share <= 1.0:
        raise DegradationError(f"share must be in [0, 1], got {share}")
    if fixed is not None:
        fixed_degradation(fixed)  # an unknown name fails before any file is touched
    require_seed(seed)
    settings = CopySettings(seed, fixed, share, max_pixels, spec)
    outputs = _output_paths(inputs, out_dir)
    identities = {identity for identity in map(_file_identity, inputs) if identity is not None}
    overwritten = [str(out) for out in outputs if _file_identity(out) in identities]
    if overwritten:
        raise DegradationError(f"degrading into {out_dir} would overwrite input images with degraded "
                               f"copies: {first_few(overwritten)}; choose an --out that is not an input folder")
    _check_copies_record(out_dir)
    # read and hashed only where it decides something: what --resume keeps, or what a refusal says
    copies = recorded_copies(out_dir) if resume or not replace else {}
    earlier = _earlier_copies(inputs, outputs, copies, settings)
    kept = earlier if resume else {}
    existing = [out for out in outputs if os.path.lexists(out) and out not in kept]
    if existing and not replace:
        raise DegradationError(_existing_outputs_refusal(out_dir, existing, earlier, resume, copies, settings))
    created = missing_folders(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DegradationError(f"cannot create output folder {out_dir}: {os_error_text(error)}") from error
    try:  # a folder that cannot be written fails now, not once per image after each was degraded
        handle, probe = tempfile.mkstemp(prefix=".degrade-", suffix=".partial", dir=out_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise DegradationError(f"cannot write into output folder {out_dir}: {error.strerror or error}") from error
    return _degrade_each(inputs, outputs, settings, kept, created)


def _existing_outputs_refusal(out_dir: Path, existing: Sequence[Path], earlier: dict[Path, dict], resume: bool,
                              copies: dict[str, list[dict]], settings: CopySettings) -> str:
    """Why outputs that exist stop the run, and what would go on: --resume where an earlier run
    wrote them with these settings, the settings it used where it used others."""
    said = f"{len(existing)} output file(s) already exist in {out_dir}: {first_few([out.name for out in existing])}"
    others = [out for out in existing if out not in earlier]
    if earlier and not resume:
        if not others:
            return (f"{said}; an earlier run wrote them from these images with these settings (interrupted?): pass "
                    f"--resume to keep them and degrade the rest, --force to replace them, or choose another --out")
        return (f"{said}; {len(earlier)} of them an earlier run wrote from these images with these settings "
                f"(--resume keeps those), but not {first_few([out.name for out in others])}: pass --force to "
                f"replace those (with --resume, only those), or choose another --out")
    other_settings = _other_settings(existing, copies, settings)
    if other_settings:
        return (f"{said}; {other_settings}: give the same settings to resume that run, or pass --force to replace "
                f"them, or choose another --out")
    cannot = " that --resume cannot keep (not written from these images, or changed since)" if resume else ""
    return f"{said}{cannot}; pass --force to replace them, or choose another --out"


def _other_settings(outputs: Sequence[Path], copies: dict[str, list[dict]], settings: CopySettings) -> str | None:
    """"an earlier run wrote a.png with seed 0 (not 1)": the first output the output folder's
    ``copies`` record as written with other settings, and which, so a resume that keeps nothing
    says why."""
    for output in outputs:
        for entry in reversed(copies.get(output.name, [])):
            differences = settings.differences(entry) if isinstance(entry.get("made_with"), dict) else []
            if differences:
                return f"an earlier run wrote {output.name} with {', '.join(differences)}"
    return None


def _earlier_copies(inputs: Sequence[Path], outputs: Sequence[Path], copies: dict[str, list[dict]],
                    settings: CopySettings) -> dict[Path, dict]:
    """The outputs that already hold what this run would write there: recorded in the output
    folder's ``copies`` as written from the same image (its sha256) with the same settings, and
    unchanged since. Output -> its record entry. Only existing outputs with such an entry are
    hashed (with their images)."""
    found: dict[Path, dict] = {}
    for source, output in zip(inputs, outputs):
        if not os.path.lexists(output):
            continue
        entries = [entry for entry in copies.get(output.name, []) if not settings.differences(entry)]
        if not entries:
            continue
        try:
            output_sha256, source_sha256 = sha256_file(output), sha256_file(source)
        except OSError:
            continue
        match = next((entry for entry in entries if entry.get("sha256") == output_sha256
                      and entry.get("source_sha256") == source_sha256), None)
        if match is not None:
            found[output] = match
    return found


def _degrade_each(inputs: Sequence[Path], outputs: Sequence[Path], settings: CopySettings, kept: dict[Path, dict],
                  created: Sequence[Path]) -> Iterator[DegradedFile]:
    """Each image in turn; the folders ``created`` for the outputs are removed again when no image
    was written into them (every input missing or unreadable, or an interrupt before the first)."""
    written = False
    try:
        for result in _degrade_one_by_one(inputs, outputs, settings, kept):
            written = written or result.output is not None
            yield result
    finally:
        if not written:
            remove_empty_folders(created)


def _degrade_one_by_one(inputs: Sequence[Path], outputs: Sequence[Path], settings: CopySettings,
                        kept: dict[Path, dict]) -> Iterator[DegradedFile]:
    transform = fixed_degradation(settings.fixed) if settings.fixed is not None else None
    for path, out_path in zip(inputs, outputs):
        if out_path in kept:
            entry = kept[out_path]
            notes = entry.get("notes")
            yield DegradedFile(path, out_path, None, tuple(map(str, notes)) if isinstance(notes, list) else (),
                               entry.get("degraded") is not False, kept=True)
            continue
        notes: tuple[str, ...] = ()
        try:
            # the runtime's decoding (imread's pixels, its refusals), and what a resume checks the image against
            decoded, source_sha256 = decode_image_file(path, max_pixels=settings.max_pixels)
            notes, rgb = decoded.notes, decoded.rgb
            rng = image_rng(settings.seed, rgb)
            degraded = rng.random() < settings.share
            if not degraded:
                out = rgb
            elif transform is not None:
                out = transform(rgb)
            else:
                out = degrade(rgb, rng, settings.spec)[0]
            encoded = encode_png(out)
            write_atomically(out_path, lambda file: file.write(encoded))
            try:
                height, width = decoded.full_size_hw
                _record_copy(out_path, {"sha256": hashlib.sha256(encoded).hexdigest(), "source_sha256": source_sha256,
                                        "pixels": height * width, "made_with": settings.made_with,
                                        "degraded": degraded, "notes": list(notes)})
            except OSError:
                # unrecorded, the copy would pass for the user's own image: no resume would keep it, and
                # an --out inside the inputs would be refused for it
                out_path.unlink(missing_ok=True)
                raise
        except ImageError as error:  # names the file
            yield DegradedFile(path, None, str(error), notes)
            continue
        except OSError as error:
            # strerror only: the file it names would be the hidden temporary one
            said = f"could not write {out_path} (degraded from {path}): {error.strerror or error}"
            if error.errno in (errno.ENOSPC, errno.EDQUOT):  # every later copy would fail alike, one line each
                raise DegradationError(f"{said}; stopped there: free some space, then run again with --resume to "
                                       f"keep the copies written so far") from error
            yield DegradedFile(path, None, said, notes)
            continue
        except (DfdError, MemoryError, cv2.error) as error:
            # one image that cannot be degraded (memory, OpenCV) must not end the run
            yield DegradedFile(path, None, f"{path}: could not degrade it: {type(error).__name__}: {error}", notes)
            continue
        yield DegradedFile(path, out_path, None, notes, degraded)


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, so another name or a hard link of an input is caught."""
    try:
        info = os.stat(path)
    except OSError:  # does not exist (yet): nothing to overwrite
        return None
    return info.st_dev, info.st_ino


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB image as the bytes of a PNG file. Raises ``DegradationError``."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DegradationError(f"OpenCV could not PNG-encode an image of shape {rgb.shape}")
    return encoded.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Encode in memory and write atomically (:func:`write_atomically`): an interrupted run never
    leaves a truncated image that a later ``verify --images`` or calibration would read, and no
    file of the user's is touched but ``path``. Raises ``DegradationError``/``OSError``."""
    encoded = encode_png(rgb)
    write_atomically(path, lambda file: file.write(encoded))


COPIES_RECORD = ".dfd-degrade-copies.jsonl"
"""In an output folder, one line per copy degrade wrote there: {"file": name, "sha256": ...,
"source_sha256": ..., "pixels": the image's, "made_with": CopySettings.made_with, "degraded": ...,
"notes": [...]}.
Hidden, so folder scans pass over it. It tells degrade's own copies from images that were there
before (originals), where an output folder lies inside a folder being degraded: the copies are
left out of the inputs and may be replaced with --force, anything else is the user's. And it lets
an interrupted run resume (--resume): a copy written from the same image with the same settings
is kept."""


def _check_copies_record(out_dir: Path) -> None:
    """Refuse, before any work, a copies record that is not a regular file degrade may read and
    append to: a record written to nowhere left every copy unrecorded without a word (a folder of
    that name, a file of another user's), and one that is a link appended JSON to the file it
    names."""
    record = out_dir / COPIES_RECORD
    if not os.path.lexists(record):
        return
    if os.path.islink(record) or not record.is_file():
        what = "a link" if os.path.islink(record) else "not a file"
        raise DegradationError(f"{record} is not degrade's copies record ({what}); remove it, or choose another --out")
    try:
        with open(record, "rb"), open(record, "ab"):
            pass
    except OSError as error:
        raise DegradationError(f"cannot use the copies record {record}: {error.strerror or error}") from error


def _record_copy(out_path: Path, entry: dict) -> None:
    """Add a written copy to its folder's record, on a line of its own even after a line a full
    disk cut short (whose copy is then unrecorded). Raises ``OSError``."""
    line = json.dumps({"file": out_path.name, **entry}) + "\n"
    with open(out_path.parent / COPIES_RECORD, "a+b") as record:
        if record.tell() > 0:
            record.seek(-1, os.SEEK_END)
            if record.read(1) != b"\n":
                line = "\n" + line
        record.write(line.encode("utf-8"))


def recorded_copies(folder: Path) -> dict[str, list[dict]]:
    """The copies degrade recorded writing into ``folder``: name -> the record's entries for it,
    oldest first (empty without a record; a line cut short by a killed run, or not degrade's, is
    passed over). Read once per folder: a scan checks every image inside it against this."""
    copies: dict[str, list[dict]] = {}
    try:
        with open(folder / COPIES_RECORD, encoding="utf-8", errors="replace") as record:
            for line in record:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                    copies.setdefault(entry["file"], []).append(entry)
    except OSError:
        pass
    return copies


def is_recorded_copy(path: Path, copies: dict[str, list[dict]]) -> bool:
    """Whether ``path`` is a copy degrade wrote into its folder (``copies``, that folder's
    :func:`recorded_copies`) and nothing changed it since."""
    if path.name not in copies:
        return False
    try:
        return sha256_file(path) in {entry.get("sha256") for entry in copies[path.name]}
    except OSError:
        return False
