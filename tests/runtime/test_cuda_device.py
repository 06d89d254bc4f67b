"""The runtime's GPU code on an emulated GPU (tests/host_cuda.py), end to end: a set built with
``--backend tensorrt``, opened on the tensorrt backend, scored through the fused path
(runtime/cuda_device.py and the kernel launches of runtime/cuda_kernels.py) or the engines' own
buffers (runtime/tensorrt_backend.py), against the host path of the ONNX Runtime set built from the
same checkpoints.

Every CUDA call passes through the real cuda-bindings function's argument checks, and every kernel
launch is read through the parameter layout of the CUBIN the runtime compiled. TensorRT is a
stand-in whose engines are the set's ONNX graphs: none of this verifies the CUDA driver, a GPU or
TensorRT (benchmarks/gpu_check.py is for a lent GPU).
"""

from __future__ import annotations

import ctypes
import sys

import cv2
import numpy as np
import pytest

from dfd.runtime import cuda_kernels
from dfd.runtime.backends import OnnxRuntimeBackend, select_backend
from dfd.runtime.detector import Detector
from dfd.runtime.manifest import load_manifest
from host_cuda import HostCuda, host_tensorrt, no_cuda_driver
from host_gpu import HostDevice

pytestmark = [
    pytest.mark.skipif(not no_cuda_driver(), reason="a CUDA driver is installed: the emulation's argument "
                       "checks would run real calls (use benchmarks/gpu_check.py)"),
    pytest.mark.usefixtures("opencv_without_ipp"),
]


def _emulated_gpu(monkeypatch, kernel_host, kernel_cache, order: str = "lazy") -> HostCuda:
    gpu = HostCuda(HostDevice(kernel_host, order), kernel_host)
    gpu.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(gpu))
    monkeypatch.setenv("DFD_KERNEL_CACHE", str(kernel_cache))
    return gpu


@pytest.fixture(scope="module")
def tensorrt_set(reference_ensemble, kernel_host, kernel_cache, tmp_path_factory):
    """The tiny checkpoints built as ``dfd-export build --backend tensorrt --max-batch 4`` would on
    the emulated GPU: its engines are the ONNX graphs the build validated."""
    from conftest import LORA_ALPHA, LORA_R
    from dfd.export.build import BuildRequest, build_engine_set
    from dfd.export.checkpoint import LoraSettings
    from dfd.export.tensorrt_build import TensorRTOptions

    out = tmp_path_factory.mktemp("tensorrt-set") / "fp32"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
        build_engine_set(BuildRequest(out_dir=out, weights_dir=reference_ensemble.weights_dir,
                                      models_dir=reference_ensemble.models_dir,
                                      lora=LoraSettings(LORA_R, LORA_ALPHA), backend="tensorrt",
                                      tensorrt=TensorRTOptions(min_batch=1, opt_batch=2, max_batch=4)))
    face_detector = load_manifest(out).face_detector  # stays an ONNX graph: the runtime runs it on ONNX Runtime
    assert face_detector.backend == "onnxruntime" and face_detector.file("engine") is None
    return out


@pytest.fixture(scope="module")
def scene(photographs, tmp_path_factory):
    root = tmp_path_factory.mktemp("emulated-scene")

    def write(name: str, rgb: np.ndarray) -> str:
        cv2.imwrite(str(root / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return str(root / name)

    astronaut, coffee = photographs["astronaut"], photographs["coffee"]
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return [write("portrait.png", astronaut[0:300, 100:400]), write("portrait.jpg", astronaut[0:300, 100:400]),
            write("coffee.png", coffee), write("small.png", cv2.resize(astronaut, (150, 100))),
            write("wide224.png", coffee[:224, :300]), str(root / "corrupt.png"), photographs["chelsea"]]


def _dicts(detections) -> list[dict]:
    return [d.to_dict() for d in detections]


@pytest.mark.parametrize("order", ["lazy", "others_first"])
def test_tensorrt_backend_with_the_fused_path_equals_the_host_path(
        tensorrt_set, tiny_engine_set, scene, kernel_host, kernel_cache, monkeypatch, order):
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache, order)
    boxes = [(120, 30, 320, 260), None]
    with Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=8) as host:
        want, want_boxed = host.detect(scene), host.detect(scene[:2], face_boxes=boxes)
    with Detector.open(tensorrt_set, backend="auto", batch_size=8) as detector:
        assert detector.backend.name == "tensorrt", detector.backend_reason
        assert detector.fused is not None, detector.preprocessing
        got = detector.detect(scene)
        assert gpu.calls["cuLaunchKernel"] == 2 * 2  # preprocess + vote per chunk (4 + 2 good images)
        got_boxed = detector.detect(scene[:2], face_boxes=boxes)
    assert _dicts(got) == _dicts(want) and _dicts(got_boxed) == _dicts(want_boxed)
    assert [d.ok for d in got] == [True] * 5 + [False, True]
    assert gpu.leaks() == {}, "Detector.close() must release every CUDA resource it made"


