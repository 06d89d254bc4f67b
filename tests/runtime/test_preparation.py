"""Images prepared on threads: in order, the same results as one at a time, within a budget of
pixels, cancelled when the caller stops; a Detector's prepare_workers option."""

from __future__ import annotations

import os
import random
import threading
import time
import types

import cv2
import numpy as np
import pytest

from conftest import HeldPreparations
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError
from dfd.runtime.preparation import (MAX_DEFAULT_WORKERS, PixelBudget, default_prepare_workers, estimated_pixels,
                                     prepared_in_order)

# long enough for a thread that should wait to have gone past the point where it would not
NOT_ENTERED_S = 0.3


def test_estimated_pixels_from_headers_arrays_and_crops(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((30, 50, 3), np.uint8))
    jpeg = cv2.imencode(".jpg", np.zeros((70, 20, 3), np.uint8))[1].tobytes()
    array = np.zeros((11, 13, 3), np.uint8)
    assert estimated_pixels(png) == 1500
    assert estimated_pixels(str(png), None) == 1500  # no face crop
    assert estimated_pixels(jpeg) == 1400
    assert estimated_pixels(bytearray(jpeg), array) == 1400 + 143  # an image and its face crop
    assert estimated_pixels(memoryview(jpeg)) == 1400


class _RaisingPath:
    def __fspath__(self) -> str:
        raise RuntimeError("no path here")


def test_what_cannot_be_sized_cheaply_is_none_and_never_raises(tmp_path):
    """Decoding reports what is wrong with such an input; the estimate must not fail it first."""
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert estimated_pixels(tmp_path / "junk.png") is None
    assert estimated_pixels(tmp_path / "missing.png") is None
    assert estimated_pixels(tmp_path) is None  # a folder
    assert estimated_pixels(_RaisingPath()) is None
    assert estimated_pixels(42) is None
    assert estimated_pixels(np.zeros(5, np.uint8)) is None
    assert estimated_pixels(np.zeros((4, 4, 3), np.uint8), tmp_path / "junk.png") is None  # one unknown: all


