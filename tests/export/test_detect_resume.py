"""Resuming an interrupted detect run (``--skip-scored``, ``dfd.export.detect_resume``)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
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


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_killed_run_resumes_without_its_cut_row(tiny_engine_set, folder, tmp_path, fmt):
    """The resumed rows were appended to the cut-short row, gluing them into one line that the next
    resume refused ("not JSON, and the line is whole" / "malformed CSV row")."""
    out = tmp_path / f"scores.{fmt}"
    with open(out, "w") as stdout:
        first = _detect(tiny_engine_set, "images/astronaut.png", "images/chelsea.png", "--format", fmt,
                        stdout=stdout, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    whole = out.read_bytes()
    out.write_bytes(whole[:-25])  # killed while writing chelsea's row
    for _ in range(2):  # the resume, then a resume of the resumed file
        with open(out, "a") as stdout:
            resumed = _detect(tiny_engine_set, "images", "--format", fmt, "--skip-scored", str(out),
                              stdout=stdout, cwd=tmp_path)
        assert resumed.returncode == 2, resumed.stderr  # broken.png
    text = out.read_text()
    rows = ([json.loads(line) for line in text.splitlines()] if fmt == "jsonl"
            else list(csv.DictReader(io.StringIO(text))))
    assert [row["image"] for row in rows] == ["images/astronaut.png", "images/broken.png", "images/chelsea.png",
                                              "images/coffee.png", "images/broken.png"]
    assert out.read_bytes().startswith(whole.split(b"images/chelsea.png")[0])  # the whole rows, as they were


def test_rows_that_would_not_continue_the_appended_file_are_refused_before_scoring(tiny_engine_set, folder,
                                                                                   tmp_path):
    """CSV rows went after JSON lines, or after a file's own header-less text, table lines after
    detect's jsonl or csv rows, and a cut row of an earlier run was continued by the new rows: each
    file was unreadable afterwards."""
    cases = [
        ("done.jsonl", '{"image": "images/astronaut.png", "score": 0.4, "error": null}\n', [],
         "stdout appends to a file of detect's --format jsonl rows, which table lines would break; give --format "
         "jsonl (and --skip-scored FILE to resume a killed run)"),
        ("done.csv", "image,score,raw_score,global,face,fusion,face_source,face_used,x1,y1,x2,y2,error,notes\n"
         "images/astronaut.png,0.4,0.41,0.4,0.4,0.4,,,,,,,,\n", [], "detect's --format csv rows"),
        ("scores.jsonl", '{"image": "images/astronaut.png", "score": 0.4, "error": null}\n',
         ["--format", "csv", "--skip-scored", "scores.jsonl"], "give --format jsonl"),
        ("notes.csv", "my notes\n", ["--format", "csv"], "does not begin with detect's CSV header"),
        ("rows.csv", "image,score\n", ["--format", "jsonl"], "its first line is not a JSON object"),
        ("detect.csv", "image,score,raw_score,global,face,fusion,face_source,face_used,x1,y1,x2,y2,error,notes\n",
         ["--format", "jsonl"], "detect's --format csv rows, which jsonl rows would break; give --format csv"),
        ("cut.jsonl", '{"image": "images/astronaut.png", "sco', ["--format", "jsonl"],
         "whose last line is cut short (a killed run?)"),
    ]
    for name, text, args, message in cases:
        out = tmp_path / name
        out.write_text(text)
        with open(out, "a") as stdout:
            run = _detect(tiny_engine_set, "images/chelsea.png", *args, stdout=stdout, cwd=tmp_path)
        assert run.returncode == 1 and message in run.stderr, (name, run.stderr)
        assert "backend:" not in run.stderr and out.read_text() == text
    table = tmp_path / "log.txt"
    table.write_text("scores of today:")
    with open(table, "a") as stdout:
        assert _detect(tiny_engine_set, "images/chelsea.png", stdout=stdout, cwd=tmp_path).returncode == 0
    assert table.read_text().splitlines()[1].startswith("images/chelsea.png  score ")


@pytest.mark.parametrize("fmt, cut", [("jsonl", '{"image": "images/che'), ("csv", "images/chelsea.png,0.")])
def test_a_resume_with_another_engine_set_is_refused_before_the_file_is_touched(tiny_engine_set, tiny_random_engine_set,
                                                                             folder, tmp_path, fmt, cut):
    """Rows named no engine set, so a resume with another one (fp16 after fp32, another
    checkpoint) appended its scores to the first set's, and nothing told them apart."""
    out = tmp_path / f"scores.{fmt}"
    with open(out, "w") as stdout:
        assert _detect(tiny_engine_set, "images/astronaut.png", "--format", fmt, stdout=stdout,
                       cwd=tmp_path).returncode == 0
    text = out.read_text()
    rows = ([json.loads(line) for line in text.splitlines()] if fmt == "jsonl"
            else list(csv.DictReader(io.StringIO(text))))
    digest = json.loads((tiny_engine_set / "manifest.json").read_text())["content_sha256"]
    assert [row["engine_set"] for row in rows] == [digest]
    out.write_text(text + cut)  # and a killed run's cut row, which a refused resume must not cut off
    other = json.loads((tiny_random_engine_set / "manifest.json").read_text())["content_sha256"]
    for images in ("images", "images/astronaut.png"):  # images left to score, and none
        with open(out, "a") as stdout:
            run = _detect(tiny_random_engine_set, images, "--format", fmt, "--skip-scored", str(out), stdout=stdout,
                          cwd=tmp_path)
        assert run.returncode == 1 and "backend:" not in run.stderr
        assert (f"error: {out} holds scores from another engine set (content_sha256 {digest[:12]}...) than "
                f"{tiny_random_engine_set} ({other[:12]}...)") in run.stderr
        assert out.read_text() == text + cut