def test_tensorrt_backend_with_host_preprocessing_equals_the_host_path(
        tensorrt_set, tiny_engine_set, scene, kernel_host, kernel_cache, monkeypatch):
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    with Detector.open(tensorrt_set, backend="tensorrt", gpu_preprocessing=False, batch_size=8) as detector:
        assert detector.fused is None
        got = detector.detect(scene)
    assert gpu.calls["cuLaunchKernel"] == 0 and gpu.calls["cudaMemcpyAsync"] > 0
    with Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=8) as host:
        assert _dicts(got) == _dicts(host.detect(scene))
    assert gpu.leaks() == {}


def test_cuda_graph_replays_on_the_driver_api(tensorrt_set, tiny_engine_set, photographs, kernel_host,
                                              kernel_cache, monkeypatch):
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache, "others_first")
    rng = np.random.default_rng(5)
    images = list(photographs.values()) + [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
                                           for h, w in rng.integers(180, 700, size=(4, 2))]
    with Detector.open(tensorrt_set, backend="tensorrt", batch_size=2, cuda_graph_batch=2) as detector:
        got = detector.detect(images) + detector.detect(images[::-1])
    # 7 images in batches of 2 (2, 2, 2, 1) twice: a capture per call, since the last batch of 1
    # re-set the contexts' shape; replays of the other two batches of 2
    assert gpu.calls["cuStreamEndCapture"] == 2 and gpu.calls["cuGraphLaunch"] == 4
    with Detector.open(tiny_engine_set, backend="onnxruntime", batch_size=2) as host:
        assert _dicts(got) == _dicts(host.detect(images) + host.detect(images[::-1]))
    assert gpu.leaks() == {}


def test_the_emulation_refuses_what_a_gpu_would(kernel_host, kernel_cache, monkeypatch):
    """The checks this file relies on can fail: the real binding's argument check, handle kinds,
    and a launch read through the CUBIN's parameter layout."""
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    driver = gpu.driver
    with pytest.raises(TypeError):
        driver.cuMemcpyHtoDAsync(0, 0, 16)  # the binding itself: four arguments
    with pytest.raises(TypeError):
        driver.cuModuleGetFunction(0, "dfd_vote")  # the binding itself: bytes, not str
    (_, stream) = driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING)
    with pytest.raises(AssertionError, match="legacy default stream"):
        driver.cuStreamSynchronize(0)
    with pytest.raises(AssertionError, match="not a live executable graph"):
        driver.cuGraphLaunch(driver.CUgraph(int(stream)), stream)
    kernels = cuda_kernels.CudaKernels(0)
    buffers = [int(driver.cuMemAlloc(64)[1]) for _ in range(7)]
    with pytest.raises(AssertionError, match="a grid of 256 threads for 300 tasks"):
        kernels._launch("dfd_vote", 1, _vote_args(buffers, 300), stream)
    packed_as_float = cuda_kernels.KernelArgs(*[ctypes.c_void_p(b) for b in buffers[:3]],
                                             *[ctypes.c_float(w) for w in (2, 1, 2)], ctypes.c_int(1),
                                             *[ctypes.c_void_p(b) for b in buffers[3:6]])
    weights = []
    monkeypatch.setattr(gpu.device, "vote", lambda logits, w, *rest: weights.append(w))
    kernels._launch("dfd_vote", 1, packed_as_float, stream)
    kernels._launch("dfd_vote", 1, _vote_args(buffers, 1), stream)
    assert weights[0] != (2.0, 1.0, 2.0) and weights[1] == (2.0, 1.0, 2.0)  # floats read as doubles
    kernels.close()


