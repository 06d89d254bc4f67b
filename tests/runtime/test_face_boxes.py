"""Reading face-box files (`detect --face-boxes`) and matching their entries to images."""

from __future__ import annotations

import csv
import io
import json
import os
import threading

import pytest

from dfd.runtime.face_boxes import FaceBoxFileError, load_face_boxes
from dfd.runtime.line_files import MAX_LINE_CHARS


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_and_jsonl_give_the_same_boxes(tmp_path):
    csv_file = _write(tmp_path, "boxes.csv", "\ufeffimage,score,x1,y1,x2,y2\n"
                                            "a.jpg,0.99,10,20,110.5,140\n"
                                            "\"dir/with, comma.png\",0.9,1,2,3,4\n")
    jsonl_file = _write(tmp_path, "boxes.jsonl", '{"image": "a.jpg", "box": [10, 20, 110.5, 140]}\n\n'
                                                 '{"image": "dir/with, comma.png", "box": [1, 2, 3, 4], "score": 1}\n')
    expected = {"a.jpg": (10.0, 20.0, 110.5, 140.0), "dir/with, comma.png": (1.0, 2.0, 3.0, 4.0)}
    assert load_face_boxes(csv_file).boxes == expected
    assert load_face_boxes(jsonl_file).boxes == expected


def test_images_without_a_box_and_detect_output_lines(tmp_path):
    """Empty box cells, a null box, and detect's own jsonl lines (box in "face", or no face box)."""
    csv_file = _write(tmp_path, "boxes.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3,4\nb.jpg,,, ,\n")
    jsonl_file = _write(tmp_path, "boxes.jsonl", "\n".join([
        '{"image": "a.jpg", "box": [1, 2, 3, 4]}',
        '{"image": "b.jpg", "box": null}',
        '{"image": "c.jpg", "score": 0.4, "face": {"source": "detector", "box": [5.25, 6, 7, 8], "score": 0.9}}',
        '{"image": "d.jpg", "score": 0.4, "face": null, "notes": ["face stream: no face found"]}',
        '{"image": "e.jpg", "score": 0.4, "face": {"source": "face-crop", "file": "crops/e.jpg"}}',
        '{"image": "f.jpg", "score": null, "face": null, "error": "cannot decode"}']) + "\n")
    assert load_face_boxes(csv_file).boxes == {"a.jpg": (1.0, 2.0, 3.0, 4.0)}
    assert load_face_boxes(jsonl_file).boxes == {"a.jpg": (1.0, 2.0, 3.0, 4.0), "c.jpg": (5.25, 6.0, 7.0, 8.0)}


