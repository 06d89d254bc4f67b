"""The Detector (Python API) end to end: reference checkpoints -> build -> detect, against the
reference pipeline (reference network + the reference's OpenCV preprocessing, from REFERENCE.md).
The detect verb's own tests are in tests/export/test_detect_cli.py."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FACE_BOXES, write_rebuilt_manifest
from click.testing import CliRunner

from dfd.export.cli import main
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError
from dfd.runtime.face_detection import FaceResult
from dfd.runtime.manifest import EngineSetError
from reference_preprocessing import reference_face_crop, reference_vote, stream_batch


def test_a_set_without_the_face_stream_locates_crops_and_re_encodes_no_face(tiny_engine_set, tmp_path):
    """Such a set (build --streams global,fusion) still ran the packaged face locator, with its
    enhancement cascade, on every image, cropped given boxes, re-encoded JPEG faces, and reported
    a face input no stream used."""
    root = tmp_path / "set"
    root.mkdir()
    manifest = json.loads((tiny_engine_set / "manifest.json").read_text())
    del manifest["streams"]["face"]
    assert manifest["face_detector"] is not None  # packaged, as a build without --no-face-detector does
    for entry in [*manifest["face_detector"]["files"],
                  *(f for stream in manifest["streams"].values() for f in stream["files"])]:
        shutil.copyfile(tiny_engine_set / entry["path"], root / entry["path"])
    write_rebuilt_manifest(root, manifest)
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.full((300, 300, 3), 128, np.uint8))
    with Detector.open(root) as detector:
        assert detector.face_locator is None
        assert detector.face_localisation == "not needed: the engine set has no face stream"
        [scored] = detector.detect([str(image)], face_boxes=[(10, 10, 290, 290)])
    partial_vote = "vote over the streams this engine set has (global, fusion), not the reference's three"
    assert scored.ok and scored.face is None and scored.notes == [partial_vote]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,x1,y1,x2,y2\n{image},10,10,290,290\n")
    result = CliRunner().invoke(main, ["detect", str(root), str(image), "--face-boxes", str(boxes),
                                       "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "WARNING: --face-boxes has no effect: this engine set has no face stream" in result.stderr
    line = json.loads(result.stdout)
    assert line["face"] is None and line["notes"] == [partial_vote] and set(line["streams"]) == {"global", "fusion"}


def test_a_closed_detector_refuses_to_score(tiny_engine_set, photographs):
    """detect after close is a clear error (on a GPU it would reach freed buffers); close twice is harmless."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    assert detector.detect([photographs["coffee"]])[0].ok
    detector.close()
    detector.close()
    with pytest.raises(DfdError, match="this detector is closed; open the engine set again"):
        detector.detect([photographs["coffee"]])


class _ClosedOnTheWayIn:
    """A detector's condition variable at which a close() from another thread lands, whole, after
    a call's first look at ``closed`` and before the call takes the lock."""

    def __init__(self, detector: Detector) -> None:
        self._users, self._detector, self._armed = detector._users, detector, True

    def __enter__(self) -> bool:
        if self._armed:
            self._armed = False
            closer = threading.Thread(target=self._detector.close)
            closer.start()
            closer.join(60)
            assert not closer.is_alive()
        return self._users.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._users.__exit__(*exc_info)

    def wait(self, timeout: float | None = None) -> bool:
        return self._users.wait(timeout)

    def notify_all(self) -> None:
        self._users.notify_all()