def test_every_preprocessing_decomposition_launches_and_agrees(kernel_host, kernel_cache, monkeypatch):
    """CudaKernels.preprocess launches the per-pixel kernel (one thread per task), the row kernel
    (one block per output row) and the column kernel (one block per group of output rows) with the
    geometry and arguments each one's CUBIN declares, and all three write the same tensors; an
    unknown decomposition, or a batch too large to number in 32 bits, is refused before any launch."""
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    driver = gpu.driver
    kernels = cuda_kernels.CudaKernels(0)
    (_, stream) = driver.cuStreamCreate(driver.CUstream_flags.CU_STREAM_NON_BLOCKING)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((500, 700, 3), (260, 240, 3))]
    addresses = []
    for img in images:
        (_, address) = driver.cuMemAlloc(img.nbytes)
        ctypes.memmove(int(address), img.ctypes.data, img.nbytes)
        addresses.append(int(address))
    jobs = cuda_kernels.make_jobs([(a, 3 * img.shape[1], img.shape[1], img.shape[0]) for a, img in zip(addresses, images)],
                                  [(100.0, 80.0, 400.0, 420.0), None])
    (_, jobs_address) = driver.cuMemAlloc(jobs.nbytes)
    ctypes.memmove(int(jobs_address), jobs.ctypes.data, jobs.nbytes)
    results = {}
    for decomposition in cuda_kernels.PREPROCESS_DECOMPOSITIONS:
        for half in (False, True):
            shapes = [(2, 3, side, side) for side in (252, 252, 224)]
            sizes = [int(np.prod(shape)) * (2 if half else 4) for shape in shapes]
            outputs = [int(driver.cuMemAlloc(size)[1]) for size in sizes]
            kernels.preprocess(int(jobs_address), 2, tuple(outputs), half=half, stream=stream,
                               decomposition=decomposition)
            driver.cuStreamSynchronize(stream)
            results[decomposition, half] = [ctypes.string_at(address, size) for address, size in zip(outputs, sizes)]
            for address in outputs:
                driver.cuMemFree(address)
    for half in (False, True):
        assert results["rows", half] == results["pixels", half] == results["columns", half]
    with pytest.raises(ValueError, match="decomposition must be one of"):
        kernels.preprocess(int(jobs_address), 2, (0, 0, 0), decomposition="tiles")
    with pytest.raises(ValueError, match="at most 48480 images"):  # 32-bit task numbers, 88,592 tasks an image
        kernels.preprocess(int(jobs_address), cuda_kernels.MAX_PREPROCESS_BATCH + 1, (0, 0, 0))
    assert gpu.calls["cuLaunchKernel"] == 6
    kernels.close()
    for address in addresses + [int(jobs_address)]:
        driver.cuMemFree(address)
    driver.cuStreamDestroy(stream)


def _vote_args(buffers: list[int], batch: int) -> cuda_kernels.KernelArgs:
    return cuda_kernels.KernelArgs(*[ctypes.c_void_p(b) for b in buffers[:3]],
                                   *[ctypes.c_double(w) for w in (2, 1, 2)], ctypes.c_int(batch),
                                   *[ctypes.c_void_p(b) for b in buffers[3:6]])


def test_doctor_reports_the_gpu_and_a_runnable_tensorrt_set(tensorrt_set, kernel_host, kernel_cache, monkeypatch):
    from dfd.runtime.doctor import collect_doctor_report

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    report = collect_doctor_report(tensorrt_set)
    assert report["gpu"]["available"] and report["gpu"]["name"] == "Host emulation"
    assert (report["gpu"]["compute_capability"], report["gpu"]["arch"]) == ("9.0", "sm_90")
    assert report["gpu"]["integrated"] is False
    assert report["gpu"]["free_memory_bytes"] == 60 << 30 and report["cuda"]["driver_version"] == "13.0"
    assert report["tensorrt"] == {"available": True, "version": "10.3.0", "reason": None}
    assert report["kernels"]["cubin_local"] == "ok" and report["kernels"]["ptx"]["sm_90"] == "ok"
    streams = report["engine_set"]["streams"]
    assert set(streams) >= {"global", "face", "fusion"} and all(s["runnable"] for s in streams.values()), streams
    assert gpu.leaks() == {}  # its context reference is released