@pytest.mark.parametrize("name, text, words", [
    ("boxes.txt", "a.jpg 1 2 3 4\n", ["a .csv file", ".jsonl", "not .txt"]),
    ("boxes.csv", "name,x1,y1,x2,y2\na.jpg,1,2,3,4\n", ["lacks image"]),
    # empty: a failed redirect, not "no boxes" (every image would go to the detector unnoticed)
    ("boxes.csv", "", ["boxes.csv is empty", "names no image"]),
    ("boxes.jsonl", "\n \n", ["boxes.jsonl is empty"]),
    ("boxes.csv", "\ufeff\n", ["boxes.csv is empty"]),
    # a binary file named .csv: its bytes are escaped and cut short, not put on the terminal
    ("boxes.csv", "\x7fELF\x02\x01\x01\x00" * 40 + "\n",
     ["boxes.csv:1: a NUL byte", "found '\\x7fELF\\x02\\x01\\x01\\x00", "...'"]),
    # Python 3.11's csv module read a NUL as a character of the name, 3.10's as a malformed row
    ("boxes.csv", "image,x1,y1,x2,y2\na\0.jpg,1,2,3,4\n",
     ["boxes.csv:2: a NUL byte, which no image name holds", "(found 'a\\x00.jpg,1,2,3,4')"]),
    ("boxes.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3,4\nb.jpg,1,two,3,4\n", ["boxes.csv:3", "four numbers"]),
    ("boxes.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3\n", ["boxes.csv:2", "four numbers"]),
    ("boxes.csv", "image,x1,y1,x2,y2\na.jpg,1,2,,4\n", ["boxes.csv:2", "four numbers"]),
    ("boxes.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3,4\na.jpg,5,6,7,8\n", ["boxes.csv:3", "second, different box", "'a.jpg'"]),
    ("boxes.csv", "image,x1,y1,x2,x1,y2\na.jpg,1,2,3,4,5\n", ["header names x1 more than once"]),
    # a score cell the header does not name would shift the box: (0.98, 10, 20, 300)
    ("boxes.csv", "image,x1,y1,x2,y2\na.jpg,0.98,10,20,300,400\n", ["boxes.csv:2", "6 cells", "header 5 columns"]),
    ("boxes.csv", "image,x1,y1,x2,y2\n ,1,2,3,4\n", ["boxes.csv:2", "image name is empty"]),
    # the image column after the box columns and a row that stops before it: no name, not a traceback
    ("boxes.csv", "x1,y1,x2,y2,image\n1,2,3,4\n", ["boxes.csv:2", "image name is empty"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, 4]}\n{"image": "b.jpg", "box": [1, 2, 3, 4]\n',
     ["boxes.jsonl:2", "not JSON"]),
    ("boxes.jsonl", '["a.jpg", [1, 2, 3, 4]]\n', ["boxes.jsonl:1", "\"image\"", "\"box\""]),
    ("boxes.jsonl", '{"image": 5, "box": [1, 2, 3, 4]}\n', ["boxes.jsonl:1", "\"image\" (a string)"]),
    ("boxes.jsonl", '{"image": null, "box": [1, 2, 3, 4]}\n', ["boxes.jsonl:1", "\"image\" (a string)"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": "1 2 3 4"}\n', ["boxes.jsonl:1", "must be a list"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, true]}\n', ["boxes.jsonl:1", "four numbers"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, null, 4]}\n', ["boxes.jsonl:1", "four numbers"]),
    # a list or an object where a number belongs: float() raises TypeError, not ValueError
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, [3], 4]}\n', ["boxes.jsonl:1", "four numbers"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, {"y2": 4}]}\n', ["boxes.jsonl:1", "four numbers"]),
    ("boxes.jsonl", '{"image": "a.jpg", "face": {"box": [1, 2, 3]}}\n', ["boxes.jsonl:1", "four numbers"]),
    ("boxes.jsonl", '{"image": "a.jpg", "score": 0.5}\n', ["boxes.jsonl:1", "detect's jsonl output"]),
    # a "face" that is neither detect's object nor null read as "no box" for that image
    ("boxes.jsonl", '{"image": "a.jpg", "face": "1 2 3 4"}\n', ["boxes.jsonl:1", "\"face\" must be an object",
                                                                "not '1 2 3 4'"]),
    ("boxes.jsonl", '{"image": "a.jpg", "face": [1, 2, 3, 4]}\n', ["boxes.jsonl:1", "not [1, 2, 3, 4]"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, 4]}\n' + "[" * 100_000 + "\n",
     ["boxes.jsonl:2", "nested too deeply"]),
    ("boxes.jsonl", '{"image": "a.jpg", "box": [0, 0, 1%s, 4]}\n' % ("0" * 400), ["boxes.jsonl:1", "four numbers"]),
    # a stray quote would otherwise swallow every following row into one cell, silently
    ("boxes.csv", 'image,x1,y1,x2,y2\na.jpg,1,2,3,4\n"b.jpg,1,2,3,4\nc.jpg,1,2,3,4\n',
     ["boxes.csv:3", "malformed CSV row", "unexpected end of data"]),
    ("boxes.csv", 'image,x1,y1,x2,y2\n"a"b.jpg,1,2,3,4\n', ["boxes.csv:2", "malformed CSV row"]),
])
def test_malformed_files_name_the_line_and_the_problem(tmp_path, name, text, words):
    with pytest.raises(FaceBoxFileError) as raised:
        load_face_boxes(_write(tmp_path, name, text))
    for word in words:
        assert word in str(raised.value)


