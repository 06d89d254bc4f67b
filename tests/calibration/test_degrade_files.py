"""Degraded copies of image files: ``degrade_files`` and the ``dfd-export degrade`` verb. Nothing
of the user's is overwritten or lost (inputs, originals beside the copies, a folder that was not
there), one bad image does not sink the others, and every line says which file became which."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dfd.calibration.degrade import PAPER_SPEC, DegradationError, DegradationSpec, degrade, fixed_degradation
from dfd.calibration.degrade_files import COPIES_RECORD, degrade_files
from dfd.export.cli import main


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def run_degrade_cli(*args: str, cwd: Path | None = None):
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(main, ["degrade", *args])
    finally:
        os.chdir(previous)


def test_degrade_files_reports_bad_file_and_processes_others(tmp_path, photo):
    good = tmp_path / "in" / "good.jpg"
    good.parent.mkdir()
    cv2.imwrite(str(good), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "in" / "missing.png"
    pipe = tmp_path / "in" / "pipe.png"
    os.mkfifo(pipe)  # refused without being opened: reading it would block

    results = degrade_files([broken, good, missing, pipe], tmp_path / "out", seed=5, fixed=None,
                            spec=PAPER_SPEC)
    outcome = {result.source: result.error or result.output for result in results}
    assert outcome[broken] == f"'{broken}' is not an image OpenCV can decode (unrecognised format, or corrupt data)"
    assert outcome[missing] == f"image file '{missing}' does not exist"
    assert outcome[pipe] == f"'{pipe}' is a named pipe (FIFO), not an image file; only regular files are read"
    written = outcome[good]
    assert isinstance(written, Path) and written == tmp_path / "out" / "good.png"

    again = list(degrade_files([good], tmp_path / "again", seed=5, fixed=None, spec=PAPER_SPEC))
    assert written.read_bytes() == again[0].output.read_bytes()

    (tmp_path / "blocked" / "good.png").mkdir(parents=True)  # a folder where the output goes
    [result] = degrade_files([good], tmp_path / "blocked", seed=5, fixed=None, spec=PAPER_SPEC, replace=True)
    assert result.output is None
    assert result.error == (f"could not write {tmp_path / 'blocked' / 'good.png'} (degraded from {good}): "
                            f"Is a directory")


def test_an_output_folder_holding_the_inputs_is_refused_before_anything_is_written(tmp_path, photo):
    """``degrade photos/ --out photos/`` used to replace every PNG input with its degraded copy."""
    folder = tmp_path / "photos"
    folder.mkdir()
    first, other = folder / "a.png", tmp_path / "elsewhere" / "b.jpg"
    other.parent.mkdir()
    cv2.imwrite(str(first), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(other), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    originals = {path: path.read_bytes() for path in (first, other)}
    with pytest.raises(DegradationError, match=f"degrading into {folder} would overwrite input images with "
                                               f"degraded copies: {first}; choose an --out"):
        degrade_files([other, first], folder, seed=0, fixed="jpeg10")
    assert {path: path.read_bytes() for path in originals} == originals
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]  # b.png was not written either

    linked = tmp_path / "out"
    linked.mkdir()
    os.link(other, linked / "b.png")  # another name for the same file is the same file
    with pytest.raises(DegradationError, match="would overwrite input images"):
        degrade_files([other], linked, seed=0, fixed="jpeg10")
    assert other.read_bytes() == originals[other]


def test_an_output_named_like_another_input_is_refused(tmp_path, photo):
    """x.jpg writes x.png: with x.png among the inputs, it was overwritten before it was read."""
    folder = tmp_path / "d"
    folder.mkdir()
    jpeg, png = folder / "x.jpg", folder / "x.png"
    cv2.imwrite(str(jpeg), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(png), cv2.cvtColor(photo[::-1], cv2.COLOR_RGB2BGR))
    originals = {path: path.read_bytes() for path in (jpeg, png)}
    for replace in (False, True):
        with pytest.raises(DegradationError, match=f"would overwrite input images with degraded copies: {png}"):
            degrade_files([jpeg, png], folder, seed=0, fixed="blur3", replace=replace)
    assert {path: path.read_bytes() for path in originals} == originals
    assert sorted(p.name for p in folder.iterdir()) == ["x.jpg", "x.png"]


def test_existing_outputs_are_replaced_only_when_asked(tmp_path, photo):
    source = tmp_path / "a.jpg"
    cv2.imwrite(str(source), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"someone's file")
    with pytest.raises(DegradationError, match=f"1 output file\\(s\\) already exist in {out}: a.png; pass --force"):
        degrade_files([source], out, seed=0, fixed="blur3")
    assert (out / "a.png").read_bytes() == b"someone's file"
    [result] = degrade_files([source], out, seed=0, fixed="blur3", replace=True)
    assert result.output == out / "a.png" and cv2.imread(str(result.output)) is not None


def test_an_interrupted_run_resumes_keeping_only_copies_it_would_write_again(tmp_path, photo):
    """An interrupted run (a kill, a stdout that filled) left its copies, and the re-run had to
    --force every image again: there was no resume. --resume keeps a copy only where the record
    says this image and these settings made it and the file is unchanged; the result is the same
    bytes as one uninterrupted run, and anything else existing is still refused or replaced."""
    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb)
               for name, rgb in (("a", photo), ("b", photo[::-1]), ("c", photo[:, ::-1]))]
    whole = {r.output.name: r.output.read_bytes() for r in degrade_files(sources, tmp_path / "whole", seed=4,
                                                                          fixed=None, share=0.5)}
    out = tmp_path / "out"
    run = degrade_files(sources, out, seed=4, fixed=None, share=0.5)
    first = next(run)
    run.close()  # interrupted after the first copy
    assert sorted(p.name for p in out.iterdir()) == [COPIES_RECORD, "a.png"]
    with pytest.raises(DegradationError, match=r"a.png; an earlier run wrote them from these images with these "
                                               r"settings \(interrupted\?\): pass --resume to keep them"):
        list(degrade_files(sources, out, seed=4, fixed=None, share=0.5))
    # what --resume would not keep is named in the same refusal, not in a second one after it
    write_rgb(out / "c.png", photo)  # the user's own
    with pytest.raises(DegradationError, match=r"1 of them an earlier run wrote from these images with these settings "
                                               r"\(--resume keeps those\), but not c.png: pass --force to replace "
                                               r"those \(with --resume, only those\)"):
        list(degrade_files(sources, out, seed=4, fixed=None, share=0.5))
    (out / "c.png").unlink()
    resumed = list(degrade_files(sources, out, seed=4, fixed=None, share=0.5, resume=True))
    assert [(r.output.name, r.kept) for r in resumed] == [("a.png", True), ("b.png", False), ("c.png", False)]
    assert resumed[0].degraded == first.degraded and resumed[0].notes == first.notes
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == whole
    # other settings, an edited copy or a changed image: not what this run would write, so not kept
    with pytest.raises(DegradationError, match=r"3 output file\(s\) already exist in .*; an earlier run wrote a.png "
                                               r"with seed 4 \(not 5\): give the same settings to resume that run"):
        list(degrade_files(sources, out, seed=5, fixed=None, share=0.5, resume=True))
    (out / "b.png").write_bytes((out / "a.png").read_bytes())
    write_rgb(sources[2], photo[::2])
    with pytest.raises(DegradationError, match=r"2 output file\(s\) already exist in .*: b.png, c.png that --resume "
                                               r"cannot keep \(not written from these images, or changed since\); "
                                               r"pass --force"):
        list(degrade_files(sources, out, seed=4, fixed=None, share=0.5, resume=True))
    again = list(degrade_files(sources, out, seed=4, fixed=None, share=0.5, resume=True, replace=True))
    assert [r.kept for r in again] == [True, False, False] and (out / "b.png").read_bytes() == whole["b.png"]


RESUMED_WITH_OTHER_SETTINGS = [
    ({"fixed": "blur3"}, {"fixed": "jpeg10"}, "fixed 'blur3' (not 'jpeg10')"),
    ({"fixed": None, "share": 0.5}, {"fixed": None, "share": 1.0}, "share 0.5 (not 1.0)"),
    ({"fixed": "blur3", "share": 0.5, "seed": 1}, {"fixed": "blur3", "share": 0.5, "seed": 2}, "seed 1 (not 2)"),
    ({"fixed": None}, {"fixed": None, "spec": DegradationSpec(op_probabilities=(("jpeg", 1.0),))}, "spec '"),
]


@pytest.mark.parametrize("first, then, named", RESUMED_WITH_OTHER_SETTINGS,
                         ids=[named.split()[0] for _, _, named in RESUMED_WITH_OTHER_SETTINGS])
def test_a_copy_made_with_other_settings_is_not_kept_and_the_setting_is_named(tmp_path, photo, first, then, named):
    """Each setting that decides a copy's bytes is compared: dropping one from the record kept
    copies another run would not write (a clean copy of a --share 0.5 run in an all-degraded folder)."""
    source = write_rgb(tmp_path / "in" / "a.png", photo)
    list(degrade_files([source], tmp_path / "out", **{"seed": 0, **first}))
    with pytest.raises(DegradationError, match=f"an earlier run wrote a.png with {re.escape(named)}"):
        list(degrade_files([source], tmp_path / "out", resume=True, **{"seed": 0, **then}))
    [again] = degrade_files([source], tmp_path / "out", resume=True, replace=True, **{"seed": 0, **then})
    assert not again.kept


def test_the_decoding_limit_decides_a_resume_only_for_an_image_above_it(tmp_path, photo):
    """A run that failed on one image above --max-pixels, resumed with a higher limit, kept none of
    the copies it had written, though each image below both limits decodes whole either way. A
    JPEG above the earlier limit was degraded from its reduced decode: not kept, and the limit named."""
    small = write_rgb(tmp_path / "in" / "small.png", photo)  # 160x164 = 26,240 pixels
    jpeg = write_rgb(tmp_path / "in" / "large.jpg", np.tile(photo, (2, 2, 1)))  # 104,960 pixels
    out = tmp_path / "out"
    first = {r.output.name: r for r in degrade_files([small, jpeg], out, seed=0, fixed="blur3", max_pixels=50_000)}
    assert first["large.png"].notes and not first["small.png"].notes  # the JPEG decoded at 1/2
    with pytest.raises(DegradationError, match=r"an earlier run wrote large.png with max_pixels 50000 \(not 200000\)"):
        list(degrade_files([small, jpeg], out, seed=0, fixed="blur3", max_pixels=200_000, resume=True))
    resumed = list(degrade_files([small, jpeg], out, seed=0, fixed="blur3", max_pixels=200_000, resume=True,
                                 replace=True))
    assert [(r.output.name, r.kept) for r in resumed] == [("small.png", True), ("large.png", False)]
    whole = {r.output.name: r.output.read_bytes()
             for r in degrade_files([small, jpeg], tmp_path / "whole", seed=0, fixed="blur3", max_pixels=200_000)}
    assert {name: (out / name).read_bytes() for name in whole} == whole
    # a limit below the image: that run refuses it, so the copy an earlier run wrote is not its copy
    with pytest.raises(DegradationError, match=r"small.png, large.png; an earlier run wrote small.png with "
                                               r"max_pixels 50000 \(not 20000\)"):
        list(degrade_files([small, jpeg], out, seed=0, fixed="blur3", max_pixels=20_000, resume=True))


def test_a_copy_made_by_other_library_versions_is_not_kept(tmp_path, photo, monkeypatch):
    source = write_rgb(tmp_path / "in" / "a.png", photo)
    list(degrade_files([source], tmp_path / "out", seed=0, fixed="blur3"))
    monkeypatch.setattr(cv2, "__version__", "3.0.0")
    with pytest.raises(DegradationError, match=r"an earlier run wrote a.png with versions \{.*'opencv': '"):
        list(degrade_files([source], tmp_path / "out", seed=0, fixed="blur3", resume=True))


def test_a_kept_copy_keeps_its_decoding_notes(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    sources = [tmp_path / "in" / "a.png", write_rgb(tmp_path / "in" / "b.png", photo)]
    assert cv2.imwrite(str(sources[0]), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    run = degrade_files(sources, tmp_path / "out", seed=0, fixed="blur3")
    first = next(run)
    run.close()
    assert first.notes  # the alpha channel dropped
    result = run_degrade_cli(*map(str, sources), "--out", str(tmp_path / "out"), "--fixed", "blur3", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (f"{sources[0]} -> {tmp_path / 'out' / 'a.png'}  [kept: written by an "
                                             f"earlier run]  ({'; '.join(first.notes)})")


def test_the_seed_of_a_fixed_degradation_of_every_image_does_not_stop_a_resume(tmp_path, photo):
    """degrade says --seed has no effect there, yet a resume with another seed kept nothing."""
    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb) for name, rgb in (("a", photo), ("b", photo[::-1]))]
    run = degrade_files(sources, tmp_path / "out", seed=5, fixed="jpeg10")
    next(run)
    run.close()
    assert [r.kept for r in degrade_files(sources, tmp_path / "out", seed=0, fixed="jpeg10", resume=True)] == [
        True, False]


def test_a_copies_record_degrade_cannot_use_is_refused_before_any_work(tmp_path, photo):
    """A record that was a folder (or another user's file) left every copy unrecorded without a
    word; one that was a link appended JSON to the file it named."""
    source = write_rgb(tmp_path / "a.png", photo)
    (tmp_path / "folder" / COPIES_RECORD).mkdir(parents=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / COPIES_RECORD).symlink_to(notes)
    for out, what in (("folder", "not a file"), ("linked", "a link")):
        with pytest.raises(DegradationError, match=f"{COPIES_RECORD} is not degrade's copies record \\({what}\\); "
                                                   f"remove it, or choose another --out"):
            degrade_files([source], tmp_path / out, seed=0, fixed="blur3")
        assert not (tmp_path / out / "a.png").exists()
    assert notes.read_text() == "mine\n"


def test_a_record_line_a_full_disk_cut_short_leaves_the_next_whole(tmp_path, photo):
    """The next line was glued to the cut one, so that copy too went unrecorded, and --resume
    refused it after space was freed."""
    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb) for name, rgb in (("a", photo), ("b", photo[::-1]))]
    out = tmp_path / "out"
    out.mkdir()
    (out / COPIES_RECORD).write_text('{"file": "gone.png", "sha2')  # cut short, its copy removed
    run = degrade_files(sources, out, seed=0, fixed="blur3")
    next(run)
    run.close()
    assert [r.kept for r in degrade_files(sources, out, seed=0, fixed="blur3", resume=True)] == [True, False]


def test_a_copy_whose_record_cannot_be_written_is_removed_and_a_full_disk_stops(tmp_path, photo, monkeypatch):
    """The record's OSError was passed over: the copy stayed, unrecorded, so it passed for the
    user's own image and no resume would keep it."""
    import dfd.calibration.degrade_files as module

    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb) for name, rgb in (("a", photo), ("b", photo[::-1]))]

    def full(out_path, entry):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "_record_copy", full)
    run = degrade_files(sources, tmp_path / "out", seed=0, fixed="blur3")
    with pytest.raises(DegradationError, match=r"could not write .*a.png .*No space left on device; stopped there"):
        next(run)
    assert not (tmp_path / "out" / "a.png").exists()