def test_a_set_whose_digest_covers_its_build_time_resumes_its_own_rows(tiny_engine_set, folder, tmp_path):
    """A set built before the digest left out the build's time records a digest of every field: its
    rows name that digest, and a resume with the same set is checked against it, not refused."""
    legacy_set = tmp_path / "legacy"
    shutil.copytree(tiny_engine_set, legacy_set)
    content = {k: v for k, v in json.loads((legacy_set / "manifest.json").read_text()).items() if k != "content_sha256"}
    legacy = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (legacy_set / "manifest.json").write_text(json.dumps({**content, "content_sha256": legacy}))
    out = tmp_path / "scores.jsonl"
    with open(out, "w") as stdout:
        assert _detect(legacy_set, "images/astronaut.png", "--format", "jsonl", stdout=stdout,
                       cwd=tmp_path).returncode == 0
    with open(out, "a") as stdout:
        run = _detect(legacy_set, "images/astronaut.png", "images/coffee.png", "--format", "jsonl",
                      "--skip-scored", str(out), stdout=stdout, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["image"], row["engine_set"]) for row in rows] == [("images/astronaut.png", legacy),
                                                                   ("images/coffee.png", legacy)]
    # inspect shows the digest the rows name, the one the set records, not one of today's rule
    shown = subprocess.run([sys.executable, "-m", "dfd.export.cli", "inspect", str(legacy_set)], capture_output=True,
                           text=True)
    assert f"content      sha256 {legacy}  (detect rows' engine_set)\n" in shown.stdout, shown.stdout + shown.stderr


def test_a_resume_with_a_set_that_records_no_digest_says_so(tiny_engine_set, folder, tmp_path):
    """A set whose manifest was edited and lost its content_sha256 (the easy way to hide an edit)
    was refused as "another engine set" than the rows', named by a digest it never recorded; it is
    refused for what it is, before the file is touched, as detect refuses it without --skip-scored."""
    out = tmp_path / "scores.jsonl"
    with open(out, "w") as stdout:
        assert _detect(tiny_engine_set, "images/astronaut.png", "--format", "jsonl", stdout=stdout,
                       cwd=tmp_path).returncode == 0
    text = out.read_text()
    stripped = tmp_path / "stripped"
    shutil.copytree(tiny_engine_set, stripped)
    manifest = json.loads((stripped / "manifest.json").read_text())
    del manifest["content_sha256"]
    manifest["vote"]["weights"]["face"] = 5
    (stripped / "manifest.json").write_text(json.dumps(manifest))
    for resume in (("--skip-scored", str(out)), ()):
        with open(out, "a") as stdout:
            run = _detect(stripped, "images", "--format", "jsonl", *resume, stdout=stdout, cwd=tmp_path)
        assert run.returncode == 1 and "another engine set" not in run.stderr
        assert "manifest.json has no content_sha256: it was edited" in run.stderr, run.stderr
        assert out.read_text() == text


