"""The CUDA driver and runtime APIs emulated on the host, and a stand-in for TensorRT, so that the
runtime's GPU code (runtime/cuda_device.py, the launches of runtime/cuda_kernels.py,
runtime/tensorrt_backend.py) runs where there is no GPU.

Every CUDA call goes first to the real cuda-bindings function. A binding converts each argument to
its C type before it loads the CUDA library, so on a machine without a driver a call fails only
at that load when the binding took its arguments (the driver API raises DynamicLibNotFoundError,
the runtime API returns cudaErrorInsufficientDriver); a wrong argument count or type raises
TypeError first, as it would on a GPU. The call is then carried out on a ``HostDevice``
(tests/host_gpu.py): memory is host memory, streams are its queues, CUDA graphs its recordings.
``cuModuleLoadData`` reads the CUBIN the runtime compiled (its kernels and, per kernel, each
parameter's offset and size), and ``cuLaunchKernel`` reads the arguments as the driver does, that
many bytes from each ``kernelParams`` pointer, then runs the kernels' own code compiled with g++.
Handles are checked by kind and lifetime, and what is still alive is listed for leak checks.

``HostTensorRT`` imitates the documented TensorRT Python API the project calls; its "engine" is
the stream's ONNX graph, run by ONNX Runtime on the emulated device memory, on the engine's stream.

What this verifies: how the runtime calls the bindings (signatures, handle kinds, stream order,
kernel argument packing, releases). Not the CUDA driver, a GPU or TensorRT, none of which exists
here: benchmarks/gpu_check.py runs the real calls on a lent GPU.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import itertools
import json
import struct
import types
from collections import Counter
from typing import Any, Callable

import numpy as np

from host_gpu import HostDevice

PRIMARY_CONTEXT = 0xC0
ENGINE_MAGIC = b"HOST-EMULATED-ENGINE\n"
EIATTR_KPARAM_INFO = 0x17


def no_cuda_driver() -> bool:
    """True when libcuda cannot be loaded here. The emulation relies on it: where a driver exists,
    the argument checks would run the real calls (use benchmarks/gpu_check.py there)."""
    from cuda.bindings import driver
    from cuda.pathfinder import DynamicLibNotFoundError

    try:
        driver.cuDriverGetVersion()
    except DynamicLibNotFoundError:
        return True
    return False


def cubin_kernels(cubin: bytes) -> dict[str, list[tuple[int, int]]]:
    """Kernel name -> (offset, size) of each parameter in ordinal order, from a CUBIN's sections
    ``.text.<kernel>`` and the EIATTR_KPARAM_INFO records of ``.nv.info.<kernel>``."""
    if cubin[:4] != b"\x7fELF" or struct.unpack_from("<H", cubin, 18)[0] != 190:  # EM_CUDA
        raise AssertionError("cuModuleLoadData: the image is not a CUBIN")
    (section_offset,) = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", cubin, section_offset + i * entry_size) for i in range(count)]
    names_at = headers[names_index][4]
    sections = {cubin[names_at + h[0]:cubin.index(b"\0", names_at + h[0])].decode(): cubin[h[4]:h[4] + h[5]]
                for h in headers}
    kernels = {}
    for name in (s.removeprefix(".text.") for s in sections if s.startswith(".text.")):
        info, at, params = sections.get(f".nv.info.{name}", b""), 0, {}
        while at < len(info):
            kind, code, size = info[at], info[at + 1], struct.unpack_from("<H", info, at + 2)[0]
            if kind == 0x04:  # EIFMT_SVAL: a payload of `size` bytes follows
                if code == EIATTR_KPARAM_INFO:
                    _, ordinal, offset, flags = struct.unpack_from("<IHHI", info, at + 4)
                    params[ordinal] = (offset, (flags >> 18) & 0x3FFF)
                at += 4 + size
            else:
                at += 4
        kernels[name] = [params[i] for i in range(len(params))]
    return kernels


def _read(address: int, ctype: type[ctypes._SimpleCData]) -> Any:
    return ctype.from_address(address).value


# The kernels of runtime/kernels/*.cu as the host runs them: their C parameter types as declared
# there (checked against the CUBIN's parameter sizes at each launch) and a function that checks the
# launch's geometry and queues their work on the HostDevice. Tests may add kernels of their own.
POINTER, INT, DOUBLE = ctypes.c_uint64, ctypes.c_int32, ctypes.c_double
Grid = tuple[int, int, int]
HostKernel = tuple[tuple, Callable[[HostDevice, int, list, Grid, Grid], None]]


def one_thread_per_task(name: str, grid: Grid, block: Grid, tasks: int) -> None:
    """The runtime's kernels run task t on thread t of a 1-D grid and skip threads past the end."""
    assert grid[1:] == block[1:] == (1, 1), f"{name}: a 1-D launch, not grid {grid} block {block}"
    assert grid[0] * block[0] >= tasks, f"{name}: a grid of {grid[0] * block[0]} threads for {tasks} tasks"