def test_a_jetson_refuses_a_hardware_compatible_set_built_elsewhere(tensorrt_set, kernel_host, kernel_cache,
                                                                    monkeypatch, tmp_path):
    """The GPU's integrated attribute reaches the compatibility rule: NVIDIA does not support
    hardware compatibility on Jetson or DRIVE, so the set built so on the (emulated) H100 is not
    opened on an Orin, whose compute capability alone would have let it through."""
    import json
    import shutil

    from conftest import write_rebuilt_manifest
    from dfd.runtime.backends import tensorrt_unavailable_reason
    from dfd.runtime.manifest import MANIFEST_NAME

    folder = tmp_path / "compatible"
    shutil.copytree(tensorrt_set, folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["tensorrt"]["options"]["hardware_compatibility"] = True
    write_rebuilt_manifest(folder, data)
    orins = [HostCuda(HostDevice(kernel_host, "lazy"), kernel_host, (8, 7), "Orin", integrated=integrated)
             for integrated in (False, True)]  # made before either is installed: each wraps the real driver
    for orin, integrated, refused in zip(orins, (False, True), (False, True)):
        orin.install(monkeypatch)
        monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(orin))
        assert cuda_kernels.gpu_info(0).integrated is integrated
        reason = tensorrt_unavailable_reason(load_manifest(folder))
        assert (reason is not None and "not support hardware compatibility on a Jetson" in reason) is refused, reason


def test_a_cloned_backend_runs_alone_and_releases_its_own_buffers(tensorrt_set, kernel_host, kernel_cache, monkeypatch):
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    manifest = load_manifest(tensorrt_set)
    backend = select_backend("tensorrt", manifest).backend
    pixels = np.random.default_rng(2).normal(size=(6, 3, 252, 252)).astype(np.float32)  # chunks of 4 and 2
    clone = backend.clone()
    assert gpu.calls["cudaStreamCreateWithFlags"] == 6  # one per stream engine, in each backend
    np.testing.assert_array_equal(clone.run("global", pixels), backend.run("global", pixels))
    clone.close()  # the original keeps its own buffers
    np.testing.assert_array_equal(backend.run("face", pixels), OnnxRuntimeBackend(manifest).run("face", pixels))
    backend.close()
    assert gpu.leaks() == {}


def test_a_batch_below_the_profile_minimum_runs_at_the_minimum(reference_ensemble, kernel_host, kernel_cache,
                                                               tmp_path, monkeypatch):
    """``--min-batch 2``: one image used to fail (TensorRT's set_input_shape returns False, which
    was ignored); it now runs in a batch of 2 whose second row is never read."""
    from conftest import LORA_ALPHA, LORA_R
    from dfd.export.build import BuildRequest, build_engine_set
    from dfd.export.checkpoint import LoraSettings
    from dfd.export.tensorrt_build import TensorRTOptions

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    out = tmp_path / "min2"
    build_engine_set(BuildRequest(out_dir=out, weights_dir=reference_ensemble.weights_dir,
                                  models_dir=reference_ensemble.models_dir, lora=LoraSettings(LORA_R, LORA_ALPHA),
                                  backend="tensorrt", streams=("global",), face_detector=False,
                                  tensorrt=TensorRTOptions(min_batch=2, opt_batch=2, max_batch=4)))
    manifest = load_manifest(out)
    backend = select_backend("tensorrt", manifest).backend
    pixels = np.random.default_rng(4).normal(size=(5, 3, 252, 252)).astype(np.float32)  # chunks of 4 and 1
    want = OnnxRuntimeBackend(manifest).run("global", pixels)
    np.testing.assert_array_equal(backend.run("global", pixels), want)
    np.testing.assert_array_equal(backend.run("global", pixels[:1]), want[:1])
    backend.close()
    assert gpu.leaks() == {}


