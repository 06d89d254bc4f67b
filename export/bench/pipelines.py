"""The two pipelines a benchmark times, stage by stage: the lean runtime and the reference-style
PyTorch eager pipeline (with the reference's own crop, resize and text-rounded vote)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from ..recorded_build import read_recorded_build
from . import BenchError

STAGES = ("decode", "face_localisation", "preprocess", "stream:global", "stream:face", "stream:fusion", "vote")


class StageClock:
    """Accumulates wall time per named stage for one run of a pipeline."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class RuntimePipeline:
    """The lean runtime: end to end through ``Detector.detect``, and staged through the same
    runtime functions the Detector calls, to attribute the time."""

    name = "runtime"

    def __init__(self, engine_dir: Path, backend: str, max_pixels: int) -> None:
        from dfd.runtime.detector import Detector

        self.detector = Detector.open(engine_dir, backend=backend, batch_size=1 << 30, max_pixels=max_pixels)
        # end to end, images are prepared on the detector's threads; the stages are timed in one
        self.label = (f"{self.detector.backend.description}; preprocessing: {self.detector.preprocessing}; "
                      f"images prepared on {self.detector.prepare_workers} thread(s) end to end, "
                      f"stages timed in one")

    def end_to_end(self, paths: Sequence[Path]) -> tuple[float, list]:
        start = time.perf_counter()
        detections = self.detector.detect([str(p) for p in paths])
        elapsed = time.perf_counter() - start
        failed = [d for d in detections if not d.ok]
        if failed:
            raise BenchError(f"the runtime could not score {failed[0].image}: {failed[0].error}")
        return elapsed, detections

    def staged(self, paths: Sequence[Path]) -> dict[str, float]:
        from dfd.runtime.images import decode_image
        from dfd.runtime.preprocess import preprocess_face, preprocess_fusion, preprocess_global, \
            reencode_like_reference_face_file
        from dfd.runtime.vote import discretised_vote, softmax_fake_probability

        detector = self.detector
        functions = {"global": preprocess_global, "face": preprocess_face, "fusion": preprocess_fusion}
        mean, std = tuple(detector.manifest.preprocessing["mean"]), tuple(detector.manifest.preprocessing["std"])
        sizes = {s: detector.manifest.streams[s].input_size for s in detector.streams}
        clock = StageClock()
        with clock.stage("decode"):
            images = [decode_image(str(p), max_pixels=detector.max_pixels).rgb for p in paths]
        if detector.face_locator is not None:
            with clock.stage("face_localisation"):
                faces = [detector.face_stream_image(rgb) for rgb in images]
        else:
            faces = images
        with clock.stage("preprocess"):
            faces = [reencode_like_reference_face_file(f, p.suffix)[0] for f, p in zip(faces, paths)]
            batches = {
                stream: np.stack([functions[stream](faces[i] if stream == "face" else images[i],
                                                    sizes[stream], mean, std).tensor
                                  for i in range(len(paths))])
                for stream in detector.streams
            }
        probabilities = {}
        for stream in detector.streams:
            with clock.stage(f"stream:{stream}"):
                logits = detector.backend.run(stream, batches[stream])
            probabilities[stream] = logits
        with clock.stage("vote"):
            fake = {s: softmax_fake_probability(v) for s, v in probabilities.items()}
            for row in range(len(paths)):
                discretised_vote({s: float(fake[s][row]) for s in fake}, detector.vote_weights)
        return clock.seconds

    def close(self) -> None:
        """Release the runtime before the torch pipeline opens: on TensorRT only Detector.close
        frees the GPU buffers and streams. Closing twice is harmless."""
        if self.detector is not None:
            self.detector.close()
            self.detector = None
            gc.collect()