def test_a_close_between_the_first_look_and_the_lock_is_refused(tiny_engine_set, photographs):
    """A call looks at ``closed`` before the lock (a forked child must not take a lock) and again
    under it: a close() that lands between the two has already released the sessions, so the call
    is refused there rather than run on what was freed, and it leaves no count of a running call."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    detector._users = _ClosedOnTheWayIn(detector)
    with pytest.raises(DfdError, match="this detector is closed; open the engine set again"):
        detector.prepare(photographs["coffee"], "coffee")
    assert detector.closed and detector.backend.sessions == {} and not detector._running


def test_a_ctrl_c_while_the_workers_stop_still_releases_the_sessions(tiny_engine_set, photographs, monkeypatch):
    """close waits for the worker threads first; a Ctrl-C there is raised once the backend's
    sessions (gigabytes at paper size) are released too, not instead of releasing them."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    assert detector.detect([photographs["coffee"]])[0].ok
    backend, stop = detector.backend, detector._pool.shutdown

    def interrupted(wait: bool = True) -> None:
        stop(wait=wait)
        raise KeyboardInterrupt

    monkeypatch.setattr(detector._pool, "shutdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        detector.close()
    assert backend.sessions == {} and detector.closed


FORK_CHILD = """
import os, sys
import numpy as np
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError
detector = Detector.open(sys.argv[1], face_detection=False)
image = np.full((300, 300, 3), 120, np.uint8)
parent_score = detector.detect([image])[0].score
pid = os.fork()
if pid == 0:
    try:
        detector.detect([image])
        print("child scored", flush=True)
    except DfdError as error:
        print("child refused:", error, flush=True)
    detector.close()
    print("child closed it:", detector.closed, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent scores after the fork:", detector.detect([image])[0].score == parent_score)
detector.close()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_fork_child_is_refused_and_its_close_does_not_hang(tiny_engine_set):
    """A Detector opened before os.fork() seemed to work in the child, whose close() then hung:
    freeing ONNX Runtime's sessions waited for threads that stayed in the parent. The child is
    now refused and says why, its close() returns, and the parent is unharmed."""
    done = subprocess.run([sys.executable, "-c", FORK_CHILD, str(tiny_engine_set)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("child refused: this detector was opened in process ") and (
        "is a fork() of it" in lines[0] and "open the engine set in each worker after forking" in lines[0])
    assert lines[1:] == ["child closed it: True", "parent scores after the fork: True"]


def test_a_close_from_another_thread_waits_for_the_running_detect(tiny_engine_set, photographs, monkeypatch):
    """close() freed what a detect running in another thread was using (on TensorRT: the stream
    pool, the GPU buffers) and that detect then failed with RuntimeError or KeyError; it now
    finishes with every image scored, and the release comes after it."""
    from dfd.runtime.backends import OnnxRuntimeBackend

    events, running, proceed = [], threading.Event(), threading.Event()
    real_run, real_close = OnnxRuntimeBackend.run, OnnxRuntimeBackend.close

    def slow_run(self, stream, pixels):
        running.set()
        assert proceed.wait(60)
        events.append(f"run {stream}")
        return real_run(self, stream, pixels)

    monkeypatch.setattr(OnnxRuntimeBackend, "run", slow_run)
    monkeypatch.setattr(OnnxRuntimeBackend, "close", lambda self: events.append("backend closed") or real_close(self))
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    results = []
    scoring = threading.Thread(target=lambda: results.extend(detector.detect([photographs["coffee"]] * 2)))
    scoring.start()
    assert running.wait(60)
    # two closers (a signal handler's and a with block's): each returns once the release is done
    closers = [threading.Thread(target=lambda: detector.close() or events.append("closed")) for _ in range(2)]
    for closing in closers:
        closing.start()
    for _ in range(600):  # a loaded machine may start the closers late: wait for one to mark it closed
        if detector.closed:
            break
        closers[1].join(0.1)
    assert all(c.is_alive() for c in closers) and detector.closed  # waiting; new calls are refused already
    with pytest.raises(DfdError, match="this detector is closed"):
        detector.prepare(photographs["coffee"], "late")
    proceed.set()
    scoring.join(60)
    for closing in closers:
        closing.join(60)
    assert [r.ok for r in results] == [True, True] and detector.backend.sessions == {}
    assert events == ["run global", "run face", "run fusion", "backend closed", "closed", "closed"]


def test_a_close_inside_detect_releases_when_that_call_ends(tiny_engine_set, photographs):
    """close() from an on_progress callback would wait for its own thread; it leaves the release
    to the running call, whose remaining batches are still scored."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=1)
    sessions = []
    def close_midway(done):
        sessions.append(len(detector.backend.sessions))
        detector.close()

    results = detector.detect([photographs["coffee"]] * 2, on_progress=close_midway)
    assert [r.ok for r in results] == [True, True] and detector.closed
    assert sessions == [3, 3] and detector.backend.sessions == {} and detector.face_locator is None
    with pytest.raises(DfdError, match="this detector is closed"):
        detector.detect([photographs["coffee"]])


def test_a_release_that_fails_at_the_end_of_a_call_keeps_its_results(tiny_engine_set, photographs, monkeypatch):
    """The release left to the end of a call (close from on_progress) raised in place of the call's
    return value, losing the scored images; the failure is now a warning."""
    from dfd.runtime.backends import OnnxRuntimeBackend

    def broken_close(self):
        raise RuntimeError("the driver went away")

    monkeypatch.setattr(OnnxRuntimeBackend, "close", broken_close)
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    with pytest.warns(RuntimeWarning, match="releasing the closed detector failed: RuntimeError: the driver went away"):
        results = detector.detect([photographs["coffee"]] * 2, on_progress=lambda done: detector.close())
    assert [r.ok for r in results] == [True, True] and detector.closed and detector.face_locator is None
    detector.close()  # released (as far as it could be) once; closing again does nothing


def test_face_boxes_api_crops_like_the_reference(tiny_engine_set, reference_ensemble, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime")
    rgb = photographs["astronaut"]
    small_box = (0, 0, 20, 20)  # under 1/9 of the image: the reference uses the original image
    results = detector.detect([rgb, rgb], face_boxes=[FACE_BOXES["astronaut"], small_box])
    crop = reference_face_crop(rgb, FACE_BOXES["astronaut"])
    expected = reference_ensemble.p_fake("face", stream_batch([crop, rgb], "face")).numpy()
    assert results[0].face["used"] == "crop" and results[1].face["used"] == "original image"
    assert abs(results[0].streams["face"] - expected[0]) <= 1e-4
    assert abs(results[1].streams["face"] - expected[1]) <= 1e-4
    assert any("1/9" in note for note in results[1].notes)


def test_a_face_box_mostly_outside_its_image_is_cropped_with_a_note(tiny_engine_set, reference_ensemble,
                                                                   photographs):
    """Coordinates of a resized copy put a box mostly outside the image: it is cropped as the
    reference crops it (mostly black), and the note says so; a face at the edge gets no note, and
    one cut by the edge, whose box reaches no further than the padded detection step's border,
    gets a note that does not call its coordinates a mistake."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime")
    rgb = photographs["astronaut"]
    height, width = rgb.shape[:2]
    doubled = (width / 4, height / 4, width * 1.5, height * 1.5)  # 36% inside: (0.75 / 1.25)²
    at_edge = (width * 0.6, height * 0.3, width * 1.1, height * 0.8)  # 80% inside
    cut = (-width * 0.2, height * 0.2, width * 0.18, height * 0.6)  # 47% inside, 0.2 of the side past the edge
    results = detector.detect([rgb, rgb, rgb], face_boxes=[doubled, at_edge, cut])
    crops = [reference_face_crop(rgb, box) for box in (doubled, at_edge, cut)]
    expected = reference_ensemble.p_fake("face", stream_batch(crops, "face")).numpy()
    for result, p in zip(results, expected):
        assert result.face["used"] == "crop" and abs(result.streams["face"] - p) <= 1e-4
    assert (f"face stream: only 36% of the face box lies inside the {width}x{height} image, so its crop is mostly "
            f"black padding (are the coordinates for another size of this image?)") in results[0].notes
    assert not any("lies inside" in note for note in results[1].notes)
    assert (f"face stream: only 47% of the face box lies inside the {width}x{height} image, so its crop is mostly "
            f"black padding (as for a face cut by the image's edge)") in results[2].notes


def test_the_padding_note_starts_below_half_and_reaches_a_fifth_of_the_long_side():
    """Exactly half inside is no note; the padded step's reach is a fifth of the long side in
    both directions (its grey border is that wide on every side), so a wide image's cut face
    reaching 110 pixels above it is still "a face cut by the edge"."""
    from dfd.runtime.detector import _padding_note

    assert _padding_note((-50, 100, 50, 300), (512, 512)) is None  # 50% inside
    assert "49% of the face box" in _padding_note((-50.5, 100, 49.5, 300), (512, 512))
    # 600 wide, 300 high: the reach is 120 past each of the four sides
    for cut in ((50, -110, 200, 40), (50, 260, 200, 410), (-110, 50, 40, 200), (560, 50, 710, 200)):
        assert _padding_note(cut, (300, 600)).endswith("(as for a face cut by the image's edge)"), cut
    past = (50, -121, 200, 29)
    assert _padding_note(past, (300, 600)).endswith("(are the coordinates for another size of this image?)")


def test_a_detected_box_past_the_edge_gets_the_note_its_given_box_gets(tiny_engine_set, photographs, monkeypatch):
    """The padded cascade step finds a face cut by the edge with a box reaching past it: the run
    notes the mostly black crop, and detect's output read back as a face box reproduces the run,
    notes and all (the note had been given to the box read back only)."""
    rgb = photographs["astronaut"]
    height, width = rgb.shape[:2]
    cut = (-width * 0.2, height * 0.2, width * 0.18, height * 0.6)
    with Detector.open(tiny_engine_set, backend="onnxruntime") as detector:
        monkeypatch.setattr(detector.face_locator, "locate",
                            lambda image: FaceResult(cut, 0.93, "padded_equalize", 1))
        [found] = detector.detect([rgb])
        [given] = detector.detect([rgb], face_boxes=[found.face["box"]])
    assert found.face["strategy"] == "padded_equalize" and found.face["box"] == list(cut)
    assert any("47% of the face box lies inside" in note for note in found.notes)
    assert found.notes == given.notes and found.score == given.score and found.streams == given.streams


def _write_bad_inputs(folder: Path, good: np.ndarray) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected error substring or None when a documented conversion applies)."""
    folder.mkdir()
    png = cv2.imencode(".png", cv2.cvtColor(good, cv2.COLOR_RGB2BGR))[1].tobytes()
    jpg = cv2.imencode(".jpg", cv2.cvtColor(good, cv2.COLOR_RGB2BGR))[1].tobytes()
    cases = {}

    def write(name, data, expect):
        path = folder / name
        path.write_bytes(data) if isinstance(data, bytes) else cv2.imwrite(str(path), data)
        cases[name] = (path, expect)

    write("corrupt.png", png[:40] + bytes(range(256)) * 4, "PNG data is truncated")
    # half a JPEG is scored, as cv2.imread decodes it (grey where data is missing), with a note; one
    # cut inside its tables cannot be decoded, by imread either
    write("truncated.jpg", jpg[: len(jpg) // 2], None)
    write("cut-tables.jpg", jpg[:600], "JPEG data is truncated (segment 0xFFC4 is cut short)")
    write("empty.png", b"", "empty")
    write("text.jpg", b"this is not an image\n" * 10, "is not an image OpenCV can decode")
    write("gray.png", cv2.cvtColor(good, cv2.COLOR_RGB2GRAY), None)
    write("rgba.png", cv2.cvtColor(good, cv2.COLOR_RGB2BGRA), None)
    write("sixteen.png", (cv2.cvtColor(good, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257), None)
    write("one.png", good[:1, :1], None)
    from PIL import Image  # Pillow (a scikit-image dependency) writes CMYK JPEGs; OpenCV cannot

    cmyk = io.BytesIO()
    Image.fromarray(good).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    write("cmyk.jpg", cmyk.getvalue(), None)
    # 20000x20000 PNG of zeros: a tiny file whose full decode would need 1.2 GB
    write("huge.png", cv2.imencode(".png", np.zeros((20000, 20000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes(),
          "pixels")
    write("huge.pgm", b"P5\n40000 40000\n255\n" + bytes(1000), "above the limit")  # 19 bytes of header
    # a Sun raster header beyond OpenCV's own 2^30-pixel limit: refused from the header (decoded,
    # OpenCV raised an exception rather than returning None; test_images checks that path)
    write("huge.ras", struct.pack(">8I", 0x59A66A95, 40000, 40000, 24, 0, 1, 0, 0) + bytes(1000),
          "sun raster image 40000x40000 (1600.0 mp) is above the limit")
    return cases


def test_bad_inputs_do_not_sink_the_batch(tiny_engine_set, photographs, tmp_path):
    good = photographs["coffee"]
    cases = _write_bad_inputs(tmp_path / "bad", good)
    good_path = tmp_path / "good.png"
    cv2.imwrite(str(good_path), cv2.cvtColor(good, cv2.COLOR_RGB2BGR))
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=4, face_detection=False)
    alone = detector.detect([good_path])[0]
    paths = [good_path, tmp_path / "missing.png", tmp_path]
    for path, _ in cases.values():
        paths += [path, good_path]
    results = detector.detect(paths)
    by_image = {}
    for path, result in zip(paths, results):
        by_image.setdefault(str(path), []).append(result)
    for result in by_image[str(good_path)]:
        assert result.ok and result.score == alone.score and result.streams == alone.streams
    assert "does not exist" in by_image[str(tmp_path / "missing.png")][0].error
    assert "directory" in by_image[str(tmp_path)][0].error
    for name, (path, expect) in cases.items():
        result = by_image[str(path)][0]
        if expect is None:
            assert result.ok, (name, result.error)
            assert result.notes, f"{name}: the conversion must be reported"
        else:
            assert not result.ok and expect.lower() in result.error.lower(), (name, result.error)
            assert result.score is None


def test_small_and_224_high_images_follow_the_documented_rules(tiny_engine_set, reference_ensemble, photographs):
    """Where the reference raises (under 252) or breaks its batch (224 high), the README's rules are
    applied here with OpenCV and the result fed to the reference pipeline: an image under the crop
    is upscaled with INTER_CUBIC to a short side of 252 (long side Python-rounded: 300 * 252 / 224
    = 337.5 -> 338), and a 224-high image wider than 224 is resized to 224 x 224 with INTER_AREA."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    small, exact = photographs["astronaut"][:100, :180], photographs["coffee"][:224, :300]
    results = detector.detect([small, exact])
    assert all(r.ok for r in results)
    assert any("global stream" in n and "upscal" in n for n in results[0].notes)
    assert any("fusion stream" in n for n in results[1].notes)
    crop_inputs = [cv2.resize(small, (454, 252), interpolation=cv2.INTER_CUBIC),
                   cv2.resize(exact, (338, 252), interpolation=cv2.INTER_CUBIC)]
    fusion_inputs = [small, cv2.resize(exact, (224, 224), interpolation=cv2.INTER_AREA)]
    for result, crop_input, fusion_input in zip(results, crop_inputs, fusion_inputs):
        expected = {stream: reference_ensemble.p_fake(stream, stream_batch([crop_input], stream)).item()
                    for stream in ("global", "face")}  # no face locator: the face stream takes the image
        expected["fusion"] = reference_ensemble.p_fake("fusion", stream_batch([fusion_input], "fusion")).item()
        for stream, p in expected.items():
            assert abs(result.streams[stream] - p) <= 1e-4, (stream, result.streams[stream], p)
        assert result.score == reference_vote(expected["global"], expected["face"], expected["fusion"])


def test_face_cascade_can_be_skipped(tiny_engine_set, degraded_cameraman, tmp_path):
    """A degraded face BlazeFace finds only through the cascade (MTCNN, which sees it in the plain
    pass, left off): found by default, not with face_cascade=False, which the CLI's
    --no-face-cascade sets and its stderr reports."""
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_min_px=None) as full, \
            Detector.open(tiny_engine_set, backend="onnxruntime", face_min_px=None, face_cascade=False) as plain:
        assert full.face_localisation == ("BlazeFace on a 192-pixel letterbox; the reference's 9-step "
                                          "enhancement cascade at up to 1024 px when that finds none")
        assert plain.face_localisation == "BlazeFace on a 192-pixel letterbox; no enhancement cascade"
        found, = full.detect([degraded_cameraman])
        missed, = plain.detect([degraded_cameraman])
    assert found.face["strategy"] == "bilateral" and missed.face is None
    assert "face stream: no face found, the original image is used (reference rule)" in missed.notes
    png = tmp_path / "cameraman.png"
    cv2.imwrite(str(png), cv2.cvtColor(degraded_cameraman, cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(png), "--no-face-cascade",
                                       "--face-min-px", "0"])
    assert result.exit_code == 0, result.output
    assert "face localisation: BlazeFace on a 192-pixel letterbox; no enhancement cascade" in result.stderr
    assert result.stdout.rstrip().endswith("face: none -> original image")  # no note repeats it


def test_an_image_too_elongated_to_upscale_fails_alone(tiny_engine_set, photographs):
    """A 1x60000 strip (a few-kilobyte PNG) would need an 11 GB upscale for its 252 crop: it is
    refused before any allocation, and the images batched with it are scored as on their own."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    strip, photo = np.zeros((1, 60000, 3), np.uint8), photographs["coffee"]
    strip_result, photo_result = detector.detect([strip, photo])
    assert not strip_result.ok and "too elongated to score" in strip_result.error
    assert "would make it 15120000x252" in strip_result.error and strip_result.notes == []
    alone = detector.detect([photo])[0]
    assert photo_result.streams == alone.streams and photo_result.notes == alone.notes


def test_detector_is_thread_safe(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=2, face_detection=False)
    images = list(photographs.values())
    expected = [r.to_dict() for r in detector.detect(images)]
    failures = []

    def work():
        for _ in range(3):
            if [r.to_dict() for r in detector.detect(images)] != expected:
                failures.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_tampered_and_incomplete_sets_are_refused(tiny_engine_set, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_engine_set, tampered)
    with open(tampered / "fusion.fp32.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(EngineSetError, match="fusion.fp32.onnx has"):
        Detector.open(tampered)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_engine_set, incomplete)
    (incomplete / "face.fp32.onnx").unlink()
    with pytest.raises(EngineSetError, match="missing file face.fp32.onnx"):
        Detector.open(incomplete)
    result = CliRunner().invoke(main, ["detect", str(incomplete), str(tmp_path)])
    assert result.exit_code == 1 and "integrity check" in result.output


def test_tensorrt_backend_absent_is_one_clear_line(tiny_engine_set, photographs, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photographs["coffee"])
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--backend", "tensorrt"])
    assert result.exit_code == 1
    assert "cannot use the tensorrt backend" in result.output and "Traceback" not in result.output


_TORCH_BLOCKER = """\
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'timm', 'open_clip', 'transformers', 'peft'):
            raise ImportError(f'the runtime imported {name}')
sys.meta_path.insert(0, Blocked())
"""


def test_runtime_never_imports_torch(tiny_engine_set, photographs, tmp_path):
    """Every runtime module, and the run-side verbs run end to end (their lazy imports included),
    in a process where importing torch, timm, open_clip or transformers raises."""
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), photographs["chelsea"])
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,x1,y1,x2,y2\n{image},10,10,200,200\n")
    verbs = [["detect", str(tiny_engine_set), str(image), "--format", "jsonl"],
             ["detect", str(tiny_engine_set), str(image), "--format", "csv", "--face-boxes", str(boxes)],
             ["detect", str(tiny_engine_set), str(image), "--backend", "auto"],
             ["inspect", str(tiny_engine_set)], ["doctor", "--json", str(tiny_engine_set)],
             ["degrade", str(image), "--out", str(tmp_path / "deg")],
             ["degrade", str(image), "--out", str(tmp_path / "fixed"), "--fixed", "compound_b"]]
    code = _TORCH_BLOCKER + (
        "from dfd.runtime.detector import Detector\n"
        f"r = Detector.open({str(tiny_engine_set)!r}).detect([{str(image)!r}])\n"
        "assert r[0].ok, r[0].error\n"
        "import importlib, pkgutil, dfd.runtime\n"  # every runtime module (GPU path and C ABI included)
        "for module in pkgutil.iter_modules(dfd.runtime.__path__):\n"
        "    importlib.import_module('dfd.runtime.' + module.name)\n"
        "from click.testing import CliRunner\n"
        "from dfd.export.cli import main\n"
        f"for verb in {verbs!r}:\n"
        "    result = CliRunner().invoke(main, verb)\n"
        "    assert result.exit_code == 0 and result.exception is None, (verb, result.output, result.exception)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("box", [FACE_BOXES["astronaut"], (0, 0, 20, 20)], ids=["crop", "no-usable-face"])
def test_jpeg_face_input_is_reencoded_like_the_reference_crop_files(tiny_engine_set, reference_ensemble,
                                                                     photographs, tmp_path, box):
    """The reference saves the face input (crop, or the original when the face is too small) with
    cv2.imwrite under the input's .jpg name and the face stream reads that file back."""
    path = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    too_small = (box[2] - box[0]) * (box[3] - box[1]) < rgb.shape[0] * rgb.shape[1] / 9.0
    face_input = rgb if too_small else reference_face_crop(rgb, box)
    saved = tmp_path / "crops" / "astronaut.jpg"
    saved.parent.mkdir()
    cv2.imwrite(str(saved), cv2.cvtColor(face_input, cv2.COLOR_RGB2BGR))
    reread = cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB)
    expected = reference_ensemble.p_fake("face", stream_batch([reread], "face")).item()
    raw = reference_ensemble.p_fake("face", stream_batch([face_input], "face")).item()
    detector = Detector.open(tiny_engine_set)
    result = detector.detect([path], face_boxes=[box])[0]
    assert abs(result.streams["face"] - expected) <= 1e-4
    assert any("re-encoded as .jpg" in note for note in result.notes)
    assert abs(raw - expected) > 1e-6, "the re-encode must matter for this test to mean anything"
    from_bytes = detector.detect([path.read_bytes(), bytearray(path.read_bytes())], face_boxes=[box, box])
    for index, same in enumerate(from_bytes):
        assert same.image == f"<image bytes {index}>"
        assert (same.streams, same.notes, same.score) == (result.streams, result.notes, result.score)


def test_a_face_crop_given_as_pixels_or_bytes_is_named_by_its_kind(tiny_engine_set, photographs):
    crop = photographs["astronaut"][:256, :256]
    encoded = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))[1].tobytes()
    results = Detector.open(tiny_engine_set, face_detection=False).detect(
        [photographs["coffee"]] * 3, face_crops=[None, crop, encoded])
    assert [r.face and r.face["file"] for r in results] == [None, "<array>", "<image bytes>"]
    assert [r.image for r in results] == ["<array 0>", "<array 1>", "<array 2>"]
    failed = Detector.open(tiny_engine_set, face_detection=False).detect(
        [photographs["coffee"]], face_boxes=[(-1e6, -1e6, 1e6, 1e6)])[0]  # a window of gigabytes
    assert "mostly black padding" in failed.error and failed.face is None and failed.notes == []


def test_face_boxes_on_a_jpeg_decoded_reduced_are_in_full_size_pixels(tiny_engine_set, reference_ensemble,
                                                                       photographs, tmp_path):
    """A JPEG over 64 MP is decoded at 1/2; a box in the pixels cv2.imread gives (the reference's
    RetinaFace boxes) is scaled to that decode, and the 1/9 rule is judged at full size."""
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), cv2.resize(cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR), (8000, 8200)))
    reduced = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    assert reduced.shape == (4100, 4000, 3)
    box = (2800.0, 1000.0, 5600.0, 4000.0)  # 0.128 of the full image
    saved = tmp_path / "crop.jpg"
    cv2.imwrite(str(saved), cv2.cvtColor(reference_face_crop(reduced, [v / 2 for v in box]), cv2.COLOR_RGB2BGR))
    reread = cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB)
    expected = reference_ensemble.p_fake("face", stream_batch([reread], "face")).item()
    detector = Detector.open(tiny_engine_set, face_detection=False)
    small_face = (3700.0, 1800.0, 5900.0, 4500.0)  # 0.0905 of the full image, 0.362 of the reduced one
    result, too_small = detector.detect([path, path], face_boxes=[box, small_face])
    assert result.error is None and abs(result.streams["face"] - expected) <= 1e-4
    assert result.face == {"source": "box", "box": list(box), "used": "crop"}
    assert ("face stream: the face box, in pixels of the full-size 8000x8200 image, is cropped from the 1/2 "
            "decode") in result.notes
    assert too_small.face["used"] == "original image"
    outside = detector.detect([path], face_boxes=[(7000.0, 8150.0, 7990.0, 8199.0)])[0]  # outside the reduced one
    assert outside.error is None and outside.face["used"] == "original image"


