"""TensorRT engine building without TensorRT: the clear refusal, and the argument plumbing
through a fake module. The fake checks which documented API calls are made with which
arguments; it is not a verification of TensorRT (which is never executed in this project)."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfd.export import tensorrt_build
from dfd.export.build import BuildRequest, build_engine_set
from dfd.export.cli import main
from dfd.runtime.cuda_kernels import GpuInfo
from dfd.runtime.manifest import load_manifest


def test_tensorrt_backend_without_tensorrt_is_one_clear_line(reference_ensemble, tmp_path):
    result = CliRunner().invoke(main, ["build", "--backend", "tensorrt", "--models-dir",
                                       str(reference_ensemble.models_dir), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: cannot build TensorRT engines")
    assert "NVIDIA's package index" in result.output and not (tmp_path / "e").exists()


class _Recorder:
    calls: list = []


def _fake_tensorrt() -> types.ModuleType:
    calls = _Recorder.calls
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Flag:  # enum-like attributes
        STRONGLY_TYPED = 5

    class Pool:
        WORKSPACE = "workspace"

    class BuilderFlag:
        VERSION_COMPATIBLE = "version_compatible"
        TF32 = "tf32"

    class HW:
        AMPERE_PLUS = "ampere_plus"

    class Cache:
        def serialize(self):
            return b"timing"

    class Config:
        hardware_compatibility_level = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data):
            calls.append(("timing_cache_in", data))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

    class Profile:
        def __init__(self):
            self.shapes = []

        def set_shape(self, name, lo, opt, hi):
            self.shapes.append((name, lo, opt, hi))

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls.append(("parse", Path(path).name))
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-engine"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType, trt.BuilderFlag = Flag, Pool, BuilderFlag
    trt.HardwareCompatibilityLevel = HW
    return trt


def test_build_plumbs_options_into_the_documented_api(reference_ensemble, tmp_path, monkeypatch):
    _Recorder.calls.clear()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(tensorrt_build, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr("dfd.runtime.cuda_kernels.gpu_info", lambda device=0: GpuInfo("Fake GPU", (8, 7)))
    out = tmp_path / "engines"
    result = CliRunner().invoke(main, [
        "build", "--backend", "tensorrt", "--models-dir", str(reference_ensemble.models_dir), "--out", str(out),
        "--streams", "global,fusion", "--min-batch", "2", "--opt-batch", "3", "--max-batch", "5",
        "--workspace-gib", "1.5", "--version-compatible", "--no-face-detector"])
    assert result.exit_code == 0, result.output
    calls = _Recorder.calls
    assert ("network_flags", 1 << 5) in calls  # strongly typed, nothing else
    assert ("parse", "global.fp32.onnx") in calls and ("parse", "fusion.fp32.onnx") in calls
    assert ("pool", "workspace", int(1.5 * (1 << 30))) in calls
    assert ("flag", "version_compatible") in calls
    assert ("clear_flag", "tf32") in calls  # float32 stays float32, as ONNX Runtime validated it
    assert ("profile", [("pixels", (2, 3, 252, 252), (3, 3, 252, 252), (5, 3, 252, 252))]) in calls
    assert ("profile", [("pixels", (2, 3, 224, 224), (3, 3, 224, 224), (5, 3, 224, 224))]) in calls
    assert ("timing_cache_in", b"timing") in calls  # the second stream reuses the first's cache
    manifest = load_manifest(out)
    assert manifest.raw["tensorrt"]["version"] == "10.3.0"
    assert manifest.raw["tensorrt"]["compute_capability"] == "8.7"
    assert manifest.raw["tensorrt"]["options"]["max_batch"] == 5
    assert manifest.raw["tensorrt"]["timing_cache"] == {  # every file of the set has its sha256
        "path": "timing.cache", "sha256": hashlib.sha256(b"timing").hexdigest(), "bytes": 6, "role": "timing-cache"}
    for stream in manifest.streams.values():
        assert stream.backend == "tensorrt" and stream.file("engine").path.endswith(".engine")
    assert (out / "global.fp32.engine").read_bytes() == b"serialized-engine"


def test_bad_batch_profile_is_refused():
    with pytest.raises(tensorrt_build.TensorRTBuildError, match="min <= opt <= max"):
        tensorrt_build.TensorRTOptions(min_batch=4, opt_batch=2, max_batch=8).check()
    # --max-batch 2 alone: the message names the default --opt-batch that breaks the order
    with pytest.raises(tensorrt_build.TensorRTBuildError,
                       match=r"got --min-batch 1, --opt-batch 4, --max-batch 2 \(defaults 1, 4, 16"):
        tensorrt_build.TensorRTOptions(max_batch=2).check()


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "auto"])
@pytest.mark.parametrize("tensorrt_here", [True, False])
def test_bad_batch_profile_is_refused_before_any_work_on_every_backend(backend, tensorrt_here, reference_ensemble,
                                                                          tmp_path, monkeypatch):
    """The profile was once checked only when TensorRT would build, so the same command passed on a
    CPU machine (options unused) and failed on a GPU one; now it fails everywhere, before the
    export. (TensorRT itself is faked as present for ``tensorrt_here``.)"""
    monkeypatch.setattr(tensorrt_build, "tensorrt_unavailable_reason",
                        lambda: None if tensorrt_here else "TensorRT is not installed")
    request = BuildRequest(out_dir=tmp_path / "x", backend=backend, models_dir=reference_ensemble.models_dir,
                           tensorrt=tensorrt_build.TensorRTOptions(min_batch=4, opt_batch=2, max_batch=8))
    with pytest.raises(tensorrt_build.TensorRTBuildError, match="min <= opt <= max"):
        build_engine_set(request)
    assert not (tmp_path / "x").exists()