def test_a_fifo_is_not_opened_for_its_header(tmp_path):
    """Opening a FIFO would release a writer waiting for a reader (then killed by SIGPIPE), and
    reading it would wait for one."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (estimated_pixels(fifo), done.set()), daemon=True)
    thread.start()
    assert done.wait(10), "estimated_pixels blocked on a FIFO"
    try:  # a writer finds no reader: nothing opened it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        opened = True
    except OSError:
        opened = False
    assert not opened


def test_default_workers_are_the_usable_cores_at_most_eight():
    assert default_prepare_workers() == max(1, min(MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0))))


def _holder(budget: PixelBudget, pixels: int | None, entered: threading.Event,
            leave: threading.Event, name: str | None = None) -> threading.Thread:
    def hold() -> None:
        with budget.held(pixels):
            entered.set()
            leave.wait(30)
    thread = threading.Thread(target=hold, daemon=True, name=name)
    thread.start()
    return thread


def test_the_budget_holds_images_that_fit_together_and_queues_the_rest():
    budget = PixelBudget(100)
    first, second, third = (threading.Event() for _ in range(3))
    leave_first, leave_rest = threading.Event(), threading.Event()
    holders = [_holder(budget, 60, first, leave_first)]
    assert first.wait(10)
    holders.append(_holder(budget, 40, second, leave_rest))  # 60 + 40 fits
    assert second.wait(10)
    holders.append(_holder(budget, 1, third, leave_rest))  # 101 would not
    assert not third.wait(NOT_ENTERED_S)
    leave_first.set()
    assert third.wait(10)
    leave_rest.set()
    for thread in holders:
        thread.join(10)


def test_a_large_image_is_not_passed_over_by_smaller_ones_arriving_after_it():
    """A service's threads sharing a detector: small images kept the budget busy, and an image
    needing most of it waited for as long as they came."""
    budget = PixelBudget(100)
    small, large, later = (threading.Event() for _ in range(3))
    leave_small, leave_large, leave_later = (threading.Event() for _ in range(3))
    holders = [_holder(budget, 30, small, leave_small)]
    assert small.wait(10)
    holders.append(_holder(budget, 90, large, leave_large))  # waits: 30 + 90 > 100
    time.sleep(NOT_ENTERED_S)  # queued first
    holders.append(_holder(budget, 10, later, leave_later))  # would fit now, but comes after
    assert not later.wait(NOT_ENTERED_S) and not large.is_set()
    leave_small.set()
    assert large.wait(10)
    assert later.wait(10)  # 90 + 10 fit together
    leave_large.set()
    leave_later.set()
    for thread in holders:
        thread.join(10)


def test_an_image_over_the_budget_or_of_unknown_size_runs_alone():
    budget = PixelBudget(100)
    for pixels in (500, None):
        big, small = threading.Event(), threading.Event()
        leave_big, leave_small = threading.Event(), threading.Event()
        first = _holder(budget, pixels, big, leave_big)
        assert big.wait(10)  # alone, it is let through although it exceeds the budget
        second = _holder(budget, 1, small, leave_small)
        assert not small.wait(NOT_ENTERED_S)
        leave_big.set()
        assert small.wait(10)
        leave_small.set()
        first.join(10)
        second.join(10)


def test_results_come_in_order_with_a_bounded_number_under_way():
    lock = threading.Lock()
    started: list[int] = []
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.02) for _ in range(40)]

    def job(index: int):
        def run() -> int:
            with lock:
                started.append(index)
            time.sleep(delays[index])
            return index
        return run, (np.zeros((2, 2, 3), np.uint8),)

    taken = 0
    results = []
    iterator = prepared_in_order([job(i) for i in range(40)], 4, PixelBudget(10**9), ahead=5)
    for value in iterator:
        results.append(value)
        taken += 1
        with lock:  # never more than the one waited for and 5 more started past those taken
            assert max(started) < taken + 5
    assert results == list(range(40))


def test_stopping_early_drops_the_jobs_not_started_and_waits_for_the_running_ones():
    """Nothing may read the caller's images once the call has ended: the C ABI's are views of
    the caller's memory, which it frees when dfd_detect returns (on an error too)."""
    ran: list[int] = []
    release = threading.Event()

    def job(index: int):
        def run() -> int:
            if index:  # the first is taken at once; the others hold both threads until released
                release.wait(10)
            ran.append(index)
            return index
        return run, ()

    iterator = prepared_in_order([job(i) for i in range(50)], 2, PixelBudget(10**9), ahead=3)  # jobs 0-3 submitted
    assert next(iterator) == 0
    threading.Timer(NOT_ENTERED_S, release.set).start()
    iterator.close()  # what an exception or an interrupt in the caller does
    assert release.is_set()  # close() returned only after the running jobs ended
    assert sorted(ran) in ([0, 1], [0, 1, 2])  # job 3 waited in the queue, and was dropped


def test_one_worker_prepares_lazily_in_the_calling_thread():
    threads: list[int] = []

    def job():
        return (lambda: threads.append(threading.get_ident()) or len(threads)), ()

    iterator = prepared_in_order([job() for _ in range(3)], 1, PixelBudget(100), ahead=8)
    assert threads == []  # nothing runs before it is asked for
    assert next(iterator) == 1 and threads == [threading.get_ident()]
    iterator.close()
    assert len(threads) == 1


def _photo_files(photographs, folder) -> list:
    """The photographs as files and arrays, with inputs that fail, in one list."""
    paths = []
    for name, rgb in photographs.items():
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [*paths, folder / "corrupt.png", photographs["coffee"], folder / "missing.jpg", *paths]


