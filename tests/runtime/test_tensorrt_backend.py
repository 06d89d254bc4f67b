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


def test_a_patch_release_is_another_version():
    """Engines run only on the exact TensorRT version that built them, patch and build included."""
    built = {**BUILT, "version": "10.3.1.9"}
    assert "TensorRT 10.3.1.9" in tensorrt_mismatch(built, "10.3.0.26", "8.7")
    assert tensorrt_mismatch(BUILT, "10.3.1", "8.7") is not None


def test_version_compatible_engines_load_on_later_versions_nvidia_supports():
    built = {**BUILT, "options": {"version_compatible": True}}
    assert tensorrt_mismatch(built, "10.7.0", "8.7") is None
    assert tensorrt_mismatch(built, "10.3.1", "8.7") is None
    assert tensorrt_mismatch(built, "11.1.0", "8.7") is None  # TensorRT 11 runs 10's (11.4 support matrix)
    older = tensorrt_mismatch({**built, "version": "10.3.1"}, "10.3.0", "8.7")
    assert "older TensorRT 10.3.0" in older and "--version-compatible" not in older
    assert "does not run engines of major version 10" in tensorrt_mismatch(built, "12.0.0", "8.7")
    assert tensorrt_mismatch({**built, "version": "8.6.1"}, "11.1.0", "8.7") is not None  # no 8 -> 11


def test_engines_of_another_platform_are_refused_whatever_their_options():
    built = {**BUILT, "platform": "Linux-x86_64", "options": {"version_compatible": True,
                                                               "hardware_compatibility": True}}
    assert tensorrt_mismatch(built, "10.3.0", "8.7", "Linux-x86_64") is None
    reason = tensorrt_mismatch(built, "10.3.0", "8.7", "Linux-aarch64")
    assert "built on Linux-x86_64 and this machine is Linux-aarch64" in reason


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