def one_block_per_row(name: str, grid: Grid, block: Grid, rows: int, threads: int) -> None:
    """The row and column kernels run output row (group) b on block b of a 1-D grid of exactly that
    many blocks (a block past the end would return before its barrier, which is legal, but the
    launch would be wasteful), each of the kernel's block size (its schedule indexes threads up to
    that size)."""
    assert grid == (rows, 1, 1), f"{name}: a grid of {grid} for {rows} rows"
    assert block == (threads, 1, 1), f"{name}: blocks of {block}, not ({threads}, 1, 1)"


def _runtime_kernels(tasks_per_image: int, rows_per_image: int, row_threads: int,
                     column_blocks_per_image: int) -> dict[str, HostKernel]:
    def preprocess(name: str, half: bool) -> HostKernel:
        def run(device: HostDevice, stream: int, a: list, grid: Grid, block: Grid) -> None:
            one_thread_per_task(name, grid, block, a[1] * tasks_per_image)
            device.preprocess(a[0], a[1], tuple(a[2:5]), half, stream)
        return (POINTER, INT, POINTER, POINTER, POINTER), run

    def preprocess_rows(name: str, half: bool) -> HostKernel:
        def run(device: HostDevice, stream: int, a: list, grid: Grid, block: Grid) -> None:
            one_block_per_row(name, grid, block, a[1] * rows_per_image, row_threads)
            device.preprocess(a[0], a[1], tuple(a[2:5]), half, stream, decomposition="rows")
        return (POINTER, INT, POINTER, POINTER, POINTER), run

    def preprocess_columns(name: str, half: bool) -> HostKernel:
        def run(device: HostDevice, stream: int, a: list, grid: Grid, block: Grid) -> None:
            one_block_per_row(name, grid, block, a[1] * column_blocks_per_image, row_threads)
            device.preprocess(a[0], a[1], tuple(a[2:5]), half, stream, decomposition="columns")
        return (POINTER, INT, POINTER, POINTER, POINTER), run

    def vote(device: HostDevice, stream: int, a: list, grid: Grid, block: Grid) -> None:
        one_thread_per_task("dfd_vote", grid, block, a[6])
        device.vote(tuple(a[0:3]), tuple(a[3:6]), a[6], a[7], a[8], a[9], stream)

    return {"dfd_preprocess_f32": preprocess("dfd_preprocess_f32", False),
            "dfd_preprocess_f16": preprocess("dfd_preprocess_f16", True),
            "dfd_preprocess_rows_f32": preprocess_rows("dfd_preprocess_rows_f32", False),
            "dfd_preprocess_rows_f16": preprocess_rows("dfd_preprocess_rows_f16", True),
            "dfd_preprocess_columns_f32": preprocess_columns("dfd_preprocess_columns_f32", False),
            "dfd_preprocess_columns_f16": preprocess_columns("dfd_preprocess_columns_f16", True),
            "dfd_vote": ((POINTER,) * 3 + (DOUBLE,) * 3 + (INT,) + (POINTER,) * 3, vote)}