@pytest.mark.parametrize("suffix", [".webp", ".jp2", ".png"])
def test_formats_the_reference_crop_step_does_not_reencode_give_the_face_stream_the_crop(
        tiny_engine_set, photographs, tmp_path, suffix):
    """Only JPEG face inputs are re-encoded (the reference's cropping step takes .jpg/.jpeg/.png,
    and PNG is lossless): a WebP or JPEG 2000 file scores as its decoded pixels given as an array,
    with no re-encode note. An upper-case .JPG is re-encoded, as the reference lower-cases."""
    path = tmp_path / f"astronaut{suffix}"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    from_file, from_array = detector.detect([path, rgb], face_boxes=[FACE_BOXES["astronaut"]] * 2)
    assert from_file.streams == from_array.streams and from_file.score == from_array.score
    assert not any("re-encoded" in note for note in from_file.notes)
    upper = tmp_path / "astronaut.JPG"
    cv2.imwrite(str(upper), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    assert any("re-encoded as .jpg" in note for note in detector.detect([upper], face_boxes=[FACE_BOXES["astronaut"]])[0].notes)


class _UnreadablePath:
    """A caller's path-like object whose __fspath__ fails."""

    def __fspath__(self):
        raise RuntimeError("no path here")


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 2.5}, "batch size must be an integer of at least 1, got 2.5"),
    ({"batch_size": True}, "got True"), ({"batch_size": "4"}, "got '4'"), ({"batch_size": 0}, "got 0"),
    ({"face_detection": "no"}, "face_detection must be True or False, got 'no'"),
    ({"face_cascade": 1}, "face_cascade must be True or False"),
    ({"face_min_px": "x"}, "face_min_px must be a number of pixels or None"),
    ({"face_min_px": float("nan")}, "face_min_px must be a number"),
    ({"face_min_px": 5}, "face_min_px must be None (the letterbox pass only) or at least 12 pixels"),
    ({"face_min_px": 0}, "got 0"),
    ({"max_pixels": 0}, "max_pixels must be a positive integer"),
    ({"max_pixels": 1e6}, "max_pixels must be a positive integer"),
    ({"cuda_graph_batch": 1.5}, "a CUDA graph for batches of 1.5 would never replay"),
    ({"backend": "onnxrutime"}, "unknown backend 'onnxrutime'; choose from auto, onnxruntime, tensorrt")])