def test_an_engine_that_cannot_open_releases_the_others_and_auto_falls_back(tensorrt_set, kernel_host,
                                                                           kernel_cache, monkeypatch):
    """create_execution_context returns None when TensorRT fails (out of GPU memory): that was an
    AttributeError later, the engines opened before it leaked their buffers and streams, and
    ``--backend auto`` failed instead of running the set's ONNX graphs."""
    from dfd.runtime.manifest import EngineSetError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    trt = sys.modules["tensorrt"]
    deserialize = trt.Runtime.deserialize_cuda_engine
    opened = []

    def third_engine_has_no_memory(self, data):
        engine = deserialize(self, data)
        opened.append(engine)
        if len(opened) % 3 == 0:  # the fusion engine, after global and face
            engine.create_execution_context = lambda: None
        return engine

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", third_engine_has_no_memory)
    manifest = load_manifest(tensorrt_set)
    with pytest.raises(EngineSetError, match="could not create an execution context for the fusion engine"):
        select_backend("tensorrt", manifest)
    assert gpu.leaks() == {}
    choice = select_backend("auto", manifest)
    assert choice.backend.name == "onnxruntime"
    assert "TensorRT not used: opening the engines failed: TensorRT could not create an execution context" \
        in choice.reason
    assert gpu.leaks() == {}


def test_kernels_that_cannot_compile_hold_no_context_reference(kernel_host, kernel_cache, monkeypatch):
    """Without NVRTC every Detector.open on the tensorrt backend kept one primary-context reference."""
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)

    def no_nvrtc(arch):
        raise cuda_kernels.KernelBuildError("NVRTC is not installed")

    monkeypatch.setattr(cuda_kernels, "compile_cubin", no_nvrtc)
    with pytest.raises(cuda_kernels.KernelBuildError):
        cuda_kernels.CudaKernels(0)
    assert gpu.leaks() == {}


def test_closing_releases_everything_even_after_a_failed_synchronize(tensorrt_set, kernel_host, kernel_cache,
                                                                    monkeypatch):
    """After a kernel fault every synchronize fails: close raised at the first slot's synchronize and
    left every buffer and stream allocated, and the closed backend kept its engines (their weights
    on the GPU) while anything held it."""
    from dfd.runtime.cuda_kernels import CudaUnavailableError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    backend = select_backend("tensorrt", load_manifest(tensorrt_set)).backend
    illegal_address = gpu.real_runtime.cudaError_t.cudaErrorIllegalAddress
    monkeypatch.setattr(gpu.runtime, "cudaStreamSynchronize", lambda stream: (illegal_address,))
    destroy = gpu.runtime.cudaStreamDestroy

    def destroyed_but_failing(stream):
        destroy(stream)
        return (gpu.real_runtime.cudaError_t.cudaErrorInvalidResourceHandle,)

    monkeypatch.setattr(gpu.runtime, "cudaStreamDestroy", destroyed_but_failing)
    with pytest.raises(CudaUnavailableError, match="cudaStreamSynchronize"):  # the first failure, not the last
        backend.close()
    assert gpu.leaks() == {} and backend._engines == {}