def test_a_hand_edited_record_entry_is_read_without_a_traceback(tmp_path, photo):
    source = write_rgb(tmp_path / "in" / "a.png", photo)
    [result] = degrade_files([source], tmp_path / "out", seed=0, fixed="blur3")
    record = tmp_path / "out" / COPIES_RECORD
    entry = json.loads(record.read_text())
    record.write_text(json.dumps({**entry, "notes": None, "degraded": "yes"}) + "\n")
    [kept] = degrade_files([source], tmp_path / "out", seed=0, fixed="blur3", resume=True)
    assert kept.kept and kept.notes == () and kept.degraded


def test_degrade_cli_resume_says_what_it_kept(tmp_path, photo):
    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb) for name, rgb in (("a", photo), ("b", photo[::-1]))]
    out = tmp_path / "out"
    run = degrade_files(sources, out, seed=0, fixed="blur3")
    next(run)
    run.close()
    result = run_degrade_cli(str(tmp_path / "in"), "--out", str(out), "--fixed", "blur3", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{sources[0]} -> {out / 'a.png'}  [kept: written by an earlier run]",
                                          f"{sources[1]} -> {out / 'b.png'}"]
    assert "kept 1 cop(ies) an earlier run wrote, wrote 1 new one(s)" in result.stderr


