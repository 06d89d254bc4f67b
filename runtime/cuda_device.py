"""The fused pipeline's ``PipelineDevice`` on a real GPU: cuda-python's driver API and the NVRTC kernels.

Run once on a real GPU: an H100, lent for one session, ran it through ``benchmarks/gpu_check.py``'s
pipeline section. That covered allocations, staging, event-ordered streams, and CUDA-graph capture
and replay. It matched NumPy, and compute-sanitizer found no errors (benchmarks/gpu_check_h100.json).
Neither the development machine nor CI has a GPU, so the tests run it on an emulated GPU
(tests/host_cuda.py): every call goes through the real cuda-bindings function's argument checks,
then runs on host memory and queues, with the kernels' arguments read through the compiled CUBIN's
parameter layout; the driver itself is not exercised there. Written against
the documented driver API (``cuMemAlloc``/``cuMemAllocHost``, ``cuMemcpy*Async``, ``cuStreamCreate``,
``cuEventRecord``/``cuStreamWaitEvent``, ``cuStreamBeginCapture``/``cuStreamEndCapture``,
``cuGraphInstantiate``/``cuGraphLaunch``). Everything it does is queued on streams of the device's
primary context, the context TensorRT and the CUDA runtime API use too, so stream handles pass
freely between this module and TensorRT's engine slots.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .cuda_kernels import CudaKernels, CudaUnavailableError, check_cuda
from .errors import attempt_release, raise_held


def _ok(result: Any, what: str) -> Any:
    """cuda-bindings returns a (status, *values) tuple, or a bare status for calls with no output."""
    return check_cuda(result if isinstance(result, tuple) else (result,), what, CudaUnavailableError)


class CudaPipelineDevice:
    """Device memory, page-locked host memory, streams, events and graphs on one GPU.

    ``close`` destroys the streams and events it made; memory and graphs are released by whoever
    allocated them (the pipeline), and the kernels by whoever loaded them."""

    def __init__(self, kernels: CudaKernels) -> None:
        self.kernels = kernels
        self._driver = kernels.driver
        self._events: dict[int, Any] = {}  # one reusable event per stream that others wait on
        self._streams: list[int] = []

    def close(self) -> None:
        """Destroy every event and stream, each tried even after one fails (it stopped at the
        first, leaving the rest); the first failure is raised at the end."""
        failures: list[BaseException] = []
        attempt_release(failures, self.bind_thread)
        for event in self._events.values():
            attempt_release(failures, lambda: _ok(self._driver.cuEventDestroy(event), "cuEventDestroy"))
        for stream in self._streams:
            attempt_release(failures, lambda: _ok(self._driver.cuStreamDestroy(stream), "cuStreamDestroy"))
        self._events, self._streams = {}, []
        raise_held(failures)

    def bind_thread(self) -> None:
        _ok(self._driver.cuCtxSetCurrent(self.kernels.context), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        return int(_ok(self._driver.cuMemAlloc(nbytes), "cuMemAlloc"))

    def free(self, address: int) -> None:
        _ok(self._driver.cuMemFree(address), "cuMemFree")

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        address = int(_ok(self._driver.cuMemAllocHost(nbytes), "cuMemAllocHost"))
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))

    def free_pinned(self, buffer: np.ndarray) -> None:
        _ok(self._driver.cuMemFreeHost(buffer.ctypes.data), "cuMemFreeHost")

    def new_stream(self) -> int:
        flags = self._driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        stream = int(_ok(self._driver.cuStreamCreate(flags), "cuStreamCreate"))
        self._streams.append(stream)
        return stream

    def upload(self, dst: int, src: np.ndarray, stream: int) -> None:
        _ok(self._driver.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, stream), "cuMemcpyHtoDAsync")

    def download(self, dst: np.ndarray, src: int, stream: int) -> None:
        _ok(self._driver.cuMemcpyDtoHAsync(dst.ctypes.data, src, dst.nbytes, stream), "cuMemcpyDtoHAsync")

    def wait(self, stream: int, on: int) -> None:
        event = self._events.get(on)
        if event is None:
            flags = self._driver.CUevent_flags.CU_EVENT_DISABLE_TIMING
            event = self._events[on] = _ok(self._driver.cuEventCreate(flags), "cuEventCreate")
        _ok(self._driver.cuEventRecord(event, on), "cuEventRecord")
        _ok(self._driver.cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent")

    def synchronize(self, stream: int) -> None:
        _ok(self._driver.cuStreamSynchronize(stream), "cuStreamSynchronize")

    def preprocess(self, jobs: int, batch: int, outputs: tuple[int, int, int], half: bool, stream: int) -> None:
        self.kernels.preprocess(jobs, batch, outputs, half, stream)

    def vote(self, logits: tuple[int, int, int], weights: tuple[float, float, float], batch: int,
             probs: int, score: int, mean: int, stream: int) -> None:
        self.kernels.vote(logits, weights, batch, probs, score, mean, stream)

    def begin_capture(self, stream: int) -> None:
        # thread-local: other threads' unrelated CUDA calls stay legal while this one captures
        mode = self._driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        _ok(self._driver.cuStreamBeginCapture(stream, mode), "cuStreamBeginCapture")

    def end_capture(self, stream: int) -> Any:
        graph = _ok(self._driver.cuStreamEndCapture(stream), "cuStreamEndCapture")
        try:
            return _ok(self._driver.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            _ok(self._driver.cuGraphDestroy(graph), "cuGraphDestroy")  # the executable graph stays

    def replay(self, graph: Any, stream: int) -> None:
        _ok(self._driver.cuGraphLaunch(graph, stream), "cuGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        _ok(self._driver.cuGraphExecDestroy(graph), "cuGraphExecDestroy")
