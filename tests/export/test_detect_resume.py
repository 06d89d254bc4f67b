"""Resuming an interrupted detect run (``--skip-scored``, ``dfd.export.detect_resume``)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import cv2
import pytest

from dfd.export.detect_resume import ScoredFileError, load_scored_images


@pytest.fixture
def folder(tmp_path, photographs):
    images = tmp_path / "images"
    images.mkdir()
    for name, rgb in photographs.items():
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    return images


def _detect(engine_set, *args: str, stdout, cwd):
    """The CLI in its own process, so stdout is the real file a shell redirect gives it."""
    return subprocess.run([sys.executable, "-m", "dfd.export.cli", "detect", str(engine_set), *args,
                           "--no-face-detect"], stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_interrupted_run_resumes_by_appending_to_its_own_output(tiny_engine_set, folder, tmp_path, fmt):
    out = tmp_path / f"scores.{fmt}"
    with open(out, "w") as stdout:  # the first run got through two images
        first = _detect(tiny_engine_set, "images/astronaut.png", "images/broken.png", "--format", fmt,
                        stdout=stdout, cwd=tmp_path)
    assert first.returncode == 2, first.stderr
    with open(out, "a") as stdout:  # ">>"
        resumed = _detect(tiny_engine_set, "images", "--format", fmt, "--skip-scored", str(out), stdout=stdout,
                          cwd=tmp_path)
    assert resumed.returncode == 2, resumed.stderr  # broken.png failed again
    assert ("skipping 1 image(s) already scored in " + str(out) + "; 3 input(s) left (1 row(s) there are failures, "
            "whose images are tried again)") in resumed.stderr
    text = out.read_text()
    rows = ([json.loads(line) for line in text.splitlines()] if fmt == "jsonl"
            else list(csv.DictReader(io.StringIO(text))))
    # one header (csv), then the first run's rows and the new ones: each image scored once
    assert [row["image"] for row in rows] == ["images/astronaut.png", "images/broken.png", "images/broken.png",
                                              "images/chelsea.png", "images/coffee.png"]
    scored = [row["image"] for row in rows if row["score"] not in (None, "")]
    assert sorted(scored) == ["images/astronaut.png", "images/chelsea.png", "images/coffee.png"]
    # again, with nothing left to score: the engine set is not even opened
    with open(out, "a") as stdout:
        done = _detect(tiny_engine_set, "images/astronaut.png", "images/coffee.png", "--format", fmt,
                       "--skip-scored", str(out), stdout=stdout, cwd=tmp_path)
    assert done.returncode == 0 and "0 input(s) left" in done.stderr and "backend:" not in done.stderr
    assert out.read_text() == text


def test_a_redirect_that_emptied_the_file_is_refused(tiny_engine_set, folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    out.write_text('{"image": "images/astronaut.png", "score": 0.4, "error": null}\n')
    with open(out, "w") as stdout:  # ">": the shell truncates before detect starts
        run = _detect(tiny_engine_set, "images", "--format", "jsonl", "--skip-scored", str(out), stdout=stdout,
                      cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == (f"error: stdout writes over {out}, the --skip-scored file ('>' emptied it "
                                           f"before detect started, so the rows it held are gone); to resume a run, "
                                           f"append with '>>'")


def test_the_last_row_of_a_killed_run_may_be_cut_and_is_scored_again(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"image": "a.png", "score": 0.4, "error": null}\n'
                     '{"image": "./b.png", "score": null, "error": "not an image"}\n'
                     '{"image": "c.png", "sco')
    scored = load_scored_images(jsonl)
    assert scored.images == {"a.png"} and scored.failed == 1 and scored.cut_row
    assert scored.holds("./a.png") and not scored.holds("b.png") and not scored.holds("c.png")
    table = tmp_path / "a.csv"
    table.write_text("image,score,raw_score,error,notes\r\na.png,0.4,0.41,,\r\nb.png,,,bad,\r\nc.png,0.")
    scored = load_scored_images(table)
    assert scored.images == {"a.png"} and scored.failed == 1 and scored.cut_row
    table.write_text('image,score,error,notes\r\na.png,0.4,,"cut in a quo')
    assert load_scored_images(table).images == frozenset() and load_scored_images(table).cut_row


@pytest.mark.parametrize("name, text, message", [
    ("a.jsonl", '{"image": "a.png", "sco\n{"image": "b.png", "score": 0.1}\n',
     r"a\.jsonl:1: not JSON; only the last line of a killed run may be cut short"),
    ("a.jsonl", '{"image": "a.png", "score": 0.1}\nnot json\n', r"a\.jsonl:2: not JSON, and the line is whole"),
    ("a.jsonl", '{"image": "a.png", "box": [0, 0, 4, 4]}\n',
     r"a\.jsonl:1: not a line of detect's jsonl output \(an object with \"image\" and \"score\"\)"),
    ("a.csv", "image,x1,y1,x2,y2\na.png,0,0,4,4\n", r"a\.csv: the CSV header lacks score, error"),
    ("a.csv", "image,score,error\na.png,0.1\nb.png,0.2,\n", r"a\.csv:2: the row has fewer cells than the header"),
    ("a.csv", "image,score,error\na.png,0.1,,extra\n", r"a\.csv:2: the row has more cells than the header"),
    ("a.txt", "a.png 0.4\n", r"a\.txt: --skip-scored reads detect's --format jsonl \(\.jsonl\) or --format csv"),
    ("a.jsonl", "x" * (1 << 21), r"a\.jsonl:1: a line of over 1,048,576 characters; a detect output has one"),
])
def test_a_file_that_is_no_detect_output_is_refused_naming_its_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ScoredFileError, match=message):
        load_scored_images(tmp_path / name)


def test_a_device_is_refused(tmp_path):
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    with pytest.raises(ScoredFileError, match="zero.jsonl is not a file"):
        load_scored_images(tmp_path / "zero.jsonl")