def test_a_full_disk_stops_the_run_once_and_it_resumes_after(tmp_path, photo, monkeypatch):
    """A disk that filled failed every later image on its own line (thousands of lines for a big
    folder) after reading and degrading each for nothing."""
    import dfd.calibration.degrade_files as module

    sources = [write_rgb(tmp_path / "in" / f"{name}.png", rgb)
               for name, rgb in (("a", photo), ("b", photo[::-1]), ("c", photo[:, ::-1]))]
    out, writes = tmp_path / "out", []
    original = module.write_atomically

    def filling(path, write):
        writes.append(path.name)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, write)

    monkeypatch.setattr(module, "write_atomically", filling)
    result = run_degrade_cli(str(tmp_path / "in"), "--out", str(out), "--fixed", "blur3")
    assert result.exit_code == 1 and writes == ["a.png", "b.png"]  # c.png was not tried
    assert result.stdout.splitlines() == [f"{sources[0]} -> {out / 'a.png'}"]
    assert result.stderr.splitlines()[-1] == (
        f"error: could not write {out / 'b.png'} (degraded from {sources[1]}): No space left on device; stopped "
        f"there: free some space, then run again with --resume to keep the copies written so far")
    monkeypatch.setattr(module, "write_atomically", original)
    resumed = run_degrade_cli(str(tmp_path / "in"), "--out", str(out), "--fixed", "blur3", "--resume")
    assert resumed.exit_code == 0 and "kept 1 cop(ies) an earlier run wrote, wrote 2 new one(s)" in resumed.stderr


