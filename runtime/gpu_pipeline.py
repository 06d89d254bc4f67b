"""The fused GPU path: uint8 images in, one preprocessing launch, three engines, one vote launch.

Per batch: the decoded images (and any face image of their own) are packed into one page-locked
staging buffer and copied to the GPU in one transfer; one ``dfd_preprocess`` launch writes the three
engines' input tensors in place; each engine runs on its own CUDA stream, ordered after the
preprocessing by an event; one ``dfd_vote`` launch, ordered after all three, writes P(fake) per
stream, the discretised vote and the raw mean; those come back in one small copy. Nothing is
allocated per call (buffers grow to the largest batch seen and stay).

With ``capture_batch`` set, a batch of exactly that many images replays a CUDA graph of
preprocess -> three engines -> vote -> result copy, captured after a plain run of that size
(TensorRT wants one enqueue before capture). A batch of another size (the last, partial one of a
call) runs the engines' execution contexts at another input shape, which changes their internal
state; TensorRT documents a captured graph as valid only while the shape it was captured at
stays (NVIDIA/TensorRT#3798, trtexec), so the next batch of the captured size runs plainly and
captures again. A capture that fails (TensorRT may refuse to enqueue into one) is ended, and the
pipeline goes on without graphs, saying why in ``capture_problem``: that batch's results came
from its plain run and stand. A graph keeps the addresses it was captured with,
so everything it touches lives at a fixed address: the job table, the engines' tensors and the
result buffers. The images themselves may move (their staging grows); the graph reads their
addresses from the job table, which is uploaded before each replay.

The orchestration here is device-agnostic: ``PipelineDevice`` and ``PipelineEngine`` are the
boundary. ``CudaPipelineDevice`` (cuda-python driver API + the NVRTC kernels) and TensorRT's engine
slots implement it on a GPU. The first ran once on an H100 with stand-in engines
(benchmarks/gpu_check_h100.json); TensorRT's slots have never run, as no machine here has
TensorRT. The test suite drives this same class through a host implementation of the boundary
(the kernels' own code compiled with g++, ONNX Runtime as the engines, graphs replayed from a
recording) and checks it against the NumPy path of the Detector, and through those two GPU
implementations on an emulated driver API with a stand-in for TensorRT (test_cuda_device.py).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from .cuda_kernels import CROP_SIDE, FUSION_SIDE, JOB_DTYPE, DeviceImage, make_jobs
from .errors import DfdError, attempt_release, raise_held
from .manifest import STREAM_ORDER
from .preprocess import IMAGENET_MEAN, IMAGENET_STD

Box = tuple[float, float, float, float]
KERNEL_INPUT_SIZES = {"global": CROP_SIDE, "face": CROP_SIDE, "fusion": FUSION_SIDE}


class FusedPathError(DfdError, RuntimeError):
    """The engine set or the engines cannot take the fused GPU path; the message says why."""


class PipelineEngine(Protocol):
    """One stream's engine as the pipeline drives it: fixed device tensors, its own stream."""

    input_address: int  # [max_batch, 3, side, side] in input_dtype
    output_address: int  # [max_batch, 2] float32 logits
    input_dtype: np.dtype
    output_dtype: np.dtype
    max_batch: int
    stream: int
    lock: threading.Lock  # held while the pipeline uses the engine

    def enqueue(self, batch: int) -> None:
        """Queue inference of the first ``batch`` rows on ``stream``; returns at once."""
        ...


