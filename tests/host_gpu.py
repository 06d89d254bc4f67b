"""A host stand-in for the GPU, for tests of the CUDA kernels' math and of the fused pipeline.

``load_kernel_host`` compiles the kernels' own headers with g++ (tests/runtime/kernel_host) into a
shared library. ``HostDevice`` implements gpu_pipeline's ``PipelineDevice`` over host memory with
that library as the kernels, and models what a real device would punish:
  * streams are queues that run only when synchronised or waited on, in one of two legal orders:
    ``"lazy"`` (another stream's work runs only when an event wait demands it, so a missing
    join reads stale results) or ``"others_first"`` (on a synchronise, every other stream runs
    first as far as its waits allow, so a missing fork computes on stale inputs);
  * copies and launches are bounds-checked against live allocations; frees of unknown addresses
    fail; allocation and synchronisation during graph capture fail;
  * a captured graph records operations with the addresses they were given, and replays them
    reading whatever memory holds at replay time, as a CUDA graph does.
``HostEngine`` is an engine on its own stream over an ONNX Runtime session.
This is a model of the CUDA semantics the pipeline relies on, not a GPU: it verifies the
orchestration; tests/host_cuda.py emulates the driver API on top of it to run runtime/cuda_device.py.
"""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dfd.runtime.cuda_kernels import CROP_SIDE, FUSION_SIDE, JOB_DTYPE

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "runtime" / "kernels"
HOST_SOURCE = Path(__file__).parent / "runtime" / "kernel_host" / "kernel_host.cpp"


def required_compiler(name: str) -> str:
    """The path of a system compiler the suite builds with. Missing, it fails the test rather than
    skipping it: the host build is CI's only check of the kernels' math (and cc of the C ABI), and
    a skip would let a machine without them pass the suite unchecked."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; the tests compile with it (install a C/C++ toolchain, "
                    f"e.g. apt install build-essential)")
    return path


def load_kernel_host(directory: Path) -> ctypes.CDLL:
    """The kernels' header math compiled for this CPU with g++."""
    compiler = required_compiler("g++")
    library = directory / "kernel_host.so"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC",
                    f"-I{KERNELS}", str(HOST_SOURCE), "-o", str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    pointer, i = ctypes.c_void_p, ctypes.c_int
    lib.host_preprocess.argtypes = [pointer, i, i, pointer, pointer, pointer]
    lib.host_vote_kernel.argtypes = [pointer, pointer, pointer, pointer, i, pointer, pointer, pointer]
    lib.host_preprocess_rows.argtypes = [pointer, i, i, pointer, pointer, pointer, pointer]
    lib.host_row_staged.argtypes = [pointer, i, pointer]
    lib.host_preprocess_columns.argtypes = [pointer, i, i, pointer, pointer, pointer, pointer]
    lib.host_column_blocks_per_image.restype = ctypes.c_longlong
    lib.host_tasks_per_image.restype = ctypes.c_longlong
    lib.host_rows_per_image.restype = ctypes.c_longlong
    return lib