def test_degraded_files_are_written_whole_or_not_at_all(tmp_path, photo):
    source = tmp_path / "a.png"
    cv2.imwrite(str(source), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # the rename into place fails
    [result] = degrade_files([source], tmp_path / "out", seed=0, fixed="blur3", replace=True)
    assert result.output is None and result.error.startswith("could not write")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # no partial file left
    list(degrade_files([source], tmp_path / "fresh", seed=0, fixed="blur3"))
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == [COPIES_RECORD, "a.png"]


def test_degrade_files_leaves_no_folder_behind_when_it_wrote_nothing(tmp_path, photo):
    """Every input missing or unreadable: the --out folder (and the folders made for it) stayed
    behind, empty. An existing folder is kept, and so is one that received an image."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    results = list(degrade_files([broken, tmp_path / "missing.png"], tmp_path / "new" / "out", seed=5, fixed=None,
                                 spec=PAPER_SPEC))
    assert [result.output for result in results] == [None, None]
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    list(degrade_files([broken], tmp_path / "kept", seed=5, fixed=None, spec=PAPER_SPEC))
    assert (tmp_path / "kept").is_dir()
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    list(degrade_files([broken, good], tmp_path / "made", seed=5, fixed=None, spec=PAPER_SPEC))
    assert sorted(path.name for path in (tmp_path / "made").iterdir()) == [COPIES_RECORD, "good.png"]


def test_degrade_files_fixed_matches_the_function(tmp_path, photo):
    source = tmp_path / "a.png"
    cv2.imwrite(str(source), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    twin = tmp_path / "sub" / "a.png"
    twin.parent.mkdir()
    twin.write_bytes(source.read_bytes())
    results = list(degrade_files([source, twin], tmp_path / "out", seed=0, fixed="blur3", spec=PAPER_SPEC))
    assert [result.output.name for result in results] == ["a.png", "a-1.png"]
    written = cv2.cvtColor(cv2.imread(str(results[0].output)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, fixed_degradation("blur3")(photo))


def test_degrade_files_share_zero_copies_pixels(tmp_path, photo):
    source = tmp_path / "a.png"
    cv2.imwrite(str(source), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    for fixed in (None, "blur3"):  # --share applies to a fixed degradation too
        [result] = degrade_files([source], tmp_path / f"out-{fixed}", seed=0, fixed=fixed, spec=PAPER_SPEC, share=0.0)
        assert np.array_equal(cv2.imread(str(result.output)), cv2.imread(str(source)))


def test_degrade_cli_with_a_share_says_which_images_it_degraded(tmp_path, photo):
    """With --share 0.5 every line read "a.png -> out/a.png" whether the image was degraded or
    copied clean, so a mixed folder could not be labelled; the label now matches the pixels."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(6):
        cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(np.roll(photo, 7 * index, axis=1), cv2.COLOR_RGB2BGR))
    result = run_degrade_cli(str(folder), "--out", str(tmp_path / "out"), "--share", "0.5", "--fixed", "blur3")
    assert result.exit_code == 0, result.output
    labels = {}
    for line in result.stdout.splitlines():
        source, rest = line.split(" -> ")
        output, label = rest.split("  ", 1)
        labels[label] = labels.get(label, 0) + 1
        same = np.array_equal(cv2.imread(output), cv2.imread(source))
        assert same == (label == "[clean copy: outside the --share]"), line
    assert set(labels) == {"[degraded]", "[clean copy: outside the --share]"}, labels  # seed 0 draws both


