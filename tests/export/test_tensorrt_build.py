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
        STRONGLY_TYPED = 1  # TensorRT 10's number (11's is 0)

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
            return 0

        def create_timing_cache(self, data):
            calls.append(("timing_cache_in", data))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

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
    assert ("network_flags", 1 << 1) in calls  # strongly typed, nothing else
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


def _fake_installed(monkeypatch, trt: types.ModuleType, compute_capability=(8, 7)) -> None:
    """``trt`` as the installed tensorrt package (found by find_spec) on a GPU of this capability."""
    import importlib.machinery

    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("dfd.runtime.cuda_kernels.gpu_info", lambda device=0: GpuInfo("Fake GPU", compute_capability))


def test_tensorrt_8_is_refused_by_version_and_auto_builds_for_onnxruntime(reference_ensemble, tmp_path, monkeypatch):
    """TensorRT 8.x (JetPack 5 and 6.0) has no strongly typed networks: the build chose it and
    crashed with an AttributeError, under ``--backend auto`` too."""
    old = types.ModuleType("tensorrt")
    old.__version__ = "8.6.1"
    _fake_installed(monkeypatch, old)
    arguments = ["build", "--models-dir", str(reference_ensemble.models_dir), "--streams", "global",
                 "--no-face-detector"]
    refused = CliRunner().invoke(main, [*arguments, "--backend", "tensorrt", "--out", str(tmp_path / "t")])
    assert refused.exit_code == 1 and refused.output.startswith(
        "error: cannot build TensorRT engines here: TensorRT 8.6.1 is too old: dfd-export builds and runs strongly "
        "typed engines, which need TensorRT 10 or later")
    built = CliRunner().invoke(main, [*arguments, "--backend", "auto", "--out", str(tmp_path / "a")])
    assert built.exit_code == 0, built.output
    assert "WARNING: --backend auto: building for onnxruntime (TensorRT 8.6.1 is too old" in built.output
    assert load_manifest(tmp_path / "a").streams["global"].backend == "onnxruntime"


def test_hardware_compatibility_is_refused_before_any_work_on_a_gpu_older_than_ampere(reference_ensemble, tmp_path,
                                                                                    monkeypatch):
    """TensorRT builds Ampere-and-later engines only on such a GPU, and said so at the first
    engine, after the calibration set and an export."""
    _fake_installed(monkeypatch, _fake_tensorrt(), compute_capability=(7, 5))
    result = CliRunner().invoke(main, ["build", "--backend", "tensorrt", "--hardware-compatibility", "--models-dir",
                                       str(reference_ensemble.models_dir), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and not (tmp_path / "e").exists()
    assert ("error: --hardware-compatibility builds engines for Ampere and newer GPUs, which TensorRT does only on "
            "such a GPU; this one is of compute capability 7.5") in result.output
    monkeypatch.setattr("dfd.runtime.cuda_kernels.gpu_info", lambda device=0: GpuInfo("Fake GPU", (8, 0)))
    tensorrt_build.check_hardware_compatibility(tensorrt_build.TensorRTOptions(hardware_compatibility=True))
    # a plain build on the older GPU (a Turing card, a Jetson Xavier) is no concern of this check
    monkeypatch.setattr("dfd.runtime.cuda_kernels.gpu_info", lambda device=0: GpuInfo("Fake GPU", (7, 2)))
    tensorrt_build.check_hardware_compatibility(tensorrt_build.TensorRTOptions())


def test_hardware_compatibility_is_refused_before_any_work_on_a_jetson(reference_ensemble, tmp_path, monkeypatch):
    """NVIDIA does not support hardware compatibility on Jetson or DRIVE, whose Orin GPU is Ampere
    (8.7): the compute-capability check alone let the build go on to TensorRT."""
    _fake_installed(monkeypatch, _fake_tensorrt())
    orin = GpuInfo("Orin", (8, 7), integrated=True)
    monkeypatch.setattr("dfd.runtime.cuda_kernels.gpu_info", lambda device=0: orin)
    result = CliRunner().invoke(main, ["build", "--backend", "tensorrt", "--hardware-compatibility", "--models-dir",
                                       str(reference_ensemble.models_dir), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and not (tmp_path / "e").exists()
    assert ("error: --hardware-compatibility is not supported by TensorRT on Jetson or DRIVE GPUs (this is Orin, "
            "an integrated GPU): build without it") in result.output
    tensorrt_build.check_hardware_compatibility(tensorrt_build.TensorRTOptions())  # a plain build goes on


@pytest.mark.parametrize("flags, expected", [
    ({"STRONGLY_TYPED": 1}, 1 << 1),  # TensorRT 10
    ({"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1}, 1 << 0),  # TensorRT 11: renumbered, deprecated
    ({"PREFER_JIT_PYTHON_PLUGINS": 1}, 0),  # a later one without the name: every network is strongly typed
])
def test_the_strongly_typed_flag_is_read_by_name(flags, expected):
    trt = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(**flags))
    assert tensorrt_build._strongly_typed_flags(trt) == expected


@pytest.mark.parametrize("failure, message", [
    ("parsed with an error", "TensorRT cannot parse global.fp32.onnx: In node 3 (Foo): unsupported operator"),
    ("failed silently", "TensorRT cannot parse global.fp32.onnx: no error recorded; see TensorRT log above"),
    ("profile refused", "TensorRT refused the batch profile 1/4/16 for global.fp32.onnx"),
    ("timing cache refused", "TensorRT refused the timing cache"),
])
def test_every_failure_tensorrt_reports_stops_the_build_with_its_words(failure, message, tmp_path, monkeypatch):
    """A parse that returned True with errors recorded built a wrong engine; one that failed
    without errors said nothing after its colon; a refused profile (index -1) or timing cache
    (False) were ignored."""
    trt = _fake_tensorrt()
    parser, config = trt.OnnxParser, trt.Builder.create_builder_config(None).__class__
    if failure == "parsed with an error":
        monkeypatch.setattr(parser, "num_errors", 1)
        monkeypatch.setattr(parser, "get_error", lambda self, i: "In node 3 (Foo): unsupported operator",
                            raising=False)
    elif failure == "failed silently":
        monkeypatch.setattr(parser, "parse_from_file", lambda self, path: False)
    elif failure == "profile refused":
        monkeypatch.setattr(config, "add_optimization_profile", lambda self, profile: -1)
    else:
        monkeypatch.setattr(config, "set_timing_cache", lambda self, cache, ignore_mismatch: False)
    _fake_installed(monkeypatch, trt)
    with pytest.raises(tensorrt_build.TensorRTBuildError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tensorrt_build.build_engine(tmp_path / "global.fp32.onnx", tmp_path / "global.engine", 252,
                                    tensorrt_build.TensorRTOptions(), tmp_path / "timing.cache")
    assert not (tmp_path / "global.engine").exists()


def test_one_logger_serves_every_builder(tmp_path, monkeypatch):
    """TensorRT keeps one logger per process and warns when a Builder brings another."""
    trt = _fake_tensorrt()
    made = []
    monkeypatch.setattr(trt.Logger, "__init__", lambda self, level: made.append(level))
    _fake_installed(monkeypatch, trt)
    for name in ("global", "fusion"):
        tensorrt_build.build_engine(tmp_path / f"{name}.onnx", tmp_path / f"{name}.engine", 252,
                                    tensorrt_build.TensorRTOptions(), tmp_path / "timing.cache")
    assert made == [trt.Logger.WARNING]
