"""The GPU path's CUDA kernels: NVRTC compilation at first use, an on-disk cache, launch helpers.

The kernels (``kernels/preprocess.cu``: fused preprocessing of the three streams; ``kernels/vote.cu``:
softmax + discretised vote) are CUDA C++ compiled with NVRTC when first needed, so a target needs
no CUDA toolkit, only the NVIDIA driver and the ``cuda-bindings`` package (with NVRTC from the
``nvidia-cuda-nvrtc`` wheel, pulled in by ``cuda-bindings[all]``, or from a CUDA toolkit that
``cuda.pathfinder`` finds through CUDA_HOME/CUDA_PATH). Their per-pixel and vote math lives in
``__host__ __device__`` headers the test suite also compiles with g++ and checks against OpenCV and
the Python vote; see those headers for the exactness each function guarantees.

Compilation needs no GPU: ``compile_ptx("sm_87")`` works anywhere NVRTC loads (CI compiles for
``sm_87`` and ``sm_90``). Results are cached under the user cache directory, keyed by the sha256 of
the sources and options, the target architecture and the NVRTC version.

``CudaKernels`` loads the module on a real GPU and launches the kernels through
``cuda.bindings.driver``. Neither CI nor the development machine has a GPU.
``benchmarks/gpu_check.py`` exercises it on a lent GPU machine: it ran once, on an H100, where it
matched NumPy (benchmarks/gpu_check_h100.json).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from .atomic_files import write_atomically
from .errors import DfdError, attempt_release, raise_held
from .preprocess import FACE_CROP_MARGIN

KERNEL_DIR = Path(__file__).parent / "kernels"
KERNEL_SOURCES = ("preprocess.cu", "vote.cu")
KERNEL_HEADERS = ("preprocess.cuh", "vote.cuh")
KERNEL_NAMES = ("dfd_preprocess_f32", "dfd_preprocess_f16", "dfd_preprocess_rows_f32", "dfd_preprocess_rows_f16",
                "dfd_preprocess_columns_f32", "dfd_preprocess_columns_f16", "dfd_vote")
# --fmad=false: OpenCV's x86 build and NumPy never fuse multiply-add; the headers use explicit
# round-to-nearest intrinsics as well, this keeps any other expression honest.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")
CROP_SIDE = 252
FUSION_SIDE = 224
# an image's output rows and pixels, all three streams
ROWS_PER_IMAGE = 2 * CROP_SIDE + FUSION_SIDE  # also the blocks of a row-decomposition launch per image
PIXELS_PER_IMAGE = 2 * CROP_SIDE * CROP_SIDE + FUSION_SIDE * FUSION_SIDE
# threads of a per-pixel launch per image: one per pair of vertically adjacent output pixels
TASKS_PER_IMAGE = PIXELS_PER_IMAGE // 2
COLUMN_ROWS = 7  # output rows per block of a column-decomposition launch (kColumnRows)
COLUMN_BLOCKS_PER_IMAGE = ROWS_PER_IMAGE // COLUMN_ROWS
PREPROCESS_DECOMPOSITIONS = ("pixels", "rows", "columns")
# On an H100 "columns" is the fastest on 1080x1440 and 480x640 photos, "rows" on 12-MP ones
# (benchmarks/gpu_preprocess_tuning.md); the runtime uses the one that is fastest at the bar's case.
DEFAULT_DECOMPOSITION = "columns"
# The per-pixel kernel numbers a batch's tasks in 32 bits (preprocess_task).
MAX_PREPROCESS_BATCH = (2**32 - 1) // TASKS_PER_IMAGE
CHANNEL_ORDER = {"RGB": 0, "BGR": 1}

# Must match dfd::Job in kernels/preprocess.cuh (checked by the host test against sizeof/offsetof):
# the image, an optional face image of its own (data 0 = none), the face box and its margin.
_IMAGE_FIELDS = (("data", "<u8", 0), ("pitch", "<i8", 8), ("width", "<i4", 16), ("height", "<i4", 20),
                 ("order", "<i4", 24))
JOB_DTYPE = np.dtype(
    {
        "names": [name for name, _, _ in _IMAGE_FIELDS] + [f"face_{name}" for name, _, _ in _IMAGE_FIELDS]
        + ["face_x1", "face_y1", "face_x2", "face_y2", "face_margin"],
        "formats": [fmt for _, fmt, _ in _IMAGE_FIELDS] * 2 + ["<f8"] * 5,
        "offsets": [off for _, _, off in _IMAGE_FIELDS] + [32 + off for _, _, off in _IMAGE_FIELDS]
        + [64, 72, 80, 88, 96],
        "itemsize": 104,
    }
)
# (device pointer, row pitch in bytes, width, height) of a uint8 HWC 3-channel image
DeviceImage = tuple[int, int, int, int]


class KernelBuildError(DfdError, RuntimeError):
    """NVRTC is unavailable or rejected the kernels; the message says which and what to install."""


class CudaUnavailableError(DfdError, RuntimeError):
    """No usable CUDA driver or GPU for launching the kernels; the message says why."""


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise KernelBuildError(
            "cuda-python is not installed: pip install 'cuda-bindings[all]' (NVRTC comes with it "
            f"through the nvidia-cuda-nvrtc wheel) ({exc})"
        ) from exc
    return nvrtc


def check_cuda(result: tuple, what: str, error_cls: type[RuntimeError] = KernelBuildError) -> Any:
    """Unpack a cuda-bindings (status, *values) tuple, raising ``error_cls`` unless it succeeded."""
    status, *values = result
    if int(status) != 0:
        raise error_cls(f"{what} failed: {status!r}")
    return values[0] if len(values) == 1 else tuple(values)


def nvrtc_version() -> str:
    """NVRTC's version as "major.minor"; raises KernelBuildError when libnvrtc cannot be loaded."""
    nvrtc = _nvrtc()
    try:
        major, minor = check_cuda(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except KernelBuildError:
        raise
    except Exception as exc:  # cuda.pathfinder raises its own errors when libnvrtc is missing
        raise KernelBuildError(
            f"libnvrtc could not be loaded ({exc}); install the nvidia-cuda-nvrtc wheel "
            "(pip install 'cuda-bindings[all]') or point CUDA_HOME at a CUDA toolkit"
        ) from exc
    return f"{major}.{minor}"


def _read_sources() -> dict[str, bytes]:
    return {name: (KERNEL_DIR / name).read_bytes() for name in KERNEL_SOURCES + KERNEL_HEADERS}


def _translation_unit() -> bytes:
    """All kernels in one translation unit, so one module holds every entry point."""
    return "".join(f'#include "{name}"\n' for name in KERNEL_SOURCES).encode()


def _normalise_arch(arch: str) -> int:
    digits = arch.lower().removeprefix("sm_").removeprefix("compute_")
    if not digits.isdigit():
        raise KernelBuildError(f"architecture {arch!r} is not of the form sm_XY (e.g. sm_87, sm_90)")
    return int(digits)


def cache_dir() -> Path:
    """Where compiled kernels are kept: $DFD_KERNEL_CACHE, else the XDG user cache directory."""
    if explicit := os.environ.get("DFD_KERNEL_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dfd-export" / "kernels"


_DIGEST_BYTES = 32  # the sha256 each cache file ends with
_CACHE_FORMAT = b"binary+sha256"  # in the key, so files of an earlier layout are never read as this one


def _cache_key(kind: str, sm: int, version: str, sources: dict[str, bytes]) -> str:
    digest = hashlib.sha256(_CACHE_FORMAT + b"\0")
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name] + b"\0")
    digest.update("\0".join(NVRTC_OPTIONS).encode())
    return f"{kind}-sm_{sm}-nvrtc{version}-{digest.hexdigest()[:24]}"