def test_degrade_cli_expands_folders_and_reports_what_it_cannot_use(tmp_path, photo):
    """A folder's images are degraded, its other files named in a warning; an empty folder and a
    broken file are errors of their own (exit 2) that stop nothing else."""
    folder, empty = tmp_path / "in", tmp_path / "empty"
    (folder / "sub").mkdir(parents=True)
    empty.mkdir()
    cv2.imwrite(str(folder / "sub" / "a.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    (folder / "clip.gif").write_bytes(b"GIF89a")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = CliRunner().invoke(main, ["degrade", str(empty), str(folder), str(broken), "--out",
                                       str(tmp_path / "out"), "--fixed", "blur3"])
    assert result.exit_code == 2, result.output
    assert f"error: {folder}: no images directly in {folder}" in result.stderr
    assert "(use --recursive to look in them)" in result.stderr
    assert not (tmp_path / "out" / "a.png").exists()
    result = CliRunner().invoke(main, ["degrade", str(empty), str(folder), str(broken), "--out",
                                       str(tmp_path / "out"), "--fixed", "blur3", "--recursive"])
    assert result.exit_code == 2, result.output
    assert "left out 1 file(s) in " + str(folder) + " whose names do not end in an image suffix: clip.gif" in result.stderr
    assert f"error: {empty}: no images under {empty}" in result.stderr
    assert f"error: '{broken}' is not an image OpenCV can decode" in result.stderr
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "a.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, fixed_degradation("blur3")(photo))