class HostCuda:
    """One emulated GPU: the state the driver and runtime facades share (see module docstring)."""

    def __init__(self, device: HostDevice, kernel_host: ctypes.CDLL, compute_capability: tuple[int, int] = (9, 0),
                 name: str = "Host emulation", integrated: bool = False) -> None:
        from cuda.bindings import driver, runtime

        self.device, self.compute_capability, self.name = device, compute_capability, name
        self.integrated = integrated
        self.real_driver, self.real_runtime = driver, runtime
        self.kernels = _runtime_kernels(int(kernel_host.host_tasks_per_image()), int(kernel_host.host_rows_per_image()),
                                        int(kernel_host.host_row_threads()),
                                        int(kernel_host.host_column_blocks_per_image()))
        self.live: dict[str, dict[int, Any]] = {kind: {} for kind in (
            "stream", "event", "graph", "graph_exec", "module", "function", "device_memory", "pinned_memory")}
        self.context_references = 0
        self.calls: Counter[str] = Counter()
        self._ids = itertools.count(0x1000)
        self.driver = _Driver(self)
        self.runtime = _Runtime(self)

    def install(self, monkeypatch) -> None:
        """Make ``from cuda.bindings import driver, runtime`` give the emulation."""
        import cuda.bindings

        monkeypatch.setattr(cuda.bindings, "driver", self.driver)
        monkeypatch.setattr(cuda.bindings, "runtime", self.runtime)

    def leaks(self) -> dict[str, int]:
        """Handles and memory still alive, by kind, and primary-context references still held."""
        alive = {kind: len(handles) for kind, handles in self.live.items() if handles}
        if self.context_references:
            alive["primary_context_references"] = self.context_references
        return alive

    # handles
    def new(self, kind: str, value: Any = None) -> int:
        handle = next(self._ids)
        self.live[kind][handle] = value
        return handle

    def get(self, kind: str, handle: Any, call: str) -> Any:
        key = int(handle)
        if key not in self.live[kind]:
            what = {"graph_exec": "executable graph"}.get(kind, kind.replace("_", " "))
            raise AssertionError(f"{call}: {handle!r} is not a live {what}")
        return self.live[kind][key]

    def release(self, kind: str, handle: Any, call: str) -> Any:
        """End a live handle's life; what it held."""
        value = self.get(kind, handle, call)
        del self.live[kind][int(handle)]
        return value

    def stream(self, handle: Any, call: str) -> int:
        if int(handle) == 0:
            raise AssertionError(f"{call}: the legacy default stream serialises with every other stream "
                                 "and cannot be captured; the runtime must use streams of its own")
        self.get("stream", handle, call)
        return int(handle)

    # memory
    def alloc(self, nbytes: int) -> int:
        address = self.device.alloc(int(nbytes))
        self.live["device_memory"][address] = nbytes
        return address

    def free(self, address: Any, call: str) -> None:
        self.release("device_memory", address, call)
        self.device.free(int(address))

    def alloc_pinned(self, nbytes: int) -> int:
        address = self.device.alloc_pinned(int(nbytes)).ctypes.data
        self.live["pinned_memory"][address] = nbytes
        return address

    def free_pinned(self, address: Any, call: str) -> None:
        self.release("pinned_memory", address, call)
        self.device.free_pinned(self.device.pinned[int(address)])

    def copy_to_device(self, dst: Any, src: Any, nbytes: int, stream: Any, call: str) -> None:
        host = self.device.pinned_bytes(int(src), nbytes, f"{call} source (page-locked host memory)")
        self.device.upload(int(dst), host, self.stream(stream, call))

    def copy_to_host(self, dst: Any, src: Any, nbytes: int, stream: Any, call: str) -> None:
        host = self.device.pinned_bytes(int(dst), nbytes, f"{call} destination (page-locked host memory)")
        self.device.download(host, int(src), self.stream(stream, call))

    def new_stream(self) -> int:
        stream = self.device.new_stream()
        self.live["stream"][stream] = None
        return stream

    def synchronize(self, handle: Any, call: str) -> None:
        self.device.synchronize(self.stream(handle, call))

    def destroy_stream(self, handle: Any, call: str) -> None:
        self.synchronize(handle, call)  # queued work still completes, as on a GPU
        self.release("stream", handle, call)


