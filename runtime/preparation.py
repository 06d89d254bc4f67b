"""Images prepared on threads while the engines score the batch before.

Why: preparing an image (decode, face localisation, preprocessing) is host work that costs far
more than the engines. On this project's 2-core CPU a 1280-1920 px photograph takes ~430 ms, most
of it the face cascade's non-local-means denoising of a face-free photo; the paper-size TensorRT
engines take a few milliseconds per image. Prepared one at a time, in the caller's thread and
between the batches, images leave a GPU idle nearly all the time. OpenCV and ONNX Runtime release
the GIL, so threads run this work on every core.

Results come back in the images' order and equal one-at-a-time preparation's: each image is
prepared by the same code on its own data. (Under OpenCV's default settings: OpenCV keeps some,
such as ``cv2.setUseOptimized``, per thread, and the preparation threads have the defaults.)

Memory: preparing an image holds a few copies of it (a face-free 64 MP photograph peaks at
1.3-1.5 GB). Preparations in flight therefore share a budget of pixels, the detector's
``max_pixels``: an image waits while others hold the budget, and one larger than the budget runs
alone, so this peak stays what one thread preparing the largest allowed image reaches. An image
whose size cannot be read cheaply from its header counts as the whole budget. What a prepared
image keeps until its batch is scored is small on the host path (its stream tensors, ~2 MB); on
the fused GPU path it is the decoded image, and the look-ahead holds up to ``batch_size +
workers - 1`` of them besides the batch being scored (one batch without threads).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

from .image_headers import read_header

Prepared = TypeVar("Prepared")

# More threads than this gain little (OpenCV's denoising and ONNX Runtime's sessions spread over
# the cores themselves) and hold more images in memory at once.
MAX_DEFAULT_WORKERS = 8
# Enough of a file for its header: a JPEG's size follows its EXIF and ICC segments (64 KB each)
HEADER_PREFIX_BYTES = 256 * 1024


def default_prepare_workers() -> int:
    """Threads that prepare images when the caller does not say: the cores this process may run
    on, at most ``MAX_DEFAULT_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity call
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


class PixelBudget:
    """Pixels of the images being prepared at once, at most ``capacity`` (one image larger than
    that is let through alone). First come, first served: an image that needs much of the budget
    is not passed over for ever by smaller ones arriving after it (a service's threads sharing a
    detector)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._in_use = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def held(self, pixels: int | None) -> Iterator[None]:
        """Hold ``pixels`` of the budget for the block (None: the whole budget)."""
        share = self.capacity if pixels is None else max(1, min(int(pixels), self.capacity))
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (self._in_use and self._in_use + share > self.capacity):
                    self._changed.wait()
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit beside this one
            self._in_use += share
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= share
                self._changed.notify_all()


def estimated_pixels(*sources: object) -> int | None:
    """Pixels the sources (an image and its face crop: paths, encoded bytes or arrays; None for
    no crop) decode to, read from their headers, or None when one cannot be told without
    decoding it. Never raises: decoding says what is wrong with an image."""
    total = 0
    for source in sources:
        if source is None:
            continue
        pixels = _pixels_of(source)
        if pixels is None:
            return None
        total += pixels
    return total


def _pixels_of(source: object) -> int | None:
    try:
        if isinstance(source, np.ndarray):
            return int(source.shape[0] * source.shape[1]) if source.ndim >= 2 else None
        if isinstance(source, (bytes, bytearray, memoryview)):
            header = read_header(bytes(memoryview(source)[:HEADER_PREFIX_BYTES]))
        elif isinstance(source, (str, os.PathLike)):
            header = read_header(_file_prefix(source))
        else:
            return None
    except Exception:  # noqa: BLE001 - a path-like whose __fspath__ raises: the decode reports it
        return None
    return header.width * header.height if header is not None else None


def _file_prefix(path: str | os.PathLike) -> bytes:
    """The first bytes of a regular file. Anything else is not opened: opening a FIFO would
    release a writer waiting for the decode (and reading it would take its bytes), and decoding
    refuses it anyway."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        return os.read(descriptor, HEADER_PREFIX_BYTES)
    finally:
        os.close(descriptor)


def prepared_in_order(jobs: Sequence[tuple[Callable[[], Prepared], Sequence[object]]], workers: int,
                      budget: PixelBudget, ahead: int) -> Iterator[Prepared]:
    """Each job's result, in order. A job is ``(prepare, sources)``: ``sources`` are the inputs it
    decodes, for the budget. Up to ``ahead`` jobs past the one the caller waits for are under
    way, so the next batch is prepared while the caller scores this one.

    The threads are this call's own (``workers`` at most, one per job at most), so callers sharing
    a detector do not queue behind each other's look-ahead; the budget is what they share. With
    one worker or one job, or once the interpreter is shutting down (no thread can start), each
    job runs in the caller's thread when its result is asked for, without the budget: one image
    at a time is its own limit. However the iteration ends (its end, an error or an interrupt in
    the caller), jobs not started are dropped and running ones are waited for, so nothing reads
    the caller's images after the call returns (the C ABI's are views of the caller's memory)."""
    threads = min(workers, len(jobs))
    pool = None
    if threads > 1:
        try:
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dfd-prepare")
            pool.submit(int).result()  # refused once the interpreter shuts down (an atexit handler)
        except RuntimeError:
            pool = None
    if pool is None:
        for prepare, _ in jobs:
            yield prepare()
        return

    def within_budget(prepare: Callable[[], Prepared], sources: Sequence[object]) -> Prepared:
        with budget.held(estimated_pixels(*sources)):
            return prepare()

    pending: deque[Future] = deque()
    submitted = 0
    try:
        for _ in range(len(jobs)):
            while submitted < len(jobs) and len(pending) <= ahead:
                prepare, sources = jobs[submitted]
                pending.append(pool.submit(within_budget, prepare, sources))
                submitted += 1
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
