"""`dfd-export doctor` on this CPU-only machine: complete, JSON-serialisable, and clear about
what is missing."""

from __future__ import annotations

import json

import pytest

from dfd.runtime import cuda_kernels
from dfd.runtime.doctor import collect_doctor_report
from dfd.runtime.tensorrt_backend import TENSORRT_INSTALL_HINT


@pytest.fixture
def report(tmp_path, monkeypatch):
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(tmp_path / "cache"))
    try:
        has_gpu = cuda_kernels.gpu_info() is not None
    except cuda_kernels.CudaUnavailableError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this test describes a machine without a GPU")
    engine = tmp_path / "engines"
    engine.mkdir()
    (engine / "manifest.json").write_text(json.dumps({"streams": {
        "global": {"precision": "fp16", "backend": "tensorrt"},
        "face": {"precision": "fp32", "backend": "onnxruntime"},
        "fusion": {"backend": "tensorrt"},
    }}))
    return collect_doctor_report(engine)


def test_report_says_no_gpu_and_no_tensorrt(report):
    json.dumps(report)  # the CLI prints it with --json
    assert report["gpu"]["available"] is False
    assert report["gpu"]["reason"].startswith("no GPU")
    assert report["cuda"]["driver_version"] is None and "driver" in report["cuda"]["error"]
    assert report["tensorrt"] == {"available": False, "version": None, "reason": TENSORRT_INSTALL_HINT}
    assert report["python"]["version"].count(".") == 2
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]


def test_report_compiles_kernels_for_jetson_and_h100(report):
    assert report["kernels"]["ptx"] == {"sm_87": "ok", "sm_90": "ok"}
    assert report["kernels"]["nvrtc_version"] == cuda_kernels.nvrtc_version()
    assert report["kernels"]["cubin_local"] is None  # no local GPU to compile for


def test_engine_set_streams_and_what_they_need(report):
    streams = report["engine_set"]["streams"]
    assert streams["global"] == {"precision": "fp16", "backend": "tensorrt", "runnable": False,
                                 "reason": TENSORRT_INSTALL_HINT}
    assert streams["face"]["runnable"] is True
    assert streams["fusion"]["precision"] == "unknown"  # tolerated missing key


def test_unreadable_engine_set_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(tmp_path / "cache"))
    result = collect_doctor_report(tmp_path / "missing")
    assert "cannot read manifest.json" in result["engine_set"]["error"]
