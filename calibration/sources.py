"""Where calibration images come from: an image folder, or photographs shipped inside installed
packages (for demos on a machine that has no image folder and no internet).

Sampling is reproducible from a seed so that the same command builds the same calibration set.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from dfd.runtime.errors import DfdError, first_few

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff",
                              ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"})
"""File name endings (case-insensitive) taken as images: what every OpenCV 4.9+ decodes out of
the box (GIF only from 4.11, so a folder's .gif files are named as left out, and read when given
by name)."""

SKIMAGE_PHOTOGRAPHS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
    "gravel.png",
)
"""Photographs among the files the scikit-image wheel itself ships in ``skimage/data`` (drawings,
documents, microscopy and medical images left out). They are read from that folder directly, never
through ``skimage.data``, which would try to download files that are not in the wheel."""

MATPLOTLIB_PHOTOGRAPHS = ("grace_hopper.jpg",)
"""Photographs in matplotlib's bundled ``mpl-data/sample_data`` (a portrait: it exercises the face
stream's input)."""

T = TypeVar("T")


class ImageSourceError(DfdError, ValueError):
    """An image source cannot provide images (missing or empty folder, bad sample request)."""


class NoImagesError(ImageSourceError):
    """A folder that could be listed holds no image. ``sub_folders`` are those a scan that was not
    recursive did not look into, so a caller can suggest recursing when there are some."""

    def __init__(self, message: str, sub_folders: list[Path]) -> None:
        super().__init__(message)
        self.sub_folders = sub_folders


@dataclass(frozen=True)
class FolderImages:
    """What a folder holds for the tools: its image files, the visible files left out because their
    names do not end in an image suffix, when not searched recursively the visible sub-folders not
    looked into, and when searched recursively the sub-folders that could not be listed, with why
    (all reported, so a folder's .gif or .heic files, a photo shoot sorted into sub-folders, or one
    the user may not read, are not dropped without a word)."""

    images: list[Path]
    other_files: list[Path]
    sub_folders: list[Path]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    enclosing_links: list[Path] = field(default_factory=list)  # linked folders not followed: they lead out

    def unlisted(self) -> list[tuple[str, str]]:
        """(sub-folder, why) for each sub-folder that could not be listed: each is an input that
        failed, since it may hold images."""
        return [(str(sub), f"cannot list this folder ({reason}); its images, if any, are left out")
                for sub, reason in self.unreadable]

    def left_out_files(self, folder: Path) -> str | None:
        """A warning naming the visible files of ``folder`` left out by their suffix, or None."""
        if not self.other_files:
            return None
        names = [path.relative_to(folder).as_posix() for path in self.other_files]
        return (f"left out {len(names)} file(s) in {folder} whose names do not end in an image suffix: "
                f"{first_few(names)}")

    def links_not_followed(self, folder: Path) -> str | None:
        """A warning naming the linked folders of ``folder`` that lead to a folder holding it (a
        link to ``..``, to the home folder), or None: following one would take in images from
        outside the folder given (its siblings, the whole tree), without a word."""
        if not self.enclosing_links:
            return None
        names = [f"{path.relative_to(folder).as_posix()} -> {_link_target(path)}" for path in self.enclosing_links]
        return (f"did not follow {len(names)} linked folder(s) in {folder} that lead to a folder holding it (their "
                f"images are outside the folder given): {first_few(names)}")

    def warnings(self, folder: Path) -> list[str]:
        """What a verb that reads the folder's images says about the rest of it."""
        return [text for text in (self.left_out_files(folder), self.links_not_followed(folder)) if text]


def _link_target(link: Path) -> str:
    """Where ``link`` points, as written; read when warning, so a link removed since the scan is
    said to be gone (its reading failed, and the verb with it)."""
    try:
        return os.readlink(link)
    except OSError as exc:
        return f"(unreadable now: {exc.strerror})"