class HostDevice:
    """``PipelineDevice`` on host memory (see module docstring)."""

    def __init__(self, kernels: ctypes.CDLL, order: str = "lazy") -> None:
        if order not in ("lazy", "others_first"):
            raise ValueError(order)
        self._kernels, self._order = kernels, order
        # the row kernel's threads run in reverse between barriers (any order is legal there)
        self._reverse_threads = np.arange(kernels.host_row_threads(), dtype=np.int32)[::-1].copy()
        self.allocations: dict[int, np.ndarray] = {}  # device memory, by address
        self.pinned: dict[int, np.ndarray] = {}
        self._queues: dict[int, list[Callable[[], None]]] = {}
        self._stream_ids = itertools.count(1)
        self._capturing: set[int] = set()
        self._graph: list[Callable[[], None]] | None = None
        self.graphs_captured = self.graphs_replayed = self.kernel_launches = 0
        self.threads: set[int] = set()

    # memory
    def bind_thread(self) -> None:
        self.threads.add(threading.get_ident())

    def alloc(self, nbytes: int) -> int:
        self._refuse_in_capture("alloc")
        buffer = np.zeros(nbytes, np.uint8)
        self.allocations[buffer.ctypes.data] = buffer
        return buffer.ctypes.data

    def free(self, address: int) -> None:
        self._refuse_in_capture("free")
        if self.allocations.pop(address, None) is None:
            raise AssertionError(f"free of unknown device address {address:#x}")

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        buffer = np.zeros(nbytes, np.uint8)
        self.pinned[buffer.ctypes.data] = buffer
        return buffer

    def free_pinned(self, buffer: np.ndarray) -> None:
        if self.pinned.pop(buffer.ctypes.data, None) is None:
            raise AssertionError("free of unknown pinned buffer")

    def _check_range(self, address: int, nbytes: int, pool: dict[int, np.ndarray], what: str) -> np.ndarray:
        """The ``nbytes`` at ``address`` as a view of the allocation of ``pool`` that holds them."""
        for base, buffer in pool.items():
            if base <= address and address + nbytes <= base + buffer.size:
                return buffer[address - base:address - base + nbytes]
        raise AssertionError(f"{what}: {nbytes} bytes at {address:#x} are outside every allocation")

    def device_bytes(self, address: int, nbytes: int, what: str) -> np.ndarray:
        return self._check_range(address, nbytes, self.allocations, what)

    def pinned_bytes(self, address: int, nbytes: int, what: str) -> np.ndarray:
        return self._check_range(address, nbytes, self.pinned, what)

    # streams
    def new_stream(self) -> int:
        stream = next(self._stream_ids)
        self._queues[stream] = []
        return stream

    def _issue(self, stream: int, operation: Callable[[], None]) -> None:
        if stream in self._capturing:
            self._graph.append(operation)
        else:
            self._queues[stream].append(operation)

    def _drain(self, stream: int) -> None:
        queue = self._queues[stream]
        while queue:
            queue.pop(0)()

    def wait(self, stream: int, on: int) -> None:
        self.wait_for(stream, self.record(on))

    def record(self, on: int) -> tuple[int, list[Callable[[], None]]] | None:
        """An event recorded on ``on``: the work it had queued by now (None while it captures)."""
        return None if on in self._capturing else (on, list(self._queues[on]))

    def wait_for(self, stream: int, recorded: tuple[int, list[Callable[[], None]]] | None) -> None:
        """``stream`` waits for a recorded event: the work queued before the record runs first."""
        if recorded is None:
            self._capturing.add(stream)  # the fork joins the capture, as with cudaStreamWaitEvent
            return
        on, pending = recorded

        def run_what_on_had_queued() -> None:
            for operation in pending:
                if operation in self._queues[on]:
                    self._queues[on].remove(operation)
                    operation()
        self._issue(stream, run_what_on_had_queued)

    def synchronize(self, stream: int) -> None:
        self._refuse_in_capture("synchronize")
        if self._order == "others_first":
            for other in self._queues:
                if other != stream:
                    self._drain(other)
        self._drain(stream)

    def _refuse_in_capture(self, what: str) -> None:
        if self._capturing:
            raise AssertionError(f"{what} during CUDA-graph capture is illegal")

    # transfers and kernels
    def upload(self, dst: int, src: np.ndarray, stream: int) -> None:
        self._check_range(dst, src.nbytes, self.allocations, "upload destination")
        self._check_range(src.ctypes.data, src.nbytes, self.pinned, "upload source (must be pinned)")
        address, nbytes = src.ctypes.data, src.nbytes
        self._issue(stream, lambda: ctypes.memmove(dst, address, nbytes))

    def download(self, dst: np.ndarray, src: int, stream: int) -> None:
        self._check_range(src, dst.nbytes, self.allocations, "download source")
        self._check_range(dst.ctypes.data, dst.nbytes, self.pinned, "download destination (must be pinned)")
        address, nbytes = dst.ctypes.data, dst.nbytes
        self._issue(stream, lambda: ctypes.memmove(address, src, nbytes))

    def preprocess(self, jobs: int, batch: int, outputs: tuple[int, int, int], half: bool, stream: int,
                   decomposition: str = "pixels") -> None:
        """The fused preprocessing kernel; ``decomposition="rows"`` runs the row-block kernel,
        ``"columns"`` the column-block kernel."""
        self._check_range(jobs, batch * JOB_DTYPE.itemsize, self.allocations, "job table")
        for address, side in zip(outputs, (CROP_SIDE, CROP_SIDE, FUSION_SIDE)):
            self._check_range(address, batch * 3 * side * side * (2 if half else 4), self.allocations, "stream tensor")

        def launch() -> None:
            self.kernel_launches += 1
            if decomposition == "rows":
                self._kernels.host_preprocess_rows(jobs, batch, int(half), *outputs, self._reverse_threads.ctypes.data)
            elif decomposition == "columns":
                self._kernels.host_preprocess_columns(jobs, batch, int(half), *outputs,
                                                      self._reverse_threads.ctypes.data)
            else:
                self._kernels.host_preprocess(jobs, batch, int(half), *outputs)
        self._issue(stream, launch)

    def vote(self, logits, weights, batch: int, probs: int, score: int, mean: int, stream: int) -> None:
        for address in logits:
            self._check_range(address, batch * 8, self.allocations, "logits")
        for address, nbytes in ((probs, batch * 12), (score, batch * 8), (mean, batch * 8)):
            self._check_range(address, nbytes, self.allocations, "vote output")
        weights = np.array(weights, np.float64)

        def launch() -> None:
            self.kernel_launches += 1
            self._kernels.host_vote_kernel(*logits, weights.ctypes.data, batch, probs, score, mean)
        self._issue(stream, launch)

    # graphs
    def begin_capture(self, stream: int) -> None:
        self._capturing, self._graph = {stream}, []

    def end_capture(self, stream: int) -> list[Callable[[], None]]:
        graph, self._capturing, self._graph = self._graph, set(), None
        self.graphs_captured += 1
        return graph

    def replay(self, graph: list[Callable[[], None]], stream: int) -> None:
        self.graphs_replayed += 1
        for operation in graph:
            self._issue(stream, operation)

    def destroy_graph(self, graph) -> None:
        graph.clear()


