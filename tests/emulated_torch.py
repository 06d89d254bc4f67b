"""The slice of torch that the GPU benchmark scripts use (benchmarks/gpu_check.py,
benchmarks/preprocess_variants.py), played on the emulated GPU of tests/host_cuda.py: a "cuda"
tensor is a CPU tensor registered as device memory, so the kernels' launches pass its bounds
checks, and torch's current stream is one emulated stream. Not a GPU: it checks the scripts and the
calls they make, not the driver, and its timings mean nothing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Iterator

import numpy as np

from host_cuda import HostCuda


class _HostClockEvent:
    """torch.cuda.Event on the emulated GPU: record() runs the queued work, then reads the clock."""

    def __init__(self, torch_shim: "TorchOnTheEmulatedGpu") -> None:
        self._torch, self._at = torch_shim, None

    def record(self) -> None:
        self._torch.cuda.synchronize()
        self._at = time.perf_counter()

    def elapsed_time(self, end: "_HostClockEvent") -> float:
        return 1000 * (end._at - self._at)


class TorchOnTheEmulatedGpu:
    """torch for the scripts, on the emulated GPU (see the module docstring)."""

    def __init__(self, torch, gpu: HostCuda, monkeypatch) -> None:
        self._torch, self._gpu = torch, gpu
        self.uint8, self.float16, self.float32 = torch.uint8, torch.float16, torch.float32
        self.int16, self.int32, self.equal = torch.int16, torch.int32, torch.equal
        self.from_numpy = torch.from_numpy
        stream = gpu.new_stream()
        self.cuda = SimpleNamespace(synchronize=lambda: gpu.synchronize(stream, "torch.cuda.synchronize"),
                                    current_stream=lambda: SimpleNamespace(cuda_stream=stream),
                                    Event=lambda enable_timing: _HostClockEvent(self))
        monkeypatch.setattr(torch.Tensor, "cuda", lambda tensor: self._on_device(tensor.clone()))

    def _on_device(self, tensor):
        raw = tensor.view(-1).view(self._torch.uint8).numpy()
        self._gpu.device.allocations[tensor.data_ptr()] = raw  # the tensor outlives its use here
        return tensor

    def zeros(self, shape, dtype, device):
        return self._on_device(self._torch.zeros(shape, dtype=dtype))

    def full(self, shape, value, dtype, device):
        return self._on_device(self._torch.full(shape, value, dtype=dtype))

    def empty(self, shape, dtype, device):
        return self._on_device(self._torch.empty(shape, dtype=dtype))

    def empty_like(self, tensor):
        return self._on_device(self._torch.empty_like(tensor))

    def randint(self, low, high, shape, dtype, device):
        return self._on_device(self._torch.randint(low, high, shape, dtype=dtype))


@contextmanager
def short_of_the_last_fusion_row(gpu: HostCuda, kernel: str, value: float) -> Iterator[None]:
    """While inside, the emulated float32 preprocessing kernel ``kernel`` overwrites the last row
    of every fusion tensor with ``value`` after it runs: a kernel that misses a row, which the
    scripts' comparisons must report."""
    signature, run = gpu.kernels[kernel]

    def short_of_a_row(device, stream, args, grid, block):
        run(device, stream, args, grid, block)
        fusion = device.device_bytes(args[4], args[1] * 3 * 224 * 224 * 4, "fusion").view(np.float32)
        device._issue(stream, lambda: fusion.reshape(args[1], 3, 224, 224)[:, :, -1].fill(value))

    gpu.kernels[kernel] = (signature, short_of_a_row)
    try:
        yield
    finally:
        gpu.kernels[kernel] = (signature, run)