def test_detections_are_the_same_whatever_the_number_of_workers(tiny_engine_set, photographs, tmp_path):
    images = _photo_files(photographs, tmp_path)
    results = {}
    for workers in (1, 3):
        with Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=2, prepare_workers=workers) as detector:
            assert detector.prepare_workers == workers
            progress: list[int] = []
            results[workers] = [d.to_dict() for d in detector.detect(images, on_progress=progress.append)]
            assert progress == [2] * (len(images) // 2) + [1] * (len(images) % 2)
    assert results[3] == results[1]
    assert [r["error"] is None for r in results[1]].count(False) == 2


def test_images_prepared_at_once_stay_within_max_pixels(tiny_engine_set, photographs, tmp_path):
    """Four threads, a budget that two of the images fill: never more than that at once."""
    images = [cv2.resize(photographs["coffee"], (300, 200))] * 8  # 60,000 pixels each
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, prepare_workers=4,
                       max_pixels=120_000) as detector:
        peak = _count_prepared_at_once(detector, 2)
        assert all(d.ok for d in detector.detect(images))
    assert peak[0] == 2


def _count_prepared_at_once(detector: Detector, limit: int) -> list[int]:
    """Patch ``detector._prepare`` to count the images prepared at once; each waits a moment for
    one more than ``limit`` to join it, which the budget must prevent. Returns [peak], filled as
    the detector runs."""
    changed = threading.Condition()
    now, peak = [0], [0]
    prepare = detector._prepare

    def counted(*args):
        with changed:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
            changed.notify_all()
            changed.wait_for(lambda: now[0] > limit, timeout=NOT_ENTERED_S)
        try:
            return prepare(*args)
        finally:
            with changed:
                now[0] -= 1

    detector._prepare = counted
    return peak


def test_the_worker_count_is_checked_before_the_set_is_opened(tmp_path):
    for wrong in (0, -1, 2.0, "2", True):
        with pytest.raises(DfdError, match="prepare_workers must be None"):
            Detector.open(tmp_path / "no-such-set", prepare_workers=wrong)


def test_default_workers_on_open(tiny_engine_set):
    with Detector.open(tiny_engine_set, backend="onnxruntime") as detector:
        assert detector.prepare_workers == default_prepare_workers()


def test_the_next_batch_is_prepared_while_this_one_is_scored(tiny_engine_set, photographs):
    """The point of the threads: while the engines score batch 1, images of batch 2 are being
    prepared (the first scoring waits to see one start, and fails the test if none does)."""
    images = [photographs["coffee"]] * 4
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=2,
                       prepare_workers=2) as detector:
        prepare, score = detector._prepare, detector._score
        second_batch_started = threading.Event()
        overlapped: list[bool] = []

        def prepared(source, label, *args):
            if label in ("<array 2>", "<array 3>"):
                second_batch_started.set()
            return prepare(source, label, *args)

        def scored(batch):
            if not overlapped:
                overlapped.append(second_batch_started.wait(10))
            return score(batch)

        detector._prepare, detector._score = prepared, scored
        assert all(d.ok for d in detector.detect(images))
    assert overlapped == [True]


def test_detections_yields_each_batch_as_it_is_scored(tiny_engine_set, photographs):
    images = [photographs["coffee"], photographs["chelsea"], 42]
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=2) as detector:
        scored = detector.detections(images)
        first = next(scored)
        assert first.ok and detector._running  # in use until the iterator ends
        rest = list(scored)
        assert [d.ok for d in rest] == [True, False] and not detector._running
        with pytest.raises(DfdError, match="labels has 1 entries for 3 image"):
            detector.detections(images, labels=["x"])  # checked before anything is scored
        abandoned = detector.detections(images)
        next(abandoned)
        abandoned.close()
        assert not detector._running
    with pytest.raises(DfdError, match="this detector is closed"):
        detector.detections(images)


_DETECT_AT_EXIT = """
import atexit, sys
import numpy as np
from dfd.runtime.detector import Detector

detector = Detector.open(sys.argv[1], backend="onnxruntime", face_detection=False, prepare_workers=2)

@atexit.register
def score_at_exit():
    results = detector.detect([np.full((64, 64, 3), 90, np.uint8)] * 3)
    print(all(d.ok for d in results))
"""


