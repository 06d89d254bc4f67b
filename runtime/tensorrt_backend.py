"""TensorRT backend of the lean runtime: the only runtime module that calls TensorRT.

NOT EXECUTED IN THIS PROJECT: its machines have neither TensorRT nor a GPU. Written against the
documented TensorRT 10/11 Python API (``Runtime.deserialize_cuda_engine``,
``ICudaEngine.create_execution_context``, ``num_io_tensors``/``get_tensor_name``/
``get_tensor_mode``/``get_tensor_profile_shape``, ``IExecutionContext.set_input_shape``/
``set_tensor_address``/``execute_async_v3``) and cuda-python's runtime API
(``cuda.bindings.runtime``: streams, device and pinned host allocations, async copies); no torch,
no pycuda. What *is* tested here: ``tensorrt_mismatch``, the check that refuses an engine set built
for another TensorRT version or GPU; and the whole class on an emulated GPU with a stand-in for
TensorRT (tests/runtime/test_cuda_device.py): every cuda-bindings call through the real binding's
argument checks, results against the host path, every buffer and stream released by ``close``.
That verifies how this module calls the bindings, not TensorRT or the CUDA driver.

Design: one execution context, one CUDA stream, device buffers sized for the profile's largest
batch and pinned host staging per engine, all allocated once; ``run`` takes a per-engine lock
(an execution context is not re-entrant), so threads that call different streams overlap; a
thread that wants its own contexts over the shared engines calls ``clone()``. Every TensorRT call
whose result says it failed (``create_execution_context`` returning None, ``set_input_shape`` and
``set_tensor_address`` returning False) is checked, as Polygraphy's runner does, and an engine slot
or backend that fails half-way releases what it had allocated.
``fused_pipeline`` hands the same engine slots to the fused GPU path (gpu_pipeline.py): the
preprocessing kernel writes their input tensors in place and the vote kernel reads their logits.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import threading
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .backends import stream_shape_problem
from .cuda_kernels import CudaUnavailableError, check_cuda
from .errors import DfdError, attempt_release, raise_held
from .manifest import EngineSetError, Manifest

if TYPE_CHECKING:
    from .gpu_pipeline import GpuPipeline


TENSORRT_INSTALL_HINT = ("TensorRT is not installed: on Jetson it ships with JetPack (apt install "
                         "python3-libnvinfer); on x86 install the tensorrt wheel from NVIDIA's package index")


MIN_TENSORRT_MAJOR = 10
"""Strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED, TensorRT 9+) and the
name-based I/O API (``execute_async_v3``) this project uses: TensorRT 10 or later (JetPack 6.1+)."""


def tensorrt_package() -> tuple[Any, str | None]:
    """The ``tensorrt`` module and None, or what of it there is (the module, or None where it cannot
    be imported) and why it cannot serve: not installed; installed but failing to load (its
    ``__init__`` loads libnvinfer, and a missing or mismatched library raises there); or older
    than TensorRT 10 (JetPack 5 and 6.0 ship 8.x, whose builder lacks strongly typed networks)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, TENSORRT_INSTALL_HINT
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError or whatever a broken install raises
        return None, (f"the tensorrt package is installed but cannot be loaded ({type(exc).__name__}: {exc}); "
                      f"reinstall it for this CUDA version")
    version = getattr(trt, "__version__", None)
    major = _version(str(version))[:1]
    if not major:  # a package that is no TensorRT wheel (a stub, a namesake): nothing says what it builds
        given = "has no __version__" if version is None else f"gives {str(version)!r}, no TensorRT version number,"
        return trt, f"the tensorrt package {given}; dfd-export needs TensorRT {MIN_TENSORRT_MAJOR} or later"
    if major[0] < MIN_TENSORRT_MAJOR:
        return trt, (f"TensorRT {version} is too old: dfd-export builds and runs strongly typed engines, which "
                     f"need TensorRT {MIN_TENSORRT_MAJOR} or later (on Jetson, JetPack 6.1 or later)")
    return trt, None


@functools.cache
def tensorrt_logger(trt: Any) -> Any:
    """The one logger of this process for ``trt``: TensorRT keeps a single logger, and a Builder or
    Runtime created with another one only draws a warning (NVIDIA/TensorRT#1475)."""
    return trt.Logger(trt.Logger.WARNING)


