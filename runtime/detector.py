"""The Python API of the lean runtime: ``Detector.open(engine_dir).detect(images)``.

One decode per image, the reference's preprocessing per stream, the three streams batched on
the chosen backend, then the reference's discretised vote. A bad image becomes a ``Detection``
with ``error`` set; the rest of the batch goes on. ``detect`` keeps no state between calls, so
one Detector may be used from several threads at once (the backends' ``run`` is thread-safe).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .backends import BackendChoice, select_backend
from .errors import DfdError
from .face_detection import (
    DEFAULT_MIN_FACE_PX,
    DEFAULT_SCORE_THRESHOLD,
    SMALL_FACE_THRESHOLDS,
    FaceLocator,
    onnxruntime_detector,
)
from .images import DecodedImage, decode_image
from .manifest import STREAM_ORDER, Manifest, StreamEntry, load_manifest
from .mtcnn import MtcnnDetector, onnxruntime_mtcnn
from .preprocess import (
    crop_face,
    face_is_too_small,
    preprocess_face,
    preprocess_fusion,
    preprocess_global,
    reencode_like_reference_face_file,
)
from .vote import discretised_vote, softmax_fake_probability

ImageInput = Union[str, os.PathLike, np.ndarray]
Box = Sequence[float]
DEFAULT_BATCH_SIZE = 8
NO_FACE_NOTE = "face stream: no face input, the original image is used (the reference's no-face rule)"


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedImage:
    """One decoded image: its (not yet scored) Detection and its float32 CHW stream tensors."""

    detection: Detection
    tensors: dict[str, np.ndarray]


def _label(source: ImageInput, index: int) -> str:
    return f"<array {index}>" if isinstance(source, np.ndarray) else os.fspath(source)


def _crop_or_original(rgb: np.ndarray, box: Box, detection: Detection) -> np.ndarray:
    """The reference's rule for a face box: its crop, or the original image when the box covers
    under 1/9 of it; records which in ``detection``."""
    if face_is_too_small(box, rgb.shape[:2]):
        detection.face["used"] = "original image"
        detection.notes.append("face stream: the face covers under 1/9 of the image, "
                               "the original image is used (reference rule)")
        return rgb
    detection.face["used"] = "crop"
    return crop_face(rgb, box)


class Detector:
    """An opened engine set. Create with ``Detector.open``."""

    def __init__(self, manifest: Manifest, choice: BackendChoice, batch_size: int = DEFAULT_BATCH_SIZE,
                 face_detection: bool = True, face_min_px: float | None = DEFAULT_MIN_FACE_PX) -> None:
        if batch_size < 1:
            raise DfdError(f"batch size must be at least 1, got {batch_size}")
        self.manifest = manifest
        self.backend = choice.backend
        self.backend_reason = choice.reason
        self.batch_size = batch_size
        self.streams = tuple(s for s in STREAM_ORDER if s in manifest.streams)
        self.vote_weights = {s: manifest.vote_weights[s] for s in self.streams}
        prep = manifest.preprocessing
        self._mean, self._std = tuple(prep["mean"]), tuple(prep["std"])
        self._sizes = {s: manifest.streams[s].input_size for s in self.streams}
        self.face_locator = self._open_face_locator(face_min_px) if face_detection else None
        self._pool = ThreadPoolExecutor(max_workers=len(self.streams), thread_name_prefix="dfd-stream")

    def _open_face_locator(self, min_face_px: float | None) -> FaceLocator | None:
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
            min_face_px=min_face_px,
        )

    def _open_small_face_detector(self, entry: StreamEntry, providers: Sequence[str] | None) -> MtcnnDetector | None:
        """The set's MTCNN networks, or None for a set built before they were packaged (its
        locator then runs the BlazeFace letterbox pass only)."""
        graphs = [entry.file(f"mtcnn_{net}") for net in ("pnet", "rnet", "onet")]
        if not all(graphs):
            return None
        thresholds = entry.details.get("small_faces", {}).get("thresholds", SMALL_FACE_THRESHOLDS)
        paths = [self.manifest.path_of(graph) for graph in graphs]
        return onnxruntime_mtcnn(*paths, providers=providers, thresholds=tuple(thresholds))
    @classmethod
    def open(cls, engine_dir: str | os.PathLike, backend: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
             face_detection: bool = True, face_min_px: float | None = DEFAULT_MIN_FACE_PX) -> "Detector":
        """Verify the engine set (sha256 of every file) and open it on ``backend``.

        ``face_detection``: locate faces with the set's packaged detector when an image comes
        with neither a face crop nor a face box (False: the reference's no-face rule instead).
        ``face_min_px``: the smallest face (image pixels) the locator looks for; on images too large
        for BlazeFace's 192-pixel letterbox to see it, the set's MTCNN looks for faces from this
        size up (None: the letterbox pass only, faster, misses small faces).
        """
        manifest = load_manifest(Path(engine_dir))
        return cls(manifest, select_backend(backend, manifest), batch_size, face_detection, face_min_px)

    def close(self) -> None:
        """Release the worker threads; the backend's sessions go with the Detector."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def detect(
        self,
        images: Sequence[ImageInput],
        face_crops: Sequence[ImageInput | None] | None = None,
        face_boxes: Sequence[Box | None] | None = None,
        labels: Sequence[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Detection]:
        """Score ``images`` (paths or uint8 RGB arrays); one ``Detection`` per image, in order.

        ``face_crops[i]``: a face image pre-cropped the reference's way (the face stream takes
        its 252 centre crop). ``face_boxes[i]``: (x1, y1, x2, y2) in pixels of image i; the
        runtime crops it. With neither, the face stream sees the original image. For an image
        file in a lossy format the face image is re-encoded in that format first, because the
        reference's face stream reads its face input back from such a file.
        """
        count = len(images)
        for name, extra in (("face_crops", face_crops), ("face_boxes", face_boxes), ("labels", labels)):
            if extra is not None and len(extra) != count:
                raise DfdError(f"{name} has {len(extra)} entries for {count} images")
        results: list[Detection] = []
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            prepared = [
                self.prepare(
                    images[i],
                    labels[i] if labels is not None else _label(images[i], i),
                    face_crops[i] if face_crops is not None else None,
                    face_boxes[i] if face_boxes is not None else None,
                )
                for i in range(start, stop)
            ]
            self._score([p for p in prepared if p.detection.ok])
            results.extend(p.detection for p in prepared)
            if on_progress is not None:
                on_progress(stop - start)
        return results

    def prepare(self, source: ImageInput, label: str, face_crop: ImageInput | None = None,
                face_box: Box | None = None) -> "PreparedImage":
        """Decode one image and build its normalised stream tensors (what ``detect`` feeds the
        backend); errors land in ``.detection.error``. Public for tools that compare backends
        on identical inputs (``dfd-export verify``, benchmarks)."""
        detection = Detection(image=label)
        try:
            decoded = decode_image(source)
            detection.notes.extend(decoded.notes)
            face_rgb = self._face_image(decoded, face_crop, face_box, detection)
            if face_crop is None and not isinstance(source, np.ndarray):
                face_rgb, notes = reencode_like_reference_face_file(face_rgb, Path(source).suffix)
                detection.notes.extend(notes)
            tensors = {}
            for stream in self.streams:
                rgb = face_rgb if stream == "face" else decoded.rgb
                prepared = self._preprocess(stream, rgb)
                detection.notes.extend(f"{stream} stream: {note}" for note in prepared.notes)
                tensors[stream] = prepared.tensor
        except (DfdError, ValueError) as exc:  # ImageError/PreprocessError are ValueErrors
            detection.error = str(exc)
            detection.notes.clear()
            return PreparedImage(detection, {})
        return PreparedImage(detection, tensors)

    def _face_image(self, decoded: DecodedImage, face_crop: ImageInput | None, face_box: Box | None,
                    detection: Detection) -> np.ndarray:
        if face_crop is not None and face_box is not None:
            raise DfdError("give a face crop or a face box for an image, not both")
        if face_crop is not None:
            crop = decode_image(face_crop)
            detection.notes.extend(f"face crop: {note}" for note in crop.notes)
            detection.face = {"source": "face-crop", "file": _label(face_crop, 0)}
            return crop.rgb
        if face_box is not None:
            detection.face = {"source": "box", "box": [float(v) for v in face_box]}
            return _crop_or_original(decoded.rgb, detection.face["box"], detection)
        if self.face_locator is None:
            detection.notes.append(NO_FACE_NOTE)
            return decoded.rgb
        found = self.face_locator.locate(decoded.rgb)
        if found is None:
            detection.notes.append("face stream: no face found, the original image is used (reference rule)")
            return decoded.rgb
        detection.face = {"source": "detector", "box": [round(v, 2) for v in found.box],
                          "score": round(found.score, 4), "strategy": found.strategy, "count": found.count}
        return _crop_or_original(decoded.rgb, found.box, detection)

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
            vote = discretised_vote(probs, self.vote_weights)
            detection = item.detection
            detection.streams = probs
            detection.rounded_streams = vote.rounded_streams
            detection.score = vote.score
            detection.raw_score = vote.raw_mean
            if partial_note:
                detection.notes.append(partial_note)
