"""Atomic writes and syncing folders (``dfd.runtime.atomic_files``)."""

from __future__ import annotations

from dfd.runtime import atomic_files


def test_syncing_a_folder_that_cannot_be_opened_is_skipped(tmp_path, monkeypatch):
    """It runs after the renames that publish a set: a parent folder that may be written but not read
    (mode 1733) made the build fail with the new set already in place and the old one aside."""
    def refused(path, flags):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic_files.os, "open", refused)
    atomic_files.sync_folder(tmp_path)