def _emulated(method: Callable[..., tuple | None]) -> Callable[..., tuple]:
    """A call of a facade: the real binding checks its arguments first (``_Facade._accept``, named
    after the method), then ``method`` carries it out and returns its outputs (None for none),
    which come back behind the success status as cuda-bindings returns them."""

    @functools.wraps(method)
    def call(self: "_Facade", *args: Any) -> tuple:
        self._accept(method.__name__, *args)
        return (self._success, *(method(self, *args) or ()))
    return call


class _Facade:
    """Passes enums and handle types through to the real binding; emulates the calls it defines."""

    _success: Any
    _no_driver: tuple = ()  # what the real call returns here instead of raising (runtime API)

    def __init__(self, gpu: HostCuda, real: types.ModuleType) -> None:
        self._gpu, self._real = gpu, real

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if callable(value) and not isinstance(value, type):
            raise AttributeError(f"{name} is not emulated: add it to tests/host_cuda.py")
        return value

    def _accept(self, name: str, *args: Any) -> None:
        """Hand the call to the real binding: it checks the arguments, then fails for want of a driver."""
        from cuda.pathfinder import DynamicLibNotFoundError

        self._gpu.calls[name] += 1
        try:
            result = getattr(self._real, name)(*args)
        except DynamicLibNotFoundError:
            return
        status = result[0] if isinstance(result, tuple) else result
        if status not in self._no_driver:
            raise AssertionError(f"{name} reached a CUDA driver ({status!r}); the emulation needs a machine without one")