def test_option_values_are_refused_before_the_set_is_opened(tiny_engine_set, monkeypatch, options, message):
    """A float batch size passed and failed on the first detect (range()), face_detection='no'
    turned detection on, face_min_px='x' raised a bare TypeError; all after the backend was open.
    A misspelt backend was named only after every file was hashed (minutes at paper size)."""
    import dfd.runtime.detector as module

    def not_yet(*args, **kwargs):
        raise AssertionError("the set was hashed before the options were checked")

    monkeypatch.setattr(module, "load_manifest", not_yet)
    with pytest.raises(DfdError, match=re.escape(message)):
        Detector.open(tiny_engine_set, **options)


def record_backend_closes(monkeypatch) -> list:
    """The list each opened backend's close() appends True to."""
    import dfd.runtime.detector as module

    closed = []
    real_select = module.select_backend

    def recording_select(*args, **kwargs):
        choice = real_select(*args, **kwargs)
        choice.backend.close = lambda: closed.append(True)
        return choice

    monkeypatch.setattr(module, "select_backend", recording_select)
    return closed


def test_an_opening_that_fails_after_the_backend_releases_it(tiny_engine_set, monkeypatch):
    """On TensorRT the backend holds GPU buffers and streams; a Detector that failed to open never
    closed it (no __del__), so they stayed until the garbage collector found it."""
    closed = record_backend_closes(monkeypatch)
    with pytest.raises(DfdError, match="a CUDA graph needs the fused GPU path"):
        Detector.open(tiny_engine_set, backend="onnxruntime", gpu_preprocessing=False, cuda_graph_batch=1)
    assert closed == [True]
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=np.int64(2))
    assert closed == [True] and detector.batch_size == 2
    assert repr(detector) == f"<Detector {str(tiny_engine_set)!r} on onnxruntime, streams global/face/fusion, batch_size=2>"
    detector.close()
    assert repr(detector).endswith(", closed>")