class TorchReferencePipeline:
    """What running the reference code costs: OpenCV decoding and preprocessing as the reference
    writes it, fp32 eager stream modules one after another, the text-rounded vote. Faces are
    pre-cropped offline in the reference (a separate script), so the face inputs are given."""

    name = "torch"

    def __init__(self, manifest, face_inputs: dict[Path, np.ndarray], weights_dir: Path | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.manifest = manifest
        self.face_inputs = face_inputs
        self.sizes = {name: entry.input_size for name, entry in manifest.streams.items()}
        prep = manifest.preprocessing
        self.mean = torch.tensor(prep["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(prep["std"], dtype=torch.float32).view(3, 1, 1)
        self.weights_note: list[str] = []
        self.weights_dir = weights_dir
        self.build = read_recorded_build(manifest)
        self.modules = {name: self._load(name) for name in manifest.streams}
        self.label = (f"torch {torch.__version__} eager fp32 on {self.device} "
                      f"({torch.get_num_threads()} threads), timm/open_clip stream modules")

    def _load(self, name: str):
        from ..build import load_reference_stream
        from ..checkpoint_files import find_checkpoint

        stream = self.build.streams[name]
        weights_dir = self.build.checkpoint_folder(self.weights_dir)
        checkpoint = find_checkpoint(weights_dir, name) if stream.checkpoint else None
        if checkpoint is not None and not checkpoint.is_file():
            where = "given by --weights-dir" if self.weights_dir else "recorded by the manifest"
            raise BenchError(f"checkpoint {checkpoint} {where} is not there; "
                             f"the torch comparison needs the same weights (pass --weights-dir where they are now)")
        module = load_reference_stream(self.build, name, weights_dir)
        self.weights_note.append(f"{name}: " + (f"checkpoint {stream.checkpoint.file}" if stream.checkpoint
                                                else f"random init, seed {self.build.seed}"))
        return module.to(self.device).eval()

    def _tensor(self, rgb: np.ndarray):
        x = self.torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(self.torch.float32).div(255)
        return (x - self.mean) / self.std

    def run(self, paths: Sequence[Path]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        torch = self.torch
        clock = StageClock()
        with clock.stage("decode"):
            images = []
            for path in paths:
                bgr = cv2.imread(str(path))
                if bgr is None:
                    raise BenchError(f"cv2.imread cannot read {path}")
                images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        with clock.stage("preprocess"):
            batches = {}
            for stream, size in self.sizes.items():
                if stream == "fusion":
                    crops = [reference_fusion_resize(rgb, size) for rgb in images]
                else:
                    sources = [self.face_inputs[p] for p in paths] if stream == "face" else images
                    crops = [reference_center_crop(rgb, size) for rgb in sources]
                batches[stream] = torch.stack([self._tensor(c) for c in crops])
        probabilities = {}
        with torch.no_grad():
            for stream, batch in batches.items():
                with clock.stage(f"stream:{stream}"):
                    logits = self.modules[stream](batch.to(self.device))
                    probabilities[stream] = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        with clock.stage("vote"):
            for row in range(len(paths)):
                reference_vote({s: float(p[row]) for s, p in probabilities.items()}, self.manifest.vote_weights)
        return clock.seconds, probabilities

    def close(self) -> None:
        self.modules = {}
        gc.collect()


def reference_cannot_take(width: int, height: int, sizes: Mapping[str, int]) -> str | None:
    """Why the reference-style pipeline cannot score an image of this size with streams of these
    input ``sizes``, or None. ``bench --compare torch`` leaves such an image out before anything is
    measured: it raised in the torch pipeline and sank the run after the engines were timed."""
    crop = max((size for stream, size in sizes.items() if stream != "fusion"), default=0)
    if width < crop or height < crop:
        return (f"an image of {width}x{height} is smaller than the {crop} crop, which the reference pipeline "
                f"(--compare torch) cannot take")
    fusion = sizes.get("fusion")
    if height == fusion and width != fusion:
        return (f"an image {fusion} high but {width} wide breaks the reference pipeline's fusion batch "
                f"(--compare torch)")
    return None


def reference_cannot_open(path: Path) -> str | None:
    """Why the reference-style pipeline's ``cv2.imread`` cannot be given this file name, or None.
    OpenCV takes the name as UTF-8; a name that is not (its undecodable bytes held as surrogate
    escapes) makes imread crash the process with a segmentation fault (OpenCV 4.14), which took
    the whole benchmark and its results down with it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return ("its name is not valid UTF-8, which OpenCV's imread, the reference pipeline's decoder "
                "(--compare torch), cannot open")
    return None


def reference_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The reference's centre crop (no resampling); it cannot take a smaller image."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        raise BenchError(f"an image of {w}x{h} is smaller than the {size} crop, which the reference "
                         f"pipeline cannot take; use images of at least {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top:top + size, left:left + size]


def reference_fusion_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """``cv2.resize`` to size x size, INTER_AREA when taller, INTER_CUBIC when shorter (the
    reference looks at the height only, and leaves an image exactly ``size`` high alone)."""
    h, w = rgb.shape[:2]
    if h == size:
        if w != size:
            raise BenchError(f"an image {size} high but {w} wide breaks the reference's fusion batch")
        return rgb
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_CUBIC)


def reference_vote(probs: dict[str, float], weights: dict[str, float]) -> float:
    """The reference's vote: each P written as ``f"{p:.1f}"``, read back, weighted mean,
    ``np.round(x, 1)``."""
    names = list(probs)
    rounded = [float(f"{probs[n]:.1f}") for n in names]
    return float(f"{float(np.round(np.average(rounded, weights=[weights[n] for n in names]), 1)):.1f}")
