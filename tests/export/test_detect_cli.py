"""``dfd-export detect``: the verb around the Detector -- the reference pipeline reproduced from
files, what each output row and note says, face boxes and crops given as files, folders and
names, and errors that fail one input alone."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FACE_BOXES, HeldPreparations, write_grey_images
from dfd.calibration.degrade import fixed_degradation
from dfd.export.cli import main
from reference_preprocessing import reference_face_crop, reference_vote, stream_batch
from terminal_screen import terminal_screen


@pytest.fixture(scope="module")
def scene(photographs, tmp_path_factory):
    """Photographs and JPEG/blur/noise-degraded copies as PNG files, and reference-style face
    crops (for some images only: the others use the no-face rule)."""
    root = tmp_path_factory.mktemp("scene")
    images, crops = root / "images", root / "crops"
    images.mkdir(), crops.mkdir()
    arrays = {}
    for name, rgb in photographs.items():
        arrays[name] = rgb
        for degradation in ("jpeg10", "blur3", "noise25"):
            arrays[f"{name}_{degradation}"] = fixed_degradation(degradation)(rgb)
    for name, rgb in arrays.items():
        cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        box = FACE_BOXES.get(name.split("_")[0])
        if box is not None:
            crop = reference_face_crop(rgb, box)
            cv2.imwrite(str(crops / f"{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return images, crops, arrays


def _reference_results(reference_ensemble, images: Path, crops: Path) -> dict[str, tuple[dict, float]]:
    """The reference pipeline, image by image, read from the files the way the reference does."""
    out = {}
    for path in sorted(images.glob("*.png")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        crop_path = crops / path.name
        face = cv2.cvtColor(cv2.imread(str(crop_path)), cv2.COLOR_BGR2RGB) if crop_path.exists() else rgb
        probs = {
            "global": reference_ensemble.p_fake("global", stream_batch([rgb], "global")).item(),
            "face": reference_ensemble.p_fake("face", stream_batch([face], "face")).item(),
            "fusion": reference_ensemble.p_fake("fusion", stream_batch([rgb], "fusion")).item(),
        }
        out[str(path)] = (probs, reference_vote(probs["global"], probs["face"], probs["fusion"]))
    return out


def test_detect_cli_reproduces_the_reference_pipeline(tiny_engine_set, reference_ensemble, scene):
    images, crops, _ = scene
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(images), "--face-crops", str(crops),
                                       "--format", "jsonl", "--batch-size", "5", "--no-face-detect"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = _reference_results(reference_ensemble, images, crops)
    assert [line["image"] for line in lines] == sorted(expected)
    scores = set()
    for line in lines:
        probs, score = expected[line["image"]]
        assert line["error"] is None
        for stream in ("global", "face", "fusion"):
            assert abs(line["streams"][stream] - probs[stream]) <= 1e-4, (line["image"], stream)
        assert line["score"] == score, line["image"]
        scores.add(score)
        has_crop = (crops / Path(line["image"]).name).exists()
        assert (line["face"] is not None) == has_crop
    assert len(scores) >= 3, "the fixture should exercise several vote outcomes"


def test_detect_cli_face_boxes_file_reproduces_the_reference_crops(tiny_engine_set, reference_ensemble, scene,
                                                                   tmp_path):
    images, crops, _ = scene
    boxes = tmp_path / "boxes.csv"
    rows = [f"{path.name},{','.join(str(v) for v in FACE_BOXES[path.stem.split('_')[0]])}"
            for path in sorted(images.glob("*.png")) if path.stem.split("_")[0] in FACE_BOXES]
    boxes.write_text("image,x1,y1,x2,y2\n" + "\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(images), "--face-boxes", str(boxes),
                                       "--format", "jsonl", "--batch-size", "5", "--no-face-detect"])
    assert result.exit_code == 0, result.output
    expected = _reference_results(reference_ensemble, images, crops)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == sorted(expected)
    for line in lines:
        probs, score = expected[line["image"]]
        for stream in ("global", "face", "fusion"):
            assert abs(line["streams"][stream] - probs[stream]) <= 1e-4, (line["image"], stream)
        assert line["score"] == score, line["image"]
        name = Path(line["image"]).name
        if (crops / name).exists():
            assert line["face"] == {"source": "box", "box": [float(v) for v in FACE_BOXES[Path(name).stem.split("_")[0]]],
                                    "used": "crop"}
        else:
            assert line["face"] is None and any("no face box for this image" in n for n in line["notes"])


def test_detect_cli_says_host_preprocessing_has_no_effect_on_onnxruntime(tiny_engine_set, tmp_path):
    """--cuda-graph-batch is refused on onnxruntime; --host-preprocessing was accepted without a word."""
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), np.full((300, 300, 3), 128, np.uint8))
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--host-preprocessing",
                                       "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert ("WARNING: --host-preprocessing has no effect: the onnxruntime backend always preprocesses on the host"
            in result.output)
    plain = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--no-face-detect"])
    assert plain.exit_code == 0 and "--host-preprocessing" not in plain.output, plain.output
    graph = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--cuda-graph-batch", "16"])
    assert graph.exit_code == 1  # named by its flags, not the API's batch_size, before the set is opened
    assert ("Invalid value for --cuda-graph-batch: 16 is more than --batch-size 8, the most images scored at a "
            "time, so the graph would never replay; give at most 8") in graph.output
    graph = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--cuda-graph-batch", "8"])
    assert graph.exit_code == 1 and "a CUDA graph needs the tensorrt backend" in graph.output
    faces = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--no-face-detect",
                                      "--face-min-px", "20", "--no-face-cascade"])
    assert faces.exit_code == 0, faces.output
    assert ("WARNING: --face-min-px and --no-face-cascade have no effect: no face is looked for (face localisation "
            "off: images without a face crop or box use the original image)") in faces.output
    faces = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--face-min-px", "20"])
    assert faces.exit_code == 0 and "no effect" not in faces.output, faces.output


def test_detect_cli_table_shows_each_images_notes_below_its_row(tiny_engine_set, tmp_path):
    """The table dropped every note: a 16-bit image's conversion, an upscale, a damaged file's
    decoder message were in jsonl and csv only. The notes its row states already (no face input)
    and the one every JPEG gets (its face image re-encoded) stay out of it."""
    cv2.imwrite(str(tmp_path / "a16.png"), np.full((300, 300, 3), 30000, np.uint16))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((300, 300, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "c.png"), np.full((100, 300, 3), 128, np.uint8))
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--no-face-detect"])
    assert result.exit_code == 0, result.output
    header, a16, a16_note, jpeg, small, *small_notes = result.stdout.splitlines()
    assert a16.startswith(str(tmp_path / "a16.png")) and jpeg.startswith(str(tmp_path / "b.jpg"))
    assert a16_note.startswith("    note: ") and "16-bit" in a16_note
    assert small.startswith(str(tmp_path / "c.png"))
    assert small_notes and all(note.startswith("    note: ") and "upscaled" in note for note in small_notes)
    lines = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--no-face-detect", "--format",
                                      "jsonl"]).stdout.splitlines()
    assert any("re-encoded" in note for note in json.loads(lines[1])["notes"])  # jsonl keeps every note


def test_detect_cli_rows_on_a_terminal_begin_lines_of_their_own(tiny_engine_set, tmp_path, monkeypatch):
    """Rows printed to the terminal the bar is drawn on began on the bar's line, after its text."""
    from dfd.runtime import progress

    write_grey_images(tmp_path)  # the bar is drawn from 16 images
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--no-face-detect",
                                       "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    screen = terminal_screen(result.output)  # stdout and stderr as they came
    rows = [line for line in screen if ".png" in line]
    assert [row.split()[0] for row in rows] == [str(tmp_path / f"{index:02d}.png") for index in range(16)], screen
    assert screen[-2].startswith("detect: 100%|") and screen[-1] == "", screen  # the bar under the rows