def _compile(sm: int, kind: str) -> bytes:
    """Compile every kernel with NVRTC to PTX (virtual arch) or CUBIN (real arch), uncached."""
    sources = _read_sources()
    headers = {name: sources[name] for name in KERNEL_SOURCES + KERNEL_HEADERS}
    return nvrtc_compile(_translation_unit(), "dfd_kernels.cu", headers, sm, kind)


def nvrtc_compile(source: bytes, name: str, headers: dict[str, bytes], sm: int, kind: str) -> bytes:
    """Compile one CUDA C++ translation unit with NVRTC (NVRTC_OPTIONS) to "ptx" for
    ``compute_<sm>`` or "cubin" for ``sm_<sm>``; ``headers`` are the files it may #include."""
    nvrtc = _nvrtc()
    program = check_cuda(
        nvrtc.nvrtcCreateProgram(source, name.encode(), len(headers), list(headers.values()),
                                 [header.encode() for header in headers]),
        "nvrtcCreateProgram",
    )
    try:
        target = f"--gpu-architecture={'compute' if kind == 'ptx' else 'sm'}_{sm}"
        options = [o.encode() for o in NVRTC_OPTIONS + (target,)]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        if int(status) != 0:
            log_size = check_cuda(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
            log = b" " * log_size
            check_cuda(nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
            raise KernelBuildError(
                f"NVRTC could not compile {name} for sm_{sm}: {log.decode(errors='replace').strip()}"
            )
        if kind == "ptx":
            size = check_cuda(nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
            out = b" " * size
            check_cuda(nvrtc.nvrtcGetPTX(program, out), "nvrtcGetPTX")
        else:
            size = check_cuda(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
            out = b" " * size
            check_cuda(nvrtc.nvrtcGetCUBIN(program, out), "nvrtcGetCUBIN")
        return out.rstrip(b"\0") if kind == "ptx" else out
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _cached(arch: str, kind: str) -> bytes:
    """The compiled kernels from the cache, or compiled now and cached. Each file ends with the
    sha256 of what precedes it: a file truncated or damaged on disk (a full disk, a crash, a bad
    sector) is compiled again and replaced, never handed to the driver, whose refusal would turn
    the fused path off on every run."""
    sm = _normalise_arch(arch)
    key = _cache_key(kind, sm, nvrtc_version(), _read_sources())
    path = cache_dir() / f"{key}.{kind}"
    try:
        stored = path.read_bytes()
    except OSError:  # not cached yet, or unreadable
        stored = b""
    binary, digest = stored[:-_DIGEST_BYTES], stored[-_DIGEST_BYTES:]
    if binary and hashlib.sha256(binary).digest() == digest:
        return binary
    binary = _compile(sm, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: concurrent processes never read a partial file, and a failed write leaves none
        write_atomically(path, lambda file: file.write(binary + hashlib.sha256(binary).digest()))
    except OSError:
        pass  # a full or read-only cache only costs a recompilation next time
    return binary


def compile_ptx(arch: str) -> bytes:
    """PTX of every kernel for ``arch`` ("sm_87", "sm_90", ...); needs NVRTC, not a GPU."""
    return _cached(arch, "ptx")


def compile_cubin(arch: str) -> bytes:
    """CUBIN of every kernel for the real architecture ``arch``; what a GPU loads without JIT."""
    return _cached(arch, "cubin")


def _check_geometry(what: str, image: DeviceImage) -> None:
    _, pitch, width, height = image
    if width <= 0 or height <= 0 or pitch < 3 * width:
        raise ValueError(f"{what}: invalid geometry {width}x{height}, pitch {pitch}")


def make_jobs(
    images: Sequence[DeviceImage],
    face_boxes: Sequence[tuple[float, float, float, float] | None],
    channel_order: str = "RGB",
    margin: float = FACE_CROP_MARGIN,
    face_images: Sequence[DeviceImage | None] | None = None,
) -> np.ndarray:
    """Pack per-image parameters for the preprocessing kernel.

    ``images``: (device pointer, row pitch in bytes, width, height) of uint8 HWC 3-channel images.
    ``face_boxes``: (x1, y1, x2, y2) of the chosen face per image, or None for "no usable face"
    (the face stream then gets the original image's 252 center crop, as in the reference).
    ``face_images``: per image, a face image of its own (same layout and channel order) whose 252
    center crop the face stream takes instead (a user's face crop, or a face input re-encoded as
    the reference's crop files are); it takes precedence over the box.
    """
    face_images = face_images if face_images is not None else [None] * len(images)
    if not len(images) == len(face_boxes) == len(face_images):
        raise ValueError(f"{len(images)} images but {len(face_boxes)} face boxes and {len(face_images)} face images")
    if channel_order not in CHANNEL_ORDER:
        raise ValueError(f"channel order must be one of {sorted(CHANNEL_ORDER)}, not {channel_order!r}")
    order = CHANNEL_ORDER[channel_order]
    jobs = np.zeros(len(images), dtype=JOB_DTYPE)
    for i, (image, box, face) in enumerate(zip(images, face_boxes, face_images)):
        _check_geometry(f"image {i}", image)
        jobs[i]["data"], jobs[i]["pitch"], jobs[i]["width"], jobs[i]["height"] = image
        jobs[i]["order"] = order
        if face is not None:
            _check_geometry(f"face image {i}", face)
            jobs[i]["face_data"], jobs[i]["face_pitch"], jobs[i]["face_width"], jobs[i]["face_height"] = face
            jobs[i]["face_order"] = order
        jobs[i]["face_x1"], jobs[i]["face_y1"], jobs[i]["face_x2"], jobs[i]["face_y2"] = box or (0, 0, 0, 0)
        jobs[i]["face_margin"] = margin
    return jobs


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    integrated: bool = False  # a Jetson's or DRIVE's GPU, sharing the SoC's memory

    @property
    def arch(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


def cuda_driver() -> ModuleType:
    """cuda-bindings' driver module, initialised; CudaUnavailableError without the package or a driver."""
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise CudaUnavailableError(f"cuda-python is not installed ({exc})") from exc
    try:
        check_cuda(driver.cuInit(0), "cuInit", CudaUnavailableError)
    except CudaUnavailableError:
        raise
    except Exception as exc:  # libcuda missing: cuda.pathfinder's DynamicLibNotFoundError
        raise CudaUnavailableError(f"no NVIDIA driver ({exc})") from exc
    return driver


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of GPU ``device``; CudaUnavailableError without one."""
    driver = cuda_driver()
    count = check_cuda(driver.cuDeviceGetCount(), "cuDeviceGetCount", CudaUnavailableError)
    if device >= count:
        raise CudaUnavailableError(f"no GPU {device}: the driver sees {count}")
    dev = check_cuda(driver.cuDeviceGet(device), "cuDeviceGet", CudaUnavailableError)
    name = check_cuda(driver.cuDeviceGetName(256, dev), "cuDeviceGetName", CudaUnavailableError)
    attr = driver.CUdevice_attribute
    major = check_cuda(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
                   "cuDeviceGetAttribute", CudaUnavailableError)
    minor = check_cuda(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
                   "cuDeviceGetAttribute", CudaUnavailableError)
    integrated = check_cuda(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_INTEGRATED, dev),
                            "cuDeviceGetAttribute", CudaUnavailableError)
    return GpuInfo(name.split(b"\0", 1)[0].decode(), (major, minor), bool(integrated))


class KernelArgs:
    """ctypes storage for cuLaunchKernel's ``void** kernelParams``, kept alive with the launch."""

    def __init__(self, *args: ctypes._SimpleCData):
        self._args = args
        self._pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])

    @property
    def address(self) -> int:
        return ctypes.addressof(self._pointers)


class CudaKernels:
    """The compiled kernels loaded on one GPU, with launch helpers.

    Uses the device's primary context (what TensorRT and other libraries share) and launches on a
    caller-given stream (a ``CUstream`` or its integer handle). Every pointer argument is a device
    address (int). Run on a GPU only by ``benchmarks/gpu_check.py`` on a lent machine. CI and the tests
    use an emulated driver (tests/host_cuda.py).
    """

    BLOCK = 256

    def __init__(self, device: int = 0):
        driver = self.driver = cuda_driver()
        self.info = gpu_info(device)
        dev = check_cuda(driver.cuDeviceGet(device), "cuDeviceGet", CudaUnavailableError)
        cubin = compile_cubin(self.info.arch)  # before the context is retained: no NVRTC leaks nothing
        self.context = check_cuda(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain",
                               CudaUnavailableError)
        try:
            check_cuda(driver.cuCtxSetCurrent(self.context), "cuCtxSetCurrent", CudaUnavailableError)
            self._module = check_cuda(driver.cuModuleLoadData(cubin), "cuModuleLoadData", CudaUnavailableError)
            self._functions = {
                name: check_cuda(driver.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction",
                             CudaUnavailableError)
                for name in KERNEL_NAMES
            }
        except BaseException:
            driver.cuDevicePrimaryCtxRelease(dev)
            raise

    def _blocks_for(self, threads: int) -> int:
        """Blocks of ``BLOCK`` threads that cover ``threads``, for the one-thread-per-task kernels."""
        return (threads + self.BLOCK - 1) // self.BLOCK

    def _launch(self, name: str, blocks: int, args: KernelArgs, stream: int) -> None:
        check_cuda(
            self.driver.cuLaunchKernel(self._functions[name], blocks, 1, 1, self.BLOCK, 1, 1, 0, stream,
                                        args.address, 0),
            f"launch {name}", CudaUnavailableError,
        )

    def preprocess(self, jobs_device: int, batch: int, outputs: tuple[int, int, int],
                   half: bool = False, stream: int = 0, decomposition: str = DEFAULT_DECOMPOSITION) -> None:
        """Write global/face [N,3,252,252] and fusion [N,3,224,224] (fp32, or fp16 if ``half``)
        from a job table (``make_jobs``) that the caller has copied to the device: the fused
        pipeline keeps it at a fixed address, which a captured CUDA graph needs.

        ``decomposition``: ``"columns"`` (a block per COLUMN_ROWS output rows of a stream, each
        thread walking one column down them: what the pipeline uses), ``"pixels"`` (one thread per
        two output pixels) or ``"rows"`` (one block per output row, source rows staged in shared
        memory: the fastest on 12-MP photos), which benchmarks/gpu_check.py times side by side; all
        write the same values (preprocess.cuh)."""
        if decomposition not in PREPROCESS_DECOMPOSITIONS:
            raise ValueError(f"decomposition must be one of {PREPROCESS_DECOMPOSITIONS}, not {decomposition!r}")
        if batch > MAX_PREPROCESS_BATCH:
            raise ValueError(f"a preprocessing launch takes at most {MAX_PREPROCESS_BATCH} images, not {batch}")
        if batch == 0:
            return
        args = KernelArgs(ctypes.c_void_p(jobs_device), ctypes.c_int(batch),
                           *[ctypes.c_void_p(int(p)) for p in outputs])
        dtype = "f16" if half else "f32"
        if decomposition == "rows":
            self._launch(f"dfd_preprocess_rows_{dtype}", batch * ROWS_PER_IMAGE, args, stream)
        elif decomposition == "columns":
            self._launch(f"dfd_preprocess_columns_{dtype}", batch * COLUMN_BLOCKS_PER_IMAGE, args, stream)
        else:
            self._launch(f"dfd_preprocess_{dtype}", self._blocks_for(batch * TASKS_PER_IMAGE), args, stream)

    def vote(self, logits: tuple[int, int, int], weights: tuple[float, float, float], batch: int,
             probs: int, score: int, mean: int, stream: int = 0) -> None:
        """Softmax + discretised vote: probs [N,3] f32, score [N] f64, raw weighted mean [N] f64."""
        args = KernelArgs(*[ctypes.c_void_p(int(p)) for p in logits],
                           *[ctypes.c_double(float(w)) for w in weights], ctypes.c_int(batch),
                           ctypes.c_void_p(int(probs)), ctypes.c_void_p(int(score)),
                           ctypes.c_void_p(int(mean)))
        self._launch("dfd_vote", self._blocks_for(batch), args, stream)

    def close(self) -> None:
        """Unload the module and release the primary context reference, each tried even when the
        other fails (their statuses went unread: a failed unload passed for done); the first
        failure is raised at the end."""
        if self._module is None:
            return
        module, self._module = self._module, None
        failures: list[BaseException] = []
        attempt_release(failures, lambda: check_cuda(self.driver.cuModuleUnload(module), "cuModuleUnload",
                                                     CudaUnavailableError))

        def release_context() -> None:
            dev = check_cuda(self.driver.cuCtxGetDevice(), "cuCtxGetDevice", CudaUnavailableError)
            check_cuda(self.driver.cuDevicePrimaryCtxRelease(dev), "cuDevicePrimaryCtxRelease", CudaUnavailableError)

        attempt_release(failures, release_context)
        raise_held(failures)
