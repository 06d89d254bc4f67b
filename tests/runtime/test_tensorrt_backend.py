"""The TensorRT boundary, without TensorRT: compatibility refusal and absence handling.

TensorRT cannot be installed on this project's machines; these tests cover only what runs
without it (see runtime/tensorrt_backend.py), and do not count as verification of TensorRT itself.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from dfd.runtime import doctor
from dfd.runtime.backends import BackendError, select_backend, tensorrt_unavailable_reason
from dfd.runtime.manifest import load_manifest
from dfd.runtime.tensorrt_backend import tensorrt_mismatch, tensorrt_package, tensorrt_unusable_reason

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
    assert "TensorRT 10.3.0.26" in tensorrt_mismatch({**BUILT, "version": "10.3.0.26"}, "10.3.0.30", "8.7")


def test_one_version_spelled_with_and_without_its_build_number_is_one_version():
    """Packagings spell one TensorRT version "10.3.0" or "10.3.0.26": a set refused as built by
    another version would send its user to rebuild for nothing."""
    assert tensorrt_mismatch({**BUILT, "version": "10.3.0.26"}, "10.3.0", "8.7") is None
    assert tensorrt_mismatch(BUILT, "10.3.0.26", "8.7") is None
    assert tensorrt_mismatch({**BUILT, "version": "10.3"}, "10.3.0", "8.7") is not None  # too little to tell
    # a pre-release (TensorRT 10.0 early access was "10.0.0b6") is one version only spelled alike
    assert tensorrt_mismatch({**BUILT, "version": "10.0.0b6"}, "10.0.0b6", "8.7") is None
    assert tensorrt_mismatch({**BUILT, "version": "10.0.0b6"}, "10.0.0b7", "8.7") is not None


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


def test_a_hardware_compatible_engine_is_refused_on_a_jetson():
    """NVIDIA does not support hardware compatibility on Jetson or DRIVE: an engine built so on a
    Grace Hopper (aarch64, like the Jetson) was accepted on an Orin (8.7, Ampere) and left to
    TensorRT's deserialization to refuse."""
    built = {**BUILT, "gpu": "GH200", "compute_capability": "9.0", "platform": "Linux-aarch64",
             "options": {"hardware_compatibility": True}}
    assert tensorrt_mismatch(built, "10.3.0", "8.7", "Linux-aarch64") is None  # a discrete Ampere GPU runs it
    reason = tensorrt_mismatch(built, "10.3.0", "8.7", "Linux-aarch64", local_integrated=True)
    assert reason == ("the engines were built hardware-compatible on a GPU of compute capability 9.0 (GH200), and "
                      "TensorRT does not support hardware compatibility on a Jetson or DRIVE GPU like this one (8.7): "
                      "rebuild the engine set here")
    # the same engine on its own architecture is no concern of that rule
    assert tensorrt_mismatch(built, "10.3.0", "9.0", "Linux-aarch64", local_integrated=True) is None


def test_onnxruntime_set_falls_back_under_auto_and_refuses_explicit_tensorrt(tiny_engine_set):
    manifest = load_manifest(tiny_engine_set)
    assert "no TensorRT engines" in tensorrt_unavailable_reason(manifest)
    choice = select_backend("auto", manifest)
    assert choice.backend.name == "onnxruntime" and "TensorRT not used" in choice.reason
    with pytest.raises(BackendError, match="cannot use the tensorrt backend"):
        select_backend("tensorrt", manifest)


@pytest.fixture
def installed_tensorrt(tmp_path, monkeypatch):
    """Installs a ``tensorrt`` package whose ``__init__.py`` is the given source where the import
    system finds it (as a wheel's is), and forgets the module afterwards."""
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)

    def install(source: str) -> None:
        package = tmp_path / "site" / "tensorrt"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()

    yield install
    sys.modules.pop("tensorrt", None)


def test_a_tensorrt_package_that_cannot_load_is_a_reason_not_a_crash(installed_tensorrt):
    """The wheel's __init__ loads libnvinfer: a missing or mismatched library raised out of
    ``--backend auto`` (found by ``find_spec``, never imported) instead of falling back."""
    installed_tensorrt('raise OSError("libnvinfer.so.10: cannot open shared object file: No such file")')
    reason = ("the tensorrt package is installed but cannot be loaded (OSError: libnvinfer.so.10: cannot open "
              "shared object file: No such file); reinstall it for this CUDA version")
    assert tensorrt_package() == (None, reason) and tensorrt_unusable_reason() == reason
    assert doctor._tensorrt() == {"available": False, "version": None, "reason": reason}


def test_tensorrt_older_than_10_is_refused_by_version(installed_tensorrt):
    """JetPack 6.0 ships TensorRT 8.6, whose builder has no strongly typed networks: the build
    crashed with an AttributeError where it now says what to install."""
    installed_tensorrt('__version__ = "8.6.2"')
    module, reason = tensorrt_package()
    assert module is sys.modules["tensorrt"]
    assert reason == ("TensorRT 8.6.2 is too old: dfd-export builds and runs strongly typed engines, which need "
                      "TensorRT 10 or later (on Jetson, JetPack 6.1 or later)")
    assert tensorrt_unusable_reason() == reason
    assert doctor._tensorrt() == {"available": False, "version": "8.6.2", "reason": reason}


@pytest.mark.parametrize("source, given, version", [
    ("", "has no __version__", None),
    ('__version__ = ""', "gives '', no TensorRT version number,", ""),
    ('__version__ = "dev"', "gives 'dev', no TensorRT version number,", "dev")])
def test_a_tensorrt_package_without_a_version_is_refused_saying_so(installed_tensorrt, source, given, version):
    """A package named tensorrt with no version number (a stub, a namesake) is no TensorRT to build
    with, and the reason says what it gives: it read "TensorRT dev is too old", and doctor showed
    the version "unknown" where the package has none."""
    installed_tensorrt(source)
    reason = f"the tensorrt package {given}; dfd-export needs TensorRT 10 or later"
    assert tensorrt_package()[1] == reason
    assert doctor._tensorrt() == {"available": False, "version": version, "reason": reason}


@pytest.mark.parametrize("version", ["10.3.0.30", "10.3.0", "11.1.0"])
def test_tensorrt_10_is_usable_as_a_package(installed_tensorrt, version):
    installed_tensorrt(f'__version__ = "{version}"')
    assert tensorrt_package() == (sys.modules["tensorrt"], None)  # judged by its major version
    assert doctor._tensorrt() == {"available": True, "version": version, "reason": None}


def test_doctor_shows_a_version_that_is_no_string_as_text(installed_tensorrt):
    installed_tensorrt("__version__ = 10")
    assert doctor._tensorrt() == {"available": True, "version": "10", "reason": None}
