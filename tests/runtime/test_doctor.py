"""`dfd-export doctor` on this CPU-only machine: complete, JSON-serialisable, and clear about
what is missing."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import write_rebuilt_manifest

from dfd.runtime import cuda_kernels
from dfd.runtime.doctor import engine_set_report, collect_doctor_report
from dfd.runtime.manifest import MANIFEST_NAME
from dfd.runtime.tensorrt_backend import TENSORRT_INSTALL_HINT


BUILT_FOR_ORIN = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7",
                  "options": {"version_compatible": False, "hardware_compatibility": False}}


def _tensorrt_set(tiny_engine_set, folder):
    """The tiny set as a TensorRT build for Jetson Orin would write it. The doctor reads the
    manifest and checks that each file is there with its size; it never hashes or opens the engine
    (a stand-in byte here)."""
    shutil.copytree(tiny_engine_set, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for name, entry in manifest["streams"].items():
        entry["backend"] = "tensorrt"
        entry["files"].append({"path": f"{name}.engine", "sha256": "0" * 64, "bytes": 1, "role": "engine"})
        (folder / f"{name}.engine").write_bytes(b"\0")
    manifest["tensorrt"] = BUILT_FOR_ORIN
    write_rebuilt_manifest(folder, manifest)
    return folder


@pytest.fixture(autouse=True)
def _shared_kernel_cache(monkeypatch, kernel_cache):
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))


@pytest.fixture(scope="module")
def report(kernel_cache, tiny_engine_set, tmp_path_factory):
    try:
        has_gpu = cuda_kernels.gpu_info() is not None
    except cuda_kernels.CudaUnavailableError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this test describes a machine without a GPU")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))
        return collect_doctor_report(_tensorrt_set(tiny_engine_set, tmp_path_factory.mktemp("doctor") / "engines"))


def test_report_says_no_gpu_and_no_tensorrt(report):
    json.dumps(report)  # the CLI prints it with --json
    assert report["gpu"]["available"] is False
    assert report["gpu"]["reason"].startswith("no GPU")
    assert report["cuda"]["driver_version"] is None and "driver" in report["cuda"]["error"]
    assert report["tensorrt"] == {"available": False, "version": None, "reason": TENSORRT_INSTALL_HINT}
    assert report["python"]["version"].count(".") == 2
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]


def test_report_says_the_kernels_build_for_jetson_and_h100(report):
    """What the report says of the kernels. It reads the session's kernel cache, which an earlier
    test may have filled: NVRTC compiling them is checked in test_cuda_kernels."""
    assert report["kernels"]["ptx"] == {"sm_87": "ok", "sm_90": "ok"}
    assert report["kernels"]["nvrtc_version"] == cuda_kernels.nvrtc_version()
    assert report["kernels"]["cubin_local"] is None  # no local GPU to compile for


def test_engine_set_streams_and_what_they_need(report, tiny_engine_set):
    streams = report["engine_set"]["streams"]
    assert set(streams) == {"global", "face", "fusion"} and report["engine_set"]["error"] is None
    assert streams["global"] == {"precision": "fp32", "backend": "tensorrt", "runnable": False,
                                 "reason": TENSORRT_INSTALL_HINT + "; its ONNX graph runs on onnxruntime "
                                 "(--backend auto falls back to it)"}
    onnx_only = collect_doctor_report(tiny_engine_set)["engine_set"]["streams"]
    assert all(s == {"precision": "fp32", "backend": "onnxruntime", "runnable": True, "reason": None}
               for s in onnx_only.values())


def test_engines_are_judged_by_the_runtime_s_compatibility_rule(tiny_engine_set, tmp_path):
    """What a GPU machine with TensorRT would be told (the probes' results given as the doctor's own
    dicts): the build's recorded TensorRT version and compute capability decide, as when the
    runtime opens the set."""
    folder = _tensorrt_set(tiny_engine_set, tmp_path / "engines")
    orin = {"available": True, "compute_capability": "8.7"}
    h100 = {"available": True, "compute_capability": "9.0"}
    trt_10_3 = {"available": True, "version": "10.3.0", "reason": None}
    ort = {"version": "1.31.1", "providers": ["CPUExecutionProvider"]}
    streams = engine_set_report(folder, orin, trt_10_3, ort)["streams"]
    assert all(s["runnable"] and s["reason"] is None for s in streams.values())
    reason = engine_set_report(folder, h100, trt_10_3, ort)["streams"]["fusion"]["reason"]
    assert reason.startswith("the engines were built for a GPU of compute capability 8.7 (Orin) and this GPU is 9.0")
    assert reason.endswith("its ONNX graph runs on onnxruntime (--backend auto falls back to it)")
    newer = engine_set_report(folder, orin, {**trt_10_3, "version": "10.7.0"}, ort)["streams"]["face"]["reason"]
    assert "built with TensorRT 10.3.0 and this machine has TensorRT 10.7.0" in newer
    # built hardware-compatible, an Orin set runs on an H100 but an H100 set not on a Jetson
    compatible = {**BUILT_FOR_ORIN, "options": {**BUILT_FOR_ORIN.get("options", {}), "hardware_compatibility": True}}
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    write_rebuilt_manifest(folder, {**manifest, "tensorrt": compatible})
    assert all(s["runnable"] for s in engine_set_report(folder, h100, trt_10_3, ort)["streams"].values())
    write_rebuilt_manifest(folder, {**manifest, "tensorrt": {**compatible, "compute_capability": "9.0"}})
    assert all(s["runnable"] for s in engine_set_report(folder, orin, trt_10_3, ort)["streams"].values())
    jetson = {**orin, "integrated": True}
    reason = engine_set_report(folder, jetson, trt_10_3, ort)["streams"]["global"]["reason"]
    assert "TensorRT does not support hardware compatibility on a Jetson or DRIVE GPU like this one (8.7)" in reason


def test_unreadable_engine_set_is_reported_not_raised(tmp_path, tiny_engine_set):
    result = collect_doctor_report(tmp_path / "missing")
    assert result["engine_set"]["error"] == f"engine set folder not found: {tmp_path / 'missing'}"
    edited = tmp_path / "edited"
    edited.mkdir()
    manifest = json.loads((tiny_engine_set / MANIFEST_NAME).read_text())
    manifest["streams"]["face"]["files"][0]["path"] = "../elsewhere.onnx"
    write_rebuilt_manifest(edited, manifest)
    error = engine_set_report(edited, {}, {}, {})["error"]
    assert "file path '../elsewhere.onnx' is not inside the engine-set folder" in error


@pytest.mark.parametrize("edit, message", [
    (lambda folder, manifest: (folder / "face.fp32.onnx").unlink(), r"missing file face.fp32.onnx \(face stream\)"),
    (lambda folder, manifest: (folder / "global.fp32.onnx").write_bytes(b"cut"), "global.fp32.onnx has 3 bytes"),
    (lambda folder, manifest: manifest["streams"]["fusion"].update(files=[]),
     r"\[fusion\]: lists no onnx file, so the fusion stream cannot run"),
])
def test_a_set_missing_what_a_stream_needs_is_not_called_runnable(tmp_path, tiny_engine_set, edit, message):
    """A deleted or truncated graph, or a stream listing none, would fail when the set is opened:
    the doctor says so (exit 3) instead of calling every stream runnable."""
    folder = tmp_path / "edited"
    shutil.copytree(tiny_engine_set, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    edit(folder, manifest)
    write_rebuilt_manifest(folder, manifest)
    report = engine_set_report(folder, {}, {}, {"version": "1", "providers": ["CPUExecutionProvider"]})
    assert report["streams"] == {} and re.search(message, report["error"])


def test_doctor_exit_status_gates_on_the_engine_set(tmp_path, tiny_engine_set):
    """0 without a set or with one that runs as built here; 3 for a folder that is not a set and for
    TensorRT engines on this machine without TensorRT (the report is still printed)."""
    from click.testing import CliRunner

    from dfd.export.cli import main

    engines = _tensorrt_set(tiny_engine_set, tmp_path / "engines")
    for arguments, status in ([[], 0], [[str(tiny_engine_set)], 0], [[str(tmp_path / "missing")], 3],
                              [[str(engines)], 3]):
        for output in ([], ["--json"]):
            result = CliRunner().invoke(main, ["doctor", *arguments, *output])
            assert result.exit_code == status, (arguments, output, result.output)
            assert "onnxruntime" in result.stdout


def test_doctors_text_shows_the_cuda_driver_and_runtime(monkeypatch):
    """The text report had lines for Python, ONNX Runtime, the GPU, TensorRT and NVRTC, and the CUDA
    driver and runtime it names in --help only in --json."""
    from click.testing import CliRunner

    from dfd.export.cli import main
    from dfd.runtime import doctor

    collect = doctor.collect_doctor_report
    for cuda, line in (({"driver_version": "12.4", "runtime_version": "13.0", "error": None},
                        "cuda         driver 12.4  runtime 13.0\n"),
                       ({"driver_version": None, "runtime_version": "13.0", "error": "driver: none"},
                        "cuda         driver none  runtime 13.0\n"),
                       ({"driver_version": "12.4", "runtime_version": None, "error": "runtime: none"},
                        "cuda         driver 12.4  runtime none\n")):
        monkeypatch.setattr(doctor, "collect_doctor_report", lambda engine_dir, cuda=cuda: {**collect(engine_dir),
                                                                                           "cuda": cuda})
        result = CliRunner().invoke(main, ["doctor"])
        assert result.exit_code == 0 and line in result.stdout, result.output


def test_inspect_shows_what_the_engines_were_built_for(tiny_engine_set, tmp_path):
    """The TensorRT version, GPU and compatibility options decide where a set runs; inspect did not
    show them."""
    from click.testing import CliRunner

    from dfd.export.cli import main

    folder = _tensorrt_set(tiny_engine_set, tmp_path / "orin")
    result = CliRunner().invoke(main, ["inspect", "--no-verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert ("tensorrt     10.3.0 on Orin (compute capability 8.7), platform not recorded; runs on that TensorRT "
            "version and GPU architecture only") in result.output
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["tensorrt"] = {**BUILT_FOR_ORIN, "platform": "Linux-aarch64",
                            "options": {"version_compatible": True, "hardware_compatibility": True}}
    write_rebuilt_manifest(folder, manifest)
    result = CliRunner().invoke(main, ["inspect", "--no-verify", str(folder)])
    assert ("tensorrt     10.3.0 on Orin (compute capability 8.7), Linux-aarch64; built version-compatible (later "
            "TensorRT versions run it) and hardware-compatible (any Ampere or newer GPU runs it)") in result.output