def test_detect_takes_any_iterable_and_refuses_what_is_not_a_collection(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    expected = detector.detect([good, good[::-1]])
    for images in ((good, good[::-1]), (image for image in (good, good[::-1])), map(np.ascontiguousarray, [good, good[::-1]])):
        assert [r.score for r in detector.detect(images)] == [r.score for r in expected]
    boxes = np.array([[100, 50, 300, 250], [120, 60, 330, 280]], dtype=np.float32)  # one (N, 4) array of boxes
    assert all(r.ok and r.face["source"] == "box" for r in detector.detect([good, good], face_boxes=boxes))
    with pytest.raises(TypeError, match=r"images is one \(2, 400, 600, 3\) array; .* detect\(list\(batch\)\)"):
        detector.detect(np.stack([good, good]))
    for not_a_collection in (None, 3, {"a.jpg": None}):
        with pytest.raises(TypeError, match="detect's images must be a list"):
            detector.detect(not_a_collection)
    with pytest.raises(DfdError, match="labels must be strings, got int 5"):
        detector.detect([good, good], labels=["a", 5])
    with pytest.raises(DfdError, match="label must be a string, got int 5"):
        detector.prepare(good, 5)  # it became the result's image name


def test_inputs_whose_failure_is_their_own(tiny_engine_set, photographs, tmp_path):
    """A face crop that cannot be decoded said so as if the image had failed; a path-like object
    whose __fspath__ raises sank the call; a path given as bytes read as undecodable image data."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(good, cv2.COLOR_RGB2BGR))
    results = detector.detect([good, _UnreadablePath(), os.fsencode(path), good],
                              face_crops=[good.astype(np.float32), None, None, None])
    assert results[0].error.startswith("face crop: image array must be uint8")
    assert results[1].image == "<_UnreadablePath 1>" and results[1].error.endswith("no path here")
    assert results[2].error.endswith("; these bytes name an existing file: pass a path as str or Path")
    assert results[3].ok


def test_max_pixels_is_the_callers_to_raise(tiny_engine_set, photographs, tmp_path):
    """The size limit's message told callers to pass a larger max_pixels, which neither the
    Detector nor detect took."""
    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))  # 600x400
    small = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, max_pixels=200_000)
    [refused] = small.detect([path])
    assert "(240,000 pixels) is above the limit of 200,000 pixels" in refused.error  # both read 0.2 MP
    assert "(--max-pixels of the dfd-export command, max_pixels of Detector.open or dfd_options)" in refused.error
    assert small.detect([photographs["coffee"][:400, :500]])[0].ok
    runner = CliRunner()
    for limit, code in (("200000", 2), ("240000", 0)):
        result = runner.invoke(main, ["detect", str(tiny_engine_set), str(path), "--no-face-detect",
                                      "--max-pixels", limit, "--format", "jsonl"])
        assert result.exit_code == code, result.output


def test_objects_that_are_not_images_fail_alone(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    results = detector.detect([None, good, 42, good[:, :, :1], good.astype(np.float32)])
    assert [r.image for r in results] == ["<NoneType 0>", "<array 1>", "<int 2>", "<array 3>", "<array 4>"]
    assert "from None (what cv2.imread returns for a file it cannot read)" in results[0].error
    assert "object of type int" in results[2].error
    assert results[1].ok and results[3].ok and results[3].notes[0] == "grayscale expanded to RGB"
    assert "dtype float32; float pixels in 0..1 convert with (array * 255).round().astype(np.uint8)" in results[4].error
    [buffer] = detector.detect([io.BytesIO(b"...")])
    assert "object of type BytesIO: pass its bytes (.getvalue() or .read())" in buffer.error
    # the advice named detect([image]) for a label or crop given bare, and "1 images"
    with pytest.raises(TypeError, match=r"wrap it in a list: labels=\[label\]"):
        detector.detect([good], labels="a.jpg")
    with pytest.raises(TypeError, match=r"wrap it in a list: face_crops=\[crop\]"):
        detector.detect([good], face_crops="face.png")
    with pytest.raises(TypeError, match=r"wrap it in a list: face_boxes=\[box\]"):
        detector.detect([good], face_boxes="0 0 40 40")
    with pytest.raises(DfdError, match=r"labels has 2 entries for 1 image\(s\): give one per image"):
        detector.detect([good], labels=["a", "b"])
    [nan_box] = detector.detect([good], face_boxes=[np.array([np.nan, 1.0, 50.0, 60.0])])
    assert nan_box.error.endswith("face box has non-finite coordinates: (nan, 1, 50, 60)")  # not np.float64(nan)
    for one_image in (good, "a.jpg", b"\xff\xd8\xff", Path("a.jpg")):
        with pytest.raises(TypeError, match=r"wrap it in a list: detect\(\[image\]\)"):
            detector.detect(one_image)
    # an array of paths: "wrap it in a list" led to a per-image dtype error
    with pytest.raises(TypeError, match=r"images is one \(2,\) array; .*detect\(list\(batch\)\)"):
        detector.detect(np.array(["a.jpg", "b.jpg"]))
    # one box for four images failed each image as "got 0", "got 40", ...: a caller's mistake
    for one_box in ((0, 0, 40, 40), np.array([0.0, 0, 40, 40])):
        with pytest.raises(TypeError, match=r"face_boxes is one box \(0(\.0)?, 0(\.0)?, 40(\.0)?, 40(\.0)?\); give one "
                                             r"entry per image"):
            detector.detect([good] * 4, face_boxes=one_box)
    with pytest.raises(TypeError, match=r"face_boxes holds numbers \(1, 2\), not a box per image; give one entry"):
        detector.detect([good] * 2, face_boxes=[1, 2])  # it said "is one box (1, 2)"


def test_calls_that_would_pair_or_report_at_random_are_refused_before_scoring(tiny_engine_set, photographs):
    """A set of labels or boxes paired with the images in its own arbitrary order; a non-callable
    on_progress raised only after the first batch was scored; a copy of a detector shared its
    sessions, so closing the copy broke the original (a KeyError), which still said it was open."""
    import copy
    import pickle

    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=1)
    good = photographs["coffee"]
    scored = []
    with pytest.raises(TypeError, match="detect's labels is a set, whose order is arbitrary, so images would pair "
                                        "with their labels at random; give a list"):
        detector.detect([good, good[::-1]], labels={"a", "b"}, on_progress=scored.append)
    with pytest.raises(TypeError, match="detect's images is a frozenset, whose order is arbitrary, so images would "
                                        "pair with their face_boxes at random"):
        detector.detect(frozenset(["a.jpg", "b.jpg"]), face_boxes=[None, None], on_progress=scored.append)
    with pytest.raises(TypeError, match="on_progress must be a function taking the number of images just scored, "
                                        "got int"):
        detector.detect([good, good], on_progress=5)
    assert scored == []
    assert len(detector.detect({"a.jpg", "b.jpg"})) == 2  # alone, a set of images is labelled by their paths
    for copier in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="a Detector holds open inference sessions and cannot be copied or "
                                            "pickled"):
            copier(detector)
    assert detector.detect([good])[0].ok


def test_a_box_in_fractions_of_the_sides_fails_its_image(tiny_engine_set, photographs):
    """(0.1, 0.1, 0.5, 0.5) was taken as a box of under a pixel, and the face stream quietly saw the
    original image."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    fraction, whole = detector.detect([good, good[:1, :1]], face_boxes=[(0.1, 0.1, 0.5, 0.5), (0, 0, 1, 1)])
    assert fraction.error == ("face box (0.1, 0.1, 0.5, 0.5) lies within [0, 1], a fraction of the 600x400 image's "
                              "sides rather than pixels (boxes are x1, y1, x2, y2 in pixels of the image)")
    assert whole.ok  # a 1x1 image's whole box
    # a pixel of a 3x3 image is 1/9 of it, not under: the reference crops it (it was refused as a
    # fraction); of a 2x5 image it is under 1/9, so the box would be pointless as pixels
    pixel, strip = detector.detect([good[:3, :3], good[:2, :5]], face_boxes=[(0, 0, 1, 1), (0, 0, 1, 1)])
    assert pixel.ok and pixel.face["used"] == "crop", pixel.error
    assert "a fraction of the 5x2 image's sides" in strip.error


class _UnconvertibleCoordinate(float):
    """A caller's number type whose conversion fails in a way no check here foresees."""

    def __float__(self):
        raise RuntimeError("this coordinate cannot be read")


def test_unforeseen_failures_of_one_image_do_not_sink_the_others(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    results = detector.detect([good, good, good], face_boxes=[
        (0, 0, 10**400, 100), (_UnconvertibleCoordinate(1), 2, 300, 200), None])
    assert "too large to be pixels" in results[0].error
    assert results[1].error == ("unexpected RuntimeError while preparing this image: this coordinate cannot be read")
    assert results[2].ok and results[2].score is not None


def test_packaged_face_detector_feeds_the_face_stream(tiny_engine_set, reference_ensemble, tmp_path):
    """Automatic localisation: the face stream sees the reference crop of the detected box."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        path = tmp_path / "grace_hopper.png"
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    result = Detector.open(tiny_engine_set).detect([path])[0]
    face = result.face
    assert face["source"] == "detector" and face["strategy"] == "plain" and face["count"] == 1
    hand_checked = (160, 135, 360, 335)  # x1, y1, x2, y2 of the face, checked by eye
    ix = max(0, min(face["box"][2], hand_checked[2]) - max(face["box"][0], hand_checked[0]))
    iy = max(0, min(face["box"][3], hand_checked[3]) - max(face["box"][1], hand_checked[1]))
    union = ((face["box"][2] - face["box"][0]) * (face["box"][3] - face["box"][1])
             + (hand_checked[2] - hand_checked[0]) * (hand_checked[3] - hand_checked[1]) - ix * iy)
    assert ix * iy / union >= 0.5
    assert face["used"] == "crop"
    crop = reference_face_crop(rgb, face["box"])
    expected = reference_ensemble.p_fake("face", stream_batch([crop], "face")).item()
    assert abs(result.streams["face"] - expected) <= 1e-4


def _record_from_csv_row(row: dict) -> dict:
    """The jsonl fields of a `detect --format csv` row (empty cells: no value)."""
    scored = bool(row["score"])
    box = [float(row[c]) for c in ("x1", "y1", "x2", "y2")] if row["x1"] else None
    return {"image": row["image"], "score": float(row["score"]) if scored else None,
            "streams": {s: float(row[s]) for s in ("global", "face", "fusion")} if scored else {},
            "face": {"source": row["face_source"], "box": box, "used": row["face_used"]} if box else None}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_detect_output_as_face_boxes_reproduces_the_run(tiny_engine_set, photographs, tmp_path, fmt):
    """detect's own output is a --face-boxes file: rerun with it and without the face locator,
    every image gets the same face input, so the same stream probabilities, bit for bit."""
    from matplotlib import cbook

    folder = tmp_path / "images"
    folder.mkdir()
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        bgr = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)
    # a face that gets cropped; at this size, the located box rounded to 0.01 px moves the crop a pixel
    cv2.imwrite(str(folder / "grace_hopper.png"), cv2.resize(bgr, (492, 492 * bgr.shape[0] // bgr.shape[1]),
                                                            interpolation=cv2.INTER_AREA))
    for name in ("astronaut", "coffee"):  # a face under 1/9 of the image; no face
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(photographs[name], cv2.COLOR_RGB2BGR))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "readme.txt").write_text("left out of the folder's images, with a warning")
    (folder / "rejected").mkdir()  # not searched without --recursive, with a warning
    runner = CliRunner()
    first = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--format", fmt])
    assert first.exit_code == 2, first.output  # broken.png fails, the others are scored
    assert f"left out 1 file(s) in {folder} whose names do not end in an image suffix: readme.txt" in first.stderr
    assert f"did not look in 1 sub-folder(s) of {folder}: rejected (use --recursive" in first.stderr
    saved = tmp_path / f"first.{fmt}"
    saved.write_text(first.stdout)
    again = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder), "--face-boxes", str(saved),
                                 "--no-face-detect", "--format", "jsonl"])
    assert again.exit_code == 2, again.output
    assert "match no image" not in again.stderr
    records = (map(json.loads, first.stdout.splitlines()) if fmt == "jsonl"
               else map(_record_from_csv_row, csv.DictReader(io.StringIO(first.stdout))))
    before = {Path(d["image"]).name: d for d in records}
    after = {Path(d["image"]).name: d for d in map(json.loads, again.stdout.splitlines())}
    assert set(before) == set(after) == {"grace_hopper.png", "astronaut.png", "coffee.png", "broken.png"}
    assert before["grace_hopper.png"]["face"]["source"] == "detector" and before["coffee.png"]["face"] is None
    assert before["astronaut.png"]["face"] is not None and before["broken.png"]["score"] is None
    assert before["astronaut.png"]["face"]["used"] == "original image"  # a face under 1/9 of the image
    assert before["grace_hopper.png"]["face"]["used"] == "crop"
    table = runner.invoke(main, ["detect", str(tiny_engine_set), str(folder / "astronaut.png")])
    assert table.stdout.rstrip().endswith("face: detector -> original image"), table.output
    for name in ("grace_hopper.png", "astronaut.png"):
        assert after[name]["face"]["source"] == "box"
        assert after[name]["face"]["box"] == before[name]["face"]["box"], name
    assert after["coffee.png"]["face"] is None
    for name in ("grace_hopper.png", "astronaut.png", "coffee.png"):
        assert after[name]["streams"] == before[name]["streams"], name
        assert after[name]["score"] == before[name]["score"], name
    assert after["broken.png"]["error"] is not None


def test_face_stream_image_is_what_detect_feeds_the_face_stream(tiny_engine_set, photographs):
    """The public face rule (used by the benchmark's staged run) is the Detector's own: the crop of
    a face that covers 1/9 of the image or more, else the image itself (a smaller face, none)."""
    from dfd.runtime.preprocess import preprocess_face

    astronaut = photographs["astronaut"]
    cases = {"face under 1/9": (astronaut, "original image"),
             "face crop": (np.ascontiguousarray(astronaut[:300, 100:400]), "crop"),
             "no face": (np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8), None)}
    with Detector.open(tiny_engine_set) as detector:
        for name, (rgb, used) in cases.items():
            prepared = detector.prepare(rgb, name)
            assert (prepared.detection.face or {}).get("used") == used, (name, prepared.detection.face)
            image = detector.face_stream_image(rgb)
            assert (image is rgb) == (used != "crop"), name
            np.testing.assert_array_equal(preprocess_face(image).tensor, prepared.tensors["face"], err_msg=name)


def test_concurrent_stream_dispatch_gives_identical_results(tiny_engine_set, photographs):
    """Backends whose engines run on their own CUDA streams get the three streams at once."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    images = list(photographs.values())
    sequential = [r.to_dict() for r in detector.detect(images)]
    calls = []

    class ConcurrentBackend:
        concurrent_streams = True

        def __init__(self, inner):
            self.inner = inner

        def run(self, stream, pixels):
            calls.append(threading.current_thread().name)
            return self.inner.run(stream, pixels)

    detector.backend = ConcurrentBackend(detector.backend)
    assert [r.to_dict() for r in detector.detect(images)] == sequential
    assert calls and all(name.startswith("dfd-stream") for name in calls)


def test_face_min_px_flag_switches_the_small_face_pass(tiny_engine_set, tmp_path):
    """A 1536x512 row of three portraits: the default looks for 40-px faces (the set's MTCNN) and
    finds the 65-px profile face too; ``--face-min-px 0`` is BlazeFace's 192-pixel pass only: two."""
    from matplotlib import cbook
    from skimage import data as skdata

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        grace = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)[44:556]
    row = np.hstack([cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR), grace,
                     cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2BGR)])
    path = tmp_path / "row.png"
    cv2.imwrite(str(path), row)
    counts = {}
    for flag in ([], ["--face-min-px", "0"]):
        result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(path), "--format", "jsonl", *flag])
        assert result.exit_code == 0, result.output
        counts[bool(flag)] = json.loads(result.stdout.strip().splitlines()[-1])["face"]["count"]
    assert counts == {False: 3, True: 2}
    bad = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(path), "--face-min-px", "-5"])
    assert bad.exit_code == 1 and "--face-min-px" in bad.output
    small = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(path), "--face-min-px", "0.1"])
    assert small.exit_code == 1 and small.stdout == ""
    assert "--face-min-px" in small.stderr and "0.1 is below 12 px, MTCNN's smallest window" in small.stderr