def test_blank_lines_before_the_first_entry_do_not_make_the_file_empty(tmp_path):
    """Only a file without any content is "empty" (a failed redirect): blank lines before the
    first entry, as a concatenation or an editor leaves them, are skipped like those between
    entries, and the line numbers of later problems still count them."""
    path = _write(tmp_path, "boxes.jsonl", '\n \n{"image": "a.jpg", "box": [1, 2, 3, 4]}\n')
    assert load_face_boxes(path).boxes == {"a.jpg": (1.0, 2.0, 3.0, 4.0)}
    path = _write(tmp_path, "bad.jsonl", '\n\n{"image": "a.jpg", "box": [1, 2, 3]}\n')
    with pytest.raises(FaceBoxFileError, match="bad.jsonl:3: a box is four numbers"):
        load_face_boxes(path)


def test_unreadable_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "boxes.csv"
    folder.mkdir()
    with pytest.raises(FaceBoxFileError, match="cannot read face boxes from .*boxes.csv: .*Is a directory"):
        load_face_boxes(folder)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"image,x1\n\xff\xfe\x00")
    with pytest.raises(FaceBoxFileError, match="the CSV header lacks y1, x2, y2"):
        load_face_boxes(binary)


def test_a_device_or_a_file_without_line_breaks_is_refused_before_it_fills_the_memory(tmp_path):
    """The file was read whole: /dev/zero behind a link named boxes.jsonl took all the memory."""
    device = tmp_path / "zero.jsonl"
    device.symlink_to("/dev/zero")
    with pytest.raises(FaceBoxFileError, match="zero.jsonl is a device, not a file of face boxes"):
        load_face_boxes(device)
    header = "image,x1,y1,x2,y2\n"
    for name, tail in (("boxes.csv", header), ("boxes.jsonl", '{"image": "a.jpg", "box": [1, 2, 3, 4]}\n')):
        endless = tmp_path / name
        endless.write_bytes((tail + "a" * MAX_LINE_CHARS + "\n").encode())
        with pytest.raises(FaceBoxFileError, match=f"{name}:2: a line of over 1,048,576 characters"):
            load_face_boxes(endless)
        endless.write_bytes((tail + "\n" + "a" * (MAX_LINE_CHARS - 1) + "\n").encode())  # the longest line read
        with pytest.raises(FaceBoxFileError, match=f"{name}:3: (malformed CSV row|not JSON)"):
            load_face_boxes(endless)


def test_a_named_pipe_is_read_as_it_is_written(tmp_path):
    """Read a line at a time, a pipe named boxes.csv works as a file does."""
    pipe = tmp_path / "boxes.csv"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_text, args=("image,x1,y1,x2,y2\na.jpg,1,2,3,4\n",))
    writer.start()
    try:
        assert load_face_boxes(pipe).boxes == {"a.jpg": (1.0, 2.0, 3.0, 4.0)}
    finally:
        writer.join(timeout=10)


NAMES = ["new\nline.jpg", "carriage\rreturn.jpg", "sep\u2028arator.jpg", "form\x0cfeed.jpg",
         os.fsdecode(b"caf\xe9.jpg"), "plain.jpg"]  # the last but one: not UTF-8 (surrogate escapes)


def test_names_with_line_breaks_or_undecodable_bytes_read_back(tmp_path):
    """detect's csv (quoted cells, names written as their own bytes) and jsonl (escapes, or raw
    characters as another tool may write them) read back to the same names: a row is not split at
    a quoted line break, U+2028 or a form feed, nor refused for a byte that is not UTF-8."""
    expected = {name: (1.0, 2.0, 3.0 + i, 4.0) for i, name in enumerate(NAMES)}
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["image", "x1", "y1", "x2", "y2"])
    writer.writerows([name, *box] for name, box in expected.items())
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_bytes(text.getvalue().encode("utf-8", "surrogateescape"))
    assert load_face_boxes(csv_file).boxes == expected
    for ensure_ascii in (True, False):
        jsonl_file = tmp_path / "boxes.jsonl"
        lines = [json.dumps({"image": name, "box": list(box)}, ensure_ascii=ensure_ascii) for name, box in expected.items()]
        jsonl_file.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
        assert load_face_boxes(jsonl_file).boxes == expected


