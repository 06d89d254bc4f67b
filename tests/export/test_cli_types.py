"""The parameter types and output helpers every verb shares: number flags refuse NaN and
infinities, which click's own ranges let through; an option takes no other option as its value;
reports go where they are asked, stdout included."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dfd.export import cli_types
from dfd.export.cli import main
from dfd.export.cli_types import (FiniteFloatRange, GivenPath, OutputFolder, RowOutput, Verb, engine_dir_argument,
                                  files_a_run_reads, flags_given, is_stdout, max_pixels_option, prepare_output_file,
                                  regular_file_output, same_file, write_output_file)
from dfd.export.demo import demo
from dfd.runtime.errors import DfdError
from dfd.runtime.images import DEFAULT_MAX_PIXELS

FLAGS = [
    (["build", "--out", "x", "--calib-degrade"], "--calib-degrade"),
    (["build", "--out", "x", "--workspace-gib"], "--workspace-gib"),
    (["build", "--out", "x", "--lora-alpha"], "--lora-alpha"),
    (["degrade", "a.jpg", "--out", "x", "--share"], "--share"),
    (["verify", "set", "--max-abs-dp"], "--max-abs-dp"),
    (["verify", "set", "--max-mean-dp"], "--max-mean-dp"),
    (["verify", "set", "--min-agreement"], "--min-agreement"),
    (["detect", "set", "a.jpg", "--face-min-px"], "--face-min-px"),
]


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("args, flag", FLAGS, ids=[flag for _, flag in FLAGS])
def test_non_finite_values_are_usage_errors(args, flag, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a value let through would build or degrade into "x" here
    result = CliRunner().invoke(main, [*args, value])
    assert result.exit_code == 1, result.output
    assert f"Invalid value for '{flag}'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, flag", [(["degrade", "a.jpg", "--out", "x", "--seed"], "--seed"),
                                        (["build", "--out", "x", "--precision", "int8", "--calib-seed"], "--calib-seed")])
def test_a_negative_seed_is_refused_naming_its_flag(args, flag):
    """It failed later with "seed must be >= 0, got -1", naming no flag, while --help showed a plain INTEGER."""
    result = CliRunner().invoke(main, [*args, "-1"])
    assert result.exit_code == 1 and f"Invalid value for '{flag}': -1 is not in the range x>=0" in result.output


def test_finite_float_range_keeps_click_bounds_and_refuses_nan():
    share = FiniteFloatRange(0, 1)
    assert share.convert("0.25", None, None) == 0.25
    for bad, message in (("nan", "'nan' is not a finite number"), ("-inf", "not in the range"),
                         ("1.5", "not in the range"), ("abc", "not a valid finite float")):
        with pytest.raises(click.BadParameter, match=message):
            share.convert(bad, None, None)
    assert FiniteFloatRange().convert("-1e300", None, None) == -1e300
    with pytest.raises(click.BadParameter, match="'inf' is not a finite number"):
        FiniteFloatRange().convert("inf", None, None)


EMPTY_PATHS = [
    (["inspect", ""], "'ENGINE_DIR'", "a path"), (["doctor", ""], "'[ENGINE_DIR]'", "a path"),
    (["detect", "", "a.png"], "'ENGINE_DIR'", "a path"),
    (["detect", "{set}", "a.png", "--face-boxes", ""], "'--face-boxes'", "a file"),
    (["detect", "{set}", "a.png", "--face-crops", ""], "'--face-crops'", "a folder"),
    (["detect", "{set}", "a.png", "--skip-scored", ""], "'--skip-scored'", "a file"),
    (["verify", "{set}", "--images", ""], "'--images'", "a folder"),
    (["verify", "{set}", "--weights-dir", ""], "'--weights-dir'", "a folder"),
    (["verify", "{set}", "--json", ""], "'--json'", "a file"),
    (["bench", "", "--iterations", "1"], "'ENGINE_DIR'", "a path"),
    (["bench", "{set}", "--weights-dir", ""], "'--weights-dir'", "a folder"),
    (["bench", "{set}", "--plot", ""], "'--plot'", "a file"),
    (["build", "--out", "o", "--weights-dir", ""], "'--weights-dir'", "a folder"),
    (["build", "--out", "o", "--models-dir", ""], "'--models-dir'", "a folder"),
    (["build", "--out", "o", "--models-dir", "/no-models", "--precision", "int8", "--calib-dir", ""],
     "'--calib-dir'", "a folder"),
    (["build", "--out", "o", "--models-dir", "/no-models", "--precision", "int8", "--calib-cache", " "],
     "'--calib-cache'", "a folder"),
]


@pytest.mark.parametrize("args, label, wanted", EMPTY_PATHS, ids=[" ".join(a[:1] + [l]) for a, l, _ in EMPTY_PATHS])
def test_every_path_refuses_an_empty_value_which_meant_the_current_folder(args, label, wanted, tiny_engine_set,
                                                                          tmp_path, monkeypatch):
    """``Path("")`` is the current folder: ``build --calib-cache "$CACHE"`` with CACHE unset wrote a 0.5 GB
    cache there, ``inspect "$SET"`` said ". is not an engine set", ``--weights-dir ""`` read the
    current folder's checkpoints."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [a.replace("{set}", str(tiny_engine_set)) for a in args])
    assert result.exit_code == 1, result.output
    assert f"Invalid value for {label}: is empty (an unset shell variable?); give {wanted}" in result.output
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_empty_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for option in ("--out", "--models-dir", "--weights-dir"):
        result = CliRunner().invoke(demo, [option, ""])
        assert result.exit_code == 2 and f"'{option}': is empty (an unset shell variable?)" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--max-abs-dp", "--max-mean-dp"])