def test_detect_cli_progress_in_a_log_is_whole_lines(tiny_engine_set, tmp_path):
    """In a log (stderr not a terminal) the bar was one line of carriage returns without end."""
    write_grey_images(tmp_path)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--no-face-detect",
                                       "--batch-size", "4", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("detect: ")]
    assert progress[0] == "detect: 0/16 (0%)" and progress[-1].startswith("detect: 16/16 (100%), "), result.stderr


def test_detect_cli_reports_an_undecodable_file_once(tiny_engine_set, tmp_path):
    """In its own process (OpenCV logs to fd 2, which CliRunner does not capture): the error line
    names the file, and OpenCV's own log line for it is not printed beside it."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    run = subprocess.run([sys.executable, "-m", "dfd.export.cli", "detect", str(tiny_engine_set), str(broken),
                          "--no-face-detect"], capture_output=True, text=True)
    assert run.returncode == 2 and "1 of 1 input(s) failed" in run.stderr
    assert "broken.png" in run.stdout and "IHDR" not in run.stderr


def test_detect_cli_puts_what_the_decoders_print_on_the_images_line(tiny_engine_set, photographs, tmp_path):
    """libjpeg and libpng print to fd 2 themselves, past OpenCV's log level: detect captures it as
    the image's note (a JPEG corrupt in the middle still decodes) or in its error, so stderr holds
    only detect's own lines and each complaint is on the line of the image it is about."""
    jpeg = bytearray(cv2.imencode(".jpg", cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))[1].tobytes())
    middle = len(jpeg) // 2
    jpeg[middle:middle + 40] = np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8).tobytes()
    png = bytearray(cv2.imencode(".png", photographs["coffee"])[1].tobytes())
    png[len(png) // 2:len(png) // 2 + 64] = bytes(64)
    (tmp_path / "corrupt.jpg").write_bytes(bytes(jpeg))
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    run = subprocess.run([sys.executable, "-m", "dfd.export.cli", "detect", str(tiny_engine_set),
                          str(tmp_path / "corrupt.jpg"), str(tmp_path / "corrupt.png"), "--no-face-detect",
                          "--format", "jsonl"], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    jpeg_line, png_line = map(json.loads, run.stdout.splitlines())
    assert jpeg_line["error"] is None
    assert any(note.startswith("decoder: Corrupt JPEG data") for note in jpeg_line["notes"]), jpeg_line["notes"]
    assert "(decoder: libpng error: " in png_line["error"]
    assert "Corrupt JPEG" not in run.stderr and "libpng" not in run.stderr


def test_detect_cli_face_boxes_errors(tiny_engine_set, photographs, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "chelsea"):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text('{"image": "astronaut.png", "box": [9000, 10, 9100, 110]}\n'
                     '{"image": "chelsea.png", "box": [120, 40, 300, 260]}\n'
                     '{"image": "astronuat.png", "box": [1, 2, 3, 4]}\n')
    runner = CliRunner()
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(boxes),
                                  "--format", "jsonl"])
    assert result.exit_code == 2, result.output  # one image failed, the other was scored
    lines = {Path(d["image"]).name: d for d in map(json.loads, result.stdout.splitlines())}
    assert "lies outside the" in lines["astronaut.png"]["error"] and lines["astronaut.png"]["score"] is None
    assert lines["astronaut.png"]["face"] is None and lines["astronaut.png"]["notes"] == []  # nothing was scored
    assert lines["chelsea.png"]["error"] is None and lines["chelsea.png"]["face"]["source"] == "box"
    assert "1 face box(es)" in result.stderr and "'astronuat.png'" in result.stderr

    boxes.write_text('{"image": "astronuat.png", "box": [1, 2, 3, 4]}\n{"image": "chelsae.png", "box": [1, 2, 3, 4]}\n')
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(boxes)])
    assert result.exit_code == 1 and result.stdout == ""  # every image would have gone to the detector instead
    assert f"none of the 2 face box(es) in {boxes} matches an image given (the first: 'astronuat.png')" in result.stderr

    boxes.write_text('{"image": "astronaut.png", "box": [1, 2, 3]}\n')
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(boxes)])
    assert result.exit_code == 1 and "boxes.jsonl:1: a box is four numbers" in result.stderr
    assert result.stdout == ""  # nothing scored before the file was read whole
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(boxes),
                                  "--face-crops", str(folder)])
    assert result.exit_code == 1 and "not both" in result.stderr