@pytest.mark.parametrize("name", ["boxes.csv", "BOXES.CSV"])
def test_a_csv_with_carriage_return_line_ends_reads_as_any_other(tmp_path, name):
    """Classic Mac Excel ends lines with a lone \r; the csv module reads those whatever the
    suffix's case, and an upper-case .CSV is a CSV too."""
    path = tmp_path / name
    path.write_bytes(b"image,x1,y1,x2,y2\ra.jpg,1,2,3,4\rb.jpg,5,6,7,8\r")
    assert load_face_boxes(path).boxes == {"a.jpg": (1.0, 2.0, 3.0, 4.0), "b.jpg": (5.0, 6.0, 7.0, 8.0)}


def test_entries_match_by_path_or_by_unique_file_name(tmp_path):
    boxes = load_face_boxes(_write(tmp_path, "b.csv", "image,x1,y1,x2,y2\n"
                                                    "photos/./a.jpg,1,1,9,9\n"
                                                    "b.png,2,2,8,8\n"
                                                    "missing.jpg,3,3,7,7\n"
                                                    "other/c.jpg,4,4,6,6\n"))
    images = ["photos/a.jpg", "photos/sub/b.png", "c.jpg", "photos/d.jpg"]
    assigned, unused = boxes.assign(images)
    assert assigned == {"photos/a.jpg": (1.0, 1.0, 9.0, 9.0), "photos/sub/b.png": (2.0, 2.0, 8.0, 8.0)}
    # a key with a folder must match the path: other/c.jpg is not c.jpg
    assert unused == ["missing.jpg", "other/c.jpg"]


def test_a_file_name_shared_by_several_images_must_be_a_path(tmp_path):
    boxes = load_face_boxes(_write(tmp_path, "b.jsonl", '{"image": "a.jpg", "box": [1, 1, 9, 9]}\n'))
    with pytest.raises(FaceBoxFileError, match="matches 2 images .*x/a.jpg, y/a.jpg"):
        boxes.assign(["x/a.jpg", "y/a.jpg"])
    # the same image listed twice is one image, not an ambiguity
    assert boxes.assign(["x/a.jpg", "x/a.jpg"])[0] == {"x/a.jpg": (1.0, 1.0, 9.0, 9.0)}


def test_two_entries_giving_one_image_different_boxes_are_refused(tmp_path):
    boxes = load_face_boxes(_write(tmp_path, "b.csv", "image,x1,y1,x2,y2\nx/a.jpg,1,1,9,9\na.jpg,2,2,8,8\n"))
    with pytest.raises(FaceBoxFileError, match="x/a.jpg gets two different boxes"):
        boxes.assign(["x/a.jpg"])


def test_an_image_listed_twice_in_detect_output_reads_back(tmp_path):
    """detect prints one line per input, so an image given twice has two lines with one box."""
    line = '{"image": "p/a.png", "face": {"source": "detector", "box": [1, 2, 3, 4]}}\n'
    assert load_face_boxes(_write(tmp_path, "run.jsonl", line * 2)).boxes == {"p/a.png": (1.0, 2.0, 3.0, 4.0)}


def test_names_with_leading_or_trailing_spaces_read_back_exactly(tmp_path):
    """detect writes such names as they are (csv leaves them unquoted); stripping them made the
    entries match no image."""
    names = [" p/a.png", "b.png ", "c d.png"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["image", "x1", "y1", "x2", "y2"])
    writer.writerows([name, 1, 2, 3, 4] for name in names)
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text(text.getvalue(), newline="")
    jsonl_file = _write(tmp_path, "boxes.jsonl", "".join(json.dumps({"image": n, "box": [1, 2, 3, 4]}) + "\n"
                                                        for n in names))
    for path in (csv_file, jsonl_file):
        boxes = load_face_boxes(path)
        assert boxes.boxes == {name: (1.0, 2.0, 3.0, 4.0) for name in names}
        assert boxes.assign(names) == ({name: (1.0, 2.0, 3.0, 4.0) for name in names}, [])