class PipelineDevice(Protocol):
    """What the pipeline needs from a GPU. Pointers are device addresses (int); ``stream`` is a
    stream handle as ``new_stream`` returns it. Every call only queues work, except
    ``synchronize``."""

    def bind_thread(self) -> None: ...  # make the device usable from the calling thread
    def alloc(self, nbytes: int) -> int: ...
    def free(self, address: int) -> None: ...
    def alloc_pinned(self, nbytes: int) -> np.ndarray: ...  # page-locked uint8 host buffer
    def free_pinned(self, buffer: np.ndarray) -> None: ...
    def new_stream(self) -> Any: ...
    def upload(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def download(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def wait(self, stream: Any, on: Any) -> None: ...  # ``stream`` waits for what ``on`` has queued
    def synchronize(self, stream: Any) -> None: ...
    def preprocess(self, jobs: int, batch: int, outputs: tuple[int, int, int], half: bool,
                   stream: Any) -> None: ...
    def vote(self, logits: tuple[int, int, int], weights: tuple[float, float, float], batch: int,
             probs: int, score: int, mean: int, stream: Any) -> None: ...
    def begin_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> Any: ...  # an executable graph
    def replay(self, graph: Any, stream: Any) -> None: ...
    def destroy_graph(self, graph: Any) -> None: ...


@dataclass(frozen=True)
class FusedInput:
    """One image for the fused path: the decoded RGB image and the face stream's input, which is
    ``face_rgb`` when given (its 252 center crop), else the crop of ``face_box`` on ``rgb``, else
    ``rgb`` itself (the reference's no-face rule)."""

    rgb: np.ndarray
    face_box: Box | None = None
    face_rgb: np.ndarray | None = None


@dataclass(frozen=True)
class FusedResult:
    """Per image: P(fake) per stream [N,3] (global, face, fusion), the discretised vote [N] and the
    raw weighted mean [N], as the vote kernel wrote them."""

    probabilities: np.ndarray
    score: np.ndarray
    raw_mean: np.ndarray


def fused_path_problem(engines: Mapping[str, PipelineEngine], preprocessing: Mapping[str, Any],
                       input_sizes: Mapping[str, int]) -> str | None:
    """Why these engines and this set's preprocessing cannot take the fused path, or None.

    The kernel writes all three streams in one dtype at the reference's sizes with ImageNet
    statistics; anything else runs the host preprocessing instead."""
    missing = [s for s in STREAM_ORDER if s not in engines]
    if missing:
        return f"the set has no {', '.join(missing)} stream (the vote kernel takes all three)"
    if dict(input_sizes) != KERNEL_INPUT_SIZES:
        return f"stream input sizes {dict(input_sizes)} are not the kernel's {KERNEL_INPUT_SIZES}"
    if tuple(preprocessing.get("mean", ())) != IMAGENET_MEAN or tuple(preprocessing.get("std", ())) != IMAGENET_STD:
        return "the set's normalisation is not the ImageNet statistics the kernel applies"
    dtypes = {np.dtype(engines[s].input_dtype) for s in STREAM_ORDER}
    if len(dtypes) != 1 or not dtypes <= {np.dtype(np.float32), np.dtype(np.float16)}:
        return f"engine inputs must all be float32 or all float16, found {sorted(map(str, dtypes))}"
    outputs = {np.dtype(engines[s].output_dtype) for s in STREAM_ORDER}
    if outputs != {np.dtype(np.float32)}:
        return f"engine outputs must be float32 logits, found {sorted(map(str, outputs))}"
    return None


class _Staging:
    """A page-locked host buffer and its device twin, grown to the largest batch, never shrunk."""

    def __init__(self, device: PipelineDevice) -> None:
        self._device = device
        self.host = np.empty(0, np.uint8)
        self.address = 0

    def reserve(self, nbytes: int, stream: Any) -> None:
        if nbytes <= self.host.size:
            return
        capacity = max(nbytes, 2 * self.host.size)
        self._device.synchronize(stream)  # earlier copies may still read the old buffers
        self.release()
        self.host = self._device.alloc_pinned(capacity)
        self.address = self._device.alloc(capacity)

    def release(self) -> None:
        """Free both buffers, each tried (the host one alone is held when the device allocation
        after it failed)."""
        failures: list[BaseException] = []
        if self.address:
            attempt_release(failures, lambda: self._device.free(self.address))
        if self.host.size:
            attempt_release(failures, lambda: self._device.free_pinned(self.host))
        self.host, self.address = np.empty(0, np.uint8), 0
        raise_held(failures)


class GpuPipeline:
    """The fused path over three engines (see module docstring). Thread-safe: one batch at a time
    per pipeline, holding the engines' locks; use several Detectors (or ``clone``d backends) for
    concurrent batches."""

    def __init__(self, device: PipelineDevice, engines: Mapping[str, PipelineEngine],
                 weights: Mapping[str, float], capture_batch: int | None = None) -> None:
        self._device = device
        self._engines = [engines[s] for s in STREAM_ORDER]
        self._weights = tuple(float(weights[s]) for s in STREAM_ORDER)
        self.max_batch = min(engine.max_batch for engine in self._engines)
        if capture_batch is not None and not 1 <= capture_batch <= self.max_batch:
            raise FusedPathError(f"CUDA-graph batch size {capture_batch} is outside the engines' "
                                 f"profile (1..{self.max_batch})")
        self.capture_batch = capture_batch
        self._half = np.dtype(self._engines[0].input_dtype) == np.float16
        self._lock = threading.Lock()
        self._stream = device.new_stream()
        self._staging = _Staging(device)
        n = self.max_batch
        self._jobs_host = device.alloc_pinned(n * JOB_DTYPE.itemsize)
        self._jobs = device.alloc(n * JOB_DTYPE.itemsize)
        self._probs_host = device.alloc_pinned(n * 3 * 4).view(np.float32).reshape(n, 3)
        self._score_host = device.alloc_pinned(n * 8).view(np.float64)
        self._mean_host = device.alloc_pinned(n * 8).view(np.float64)
        self._probs, self._score, self._mean = (device.alloc(n * 3 * 4), device.alloc(n * 8), device.alloc(n * 8))
        self._graph: Any = None
        self._engines_batch = 0  # the input shape the engines' contexts last ran at
        self.capture_problem: str | None = None  # why graphs were given up, once they were

    def run(self, items: Sequence[FusedInput]) -> FusedResult:
        """Score ``items`` in chunks of at most ``max_batch``; blocks until the results are back."""
        parts = []
        with self._lock, ExitStack() as held:
            self._device.bind_thread()
            for engine in self._engines:  # always in stream order: no lock-order inversion
                held.enter_context(engine.lock)
            for start in range(0, len(items), self.max_batch):
                parts.append(self._run_chunk(items[start:start + self.max_batch]))
        if not parts:
            return FusedResult(np.empty((0, 3), np.float32), np.empty(0), np.empty(0))
        return FusedResult(*(np.concatenate(column) for column in zip(*parts)))

    def _run_chunk(self, items: Sequence[FusedInput]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, stream = len(items), self._stream
        self._upload(items)
        if n == self.capture_batch and self._graph is not None and self._engines_batch == n:
            self._device.replay(self._graph, stream)
        else:
            if n == self.capture_batch:
                self._drop_graph()  # the contexts ran another shape since it was captured
            self._enqueue(n)
        self._device.synchronize(stream)
        result = (self._probs_host[:n].copy(), self._score_host[:n].copy(), self._mean_host[:n].copy())
        if n == self.capture_batch and self._graph is None:
            self._capture(n)  # after a plain run of this size: TensorRT's first enqueue may allocate
        return result

    def _capture(self, n: int) -> None:
        """Record preprocess -> engines -> vote -> copy for batches of ``n`` as a graph; on failure,
        end the capture (leaving a stream capturing would make every later call fail) and go on
        without graphs."""
        device, stream = self._device, self._stream
        device.begin_capture(stream)
        try:
            self._enqueue(n)
        except Exception as exc:  # noqa: BLE001 - TensorRT and the driver raise their own types
            self._end_failed_capture()
            self.capture_batch = None
            self.capture_problem = f"CUDA-graph capture failed ({exc}); batches run without a graph"
            return
        self._graph = device.end_capture(stream)

    def _end_failed_capture(self) -> None:
        """Rejoin the forked engine streams and end the capture, whatever state the failure left
        them in; an invalidated capture ends with an error of its own, which changes nothing here."""
        device, stream = self._device, self._stream
        for engine in self._engines:
            with suppress(Exception):
                device.wait(stream, engine.stream)
        with suppress(Exception):
            device.destroy_graph(device.end_capture(stream))

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._device.destroy_graph(self._graph)
            self._graph = None

    def _upload(self, items: Sequence[FusedInput]) -> None:
        """Pack every image into the staging buffer, copy it and the job table to the device."""
        arrays = [a for item in items for a in (item.rgb, item.face_rgb) if a is not None]
        for array in arrays:
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
                raise FusedPathError(f"fused path takes non-empty uint8 HxWx3 images, got "
                                     f"{array.shape} {array.dtype}")
        offsets = np.cumsum([0] + [a.size for a in arrays])
        self._staging.reserve(int(offsets[-1]), self._stream)
        placed: dict[int, DeviceImage] = {}
        for array, offset in zip(arrays, offsets[:-1]):
            self._staging.host[offset:offset + array.size].reshape(array.shape)[...] = array
            height, width = array.shape[:2]
            placed[id(array)] = (self._staging.address + int(offset), 3 * width, width, height)
        jobs = make_jobs([placed[id(item.rgb)] for item in items], [item.face_box for item in items],
                         face_images=[None if item.face_rgb is None else placed[id(item.face_rgb)]
                                      for item in items])
        table = self._jobs_host[:jobs.nbytes]
        table[...] = jobs.view(np.uint8)
        self._device.upload(self._staging.address, self._staging.host[:int(offsets[-1])], self._stream)
        self._device.upload(self._jobs, table, self._stream)

    def _enqueue(self, n: int) -> None:
        """Preprocess -> three engines on their streams -> vote -> result copy, all queued."""
        device, stream = self._device, self._stream
        device.preprocess(self._jobs, n, tuple(e.input_address for e in self._engines), self._half, stream)
        self._engines_batch = n
        for engine in self._engines:
            device.wait(engine.stream, stream)
            engine.enqueue(n)
        for engine in self._engines:
            device.wait(stream, engine.stream)
        device.vote(tuple(e.output_address for e in self._engines), self._weights, n,
                    self._probs, self._score, self._mean, stream)
        device.download(self._probs_host[:n].reshape(-1).view(np.uint8), self._probs, stream)
        device.download(self._score_host[:n].view(np.uint8), self._score, stream)
        device.download(self._mean_host[:n].view(np.uint8), self._mean, stream)

    def close(self) -> None:
        """Release the graph and every buffer (the engines belong to their backend). Every release
        is tried even after one fails (after a kernel fault the synchronize fails, and stopping
        there left every buffer allocated); the first failure is raised at the end."""
        with self._lock:
            failures: list[BaseException] = []
            attempt_release(failures, self._device.bind_thread)
            attempt_release(failures, lambda: self._device.synchronize(self._stream))
            attempt_release(failures, self._drop_graph)
            attempt_release(failures, self._staging.release)
            for address in (self._jobs, self._probs, self._score, self._mean):
                if address:
                    attempt_release(failures, lambda: self._device.free(address))
            for buffer in (self._jobs_host, self._probs_host, self._score_host, self._mean_host):
                if buffer.size:
                    attempt_release(failures, lambda: self._device.free_pinned(buffer))
            self._jobs = self._probs = self._score = self._mean = 0
            self._jobs_host = self._probs_host = self._score_host = self._mean_host = np.empty(0, np.uint8)
            raise_held(failures)