def test_detect_cli_face_crops_follow_sub_folders(tiny_engine_set, photographs, tmp_path):
    """With --recursive, x/a.png and y/a.png take crops/x/a.png and crops/y/a.png; a flat
    crops/a.png that both would share is refused (it gave both images one face), and a name no
    other image has still finds its flat crop, as in the reference's crops folder."""
    def put(path, rgb):
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    photos, crops, flat = tmp_path / "photos", tmp_path / "crops", tmp_path / "flat"
    put(photos / "x" / "a.png", photographs["astronaut"])
    put(photos / "y" / "a.png", photographs["chelsea"])
    put(photos / "b.png", photographs["coffee"])
    put(photos / "c.png", photographs["coffee"][::-1])
    put(crops / "x" / "a.png", photographs["astronaut"][:256, :256])
    put(crops / "y" / "a.png", photographs["chelsea"][:256, :256])
    put(crops / "b.png", photographs["coffee"][:256, :256])
    put(flat / "a.png", photographs["astronaut"][:256, :256])
    runner = CliRunner()
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(photos), "--recursive", "--face-crops",
                                  str(crops), "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = {Path(d["image"]).relative_to(photos).as_posix(): d for d in map(json.loads, result.stdout.splitlines())}
    for key in ("x/a.png", "y/a.png", "b.png"):
        assert lines[key]["face"] == {"source": "face-crop", "file": str(crops / key)}, key
    assert lines["x/a.png"]["streams"]["face"] != lines["y/a.png"]["streams"]["face"]
    assert lines["c.png"]["face"] is None
    assert f"no face crop for this image in {crops} (looked for c.png)" in lines["c.png"]["notes"]
    assert f"WARNING: 1 of 4 image(s) have no crop in {crops}" in result.stderr  # a table shows no notes
    # what happens to it: with --no-face-detect no detector looks (the warning said one did)
    assert "they use the original image (--no-face-detect): " in result.stderr
    # a flat crop is the only one left for y/a.png once x/a.png has its own: no ambiguity
    mixed = tmp_path / "mixed"
    put(mixed / "x" / "a.png", photographs["astronaut"][:256, :256])
    put(mixed / "a.png", photographs["chelsea"][:256, :256])
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(photos), "--recursive", "--face-crops",
                                  str(mixed), "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = {Path(d["image"]).relative_to(photos).as_posix(): d for d in map(json.loads, result.stdout.splitlines())}
    assert lines["x/a.png"]["face"]["file"] == str(mixed / "x" / "a.png")
    assert lines["y/a.png"]["face"]["file"] == str(mixed / "a.png")
    # an image name too long for the file system fails on its own instead of ending the run
    too_long = str(tmp_path / ("y" * 300 + ".png"))
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(photos / "b.png"), too_long, "--face-crops",
                                  str(crops), "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 2, result.output
    assert [json.loads(line)["error"] is None for line in result.stdout.splitlines()] == [True, False]
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(photos), "--recursive", "--face-crops",
                                  str(flat), "--no-face-detect"])
    assert result.exit_code == 1 and result.stdout == ""
    assert f"{flat / 'a.png'} is the only crop for 2 images named a.png" in result.stderr
    # the same name directly inside two folder arguments, or given as two files: refused as well
    for inputs in ([photos / "x", photos / "y"], [photos / "x" / "a.png", photos / "y" / "a.png"]):
        result = runner.invoke(main, ["detect", str(tiny_engine_set), *map(str, inputs), "--face-crops", str(flat),
                                      "--no-face-detect"])
        assert result.exit_code == 1 and result.stdout == "", inputs
        assert f"{flat / 'a.png'} is the only crop for 2 images named a.png" in result.stderr
    # nested folder arguments: x/a.png takes crops/x/a.png whichever folder is given first (it took
    # none when photos/x came first, which made its key a.png)
    for inputs in ([photos, photos / "x"], [photos / "x", photos]):
        result = runner.invoke(main, ["detect", str(tiny_engine_set), *map(str, inputs), "--recursive",
                                      "--face-crops", str(crops), "--no-face-detect", "--format", "jsonl"])
        assert result.exit_code == 0, result.output
        faces = {json.loads(line)["image"]: json.loads(line)["face"] for line in result.stdout.splitlines()}
        assert faces[str(photos / "x" / "a.png")]["file"] == str(crops / "x" / "a.png"), inputs
    # one image reached twice is one image, and takes its crop
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(photos / "x"), str(photos / "x" / "a.png"),
                                  "--face-crops", str(flat), "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["face"]["file"] for line in result.stdout.splitlines()] == [str(flat / "a.png")] * 2