def test_sets_without_mtcnn_open_with_the_letterbox_pass_only(tiny_engine_set, tmp_path):
    """A set built before MTCNN was packaged (no mtcnn_* files in its face_detector entry) still
    opens; its locator runs BlazeFace alone. ``face_min_px=None`` does not load MTCNN at all."""
    with Detector.open(tiny_engine_set) as detector:
        assert detector.face_locator.small_face_detector is not None
    with Detector.open(tiny_engine_set, face_min_px=None) as detector:
        assert detector.face_locator.small_face_detector is None
    older = tmp_path / "older"
    shutil.copytree(tiny_engine_set, older)
    manifest = json.loads((older / "manifest.json").read_text())
    entry = manifest["face_detector"]
    for file in [f for f in entry["files"] if f["role"].startswith("mtcnn_")]:
        (older / file["path"]).unlink()
    entry["files"] = [f for f in entry["files"] if not f["role"].startswith("mtcnn_")]
    del entry["small_faces"]
    write_rebuilt_manifest(older, manifest)
    with Detector.open(older) as detector:
        assert detector.face_locator is not None and detector.face_locator.small_face_detector is None


# --- boundaries and paths the tests above left open (found by mutation testing of detector.py) ---


def test_a_face_box_that_only_touches_an_edge_of_the_image_lies_outside_it(tiny_engine_set, photographs):
    """x2 = 0, y2 = 0, x1 = width or y1 = height: the box shares an edge with the image but covers
    none of its pixels, so it is a coordinate mistake like any box wholly outside; a box reaching
    one pixel in is cropped."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]  # 600x400
    touching = [(-200, 10, 0, 300), (10, -300, 300, 0), (600, 10, 800, 300), (10, 400, 300, 700)]
    for box, result in zip(touching, detector.detect([good] * 4, face_boxes=touching)):
        assert result.error == (f"face box {box} lies outside the 600x400 image (boxes are x1, y1, x2, y2 in "
                                f"pixels of the image)"), box
    one_in = [(-200, 10, 1, 300), (599, 10, 800, 300)]
    assert all(r.ok and r.face["used"] == "crop" for r in detector.detect([good] * 2, face_boxes=one_in))


def test_a_face_box_on_a_reduced_decode_is_judged_against_the_full_size_image(tiny_engine_set, photographs,
                                                                              tmp_path):
    """A JPEG over max_pixels is decoded at 1/2 (here 600x400 -> 300x200): its box, in full-size
    pixels, is scaled for the crop, but how much of it lies inside the image is judged at full
    size; an image decoded at full size gets no note about a reduced decode."""
    path = tmp_path / "coffee.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    box = (520.0, 50.0, 720.0, 250.0)  # 40% inside the 600x400 image, reaching 0.2 of its side past it
    reduced = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, max_pixels=100_000)
    [result] = reduced.detect([path], face_boxes=[box])
    assert result.ok and result.face == {"source": "box", "box": list(box), "used": "crop"}
    assert ("face stream: the face box, in pixels of the full-size 600x400 image, is cropped from the 1/2 "
            "decode") in result.notes
    assert ("face stream: only 40% of the face box lies inside the 600x400 image, so its crop is mostly black "
            "padding (as for a face cut by the image's edge)") in result.notes
    full = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    [whole] = full.detect([path], face_boxes=[box])
    assert whole.ok and whole.face["used"] == "crop"
    assert not any("decode" in note for note in whole.notes), whole.notes
    assert [n for n in whole.notes if "lies inside" in n] == [n for n in result.notes if "lies inside" in n]


def test_face_min_px_may_be_mtcnns_smallest_window(tiny_engine_set):
    """The documented lower bound is inclusive: at least 12 px (MTCNN's smallest window)."""
    from dfd.runtime.face_detection import SMALLEST_FACE_PX

    with Detector.open(tiny_engine_set, backend="onnxruntime", face_min_px=SMALLEST_FACE_PX) as detector:
        assert detector.face_locator.min_face_px == SMALLEST_FACE_PX == 12
        assert detector.face_locator.small_face_detector is not None
        assert "MTCNN for faces from 12 px on larger images" in detector.face_localisation


def test_prepare_workers_are_at_least_one_and_taken_as_given(tiny_engine_set, monkeypatch):
    """0 threads would prepare nothing; a number given is the number used (None: one per core)."""
    import dfd.runtime.detector as module

    with pytest.raises(DfdError, match=re.escape("prepare_workers must be None (one per core, at most 8) or a "
                                                 "number of threads of at least 1, got 0")):
        Detector.open(tiny_engine_set, backend="onnxruntime", prepare_workers=0)
    monkeypatch.setattr(module, "default_prepare_workers", lambda: 5)
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, prepare_workers=3) as given, \
            Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False) as default:
        assert (given.prepare_workers, default.prepare_workers) == (3, 5)


