"""``dfd-export degrade``: the verb around ``degrade_files`` -- which images a folder argument
gives, what each printed line says, exit codes, refusals before any work, signals."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_rgb
from dfd.calibration.degrade import fixed_degradation
from dfd.calibration.degrade_files import COPIES_RECORD, degrade_files
from dfd.export.cli import main


def run_degrade_cli(*args: str, cwd: Path | None = None):
    previous = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(main, ["degrade", *args])
    finally:
        os.chdir(previous)


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


def test_a_termination_signal_cleans_up_as_ctrl_c_does(tmp_path, photo):
    """SIGTERM (docker stop, a cancelled job) or SIGHUP while a copy was being written left its
    hidden partial file behind and said nothing. (The child starts with SIGHUP's default action, as
    from a terminal: under nohup, which the suite may run under, SIGHUP is ignored on purpose.)"""
    for number, name in enumerate(("SIGTERM", "SIGHUP")):
        source = write_rgb(tmp_path / f"in{number}" / "a.png", photo)
        out = tmp_path / f"out{number}"
        script = ("import os, signal\n"
                  "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
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
