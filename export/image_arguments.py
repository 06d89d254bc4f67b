"""The image arguments of ``detect`` and ``degrade``: files as given, folders expanded to their
images, and each problem (an empty argument, a folder that cannot be listed) kept to report on its
own line, so one bad argument never sinks the others."""

from __future__ import annotations

import os
from pathlib import Path

from dfd.runtime.errors import first_few

from .cli_errors import warn


def is_folder(given: str) -> bool:
    """Whether an argument names a folder. A path that cannot even be looked at (a name too long,
    a folder on the way that may not be entered) is taken as a file, which then fails on its own
    line as an unreadable image instead of ending the run."""
    try:
        return Path(given).is_dir()
    except OSError:
        return False


def expand_inputs(inputs: tuple[str, ...], recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Files as given; folders expanded to their images (``scan_image_folder``, the calibration
    sets' rule). Returns (images, problems); a folder's other files are named in a warning on
    stderr, since a file given by name is tried whatever its suffix."""
    from dfd.calibration.sources import ImageSourceError, NoImagesError, scan_image_folder

    images: list[str] = []
    problems: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given)
        if not given:  # Path("") is the current folder, whose images were all scored
            problems.append((given, "an empty image argument (an unset shell variable?); give '.' for the "
                                    "current folder"))
            continue
        if not is_folder(given):
            if given.endswith(os.sep) and not os.path.lexists(given):  # "photos/": a folder was meant
                a_file = os.path.isfile(given.rstrip(os.sep))
                problems.append((given, "a file, not a folder (drop the trailing /)" if a_file else "no such folder"))
                continue
            images.append(given)  # a missing file becomes a per-image error in the detector
            continue
        try:
            found = scan_image_folder(path, recursive=recursive)
        except ImageSourceError as exc:
            hint = " (use --recursive to look in them)" if isinstance(exc, NoImagesError) and exc.sub_folders else ""
            problems.append((given, f"{exc}{hint}"))
            continue
        images.extend(str(p) for p in found.images)
        problems += found.unlisted()
        left_out = found.left_out_files(path)
        if left_out:
            warn(f"{left_out} (give a file by name to try it anyway)")
        links = found.links_not_followed(path)
        if links:
            warn(links)
        if found.sub_folders:
            names = [p.name for p in found.sub_folders]
            warn(f"did not look in {len(names)} sub-folder(s) of {given}: {first_few(names)} "
                 "(use --recursive to include their images)")
    return images, problems