def test_a_detect_from_an_exit_handler_prepares_in_its_own_thread(tiny_engine_set):
    """No thread can start once the interpreter shuts down: detect raised RuntimeError there."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _DETECT_AT_EXIT, str(tiny_engine_set)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"


def test_default_workers_stop_at_eight_and_fall_back_to_the_cpu_count(monkeypatch):
    """Many cores: still eight threads (each holds an image). No affinity call (macOS): the CPU
    count, or one where even that is unknown."""
    import dfd.runtime.preparation as preparation

    monkeypatch.setattr(preparation.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_prepare_workers() == 8
    monkeypatch.delattr(preparation.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(preparation.os, "cpu_count", lambda: 3)
    assert default_prepare_workers() == 3
    monkeypatch.setattr(preparation.os, "cpu_count", lambda: None)
    assert default_prepare_workers() == 1


def test_a_grey_array_and_a_jpeg_with_large_metadata_are_sized(tmp_path):
    """A 2-D (grey) array has its pixels too; a JPEG's size may follow 64 KB EXIF and ICC
    segments, which the header prefix must reach past."""
    assert estimated_pixels(np.zeros((4, 5), np.uint8)) == 20
    jpeg = cv2.imencode(".jpg", np.zeros((70, 20, 3), np.uint8))[1].tobytes()
    segment = b"\xff\xe2" + (0xFFFF).to_bytes(2, "big") + bytes(0xFFFF - 2)  # a full-size APP2 (ICC)
    padded = jpeg[:2] + segment * 2 + jpeg[2:]
    (tmp_path / "big-metadata.jpg").write_bytes(padded)
    assert estimated_pixels(padded) == 1400
    assert estimated_pixels(tmp_path / "big-metadata.jpg") == 1400



def test_a_size_past_the_header_prefix_is_unknown(tmp_path):
    """Sizing reads the first 256 KB, not the whole file: a JPEG whose size follows five 64 KB
    segments (320 KB) counts as unknown (the whole budget), from bytes as from its file."""
    jpeg = cv2.imencode(".jpg", np.zeros((70, 20, 3), np.uint8))[1].tobytes()
    segment = b"\xff\xe2" + (0xFFFF).to_bytes(2, "big") + bytes(0xFFFF - 2)
    (tmp_path / "far.jpg").write_bytes(jpeg[:2] + segment * 5 + jpeg[2:])
    assert estimated_pixels(jpeg[:2] + segment * 3 + jpeg[2:]) == 1400  # 192 KB: within reach
    assert estimated_pixels(jpeg[:2] + segment * 5 + jpeg[2:]) is None
    assert estimated_pixels(tmp_path / "far.jpg") is None

def test_a_fifo_is_not_read_for_its_header(tmp_path):
    """Bytes a writer put in a FIFO belong to whoever decodes it: sizing it must not take them."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        data = cv2.imencode(".png", np.zeros((3, 4, 3), np.uint8))[1].tobytes()
        os.write(writer, data)
        assert estimated_pixels(fifo) is None
        assert os.read(reader, len(data) + 1) == data
    finally:
        os.close(writer)
        os.close(reader)



def test_a_fifo_swapped_in_after_the_check_is_not_waited_on(tmp_path, monkeypatch):
    """A file replaced by a FIFO between the regular-file check and the open (here: a check that
    is told it is regular) must not leave the estimate waiting for a writer that never comes."""
    import dfd.runtime.preparation as preparation

    monkeypatch.setattr(preparation, "stat", types.SimpleNamespace(S_ISREG=lambda mode: True))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (estimated_pixels(fifo), done.set()), daemon=True)
    thread.start()
    try:
        assert done.wait(10), "estimated_pixels waited for a FIFO's writer"
    finally:
        if not done.is_set():  # release the thread's open
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)

def test_sizing_files_leaves_no_descriptor_open(tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((30, 50, 3), np.uint8))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        assert estimated_pixels(png) == 1500
    assert len(os.listdir("/proc/self/fd")) == before