def test_detect_cli_reports_a_sub_folder_it_cannot_list(tiny_engine_set, photographs, tmp_path, make_unlistable):
    """An unreadable sub-folder is an input that failed (exit 2), not silently skipped; an
    unreadable folder argument fails alone and the other arguments are still scored."""
    folder = tmp_path / "photos"
    for rel in ("a.png", "locked/b.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / rel), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    make_unlistable(folder / "locked")
    runner = CliRunner()
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--recursive", "--format", "jsonl",
                                  "--no-face-detect"])
    assert result.exit_code == 2, result.output
    lines = {d["image"]: d for d in map(json.loads, result.stdout.splitlines())}
    assert lines[str(folder / "a.png")]["error"] is None
    assert lines[str(folder / "locked")]["error"] == ("cannot list this folder (Permission denied); its images, "
                                                      "if any, are left out")
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder / "locked"), str(folder / "a.png"),
                                  "--format", "jsonl", "--no-face-detect"])
    assert result.exit_code == 2, result.output
    lines = {d["image"]: d for d in map(json.loads, result.stdout.splitlines())}
    assert lines[str(folder / "a.png")]["error"] is None
    assert "cannot list image folder" in lines[str(folder / "locked")]["error"]


def test_detect_cli_suggests_recursive_only_for_a_folder_with_sub_folders(tiny_engine_set, photographs, tmp_path):
    """A folder whose images are all in sub-folders fails with the sub-folders named and a hint to
    recurse; a folder with no sub-folder gets no such hint, since recursing would find nothing."""
    nested = tmp_path / "nested"
    (nested / "day1").mkdir(parents=True)
    cv2.imwrite(str(nested / "day1" / "a.png"), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "notes.txt").write_text("no image here")
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(nested), str(flat), "--format", "jsonl",
                                       "--no-face-detect"])
    assert result.exit_code == 2, result.output
    lines = {d["image"]: d["error"] for d in map(json.loads, result.stdout.splitlines())}
    assert lines[str(nested)].endswith("; it has 1 sub-folder(s) not looked into, e.g. day1 "
                                       "(use --recursive to look in them)")
    assert lines[str(flat)].endswith("; it holds 1 other file(s), e.g. notes.txt")


