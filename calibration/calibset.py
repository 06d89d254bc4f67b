"""Calibration sets: per-stream input tensors for INT8 calibration and precision checks.

Why this shape: INT8 ranges are calibrated on what the deployed engines will see, so the tensors
come from the runtime's own decoding and preprocessing (``dfd.runtime.images`` /
``dfd.runtime.preprocess``), never from a second copy of that code; and since the detector's
value is its robustness, a share of the images first goes through the paper's compound
degradation engine. A set is fully determined by its inputs, so it is cached on disk under a
sha256 of those inputs and rebuilt only when one of them (or the code that computes it) changes;
only the files the set is made of are read for that, not a whole folder.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dfd.calibration.degrade import PAPER_SPEC, DegradationSpec, degrade
from dfd.calibration.sources import sample_images
from dfd.runtime import images as images_module
from dfd.runtime.atomic_files import write_atomically
from dfd.runtime.errors import DfdError
from dfd.runtime.images import DEFAULT_MAX_PIXELS, ImageError, array_sha256, decode_image, read_image_file
from dfd.runtime.preprocess import (preprocess_face, preprocess_fusion, preprocess_global,
                                    reencode_like_reference_face_file, unscorable_reason)
from dfd.runtime.progress import progress_bar

log = logging.getLogger(__name__)

ImageInput = Path | tuple[str, np.ndarray]
"""A calibration source image: a file, or an already decoded (name, uint8 RGB array)."""

DEFAULT_STREAM_SIZES: Mapping[str, int] = {"global": 252, "face": 252, "fusion": 224}

_PREPROCESSORS = {
    "global": preprocess_global,
    # The face stream is calibrated on whole images: the runtime's rule when no usable face is
    # found, and the only choice that needs no face detector at build time. A JPEG file's face
    # input is its quality-95 re-encode there (``_face_input``), as the runtime scores it.
    "face": preprocess_face,
    "fusion": preprocess_fusion,
}

KEPT_CACHED_SETS = 4
"""Cached sets kept in a cache folder, the most recently used: a paper-size default set is
~545 MB, and every seed, count, share or code change makes a new one."""
STALE_PARTIAL_SECONDS = 3600  # a save takes seconds; a partial file this old is from a killed build

CALIBSET_FORMAT = 3
"""Bumped when the cache file layout changes."""

_PROGRESS_MIN_IMAGES = 8
_SELECTION_STREAM = 1  # seed-sequence tags: which slots are degraded / each slot's degradation
_SLOT_STREAM = 2
_RESERVE_STREAM = 3  # the order in which unreadable images are replaced
_META_KEY = "__meta__"

SOURCE_PIXELS_KEY = "source_pixels_sha256"
"""Manifest key: the :func:`~dfd.runtime.images.array_sha256` of each distinct image the set drew
from, its decoded pixels: ``dfd-export verify`` hashes its images the same way to tell which were
calibration images (the same photograph under another name or format is still recognised)."""


class CalibrationError(DfdError, ValueError):
    """A calibration set cannot be built from the given arguments or images."""


@dataclass(frozen=True)
class CalibrationItem:
    """Which source image fills one slot of the set (a file by its absolute path, an array by its
    name), what degraded it, and the notes of the preprocessing rules it met (e.g. an image
    smaller than a stream's crop, upscaled as ``detect`` would)."""

    name: str
    degraded: bool
    ops: tuple[tuple[str, float], ...] = ()
    notes: tuple[str, ...] = ()

    def manifest_entry(self) -> dict:
        return {"image": self.name, "degraded": self.degraded, "degradations": [list(op) for op in self.ops],
                **({"notes": list(self.notes)} if self.notes else {})}

    @classmethod
    def from_cached(cls, stored: object) -> CalibrationItem:
        """The item a cache file records, as ``[name, degraded, ops, notes]``; ValueError when it
        does not hold one (a hand-edited file whose arrays still match their digest)."""
        try:
            name, degraded, ops, notes = stored
            item = cls(name, degraded, tuple((op, strength) for op, strength in ops), tuple(notes))
        except (TypeError, ValueError) as error:
            raise ValueError(f"malformed slot record {stored!r}") from error
        if not (isinstance(name, str) and isinstance(degraded, bool) and isinstance(ops, list)
                and isinstance(notes, list) and all(isinstance(n, str) for n in item.notes)
                and all(isinstance(op, str) and isinstance(s, (int, float)) for op, s in item.ops)):
            raise ValueError(f"malformed slot record {stored!r}")
        return item


@dataclass
class CalibrationSet:
    """Per-stream float32 NCHW arrays (the ``pixels`` input of each stream graph) and their
    provenance. ``sha256`` hashes the array contents; ``cache_key`` hashes the inputs."""

    arrays: dict[str, np.ndarray]
    sha256: str
    count: int
    degrade_share: float
    seed: int
    source: str
    stream_sizes: dict[str, int]
    items: list[CalibrationItem]
    spec: DegradationSpec
    cache_key: str
    max_pixels: int = DEFAULT_MAX_PIXELS  # the decoding limit the images were read with
    # image -> why it could not be read; each of its slots holds a replacement (_ReadableImages)
    unreadable: dict[str, str] = field(default_factory=dict)
    # input position -> sha256 of each input the replacement walk looked at (part of the cache check)
    reserve_hashes: dict[int, str] = field(default_factory=dict)
    # array_sha256 of each distinct source image the slots hold (replacements, not the unreadable), sorted
    source_pixels: list[str] = field(default_factory=list)
    from_cache: bool = field(default=False, compare=False)

    @property
    def degraded_count(self) -> int:
        return sum(item.degraded for item in self.items)

    @property
    def noted_slots(self) -> list[int]:
        """The slots whose image met a preprocessing rule with a note (see CalibrationItem)."""
        return [slot for slot, item in enumerate(self.items) if item.notes]

    def manifest_entry(self) -> dict:
        """What the engine-set manifest records about the calibration data of an fp16/INT8 build,
        down to which image fills each slot and how it was degraded: what a reviewer of a
        quantised engine asks first, and nothing else keeps it once the cache is pruned."""
        return {
            "sha256": self.sha256,
            "count": self.count,
            "degrade_share": self.degrade_share,
            "degraded_count": self.degraded_count,
            "seed": self.seed,
            "source": self.source,
            "stream_sizes": dict(self.stream_sizes),
            "degradation_spec": self.spec.to_dict(),
            "cache_key": self.cache_key,
            "max_pixels": self.max_pixels,
            "unreadable_images": [{"image": image, "error": error} for image, error in self.unreadable.items()],
            SOURCE_PIXELS_KEY: list(self.source_pixels),
            "slots": [item.manifest_entry() for item in self.items],
        }


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    """The file's sha256, or why it cannot be read: an unreadable file is still an input of the
    set (it is replaced, see ``_ReadableImages``), so the key changes when it becomes readable."""
    try:
        return hashlib.sha256(read_image_file(path)).hexdigest()
    except ImageError as error:
        return f"unreadable: {error}"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Content hash of a set of named arrays (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(array_sha256(arrays[name]).encode())
    return digest.hexdigest()


def fingerprinted_sources() -> list[Path]:
    """Every module of the two packages a set's tensors come from (the degradation engine and
    sampling here; decoding, header reading and preprocessing in the runtime), in a fixed order.
    All of them rather than a chosen few: a list kept by hand missed the JPEG header walk, which
    decides the reduced decode and the EXIF turn, so a change there served a stale set."""
    folders = (Path(__file__).parent, Path(images_module.__file__).parent)
    return sorted((path for folder in folders for path in folder.glob("*.py")), key=lambda path: path.as_posix())


def _code_fingerprint() -> str:
    """Hash of the source that decides the tensors' values (:func:`fingerprinted_sources`) and of
    the libraries and machine that compute them, so a change in any invalidates cached sets."""
    digest = hashlib.sha256()
    for path in fingerprinted_sources():
        digest.update(f"{path.parent.name}/{path.name}".encode())
        digest.update(path.read_bytes())
    # OpenCV decodes, resizes and JPEG-encodes, NumPy draws the degradations: their versions
    # decide the values as much as this code does, and so does whether OpenCV uses Intel's IPP
    # (x86; its INTER_CUBIC differs by a grey level), which a cache shared with a Jetson would mix
    ipp = cv2.ipp.useIPP() if hasattr(cv2, "ipp") else None
    digest.update(f"opencv {cv2.__version__} ipp {ipp} numpy {np.__version__} {platform.machine()}".encode())
    return digest.hexdigest()


def _input_name(image: ImageInput) -> str:
    """Short name for messages (a file's own name)."""
    return image.name if isinstance(image, Path) else image[0]


def _input_location(image: ImageInput) -> str:
    """A file by its absolute path, an array by its name: what tells inputs apart (two files of
    one name in different folders are two inputs, one file named two ways is one), keys the
    cache (a moved folder is another set) and names a file in the report of unreadable ones
    (the same whichever directory a cached set is used from)."""
    return os.path.abspath(image) if isinstance(image, Path) else image[0]


def _input_hash(image: ImageInput) -> str:
    return _file_sha256(image) if isinstance(image, Path) else array_sha256(image[1])


def _cache_key(images: Sequence[ImageInput], sampled: Sequence[int], count: int, degrade_share: float,
               seed: int, stream_sizes: Mapping[str, int], spec: DegradationSpec, max_pixels: int) -> str:
    """What determines the set: the names of all inputs (their order decides the sample and the
    replacement order) but the contents of the sampled ones only, so a folder of 100,000 images
    is not read whole to key a set of 256. Replacements for unreadable samples are checked
    against ``reserve_hashes`` in the cached metadata instead (see ``_ReadableImages``)."""
    description = {
        "format": CALIBSET_FORMAT,
        "code": _code_fingerprint(),
        "images": [_input_location(image) for image in images],
        "sampled": {str(position): _input_hash(images[position]) for position in sorted(set(sampled))},
        "count": count,
        "degrade_share": degrade_share,
        "seed": seed,
        "stream_sizes": dict(sorted(stream_sizes.items())),
        "spec": spec.to_dict(),
        "max_pixels": max_pixels,  # a JPEG over it is calibrated from its reduced decode
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _check_arguments(images: Sequence[ImageInput], count: int, degrade_share: float, seed: int,
                     stream_sizes: Mapping[str, int]) -> list[ImageInput]:
    if not images:
        raise CalibrationError("no calibration images given")
    checked: list[ImageInput] = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            checked.append(Path(image))
        elif (isinstance(image, tuple) and len(image) == 2 and isinstance(image[1], np.ndarray)):
            name, array = image
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
                raise CalibrationError(
                    f"calibration image {name!r} must be uint8 RGB (H, W, 3), got dtype "
                    f"{array.dtype} and shape {array.shape}"
                )
            checked.append((str(name), array))
        else:
            raise CalibrationError(
                f"a calibration image must be a path or a (name, uint8 RGB array) pair, "
                f"got {type(image).__name__}"
            )
    if count < 1:
        raise CalibrationError(f"calibration count must be at least 1, got {count}")
    if not 0.0 <= degrade_share <= 1.0:
        raise CalibrationError(f"degrade share must be in [0, 1], got {degrade_share}")
    if seed < 0:
        raise CalibrationError(f"seed must be >= 0, got {seed}")
    unknown = sorted(set(stream_sizes) - set(_PREPROCESSORS))
    if unknown or not stream_sizes:
        raise CalibrationError(
            f"stream sizes must name some of {sorted(_PREPROCESSORS)}, got {sorted(stream_sizes)}"
        )
    for stream, size in stream_sizes.items():
        if size < 1:
            raise CalibrationError(f"input size of stream {stream!r} must be positive, got {size}")
    return checked


class _ReadableImages:
    """Pixels for each sampled slot; a file that cannot be read is replaced, every time it was
    sampled, by the next readable image of a seeded order of all the inputs, and reported.

    Why replace rather than fail: one corrupt file in a folder of calibration images must not sink
    the build; why not drop the slot: the set keeps the requested size and stays reproducible from
    the seed and the inputs. The inputs the replacement walk looks at are part of what determines
    the set, so their hashes are kept (``reserve_hashes``, position -> sha256) for the cache."""

    def __init__(self, images: Sequence[ImageInput], seed: int, max_pixels: int,
                 stream_sizes: Mapping[str, int]) -> None:
        self._images = images
        self._max_pixels = max_pixels
        self._stream_sizes = stream_sizes
        self._reserve = itertools.cycle(np.random.default_rng([seed, _RESERVE_STREAM]).permutation(len(images)))
        self._inputs = len({_input_location(image) for image in images})
        self.unreadable: dict[str, str] = {}
        self.reserve_hashes: dict[int, str] = {}

    def load(self, position: int) -> tuple[int, ImageInput, np.ndarray]:
        """The position of the input at ``position`` or of its replacement, that input, and its
        RGB pixels. An image the runtime refuses to score (too elongated for the crop streams) is
        replaced as an unreadable one is: it stopped the build, without naming the file."""
        image = self._images[position]
        while True:
            location = _input_location(image)
            if location not in self.unreadable:
                try:
                    rgb = decode_image(image, max_pixels=self._max_pixels).rgb if isinstance(image, Path) else image[1]
                except ImageError as error:
                    self.unreadable[location] = str(error)
                else:
                    problem = unscorable_reason(*rgb.shape[:2], self._stream_sizes)
                    if problem is None:
                        return position, image, rgb
                    self.unreadable[location] = f"{location}: {problem}"
            if len(self.unreadable) == self._inputs:
                first = next(iter(self.unreadable.values()))
                raise CalibrationError(
                    f"none of the {self._inputs} calibration image(s) could be read; the first: {first}")
            position = int(next(self._reserve))
            image = self._images[position]
            if position not in self.reserve_hashes:
                self.reserve_hashes[position] = _input_hash(image)


def _reserve_unchanged(images: Sequence[ImageInput], reserve_hashes: object) -> bool:
    """Whether every input a cached set's replacement walk looked at still has the same content."""
    if not isinstance(reserve_hashes, Mapping):
        return False
    try:
        return all(_input_hash(images[int(position)]) == digest for position, digest in reserve_hashes.items())
    except (ValueError, IndexError):  # a hand-edited cache file
        return False


def _degraded_slots(count: int, degrade_share: float, seed: int) -> set[int]:
    """Exactly round(count x share) slots (half rounded up), chosen at random."""
    degraded = int(math.floor(count * degrade_share + 0.5))
    order = np.random.default_rng([seed, _SELECTION_STREAM]).permutation(count)
    return {int(slot) for slot in order[:degraded]}


def _describe(images: Sequence[ImageInput]) -> str:
    names = [_input_name(image) for image in images]
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    files = [image for image in images if isinstance(image, Path)]
    if len(files) == len(images):
        folder = Path(os.path.commonpath([str(path.parent.resolve()) for path in files]))
        return f"{len(files)} image files under {folder} ({shown})"
    return f"{len(images)} images ({shown})"


def _compute(sampled: Sequence[int], readable: _ReadableImages, degraded_slots: set[int], seed: int,
             stream_sizes: Mapping[str, int], spec: DegradationSpec,
             progress: bool) -> tuple[dict[str, np.ndarray], list[CalibrationItem], list[str]]:
    """The arrays, what fills each slot, and the sorted array_sha256 of the distinct source images."""
    count = len(sampled)
    arrays = {stream: np.empty((count, 3, size, size), dtype=np.float32)
              for stream, size in stream_sizes.items()}
    items = []
    source_pixels: dict[int, str] = {}  # input position -> array_sha256, each input hashed once
    bar = progress_bar(total=count, desc="calibration set", unit="img",
                       disable=not progress or count <= _PROGRESS_MIN_IMAGES)
    with bar:
        for slot, position in enumerate(sampled):
            used, image, rgb = readable.load(position)
            if used not in source_pixels:
                source_pixels[used] = array_sha256(rgb)
            ops: tuple[tuple[str, float], ...] = ()
            if slot in degraded_slots:
                rgb, applied = degrade(rgb, np.random.default_rng([seed, _SLOT_STREAM, slot]), spec)
                ops = tuple((op.name, round(op.strength, 6)) for op in applied)
            notes: list[str] = []  # in stream order, each named by its stream
            for stream, size in stream_sizes.items():
                pixels = _face_input(image, rgb) if stream == "face" else rgb
                prepared = _PREPROCESSORS[stream](pixels, size=size)
                if prepared.tensor.shape != (3, size, size):
                    raise CalibrationError(
                        f"runtime preprocessing for stream {stream!r} returned shape "
                        f"{prepared.tensor.shape}, expected (3, {size}, {size})"
                    )
                arrays[stream][slot] = prepared.tensor
                notes += [f"{stream}: {note}" for note in prepared.notes]
            items.append(CalibrationItem(_input_location(image), slot in degraded_slots, ops, tuple(notes)))
            bar.update(1)
    return arrays, items, sorted(set(source_pixels.values()))


def _face_input(image: ImageInput, rgb: np.ndarray) -> np.ndarray:
    """The face stream's input for a whole image, as the runtime scores a file with no usable
    face: a JPEG's is its quality-95 re-encode (the reference's face-crop file), others as is."""
    if not isinstance(image, Path):
        return rgb
    return reencode_like_reference_face_file(rgb, image.suffix)[0]


# --------------------------------------------------------------------------------------------
# the disk cache
# --------------------------------------------------------------------------------------------


def _log_warning(message: str) -> None:
    log.warning("%s", message)


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"calibset-{key}.npz"


def _save(path: Path, calib: CalibrationSet) -> None:
    meta = {
        "format": CALIBSET_FORMAT,
        "cache_key": calib.cache_key,
        "sha256": calib.sha256,
        "source": calib.source,
        "items": [[item.name, item.degraded, [list(op) for op in item.ops], list(item.notes)]
                  for item in calib.items],
        "unreadable": calib.unreadable,
        "reserve_hashes": {str(position): digest for position, digest in sorted(calib.reserve_hashes.items())},
        SOURCE_PIXELS_KEY: calib.source_pixels,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # readers never see a half-written cache file; each writer has its own temporary file (two
    # builds in one process once shared one)
    write_atomically(path, lambda file: np.savez(file, **calib.arrays, **{_META_KEY: np.array(json.dumps(meta))}))


def _save_quietly(path: Path, calib: CalibrationSet, warn: Callable[[str], None]) -> None:
    """The cache only saves time: a cache that cannot be written (full disk, read-only or not a
    folder) is warned about and the build goes on with the set it computed. On a full disk the
    least recently used sets make room, oldest first (they were pruned only after a save that
    succeeded, so a full cache kept its oldest set and never cached another)."""
    older = _cached_sets(path.parent)[::-1]  # least recently used first
    while True:
        try:
            _save(path, calib)
            break
        except OSError as error:
            if not (error.errno in (errno.ENOSPC, errno.EDQUOT) and _drop_first(older)):
                warn(f"could not cache the calibration set in {path.parent} ({error.strerror or error}); the "
                     f"build goes on without caching it")
                return
    _prune(path.parent, keep=path)


def _drop_first(sets: list[Path]) -> bool:
    """Delete the first of ``sets`` (and take it off the list); False when none is left or it
    cannot be deleted (then no room can be made, and the cache is given up, not the build)."""
    if not sets:
        return False
    try:
        sets.pop(0).unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _cached_sets(cache_dir: Path) -> list[Path]:
    """The cached sets, most recently used first (none where the folder cannot be listed). An
    entry whose date cannot be read (a dangling link, a set another build just removed) is left
    out alone: it once emptied the whole list, which turned pruning and eviction off for good."""
    try:
        found = list(cache_dir.glob("calibset-*.npz"))
    except OSError:
        return []
    dated = []
    for path in found:
        try:
            dated.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(dated, key=lambda entry: entry[0], reverse=True)]


def _prune(cache_dir: Path, keep: Path) -> None:
    """Delete all but the :data:`KEPT_CACHED_SETS` most recently used sets (``keep`` among them),
    and the partial files of saves killed outright (up to ~0.5 GB each at paper size, never read);
    a partial file younger than :data:`STALE_PARTIAL_SECONDS` may be another build's save."""
    try:
        for old in [p for p in _cached_sets(cache_dir) if p != keep][KEPT_CACHED_SETS - 1:]:
            old.unlink(missing_ok=True)
        now = time.time()
        for partial in cache_dir.glob(".calibset-*.partial"):
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink(missing_ok=True)
    except OSError:
        pass  # another build pruned (or is using) the same folder: nothing is lost


def _load(path: Path, key: str, stream_sizes: Mapping[str, int],
          warn: Callable[[str], None]) -> tuple[dict, dict] | None:
    """The cached arrays and metadata, or None (with a warning) when the file does not hold a
    valid set for ``key``."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored[_META_KEY]))
            arrays = {stream: stored[stream] for stream in stream_sizes}
    except (OSError, KeyError, ValueError, RecursionError, EOFError, zipfile.BadZipFile) as error:
        # truncated (a crash before the data reached the disk), bit-flipped or not a cache file
        warn(f"ignoring unreadable calibration cache {path} ({error}); rebuilding")
        return None
    if not isinstance(meta, dict) or meta.get("cache_key") != key or arrays_sha256(arrays) != meta.get("sha256"):
        warn(f"calibration cache {path} does not match its inputs or content; rebuilding")
        return None
    try:  # the record beside the arrays, which their digest does not cover
        meta["items"] = [CalibrationItem.from_cached(stored) for stored in meta["items"]]
        slots = len(next(iter(arrays.values())))
        if len(meta["items"]) != slots:
            raise ValueError(f"{len(meta['items'])} slot records for {slots} slots")
        if not (isinstance(meta["unreadable"], dict) and isinstance(meta[SOURCE_PIXELS_KEY], list)
                and isinstance(meta["reserve_hashes"], dict)):
            raise ValueError("malformed record of its images")
    except (KeyError, TypeError, ValueError) as error:
        warn(f"ignoring calibration cache {path} ({error}); rebuilding")
        return None
    return arrays, meta


def build_calibration_set(images: Sequence[ImageInput], *, count: int, degrade_share: float,
                          seed: int, stream_sizes: Mapping[str, int] = DEFAULT_STREAM_SIZES,
                          cache_dir: Path | None = None, spec: DegradationSpec = PAPER_SPEC,
                          source: str | None = None, progress: bool = True,
                          max_pixels: int = DEFAULT_MAX_PIXELS,
                          warn: Callable[[str], None] = _log_warning) -> CalibrationSet:
    """Build (or load from ``cache_dir``) a calibration set of ``count`` images.

    ``count`` images are sampled reproducibly from ``images`` (see :func:`sample_images`; repeats
    only when ``count`` exceeds the number of images); round(``count`` x ``degrade_share``) of
    them, chosen from ``seed``, go through :func:`degrade` with ``spec``, each with its own seeded
    generator. Every slot is then preprocessed for every stream in ``stream_sizes`` by the
    runtime (the face stream gets the whole image, the runtime's no-face rule). ``source``
    describes the images in the manifest (default: derived from their names). ``max_pixels`` is
    the decoding limit (``decode_image``): a larger JPEG is calibrated from its reduced decode, any
    other larger image is replaced as an unreadable one is. ``warn`` hears about a cache that
    cannot be read or written (the CLI's warning lines; by default, this module's logger).
    """
    checked = _check_arguments(images, count, degrade_share, seed, stream_sizes)
    stream_sizes = dict(stream_sizes)
    sampled = sample_images(range(len(checked)), count, seed)  # positions, drawn as the images would be
    key = _cache_key(checked, sampled, count, degrade_share, seed, stream_sizes, spec, max_pixels)
    description = source or _describe(checked)
    common = dict(count=count, degrade_share=degrade_share, seed=seed, source=description,
                  stream_sizes=stream_sizes, spec=spec, cache_key=key, max_pixels=max_pixels)

    if cache_dir is not None and _cache_path(cache_dir, key).is_file():
        loaded = _load(_cache_path(cache_dir, key), key, stream_sizes, warn)
        if loaded is not None and not _reserve_unchanged(checked, loaded[1].get("reserve_hashes")):
            warn(f"an image that replaced an unreadable calibration image changed; rebuilding "
                 f"{_cache_path(cache_dir, key)}")
            loaded = None
        if loaded is not None:
            arrays, meta = loaded
            try:
                os.utime(_cache_path(cache_dir, key))  # most recently used: kept by _prune
            except OSError:
                pass
            return CalibrationSet(arrays=arrays, sha256=meta["sha256"], items=meta["items"],
                                  unreadable=meta["unreadable"], from_cache=True,
                                  reserve_hashes={int(k): v for k, v in meta["reserve_hashes"].items()},
                                  source_pixels=meta[SOURCE_PIXELS_KEY], **common)

    readable = _ReadableImages(checked, seed, max_pixels, stream_sizes)
    arrays, items, source_pixels = _compute(sampled, readable, _degraded_slots(count, degrade_share, seed), seed,
                                            stream_sizes, spec, progress)
    calib = CalibrationSet(arrays=arrays, sha256=arrays_sha256(arrays), items=items,
                           unreadable=readable.unreadable, reserve_hashes=readable.reserve_hashes,
                           source_pixels=source_pixels, **common)
    if cache_dir is not None:
        _save_quietly(_cache_path(cache_dir, key), calib, warn)
    return calib