class _WokenLateInThread(threading.Condition):
    """A condition where the thread named ``late`` is the last to act on its first wake-up: the
    others woken with it look at the queue while it is still there."""

    def __init__(self) -> None:
        super().__init__()
        self.delayed = False

    def wait(self, timeout=None):
        woken = super().wait(timeout)
        if threading.current_thread().name == "late" and not self.delayed:
            self.delayed = True
            super().wait(NOT_ENTERED_S)
        return woken


def test_the_next_in_line_is_woken_when_the_one_before_it_goes_in():
    """An image queued behind one that has just gone in may fit beside it: it must be told, not
    left waiting until some image leaves the budget."""
    budget = PixelBudget(100)
    budget._changed = _WokenLateInThread()
    small, head, behind = (threading.Event() for _ in range(3))
    leave_small, leave_rest = threading.Event(), threading.Event()
    holders = [_holder(budget, 30, small, leave_small)]
    assert small.wait(10)
    holders.append(_holder(budget, 90, head, leave_rest, name="late"))  # waits: 30 + 90 > 100
    deadline = time.monotonic() + 10
    while not budget._queue and time.monotonic() < deadline:  # queued first, however slow the machine
        time.sleep(0.01)
    assert len(budget._queue) == 1
    holders.append(_holder(budget, 10, behind, leave_rest))  # queued behind it
    assert not behind.wait(NOT_ENTERED_S)
    leave_small.set()  # wakes both; the one behind looks first and sees the large one still queued
    assert head.wait(10)
    assert behind.wait(10)  # 90 + 10 fit, while the large one still holds its share
    leave_rest.set()
    for thread in holders:
        thread.join(10)


