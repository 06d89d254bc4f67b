"""The Python half of the C ABI (``libdfd_runtime.so``, built by ``dfd-export capi``).

The library's exported ``dfd_*`` functions are small C shims (see ``dfd.export.capi_build``):
they start the embedded interpreter, keep the thread-local last-error buffer and call the
``extern "Python"`` functions bound here by ``bind(ffi)``. Everything that needs judgement lives
here, in Python, so the C ABI and the Python API share one implementation:

* one ``Detector`` per opened handle, shared by every thread that calls with it (``detect``
  keeps no state between calls);
* ``dfd_image`` buffers become NumPy views of the caller's memory (row stride honoured, BGR
  read reversed), so the only copy is the one the Detector makes to get contiguous RGB;
* every exception becomes a ``dfd_status`` and a message written into the caller's thread's
  error buffer. Nothing escapes into C: each bound function catches ``Exception`` itself, and
  ``def_extern(error=DFD_E_INTERNAL)`` is the last net.

Handles are opaque keys, never dereferenced: a salted counter rather than an address, so a
nonsense pointer or a use after ``dfd_close`` is recognised and refused instead of crashing or
silently reaching a later detector that reused the address.

This module imports neither cffi nor torch: the ``ffi`` object comes from the compiled library.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import BACKEND_CHOICES, BackendError
from .detector import Detection, Detector
from .errors import DfdError
from .face_detection import SMALLEST_FACE_PX
from .images import ImageError, silence_opencv_log
from .manifest import EngineSetError

DFD_OK = 0
DFD_E_INVALID_ARGUMENT = 1
DFD_E_IO = 2
DFD_E_ENGINE = 3
DFD_E_IMAGE = 4
DFD_E_INTERNAL = 5

DFD_PIXEL_RGB8 = 0
DFD_PIXEL_BGR8 = 1
PIXEL_FORMAT_NAMES = {DFD_PIXEL_RGB8: "DFD_PIXEL_RGB8", DFD_PIXEL_BGR8: "DFD_PIXEL_BGR8"}

# dfd_result.stream_prob[i] holds the raw P(fake) of STREAM_SLOTS[i]
STREAM_SLOTS = ("global", "face", "fusion")


class CapiArgumentError(DfdError, ValueError):
    """A C caller passed NULL or nonsense; maps to DFD_E_INVALID_ARGUMENT."""


def status_of(exc: BaseException) -> tuple[int, str]:
    """The ``dfd_status`` and the message for an exception raised while serving a call."""
    if isinstance(exc, (EngineSetError, BackendError)):
        return DFD_E_ENGINE, str(exc)
    if isinstance(exc, ImageError):
        return DFD_E_IMAGE, str(exc)
    if isinstance(exc, DfdError):  # every other user-caused error: the arguments were wrong
        return DFD_E_INVALID_ARGUMENT, str(exc)
    if isinstance(exc, OSError):
        return DFD_E_IO, f"input/output error: {exc}"
    return DFD_E_INTERNAL, f"internal error in the dfd runtime (a bug; please report it): {type(exc).__name__}: {exc}"


@dataclass
class _OpenDetector:
    """A handle's Detector and the calls running on it; ``closing`` once ``dfd_close`` forgot it."""

    detector: Detector
    calls: int = 0
    closing: bool = False