class _Driver(_Facade):
    """``cuda.bindings.driver`` as the runtime calls it."""

    def __init__(self, gpu: HostCuda) -> None:
        super().__init__(gpu, gpu.real_driver)
        self._success = gpu.real_driver.CUresult.CUDA_SUCCESS

    # device and context
    @_emulated
    def cuInit(self, flags):
        """Nothing to do: the emulated driver needs no initialisation."""

    @_emulated
    def cuDriverGetVersion(self):
        return (13000,)

    @_emulated
    def cuDeviceGetCount(self):
        return (1,)

    @_emulated
    def cuDeviceGet(self, ordinal):
        assert ordinal == 0, f"cuDeviceGet: no device {ordinal}"
        return (self._real.CUdevice(0),)

    @_emulated
    def cuDeviceGetName(self, length, dev):
        return (self._gpu.name.encode().ljust(length, b"\0")[:length],)

    @_emulated
    def cuDeviceGetAttribute(self, attribute, dev):
        known = self._real.CUdevice_attribute
        values = {known.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: self._gpu.compute_capability[0],
                  known.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: self._gpu.compute_capability[1],
                  known.CU_DEVICE_ATTRIBUTE_INTEGRATED: int(self._gpu.integrated)}
        return (values[attribute],)

    @_emulated
    def cuDevicePrimaryCtxRetain(self, dev):
        self._gpu.context_references += 1
        return (self._real.CUcontext(PRIMARY_CONTEXT),)

    @_emulated
    def cuDevicePrimaryCtxRelease(self, dev):
        assert self._gpu.context_references > 0, "cuDevicePrimaryCtxRelease without a retain"
        self._gpu.context_references -= 1

    @_emulated
    def cuCtxSetCurrent(self, context):
        assert int(context) == PRIMARY_CONTEXT and self._gpu.context_references > 0, \
            "cuCtxSetCurrent: not a retained primary context"
        self._gpu.device.bind_thread()

    @_emulated
    def cuCtxGetDevice(self):
        return (self._real.CUdevice(0),)

    @_emulated
    def cuMemGetInfo(self):
        return 60 << 30, 80 << 30  # free, total

    # modules and launches
    @_emulated
    def cuModuleLoadData(self, image):
        major, minor = self._gpu.compute_capability
        flags = struct.unpack_from("<I", image, 0x30)[0] if image[:4] == b"\x7fELF" else -1
        assert (flags >> 8) & 0xFF == 10 * major + minor, "cuModuleLoadData: a CUBIN for another GPU"
        return (self._real.CUmodule(self._gpu.new("module", cubin_kernels(image))),)

    @_emulated
    def cuModuleGetFunction(self, module, name):
        kernels = self._gpu.get("module", module, "cuModuleGetFunction")
        assert name.decode() in kernels, f"cuModuleGetFunction: no kernel {name!r} in the module"
        return (self._real.CUfunction(self._gpu.new("function", (int(module), name.decode()))),)

    @_emulated
    def cuModuleUnload(self, module):
        self._gpu.release("module", module, "cuModuleUnload")
        for handle, (owner, _) in list(self._gpu.live["function"].items()):
            if owner == int(module):
                del self._gpu.live["function"][handle]

    @_emulated
    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        call = "cuLaunchKernel"
        module, name = self._gpu.get("function", function, call)
        layout = self._gpu.get("module", module, call)[name]
        types_, run = self._gpu.kernels[name]
        assert [size for _, size in layout] == [ctypes.sizeof(t) for t in types_], \
            f"{name}: the compiled kernel's parameter sizes {layout} are not its declaration's"
        assert shared == 0 and extra in (0, None), f"{name}: no dynamic shared memory or extra options"
        pointers = (ctypes.c_void_p * len(types_)).from_address(int(params))
        args = [_read(pointer, ctype) for pointer, ctype in zip(pointers, types_)]  # size bytes each
        run(self._gpu.device, self._gpu.stream(stream, call), args, (gx, gy, gz), (bx, by, bz))

    # memory
    @_emulated
    def cuMemAlloc(self, nbytes):
        return (self._real.CUdeviceptr(self._gpu.alloc(nbytes)),)

    @_emulated
    def cuMemFree(self, address):
        self._gpu.free(address, "cuMemFree")

    @_emulated
    def cuMemAllocHost(self, nbytes):
        return (self._gpu.alloc_pinned(nbytes),)

    @_emulated
    def cuMemFreeHost(self, address):
        self._gpu.free_pinned(address, "cuMemFreeHost")

    @_emulated
    def cuMemcpyHtoDAsync(self, dst, src, nbytes, stream):
        self._gpu.copy_to_device(dst, src, nbytes, stream, "cuMemcpyHtoDAsync")

    @_emulated
    def cuMemcpyDtoHAsync(self, dst, src, nbytes, stream):
        self._gpu.copy_to_host(dst, src, nbytes, stream, "cuMemcpyDtoHAsync")

    # streams and events
    @_emulated
    def cuStreamCreate(self, flags):
        return (self._real.CUstream(self._gpu.new_stream()),)

    @_emulated
    def cuStreamDestroy(self, stream):
        self._gpu.destroy_stream(stream, "cuStreamDestroy")

    @_emulated
    def cuStreamSynchronize(self, stream):
        self._gpu.synchronize(stream, "cuStreamSynchronize")

    @_emulated
    def cuEventCreate(self, flags):
        return (self._real.CUevent(self._gpu.new("event", "never recorded")),)

    @_emulated
    def cuEventDestroy(self, event):
        self._gpu.release("event", event, "cuEventDestroy")

    @_emulated
    def cuEventRecord(self, event, stream):
        self._gpu.get("event", event, "cuEventRecord")
        self._gpu.live["event"][int(event)] = self._gpu.device.record(self._gpu.stream(stream, "cuEventRecord"))

    @_emulated
    def cuStreamWaitEvent(self, stream, event, flags):
        recorded = self._gpu.get("event", event, "cuStreamWaitEvent")
        assert recorded != "never recorded", "cuStreamWaitEvent on an event never recorded waits for nothing"
        self._gpu.device.wait_for(self._gpu.stream(stream, "cuStreamWaitEvent"), recorded)

    # graphs
    @_emulated
    def cuStreamBeginCapture(self, stream, mode):
        self._gpu.device.begin_capture(self._gpu.stream(stream, "cuStreamBeginCapture"))

    @_emulated
    def cuStreamEndCapture(self, stream):
        graph = self._gpu.device.end_capture(self._gpu.stream(stream, "cuStreamEndCapture"))
        return (self._real.CUgraph(self._gpu.new("graph", graph)),)

    @_emulated
    def cuGraphInstantiate(self, graph, flags):
        operations = self._gpu.get("graph", graph, "cuGraphInstantiate")
        return (self._real.CUgraphExec(self._gpu.new("graph_exec", list(operations))),)

    @_emulated
    def cuGraphDestroy(self, graph):
        self._gpu.release("graph", graph, "cuGraphDestroy")

    @_emulated
    def cuGraphLaunch(self, graph_exec, stream):
        operations = self._gpu.get("graph_exec", graph_exec, "cuGraphLaunch")
        self._gpu.device.replay(operations, self._gpu.stream(stream, "cuGraphLaunch"))

    @_emulated
    def cuGraphExecDestroy(self, graph_exec):
        self._gpu.device.destroy_graph(self._gpu.release("graph_exec", graph_exec, "cuGraphExecDestroy"))