class _InterruptedWait(threading.Condition):
    """A condition whose first wait is interrupted (a Ctrl-C in the thread that waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def wait(self, timeout=None):
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return super().wait(timeout)


def test_an_interrupted_wait_leaves_its_place_in_the_queue():
    """Otherwise every later image waits for ever behind an image that is no longer there."""
    budget = PixelBudget(100)
    budget._changed = _InterruptedWait()
    first, later = threading.Event(), threading.Event()
    leave_first, leave_later = threading.Event(), threading.Event()
    holder = _holder(budget, 100, first, leave_first)
    assert first.wait(10)
    with pytest.raises(KeyboardInterrupt):
        with budget.held(50):
            pass
    leave_first.set()
    holder.join(10)
    other = _holder(budget, 50, later, leave_later)
    assert later.wait(10)
    leave_later.set()
    other.join(10)


def test_one_job_runs_in_the_calling_thread_whatever_the_workers():
    threads: list[int] = []
    jobs = [(lambda: threads.append(threading.get_ident()) or 7, (np.zeros((2, 2, 3), np.uint8),))]
    assert list(prepared_in_order(jobs, 4, PixelBudget(100), ahead=8)) == [7]
    assert threads == [threading.get_ident()]


def test_the_look_ahead_starts_that_many_jobs_past_the_one_waited_for():
    """``ahead`` jobs past the one the caller waits for are under way (workers to spare)."""
    started = [threading.Event() for _ in range(8)]
    release = threading.Event()

    def job(index: int):
        def run() -> int:
            started[index].set()
            if index:
                release.wait(30)
            return index
        return run, ()

    iterator = prepared_in_order([job(i) for i in range(8)], 8, PixelBudget(10**9), ahead=3)
    try:
        assert next(iterator) == 0
        assert all(started[i].wait(10) for i in (1, 2, 3))
    finally:
        release.set()
        iterator.close()


def test_the_whole_next_batch_is_under_way_while_this_one_is_scored(tiny_engine_set, photographs):
    """With a thread per image of a batch, every image of the next batch has started by the
    time the first batch is scored, not only its first."""
    images = [photographs["coffee"]] * 6
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=2,
                       prepare_workers=2) as detector:
        prepare, score = detector._prepare, detector._score
        started = {label: threading.Event() for label in ("<array 2>", "<array 3>")}
        overlapped: list[bool] = []

        def prepared(source, label, *args):
            if label in started:
                started[label].set()
            return prepare(source, label, *args)

        def scored(batch):
            if not overlapped:
                overlapped.append(all(event.wait(10) for event in started.values()))
            return score(batch)

        detector._prepare, detector._score = prepared, scored
        assert all(d.ok for d in detector.detect(images))
    assert overlapped == [True]


def test_a_face_crop_counts_in_the_pixel_budget(tiny_engine_set, photographs):
    """An image and its face crop are decoded together: both count, or twice the memory is in
    flight. Image and crop of 60,000 pixels each, a budget of two images: two at once, not four."""
    image = cv2.resize(photographs["coffee"], (300, 200))
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, prepare_workers=4,
                       max_pixels=240_000) as detector:
        peak = _count_prepared_at_once(detector, 2)
        assert all(d.ok for d in detector.detect([image] * 4, face_crops=[image] * 4))
    assert peak[0] <= 2


@pytest.mark.parametrize("raised_in", ["scoring", "on_progress"])
def test_a_call_that_fails_waits_for_the_images_being_prepared(tiny_engine_set, photographs, raised_in):
    """The C ABI's images are views of the caller's memory, freed when the call returns: an
    error (here kept alive by its traceback) must not leave threads reading them."""
    images = [photographs["coffee"]] * 6
    with Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False, batch_size=2,
                       prepare_workers=2) as detector:
        held = HeldPreparations(detector._prepare, lambda source, label, *rest: label in ("<array 0>", "<array 1>"),
                                NOT_ENTERED_S)
        detector._prepare = held

        def fail(*args):
            assert held.started.wait(10)
            raise RuntimeError("stop here")

        if raised_in == "scoring":
            detector._score = fail
        with pytest.raises(RuntimeError, match="stop here") as raised:
            detector.detect(images, on_progress=fail if raised_in == "on_progress" else None)
        assert held.release.is_set() and held.running == 0
        del raised


def test_default_workers_fall_back_to_the_cpu_count_when_the_affinity_call_fails(monkeypatch):
    """Where the affinity call exists but fails (OSError), the CPU count is used, not the error."""
    import dfd.runtime.preparation as preparation

    def refused(pid):
        raise OSError("affinity not available")

    monkeypatch.setattr(preparation.os, "sched_getaffinity", refused, raising=False)
    monkeypatch.setattr(preparation.os, "cpu_count", lambda: 5)
    assert default_prepare_workers() == 5


class _TellsWhenWaiting(threading.Condition):
    """A condition that sets ``waiting`` when a thread starts waiting on it: a test knows a holder
    is queued without sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def test_an_image_leaving_gives_back_only_its_own_share():
    """60 and 40 held, the 40 leaves: the 60 still counts, so a 50 waits for it."""
    budget = PixelBudget(100)
    budget._changed = _TellsWhenWaiting()
    large, small, next_one = (threading.Event() for _ in range(3))
    leave_large, leave_small, leave_next = (threading.Event() for _ in range(3))
    holders = [_holder(budget, 60, large, leave_large), _holder(budget, 40, small, leave_small)]
    assert large.wait(10) and small.wait(10)
    assert not budget._changed.waiting.is_set()  # 60 + 40 fit: neither waited
    leave_small.set()
    holders[1].join(10)
    holders.append(_holder(budget, 50, next_one, leave_next))
    assert budget._changed.waiting.wait(10) and not next_one.is_set()  # 60 + 50 > 100
    leave_large.set()
    assert next_one.wait(10)
    leave_next.set()
    for thread in holders:
        thread.join(10)


def test_every_worker_prepares_at_once():
    """``workers`` threads: three jobs that each wait for the other two all finish (one thread
    fewer would leave them waiting, and the barrier breaks)."""
    barrier = threading.Barrier(3, timeout=10)

    def job(index: int):
        return (lambda: barrier.wait() is not None and index), ()

    assert list(prepared_in_order([job(i) for i in range(6)], 3, PixelBudget(10**9), ahead=8)) == list(range(6))
