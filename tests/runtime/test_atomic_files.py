"""Atomic writes and syncing folders (``dfd.runtime.atomic_files``)."""

from __future__ import annotations

import os
import re
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


def test_the_data_is_on_disk_in_a_hidden_file_beside_the_target_before_the_rename(tmp_path, monkeypatch):
    """Readers listing the folder (a scan of images, a build's set) must not take the file being
    written for one of theirs, and a power loss after the rename must not find it empty: the
    temporary file is hidden, in the target's folder (a rename cannot cross file systems), and
    fsynced whole while the target still holds the old data."""
    (tmp_path / "out.png").write_bytes(b"old")
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((os.fstat(fd).st_size, (tmp_path / "out.png").read_bytes()))
        real_fsync(fd)

    def write(file):
        file.write(b"new data")
        names.extend(p.name for p in tmp_path.iterdir())

    names = []
    monkeypatch.setattr(atomic_files.os, "fsync", fsync)
    atomic_files.write_atomically(tmp_path / "out.png", write)
    partial = [name for name in names if name != "out.png"]
    assert len(names) == 2 and len(partial) == 1
    assert re.fullmatch(r"\.out\.png\.[0-9a-f]{8}\.partial", partial[0]), partial
    assert synced == [(len(b"new data"), b"old")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_long_name_keeps_its_first_200_bytes_in_the_temporary_one(tmp_path):
    names = []
    name = "a" * 200 + "b" * 50 + ".png"
    atomic_files.write_atomically(tmp_path / name, lambda file: names.extend(p.name for p in tmp_path.iterdir()))
    assert len(names) == 1 and re.fullmatch(r"\.a{200}\.[0-9a-f]{8}\.partial", names[0]), names


def test_a_temporary_name_in_use_is_left_to_its_writer(tmp_path, monkeypatch):
    """Two writers of one file each need their own temporary file: opening the other's would
    write into it and rename it away under it."""
    (tmp_path / ".out.png.00000000.partial").write_bytes(b"theirs")
    tokens = iter(["00000000", "00000000", "11111111"])
    monkeypatch.setattr(atomic_files.secrets, "token_hex", lambda size: next(tokens))
    atomic_files.write_atomically(tmp_path / "out.png", lambda file: file.write(b"mine"))
    assert (tmp_path / ".out.png.00000000.partial").read_bytes() == b"theirs"
    assert (tmp_path / "out.png").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.png.00000000.partial", "out.png"]


def test_no_free_temporary_name_is_an_error_after_100_tries(tmp_path, monkeypatch):
    (tmp_path / ".out.png.00000000.partial").write_bytes(b"theirs")
    tries = []
    monkeypatch.setattr(atomic_files.secrets, "token_hex", lambda size: tries.append(size) or "00000000")
    with pytest.raises(FileExistsError, match=f"no free temporary name beside {tmp_path / 'out.png'} after 100 tries"):
        atomic_files.write_atomically(tmp_path / "out.png", lambda file: file.write(b"mine"))
    assert tries == [4] * 100
    assert [p.name for p in tmp_path.iterdir()] == [".out.png.00000000.partial"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    """Ctrl-C is no Exception: the temporary file stayed behind, a hidden half file."""
    def interrupted(file):
        file.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_files.write_atomically(tmp_path / "out.png", interrupted)
    assert list(tmp_path.iterdir()) == []


def _recorded_fsyncs(monkeypatch) -> list[os.stat_result]:
    """The status of each descriptor fsynced from now on (what it is: a file, a folder)."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_files.os, "fsync", lambda fd: synced.append(os.fstat(fd)) or real_fsync(fd))
    return synced


def _same(status: os.stat_result, path) -> bool:
    return os.path.samestat(status, os.stat(path))


def test_syncing_a_folder_fsyncs_the_folder_and_closes_it(tmp_path, monkeypatch):
    before = sorted(os.listdir("/proc/self/fd"))
    synced = _recorded_fsyncs(monkeypatch)
    atomic_files.sync_folder(tmp_path)
    assert len(synced) == 1 and _same(synced[0], tmp_path)
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_folder_that_cannot_be_synced_is_skipped_and_closed(tmp_path, monkeypatch):
    """Some network file systems refuse fsync on a folder (EINVAL): it runs where nothing may fail."""
    before = sorted(os.listdir("/proc/self/fd"))

    def refused(fd):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(atomic_files.os, "fsync", refused)
    atomic_files.sync_folder(tmp_path)  # returns
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_flushing_a_folder_syncs_its_files_then_its_folders_innermost_first(tmp_path, monkeypatch):
    """Links are not followed: a link to nothing would fail the build after its point of no return,
    and a link out of the set would sync another's files."""
    root = tmp_path / "set"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a")
    (root / "sub" / "b.bin").write_bytes(b"b")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "c.bin").write_bytes(b"c")
    (root / "dangling").symlink_to(tmp_path / "gone")
    (root / "outside").symlink_to(tmp_path / "outside")
    (root / "c.bin").symlink_to(tmp_path / "outside" / "c.bin")
    before = sorted(os.listdir("/proc/self/fd"))
    synced = _recorded_fsyncs(monkeypatch)
    atomic_files.flush_to_disk(root)
    expected = [root / "a.bin", root / "sub" / "b.bin", root / "sub" / "deeper", root / "sub", root]
    assert len(synced) == len(expected) and all(_same(s, p) for s, p in zip(synced, expected))
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_missing_folders_are_those_making_a_folder_creates_innermost_first(tmp_path):
    assert atomic_files.missing_folders(tmp_path) == []
    assert atomic_files.missing_folders(tmp_path / "a" / "b" / "c") == [tmp_path / "a" / "b" / "c",
                                                                        tmp_path / "a" / "b", tmp_path / "a"]
    (tmp_path / "link").symlink_to(tmp_path / "gone")  # there, although it leads nowhere: not made by a run
    assert atomic_files.missing_folders(tmp_path / "link" / "x") == [tmp_path / "link" / "x"]


def test_removing_made_folders_stops_at_the_first_that_stays(tmp_path):
    """A folder holding a file keeps itself and every folder above it; one that cannot be removed
    (here: gone already) keeps those above it too."""
    made = atomic_files.missing_folders(tmp_path / "a" / "b" / "c")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "kept.txt").write_text("kept")
    atomic_files.remove_empty_folders(made)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["a", "a/b", "a/b/kept.txt"]
    (tmp_path / "a" / "b" / "kept.txt").unlink()
    atomic_files.remove_empty_folders(made[1:])  # c went the first time
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x").mkdir()
    atomic_files.remove_empty_folders([tmp_path / "x" / "gone", tmp_path / "x"])
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
