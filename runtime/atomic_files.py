"""Writing a file so that readers see either the old file or the whole new one.

Degraded copies, cached calibration sets and compiled kernels are read back later (by ``verify
--images``, by the next build, by the next process), and reports replace earlier ones, so an
interrupted or failed write must never leave a truncated file under the real name, nor touch any
other file of the user's. Standard library only: the runtime uses it too.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

# of the file's own name in its temporary one: ".{name}.{8 hex}.partial" stays within the 255
# bytes a name may have, where the whole name would pass it for a name of over 237 bytes
_NAME_BYTES_KEPT = 200


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a hidden temporary file beside ``path`` (a name no other file has, so
    each writer has its own) and rename it to ``path``; on any failure the temporary file is
    removed and the error raised. Python opens the file, so any name the file system takes
    works (OpenCV's ``imwrite`` crashes on names that are not valid UTF-8). The file gets the
    mode any new file gets (0666 less the umask), not mkstemp's 0600, which kept degraded copies
    and reports from other users and containers reading a shared folder."""
    handle, partial = _create_partial(path)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the data reaches the disk before the rename can
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _create_partial(path: Path) -> tuple[int, str]:
    """A new hidden file beside ``path``, opened for writing: (descriptor, its path)."""
    stem = os.fsdecode(os.fsencode(path.name)[:_NAME_BYTES_KEPT])
    for _ in range(100):
        partial = str(path.parent / f".{stem}.{secrets.token_hex(4)}.partial")
        try:
            return os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), partial
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path} after 100 tries")


def sync_folder(folder: Path) -> None:
    """fsync ``folder`` itself, so renames and new names in it are on disk. A folder that cannot be
    opened or synced (some network file systems) is left to the file system's own ordering: this
    runs after a build's point of no return, where nothing may fail."""
    try:  # best effort: a folder that may be written but not read (mode 1733) cannot be opened
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def flush_to_disk(folder: Path) -> None:
    """fsync every file under ``folder``, then its folders: a build publishes its staging folder by
    renaming it over the old set and then deletes the old set, so a power loss or kernel crash
    soon after must not find the new set's graphs still empty in the page cache, and the old one
    gone."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
            continue
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
    for each in reversed(folders):
        sync_folder(each)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, innermost first: what making it will
    create, for :func:`remove_empty_folders` to take back when nothing was written there."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove folders a run made (``missing_folders``, innermost first) while they are empty: a run
    that failed or wrote nothing leaves none behind. Stops at the first that is not empty (or
    cannot be removed), which keeps every folder above it."""
    for folder in folders:
        try:
            folder.rmdir()  # only while empty
        except OSError:
            break