def test_detect_cli_names_that_are_not_utf8_or_hold_line_breaks(tiny_engine_set, photographs, tmp_path):
    """A strict UTF-8 stdout (CliRunner's, or a UTF-8 locale's) takes csv rows naming a file whose
    name is not UTF-8, written as its own bytes; that output reads back as a --face-boxes file
    matching every image, and the table keeps one row per image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    png = cv2.imencode(".png", cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))[1].tobytes()
    names = [b"caf\xe9.png", b"new\nline.png", b"plain.png"]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
            handle.write(png)
    runner = CliRunner()
    result = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout_bytes.decode("utf-8", "surrogateescape"), newline="")))
    assert sorted(row["image"] for row in rows) == sorted(str(folder / os.fsdecode(name)) for name in names)
    assert all(row["x1"] for row in rows)  # the packaged locator found the astronaut's face in each
    saved = tmp_path / "first.csv"
    saved.write_bytes(result.stdout_bytes)
    again = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(saved),
                                 "--no-face-detect", "--format", "jsonl"])
    assert again.exit_code == 0, again.output
    assert "match no image" not in again.stderr
    assert all(json.loads(line)["face"]["source"] == "box" for line in again.stdout.splitlines())
    table = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--no-face-detect"])
    assert table.exit_code == 0, table.output
    assert table.stdout.count("\n") == 1 + len(names)
    assert "caf\\udce9.png  score" in table.stdout and "new\\nline.png  score" in table.stdout
    # an error row names the file in its message too: escaped there as well (it broke the row)
    (folder / "empty\x1b[31m\n.png").write_bytes(b"")
    table = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--no-face-detect"])
    assert table.exit_code == 2 and table.stdout.count("\n") == 2 + len(names)
    assert "empty\\x1b[31m\\n.png  ERROR: image file '" in table.stdout and "\x1b" not in table.stdout
    # so are the names in warnings on stderr (a file left out by its suffix split the line, and an
    # escape sequence in it reached the terminal)
    (folder / "notes\x1b[2J\nsecond line.txt").write_text("not an image")
    table = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--no-face-detect"])
    [warning] = [line for line in table.stderr.splitlines() if "whose names do not end" in line]
    assert warning.endswith("image suffix: notes\\x1b[2J\\nsecond line.txt (give a file by name to try it anyway)")
    assert "\x1b" not in table.stderr


def test_detect_cli_keeps_the_input_order_and_fails_unreachable_paths_alone(tiny_engine_set, photographs, tmp_path):
    """A folder that yields no image was printed before every image wherever it was given; a path
    too long to look at (ENAMETOOLONG from is_dir) ended the run with nothing scored."""
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    (tmp_path / "empty").mkdir()
    too_long = str(tmp_path / ("y" * 300 + ".png"))
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(path), str(tmp_path / "empty"), too_long,
                                       "", f"{path}/", str(path), "--no-face-detect", "--format", "jsonl"])
    assert result.exit_code == 2, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(path), str(tmp_path / "empty"), too_long, "", f"{path}/",
                                                 str(path)]
    assert [line["error"] is None for line in lines] == [True, False, False, False, False, True]
    assert "File name too long" in lines[2]["error"]
    # "" (an unset variable) scored every image of the current folder; "a.png/" said "no such folder"
    assert lines[3]["error"] == "an empty image argument (an unset shell variable?); give '.' for the current folder"
    assert lines[4]["error"] == "a file, not a folder (drop the trailing /)"


def test_detect_cli_refuses_an_output_it_cannot_write(tiny_engine_set, photographs, tmp_path):
    """With stdout closed (>&-) every result was lost and the run exited 0 (csv: a traceback); a
    write error named no destination."""
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    command = [sys.executable, "-m", "dfd.export.cli", "detect", str(tiny_engine_set), str(path), "--no-face-detect"]
    for fmt in ("table", "jsonl", "csv"):
        closed = subprocess.run([*command, "--format", fmt], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: os.close(1))
        assert closed.returncode == 1 and "error: stdout is closed, so the results cannot be written" in closed.stderr
        assert "Traceback" not in closed.stderr
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            run = subprocess.run([*command, "--format", "jsonl"], stdout=full, stderr=subprocess.PIPE, text=True)
        assert run.returncode == 1, run.stderr
        assert run.stderr.splitlines()[-1] == "error: cannot write the results to stdout: No space left on device"
    # a file that fills up (here a file size limit) is cut back to its whole rows: a half-written CSV
    # row with its score complete read as a scored image to whatever parsed the file later
    results = tmp_path / "results.csv"

    def limit_the_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG for the write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700))

    with open(results, "w") as out:
        run = subprocess.run([*command[:-2], *[str(path)] * 6, "--no-face-detect", "--format", "csv"], stdout=out,
                             stderr=subprocess.PIPE, text=True, preexec_fn=limit_the_file_size)
    assert run.returncode == 1, run.stderr
    rows = list(csv.DictReader(io.StringIO(results.read_text())))
    assert run.stderr.splitlines()[-1] == (f"error: cannot write the results to stdout: File too large; the file "
                                           f"keeps the {len(rows)} whole row(s) written before")
    assert 0 < len(rows) < 6 and results.read_text().endswith("\n")
    assert all(row["image"] == str(path) and row["error"] == "" and float(row["score"]) >= 0 for row in rows)
    # appending (>>) to a file that is full: the offset reads 0 until the first write, and the cut
    # back to it erased the file's earlier results
    earlier = results.read_bytes()

    def no_room_left():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(earlier), len(earlier)))

    with open(results, "a") as out:
        run = subprocess.run([*command, "--format", "csv"], stdout=out, stderr=subprocess.PIPE, text=True,
                             preexec_fn=no_room_left)
    assert run.returncode == 1 and "File too large; the file keeps the 0 whole row(s)" in run.stderr, run.stderr
    assert results.read_bytes() == earlier


def test_prepare_workers_change_nothing_in_the_rows(tiny_engine_set, photographs, tmp_path):
    """One call for the whole run, so the next batch is prepared while this one is scored; the
    rows are those of one image at a time, a bad image's included."""
    for name in ("astronaut", "coffee", "chelsea"):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = {}
    for workers in ("1", "3"):
        result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), str(tmp_path / "nothing.png"),
                                           "--batch-size", "2", "--format", "jsonl", "--prepare-workers", workers])
        assert result.exit_code == 2, result.output
        rows[workers] = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows["3"] == rows["1"] and len(rows["1"]) == 5
    assert [row["error"] is None for row in rows["1"]] == [True, False, True, True, False]
    refused = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--prepare-workers", "0"])
    assert refused.exit_code == 1 and "--prepare-workers" in refused.stderr