def test_degrade_cli_takes_a_decoding_limit_of_its_own(tmp_path, photo):
    """A PNG over the limit was refused with advice to raise detect's --max-pixels, which degrade
    did not have; --max-pixels now sets degrade's limit, and a JPEG over it is degraded from its
    reduced decode, with the note."""
    height, width = photo.shape[:2]
    png, jpeg = tmp_path / "photo.png", tmp_path / "photo.jpg"
    cv2.imwrite(str(png), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(jpeg), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    limit = height * width - 1
    result = CliRunner().invoke(main, ["degrade", str(png), str(jpeg), "--out", str(tmp_path / "small"),
                                       "--fixed", "blur3", "--max-pixels", str(limit)])
    assert result.exit_code == 2, result.output
    assert f"({height * width} pixels) is above the limit of {limit} pixels" in result.stderr
    assert "(--max-pixels of the dfd-export command, max_pixels of Detector.open or dfd_options)" in result.stderr
    reduced = cv2.imread(str(tmp_path / "small" / "photo-1.png"))
    assert reduced.shape[:2] == (-(-height // 2), -(-width // 2)) and "downscaled 1/2 at decode" in result.stdout
    result = CliRunner().invoke(main, ["degrade", str(png), "--out", str(tmp_path / "enough"), "--fixed", "blur3",
                                       "--max-pixels", str(height * width)])
    assert result.exit_code == 0, result.output
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "enough" / "photo.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, fixed_degradation("blur3")(photo))


def test_degrade_cli_never_takes_its_own_outputs_as_inputs(tmp_path, photo):
    """``degrade photos --out photos/deg --recursive`` run twice degraded its earlier copies again."""
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    args = ["degrade", str(photos), "--out", str(photos / "deg"), "--fixed", "blur3", "--recursive"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [f"{photos / 'a.jpg'} -> {photos / 'deg' / 'a.png'}"]
    again = CliRunner().invoke(main, args + ["--force"])
    assert again.exit_code == 0, again.output
    assert f"left out 1 earlier degraded cop(ies) inside --out {photos / 'deg'}" in again.stderr
    assert again.stdout.splitlines() == first.stdout.splitlines()
    assert sorted(p.name for p in (photos / "deg").iterdir()) == [COPIES_RECORD, "a.png"]


@pytest.mark.parametrize("recursive", [["--recursive"], []], ids=["recursive", "folder only"])
def test_originals_inside_out_are_never_taken_for_earlier_copies(tmp_path, photo, recursive):
    """``degrade photos --recursive --out photos/originals --force`` left the originals out as
    'earlier degraded copies?' and then replaced them with degraded copies of photos/; without
    --recursive (originals not scanned) --force replaced them too."""
    photos = tmp_path / "photos"
    write_rgb(photos / "b.png", photo)
    write_rgb(photos / "originals" / "b.png", photo[::-1])
    original = (photos / "originals" / "b.png").read_bytes()
    for force in ([], ["--force"]):
        result = run_degrade_cli(str(photos), *recursive, "--out", str(photos / "originals"), "--fixed", "blur3",
                                 *force)
        assert result.exit_code == 1
        assert (f"error: --out {photos / 'originals'} lies inside a folder being degraded and holds 1 image(s) that "
                f"degrade did not write there (originals?): {photos / 'originals' / 'b.png'}; choose an --out "
                f"outside the folders being degraded, or a new one") in result.stderr
        assert (photos / "originals" / "b.png").read_bytes() == original
    # its own copies are left out of the inputs and replaced with --force; one changed since is not one of them
    shutil.rmtree(photos / "originals")
    args = [str(photos), *recursive, "--out", str(photos / "deg"), "--fixed", "blur3"]
    assert run_degrade_cli(*args).exit_code == 0
    again = run_degrade_cli(*args, "--force")
    assert again.exit_code == 0 and ("left out 1 earlier degraded cop(ies)" in again.stderr) == bool(recursive)
    write_rgb(photos / "deg" / "b.png", photo)  # edited by hand
    result = run_degrade_cli(*args, "--force")
    assert result.exit_code == 1 and "holds 1 image(s) that degrade did not write there" in result.stderr


def test_the_draw_follows_the_pixels_not_the_name(tmp_path, photo):
    """real/x.png and fake/x.png (different photographs) got the identical op chain; the same
    photograph under another name or format gets the same degradation."""
    from dfd.calibration.degrade import image_rng

    chains = [[op.name for op in degrade(rgb, image_rng(3, rgb))[1]] for rgb in (photo, photo[::-1].copy())]
    assert chains[0] != chains[1]
    png, bmp = write_rgb(tmp_path / "a" / "x.png", photo), write_rgb(tmp_path / "b" / "other.bmp", photo)
    flipped = write_rgb(tmp_path / "c" / "x.png", photo[::-1].copy())
    results = list(degrade_files([png, bmp, flipped], tmp_path / "out", seed=3, fixed=None))
    written = [result.output.read_bytes() for result in results]
    assert written[0] == written[1] != written[2]
    generator = image_rng(3, photo)
    generator.random()  # the share draw comes first, then the degradation
    expected = degrade(photo, generator, PAPER_SPEC)[0]
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(results[0].output)), cv2.COLOR_BGR2RGB), expected)


def test_a_name_that_is_not_utf8_is_degraded_like_any_other(tmp_path, photo):
    """zlib.crc32(name.encode('utf-8')) raised on such a name and ended the run; with --fixed,
    cv2.imwrite of the partial file crashed the process (SIGSEGV)."""
    folder = tmp_path / "in"
    odd = Path(os.fsdecode(os.fsencode(str(folder)) + b"/bad\xff.jpg"))
    write_rgb(folder / "plain.jpg", photo)
    odd.write_bytes((folder / "plain.jpg").read_bytes())
    for fixed in (None, "blur3"):
        results = list(degrade_files([odd, folder / "plain.jpg"], tmp_path / f"out-{fixed}", seed=0, fixed=fixed))
        assert [result.error for result in results] == [None, None]
        assert results[0].output.name == odd.stem + ".png" and results[0].output.exists()
        assert results[0].output.read_bytes() == results[1].output.read_bytes()  # same pixels, same draw


def test_an_image_that_cannot_be_degraded_is_reported_and_the_others_still_are(tmp_path, photo, monkeypatch):
    """Only decoding errors were caught: a MemoryError or an OpenCV error inside the engine ended
    the run and the images after it were never processed."""
    import dfd.calibration.degrade_files as module

    first, second = write_rgb(tmp_path / "in" / "a.png", photo), write_rgb(tmp_path / "in" / "b.png", photo[:, ::-1])
    original = module.degrade

    def failing_on_first(rgb, generator, spec=PAPER_SPEC):
        if np.array_equal(rgb, photo):
            raise MemoryError("Unable to allocate 2.87 GiB")
        return original(rgb, generator, spec)

    monkeypatch.setattr(module, "degrade", failing_on_first)
    results = list(degrade_files([first, second], tmp_path / "out", seed=0, fixed=None))
    assert results[0].output is None
    assert results[0].error == f"{first}: could not degrade it: MemoryError: Unable to allocate 2.87 GiB"
    assert results[1].error is None and results[1].output.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [COPIES_RECORD, "b.png"]


def test_a_user_file_named_like_the_old_partial_file_is_left_alone(tmp_path, photo):
    source = write_rgb(tmp_path / "x.jpg", photo)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".x.partial.png").write_bytes(b"precious")
    [result] = degrade_files([source], out, seed=0, fixed="blur3")
    assert result.error is None
    assert sorted(p.name for p in out.iterdir()) == [COPIES_RECORD, ".x.partial.png", "x.png"]
    assert (out / ".x.partial.png").read_bytes() == b"precious"