def tensorrt_unusable_reason() -> str | None:
    """Why TensorRT cannot run on this machine at all (no usable package, no GPU), or None. Shared
    by the build (compiling engines) and the runtime (running them)."""
    reason = tensorrt_package()[1]
    if reason:
        return reason
    from .cuda_kernels import gpu_info

    try:
        gpu_info()
    except Exception as exc:  # noqa: BLE001 - any driver failure means: no GPU to run on
        return f"TensorRT cannot run here: {exc}"
    return None


# (built, running) major versions NVIDIA supports across a major boundary for engines built
# --version-compatible (TensorRT 11.4 support matrix, "Engine Portability"); within a major, any
# later runtime takes them
_CROSS_MAJOR = {(8, 10), (10, 11)}


def local_platform() -> str:
    """Operating system and machine, e.g. ``Linux-x86_64``: serialized engines are not portable
    across platforms, whatever their compatibility options (TensorRT support matrix)."""
    return f"{platform.system()}-{platform.machine()}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _same_version(built: str, local: str) -> bool:
    """Whether two TensorRT version strings name one version. Engines need major, minor, patch and
    build to match, but one version is spelled with or without its build ("10.3.0" and
    "10.3.0.26", by different packagings): the parts both spell out must agree, at least three."""
    built_v, local_v = _version(built), _version(local)
    shared = min(len(built_v), len(local_v))
    return built == local or (shared >= 3 and built_v[:shared] == local_v[:shared])


def tensorrt_mismatch(recorded: dict[str, Any], local_version: str, local_compute_capability: str,
                      platform_name: str | None = None, local_integrated: bool = False) -> str | None:
    """Why engines built as ``recorded`` (the manifest's ``tensorrt`` block) cannot be
    deserialized here, or None. NVIDIA's rules (TensorRT 11.1 "Engine Compatibility"): an engine
    runs only on the TensorRT version that built it, unless built version-compatible, when it
    also runs on later versions of its major (and TensorRT 10's on 11); only on the GPU
    architecture it was built for, unless built hardware-compatible (Ampere and later, but not
    on a Jetson or DRIVE GPU: ``local_integrated``); and never on another platform.
    ``platform_name`` defaults to this machine's."""
    options = recorded.get("options", {})
    built = str(recorded.get("version", "?"))
    built_platform = recorded.get("platform")  # absent in sets built before it was recorded
    here = platform_name or local_platform()
    if built_platform and built_platform != here:
        return (f"the engines were built on {built_platform} and this machine is {here}; TensorRT engines are not "
                f"portable across platforms: rebuild the engine set here")
    if not _same_version(built, local_version):
        if not options.get("version_compatible"):
            return (f"the engines were built with TensorRT {built} and this machine has TensorRT "
                    f"{local_version}; rebuild the engine set here (or build it with --version-compatible "
                    f"to run on later TensorRT versions)")
        built_v, local_v = _version(built), _version(local_version)
        if not built_v or not local_v or local_v < built_v:
            return (f"the engines were built version-compatible with TensorRT {built}, which runs them on that "
                    f"version or a later one; this machine has the older TensorRT {local_version}")
        if local_v[0] != built_v[0] and (built_v[0], local_v[0]) not in _CROSS_MAJOR:
            return (f"the engines were built version-compatible with TensorRT {built}; TensorRT {local_version} "
                    f"does not run engines of major version {built_v[0]}: rebuild the engine set here")
    built_cc = str(recorded.get("compute_capability", "?"))
    if built_cc != local_compute_capability:
        ampere_plus = float(local_compute_capability) >= 8.0 if local_compute_capability.replace(".", "").isdigit() else False
        portable = options.get("hardware_compatibility") and ampere_plus
        if portable and local_integrated:
            return (f"the engines were built hardware-compatible on a GPU of compute capability {built_cc} "
                    f"({recorded.get('gpu', '?')}), and TensorRT does not support hardware compatibility on a "
                    f"Jetson or DRIVE GPU like this one ({local_compute_capability}): rebuild the engine set here")
        if not portable:
            return (f"the engines were built for a GPU of compute capability {built_cc} "
                    f"({recorded.get('gpu', '?')}) and this GPU is {local_compute_capability}; rebuild the "
                    f"engine set on this GPU (or build it with --hardware-compatibility for Ampere and newer)")
    return None


def _check(result: tuple, what: str) -> Any:
    return check_cuda(result, f"CUDA {what}", CudaUnavailableError)


