"""The parameter types and output helpers every verb shares: number flags refuse NaN and
infinities, which click's own ranges let through; an option takes no other option as its value;
reports go where they are asked, stdout included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import click
import pytest
from click.testing import CliRunner

from dfd.export.cli import main
from dfd.export.cli_types import FiniteFloatRange, RowOutput, Verb, prepare_output_file, write_output_file
from dfd.export.demo import demo

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
def test_non_finite_values_are_usage_errors(args, flag, value):
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