def test_closing_the_fused_path_after_a_kernel_fault_releases_everything(tensorrt_set, tiny_engine_set, scene,
                                                                        kernel_host, kernel_cache, monkeypatch):
    """After a kernel fault every synchronize fails: the fused pipeline's close stopped at its
    synchronize, its device stopped at the first failed cuEventDestroy, and the kernels' unload went
    unchecked, so the pipeline's buffers and the other events and streams stayed allocated."""
    from dfd.runtime.cuda_kernels import CudaUnavailableError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    detector = Detector.open(tensorrt_set, backend="tensorrt", batch_size=8)
    assert detector.fused is not None, detector.preprocessing
    assert all(d.ok for d in detector.detect(scene[:3]))
    assert gpu.live["event"] and gpu.live["stream"]
    first_event = min(gpu.live["event"])
    fault = gpu.real_driver.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
    destroy_event = gpu.driver.cuEventDestroy
    monkeypatch.setattr(gpu.driver, "cuStreamSynchronize", lambda stream: (fault,))
    monkeypatch.setattr(gpu.runtime, "cudaStreamSynchronize",
                        lambda stream: (gpu.real_runtime.cudaError_t.cudaErrorIllegalAddress,))
    monkeypatch.setattr(gpu.driver, "cuEventDestroy",
                        lambda event: (fault,) if int(event) == first_event else destroy_event(event))
    monkeypatch.setattr(gpu.driver, "cuModuleUnload", lambda module: (fault,))
    with pytest.raises(CudaUnavailableError, match="cuStreamSynchronize"):  # the first failure
        detector.close()
    # what failed to be released stays (the module with its functions); everything else is freed,
    # the context reference too
    leaks = gpu.leaks()
    assert leaks.pop("function") > 0 and leaks == {"event": 1, "module": 1}


def test_a_ctrl_c_during_a_close_after_a_kernel_fault_is_not_lost(tensorrt_set, scene, kernel_host, kernel_cache,
                                                                   monkeypatch):
    """After a kernel fault the first failure of a close is always a CUDA error; a Ctrl-C later in
    the same close was held and then dropped for it, so detect exited 1 instead of 130. The
    interrupt is raised, after every release has still been tried."""
    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    detector = Detector.open(tensorrt_set, backend="tensorrt", batch_size=8)
    assert detector.fused is not None and all(d.ok for d in detector.detect(scene[:3]))
    destroy_stream = gpu.driver.cuStreamDestroy
    interrupted: list[int] = []

    def ctrl_c_on_the_first(stream):
        if not interrupted:
            interrupted.append(int(stream))
            raise KeyboardInterrupt
        return destroy_stream(stream)

    monkeypatch.setattr(gpu.driver, "cuStreamSynchronize",
                        lambda stream: (gpu.real_driver.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,))
    monkeypatch.setattr(gpu.driver, "cuStreamDestroy", ctrl_c_on_the_first)
    with pytest.raises(KeyboardInterrupt):
        detector.close()
    assert interrupted and detector.closed
    assert gpu.leaks() == {"stream": 1}, gpu.leaks()


@pytest.mark.parametrize("call, nth, kept", [
    ("cuCtxSetCurrent", 0, None),     # the pipeline's bind
    ("cuCtxSetCurrent", 1, None),     # the device's
    ("cuGraphExecDestroy", 0, "graph_exec"),
    ("cuMemFree", 0, "device_memory"),  # the staging buffer's
    ("cuMemFree", 1, "device_memory"),  # the jobs buffer's
    ("cuMemFreeHost", 1, "pinned_memory"),
    ("cuEventDestroy", 0, "event"),
    ("cuStreamDestroy", 0, "stream")])
def test_each_release_of_the_fused_path_is_tried_after_one_fails(tensorrt_set, scene, kernel_host, kernel_cache,
                                                                 monkeypatch, call, nth, kept):
    """The fused path's close goes on past any one failed release (its bind, its CUDA graph, the
    staging buffers, its own buffers, the device's events and streams): that one resource alone
    stays, and its failure is raised."""
    from dfd.runtime.cuda_kernels import CudaUnavailableError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    detector = Detector.open(tensorrt_set, backend="tensorrt", batch_size=2, cuda_graph_batch=2)
    assert detector.fused is not None and all(d.ok for d in detector.detect(scene[:2]))
    real = getattr(gpu.driver, call)
    calls: list[int] = []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == nth + 1:
            return (gpu.real_driver.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,)
        return real(*args)

    monkeypatch.setattr(gpu.driver, call, fails_once)
    with pytest.raises(CudaUnavailableError, match=call):
        detector.close()
    assert len(calls) > nth
    assert gpu.leaks() == ({} if kept is None else {kept: 1}), gpu.leaks()