class _Runtime(_Facade):
    """``cuda.bindings.runtime`` as the TensorRT backend calls it."""

    def __init__(self, gpu: HostCuda) -> None:
        super().__init__(gpu, gpu.real_runtime)
        self._success = gpu.real_runtime.cudaError_t.cudaSuccess
        self._no_driver = (gpu.real_runtime.cudaError_t.cudaErrorInsufficientDriver,)

    def cudaRuntimeGetVersion(self):
        return self._real.cudaRuntimeGetVersion()  # needs no driver

    @_emulated
    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self._real.cudaStreamNonBlocking, "engine streams are non-blocking (see _EngineSlot)"
        return (self._real.cudaStream_t(self._gpu.new_stream()),)

    @_emulated
    def cudaStreamDestroy(self, stream):
        self._gpu.destroy_stream(stream, "cudaStreamDestroy")

    @_emulated
    def cudaStreamSynchronize(self, stream):
        self._gpu.synchronize(stream, "cudaStreamSynchronize")

    @_emulated
    def cudaMalloc(self, nbytes):
        return (self._gpu.alloc(nbytes),)

    @_emulated
    def cudaFree(self, address):
        self._gpu.free(address, "cudaFree")

    @_emulated
    def cudaMallocHost(self, nbytes):
        return (self._gpu.alloc_pinned(nbytes),)

    @_emulated
    def cudaFreeHost(self, address):
        self._gpu.free_pinned(address, "cudaFreeHost")

    @_emulated
    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        kinds = self._real.cudaMemcpyKind
        if kind == kinds.cudaMemcpyHostToDevice:
            self._gpu.copy_to_device(dst, src, nbytes, stream, "cudaMemcpyAsync")
        elif kind == kinds.cudaMemcpyDeviceToHost:
            self._gpu.copy_to_host(dst, src, nbytes, stream, "cudaMemcpyAsync")
        else:
            raise AssertionError(f"cudaMemcpyAsync: copy kind {kind!r} is not emulated")


