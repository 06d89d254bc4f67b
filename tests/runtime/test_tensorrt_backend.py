"""The TensorRT boundary, without TensorRT: compatibility refusal and absence handling.

TensorRT cannot be installed on this project's machines; these tests cover only what runs
without it (see runtime/tensorrt_backend.py), and do not count as verification of TensorRT itself.
"""

from __future__ import annotations

import pytest

from dfd.runtime.backends import BackendError, select_backend, tensorrt_unavailable_reason
from dfd.runtime.manifest import load_manifest
from dfd.runtime.tensorrt_backend import tensorrt_mismatch

BUILT = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
         "options": {"version_compatible": False, "hardware_compatibility": False}}


def test_same_version_and_gpu_is_accepted():
    assert tensorrt_mismatch(BUILT, "10.3.0", "8.7") is None


def test_other_tensorrt_version_is_refused_with_the_fix():
    reason = tensorrt_mismatch(BUILT, "10.7.0", "8.7")
    assert "TensorRT 10.3.0" in reason and "10.7.0" in reason and "--version-compatible" in reason


def test_version_compatible_engines_load_on_later_same_major():
    built = {**BUILT, "options": {"version_compatible": True}}
    assert tensorrt_mismatch(built, "10.7.0", "8.7") is None
    assert tensorrt_mismatch(built, "11.0.0", "8.7") is not None  # another major
    assert tensorrt_mismatch(built, "10.1.0", "8.7") is not None  # older runtime


def test_other_gpu_is_refused_unless_hardware_compatible():
    reason = tensorrt_mismatch(BUILT, "10.3.0", "9.0")
    assert "compute capability 8.7" in reason and "9.0" in reason
    built = {**BUILT, "options": {"hardware_compatibility": True}}
    assert tensorrt_mismatch(built, "10.3.0", "9.0") is None
    assert tensorrt_mismatch(built, "10.3.0", "7.5") is not None  # pre-Ampere


def test_onnxruntime_set_falls_back_under_auto_and_refuses_explicit_tensorrt(tiny_engine_set):
    manifest = load_manifest(tiny_engine_set)
    assert "no TensorRT engines" in tensorrt_unavailable_reason(manifest)
    choice = select_backend("auto", manifest)
    assert choice.backend.name == "onnxruntime" and "TensorRT not used" in choice.reason
    with pytest.raises(BackendError, match="cannot use the tensorrt backend"):
        select_backend("tensorrt", manifest)