def test_a_cuda_graph_as_large_as_the_batch_is_refused_only_for_want_of_tensorrt(tiny_engine_set):
    """A graph batch equal to the batch size is valid; on ONNX Runtime the refusal names the backend."""
    from dfd.runtime.backends import BackendError

    with pytest.raises(BackendError, match="a CUDA graph needs the tensorrt backend; this detector runs on "
                                           "onnxruntime"):
        Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=2, cuda_graph_batch=2)


def test_the_manifests_face_detector_settings_are_the_locators(tiny_engine_set, tmp_path):
    """The set's recorded BlazeFace score threshold and MTCNN thresholds, not the defaults, and the
    streams in the reference's order whatever order the manifest lists them in."""
    root = tmp_path / "set"
    shutil.copytree(tiny_engine_set, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["face_detector"]["score_threshold"] = 0.7
    manifest["face_detector"]["small_faces"]["thresholds"] = [0.5, 0.6, 0.8]
    manifest["streams"] = dict(reversed(list(manifest["streams"].items())))
    write_rebuilt_manifest(root, manifest)
    with Detector.open(root, backend="onnxruntime") as detector:
        assert detector.face_locator.score_threshold == 0.7
        assert detector.face_locator.small_face_detector.thresholds == (0.5, 0.6, 0.8)
        assert detector.streams == ("global", "face", "fusion")


def test_an_opening_interrupted_by_ctrl_c_releases_the_backend(tiny_engine_set, monkeypatch):
    """A KeyboardInterrupt while the face locator opens (seconds at paper size) is not an Exception:
    the backend's sessions are still closed before it propagates."""
    closed = record_backend_closes(monkeypatch)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "_open_face_locator", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Detector.open(tiny_engine_set, backend="onnxruntime")
    assert closed == [True]


def test_close_releases_everything_once_and_reports_a_failed_release(tiny_engine_set, monkeypatch):
    """The backend is closed once however often the detector is; the face locator (its ONNX Runtime
    sessions) is let go; a backend whose release fails makes close() raise, not pass silently."""
    from dfd.runtime.backends import OnnxRuntimeBackend

    calls = []
    real_close = OnnxRuntimeBackend.close
    monkeypatch.setattr(OnnxRuntimeBackend, "close", lambda self: calls.append("close") or real_close(self))
    detector = Detector.open(tiny_engine_set, backend="onnxruntime")
    assert detector.face_locator is not None
    detector.close()
    detector.close()
    with detector:
        pass
    assert calls == ["close"] and detector.face_locator is None and detector.backend.sessions == {}

    def broken_close(self):
        raise RuntimeError("the driver went away")

    monkeypatch.setattr(OnnxRuntimeBackend, "close", broken_close)
    failing = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    with pytest.raises(RuntimeError, match="the driver went away"):
        failing.close()
    assert failing.closed
    failing.close()  # released (as far as it could be) once: nothing is raised again


def test_a_with_block_closes_the_detector(tiny_engine_set, photographs):
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False) as detector:
        assert detector.detect([photographs["coffee"]])[0].ok
    assert detector.closed and detector.backend.sessions == {}


def test_on_progress_gets_each_batchs_size_and_an_exception_it_raises_ends_the_call(tiny_engine_set, photographs):
    """on_progress(n) is told how many images the batch just scored (not the running total); when
    it raises, the call is over at once: the detector is no longer in use, so close() does not wait."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=2)
    good = photographs["coffee"]
    sizes = []
    assert len(detector.detect([good] * 5, on_progress=sizes.append)) == 5
    assert sizes == [2, 2, 1]

    def stop(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as interrupted:
        detector.detect([good] * 3, on_progress=stop)
    assert interrupted.value is not None and not detector._running  # the traceback still holds the call's frame
    detector.close()
    assert detector.backend.sessions == {}


def test_detections_refuses_a_closed_detector_before_iterating(tiny_engine_set):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    detector.close()
    with pytest.raises(DfdError, match="this detector is closed"):
        detector.detections([])


def test_face_boxes_of_five_numbers_and_of_no_images(tiny_engine_set, photographs):
    """Only four numbers read as one box given for all images; no boxes for no images is no call
    at all, not a mistake."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    with pytest.raises(TypeError, match=r"face_boxes holds numbers \(1, 2, 3, 4, 5\), not a box per image"):
        detector.detect([photographs["coffee"]] * 5, face_boxes=[1, 2, 3, 4, 5])
    assert detector.detect([], face_boxes=[]) == []


def test_a_face_found_on_a_reduced_decode_is_recorded_in_full_size_pixels(tiny_engine_set, photographs,
                                                                          tmp_path, monkeypatch):
    """The locator sees the 1/2 decode; detect records its box in full-size pixels (the box a
    --face-boxes file takes) and its score to 4 decimals."""
    path = tmp_path / "coffee.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["coffee"], cv2.COLOR_RGB2BGR))
    with Detector.open(tiny_engine_set, backend="onnxruntime", max_pixels=100_000) as detector:
        monkeypatch.setattr(detector.face_locator, "locate",
                            lambda image: FaceResult((60.5, 20.0, 210.0, 170.0), 0.934567, "plain", 1))
        [found] = detector.detect([path])
        [given] = detector.detect([path], face_boxes=[found.face["box"]])
    assert found.face == {"source": "detector", "box": [121.0, 40.0, 420.0, 340.0], "score": 0.9346,
                          "strategy": "plain", "count": 1, "used": "crop"}
    assert found.notes == given.notes and found.streams == given.streams


def test_an_unforeseen_failure_clears_the_notes_of_what_was_not_scored(tiny_engine_set, photographs):
    """The decode's note (grayscale expanded) describes a scoring that then did not happen."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    grey = photographs["coffee"][:, :, :1]
    [failed] = detector.detect([grey], face_boxes=[(_UnconvertibleCoordinate(1), 2, 300, 200)])
    assert failed.error == "unexpected RuntimeError while preparing this image: this coordinate cannot be read"
    assert failed.notes == [] and failed.face is None and failed.score is None


def test_preparation_for_the_fused_path_refuses_and_notes_as_the_host_path_does(tiny_engine_set, photographs,
                                                                                tmp_path):
    """On the fused GPU path the kernels crop and resize, so preparation itself refuses a face
    window the host's crop would refuse, and writes the notes the host preprocessing would (a
    small face crop's upscale, not the image's). Checked without a GPU: preparing decides the
    fused input and runs no kernel."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    crop = np.ascontiguousarray(photographs["astronaut"][60:200, 150:270])  # 120x140: under the 252 crop
    jpeg = tmp_path / "coffee.jpg"
    cv2.imwrite(str(jpeg), cv2.cvtColor(good, cv2.COLOR_RGB2BGR))
    inputs = [(good, {"face_box": (-1e6, -1e6, 1e6, 1e6)}), (good, {"face_crop": crop}),
              (good, {"face_box": (100, 50, 400, 350)}), (jpeg, {"face_box": (100, 50, 400, 350)})]
    host = [detector.prepare(image, "coffee", **given) for image, given in inputs]
    detector.fused = object()  # a stand-in: prepare only builds its FusedInput
    try:
        fused = [detector.prepare(image, "coffee", **given) for image, given in inputs]
    finally:
        detector.fused = None
    assert [f.detection for f in fused] == [h.detection for h in host]
    assert "mostly black padding" in fused[0].detection.error and fused[0].fused is None
    assert any("face stream" in note and "upscal" in note for note in fused[1].detection.notes)
    assert fused[1].tensors == {} and fused[1].fused.face_rgb is not None and fused[1].fused.face_box is None
    assert fused[2].fused.face_box == (100.0, 50.0, 400.0, 350.0) and fused[2].fused.face_rgb is None
    # a JPEG's face is re-encoded as the reference's crop file is: that image, not the box, is the face input
    assert any("re-encoded as .jpg" in note for note in fused[3].detection.notes)
    assert fused[3].fused.face_box is None and fused[3].fused.face_rgb is not None
    detector.close()