class _EngineSlot:
    """One engine's execution context, CUDA stream and buffers, allocated once.

    Serves both paths: ``run`` (host tensors in, host logits out, through pinned staging) and the
    fused GPU pipeline, which writes ``input_address`` and reads ``output_address`` on the device
    and calls ``enqueue`` (the ``PipelineEngine`` interface of gpu_pipeline.py)."""

    def __init__(self, trt, cudart, engine, name: str) -> None:
        self.engine, self._cudart, self.name = engine, cudart, name
        self.lock = threading.Lock()
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        self.stream = 0
        self.context = engine.create_execution_context()
        if self.context is None:  # TensorRT returns None, e.g. when the GPU is out of memory
            raise EngineSetError(f"TensorRT could not create an execution context for the {name} engine "
                                 f"(out of GPU memory?)")
        try:
            self._allocate(trt, cudart, engine)
        except BaseException:
            self.close()  # what was allocated before the failure
            raise

    def _allocate(self, trt, cudart, engine) -> None:
        # non-blocking: a blocking stream that captures a graph makes the legacy stream unusable
        # for every other thread until the capture ends (cudaStreamIsCapturing)
        self.stream = int(_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                 "cudaStreamCreateWithFlags"))
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise EngineSetError(f"the {self.name} engine has inputs {inputs}; a stream engine has one")
        self.input, self.outputs = inputs[0], outputs
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.sample_shape = tuple(int(v) for v in engine.get_tensor_shape(self.input))[1:]  # [3, S, S]
        self.output_shape = tuple(int(v) for v in engine.get_tensor_shape(outputs[0])) if outputs else ()
        for name in names:
            shape = list(engine.get_tensor_shape(name))
            shape[0] = self.max_batch
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError as exc:  # bf16, fp8, int4: no NumPy type (tensorrt.nptype raises)
                raise EngineSetError(f"the {self.name} engine's tensor {name} is of type "
                                     f"{engine.get_tensor_dtype(name)}, which has no NumPy type: a stream engine "
                                     f"takes and gives float32 or float16 ({exc})") from exc
            nbytes = int(np.prod(shape)) * dtype.itemsize
            device = int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
            try:
                host_ptr = _check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            except BaseException:
                _check(cudart.cudaFree(device), "cudaFree")
                raise
            host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * nbytes).from_address(int(host_ptr)))
            self.buffers[name] = (device, host.view(dtype).reshape(shape))
            if not self.context.set_tensor_address(name, device):
                raise EngineSetError(f"TensorRT refused the address of the {self.name} engine's tensor {name}")
        self.input_address, self.input_dtype = self.buffers[self.input][0], self.buffers[self.input][1].dtype
        self.output_address, self.output_dtype = (self.buffers[self.outputs[0]][0],
                                                  self.buffers[self.outputs[0]][1].dtype)

    def enqueue(self, batch: int) -> None:
        """Queue inference of the first ``batch`` rows of the device input on this slot's stream.

        A batch below the profile's smallest (``--min-batch``) runs at that size: the rows past
        ``batch`` hold whatever the buffer held, and their logits are never read (the streams'
        networks treat rows independently)."""
        rows = max(batch, self.min_batch)
        if not self.context.set_input_shape(self.input, (rows, *self.sample_shape)):
            raise DfdError(f"TensorRT refused batch {rows} for the {self.name} engine (its profile takes "
                           f"{self.min_batch}..{self.max_batch}; see TensorRT's log above)")
        if not self.context.execute_async_v3(self.stream):
            raise DfdError(f"TensorRT execute_async_v3 failed for the {self.name} engine (see TensorRT's log above)")

    def close(self) -> None:
        """Free the buffers and the stream; the execution context goes with them. Every release is
        tried even after one fails (a failed synchronize, e.g. after a kernel fault, still frees
        the memory); the first failure is raised at the end."""
        cudart = self._cudart
        with self.lock:
            if self.context is None:
                return
            failures: list[BaseException] = []
            if self.stream:
                attempt_release(failures, lambda: _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize"))
            self.context = None
            for device, host in self.buffers.values():
                attempt_release(failures, lambda: _check(cudart.cudaFree(device), "cudaFree"))
                attempt_release(failures, lambda: _check(cudart.cudaFreeHost(host.ctypes.data), "cudaFreeHost"))
            self.buffers = {}
            if self.stream:
                attempt_release(failures, lambda: _check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy"))
                self.stream = 0
            raise_held(failures)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        kind_h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        kind_d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        results = []
        with self.lock:
            for start in range(0, len(pixels), self.max_batch):
                chunk = pixels[start:start + self.max_batch]
                n = len(chunk)
                device_in, host_in = self.buffers[self.input]
                host_in[:n] = chunk
                _check(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, host_in[:n].nbytes, kind_h2d, self.stream), "H2D copy")
                self.enqueue(n)
                device_out, host_out = self.buffers[self.outputs[0]]
                _check(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, host_out[:n].nbytes, kind_d2h, self.stream), "D2H copy")
                _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
                results.append(host_out[:n].astype(np.float32))
        return np.concatenate(results)