def host_tensorrt(gpu: HostCuda, version: str = "10.3.0") -> types.ModuleType:
    """A ``tensorrt`` module with the documented API the project calls (see module docstring)."""
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # found by importlib.util.find_spec

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class DataType:
        FLOAT, HALF = "float", "half"

    trt.Logger, trt.TensorIOMode, trt.DataType = Logger, TensorIOMode, DataType
    def nptype(dtype: str) -> type:  # as tensorrt.nptype: TypeError for a type NumPy lacks (bf16, fp8, int4)
        if dtype not in (DataType.FLOAT, DataType.HALF):
            raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. {dtype}")
        return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dtype]

    trt.nptype = nptype

    # building: the serialized "engine" is the parsed ONNX graph behind a header with its profile
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # TensorRT 10's number
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="version_compatible", TF32="tf32")
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(AMPERE_PLUS="ampere_plus")

    class Network:
        graph: bytes = b""

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self._network = network

        def parse_from_file(self, path: str) -> bool:
            with open(path, "rb") as handle:
                self._network.graph = handle.read()
            return True

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list] = {}

        def set_shape(self, name: str, low, opt, high) -> None:
            self.shapes[name] = [list(low), list(opt), list(high)]

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing"

    class Config:
        hardware_compatibility_level = None

        def __init__(self) -> None:
            self.profiles: list[Profile] = []

        def set_memory_pool_limit(self, pool, size) -> None:
            pass

        def set_flag(self, flag) -> None:
            pass

        def clear_flag(self, flag) -> None:  # TF32: the emulated engines compute in float32 anyway
            pass

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1  # its index (TensorRT: -1 for an invalid profile)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> TimingCache:
            return TimingCache()

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            assert flags == 1 << 1, "networks are built strongly typed"
            return Network()

        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            (profile,) = config.profiles
            return ENGINE_MAGIC + json.dumps(profile.shapes).encode() + b"\n" + network.graph

    trt.Builder, trt.OnnxParser = Builder, Parser

    # running
    class Engine:
        def __init__(self, data: bytes) -> None:
            header, graph = data[len(ENGINE_MAGIC):].split(b"\n", 1)
            self._profiles = json.loads(header)
            self.session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
            self._io = {**{t.name: (TensorIOMode.INPUT, t) for t in self.session.get_inputs()},
                        **{t.name: (TensorIOMode.OUTPUT, t) for t in self.session.get_outputs()}}
            self.num_io_tensors = len(self._io)

        def get_tensor_name(self, index: int) -> str:
            return list(self._io)[index]

        def get_tensor_mode(self, name: str) -> str:
            return self._io[name][0]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:
            assert profile == 0 and name in self._profiles, f"no profile for {name}"
            return self._profiles[name]

        def get_tensor_shape(self, name: str) -> tuple:
            return tuple(-1 if not isinstance(d, int) else d for d in self._io[name][1].shape)

        def get_tensor_dtype(self, name: str) -> str:
            return DataType.HALF if self._io[name][1].type == "tensor(float16)" else DataType.FLOAT

        def create_execution_context(self) -> "Context":
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self._engine, self._addresses, self._shape = engine, {}, None

        def set_tensor_address(self, name: str, address: int) -> bool:
            self._addresses[name] = int(address)
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            """As TensorRT: False (and an error logged) for a shape outside the profile."""
            low, _, high = self._engine.get_tensor_profile_shape(name, 0)
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                return False
            self._shape = tuple(shape)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            engine, shape = self._engine, self._shape
            assert shape is not None and set(self._addresses) == set(engine._io), "input shape and addresses first"
            (name_in, *names_out) = engine._io
            dtype = trt.nptype(engine.get_tensor_dtype(name_in))
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            pixels = gpu.device.device_bytes(self._addresses[name_in], nbytes, "engine input")

            def infer() -> None:
                # a CUDA graph captured at one shape is invalid once the context ran another
                # (NVIDIA/TensorRT#3798): replaying it then would compute at the wrong shape
                assert self._shape == shape, (f"work enqueued at {shape} ran on a context set to {self._shape}: "
                                              "a CUDA graph replayed after its context changed shape")
                outputs = engine.session.run(names_out, {name_in: pixels.view(dtype).reshape(shape).copy()})
                for name, value in zip(names_out, outputs):
                    value = np.ascontiguousarray(value, trt.nptype(engine.get_tensor_dtype(name)))
                    gpu.device.device_bytes(self._addresses[name], value.nbytes, "engine output")[:] = \
                        value.reshape(-1).view(np.uint8)
            gpu.device._issue(gpu.stream(stream, "execute_async_v3"), infer)
            return True

    class Runtime:
        engine_host_code_allowed = False

        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            return Engine(data) if data.startswith(ENGINE_MAGIC) else None

    trt.Runtime = Runtime
    return trt