class HostEngine:
    """An engine on its own stream: ONNX Runtime reading and writing device buffers."""

    def __init__(self, device: HostDevice, session, side: int, max_batch: int) -> None:
        self._device, self._session, self._side = device, session, side
        self.max_batch = max_batch
        self.input_dtype = np.dtype(np.float32)
        self.output_dtype = np.dtype(np.float32)
        self.input_address = device.alloc(max_batch * 3 * side * side * 4)
        self.output_address = device.alloc(max_batch * 2 * 4)
        self.stream = device.new_stream()
        self.lock = threading.Lock()
        self.batches: list[int] = []
        self.shape = 0  # the batch its execution context was last set to, as TensorRT's input shape
        self.refuse_capture = False  # enqueue fails while its stream captures, as TensorRT may

    def enqueue(self, batch: int) -> None:
        if self.refuse_capture and self._device._capturing:
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.batches.append(batch)
        self.shape = batch
        pixels = self._device.allocations[self.input_address].view(np.float32)
        logits = self._device.allocations[self.output_address].view(np.float32)
        shape = (batch, 3, self._side, self._side)

        def infer() -> None:
            # TensorRT: a graph captured at one input shape is invalid once the context ran another
            assert self.shape == batch, (f"inference of {batch} rows ran on a context set to {self.shape}: a CUDA "
                                         "graph replayed after its execution context changed shape")
            name = self._session.get_inputs()[0].name
            (out,) = self._session.run(None, {name: pixels[:np.prod(shape)].reshape(shape).copy()})
            logits[:batch * 2] = np.asarray(out, np.float32).reshape(-1)
        self._device._issue(self.stream, infer)
