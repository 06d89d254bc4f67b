"""What libjpeg and libpng print to descriptor 2 while decoding: captured as the image's note or
error where the program asked for it (the CLI), left on stderr otherwise (the Python API)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

_SCRIPT = """\
import json, sys
from dfd.runtime.decoder_messages import capturing_decoder_messages
from dfd.runtime.images import ImageError, decode_image, silence_opencv_log
silence_opencv_log()
results = []
for path in sys.argv[2:]:
    try:
        if sys.argv[1] == "captured":
            with capturing_decoder_messages():
                results.append(list(decode_image(path).notes))
        else:
            results.append(list(decode_image(path).notes))
    except ImageError as error:
        results.append(str(error))
print("python's own line", file=sys.stderr)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A JPEG whose middle is overwritten (it decodes, libjpeg warns), a PNG whose middle is
    (libpng refuses it), and a sound JPEG."""
    folder = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (9, 9), 3)
    jpeg = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    middle = len(jpeg) // 2
    jpeg[middle:middle + 40] = np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8).tobytes()
    png = bytearray(cv2.imencode(".png", image)[1].tobytes())
    png[len(png) // 2:len(png) // 2 + 64] = bytes(64)
    sound = cv2.imencode(".jpg", image)[1].tobytes()
    tables = sound.index(b"\xff\xc4")
    stray = sound[:tables] + b"\x00\x01\x02" + sound[tables:]  # between header markers: sized by the header walk
    files = {"corrupt.jpg": bytes(jpeg), "corrupt.png": bytes(png), "sound.jpg": sound, "stray.jpg": stray}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def _decode_in_a_process(mode: str, paths) -> tuple[list, str]:
    run = subprocess.run([sys.executable, "-c", _SCRIPT, mode, *map(str, paths)], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout), run.stderr


def test_captured_decoder_lines_become_the_images_note_or_error(damaged):
    results, stderr = _decode_in_a_process("captured", damaged)
    jpeg_notes, png_error, sound_notes, stray_notes = results
    assert jpeg_notes == ["decoder: Corrupt JPEG data: 51 extraneous bytes before marker 0xd9"]
    assert "PNG data is corrupt; OpenCV could not decode it (decoder: libpng error: " in png_error
    assert sound_notes == []
    # libjpeg's line replaces the header walk's note on the same bytes rather than repeating it
    assert stray_notes == ["decoder: Corrupt JPEG data: 3 extraneous bytes before marker 0xc4"]
    assert stderr == "python's own line\n"  # nothing else on the process's stderr; its own lines still reach it


def test_without_capture_the_lines_stay_on_stderr(damaged):
    results, stderr = _decode_in_a_process("default", damaged)
    assert results[0] == [] and "decoder:" not in results[1]
    assert results[3] == ["corrupt JPEG data: 3 extraneous byte(s) between markers, skipped as cv2.imread skips them"]
    assert "Corrupt JPEG data: 51 extraneous bytes before marker 0xd9" in stderr and "libpng error: " in stderr


def test_a_cli_command_captures_for_its_own_length_only(damaged, tmp_path):
    """The CLI switches capture on for the command it runs; run in-process (as CliRunner runs it),
    it used to leave capture on for everything the process decoded afterwards."""
    from click.testing import CliRunner

    from dfd.export.cli import main
    from dfd.runtime.images import decode_image

    corrupt_jpeg = damaged[0]
    result = CliRunner().invoke(main, ["degrade", str(corrupt_jpeg), "--out", str(tmp_path / "out"),
                                       "--fixed", "blur3"])
    assert result.exit_code == 0, result.output
    assert "decoder: Corrupt JPEG data: 51 extraneous bytes before marker 0xd9" in result.stdout
    assert decode_image(corrupt_jpeg).notes == ()