def test_detections_ends_its_call_when_the_iterator_ends_with_an_exception(tiny_engine_set, photographs):
    """An exception thrown into the iterator (as a framework cancelling the consumer does) ends
    the call at once, not when the exception's traceback lets go of it: close() then has no call
    to wait for."""
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=1)
    scoring = detector.detections([photographs["coffee"]] * 3)
    assert next(scoring).ok and detector._running
    with pytest.raises(KeyboardInterrupt) as cancelled:
        scoring.throw(KeyboardInterrupt())
    assert cancelled.value is not None and not detector._running
    detector.close()
    assert detector.backend.sessions == {}


def test_a_face_crop_given_with_a_jpeg_is_not_re_encoded(tiny_engine_set, photographs, tmp_path):
    """A given face crop is the reference's crop file already: only the face input the runtime
    makes from a JPEG (its crop or the image) is re-encoded, so a JPEG file with a crop scores as
    its decoded pixels with that crop."""
    path = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    crop = np.ascontiguousarray(photographs["astronaut"][30:260, 120:320])
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    from_file, from_array = detector.detect([path, decoded], face_crops=[crop, crop])
    assert from_file.ok and from_file.face == {"source": "face-crop", "file": "<array>"}
    assert not any("re-encoded" in note for note in from_file.notes)
    assert from_file.streams == from_array.streams and from_file.notes == from_array.notes


def test_a_non_finite_stream_fails_its_image_alone(tiny_engine_set, photographs):
    """NaN logits (an fp16 overflow) from one stream for one image: that image gets no score and an
    error naming the stream; the others of its batch are scored as on their own, and every scored
    image records its rounded stream probabilities and the vote over them."""
    from dfd.runtime.vote import discretised_vote, one_decimal

    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    images = [photographs["coffee"], photographs["chelsea"], photographs["astronaut"]]
    alone = detector.detect(images)
    inner = detector.backend

    class OverflowingBackend:
        name = inner.name

        def run(self, stream, pixels):
            logits = np.array(inner.run(stream, pixels), dtype=np.float32)
            if stream == "face":
                logits[1] = np.nan
            return logits

    detector.backend = OverflowingBackend()
    first, failed, last = detector.detect(images)
    detector.backend = inner
    assert failed.error == "the face stream produced a non-finite probability; no score for this image"
    assert failed.score is None and failed.raw_score is None and failed.streams == {}
    assert first.to_dict() == alone[0].to_dict() and last.to_dict() == alone[2].to_dict()
    for result in alone:
        vote = discretised_vote(result.streams, detector.vote_weights)
        assert result.rounded_streams == {s: one_decimal(p) for s, p in result.streams.items()}
        assert (result.score, result.raw_score) == (vote.score, vote.raw_mean)


def test_the_vote_kernels_outputs_are_recorded_as_the_host_vote_is(tiny_engine_set, photographs):
    """The fused path's per-image results: a saturated stream (P(fake) exactly 0 or 1) is a score,
    NaN is that image's error alone. Checked without a GPU: a stand-in returns the kernel's outputs."""
    from dfd.runtime.gpu_pipeline import FusedResult

    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    prepared = [detector.prepare(photographs["coffee"], name) for name in ("saturated", "overflow")]

    class VoteKernel:
        def run(self, inputs):
            return FusedResult(probabilities=np.array([[0.0, 1.0, 0.3125], [0.5, np.nan, 0.5]], np.float32),
                               score=np.array([0.5, 0.0], np.float32), raw_mean=np.array([0.4, 0.0], np.float32))

    detector.fused = VoteKernel()
    try:
        detector._score(prepared)
    finally:
        detector.fused = None
    saturated, overflow = (p.detection for p in prepared)
    assert saturated.ok and saturated.streams == {"global": 0.0, "face": 1.0, "fusion": 0.3125}
    assert saturated.rounded_streams == {"global": 0.0, "face": 1.0, "fusion": 0.3}
    assert (saturated.score, saturated.raw_score) == (0.5, pytest.approx(0.4))
    assert overflow.error == "the face stream produced a non-finite probability; no score for this image"
    assert overflow.score is None
    assert set(saturated.to_dict()) == {"image", "score", "raw_score", "streams", "rounded_streams", "face",
                                        "notes", "error"}  # file_unreadable is not part of the record


def test_face_localisation_says_why_it_is_off(tiny_engine_set, tmp_path):
    root = tmp_path / "no-detector"
    root.mkdir()
    manifest = json.loads((tiny_engine_set / "manifest.json").read_text())
    for entry in (f for stream in manifest["streams"].values() for f in stream["files"]):
        shutil.copyfile(tiny_engine_set / entry["path"], root / entry["path"])
    manifest["face_detector"] = None  # a set built with --no-face-detector
    write_rebuilt_manifest(root, manifest)
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False) as turned_off, \
            Detector.open(root, backend="onnxruntime") as without_detector:
        assert turned_off.face_localisation == "off: images without a face crop or box use the original image"
        assert without_detector.face_locator is None
        assert without_detector.face_localisation == ("off (the engine set packages no face detector): images "
                                                      "without a face crop or box use the original image")


def test_a_set_with_part_of_mtcnn_opens_with_the_letterbox_pass_only(tiny_engine_set, tmp_path):
    """MTCNN needs all three of its networks: a set that packages P-Net alone runs BlazeFace alone."""
    partial = tmp_path / "partial"
    shutil.copytree(tiny_engine_set, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    entry = manifest["face_detector"]
    for file in [f for f in entry["files"] if f["role"] in ("mtcnn_rnet", "mtcnn_onet")]:
        (partial / file["path"]).unlink()
    entry["files"] = [f for f in entry["files"] if f["role"] not in ("mtcnn_rnet", "mtcnn_onet")]
    write_rebuilt_manifest(partial, manifest)
    with Detector.open(partial, backend="onnxruntime") as detector:
        assert detector.face_locator is not None and detector.face_locator.small_face_detector is None


def test_a_close_inside_one_call_leaves_the_release_to_the_last_running_call(tiny_engine_set, photographs,
                                                                              monkeypatch):
    """close() from an on_progress callback while another thread's call is still scoring: the
    callback's call ends without releasing what the other call uses; the last call to end releases."""
    from dfd.runtime.backends import OnnxRuntimeBackend

    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    entered, proceed = threading.Event(), threading.Event()
    real_run = OnnxRuntimeBackend.run

    def held_run(self, stream, pixels):
        if threading.current_thread().name == "held":
            entered.set()
            assert proceed.wait(60)
        return real_run(self, stream, pixels)

    monkeypatch.setattr(OnnxRuntimeBackend, "run", held_run)
    good, held = photographs["coffee"], []
    thread = threading.Thread(target=lambda: held.extend(detector.detect([good])), name="held")
    thread.start()
    assert entered.wait(60)
    try:
        [closing] = detector.detect([good], on_progress=lambda done: detector.close())
        assert closing.ok and detector.closed and len(detector.backend.sessions) == 3
    finally:
        proceed.set()
        thread.join(60)
    assert [r.ok for r in held] == [True] and detector.backend.sessions == {}


def test_a_face_crop_and_a_face_box_for_one_image_fail_that_image(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    good = photographs["coffee"]
    both, crop_only = detector.detect([good, good], face_crops=[good[:300, :300], good[:300, :300]],
                                      face_boxes=[(100, 50, 400, 350), None])
    assert both.error == "give a face crop or a face box for an image, not both" and both.face is None
    assert crop_only.ok and crop_only.face["source"] == "face-crop"


def test_a_face_box_changes_the_face_stream_only(tiny_engine_set, photographs):
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    rgb = photographs["astronaut"]
    boxed, whole = detector.detect([rgb, rgb], face_boxes=[FACE_BOXES["astronaut"], None])
    assert boxed.face["used"] == "crop" and boxed.streams["face"] != whole.streams["face"]
    assert (boxed.streams["global"], boxed.streams["fusion"]) == (whole.streams["global"], whole.streams["fusion"])


def test_only_a_file_that_cannot_be_read_is_marked_unreadable(tiny_engine_set, tmp_path):
    """file_unreadable (the C ABI's DFD_E_IO) is the file's own failure, not its content's."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    missing, undecodable = detector.detect([tmp_path / "missing.png", corrupt])
    assert missing.error and missing.file_unreadable
    assert undecodable.error and not undecodable.file_unreadable