def test_a_refused_run_does_not_create_the_output_folder(tmp_path, photo):
    folder = tmp_path / "d"
    jpeg, png = write_rgb(folder / "x.jpg", photo), write_rgb(folder / "x.png", photo)
    out = tmp_path / "never"
    with pytest.raises(DegradationError, match="would overwrite"):
        degrade_files([jpeg, png], folder, seed=0, fixed="blur3")
    with pytest.raises(DegradationError, match="seed must be >= 0"):
        degrade_files([jpeg], out, seed=-1, fixed=None)
    assert not out.exists()


def test_decoding_notes_come_with_the_output(tmp_path, photo):
    """An RGBA PNG loses its alpha and a rotated JPEG is stood upright: the output says so."""
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    source = tmp_path / "alpha.png"
    assert cv2.imwrite(str(source), rgba)
    [result] = degrade_files([source], tmp_path / "out", seed=0, fixed="blur3")
    assert result.error is None and "alpha channel dropped" in result.notes


def test_an_image_named_explicitly_inside_out_is_degraded(tmp_path, photo):
    """``cd in && dfd-export degrade b --out .`` left b's images out as 'inside --out' and exited
    0 having written nothing; only a folder scan that reaches into --out leaves images out."""
    write_rgb(tmp_path / "in" / "b" / "x.jpg", photo)
    result = run_degrade_cli("b", "--out", ".", "--fixed", "blur3", cwd=tmp_path / "in")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["b/x.jpg -> x.png"]
    result = run_degrade_cli(str(tmp_path / "in" / "b" / "x.jpg"), "--out", str(tmp_path / "in" / "b"),
                             "--fixed", "blur3")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "in" / "b" / "x.png").exists()


