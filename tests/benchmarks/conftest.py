"""The emulated GPU the benchmark scripts' tests run on (tests/host_cuda.py)."""

from __future__ import annotations

import pytest

from host_cuda import HostCuda, no_cuda_driver
from host_gpu import HostDevice


@pytest.fixture
def emulated_gpu(kernel_host, kernel_cache, monkeypatch):
    if not no_cuda_driver():
        pytest.skip("a CUDA driver is installed: the emulation would reach it")
    gpu = HostCuda(HostDevice(kernel_host, "others_first"), kernel_host)
    gpu.install(monkeypatch)
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))
    return gpu