@pytest.mark.parametrize("workers", [1, 3])
def test_prepare_workers_reach_the_detector(tiny_engine_set, tmp_path, monkeypatch, workers):
    """--prepare-workers 1 prepares every image in the command's own thread; more, on the
    preparation threads."""
    from dfd.runtime.detector import Detector

    write_grey_images(tmp_path, count=6)
    prepare = Detector._prepare
    threads: list[str] = []

    def recorded(self, *args):
        threads.append(threading.current_thread().name)
        return prepare(self, *args)

    monkeypatch.setattr(Detector, "_prepare", recorded)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--format", "jsonl",
                                       "--batch-size", "2", "--prepare-workers", str(workers)])
    assert result.exit_code == 0, result.output
    assert len(threads) == 6
    mine = threading.current_thread().name
    assert all(name == mine for name in threads) if workers == 1 else mine not in threads


def test_an_interrupted_detect_waits_for_the_images_being_prepared(tiny_engine_set, tmp_path, monkeypatch):
    """An interrupt while a row is written ends the run only once the preparation threads are
    done with the images they hold (the run's exception, kept by the caller, must not keep them
    running)."""
    from dfd.runtime.detector import Detection, Detector

    write_grey_images(tmp_path, count=6)
    held = HeldPreparations(Detector._prepare,
                            lambda self, source, label, *rest: Path(label).name in ("00.png", "01.png"))

    def interrupted(self):
        assert held.started.wait(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "_prepare", lambda self, *args: held(self, *args))
    monkeypatch.setattr(Detection, "to_dict", interrupted)
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(tmp_path), "--format", "jsonl",
                                       "--batch-size", "2", "--prepare-workers", "2"])
    assert result.exit_code == 130, result.output
    assert held.release.is_set() and held.running == 0
