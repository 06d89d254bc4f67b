"""What this machine can run: the report behind ``dfd-export doctor [--json]``.

Every probe catches its own failure and reports *why* instead of raising, so the report is complete
on a CPU-only machine too. JSON keys of ``collect_doctor_report``:

- ``python``: {"version": "3.11.9", "executable": path}
- ``onnxruntime``: {"version": str, "providers": [available execution providers]} or
  {"error": why}
- ``cuda``: {"driver_version": "12.4" or null, "runtime_version": "13.0" or null,
  "error": why or null} (driver from libcuda, runtime from libcudart)
- ``gpu``: {"available": bool, "name", "compute_capability": "9.0", "arch": "sm_90",
  "integrated": bool (a Jetson's or DRIVE's GPU), "free_memory_bytes", "total_memory_bytes"} or
  {"available": false, "reason": "no GPU: ..."}
- ``tensorrt``: {"available": bool, "version": str or null, "reason": why not or null}
- ``kernels``: {"nvrtc_version": "13.0" or null, "ptx": {"sm_87": "ok", "sm_90": "ok",
  <local GPU arch>: "ok"} (each "ok" or the error text), "cubin_local": "ok" / error / null},
  and "error": why, where NVRTC cannot be loaded (then "ptx" is empty)
- ``engine_set`` (only when ``engine_dir`` is given): {"path", "streams": {name: {"precision",
  "backend", "runnable": bool, "reason"}}, "error": why the folder is not a readable engine set
  (the runtime's own message) or null}
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

from . import cuda_kernels
from .manifest import EngineSetError, Manifest, StreamEntry, load_manifest, verify_files
from .tensorrt_backend import tensorrt_mismatch, tensorrt_package

CI_ARCHS = ("sm_87", "sm_90")  # Jetson Orin, H100


def _version(encoded: int) -> str:
    """CUDA encodes versions as 1000 * major + 10 * minor."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def _python() -> dict[str, Any]:
    return {"version": platform.python_version(), "executable": sys.executable}


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError as exc:
        return {"error": f"onnxruntime not installed ({exc})"}
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def _cuda() -> dict[str, Any]:
    report: dict[str, Any] = {"driver_version": None, "runtime_version": None, "error": None}
    errors = []
    try:
        driver = cuda_kernels.cuda_driver()
        report["driver_version"] = _version(cuda_kernels.check_cuda(driver.cuDriverGetVersion(),
                                                                "cuDriverGetVersion"))
    except Exception as exc:  # report, never raise: this is a diagnostic
        errors.append(f"driver: {exc}")
    try:
        from cuda.bindings import runtime
        report["runtime_version"] = _version(cuda_kernels.check_cuda(runtime.cudaRuntimeGetVersion(),
                                                                 "cudaRuntimeGetVersion"))
    except Exception as exc:
        errors.append(f"runtime: {exc}")
    report["error"] = "; ".join(errors) or None
    return report


def _gpu() -> dict[str, Any]:
    try:
        info = cuda_kernels.gpu_info(0)
        driver = cuda_kernels.cuda_driver()
        dev = cuda_kernels.check_cuda(driver.cuDeviceGet(0), "cuDeviceGet")
        context = cuda_kernels.check_cuda(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        try:
            cuda_kernels.check_cuda(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
            free, total = cuda_kernels.check_cuda(driver.cuMemGetInfo(), "cuMemGetInfo")
        finally:
            driver.cuDevicePrimaryCtxRelease(dev)
    except Exception as exc:
        return {"available": False, "reason": f"no GPU: {exc}"}
    major, minor = info.compute_capability
    return {"available": True, "name": info.name, "compute_capability": f"{major}.{minor}",
            "arch": info.arch, "integrated": info.integrated, "free_memory_bytes": int(free),
            "total_memory_bytes": int(total)}


def _tensorrt() -> dict[str, Any]:
    trt, reason = tensorrt_package()  # not installed, failing to load, or older than TensorRT 10
    version = getattr(trt, "__version__", None)
    version = None if version is None else str(version)  # None: not importable, or no __version__
    return {"available": reason is None, "version": version, "reason": reason}


def _kernels(local_arch: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"nvrtc_version": None, "ptx": {}, "cubin_local": None}
    try:
        report["nvrtc_version"] = cuda_kernels.nvrtc_version()
    except Exception as exc:
        report["error"] = str(exc)
        return report
    archs = CI_ARCHS + ((local_arch,) if local_arch and local_arch not in CI_ARCHS else ())
    for arch in archs:
        try:
            cuda_kernels.compile_ptx(arch)
            report["ptx"][arch] = "ok"
        except Exception as exc:
            report["ptx"][arch] = str(exc)
    if local_arch:
        try:
            cuda_kernels.compile_cubin(local_arch)
            report["cubin_local"] = "ok"
        except Exception as exc:
            report["cubin_local"] = str(exc)
    return report


def engine_set_report(engine_dir: Path, gpu: dict[str, Any], tensorrt: dict[str, Any],
                      onnxruntime: dict[str, Any]) -> dict[str, Any]:
    """Precision/backend of each stream and whether this machine has what that backend needs.

    Reads the manifest with the runtime's own parser and judges TensorRT engines with the rule the
    runtime applies when it opens them (``tensorrt_mismatch``: TensorRT version and GPU compute
    capability, unless built version-/hardware-compatible), so the answer is the runtime's.
    The manifest's own digest must match and every listed file must be there with its size; file
    hashes and the graphs' input shapes are not checked here (opening the set does that; at paper
    size it reads 15 GB).
    """
    report: dict[str, Any] = {"path": str(engine_dir), "streams": {}, "error": None}
    try:
        manifest = load_manifest(engine_dir, verify=False)
        verify_files(manifest, hashes=False)
    except EngineSetError as exc:
        report["error"] = str(exc)
        return report
    for name, entry in manifest.streams.items():
        reason = _unrunnable_reason(entry, manifest, gpu, tensorrt, onnxruntime)
        report["streams"][name] = {"precision": entry.precision, "backend": entry.backend,
                                   "runnable": reason is None, "reason": reason}
    return report


def _unrunnable_reason(entry: StreamEntry, manifest: Manifest, gpu: dict[str, Any], tensorrt: dict[str, Any],
                       onnxruntime: dict[str, Any]) -> str | None:
    """Why this machine cannot run ``entry`` on the backend it was built for, or None."""
    if entry.backend == "onnxruntime":
        return onnxruntime.get("error")
    if not tensorrt.get("available"):
        reason = tensorrt.get("reason")
    elif not gpu.get("available"):
        reason = gpu.get("reason")
    else:
        reason = tensorrt_mismatch(manifest.raw.get("tensorrt", {}), str(tensorrt.get("version")),
                                   str(gpu.get("compute_capability")), local_integrated=bool(gpu.get("integrated")))
    if reason and entry.file("onnx") is not None and "error" not in onnxruntime:
        reason += "; its ONNX graph runs on onnxruntime (--backend auto falls back to it)"
    return reason


def collect_doctor_report(engine_dir: Path | None = None) -> dict:
    """Probe Python, ONNX Runtime, CUDA, the GPU, TensorRT and the kernels (and an engine set)."""
    gpu = _gpu()
    report: dict[str, Any] = {
        "python": _python(),
        "onnxruntime": _onnxruntime(),
        "cuda": _cuda(),
        "gpu": gpu,
        "tensorrt": _tensorrt(),
        "kernels": _kernels(gpu.get("arch")),
    }
    if engine_dir is not None:
        report["engine_set"] = engine_set_report(Path(engine_dir), gpu, report["tensorrt"], report["onnxruntime"])
    return report
