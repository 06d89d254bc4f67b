"""The Python API of the lean runtime: ``Detector.open(engine_dir).detect(images)``.

One decode per image, the reference's preprocessing per stream, the three streams batched on
the chosen backend, then the reference's discretised vote. A bad image becomes a ``Detection``
with ``error`` set; the rest of the batch goes on. ``detect`` keeps no state between calls, so
one Detector may be used from several threads at once (the backends' ``run`` is thread-safe).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .backends import BackendChoice, BackendError, check_backend_name, select_backend
from .errors import DfdError, attempt_release, raise_held
from .face_detection import (
    ALL_STRATEGIES,
    DEFAULT_MIN_FACE_PX,
    DEFAULT_SCORE_THRESHOLD,
    SMALLEST_FACE_PX,
    SMALL_FACE_THRESHOLDS,
    FaceLocator,
    onnxruntime_detector,
)
from .gpu_pipeline import FusedInput, FusedResult, GpuPipeline
from .images import DEFAULT_MAX_PIXELS, DecodedImage, ImageError, ImageFileError, decode_image, encoded_suffix
from .manifest import STREAM_ORDER, Manifest, StreamEntry, load_manifest
from .mtcnn import MtcnnDetector, onnxruntime_mtcnn
from .preparation import MAX_DEFAULT_WORKERS, PixelBudget, default_prepare_workers, prepared_in_order
from .preprocess import (
    FACE_BOX_REACH,
    FACE_CROP_SIZE,
    FACE_REENCODE_SUFFIXES,
    PreprocessError,
    box_corners,
    center_crop_notes,
    crop_face,
    face_is_too_small,
    face_window,
    preprocess_face,
    preprocess_fusion,
    preprocess_global,
    reencode_like_reference_face_file,
    resize_fusion_notes,
)
from .vote import VoteError, discretised_vote, one_decimal, softmax_fake_probability

ImageInput = Union[str, os.PathLike, bytes, np.ndarray]
Box = Sequence[float]
DEFAULT_BATCH_SIZE = 8
NO_FACE_NOTE = "face stream: no face input, the original image is used (the reference's no-face rule)"
NO_FACE_FOUND_NOTE = "face stream: no face found, the original image is used (reference rule)"
SMALL_FACE_NOTE = "face stream: the face covers under 1/9 of the image, the original image is used (reference rule)"
# the notes that say where the face stream's image came from, which Detection.face records too
FACE_INPUT_NOTES = frozenset({NO_FACE_NOTE, NO_FACE_FOUND_NOTE, SMALL_FACE_NOTE})


@dataclass
class Detection:
    """The result for one image. ``error`` is None when it was scored."""

    image: str
    score: float | None = None  # the discretised vote, one of 0.0 .. 1.0
    raw_score: float | None = None  # weighted mean of the unrounded stream probabilities
    streams: dict[str, float] = field(default_factory=dict)  # raw P(fake) per stream
    rounded_streams: dict[str, float] = field(default_factory=dict)
    face: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    # the error is the file's own (missing, not a regular file, no permission, an I/O error), not
    # its content's: the C ABI's DFD_E_IO. Not part of the output record (to_dict)
    file_unreadable: bool = field(default=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        del record["file_unreadable"]
        return record


@dataclass
class PreparedImage:
    """One decoded image: its (not yet scored) Detection and what its streams take, either as
    float32 CHW tensors (host preprocessing) or as uint8 images for the fused GPU path."""

    detection: Detection
    tensors: dict[str, np.ndarray]
    fused: FusedInput | None = None


def _label(source: ImageInput, index: int | None = None) -> str:
    """How results name an input: its path, or its kind and (for an image) position in the call
    (also for a path-like object whose ``__fspath__`` fails: that is its image's error, not the
    call's)."""
    position = "" if index is None else f" {index}"
    if isinstance(source, (str, os.PathLike)):
        try:
            return os.fsdecode(source)
        except Exception:  # noqa: BLE001 - a caller's __fspath__ may raise anything
            return f"<{type(source).__name__}{position}>"
    if isinstance(source, np.ndarray):
        return f"<array{position}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<image bytes{position}>"
    return f"<{type(source).__name__}{position}>"


def _lossy_suffix(source: ImageInput) -> str:
    """The suffix of the file the reference's face step would re-save ``source`` under (bytes: by
    their content, ".jpg" for JPEG)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(os.fsdecode(source)).suffix
    if isinstance(source, (bytes, bytearray, memoryview)):
        return encoded_suffix(bytes(source[:12]))
    return ""


def _check_given_box(box: Box, image_hw: tuple[int, int], detection: Detection) -> None:
    """A caller's box must hold four finite corners and touch the image: a box wholly outside it
    is a coordinate mistake (normalised or another image's coordinates), and cropping it would
    feed the face stream black padding. A box mostly outside the image is cropped, as the
    reference would, with a note (`_padding_note`)."""
    x1, y1, x2, y2 = box_corners(box)
    height, width = image_hw
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise PreprocessError(f"face box {tuple(box)} lies outside the {width}x{height} image "
                              f"(boxes are x1, y1, x2, y2 in pixels of the image)")
    if max(x2, y2) <= 1 and width * height > 9:  # the whole box in one pixel: under 1/9 of such an image
        raise PreprocessError(f"face box {tuple(box)} lies within [0, 1], a fraction of the {width}x{height} image's "
                              f"sides rather than pixels (boxes are x1, y1, x2, y2 in pixels of the image)")


def _padding_note(box: Box, image_hw: tuple[int, int]) -> str | None:
    """A note when under half of a face box lies inside its image, so that its crop is mostly black
    padding. The face cascade's padded step finds such a box for a face cut by the image's edge,
    reaching up to `FACE_BOX_REACH` beyond it; a box reaching further is most likely a coordinate
    mistake (those of a resized copy), and the note asks. Detected and given boxes get the same
    note, so that detect's output, read back as a face-box file, reproduces its run."""
    x1, y1, x2, y2 = box_corners(box)
    height, width = image_hw
    area = (x2 - x1) * (y2 - y1)
    inside = (min(x2, width) - max(x1, 0.0)) * (min(y2, height) - max(y1, 0.0))
    if not area > 0 or inside >= area / 2:
        return None
    reach = FACE_BOX_REACH * max(width, height)
    within_reach = x1 >= -reach and y1 >= -reach and x2 <= width + reach and y2 <= height + reach
    why = ("as for a face cut by the image's edge" if within_reach
           else "are the coordinates for another size of this image?")
    return (f"face stream: only {int(100 * inside / area)}% of the face box lies inside the {width}x{height} image, "
            f"so its crop is mostly black padding ({why})")


def _usable_box(decoded: DecodedImage, box: Box, detection: Detection) -> Box | None:
    """The reference's rule for a face box in pixels of the full-size image: the box to crop in
    pixels of ``decoded`` (scaled when a JPEG was decoded reduced), or None (the original image)
    when it covers under 1/9 of the image; records which in ``detection``."""
    if face_is_too_small(box, decoded.full_size_hw):
        detection.face["used"] = "original image"
        detection.notes.append(SMALL_FACE_NOTE)
        return None
    padding = _padding_note(box, decoded.full_size_hw)
    if decoded.reduction > 1:
        box = [float(v) / decoded.reduction for v in box]
        height, width = decoded.full_size_hw
        detection.notes.append(f"face stream: the face box, in pixels of the full-size {width}x{height} image, "
                               f"is cropped from the 1/{decoded.reduction} decode")
    face_window(box, image_hw=decoded.rgb.shape[:2])  # a box too small or too large to crop fails on either path
    if padding is not None:
        detection.notes.append(padding)
    detection.face["used"] = "crop"
    return box


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_options(batch_size: object, face_detection: object, face_min_px: object, gpu_preprocessing: object,
                   cuda_graph_batch: object, face_cascade: object, max_pixels: object,
                   prepare_workers: object) -> None:
    """Refuse option values before anything is opened: a float batch size used to pass and fail
    on the first ``detect``, and ``face_detection="no"`` (truthy) turned detection on."""
    if not _is_int(batch_size) or batch_size < 1:
        raise DfdError(f"batch size must be an integer of at least 1, got {batch_size!r}")
    for name, flag in (("face_detection", face_detection), ("gpu_preprocessing", gpu_preprocessing),
                       ("face_cascade", face_cascade)):
        if not isinstance(flag, (bool, np.bool_)):
            raise DfdError(f"{name} must be True or False, got {flag!r}")
    if face_min_px is not None and (not isinstance(face_min_px, (int, float, np.integer, np.floating))
                                    or isinstance(face_min_px, (bool, np.bool_)) or not math.isfinite(face_min_px)):
        raise DfdError(f"face_min_px must be a number of pixels or None, got {face_min_px!r}")
    if face_min_px is not None and face_min_px < SMALLEST_FACE_PX:  # before a paper-size set is hashed
        raise DfdError(f"face_min_px must be None (the letterbox pass only) or at least {SMALLEST_FACE_PX:g} "
                       f"pixels, MTCNN's smallest window (a smaller face is found only in an upscaled image), "
                       f"got {face_min_px!r}")
    if not _is_int(max_pixels) or max_pixels < 1:
        raise DfdError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if prepare_workers is not None and (not _is_int(prepare_workers) or prepare_workers < 1):
        raise DfdError(f"prepare_workers must be None (one per core, at most {MAX_DEFAULT_WORKERS}) or a "
                       f"number of threads of at least 1, got {prepare_workers!r}")
    if cuda_graph_batch is not None and not (_is_int(cuda_graph_batch) and 1 <= cuda_graph_batch <= batch_size):
        raise DfdError(f"a CUDA graph for batches of {cuda_graph_batch!r} would never replay: the detector "
                       f"runs at most batch_size = {batch_size} images at a time (give a graph batch "
                       f"from 1 to the batch size)")


class Detector:
    """An opened engine set. Create with ``Detector.open``."""

    def __init__(self, manifest: Manifest, choice: BackendChoice, batch_size: int = DEFAULT_BATCH_SIZE,
                 face_detection: bool = True, face_min_px: float | None = DEFAULT_MIN_FACE_PX,
                 gpu_preprocessing: bool = True, cuda_graph_batch: int | None = None,
                 face_cascade: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                 prepare_workers: int | None = None) -> None:
        _check_options(batch_size, face_detection, face_min_px, gpu_preprocessing, cuda_graph_batch,
                       face_cascade, max_pixels, prepare_workers)
        self.manifest = manifest
        self.backend = choice.backend
        self.backend_reason = choice.reason
        self.batch_size = int(batch_size)
        self.max_pixels = int(max_pixels)
        self.streams = tuple(s for s in STREAM_ORDER if s in manifest.streams)
        self.vote_weights = {s: manifest.vote_weights[s] for s in self.streams}
        prep = manifest.preprocessing
        self._mean, self._std = tuple(prep["mean"]), tuple(prep["std"])
        self._sizes = {s: manifest.streams[s].input_size for s in self.streams}
        # a set without the face stream locates no face: BlazeFace and its cascade would run for nothing
        self.face_locator = (self._open_face_locator(face_min_px, face_cascade)
                             if face_detection and "face" in self.streams else None)
        self.face_localisation = self._describe_face_localisation(face_detection)
        self.fused: GpuPipeline | None = None
        self._preprocessing = "host (NumPy/OpenCV)"
        if gpu_preprocessing:
            self._open_fused_path(cuda_graph_batch)
        elif cuda_graph_batch:
            raise DfdError("a CUDA graph needs the fused GPU path, which host preprocessing "
                           "(--host-preprocessing, gpu_preprocessing=False) turns off")
        self._pool = ThreadPoolExecutor(max_workers=len(self.streams), thread_name_prefix="dfd-stream")
        self.prepare_workers = int(prepare_workers) if prepare_workers is not None else default_prepare_workers()
        self._pixel_budget = PixelBudget(self.max_pixels)  # shared by the calls' preparation threads
        self.closed = False
        # public calls in progress, per thread: close waits for them, or leaves the release to them
        self._users = threading.Condition()
        self._running: Counter[int] = Counter()
        self._release_lock = threading.Lock()  # one release, which every closer waits for
        self._released = False
        self._opened_in = os.getpid()  # a fork() child has this memory, not the threads it uses

    @property
    def preprocessing(self) -> str:
        """Where images are preprocessed and voted (host or fused kernels, and why), with the reason
        CUDA graphs were given up once a capture failed."""
        problem = self.fused.capture_problem if self.fused is not None else None
        return f"{self._preprocessing}; {problem}" if problem else self._preprocessing

    @property
    def backend_has_fused_path(self) -> bool:
        """Whether the backend has a fused GPU path at all (TensorRT's), used or not: where it has
        none, host preprocessing is not a choice but the only way."""
        return getattr(self.backend, "fused_pipeline", None) is not None

    def _open_fused_path(self, cuda_graph_batch: int | None) -> None:
        """Use the backend's fused GPU path (preprocessing and vote kernels) when it has one."""
        if not self.backend_has_fused_path:
            if cuda_graph_batch:
                raise BackendError(f"a CUDA graph needs the tensorrt backend; this detector runs on "
                                   f"{self.backend.name}")
            return
        try:
            self.fused = self.backend.fused_pipeline(self.vote_weights, self.manifest.preprocessing, self._sizes,
                                                     cuda_graph_batch)
        except DfdError as exc:  # no NVRTC or GPU, or engines the kernels cannot feed
            if cuda_graph_batch:
                raise BackendError(f"a CUDA graph needs the fused GPU path, which is unavailable: {exc}") from exc
            self._preprocessing = f"host (NumPy/OpenCV); the fused GPU path is unavailable: {exc}"
            return
        self._preprocessing = "fused CUDA kernels (preprocessing and vote)" + (
            f", CUDA graph for batches of {cuda_graph_batch}" if cuda_graph_batch else "")

    def _open_face_locator(self, min_face_px: float | None, cascade: bool) -> FaceLocator | None:
        entry = self.manifest.face_detector
        if entry is None:
            return None
        graph = entry.file("onnx")
        providers = getattr(self.backend, "providers", None)
        threshold = entry.details.get("score_threshold")
        run = onnxruntime_detector(self.manifest.path_of(graph), providers)
        return FaceLocator(
            run,
            small_face_detector=self._open_small_face_detector(entry, providers) if min_face_px else None,
            score_threshold=threshold or DEFAULT_SCORE_THRESHOLD,
            strategies=ALL_STRATEGIES if cascade else (),
            min_face_px=min_face_px,
        )

    def _describe_face_localisation(self, face_detection: bool) -> str:
        """One line on how faces are found for images that come with neither face crop nor box."""
        locator = self.face_locator
        if "face" not in self.streams:
            return "not needed: the engine set has no face stream"
        if locator is None:
            why = "" if not face_detection else " (the engine set packages no face detector)"
            return f"off{why}: images without a face crop or box use the original image"
        passes = "BlazeFace on a 192-pixel letterbox"
        if locator.small_face_detector is not None:
            passes += f", MTCNN for faces from {locator.min_face_px:g} px on larger images"
        if not locator.strategies:
            return f"{passes}; no enhancement cascade"
        resolution = (f"at up to {locator.cascade_max_side} px" if locator.cascade_max_side
                      else "at full resolution")
        return (f"{passes}; the reference's {len(locator.strategies)}-step enhancement cascade {resolution} "
                "when that finds none")

    def _open_small_face_detector(self, entry: StreamEntry, providers: Sequence[str] | None) -> MtcnnDetector | None:
        """The set's MTCNN networks, or None for a set built before they were packaged (its
        locator then runs the BlazeFace letterbox pass only)."""
        graphs = [entry.file(f"mtcnn_{net}") for net in ("pnet", "rnet", "onet")]
        if not all(graphs):
            return None
        thresholds = entry.details.get("small_faces", {}).get("thresholds", SMALL_FACE_THRESHOLDS)
        paths = [self.manifest.path_of(graph) for graph in graphs]
        return onnxruntime_mtcnn(*paths, providers=providers, thresholds=tuple(thresholds))

    def __reduce_ex__(self, protocol: object) -> None:
        """Refuse copy.copy, copy.deepcopy and pickle: a shallow copy shared the backend's
        sessions, so closing it broke the original, which still said it was open."""
        raise TypeError("a Detector holds open inference sessions and cannot be copied or pickled; share one "
                        "between threads (it is thread-safe) or open another with Detector.open")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"batch_size={self.batch_size}"
        return (f"<Detector {str(self.manifest.root)!r} on {self.backend.name}, streams "
                f"{'/'.join(self.streams)}, {state}>")

    @classmethod
    def open(cls, engine_dir: str | bytes | os.PathLike, backend: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
             face_detection: bool = True, face_min_px: float | None = DEFAULT_MIN_FACE_PX,
             gpu_preprocessing: bool = True, cuda_graph_batch: int | None = None,
             face_cascade: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
             prepare_workers: int | None = None) -> "Detector":
        """Verify the engine set (sha256 of every file) and open it on ``backend``.

        Raises ``DfdError`` (``dfd.runtime.errors``; ``EngineSetError`` for the set,
        ``BackendError`` for the backend) with a message saying what is wrong; option values are
        checked before anything is opened.

        ``face_detection``: locate faces with the set's packaged detector when an image comes
        with neither a face crop nor a face box (False: the reference's no-face rule instead).
        ``face_min_px``: the smallest face (image pixels) the locator looks for; on images too large
        for BlazeFace's 192-pixel letterbox to see it, the set's MTCNN looks for faces from this
        size up (None: the letterbox pass only, faster, misses small faces).
        ``gpu_preprocessing``: on the tensorrt backend, preprocess and vote with the fused CUDA
        kernels (False: NumPy/OpenCV on the host, the ONNX Runtime path's code).
        ``cuda_graph_batch``: replay a CUDA graph of preprocessing -> engines -> vote for batches
        of exactly this size (tensorrt backend with the fused path only).
        ``face_cascade``: when the plain pass finds no face, retry on the reference's enhanced
        copies of the image (False: skip them; a face-free 12 MP photograph then costs ~0.7 s of face
        localisation instead of ~1.9 s on 2 CPU cores, and a badly degraded face may go unfound).
        ``max_pixels``: the largest image, in pixels, decoded at full size (a larger JPEG is
        decoded reduced, any other image fails on its own): localising faces and resizing hold a
        few copies of it in memory.
        ``prepare_workers``: threads that decode, localise faces and preprocess the images of a
        ``detect`` call, the next batch while the engines score this one (None: one per core, at
        most 8; 1: each image in the calling thread, between batches). Results are the same
        whatever the number; images being prepared at once share a budget of ``max_pixels``
        pixels (``dfd.runtime.preparation`` says what else a prepared image holds).
        """
        check_backend_name(backend)
        _check_options(batch_size, face_detection, face_min_px, gpu_preprocessing, cuda_graph_batch,
                       face_cascade, max_pixels, prepare_workers)
        manifest = load_manifest(engine_dir)
        choice = select_backend(backend, manifest)
        try:
            return cls(manifest, choice, batch_size, face_detection, face_min_px, gpu_preprocessing,
                       cuda_graph_batch, face_cascade, max_pixels, prepare_workers)
        except BaseException:
            _close_backend(choice.backend)
            raise

    def close(self) -> None:
        """Release the worker threads, the fused path's buffers, the backend's sessions and what it
        holds on a GPU (TensorRT's buffers and streams) and the face locator. New calls are refused
        from now on, since on a GPU they would reach freed buffers; calls already running in other
        threads finish first (a server shutting down while a request is scored), and every closer
        returns once the release is done. A close from inside a call (an ``on_progress``
        callback) leaves the release to the end of the last running call. Closing twice is
        harmless. In a fork() child of the process that opened it, nothing is released: freeing
        ONNX Runtime's sessions there waits for threads that stayed in the parent, and hung."""
        if os.getpid() != self._opened_in:
            self.closed = True
            return
        with self._users:
            self.closed = True
            if threading.get_ident() in self._running:
                return  # waiting here would wait for this thread itself
            while self._running:
                self._users.wait()
        self._release_once()

    def _release_once(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
            failures: list[BaseException] = []  # each resource is released even if one before it fails
            attempt_release(failures, lambda: self._pool.shutdown(wait=True))
            fused, self.fused = self.fused, None
            if fused is not None:
                attempt_release(failures, fused.close)
            self.face_locator = None
            attempt_release(failures, lambda: _close_backend(self.backend))
            raise_held(failures)

    def _refuse_when_unusable(self) -> None:
        """A forked or closed detector cannot score: say so before a call is looked at."""
        if os.getpid() != self._opened_in:  # before any lock, which another thread may have held at the fork
            raise DfdError(f"this detector was opened in process {self._opened_in}, and this process is a fork() "
                           f"of it: ONNX Runtime's threads (and a GPU's context) did not survive the fork, so it "
                           f"cannot score here; open the engine set in each worker after forking (a pre-fork "
                           f"server: in its post-fork hook)")
        if self.closed:
            raise DfdError("this detector is closed; open the engine set again to score images")

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        """One public call in progress, so that ``close`` never frees what it uses."""
        self._refuse_when_unusable()
        me = threading.get_ident()
        with self._users:
            self._refuse_when_unusable()  # closed since the first look
            self._running[me] += 1
        try:
            yield
        finally:
            with self._users:
                self._running[me] -= 1
                if not self._running[me]:
                    del self._running[me]
                release = self.closed and not self._running  # closed while this call ran
                self._users.notify_all()
            if release:
                try:
                    self._release_once()
                except Exception as exc:  # noqa: BLE001 - this call's own results stand
                    warnings.warn(f"releasing the closed detector failed: {type(exc).__name__}: {exc}",
                                  RuntimeWarning, stacklevel=3)

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def detect(
        self,
        images: Iterable[ImageInput],
        face_crops: Iterable[ImageInput | None] | None = None,
        face_boxes: Iterable[Box | None] | None = None,
        labels: Iterable[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Detection]:
        """Score ``images`` (paths, encoded image bytes or uint8 RGB arrays); one ``Detection`` per
        image, in order. Encoded bytes score exactly as the same file does under its format's usual
        suffix (the face re-encode of a path follows its suffix, as in the reference; of bytes, their
        content: ".jpg" for JPEG).

        ``face_crops[i]``: a face image pre-cropped the reference's way (the face stream takes
        its 252 centre crop). ``face_boxes[i]``: (x1, y1, x2, y2) in pixels of image i; the
        runtime crops it (a box that is not finite, has x2 < x1 or y2 < y1, or lies wholly outside
        the image fails that image only). With neither, the set's face locator looks for a face
        (unless opened with ``face_detection=False``); where none is found, or the face covers under
        1/9 of the image, the face stream sees the original image. For a JPEG file the face image
        is re-encoded as JPEG first, because the reference's cropping step saves a JPEG's face
        input as JPEG and its face stream reads that file back. A set without the face stream
        ignores face crops and boxes (``detection.face`` stays None).

        Any ordered iterable works (a generator too); a call that cannot be understood as a whole
        (one image instead of a list, lengths that differ, labels that are not strings, a set that
        would pair images with crops, boxes or labels at random, an ``on_progress`` that cannot be
        called) raises ``TypeError`` or ``DfdError`` before anything is scored. ``on_progress(n)``
        is called after each batch of ``n`` images; an exception it raises ends the call.
        """
        batches = self._batches(images, face_crops, face_boxes, labels)
        if on_progress is not None and not callable(on_progress):
            raise TypeError(f"on_progress must be a function taking the number of images just scored, got "
                            f"{type(on_progress).__name__}")
        results: list[Detection] = []
        try:
            for batch in batches:
                results.extend(batch)
                if on_progress is not None:
                    on_progress(len(batch))
        finally:  # now, not when an exception's traceback lets go of it: the call ends here
            batches.close()
        return results

    def detections(
        self,
        images: Iterable[ImageInput],
        face_crops: Iterable[ImageInput | None] | None = None,
        face_boxes: Iterable[Box | None] | None = None,
        labels: Iterable[str] | None = None,
    ) -> Iterator[Detection]:
        """``detect``, yielding each ``Detection`` in order as soon as its batch is scored (a
        command line writes rows while later images are prepared and scored). The call is checked
        as a whole before this returns; the detector counts as in use until the iterator is
        exhausted or closed (``close()`` from another thread waits for that)."""
        return _each_of(self._batches(images, face_crops, face_boxes, labels))

    def _batches(self, images: Iterable[ImageInput], face_crops: Iterable[ImageInput | None] | None,
                 face_boxes: Iterable[Box | None] | None, labels: Iterable[str] | None) -> Iterator[list[Detection]]:
        """The call checked now; then its scored batches, lazily."""
        self._refuse_when_unusable()
        return self._scored_batches(self._jobs(images, face_crops, face_boxes, labels))

    def _scored_batches(self, jobs: list) -> Iterator[list[Detection]]:
        with self._in_use():
            # the next batch is prepared while this one is scored, and as many images more as there
            # are threads, so that none waits for the batch to be taken
            preparing = prepared_in_order(jobs, self.prepare_workers, self._pixel_budget,
                                          ahead=self.batch_size + self.prepare_workers - 1)
            try:
                for start in range(0, len(jobs), self.batch_size):
                    prepared = [next(preparing) for _ in range(min(self.batch_size, len(jobs) - start))]
                    self._score([p for p in prepared if p.detection.ok])
                    yield [p.detection for p in prepared]
            finally:
                preparing.close()

    def _jobs(self, images: Iterable[ImageInput], face_crops: Iterable[ImageInput | None] | None,
              face_boxes: Iterable[Box | None] | None, labels: Iterable[str] | None) -> list:
        """One preparation per image, with the inputs it decodes; a call that cannot be
        understood as a whole raises here."""
        paired = [name for name, extra in (("face_crops", face_crops), ("face_boxes", face_boxes),
                                           ("labels", labels)) if extra is not None]
        for name, extra in (("images", images), ("face_crops", face_crops), ("face_boxes", face_boxes),
                            ("labels", labels)):
            if isinstance(extra, AbstractSet) and (name != "images" or paired):
                raise TypeError(f"detect's {name} is a {type(extra).__name__}, whose order is arbitrary, so images "
                                f"would pair with their {' and '.join(paired)} at random; give a list")
        images = _listed("images", images)
        count = len(images)
        face_crops, face_boxes, labels = (
            None if extra is None else _listed(name, extra)
            for name, extra in (("face_crops", face_crops), ("face_boxes", face_boxes), ("labels", labels)))
        for name, extra in (("face_crops", face_crops), ("face_boxes", face_boxes), ("labels", labels)):
            if extra is not None and len(extra) != count:
                raise DfdError(f"{name} has {len(extra)} entries for {count} image(s): give one per image")
        if labels is not None and not all(isinstance(label, str) for label in labels):
            wrong = next(label for label in labels if not isinstance(label, str))
            raise DfdError(f"labels must be strings, got {type(wrong).__name__} {wrong!r}")
        crops = face_crops if face_crops is not None else [None] * count
        boxes = face_boxes if face_boxes is not None else [None] * count
        names = labels if labels is not None else [_label(image, i) for i, image in enumerate(images)]
        return [(functools.partial(self._prepare, image, name, crop, box), (image, crop))
                for image, name, crop, box in zip(images, names, crops, boxes)]

    def prepare(self, source: ImageInput, label: str, face_crop: ImageInput | None = None,
                face_box: Box | None = None) -> "PreparedImage":
        """Decode one image and decide what each stream sees; on the host path also build the
        normalised stream tensors (what ``detect`` feeds the backend). Errors land in
        ``.detection.error``. Public for tools that compare backends on identical inputs
        (``dfd-export verify``, benchmarks)."""
        if not isinstance(label, str):  # it names the image in every result and message
            raise DfdError(f"label must be a string, got {type(label).__name__} {label!r}")
        with self._in_use():
            return self._prepare(source, label, face_crop, face_box)

    def _prepare(self, source: ImageInput, label: str, face_crop: ImageInput | None,
                 face_box: Box | None) -> "PreparedImage":
        detection = Detection(image=label)
        try:
            decoded = decode_image(source, max_pixels=self.max_pixels)
            detection.notes.extend(decoded.notes)
            face_rgb, box = None, None  # a set without the face stream: nothing to crop or re-encode
            if "face" in self.streams:
                face_rgb, box = self._face_input(decoded, face_crop, face_box, detection)
                suffix = _lossy_suffix(source)
                if face_crop is None and suffix.lower() in FACE_REENCODE_SUFFIXES:
                    face_rgb, notes = reencode_like_reference_face_file(
                        self._face_image(decoded.rgb, face_rgb, box), suffix)
                    detection.notes.extend(notes)
                    box = None
            if self.fused is not None:
                prepared = self._fused_input(decoded.rgb, face_rgb, box, detection)
            else:
                prepared = self._host_tensors(self._face_image(decoded.rgb, face_rgb, box), decoded.rgb,
                                              detection)
        except (DfdError, ValueError) as exc:  # ImageError/PreprocessError are ValueErrors
            detection.error = str(exc)
            detection.file_unreadable = isinstance(exc, ImageFileError)
            detection.notes.clear()  # notes and face describe a scoring that did not happen
            detection.face = None
            return PreparedImage(detection, {})
        except Exception as exc:  # noqa: BLE001 - one image's unforeseen failure must not sink its batch
            detection.error = f"unexpected {type(exc).__name__} while preparing this image: {exc}"
            detection.notes.clear()
            detection.face = None
            return PreparedImage(detection, {})
        return prepared

    def face_stream_image(self, rgb: np.ndarray) -> np.ndarray:
        """What the face stream sees for a decoded image that comes with neither face crop nor box:
        the crop of the located face, or ``rgb`` itself (no face, a face under 1/9 of the image, or
        no locator), before the re-encode a JPEG file gets. The Detector's own rule, public for
        tools that time face localisation as a stage of its own (``dfd-export bench``)."""
        with self._in_use():
            face_rgb, box = self._face_input(DecodedImage(rgb, ()), None, None, Detection(image=""))
            return self._face_image(rgb, face_rgb, box)

    @staticmethod
    def _face_image(rgb: np.ndarray, face_rgb: np.ndarray | None, box: Box | None) -> np.ndarray:
        """The face stream's image on the host: its own image, the crop of ``box``, or ``rgb``."""
        if face_rgb is not None:
            return face_rgb
        return crop_face(rgb, box) if box is not None else rgb

    def _host_tensors(self, face_rgb: np.ndarray, rgb: np.ndarray, detection: Detection) -> PreparedImage:
        tensors = {}
        for stream in self.streams:
            prepared = self._preprocess(stream, face_rgb if stream == "face" else rgb)
            detection.notes.extend(f"{stream} stream: {note}" for note in prepared.notes)
            tensors[stream] = prepared.tensor
        return PreparedImage(detection, tensors)

    def _fused_input(self, rgb: np.ndarray, face_rgb: np.ndarray | None, box: Box | None,
                     detection: Detection) -> PreparedImage:
        """The fused path's input, with the notes the host preprocessing would have written."""
        height, width = rgb.shape[:2]
        if face_rgb is not None:
            face_shape = face_rgb.shape[:2]
        else:  # the kernel crops the box to FACE_CROP_SIZE², or takes the original image
            face_shape = (FACE_CROP_SIZE, FACE_CROP_SIZE) if box is not None else (height, width)
        notes = {"global": center_crop_notes(height, width, self._sizes["global"]),
                 "face": center_crop_notes(*face_shape, self._sizes["face"]),
                 "fusion": resize_fusion_notes(height, width, self._sizes["fusion"])}
        for stream in self.streams:
            detection.notes.extend(f"{stream} stream: {note}" for note in notes[stream])
        box = tuple(float(v) for v in box) if box is not None else None
        return PreparedImage(detection, {}, FusedInput(rgb, box, face_rgb))

    def _face_input(self, decoded: DecodedImage, face_crop: ImageInput | None, face_box: Box | None,
                    detection: Detection) -> tuple[np.ndarray | None, Box | None]:
        """The face stream's input as (an image of its own, a box to crop on the original); both
        None means the original image (the reference's no-face rule)."""
        if face_crop is not None and face_box is not None:
            raise DfdError("give a face crop or a face box for an image, not both")
        if face_crop is not None:
            try:
                crop = decode_image(face_crop, max_pixels=self.max_pixels)
            except ImageError as error:  # say it is the crop, not the image, that failed
                raise ImageError(f"face crop: {error}") from None
            detection.notes.extend(f"face crop: {note}" for note in crop.notes)
            detection.face = {"source": "face-crop", "file": _label(face_crop)}
            return crop.rgb, None
        if face_box is not None:  # in pixels of the full-size image, as the reference decodes it
            _check_given_box(face_box, decoded.full_size_hw, detection)
            detection.face = {"source": "box", "box": [float(v) for v in face_box]}
            return None, _usable_box(decoded, detection.face["box"], detection)
        if self.face_locator is None:
            detection.notes.append(NO_FACE_NOTE)
            return None, None
        found = self.face_locator.locate(decoded.rgb)
        if found is None:
            detection.notes.append(NO_FACE_FOUND_NOTE)
            return None, None
        # the box unrounded, in pixels of the full-size image (a power-of-two scale is exact): the crop
        # truncates its corners, so a rounded box can move it by a pixel, and detect's output must work
        # as a --face-boxes file that reproduces this run
        detection.face = {"source": "detector", "box": [float(v) * decoded.reduction for v in found.box],
                          "score": round(found.score, 4), "strategy": found.strategy, "count": found.count}
        return None, _usable_box(decoded, detection.face["box"], detection)

    def _preprocess(self, stream: str, rgb: np.ndarray):
        size = self._sizes[stream]
        if stream == "global":
            return preprocess_global(rgb, size, self._mean, self._std)
        if stream == "face":
            return preprocess_face(rgb, size, self._mean, self._std)
        return preprocess_fusion(rgb, size, self._mean, self._std)

    def _score(self, prepared: list[PreparedImage]) -> None:
        if not prepared:
            return
        if self.fused is not None:
            self._record_fused(prepared, self.fused.run([p.fused for p in prepared]))
            return
        batches = {stream: np.stack([p.tensors[stream] for p in prepared]) for stream in self.streams}
        if getattr(self.backend, "concurrent_streams", False):
            # engines on their own CUDA streams: issue all three at once
            futures = {s: self._pool.submit(self.backend.run, s, b) for s, b in batches.items()}
            logits = {s: f.result() for s, f in futures.items()}
        else:  # ONNX Runtime already spreads one graph over every core
            logits = {s: self.backend.run(s, b) for s, b in batches.items()}
        probabilities = {s: softmax_fake_probability(v) for s, v in logits.items()}
        partial_note = None
        if len(self.streams) < len(STREAM_ORDER):
            partial_note = (f"vote over the streams this engine set has ({', '.join(self.streams)}), "
                            f"not the reference's three")
        for row, item in enumerate(prepared):
            probs = {s: float(probabilities[s][row]) for s in self.streams}
            detection = item.detection
            try:
                vote = discretised_vote(probs, self.vote_weights)
            except VoteError:
                _refuse_non_finite(detection, probs)
                continue
            detection.streams = probs
            detection.rounded_streams = vote.rounded_streams
            detection.score = vote.score
            detection.raw_score = vote.raw_mean
            if partial_note:
                detection.notes.append(partial_note)

    def _record_fused(self, prepared: list[PreparedImage], result: FusedResult) -> None:
        """The vote kernel's outputs into the Detections (the same fields as the host path)."""
        for row, item in enumerate(prepared):
            probs = {s: float(result.probabilities[row, i]) for i, s in enumerate(STREAM_ORDER)}
            detection = item.detection
            if not all(0.0 <= p <= 1.0 for p in probs.values()):  # NaN fails both comparisons
                _refuse_non_finite(detection, probs)
                continue
            detection.streams = probs
            detection.rounded_streams = {s: one_decimal(p) for s, p in probs.items()}
            detection.score = float(result.score[row])
            detection.raw_score = float(result.raw_mean[row])


def _each_of(batches: Iterator[list[Detection]]) -> Iterator[Detection]:
    try:
        for batch in batches:
            yield from batch
    finally:
        batches.close()


def _close_backend(backend: object) -> None:
    """Release what a backend holds: TensorRT's GPU buffers and streams, ONNX Runtime's sessions
    (their weights and thread pools)."""
    release = getattr(backend, "close", None)
    if release is not None:
        release()


def _listed(name: str, items: object) -> list:
    """``items`` as a list (an (N, 4) array of boxes gives its rows); one image, path or label
    where a collection belongs is refused, since iterating it would score each character, byte
    or pixel row as an image."""
    if isinstance(items, np.ndarray) and name == "images":
        if items.ndim == 4 or (items.ndim == 1 and items.dtype.kind in "OSU"):  # a batch, or an array of paths
            advice = "detect(list(batch))"
        else:
            advice = "wrap it in a list: detect([image])"
        raise TypeError(f"images is one {items.shape} array; detect takes a list of images: {advice}")
    if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike, Mapping)):
        one = {"images": "image", "face_crops": "crop", "face_boxes": "box", "labels": "label"}[name]
        wrapped = "detect([image])" if name == "images" else f"{name}=[{one}]"
        raise TypeError(f"detect's {name} must be a list (one entry per image), got one "
                        f"{type(items).__name__}; wrap it in a list: {wrapped}")
    try:
        listed = list(items)
    except TypeError:
        raise TypeError(f"detect's {name} must be a list (one entry per image), got "
                        f"{type(items).__name__}") from None
    if name == "face_boxes" and listed and all(isinstance(v, numbers.Real) for v in listed):
        # for four images each number would fail its image as "not a box"; it is one box for all
        numbers_given = ", ".join(str(v) for v in listed)
        raise TypeError((f"face_boxes is one box ({numbers_given})" if len(listed) == 4 else
                         f"face_boxes holds numbers ({numbers_given}), not a box per image")
                        + "; give one entry per image (a box (x1, y1, x2, y2) or None), e.g. face_boxes=[box] for "
                          "one image")
    return listed


def _refuse_non_finite(detection: Detection, probs: dict[str, float]) -> None:
    """A stream produced NaN/inf logits for this image (e.g. an fp16 overflow): no score, not a
    made-up one; the other images of the batch are unaffected."""
    bad = ", ".join(s for s, p in probs.items() if not 0.0 <= p <= 1.0)
    detection.error = f"the {bad} stream produced a non-finite probability; no score for this image"