class _Handles:
    """Open detectors by opaque key. Thread-safe; keys are never reused within a process.

    ``dfd_close`` forgets a key at once (later calls with it are refused) and closes its Detector
    when the last call still running on it returns, so its GPU buffers and threads are released
    then rather than whenever the garbage collector gets to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, _OpenDetector] = {}
        # 16-aligned, high bits random: no small or typical garbage pointer value is a key
        self._next = (secrets.randbits(40) << 16) | 0x10

    def add(self, detector: Detector) -> int:
        with self._lock:
            key = self._next
            self._next += 0x10
            self._open[key] = _OpenDetector(detector)
            return key

    @contextmanager
    def using(self, key: int) -> Iterator[Detector]:
        """The Detector of ``key`` for the length of one call; it stays open until the call ends."""
        if key == 0:
            raise CapiArgumentError("detector is NULL; open one with dfd_open first")
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                raise CapiArgumentError(f"detector {key:#x} is not open (already closed, or not a "
                                        f"pointer that dfd_open returned)")
            entry.calls += 1
        try:
            yield entry.detector
        finally:
            with self._lock:
                entry.calls -= 1
                last = entry.closing and entry.calls == 0
            if last:
                _close_after_last_call(entry.detector)

    def remove(self, key: int) -> None:
        """Forget ``key``; close its Detector now, or when the calls still running on it end."""
        with self._lock:
            entry = self._open.pop(key, None)
            if entry is None:
                raise CapiArgumentError(f"dfd_close: detector {key:#x} is not open (closed twice, "
                                        f"or not a pointer that dfd_open returned)")
            entry.closing = True
            idle = entry.calls == 0
        if idle:
            entry.detector.close()


def _close_after_last_call(detector: Detector) -> None:
    """Close a detector that ``dfd_close`` left to the last call running on it. A failure here
    belongs to no caller (that call's own result stands, and dfd_close has returned), so it is
    written to stderr rather than lost."""
    try:
        detector.close()
    except Exception as exc:
        sys.stderr.write(f"dfd runtime: releasing a closed detector failed: {type(exc).__name__}: {exc}\n")


_handles = _Handles()


def _c_text(message: str, size: int) -> bytes:
    """``message`` as UTF-8 cut on a character to leave room for the NUL in ``size`` bytes."""
    encoded = message.encode("utf-8", "replace")[:size - 1]
    return encoded.decode("utf-8", "ignore").encode("utf-8")  # drop a split last character


def write_c_string(ffi: Any, buffer: Any, size: int, message: str) -> None:
    """Copy ``message`` as NUL-terminated UTF-8 into a caller's buffer, cut on a character."""
    if buffer == ffi.NULL or size <= 0:
        return
    encoded = _c_text(message, size)
    ffi.memmove(buffer, encoded + b"\0", len(encoded) + 1)


def set_result_message(result: Any, message: str) -> None:
    """Fill ``dfd_result.message`` whole (zero-padded), so equal results compare equal bytewise."""
    size = len(result.message)
    result.message = _c_text(message, size).ljust(size, b"\0")


def report_failure(ffi: Any, error: Any, error_size: int, exc: BaseException) -> int:
    """Write the message of ``exc`` into the caller's error buffer; returns its ``dfd_status``."""
    status, message = status_of(exc)
    write_c_string(ffi, error, error_size, message)
    return status


def _key(ffi: Any, detector: Any) -> int:
    return int(ffi.cast("uintptr_t", detector))


def _text_argument(ffi: Any, pointer: Any, what: str) -> str:
    if pointer == ffi.NULL:
        raise CapiArgumentError(f"{what} is NULL")
    return os.fsdecode(ffi.string(pointer))


def image_array(ffi: Any, image: Any, index: int) -> np.ndarray:
    """A uint8 HxWx3 RGB view of the caller's ``dfd_image`` (no copy; BGR as a reversed view)."""
    where = f"images[{index}]"
    width, height, stride = image.width, image.height, image.stride_bytes
    if image.data == ffi.NULL:
        raise CapiArgumentError(f"{where}.data is NULL")
    if width <= 0 or height <= 0:
        raise CapiArgumentError(f"{where} has size {width}x{height}; width and height must be positive")
    if stride < width * 3:
        raise CapiArgumentError(f"{where}.stride_bytes is {stride}, less than width*3 = {width * 3} "
                                f"(3 bytes per pixel, rows may only be padded)")
    pixel_format = int(image.format)
    if pixel_format >= 2**31:  # the enum reads back unsigned: show the caller's negative value
        pixel_format -= 2**32
    if pixel_format not in PIXEL_FORMAT_NAMES:
        raise CapiArgumentError(f"{where}.format is {pixel_format}, not a dfd_pixel_format "
                                f"(DFD_PIXEL_RGB8 = 0, DFD_PIXEL_BGR8 = 1)")
    # the last row needs only its pixels, not a full stride: callers may pass tight crops
    size = stride * (height - 1) + width * 3
    flat = np.frombuffer(ffi.buffer(image.data, size), dtype=np.uint8)
    pixels = np.lib.stride_tricks.as_strided(flat, shape=(height, width, 3), strides=(stride, 3, 1),
                                             writeable=False)
    return pixels[:, :, ::-1] if pixel_format == DFD_PIXEL_BGR8 else pixels


class RefusedDescriptor(Detection):
    """An image whose ``dfd_image`` or ``dfd_face`` held nonsense (NULL data, a size or stride
    that cannot be, an unknown format or ``given``): refused before scoring, with
    DFD_E_INVALID_ARGUMENT in its own result, while the rest of the batch is scored."""


def fill_result(result: Any, detection: Detection) -> int:
    """Write one Detection into a ``dfd_result``; returns its status."""
    if not detection.ok:
        status = (DFD_E_INVALID_ARGUMENT if isinstance(detection, RefusedDescriptor)
                  else DFD_E_IO if detection.file_unreadable else DFD_E_IMAGE)
        return mark_failed(result, status, detection.error)
    result.score = detection.score
    for slot, stream in enumerate(STREAM_SLOTS):
        result.stream_prob[slot] = detection.streams.get(stream, math.nan)
    box = (detection.face or {}).get("box")
    result.face_found = int(box is not None)
    result.face_box = list(box) if box is not None else [0.0, 0.0, 0.0, 0.0]
    result.status = DFD_OK
    set_result_message(result, "\n".join(detection.notes))  # a note may hold "; ", never a newline
    return DFD_OK


def mark_failed(result: Any, status: int, message: str) -> int:
    """A result that was not scored: NaN scores, no face, its status and why."""
    result.score = math.nan
    result.stream_prob = [math.nan] * len(STREAM_SLOTS)
    result.face_found = 0
    result.face_box = [0.0, 0.0, 0.0, 0.0]
    result.status = status
    set_result_message(result, message)
    return status


def open_detector(ffi: Any, engine_dir: Any, backend: Any, out: Any, error: Any, error_size: int) -> int:
    """``dfd_open``: verify and open an engine set; ``*out`` is NULL unless it succeeds."""
    return _open(ffi, out, error, error_size, lambda: Detector.open(
        _text_argument(ffi, engine_dir, "dfd_open: engine_dir"), backend=_backend_argument(ffi, backend, "dfd_open")))


def open_detector_with(ffi: Any, engine_dir: Any, options: Any, out: Any, error: Any, error_size: int) -> int:
    """``dfd_open_with``: ``dfd_open`` with a ``dfd_options`` (NULL: the defaults)."""
    def run() -> Detector:
        folder = _text_argument(ffi, engine_dir, "dfd_open_with: engine_dir")
        if options == ffi.NULL:
            return Detector.open(folder)
        return Detector.open(folder, **detector_options(ffi, options))

    return _open(ffi, out, error, error_size, run)


def detector_options(ffi: Any, options: Any) -> dict[str, Any]:
    """``Detector.open`` keyword arguments from a ``dfd_options``, every field checked."""
    expected = ffi.sizeof("dfd_options")
    if options.struct_size != expected:
        raise CapiArgumentError(
            f"dfd_open_with: options.struct_size is {options.struct_size}, not sizeof(dfd_options) = {expected}: "
            f"fill the options with dfd_options_init first (or rebuild against this library's dfd_runtime.h)")
    flags = {}
    for field in ("face_detection", "gpu_preprocessing", "face_cascade"):
        value = int(getattr(options, field))
        if value not in (0, 1):
            raise CapiArgumentError(f"dfd_open_with: options.{field} is {value}; it must be 0 or 1")
        flags[field] = bool(value)
    batch_size, graph_batch = int(options.batch_size), int(options.cuda_graph_batch)
    if batch_size < 1:
        raise CapiArgumentError(f"dfd_open_with: options.batch_size is {batch_size}; it must be at least 1")
    if graph_batch < 0:
        raise CapiArgumentError(f"dfd_open_with: options.cuda_graph_batch is {graph_batch}; "
                                f"it must be 0 (no graph) or a batch size")
    face_min_px = float(options.face_min_px)
    if not math.isfinite(face_min_px) or face_min_px < 0 or 0 < face_min_px < SMALLEST_FACE_PX:
        raise CapiArgumentError(f"dfd_open_with: options.face_min_px is {face_min_px:g}; it must be 0 "
                                f"(the 192-pixel pass only) or a face size of at least {SMALLEST_FACE_PX:g} pixels")
    max_pixels = int(options.max_pixels)
    if max_pixels < 1:
        raise CapiArgumentError(f"dfd_open_with: options.max_pixels is {max_pixels}; it must be at least 1 "
                                f"(dfd_options_init sets the default)")
    return {"backend": _backend_argument(ffi, options.backend, "dfd_open_with: options"), "batch_size": batch_size,
            "face_min_px": face_min_px or None, "cuda_graph_batch": graph_batch or None, "max_pixels": max_pixels,
            **flags}


def _backend_argument(ffi: Any, backend: Any, where: str) -> str:
    name = "auto" if backend == ffi.NULL else _text_argument(ffi, backend, f"{where} backend")
    if name not in BACKEND_CHOICES:
        raise CapiArgumentError(f"{where}: unknown backend {name!r}; choose from "
                                f"{', '.join(BACKEND_CHOICES)} (NULL means auto)")
    return name


def _open(ffi: Any, out: Any, error: Any, error_size: int, run: Callable[[], Detector]) -> int:
    """Open a Detector with ``run`` and store its handle in ``*out``; ``*out`` stays NULL on failure."""
    try:
        if out == ffi.NULL:
            raise CapiArgumentError("out is NULL; pass the address of a dfd_detector pointer")
        out[0] = ffi.NULL
        out[0] = ffi.cast("dfd_detector *", _handles.add(run()))
        return DFD_OK
    except Exception as exc:
        return report_failure(ffi, error, error_size, exc)


def describe_detector(ffi: Any, detector: Any, buffer: Any, size: int, error: Any, error_size: int) -> int:
    """``dfd_describe``: the backend (and why) and where preprocessing and the vote run."""
    try:
        if buffer == ffi.NULL or size <= 0:
            raise CapiArgumentError("dfd_describe: buffer is NULL or size is 0")
        with _handles.using(_key(ffi, detector)) as opened:
            write_c_string(ffi, buffer, size, f"backend: {opened.backend_reason}; "
                                           f"preprocessing and vote: {opened.preprocessing}; "
                                           f"face localisation: {opened.face_localisation}")
        return DFD_OK
    except Exception as exc:
        return report_failure(ffi, error, error_size, exc)


def detect_images(ffi: Any, detector: Any, images: Any, faces: Any, count: int, results: Any,
                  error: Any, error_size: int) -> int:
    """``dfd_detect`` / ``dfd_detect_faces``: score ``count`` decoded images in one batch, with the
    caller's face boxes when ``faces`` is not NULL.

    Returns DFD_OK when every image was scored; DFD_E_IMAGE when some could not be (their
    results say so, the others are scored), a descriptor with nonsense in it included; a
    call-level status when the call itself was wrong and nothing was scored.
    """
    return _serve(ffi, error, error_size, results, count,
                  lambda: _detect_images(ffi, detector, images, faces, count, results))


def _detect_images(ffi: Any, detector: Any, images: Any, faces: Any, count: int, results: Any) -> list[Detection]:
    where = "dfd_detect_faces" if faces != ffi.NULL else "dfd_detect"
    if count < 0:
        raise CapiArgumentError(f"{where}: count is {count}; it must be 0 or more")
    if count > 0 and results == ffi.NULL:
        raise CapiArgumentError(f"{where}: results is NULL for {count} image(s)")
    if count > 0 and images == ffi.NULL:
        raise CapiArgumentError(f"{where}: images is NULL for {count} image(s)")
    with _handles.using(_key(ffi, detector)) as opened:
        arrays, boxes, refused = [], [], {}
        for i in range(count):
            try:
                array = image_array(ffi, images[i], i)
                box = None if faces == ffi.NULL else face_box(faces[i], f"faces[{i}]")
            except CapiArgumentError as exc:  # this descriptor's nonsense sinks only its own image
                refused[i] = RefusedDescriptor(f"images[{i}]", error=str(exc))
                continue
            arrays.append(array)
            boxes.append(box)
        scored = iter(opened.detect(arrays, face_boxes=None if faces == ffi.NULL else boxes) if arrays else [])
        return [refused[i] if i in refused else next(scored) for i in range(count)]


def face_box(face: Any, where: str) -> tuple[float, float, float, float] | None:
    """The box of a ``dfd_face``, or None when the caller gave none. Only ``given`` is checked
    here: the box itself is the image's data, judged by the Detector (a bad one fails its image)."""
    given = int(face.given)
    if given not in (0, 1):
        raise CapiArgumentError(f"{where}.given is {given}; it must be 1 (box holds the face) or 0 (no box)")
    return tuple(float(v) for v in face.box) if given else None


def detect_file(ffi: Any, detector: Any, path: Any, face: Any, result: Any, error: Any, error_size: int) -> int:
    """``dfd_detect_file`` / ``dfd_detect_file_face``: decode and score one image file, exactly as
    ``dfd-export detect``, with the caller's face box when ``face`` is not NULL."""
    return _serve(ffi, error, error_size, result, 1, lambda: _detect_file(ffi, detector, path, face, result))


def _detect_file(ffi: Any, detector: Any, path: Any, face: Any, result: Any) -> list[Detection]:
    where = "dfd_detect_file_face" if face != ffi.NULL else "dfd_detect_file"
    if result == ffi.NULL:
        raise CapiArgumentError(f"{where}: result is NULL")
    with _handles.using(_key(ffi, detector)) as opened:
        name = _text_argument(ffi, path, f"{where}: path")
        if not name:
            raise CapiArgumentError(f"{where}: path is empty")
        box = None if face == ffi.NULL else face_box(face[0], "face")
        return opened.detect([name], face_boxes=[box])


def detect_encoded(ffi: Any, detector: Any, data: Any, size: int, face: Any, result: Any, error: Any,
                   error_size: int) -> int:
    """``dfd_detect_encoded``: decode and score one image file's bytes held by the caller, exactly
    as ``dfd_detect_file`` scores that file under its format's usual suffix (the Detector reads the
    format from the bytes; a path's face re-encode follows its suffix)."""
    return _serve(ffi, error, error_size, result, 1,
                  lambda: _detect_encoded(ffi, detector, data, size, face, result))


def _detect_encoded(ffi: Any, detector: Any, data: Any, size: int, face: Any, result: Any) -> list[Detection]:
    if result == ffi.NULL:
        raise CapiArgumentError("dfd_detect_encoded: result is NULL")
    with _handles.using(_key(ffi, detector)) as opened:
        if data == ffi.NULL and size > 0:
            raise CapiArgumentError(f"dfd_detect_encoded: data is NULL for {size} bytes")
        if size > sys.maxsize:  # no buffer in this process holds that many: a wrong size argument
            raise CapiArgumentError(f"dfd_detect_encoded: size is {size} bytes, more than a process can address")
        box = None if face == ffi.NULL else face_box(face[0], "face")
        encoded = memoryview(ffi.buffer(data, size)) if size else b""
        return opened.detect([encoded], face_boxes=[box])


def _serve(ffi: Any, error: Any, error_size: int, results: Any, count: int,
           run: Callable[[], list[Detection]]) -> int:
    """Run a detect call, fill the results and turn every outcome into a status and a message."""
    try:
        detections = run()
    except Exception as exc:
        status, message = status_of(exc)
        write_c_string(ffi, error, error_size, message)
        if results != ffi.NULL and 0 < count:
            for i in range(count):
                mark_failed(results[i], status, message)
        return status
    failures = []
    for i, detection in enumerate(detections):
        if fill_result(results[i], detection) != DFD_OK:
            named = len(detections) == 1 or isinstance(detection, RefusedDescriptor)  # "images[i]..." already
            failures.append(detection.error if named else f"image {i}: {detection.error}")
    if not failures:
        return DFD_OK
    more = f" (and {len(failures) - 1} more failed image(s))" if len(failures) > 1 else ""
    write_c_string(ffi, error, error_size, failures[0] + more)
    # a file that cannot be read (dfd_detect_file, one image) is the call's I/O error, as its result's;
    # any other failed image, a refused descriptor's too, leaves the call DFD_E_IMAGE
    return DFD_E_IO if len(detections) == 1 and detections[0].file_unreadable else DFD_E_IMAGE


def close_detector(ffi: Any, detector: Any, error: Any, error_size: int) -> int:
    """``dfd_close``: forget a handle; its Detector is closed once no call is using it."""
    try:
        _handles.remove(_key(ffi, detector))
        return DFD_OK
    except Exception as exc:
        return report_failure(ffi, error, error_size, exc)


def bind(ffi: Any) -> None:
    """Attach the implementations to the library's ``extern "Python"`` declarations, and keep
    OpenCV's own log lines out of the service's stderr (each result's message carries the cause)."""
    silence_opencv_log()
    bindings = {
        "dfd_py_open": open_detector,
        "dfd_py_detect": detect_images,
        "dfd_py_detect_file": detect_file,
        "dfd_py_detect_encoded": detect_encoded,
        "dfd_py_close": close_detector,
        "dfd_py_open_with": open_detector_with,
        "dfd_py_describe": describe_detector,
    }
    for name, implementation in bindings.items():
        def call(*args: Any, _implementation: Callable[..., int] = implementation) -> int:
            return _implementation(ffi, *args)

        ffi.def_extern(name=name, error=DFD_E_INTERNAL)(call)