def test_a_probability_bound_above_one_is_refused(tiny_engine_set, flag):
    """|ΔP| is at most 1: ``--max-abs-dp 5`` was taken, a bound that can never fail, printed as "max |dP| 5"."""
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), flag, "5"])
    assert result.exit_code == 1 and f"Invalid value for '{flag}': 5.0 is not in the range 0<=x<=1" in result.output


def test_a_report_name_too_long_fails_naming_its_option_before_the_run(tiny_engine_set, tmp_path):
    """Path.exists() raised "File name too long" out of the check: a bare error naming no option."""
    report = tmp_path / ("r" * 300 + ".json")
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert f"Invalid value for --json: cannot write {report}: File name too long" in result.output
    assert result.output.count("r" * 300) == 1 and "max |" not in result.output


@pytest.mark.parametrize("verb", [["build"], ["degrade", "a.png", "--fixed", "jpeg10"]])
def test_an_output_folder_that_is_a_link_to_nothing_is_called_so(verb, tmp_path):
    """It was called "a file, not a folder" (mkdir raised FileExistsError on the link)."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    result = CliRunner().invoke(main, [*verb, "--out", str(link)])
    assert result.exit_code == 1, result.output
    assert f"'--out': {link} is a link to {tmp_path / 'gone'}, which does not exist" in result.output
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    result = CliRunner().invoke(main, [*verb, "--out", str(loop)])
    assert result.exit_code == 1 and f"'--out': {loop} is a link that leads back to itself (a loop)" in result.output


def test_an_output_file_that_is_part_of_the_engine_set_is_refused_before_the_run(tiny_engine_set, tmp_path):
    """``bench SET --json SET/manifest.json`` wrote its results over the manifest: the set was gone."""
    manifest = tiny_engine_set / "manifest.json"
    before = manifest.read_bytes()
    for verb in (["bench", str(tiny_engine_set), "--iterations", "1", "--warmup", "0"], ["verify", str(tiny_engine_set)]):
        for target in (manifest, tiny_engine_set / "global.fp32.onnx"):
            result = CliRunner().invoke(main, [*verb, "--json", str(target)])
            assert result.exit_code == 1, result.output
            assert f"{target} is a file of the engine set {tiny_engine_set}" in result.output
    assert manifest.read_bytes() == before


def test_an_unwritable_output_file_fails_before_the_run_even_as_root(tiny_engine_set):
    """os.access says yes to root for any path: /proc/x.json passed, and the report was lost after the run."""
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--json", "/proc/dfd-report.json"])
    assert result.exit_code == 1 and "cannot write /proc/dfd-report.json" in result.output
    assert "max |" not in result.output  # nothing was measured


def test_a_run_that_fails_leaves_no_folder_its_report_would_have_gone_to(tiny_engine_set, tmp_path):
    """The check before the run created --json's folders, which a run failing after it left
    behind empty; they are made when the report is written."""
    report = tmp_path / "reports" / "today" / "verify.json"
    empty = tmp_path / "no-images"
    empty.mkdir()
    result = CliRunner().invoke(main, ["verify", str(tiny_engine_set), "--images", str(empty), "--json", str(report)])
    assert result.exit_code == 1 and "no images" in result.output, result.output
    assert not (tmp_path / "reports").exists()
    write_output_file(report, lambda file: file.write(b"{}"))
    assert report.read_bytes() == b"{}"


def test_a_report_written_through_a_link_replaces_the_file_it_names_and_keeps_the_link(tmp_path):
    """The report was renamed over the link itself: link.json became a file, target.json stayed old."""
    (tmp_path / "target.json").write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to("target.json")
    prepare_output_file(link, "--json")
    write_output_file(link, lambda file: file.write(b"new"))
    assert link.is_symlink() and (tmp_path / "target.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]  # no temporary left


def test_a_report_to_a_device_or_pipe_is_written_to_it_not_renamed_over_it(tmp_path):
    """--json /dev/null replaced the device node with a regular file (as root: for the whole
    machine), and --json >(jq .) sent the pipe's reader nothing."""
    null = tmp_path / "null.json"
    null.symlink_to(os.devnull)
    prepare_output_file(null, "--json")
    write_output_file(null, lambda file: file.write(b"{}"))
    assert null.is_symlink() and os.path.realpath(null) == os.devnull and not os.path.isfile(os.devnull)
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    prepare_output_file(fifo, "--json")  # returns: opening a pipe without a reader would block
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_output_file(fifo, lambda file: file.write(b'{"score": 0.5}'))
    reader.join(timeout=30)
    assert received == [b'{"score": 0.5}'] and fifo.exists() and not fifo.is_file()