class TensorRTBackend:
    """Runs the engine set's serialized engines (see module docstring: unexecuted here)."""

    name = "tensorrt"
    concurrent_streams = True  # one CUDA stream per engine; the Detector runs the three at once

    def __init__(self, manifest: Manifest, _engines: dict[str, Any] | None = None) -> None:
        self._trt = importlib.import_module("tensorrt")
        from cuda.bindings import runtime as cudart

        self._cudart = cudart
        self.manifest = manifest
        self._runtime = None  # a clone uses the engines of the backend it was cloned from
        if _engines is None:
            self._runtime = self._trt.Runtime(tensorrt_logger(self._trt))
            if manifest.raw.get("tensorrt", {}).get("options", {}).get("version_compatible"):
                self._runtime.engine_host_code_allowed = True
            _engines = {}
            for entry in manifest.streams.values():  # the face detector runs on ONNX Runtime
                engine_file = entry.file("engine")
                engine = self._runtime.deserialize_cuda_engine(manifest.path_of(engine_file).read_bytes())
                if engine is None:
                    raise EngineSetError(f"TensorRT could not deserialize {engine_file.path}")
                _engines[entry.name] = engine
        self._engines = _engines
        self._slots: dict[str, _EngineSlot] = {}
        self._fused: list[tuple[Any, Any]] = []  # (CudaPipelineDevice, CudaKernels) of each fused path
        try:
            for name, engine in _engines.items():
                self._slots[name] = _EngineSlot(self._trt, cudart, engine, name)
            for name, stream in manifest.streams.items():
                slot = self._slots[name]
                problem = stream_shape_problem(stream, (-1, *slot.sample_shape), slot.output_shape)
                if problem:
                    raise EngineSetError(f"{manifest.root}: {stream.file('engine').path}: {problem}; "
                                         f"rebuild the engine set")
        except BaseException:
            self.close()  # the slots made before the failure
            raise
        self.description = f"tensorrt {self._trt.__version__}"

    def clone(self) -> "TensorRTBackend":
        """New execution contexts, streams and buffers over the same deserialized engines; the
        caller closes it."""
        return TensorRTBackend(self.manifest, self._engines)

    def close(self) -> None:
        """Release what this backend made on the GPU: the fused paths' streams, events and kernel
        module (after their pipelines are closed), then every engine slot's buffers and stream.
        Without it a service that opens and closes engine sets would leak them all. The engines
        are let go too (their weights stay on the GPU while anything holds them: a clone keeps its
        own reference). Every release is tried; the first failure is raised at the end."""
        failures: list[BaseException] = []
        for device, kernels in self._fused:
            attempt_release(failures, device.close)
            attempt_release(failures, kernels.close)
        self._fused = []
        for slot in self._slots.values():
            attempt_release(failures, slot.close)
        self._engines, self._runtime = {}, None
        raise_held(failures)

    def run(self, stream: str, pixels: np.ndarray) -> np.ndarray:
        """One stream's logits [N, 2] for normalised pixels [N, 3, S, S] (float32 on the host)."""
        return self._slots[stream].run(np.ascontiguousarray(pixels, dtype=np.float32))

    def fused_pipeline(self, weights: Mapping[str, float], preprocessing: Mapping[str, Any],
                       input_sizes: Mapping[str, int], capture_batch: int | None = None) -> "GpuPipeline":
        """The fused GPU path over this backend's stream engines: preprocessing kernel -> engines ->
        vote kernel, on the device (gpu_pipeline.py). Raises FusedPathError, KernelBuildError or
        CudaUnavailableError, saying why, when it cannot run here."""
        from .cuda_device import CudaPipelineDevice
        from .cuda_kernels import CudaKernels
        from .gpu_pipeline import FusedPathError, GpuPipeline, fused_path_problem

        engines = dict(self._slots)  # the streams only: the face detector runs on ONNX Runtime
        problem = fused_path_problem(engines, preprocessing, input_sizes)
        if problem:
            raise FusedPathError(problem)
        kernels = CudaKernels(0)
        device = CudaPipelineDevice(kernels)
        self._fused.append((device, kernels))
        return GpuPipeline(device, engines, weights, capture_batch)