def scan_image_folder(folder: Path, *, recursive: bool = True) -> FolderImages:
    """The image files under ``folder`` (hidden files and folders skipped) and its other visible
    files, each sorted by the path relative to ``folder`` so the order does not depend on the file
    system. A folder with no image is an error that names what it holds instead.

    Every entry that is not a folder counts, by its suffix: a broken link or a named pipe called
    ``x.jpg`` is listed as an image, so that reading it fails with a message that names it instead
    of the file silently missing from the results. With ``recursive``, linked folders are followed
    as linked files are (each real folder once, so a link loop ends). A folder that cannot be
    listed is an error; a sub-folder that cannot be is listed in ``unreadable``."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageSourceError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise ImageSourceError(f"{folder} is not a folder")
    files, sub_folders, unreadable, hidden, enclosing_links = _walk_visible(folder, recursive)
    images = [path for path in files if path.suffix.lower() in IMAGE_EXTENSIONS]
    other_files = [path for path in files if path.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        where = "under" if recursive else "directly in"
        held = f"; it holds {len(other_files)} other file(s), e.g. {other_files[0].name}" if other_files else ""
        locked = (f"; {len(unreadable)} sub-folder(s) could not be listed, e.g. {unreadable[0][0]} "
                  f"({unreadable[0][1]})" if unreadable else "")
        skipped = (f"; it has {len(sub_folders)} sub-folder(s) not looked into, e.g. {sub_folders[0].name}"
                   if sub_folders else "")
        hidden_images = [path for path in hidden if path.suffix.lower() in IMAGE_EXTENSIONS]
        if hidden_images:
            skipped += (f"; {len(hidden_images)} hidden image file(s) skipped (a name starting with '.'), e.g. "
                        f"{hidden_images[0].name}")
        raise NoImagesError(
            f"no images {where} {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}){held}{skipped}{locked}",
            sub_folders,
        )
    return FolderImages(images, other_files, sub_folders, unreadable, enclosing_links)


def _walk_visible(folder: Path, recursive: bool) -> tuple[list[Path], list[Path], list[tuple[Path, str]], list[Path],
                                                          list[Path]]:
    """(files, sub-folders not looked into, sub-folders that could not be listed, hidden files
    skipped, linked folders not followed) under ``folder``, hidden names skipped, the first three
    sorted by the path relative to ``folder``. ``os.walk`` rather than ``Path.rglob``, which skips
    a folder it may not list without a word. The real tree is walked first and linked folders
    after it, each real folder once: a file reached both ways keeps its real path, and a link loop
    ends. A link to a folder holding ``folder`` is not followed: the walk would leave it."""
    holding = set(Path(os.path.realpath(folder)).parents)  # a link to folder itself is a loop: listed once
    enclosing_links: list[Path] = []
    files: list[Path] = []
    sub_folders: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    walked: set[tuple[int, int]] = set()  # (device, inode) of each real folder listed
    links: list[Path] = []  # linked folders met, walked after the real tree
    hidden: list[Path] = []  # hidden files of the folders walked: named when no image is found

    def record_failure(error: OSError) -> None:
        reason = error.strerror or str(error)
        if Path(error.filename) == folder:
            raise ImageSourceError(f"cannot list image folder {folder}: {reason}")
        unreadable.append((Path(error.filename), reason))

    def walk(top: Path) -> None:
        for root, dirs, names in os.walk(top, onerror=record_failure):  # descends real folders only
            here = Path(root)
            info = os.stat(root)
            if (info.st_dev, info.st_ino) in walked:  # a link to a folder already listed, or a loop
                dirs[:] = []
                continue
            walked.add((info.st_dev, info.st_ino))
            dirs[:] = sorted(name for name in dirs if not name.startswith("."))
            files.extend(here / name for name in names if not name.startswith("."))
            hidden.extend(here / name for name in sorted(names) if name.startswith("."))
            if not recursive:
                sub_folders.extend(here / name for name in dirs)
                return
            for link in (here / name for name in dirs if (here / name).is_symlink()):
                (enclosing_links if Path(os.path.realpath(link)) in holding else links).append(link)

    walk(folder)
    while links:
        walk(links.pop(0))

    def relative(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    return (sorted(files, key=relative), sorted(sub_folders, key=relative),
            sorted(unreadable, key=lambda failure: relative(failure[0])), hidden, sorted(enclosing_links, key=relative))


def list_images(folder: Path, *, recursive: bool = True) -> FolderImages:
    """:func:`scan_image_folder` for a calibration set. A sub-folder that cannot be listed is an
    error here, since a set silently short of its images would calibrate on something else than
    the user gave (verify and bench report it and go on, as detect does)."""
    found = scan_image_folder(folder, recursive=recursive)
    if found.unreadable:
        path, reason = found.unreadable[0]
        raise ImageSourceError(f"cannot list {len(found.unreadable)} sub-folder(s) of {folder}, e.g. {path}: "
                               f"{reason}; make them readable or give a folder without them")
    return found


def sample_images(paths: Sequence[T], count: int, seed: int) -> list[T]:
    """Draw ``count`` items reproducibly from ``paths`` (paths or any other items).

    ``count <= len(paths)``: a sample without replacement. ``count > len(paths)``: every item
    ``count // len`` times plus a sample without replacement for the remainder, so items are
    repeated only as much as needed and as evenly as possible (repeats of an image still differ in
    a calibration set, where each slot draws its own degradation). The result is in random order.
    """
    if count < 1:
        raise ImageSourceError(f"sample size must be at least 1, got {count}")
    if not paths:
        raise ImageSourceError("cannot sample from an empty list of images")
    if seed < 0:
        raise ImageSourceError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    repeats, remainder = divmod(count, len(paths))
    indices = np.concatenate([
        np.tile(np.arange(len(paths)), repeats),
        rng.choice(len(paths), size=remainder, replace=False),
    ]).astype(np.int64)
    return [paths[int(index)] for index in rng.permutation(indices)]


def _package_folder(package: str) -> Path | None:
    """The install folder of ``package`` without importing it (None when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read_rgb(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def builtin_photographs() -> list[tuple[str, np.ndarray]]:
    """Photographs shipped inside installed packages, as (name, uint8 RGB array), in a fixed order.

    Names are ``skimage:<file>`` and ``matplotlib:<file>``; grayscale photographs come back with
    three equal channels. Files missing from the local install are skipped, never downloaded.
    """
    locations = []
    skimage_folder = _package_folder("skimage")
    if skimage_folder is not None:
        locations += [("skimage", skimage_folder / "data" / name) for name in SKIMAGE_PHOTOGRAPHS]
    matplotlib_folder = _package_folder("matplotlib")
    if matplotlib_folder is not None:
        sample_data = matplotlib_folder / "mpl-data" / "sample_data"
        locations += [("matplotlib", sample_data / name) for name in MATPLOTLIB_PHOTOGRAPHS]
    photographs = []
    for package, path in locations:
        rgb = _read_rgb(path) if path.is_file() else None
        if rgb is not None:
            photographs.append((f"{package}:{path.name}", rgb))
    if not photographs:
        raise ImageSourceError(
            "no built-in photographs found: install scikit-image (or matplotlib), "
            "or pass an image folder"
        )
    return photographs
