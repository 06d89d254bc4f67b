"""Atomic writes and syncing folders (``dfd.runtime.atomic_files``)."""

from __future__ import annotations

import os
import stat

import pytest

from dfd.runtime import atomic_files


def test_syncing_a_folder_that_cannot_be_opened_is_skipped(tmp_path, monkeypatch):
    """It runs after the renames that publish a set: a parent folder that may be written but not read
    (mode 1733) made the build fail with the new set already in place and the old one aside."""
    tried = []

    def refused(path, flags):
        tried.append(path)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic_files.os, "open", refused)
    atomic_files.sync_folder(tmp_path)  # returns: the refusal is not an error
    assert tried == [tmp_path]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_written_file_gets_the_mode_of_any_new_file(tmp_path, umask, mode):
    """mkstemp's 0600 stayed on the file after the rename: degraded copies and reports in a shared
    folder could not be read by the other users or containers meant to read them."""
    previous = os.umask(umask)
    try:
        atomic_files.write_atomically(tmp_path / "out.png", lambda file: file.write(b"data"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == mode
    assert (tmp_path / "out.png").read_bytes() == b"data"


def test_a_name_near_the_length_limit_is_written(tmp_path):
    """The temporary name added 18 bytes to the file's: any name over 237 bytes failed with 'File
    name too long' although the file itself could have it; a cut inside a UTF-8 character too."""
    for name in ("a" * 250 + ".png", "\u00e9" * 120 + ".png"):  # 254 and 244 bytes
        atomic_files.write_atomically(tmp_path / name, lambda file: file.write(b"data"))
        assert (tmp_path / name).read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a" * 250 + ".png", "\u00e9" * 120 + ".png"])


def test_a_failed_write_leaves_nothing(tmp_path):
    def fails(file):
        file.write(b"half")
        raise OSError(28, "No space left on device")

    (tmp_path / "out.png").write_bytes(b"old")
    with pytest.raises(OSError, match="No space left"):
        atomic_files.write_atomically(tmp_path / "out.png", fails)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"] and (tmp_path / "out.png").read_bytes() == b"old"