def test_a_failed_release_of_one_resource_keeps_only_that_one(tensorrt_set, scene, kernel_host, kernel_cache,
                                                              monkeypatch):
    """Each release is tried on its own: one cudaFree that fails keeps its buffer alone (the slot's
    pinned buffers, its other buffers and its stream are freed), a fused path whose kernels fail to
    close keeps the kernels alone (every engine slot is still freed), and the failure raised is the
    first, not the last."""
    from dfd.runtime import cuda_kernels
    from dfd.runtime.cuda_kernels import CudaUnavailableError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    detector = Detector.open(tensorrt_set, backend="tensorrt", batch_size=8)
    assert detector.fused is not None and all(d.ok for d in detector.detect(scene[:3]))
    runtime = gpu.runtime
    free, destroy = runtime.cudaFree, runtime.cudaStreamDestroy
    kept: list[int] = []

    def first_free_fails(address):
        if not kept:
            kept.append(int(address))
            return (gpu.real_runtime.cudaError_t.cudaErrorInvalidValue,)
        return free(address)

    def destroy_fails_too(stream):
        destroy(stream)
        return (gpu.real_runtime.cudaError_t.cudaErrorInvalidResourceHandle,)

    def kernels_fail_to_close(self):
        raise CudaUnavailableError("cuModuleUnload failed: CUDA_ERROR_ILLEGAL_ADDRESS")

    monkeypatch.setattr(runtime, "cudaFree", first_free_fails)
    monkeypatch.setattr(runtime, "cudaStreamDestroy", destroy_fails_too)
    monkeypatch.setattr(cuda_kernels.CudaKernels, "close", kernels_fail_to_close)
    with pytest.raises(CudaUnavailableError, match="cuModuleUnload"):  # the first to fail
        detector.close()
    leaks = gpu.leaks()
    assert leaks.pop("function") > 0
    assert leaks == {"module": 1, "primary_context_references": 1, "device_memory": 1}, leaks


def test_a_failed_kernel_module_unload_is_reported(kernel_host, kernel_cache, monkeypatch):
    """cuModuleUnload's status went unread: a failed unload passed for done."""
    from dfd.runtime.cuda_kernels import CudaKernels, CudaUnavailableError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    kernels = CudaKernels(0)
    unload = gpu.driver.cuModuleUnload
    monkeypatch.setattr(gpu.driver, "cuModuleUnload", lambda module: (gpu.real_driver.CUresult.CUDA_ERROR_INVALID_HANDLE,))
    with pytest.raises(CudaUnavailableError, match="cuModuleUnload failed"):
        kernels.close()
    assert "primary_context_references" not in gpu.leaks()  # released all the same
    kernels.close()  # once is enough: a second close has nothing left to release
    # and the primary context's release is checked too
    kernels = CudaKernels(0)
    monkeypatch.setattr(gpu.driver, "cuModuleUnload", unload)
    monkeypatch.setattr(gpu.driver, "cuDevicePrimaryCtxRelease",
                        lambda device: (gpu.real_driver.CUresult.CUDA_ERROR_INVALID_CONTEXT,))
    with pytest.raises(CudaUnavailableError, match="cuDevicePrimaryCtxRelease failed"):
        kernels.close()


def test_an_engine_tensor_without_a_numpy_type_is_refused_by_name(tensorrt_set, kernel_host, kernel_cache,
                                                                 monkeypatch):
    """tensorrt.nptype raises TypeError for bf16, fp8 and int4: that escaped as a bare TypeError,
    so ``--backend auto`` did not fall back to the set's ONNX graphs."""
    from dfd.runtime.manifest import EngineSetError

    gpu = _emulated_gpu(monkeypatch, kernel_host, kernel_cache)
    trt = sys.modules["tensorrt"]
    deserialize = trt.Runtime.deserialize_cuda_engine

    def bf16_logits(self, data):
        engine = deserialize(self, data)
        engine.get_tensor_dtype = lambda name: "BF16" if name == "logits" else trt.DataType.FLOAT
        return engine

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", bf16_logits)
    manifest = load_manifest(tensorrt_set)
    with pytest.raises(EngineSetError, match="the global engine's tensor logits is of type BF16, which has no "
                                             "NumPy type"):
        select_backend("tensorrt", manifest)
    assert gpu.leaks() == {}
    assert select_backend("auto", manifest).backend.name == "onnxruntime"