def test_an_unknown_fixed_degradation_is_a_usage_error_before_the_scan(tmp_path):
    """It came after the scan's warnings, or after "no images to degrade" with exit 2."""
    (tmp_path / "empty").mkdir()
    result = run_degrade_cli(str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--fixed", "bogus")
    assert result.exit_code == 1  # a usage error
    assert ("Invalid value for '--fixed': unknown fixed degradation 'bogus'; known: jpeg10, blur3, noise25, "
            "gamma_dark, down4_up, compound_a, compound_b") in result.output
    assert "no images" not in result.output


def test_a_seed_that_changes_nothing_is_said_to(tmp_path, photo):
    write_rgb(tmp_path / "a.png", photo)
    warning = "WARNING: --seed has no effect: a --fixed degradation draws nothing, and with --share 1 every image"
    for args, said in ((["--fixed", "noise25", "--seed", "3"], True), (["--fixed", "noise25"], False),
                       (["--fixed", "noise25", "--seed", "3", "--share", "0.5"], False), (["--seed", "3"], False)):
        result = run_degrade_cli(str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--force", *args)
        assert result.exit_code == 0, result.output
        assert (warning in result.stderr) == said, args


def test_nothing_left_to_degrade_is_an_error(tmp_path, photo):
    out = tmp_path / "photos" / "deg"
    write_rgb(tmp_path / "a.png", photo)
    assert run_degrade_cli(str(tmp_path / "a.png"), "--out", str(out), "--fixed", "blur3").exit_code == 0
    result = run_degrade_cli(str(tmp_path / "photos"), "--out", str(out), "--fixed", "blur3", "--recursive")
    assert result.exit_code == 1
    assert "left out 1 earlier degraded cop(ies) inside --out" in result.stderr
    assert "error: no images to degrade" in result.stderr


def test_an_empty_image_argument_is_named_as_quotes(tmp_path, photo):
    """It printed "error: : an empty image argument" (nothing between the colons)."""
    source = write_rgb(tmp_path / "a.png", photo)
    result = run_degrade_cli(str(source), "", "--out", str(tmp_path / "out"), "--fixed", "blur3")
    assert result.exit_code == 2 and (tmp_path / "out" / "a.png").exists()
    assert "error: '': an empty image argument (an unset shell variable?)" in result.stderr


def test_an_image_given_twice_is_degraded_once_and_notes_are_printed(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    source = tmp_path / "a.png"
    assert cv2.imwrite(str(source), rgba)
    result = run_degrade_cli(str(source), str(tmp_path / "." / "a.png"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{source} -> {tmp_path / 'out' / 'a.png'}  (alpha channel dropped)"]
    assert "1 image(s) given more than once (or through links to one file) are degraded once" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [COPIES_RECORD, "a.png"]


def test_a_symbolic_link_loop_fails_on_its_own_line(tmp_path, photo):
    """Path.resolve raised RuntimeError on a loop (Python 3.11): a traceback, and no image degraded."""
    folder = tmp_path / "in"
    write_rgb(folder / "good.png", photo)
    os.symlink("l2.jpg", folder / "l1.jpg")
    os.symlink("l1.jpg", folder / "l2.jpg")
    out = tmp_path / "out"
    for args in ([str(folder)], [str(folder / "good.png"), str(folder / "l1.jpg")]):
        result = run_degrade_cli(*args, "--out", str(out), "--fixed", "blur3", "--force")
        assert result.exit_code == 2, result.output  # a loop is an unreadable input, not a traceback (exit 1)
        assert "Too many levels of symbolic links" in result.stderr
        assert (out / "good.png").exists()


def test_an_output_folder_that_cannot_be_written_fails_before_any_image_is_degraded(tmp_path, photo, monkeypatch):
    """Each image was decoded and degraded, then failed to be written, one error line per image."""
    import dfd.calibration.degrade_files as module

    source = write_rgb(tmp_path / "a.png", photo)
    if os.geteuid() == 0:  # root writes into any folder whatever its mode; sysfs refuses even root
        out = Path("/sys/kernel")
    else:
        out = tmp_path / "locked"
        out.mkdir(mode=0o555)
    monkeypatch.setattr(module, "degrade", lambda *args, **kwargs: pytest.fail("degraded for nothing"))
    result = run_degrade_cli(str(source), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: cannot write into output folder {out}: ")


def test_an_output_folder_that_is_an_input_folder_or_empty_is_refused(tmp_path, photo):
    folder = tmp_path / "same"
    write_rgb(folder / "a.jpg", photo)
    result = run_degrade_cli(str(folder), "--out", str(folder))
    assert result.exit_code == 1
    assert f"--out {folder} is the folder {folder} of the images to degrade" in result.stderr
    result = run_degrade_cli(str(folder / "a.jpg"), "--out", "", cwd=tmp_path)  # an unset $DEST
    assert result.exit_code == 1 and "is empty (an unset shell variable?)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_every_line_is_whole_and_names_are_escaped(tmp_path, photo):
    """Progress-bar redraws began the lines after them (grep '^error:' missed some), and a name
    holding a line break split its 'which file became which' line in two."""
    folder = tmp_path / "in"
    write_rgb(folder / "a.png", photo)
    write_rgb(folder / "line\nbreak.png", photo[::-1])
    (folder / "broken.png").write_bytes(b"not an image")
    result = run_degrade_cli(str(folder), "--out", str(tmp_path / "out"), "--fixed", "blur3")
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [f"{folder / 'a.png'} -> {tmp_path / 'out' / 'a.png'}",
                                          f"{folder}/line\\nbreak.png -> {tmp_path}/out/line\\nbreak.png"]
    assert result.stderr.splitlines() == [f"error: '{folder / 'broken.png'}' is not an image OpenCV can decode "
                                          f"(unrecognised format, or corrupt data)", "1 of 3 input(s) failed"]


def test_names_that_differ_only_in_case_get_different_outputs(tmp_path, photo):
    """On a file system that ignores case, IMG_1.png and img_1.png are one file: the second image's
    copy silently replaced the first's."""
    first, second = write_rgb(tmp_path / "real" / "IMG_1.jpg", photo), write_rgb(tmp_path / "fake" / "img_1.jpg", photo)
    results = list(degrade_files([first, second], tmp_path / "out", seed=0, fixed="blur3"))
    assert [result.output.name for result in results] == ["IMG_1.png", "img_1-1.png"]


def test_a_termination_signal_cleans_up_as_ctrl_c_does(tmp_path, photo):
    """SIGTERM (docker stop, a cancelled job) or SIGHUP while a copy was being written left its
    hidden partial file behind and said nothing."""
    for number, name in enumerate(("SIGTERM", "SIGHUP")):
        source = write_rgb(tmp_path / f"in{number}" / "a.png", photo)
        out = tmp_path / f"out{number}"
        script = ("import os, signal\n"
                  "import dfd.runtime.atomic_files as atomic\n"
                  "def fsync(handle):\n"
                  f"    os.kill(os.getpid(), signal.{name})\n"
                  "atomic.os.fsync = fsync\n"
                  "from dfd.export.cli import main\n"
                  f"main(['degrade', {str(source)!r}, '--out', {str(out)!r}, '--fixed', 'blur3'])\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 130, (name, done.returncode, done.stderr)
        assert "error: interrupted" in done.stderr
        assert not out.exists()  # neither the partial file nor the folder made for it


def test_a_missing_folder_is_called_a_folder(tmp_path, photo):
    """'missing/' was reported as "image file 'missing' does not exist"."""
    source = write_rgb(tmp_path / "a.png", photo)
    result = run_degrade_cli(f"{tmp_path / 'missing'}/", str(source), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0] == f"error: {tmp_path / 'missing'}/: no such folder"
    assert (tmp_path / "out" / "a.png").exists()