def test_a_wrong_engine_folder_is_named_before_the_scored_file_is_read(folder, tmp_path):
    """The folder is the first thing detect is given and the rows are judged against its digest:
    its error comes first, whatever is wrong with the file to resume."""
    (tmp_path / "scores.txt").write_text("a.png 0.4\n")
    with open(tmp_path / "out.jsonl", "a") as stdout:
        run = _detect(tmp_path / "no-set", "images", "--skip-scored", "scores.txt", stdout=stdout, cwd=tmp_path)
    assert run.returncode != 0 and "--skip-scored reads" not in run.stderr
    assert f"engine set folder not found: {tmp_path / 'no-set'}" in run.stderr, run.stderr


def test_rows_that_name_no_engine_set_resume_with_a_warning(tiny_engine_set, folder, tmp_path):
    out = tmp_path / "scores.jsonl"
    old_row = '{"image": "images/astronaut.png", "score": 0.4, "error": null}\n'  # an earlier dfd-export's
    out.write_text(old_row)
    with open(out, "a") as stdout:
        run = _detect(tiny_engine_set, "images/astronaut.png", "images/coffee.png", "--format", "jsonl",
                      "--skip-scored", str(out), stdout=stdout, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (f"WARNING: some scored rows of {out} do not name their engine set (written by an earlier dfd-export), so "
            f"whether {tiny_engine_set} scored them cannot be checked") in run.stderr
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == ["images/astronaut.png",
                                                                                     "images/coffee.png"]


def test_an_earlier_versions_csv_is_refused_before_its_cut_row_is_cut(tiny_engine_set, folder, tmp_path):
    """Its header lacks engine_set: the new rows would have a cell more than its columns. The
    refusal came after the cut row was already cut off the file."""
    out = tmp_path / "scores.csv"
    text = ("image,score,raw_score,global,face,fusion,face_source,face_used,x1,y1,x2,y2,error,notes\r\n"
            "images/astronaut.png,0.4,0.41,0.4,0.4,0.4,,,,,,,,\r\nimages/chel")
    out.write_text(text, newline="")
    with open(out, "a") as stdout:
        run = _detect(tiny_engine_set, "images", "--format", "csv", "--skip-scored", str(out), stdout=stdout,
                      cwd=tmp_path)
    assert run.returncode == 1 and "stdout appends to detect CSV rows with other columns than this version writes " \
        "(an earlier dfd-export's, without engine_set?)" in run.stderr
    assert out.read_bytes() == text.encode()
    # refused first: it came after the unchecked-set warning and "skipping 1 image(s)", as if resumed
    assert run.stderr.startswith("error: ") and "skipping" not in run.stderr and "WARNING" not in run.stderr
    # what the error says to do: the rest scored into a new file
    with open(tmp_path / "rest.csv", "w") as stdout:
        run = _detect(tiny_engine_set, "images", "--format", "csv", "--skip-scored", str(out), stdout=stdout,
                      cwd=tmp_path)
    assert run.returncode == 2, run.stderr  # broken.png
    rest = (tmp_path / "rest.csv").read_text().splitlines()
    assert rest[0].endswith(",engine_set") and [row.split(",")[0] for row in rest[1:]] == [
        "images/broken.png", "images/chelsea.png", "images/coffee.png"]


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
    table.write_text("image,score,error,engine_set\r\na.png,0.4,,aa\r\nb.png,0.1,,bb")  # cut in its last cell
    scored = load_scored_images(table)
    assert scored.images == {"a.png"} and scored.cut_row and scored.engine_sets == {"aa"}


def test_a_scored_image_is_known_by_its_spelling_normalised_only_where_that_names_the_same_file(tmp_path):
    """``./a.png`` is ``a.png`` whatever the folders are, but ``link/../a.png`` is another file
    where ``link`` leads into another folder: resuming skipped a.png as if it had been scored."""
    (tmp_path / "a.jsonl").write_text('{"image": "x/./a.png", "score": 0.4}\n'
                                      '{"image": "link/../b.png", "score": 0.1}\n')
    scored = load_scored_images(tmp_path / "a.jsonl")
    assert scored.holds("x/a.png") and scored.holds("./x//a.png")
    assert scored.holds("link/../b.png") and not scored.holds("b.png")


def test_a_zero_filled_tail_is_where_the_rows_end_and_a_nul_elsewhere_is_refused_on_every_python(tmp_path):
    """A power loss can leave a file's last block as NULs. The jsonl reader took that tail for a
    cut row; the CSV reader did so on Python 3.11 (whose csv module reads a NUL as a character) and
    refused the file on 3.10 (a malformed row). Both now cut there on every Python, and a NUL in a
    whole line or in the header is no detect output on every Python too (3.11 took a name with a
    NUL for a scored image)."""
    rows = {"a.csv": "image,score,error\na.png,0.4,\n", "a.jsonl": '{"image": "a.png", "score": 0.4}\n'}
    for name, whole in rows.items():
        (tmp_path / name).write_text(whole + "\0" * 512)
        scored = load_scored_images(tmp_path / name)
        assert scored.images == {"a.png"} and scored.cut_row and scored.whole_rows_bytes == len(whole)
    refused = [("image,score,error\na\0.png,0.4,\nb.png,0.1,\n", "a.csv:2"),
               ("image,score,error\na.png,0.4,\n" + "\0" * 512 + "\n", "a.csv:3"),
               ("\0" * 512, "a.csv:1"), ("image,score,\0error\n", "a.csv:1")]
    for text, where in refused:
        (tmp_path / "a.csv").write_text(text)
        with pytest.raises(ScoredFileError, match=f"{where}: a NUL byte: not detect's --format csv output"):
            load_scored_images(tmp_path / "a.csv")


def test_the_engine_sets_are_those_of_the_scored_rows(tmp_path):
    """A failed row's image is scored again, so the set that failed it does not matter."""
    (tmp_path / "a.jsonl").write_text('{"image": "a.png", "score": 0.4, "engine_set": "aa"}\n'
                                      '{"image": "b.png", "score": 0.1}\n'
                                      '{"image": "c.png", "score": null, "error": "bad", "engine_set": "cc"}\n'
                                      '{"image": "d.png", "score": 0.2, "engine_set": 7}\n')
    assert load_scored_images(tmp_path / "a.jsonl").engine_sets == {"aa", None}
    (tmp_path / "a.csv").write_text("image,score,error,engine_set\na.png,0.4,,aa\nb.png,0.1,,\nc.png,,bad,cc\n")
    assert load_scored_images(tmp_path / "a.csv").engine_sets == {"aa", None}


def test_the_bytes_before_a_cut_row_are_counted_as_the_file_holds_them(tmp_path):
    """What a resumed run keeps of the file: up to the cut row, counted in the file's own bytes
    (a byte-order mark, names that are not UTF-8, a quoted name holding a line break)."""
    whole_rows = ('\ufeffimage,score,error\r\n"two\nlines.png",0.4,\r\nna\u00efve.png,0.1,\r\n'.encode()
                  + b"\xff.png,0.2,\r\n")
    for cut in (b'c.png,0.', b'"c\r\nd.png",0.1,"no'):
        (tmp_path / "a.csv").write_bytes(whole_rows + cut)
        scored = load_scored_images(tmp_path / "a.csv")
        assert scored.cut_row and scored.whole_rows_bytes == len(whole_rows) and len(scored.images) == 3
    (tmp_path / "a.csv").write_bytes(whole_rows)
    assert load_scored_images(tmp_path / "a.csv").whole_rows_bytes == len(whole_rows)
    lines = '{"image": "na\u00efve.png", "score": 0.4}\n\n'.encode()
    (tmp_path / "a.jsonl").write_bytes(lines + b'{"image": "b')
    scored = load_scored_images(tmp_path / "a.jsonl")
    assert (scored.format, scored.whole_rows_bytes, scored.cut_row) == ("jsonl", len(lines), True)


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