def test_entries_match_the_same_file_spelled_otherwise(tmp_path, monkeypatch):
    """detect's output lists paths as given where it ran: a second run from another folder, or
    with the folder spelled otherwise, matched no entry and sent every image to the detector."""
    photos = tmp_path / "run" / "photos"
    photos.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(b"not decoded here")
    boxes = load_face_boxes(_write(tmp_path / "run", "b.csv", "image,x1,y1,x2,y2\n"
                                                              "photos/a.jpg,1,1,9,9\n"
                                                              f"{photos / 'b.jpg'},2,2,8,8\n"))
    monkeypatch.chdir(tmp_path)  # not where the boxes file was written
    assigned, unused = boxes.assign(["run/photos/a.jpg", "run/photos/b.jpg"])
    assert assigned == {"run/photos/a.jpg": (1.0, 1.0, 9.0, 9.0), "run/photos/b.jpg": (2.0, 2.0, 8.0, 8.0)}
    assert unused == []
    # one file given two ways is one image for a bare name too, not an ambiguity
    bare = load_face_boxes(_write(tmp_path, "bare.csv", "image,x1,y1,x2,y2\na.jpg,1,1,9,9\n"))
    assert bare.assign(["run/photos/a.jpg", str(photos / "a.jpg")])[0] == {
        "run/photos/a.jpg": (1.0, 1.0, 9.0, 9.0), str(photos / "a.jpg"): (1.0, 1.0, 9.0, 9.0)}


def test_a_bare_name_is_not_looked_for_beside_the_boxes_file(tmp_path, monkeypatch):
    """Only a key that names a folder is also resolved from the boxes file's folder. A bare name
    matches by file name, so two different images of that name stay an ambiguity the user must
    resolve, even when one of them sits beside the boxes file."""
    for folder in ("run", "other"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(b"not decoded here")
    boxes = load_face_boxes(_write(tmp_path / "run", "b.csv", "image,x1,y1,x2,y2\na.jpg,1,1,9,9\n"))
    monkeypatch.chdir(tmp_path)  # not the boxes file's folder
    with pytest.raises(FaceBoxFileError, match="matches 2 images .*other/a.jpg, run/a.jpg"):
        boxes.assign(["run/a.jpg", "other/a.jpg"])


def test_a_name_no_path_can_hold_matches_no_image(tmp_path):
    """A JSONL name can hold a NUL (written \\u0000), which no path holds: os.path.realpath raises
    ValueError on it. The entry matches no image and is reported unused, not a traceback."""
    boxes = load_face_boxes(_write(tmp_path, "b.jsonl", '{"image": "x/a\\u0000.jpg", "box": [1, 1, 9, 9]}\n'
                                                        '{"image": "b\\u0000.jpg", "box": [1, 1, 9, 9]}\n'))
    assert boxes.assign(["x/a.jpg", "b.jpg"]) == ({}, ["x/a\0.jpg", "b\0.jpg"])


def test_a_parent_step_after_a_link_is_resolved_not_spelled_away(tmp_path, monkeypatch):
    """``link/../a.jpg`` normalises to ``a.jpg`` by its spelling, but where ``link`` leads into
    another folder it names that folder's parent's a.jpg: the entry went to the wrong image."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "a.jpg").write_bytes(b"here")
    (tmp_path / "d" / "a.jpg").write_bytes(b"there")
    (tmp_path / "link").symlink_to(tmp_path / "d" / "sub")
    monkeypatch.chdir(tmp_path)
    boxes = load_face_boxes(_write(tmp_path, "b.csv", "image,x1,y1,x2,y2\nlink/../a.jpg,1,1,9,9\n"))
    assert boxes.assign(["a.jpg", "d/a.jpg"]) == ({"d/a.jpg": (1.0, 1.0, 9.0, 9.0)}, [])
    # an image spelled with the step is resolved too, and a leading ".." or "." is still spelling only
    assert boxes.assign(["link/../a.jpg"]) == ({"link/../a.jpg": (1.0, 1.0, 9.0, 9.0)}, [])
    up = load_face_boxes(_write(tmp_path, "up.csv", "image,x1,y1,x2,y2\n../x/./a.jpg,1,1,9,9\n"))
    assert up.assign(["../x/a.jpg"]) == ({"../x/a.jpg": (1.0, 1.0, 9.0, 9.0)}, [])