def test_a_folder_as_report_file_is_refused(tmp_path):
    with pytest.raises(click.BadParameter, match="is a folder; give a file name"):
        prepare_output_file(tmp_path, "--json")


def test_row_output_writes_one_byte_order_mark_at_the_start_of_a_file_only(tmp_path):
    """Each row was encoded on its own: with PYTHONIOENCODING=utf-8-sig every row began with a BOM."""
    path = tmp_path / "rows.csv"
    for mode, expected in (("w", "\ufeffa,1\r\nb,2\r\n"), ("a", "\ufeffa,1\r\nb,2\r\nc,3\r\n")):
        with open(path, mode, encoding="utf-8-sig", newline="") as stream:
            output = RowOutput(stream)
            for row in (["c,3\r\n"] if mode == "a" else ["a,1\r\n", "b,2\r\n"]):
                output.write(row)
        assert path.read_bytes().decode() == expected and output.rows == (1 if mode == "a" else 2)


def test_an_option_that_takes_another_option_as_its_value_is_refused(tiny_engine_set, tmp_path, monkeypatch):
    """``verify SET --json --strict`` wrote a report named --strict and ran without --strict."""
    @click.command(cls=Verb)
    @click.option("--json", "json_out")
    @click.option("--strict", is_flag=True)
    @click.option("--tag", multiple=True)
    def verb(json_out, strict, tag):
        click.echo(f"{json_out} {strict} {tag}")

    runner = CliRunner()
    result = runner.invoke(verb, ["--json", "--strict"])
    assert result.exit_code == 2
    assert ("--json took '--strict', another option, as its value: give --json a value (a file or folder really "
            "named --strict: ./--strict)") in result.output
    assert runner.invoke(verb, ["--tag", "a", "--tag", "--json"]).exit_code == 2
    assert runner.invoke(verb, ["--json", "./--strict", "--strict"]).output == "./--strict True ()\n"
    assert runner.invoke(verb, ["--json", "-x"]).output == "-x False ()\n"  # not one of its options
    monkeypatch.chdir(tmp_path)
    for args in (["verify", str(tiny_engine_set), "--json", "--strict"], ["build", "--out", "--force"],
                 ["bench", str(tiny_engine_set), "--label", "--json"], ["capi", "--out", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and "another option, as its value" in result.output, (args, result.output)
    assert list(tmp_path.iterdir()) == []


def test_a_report_to_stdout_is_alone_there_and_a_dash_is_refused(tiny_engine_set, tmp_path):
    """``--json /dev/stdout | jq`` read the JSON followed by the text summary; ``--json -`` wrote
    a file named '-'."""
    cli = [sys.executable, "-m", "dfd.export.cli"]
    for verb in (["verify", str(tiny_engine_set)], ["bench", str(tiny_engine_set), "--batch-sizes", "1",
                                                    "--warmup", "0", "--iterations", "1"]):
        run = subprocess.run(cli + verb + ["--json", "/dev/stdout"], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["engine_set" if verb[0] == "bench" else "engine_set_sha256"]
        assert "vote agreement" in run.stderr or "p50 ms" in run.stderr  # the summary, on stderr
        result = CliRunner().invoke(main, verb + ["--json", "-"], catch_exceptions=False)
        assert result.exit_code == 1 and "'-' would be a file named '-'; give /dev/stdout" in result.output


def test_capi_and_degrade_do_not_write_into_an_engine_set(tiny_engine_set, photographs, tmp_path):
    """capi --out SET and degrade --out SET/x wrote into the set, whose next build --force then
    refused the strangers; bench and verify already kept their reports out of it."""
    import shutil

    import cv2

    engine_set = tmp_path / "set"
    shutil.copytree(tiny_engine_set, engine_set)
    before = sorted(p.name for p in engine_set.rglob("*"))
    image = tmp_path / "coffee.png"
    cv2.imwrite(str(image), photographs["coffee"])
    for args, where in ((["capi", "--out", str(engine_set)], f"{engine_set} is the engine set"),
                        (["degrade", str(image), "--out", str(engine_set / "x")],
                         f"{engine_set / 'x'} is inside the engine set {engine_set}")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and where in result.output and "write beside it" in result.output, result.output
    assert sorted(p.name for p in engine_set.rglob("*")) == before
    result = CliRunner().invoke(main, ["degrade", str(image), "--out", str(tmp_path / "beside")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("verb", ["detect", "verify", "bench"])
def test_every_verb_that_reads_a_folder_says_what_it_left_out(tiny_engine_set, photographs, tmp_path, verb):
    """A file that is no image and a link that leads out of the folder are left out, each with a
    warning, by every verb that takes a folder of images (the same scan, which one verb passing on
    only some of its warnings would hide)."""
    import cv2

    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image")
    (folder / "parent").symlink_to("..")
    args = {"detect": ["detect", str(tiny_engine_set), str(folder), "--recursive", "--no-face-detect"],
            "verify": ["verify", str(tiny_engine_set), "--images", str(folder)],
            "bench": ["bench", str(tiny_engine_set), "--images", str(folder), "--batch-sizes", "1", "--warmup", "0",
                      "--iterations", "1"]}[verb]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # a warning may be wrapped
    assert f"left out 1 file(s) in {folder} whose names do not end in an image suffix: notes.txt" in shown, shown
    assert (f"did not follow 1 linked folder(s) in {folder} that lead to a folder holding it (their images are "
            f"outside the folder given): parent -> ..") in shown


def _fake_engine_set(folder):
    """A folder holding a manifest that names one graph: what makes it an engine set to the checks."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "dfd-engine-set", "streams": {
        "global": {"files": [{"path": "global.fp32.onnx"}]}}}))
    (folder / "global.fp32.onnx").write_bytes(b"graph")
    return folder


def test_max_pixels_is_at_least_one_and_its_help_says_what_the_verb_does(monkeypatch):
    @click.command()
    @max_pixels_option("is read reduced", "is refused", "A pixel costs 3 bytes")
    def verb(max_pixels):
        click.echo(max_pixels)

    monkeypatch.setenv("COLUMNS", "300")
    runner = CliRunner()
    assert runner.invoke(verb, []).output == f"{DEFAULT_MAX_PIXELS}\n"
    result = runner.invoke(verb, ["--max-pixels", "0"])
    assert result.exit_code == 2 and "'--max-pixels': 0 is not in the range x>=1" in result.output
    shown = " ".join(runner.invoke(verb, ["--help"]).output.split())
    assert (f"a larger JPEG is read reduced, any other larger image is refused. A pixel costs 3 bytes; raise it "
            f"where memory allows. [default: {DEFAULT_MAX_PIXELS}; x>=1]") in shown, shown


def test_an_option_taking_a_negated_flag_or_named_by_its_short_name_is_refused_by_its_long_name():
    @click.command(cls=Verb)
    @click.option("-j", "--json", "json_out")
    @click.option("--strict/--lenient")
    @click.option("--tag", multiple=True)
    def verb(json_out, strict, tag):
        click.echo(f"{json_out} {strict} {tag}")

    runner = CliRunner()
    result = runner.invoke(verb, ["-j", "--lenient"])
    assert result.exit_code == 2 and "--json took '--lenient', another option, as its value" in result.output
    result = runner.invoke(verb, ["--tag", "a", "--tag", "-j"])
    assert result.exit_code == 2 and "--tag took '-j', another option, as its value" in result.output
    assert runner.invoke(verb, ["--tag", "a", "-j", "b", "--lenient"]).output == "b False ('a',)\n"


def test_an_empty_path_is_refused_saying_what_to_give():
    for kind, wanted in ((GivenPath(dir_okay=False), "a file"),
                         (GivenPath(file_okay=False), "a folder, '.' for the current one"),
                         (GivenPath(), "a path, '.' for the current folder")):
        for empty in ("", " \t"):
            with pytest.raises(click.BadParameter, match=f"is empty \\(an unset shell variable\\?\\); give {wanted}$"):
                kind.convert(empty, None, None)
    assert GivenPath().convert("x", None, None) == Path("x") and isinstance(GivenPath().convert("x", None, None), Path)


def test_the_engine_set_argument_refuses_an_empty_path():
    @click.command()
    @engine_dir_argument
    def verb(engine_dir):
        click.echo(repr(engine_dir))

    result = CliRunner().invoke(verb, [""])
    assert result.exit_code == 2 and "'ENGINE_DIR': is empty (an unset shell variable?); give a path" in result.output
    assert CliRunner().invoke(verb, ["s"]).output == f"{Path('s')!r}\n"


def test_an_output_folder_is_no_file_and_outside_engine_sets_where_asked(tmp_path, monkeypatch):
    engine_set = _fake_engine_set(tmp_path / "set")
    (tmp_path / "file").write_text("x")
    for folder in (OutputFolder(), OutputFolder(outside_engine_sets=True)):
        with pytest.raises(click.BadParameter, match=f"^{tmp_path / 'file'} is a file, not a folder; choose another$"):
            folder.convert(str(tmp_path / "file"), None, None)
        assert folder.convert(str(tmp_path / "beside"), None, None) == tmp_path / "beside"
    assert OutputFolder().convert(str(engine_set / "x"), None, None) == engine_set / "x"
    outside = OutputFolder(outside_engine_sets=True)
    with pytest.raises(click.BadParameter, match=f"^{engine_set} is the engine set {engine_set}, whose folder"):
        outside.convert(str(engine_set), None, None)
    with pytest.raises(click.BadParameter, match=f"^{engine_set / 'x' / 'y'} is inside the engine set {engine_set}, "):
        outside.convert(str(engine_set / "x" / "y"), None, None)
    monkeypatch.chdir(engine_set)  # a relative name: the folders above it count too
    with pytest.raises(click.BadParameter, match=f"^out is inside the engine set {engine_set}, "):
        outside.convert("out", None, None)


def test_checking_an_output_file_changes_nothing(tmp_path):
    """The check opens the file for appending: an earlier report is kept as it was, and a new one
    leaves neither a file nor the folders it made."""
    assert prepare_output_file(None, "--json") is None
    (tmp_path / "old.json").write_bytes(b"earlier report")
    prepare_output_file(tmp_path / "old.json", "--json")
    assert (tmp_path / "old.json").read_bytes() == b"earlier report"
    prepare_output_file(tmp_path / "a" / "b" / "new.json", "--json")
    prepare_output_file(tmp_path / "new.json", "--json")
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]
    with pytest.raises(click.BadParameter, match="'-' would be a file named '-'; give /dev/stdout"):
        prepare_output_file(Path("-"), "--json")


def test_an_output_file_through_a_link_to_nothing_keeps_the_link(tmp_path):
    """The check created the file the link names and then removed the link instead of it: the report
    was written as a file in the link's place, and an empty file was left where it led."""
    link = tmp_path / "latest.json"
    link.symlink_to("reports/today.json")
    prepare_output_file(link, "--json")
    assert link.is_symlink() and [p.name for p in tmp_path.iterdir()] == ["latest.json"]
    write_output_file(link, lambda file: file.write(b"{}"))
    assert link.is_symlink() and (tmp_path / "reports" / "today.json").read_bytes() == b"{}"
    unwritable = tmp_path / "proc.json"
    unwritable.symlink_to("/proc/dfd-report.json")  # checked where it leads, as a file is
    with pytest.raises(click.BadParameter, match=f"^cannot write {unwritable}: "):
        prepare_output_file(unwritable, "--json")


def test_an_output_file_that_cannot_be_made_is_refused_naming_why(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(click.BadParameter, match=f"^cannot create the folder for {tmp_path / 'file' / 'r.json'}: "):
        prepare_output_file(tmp_path / "file" / "r.json", "--json")
    long = tmp_path / ("r" * 300 + ".json")
    with pytest.raises(click.BadParameter) as raised:
        prepare_output_file(long, "--json")
    assert raised.value.message == f"cannot write {long}: File name too long"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_output_file_of_an_engine_set_or_of_the_inputs_is_refused(tmp_path, monkeypatch):
    engine_set = _fake_engine_set(tmp_path / "set")
    (tmp_path / "photo.png").write_bytes(b"image")
    with pytest.raises(click.BadParameter, match=f"^{engine_set / 'global.fp32.onnx'} is a file of the engine set"):
        prepare_output_file(engine_set / "global.fp32.onnx", "--json", engine_set)
    with pytest.raises(click.BadParameter, match=f"^{engine_set / 'new.json'} is inside the engine set's folder"):
        prepare_output_file(engine_set / "new.json", "--json", engine_set)
    monkeypatch.chdir(engine_set)
    with pytest.raises(click.BadParameter, match="^new.json is inside the engine set's folder"):
        prepare_output_file(Path("new.json"), "--json", engine_set)
    with pytest.raises(click.BadParameter, match=f"^{tmp_path / 'photo.png'} is a file this run reads"):
        prepare_output_file(tmp_path / "photo.png", "--json", engine_set, [tmp_path / "x.png", tmp_path / "photo.png"])
    prepare_output_file(tmp_path / "report.json", "--json", engine_set, [tmp_path / "photo.png"])
    assert (tmp_path / "photo.png").read_bytes() == b"image" and sorted(p.name for p in tmp_path.iterdir()) == [
        "photo.png", "set"]


def test_the_files_a_run_reads_are_the_images_of_its_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    assert files_a_run_reads(tmp_path / "photos") == [tmp_path / "photos" / "a.jpg", tmp_path / "photos" / "b.png"]
    assert files_a_run_reads(tmp_path / "missing") == []  # the run says why
    assert files_a_run_reads(None) == []


def test_stdout_is_recognised_by_the_file_it_writes_to(tmp_path):
    (tmp_path / "r.json").write_text("{}")
    assert is_stdout(Path("/dev/stdout")) and is_stdout(Path("/proc/self/fd/1"))
    assert not is_stdout(None) and not is_stdout(tmp_path / "r.json") and not is_stdout(tmp_path / "missing")


def test_a_report_is_written_whole_or_not_at_all(tmp_path):
    report = tmp_path / "reports" / "r.json"
    write_output_file(report, lambda file: file.write(b"{}"))  # its folders are made
    assert report.read_bytes() == b"{}"

    def fails(file):
        file.write(b'{"half"')
        raise OSError(28, "No space left on device")

    for target in (report, tmp_path / "new.json"):
        with pytest.raises(DfdError, match=f"^cannot write {target}: No space left on device"):
            write_output_file(target, fails)
    assert report.read_bytes() == b"{}" and sorted(p.name for p in tmp_path.rglob("*")) == ["r.json", "reports"]


def test_same_file_is_false_where_either_is_missing(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "link").symlink_to("a")
    assert same_file(tmp_path / "link", tmp_path / "a")
    assert not same_file(tmp_path / "a", tmp_path / "missing") and not same_file(tmp_path / "missing", tmp_path / "a")


def test_a_regular_file_output_is_told_from_pipes_and_buffers(tmp_path):
    with open(tmp_path / "w.csv", "w") as written, open(tmp_path / "a.csv", "a") as appended:
        fd, status, appends = regular_file_output(written)
        assert (fd, appends) == (written.fileno(), False) and os.path.samestat(status, os.stat(tmp_path / "w.csv"))
        assert regular_file_output(appended)[2] is True
    reader, writer = os.pipe()
    with os.fdopen(reader), os.fdopen(writer, "w") as pipe:
        assert regular_file_output(pipe) is None
    assert regular_file_output(io.StringIO()) is None and regular_file_output(object()) is None


def _appending(path):
    """``path`` opened for appending as a shell's ``>>`` opens it: O_APPEND, offset 0."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "w", newline="")


def test_rows_appended_to_a_file_continue_it_and_can_be_cut_back(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"")
    with _appending(path) as stream:
        output = RowOutput(stream)
        assert not output.continues_file and output.appended_file_ends() is None
    path.write_bytes(b"path,score,faces,label\na,1,0\nb,2,0\n")
    with _appending(path) as stream:
        output = RowOutput(stream)
        assert output.continues_file and output.writes_to(path) and not output.writes_to(tmp_path / "other")
        before = sorted(os.listdir("/proc/self/fd"))
        assert output.appended_file_ends() == (b"path,score,faces,label", b"\n")
        assert sorted(os.listdir("/proc/self/fd")) == before
        output.cut_to(40)  # larger than the file: no cut, no growth
        output.cut_to(28)  # a killed run's last row, "b,2,0\n" cut short
        assert path.read_bytes() == b"path,score,faces,label\na,1,0"
        assert output.appended_file_ends() == (b"path,score,faces,label", b"0")
        output.write("\nc,3,0\n")
        assert path.read_bytes() == b"path,score,faces,label\na,1,0\nc,3,0\n" and output.rows == 1
        output.cut_to(0)
        assert not output.continues_file and path.read_bytes() == b""


def test_the_ends_of_an_appended_file_that_cannot_be_read_are_unknown(tmp_path, monkeypatch):
    def unreadable(*args):
        raise OSError(5, "Input/output error")

    (tmp_path / "rows.csv").write_bytes(b"path,score\na,1\n")
    with _appending(tmp_path / "rows.csv") as stream:
        output = RowOutput(stream)
        before = sorted(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(cli_types.os, "pread", unreadable)
        assert output.continues_file and output.appended_file_ends() is None
        assert sorted(os.listdir("/proc/self/fd")) == before


def test_a_file_written_from_its_middle_is_not_cut_past_the_offset(tmp_path):
    """``1<>file`` writes from the offset: the rows end there, not at the file's end."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"0123456789")
    with open(path, "r+", newline="") as stream:
        stream.seek(3)
        output = RowOutput(stream)
        assert not output.continues_file and output.appended_file_ends() is None
        output.cut_to(5)
        assert path.read_bytes() == b"0123456789"


def test_rows_follow_what_the_stream_holds_in_its_encoding(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", encoding="ascii", errors="replace", newline="") as stream:
        stream.write("path,score\n")  # still in the stream's buffer
        output = RowOutput(stream)
        output.write("\u00e9.png,1\n")
    assert path.read_bytes() == b"path,score\n?.png,1\n"


def test_rows_to_a_stream_without_a_file_are_flushed_and_counted(tmp_path):
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    output = RowOutput(stream)
    assert not output.writes_to(tmp_path) and not output.continues_file
    output.write("path,score\n", counts=False)
    output.write("a.png,1\n")
    assert buffer.getvalue() == b"path,score\na.png,1\n" and output.rows == 1


def test_a_row_that_cannot_be_written_is_cut_off_the_file(tmp_path, monkeypatch):
    """A full disk mid-row: the file keeps the whole rows before it, and what is still buffered
    goes nowhere (the flush at exit would write it after the cut)."""
    path = tmp_path / "rows.csv"
    real_write = os.write
    with open(path, "w", newline="") as stream:
        output = RowOutput(stream)
        output.write("a,1\n")
        calls = []

        def full(fd, data):
            calls.append(bytes(data))
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            return real_write(fd, bytes(data)[:2])

        monkeypatch.setattr(cli_types.os, "write", full)
        with pytest.raises(DfdError, match=r"^cannot write the results to stdout: No space left on device; the file "
                                           r"keeps the 1 whole row\(s\) written before$"):
            output.write("b,2\n")
        assert calls == [b"b,2\n", b"2\n"] and output.rows == 1
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
    assert path.read_bytes() == b"a,1\n"


def test_a_row_that_cannot_be_written_nor_cut_off_says_so(tmp_path, monkeypatch):
    def refused(*args):
        raise OSError(27, "File too large")

    with open(tmp_path / "rows.csv", "w", newline="") as stream:
        output = RowOutput(stream)
        output.write("a,1\n")
        monkeypatch.setattr(cli_types.os, "write", refused)
        monkeypatch.setattr(cli_types.os, "ftruncate", refused)
        with pytest.raises(DfdError) as raised:
            output.write("b,2\n")
        assert str(raised.value) == "cannot write the results to stdout: File too large"
        with pytest.raises(DfdError, match="^cannot cut the cut-short last row off the file stdout appends to: File"):
            output.cut_to(0)


def test_a_closed_pipe_is_not_a_write_error(tmp_path, monkeypatch):
    """``detect ... | head`` ends with a closed pipe, which the verb handles as the reader leaving."""
    def closed(*args):
        raise BrokenPipeError(32, "Broken pipe")

    with open(tmp_path / "rows.csv", "w", newline="") as stream:
        output = RowOutput(stream)
        monkeypatch.setattr(cli_types.os, "write", closed)
        with pytest.raises(BrokenPipeError):
            output.write("a,1\n")


def test_flags_given_are_those_typed_or_set_in_the_environment(monkeypatch):
    @click.command()
    @click.option("--max-abs-dp", type=float, default=0.5)
    @click.option("--strict", is_flag=True, envvar="TEST_DFD_STRICT")
    @click.option("--label", default="x")
    @click.pass_context
    def verb(ctx, max_abs_dp, strict, label):
        click.echo(" ".join(flags_given(ctx, ("max_abs_dp", "strict", "label"))))

    monkeypatch.setenv("TEST_DFD_STRICT", "1")
    assert CliRunner().invoke(verb, ["--max-abs-dp", "0.1"]).output == "--max-abs-dp --strict\n"
    monkeypatch.delenv("TEST_DFD_STRICT")
    assert CliRunner().invoke(verb, ["--label", "x"]).output == "--label\n"
