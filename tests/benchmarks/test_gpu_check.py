"""``benchmarks/gpu_check.py`` is run by hand on a lent GPU machine; its GPU-free part runs here so
the script cannot rot between loans: NVRTC builds the kernels and the stand-in engines' kernel,
job packing works, and the stand-in reference gives probabilities for fp32 and fp16 inputs. Its
fused-pipeline, parity and throughput sections also run here on the emulated GPU of
tests/host_cuda.py, the last two with torch's "cuda" tensors played by CPU tensors registered as
its memory (not a GPU: this checks the script and the calls it makes, not the driver, and the
timings mean nothing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from emulated_torch import TorchOnTheEmulatedGpu, short_of_the_last_fusion_row
from host_cuda import INT, POINTER
from host_gpu import HostDevice

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_compiles_and_packs_without_a_gpu(gpu_check, tmp_path):
    out = tmp_path / "dry.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["dry_run"]
    assert report["ptx_bytes"]["sm_87"] > 0 and report["ptx_bytes"]["sm_90"] > 0
    assert report["stand_in_ptx_bytes"] > 0 and report["jobs"] == 12
    fp32, fp16 = report["stand_in_expected"]
    assert all(0.0 < p < 1.0 for p in fp32 + fp16)
    # fp16 inputs move the channel means a little, never by more than fp16's resolution near 2
    assert max(abs(a - b) for a, b in zip(fp32, fp16)) < 1e-3


@pytest.mark.parametrize("batch, height, width", [(32, 1080, 1440), (8, 3000, 4000), (64, 480, 640), (2, 200, 900)])
def test_throughput_counts_each_byte_once(gpu_check, batch, height, width):
    """The bar's bytes read are the union of what the three streams read (marked pixel by pixel
    here from runtime/preprocess.py's geometry), not their sum: the crop and the face window lie
    inside the image that the fusion resize reads whole."""
    from dfd.runtime import preprocess

    streams = np.zeros((3, height, width), dtype=bool)
    if min(height, width) >= 252:
        top, left = (height - 252) // 2, (width - 252) // 2
        streams[0, top:top + 252, left:left + 252] = True
    else:
        streams[0] = True  # upscaled whole before its crop
    box = (width * 0.3, height * 0.2, width * 0.7, height * 0.8)  # the throughput section's box
    left, top, right, bottom = preprocess.face_window(box)
    streams[1, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
    streams[2] = True  # the fusion resize: every source pixel has a weight in some output pixel
    read, written = gpu_check.fused_bytes(batch, height, width, 2)
    assert read == batch * 3 * int(streams.any(axis=0).sum())
    assert read < batch * 3 * int(streams.sum())  # what counting each stream's reads would give
    assert written == batch * 2 * sum(3 * side * side for side in (252, 252, 224))
    assert gpu_check.fused_bytes(batch, height, width, 4) == (read, 2 * written)


def _host_mean_head(half: bool):
    """The stand-in engines' ``mean_head`` kernel on the host: block (b, c) writes the mean of
    input plane c of image b to logits[b, c]."""
    dtype = np.dtype(np.float16 if half else np.float32)

    def run(device: HostDevice, stream: int, args: list, grid, block) -> None:
        inputs, logits, side = args
        batch, channels, depth = grid
        assert (channels, depth) == (2, 1) and block[1:] == (1, 1)
        plane = side * side
        pixels = device.device_bytes(inputs, batch * 3 * plane * dtype.itemsize, "stand-in input")
        out = device.device_bytes(logits, batch * 2 * 4, "stand-in logits")

        def head() -> None:
            means = pixels.view(dtype).reshape(batch, 3, plane)[:, :2].astype(np.float64).mean(axis=2)
            out.view(np.float32)[:] = means.astype(np.float32).reshape(-1)
        device._issue(stream, head)
    return (POINTER, POINTER, INT), run


def test_pipeline_section_passes_on_an_emulated_gpu(gpu_check, emulated_gpu):
    gpu = emulated_gpu
    gpu.kernels.update(mean_head_f32=_host_mean_head(False), mean_head_f16=_host_mean_head(True))
    kernels = gpu_check.cuda_kernels.CudaKernels(0)
    report = gpu_check.gpu_pipeline(kernels, np.random.default_rng(1), count=10, max_batch=4, repeat=1)
    kernels.close()
    assert report["fp32"]["ok"] and report["fp16"]["ok"], report
    assert report["fp32"]["vote_mismatches_given_own_probs"] == 0
    assert gpu.calls["cuGraphLaunch"] > 0 and gpu.leaks() == {}


def test_a_failing_section_is_reported_and_the_others_still_run(gpu_check):
    """A loan is short: one section that raises must leave its traceback in the report, not end
    the run, and the exit status must say that a check failed anywhere in the report."""
    def broken():
        raise RuntimeError("no such kernel")

    part = gpu_check.run_section("parity", broken)
    assert "RuntimeError: no such kernel" in part["error"] and part["section_seconds"] >= 0
    assert not gpu_check.section_passed(part)
    assert gpu_check.section_passed(gpu_check.run_section("vote", lambda: {"ok": True, "n": 3}))
    nested = {"copy_bandwidth_GBps": 1.0, "32x1080x1440": {"ok": False, "fp32": {}}, "8x3000x4000": {"fp32": {}}}
    assert not gpu_check.section_passed(nested)
    nested["32x1080x1440"]["ok"] = True
    assert gpu_check.section_passed(nested)


def test_parity_and_throughput_sections_run_on_an_emulated_gpu(gpu_check, emulated_gpu, monkeypatch):
    """Every decomposition through the sections a loan runs first: parity passes on sizes that take
    every path (and fails when the row or column kernel writes something else), throughput reports
    each."""
    import torch

    shim = TorchOnTheEmulatedGpu(torch, emulated_gpu, monkeypatch)
    kernels = gpu_check.cuda_kernels.CudaKernels(0)
    rng = np.random.default_rng(3)
    cases = [(1, 1), (90, 60), (224, 224), (448, 448), (300, 5000), (700, 1000), (230, 229)]
    report = gpu_check.gpu_parity(shim, kernels, rng, cases)
    assert gpu_check.section_passed(report), report
    for decomposition in ("pixels", "rows", "columns"):
        assert report[decomposition]["exact_streams"] + report[decomposition]["cubic_streams"] == 3 * len(cases)
        assert report[decomposition]["max_abs_diff_exact"] == 0.0
    assert report["tensors_differing_from_pixels"] == {"rows": 0, "columns": 0}

    throughput = gpu_check.gpu_throughput(shim, kernels, cases=((2, 300, 400),), rounds=1, repeat=1,
                                          copy_bytes=1 << 16)
    case = throughput["2x300x400"]
    assert throughput["runtime_uses"] == "columns" and "ok" in case
    for decomposition in ("pixels", "rows", "columns"):
        assert case[decomposition]["fp32"]["seconds_per_batch"] > 0
        assert case[decomposition]["fp16"]["fraction_of_copy_bandwidth"] > 0

    # the parity check can fail: a row or column kernel that skips its last output row
    for decomposition in ("rows", "columns"):
        with short_of_the_last_fusion_row(emulated_gpu, f"dfd_preprocess_{decomposition}_f32", np.nan):
            report = gpu_check.gpu_parity(shim, kernels, rng, [(300, 400)])
        assert report[decomposition]["max_abs_diff_exact"] == float("inf") and not gpu_check.section_passed(report)
        assert report["tensors_differing_from_pixels"][decomposition] == 1
    kernels.close()
