"""Degraded copies of image files (``degrade_files``): nothing of the user's is overwritten or
lost (inputs, originals beside the copies, a folder that was not there), one bad image does not
sink the others, and an interrupted run resumes keeping exactly the copies it would write again."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write_rgb
from dfd.calibration.degrade import PAPER_SPEC, DegradationError, DegradationSpec, degrade, fixed_degradation
from dfd.calibration.degrade_files import COPIES_RECORD, degrade_files


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


def test_an_image_at_the_limit_is_below_it_and_a_record_without_pixels_is_judged_by_the_limit(tmp_path, photo):
    """An image of exactly --max-pixels decodes whole, so its copy stays on a resume with a higher
    limit. A record written before records kept each image's pixel count (or by hand without the
    limit) cannot say the image is below both limits: its copy is replaced, without a traceback."""
    small = write_rgb(tmp_path / "in" / "small.png", photo)  # 160x164 = 26,240 pixels
    out = tmp_path / "out"
    list(degrade_files([small], out, seed=0, fixed="blur3", max_pixels=26_240))
    [kept] = degrade_files([small], out, seed=0, fixed="blur3", max_pixels=50_000, resume=True)
    assert kept.kept
    record = out / COPIES_RECORD
    entry = json.loads(record.read_text())
    for edit in (lambda e: e.pop("pixels"), lambda e: e["made_with"].pop("max_pixels"),
                 lambda e: e.update(pixels="26240")):
        edited = json.loads(json.dumps(entry))
        edit(edited)
        record.write_text(json.dumps(edited) + "\n")
        [replaced] = degrade_files([small], out, seed=0, fixed="blur3", max_pixels=50_000, resume=True, replace=True)
        assert not replaced.kept and replaced.error is None


def test_a_copy_made_by_other_library_versions_is_not_kept(tmp_path, photo, monkeypatch):
    source = write_rgb(tmp_path / "in" / "a.png", photo)
    list(degrade_files([source], tmp_path / "out", seed=0, fixed="blur3"))
    monkeypatch.setattr(cv2, "__version__", "3.0.0")
    with pytest.raises(DegradationError, match=r"an earlier run wrote a.png with versions \{.*'opencv': '"):
        list(degrade_files([source], tmp_path / "out", seed=0, fixed="blur3", resume=True))


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


def test_the_record_names_the_bytes_the_copy_was_made_from(tmp_path, photo, monkeypatch):
    """Each image was read twice, once to decode it and once to hash it for the record: an image
    replaced in between (a sync client, another job) was recorded under its new bytes, and a
    resume then kept a copy made from the old ones as if it were the new image's. The one read
    that is decoded is the one hashed."""
    source = write_rgb(tmp_path / "in" / "a.png", photo)
    decoded_bytes = source.read_bytes()
    imdecode = cv2.imdecode

    def replacing_the_source(*args):
        pixels = imdecode(*args)
        if source.read_bytes() == decoded_bytes:
            write_rgb(source, photo[::-1])  # replaced just after it was read
        return pixels

    monkeypatch.setattr(cv2, "imdecode", replacing_the_source)
    [made] = degrade_files([source], tmp_path / "out", seed=0, fixed=None, share=1.0)
    monkeypatch.setattr(cv2, "imdecode", imdecode)
    assert made.error is None
    [entry] = [json.loads(line) for line in (tmp_path / "out" / COPIES_RECORD).read_text().splitlines()]
    assert entry["source_sha256"] == hashlib.sha256(decoded_bytes).hexdigest()
    with pytest.raises(DegradationError, match=r"a.png that --resume cannot keep \(not written from these images"):
        list(degrade_files([source], tmp_path / "out", seed=0, fixed=None, share=1.0, resume=True))


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


def test_names_that_differ_only_in_case_get_different_outputs(tmp_path, photo):
    """On a file system that ignores case, IMG_1.png and img_1.png are one file: the second image's
    copy silently replaced the first's."""
    first, second = write_rgb(tmp_path / "real" / "IMG_1.jpg", photo), write_rgb(tmp_path / "fake" / "img_1.jpg", photo)
    results = list(degrade_files([first, second], tmp_path / "out", seed=0, fixed="blur3"))
    assert [result.output.name for result in results] == ["IMG_1.png", "img_1-1.png"]
