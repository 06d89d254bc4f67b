"""The fused GPU path's orchestration (runtime/gpu_pipeline.py) against the host path of the Detector.

No GPU here: the pipeline runs on ``HostDevice`` (tests/host_gpu.py), where the kernels are their
own headers compiled with g++, the engines are the set's ONNX graphs on ONNX Runtime, streams are
queues ordered only by event waits, and CUDA graphs replay recorded operations. What this checks:
image packing and the job table, which face input each image gets (box, own image, re-encoded JPEG,
none), the notes, chunking to the engines' batch, stream ordering, graph capture and replay, and
buffer lifetime. The driver calls behind it (runtime/cuda_device.py) are checked in test_cuda_device.py.
"""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest

from dfd.runtime.backends import BackendChoice, OnnxRuntimeBackend
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError
from dfd.runtime.gpu_pipeline import FusedPathError, GpuPipeline, fused_path_problem
from dfd.runtime.manifest import load_manifest
from dfd.runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD
from host_gpu import HostDevice, HostEngine

SIZES = {"global": 252, "face": 252, "fusion": 224}
PREPROCESSING = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
pytestmark = pytest.mark.usefixtures("opencv_without_ipp")


class HostFusedBackend(OnnxRuntimeBackend):
    """The set's ONNX graphs, plus the fused path on a HostDevice (what TensorRTBackend offers on a GPU)."""

    def __init__(self, manifest, kernels, order: str = "lazy", max_batch: int = 4) -> None:
        super().__init__(manifest)
        self.device = HostDevice(kernels, order)
        self.engines = {name: HostEngine(self.device, self.sessions[name], entry.input_size, max_batch)
                        for name, entry in manifest.streams.items()}

    def fused_pipeline(self, weights, preprocessing, input_sizes, capture_batch=None) -> GpuPipeline:
        problem = fused_path_problem(self.engines, preprocessing, input_sizes)
        if problem:
            raise FusedPathError(problem)
        return GpuPipeline(self.device, self.engines, weights, capture_batch)


@pytest.fixture(scope="module")
def scene(photographs, tmp_path_factory):
    """Files of every kind the face input rules tell apart, one corrupt, plus face crops."""
    root = tmp_path_factory.mktemp("fused-scene")

    def write(name: str, rgb: np.ndarray) -> str:
        path = root / name
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return str(path)

    astronaut, coffee = photographs["astronaut"], photographs["coffee"]
    portrait = astronaut[0:300, 100:400]  # the face covers over 1/9 of it
    images = [
        write("portrait.png", portrait),  # face found by the packaged detector, cropped by the kernel
        write("portrait.jpg", portrait),  # face input re-encoded as JPEG: an image of its own
        write("coffee.png", coffee),  # no face
        write("small.png", cv2.resize(astronaut, (150, 100), interpolation=cv2.INTER_AREA)),  # < 252
        write("wide224.png", coffee[:224, :300]),  # the reference's 224-high quirk
        str(root / "corrupt.png"),
        photographs["chelsea"],  # an array
    ]
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    crops = [write("crop.png", astronaut[40:260, 120:320]), write("crop_small.jpg", astronaut[60:200, 150:270])]
    return images, crops


def _open(engine_set, backend, **options) -> Detector:
    manifest = load_manifest(engine_set)
    return Detector(manifest, BackendChoice(backend, backend.description), **options)


def _same(fused: list, host: list) -> None:
    assert [d.to_dict() for d in fused] == [d.to_dict() for d in host]


@pytest.mark.parametrize("order", ["lazy", "others_first"])
def test_fused_path_equals_the_host_path(tiny_engine_set, kernel_host, scene, order):
    images, crops = scene
    manifest = load_manifest(tiny_engine_set)
    backend = HostFusedBackend(manifest, kernel_host, order, max_batch=4)
    # the fused path's images prepared on threads (the kernels resize, in this thread), the host's in turn
    with _open(tiny_engine_set, backend, batch_size=8, prepare_workers=3) as fused, \
            _open(tiny_engine_set, OnnxRuntimeBackend(manifest), batch_size=8) as host:
        assert fused.fused is not None and fused.preprocessing.startswith("fused CUDA kernels")
        assert host.fused is None and host.preprocessing == "host (NumPy/OpenCV)"
        pipeline = fused.fused
        got, want = fused.detect(images), host.detect(images)
        _same(got, want)
        assert [d.ok for d in got] == [True] * 5 + [False, True]  # the corrupt file sinks nothing
        assert got[0].face["source"] == "detector" and got[0].face["used"] == "crop"
        assert any("re-encoded as .jpg" in note for note in got[1].notes)
        assert any("smaller than 252" in note for note in got[3].notes)
        assert any("exactly 224 high" in note for note in got[4].notes)
        assert [e.batches for e in backend.engines.values()] == [[4, 2]] * 3  # 6 good images, max batch 4

        boxes = [(120, 30, 320, 260), (0, 0, 30, 30), None]  # crop, under 1/9 (original), none
        _same(fused.detect(images[:3], face_boxes=boxes), host.detect(images[:3], face_boxes=boxes))
        _same(fused.detect(images[:2], face_crops=crops), host.detect(images[:2], face_crops=crops))
        pixel, box = [np.full((1, 1, 3), 7, np.uint8)], [(0, 0, 0.5, 0.5)]  # a window of no area
        refused = fused.detect(pixel, face_boxes=box)
        _same(refused, host.detect(pixel, face_boxes=box))
        assert "too small to crop" in refused[0].error
        strip = [np.zeros((2, 3000, 3), np.uint8)]  # its 252 crop would need a 95 MP upscale
        refused = fused.detect(strip)
        _same(refused, host.detect(strip))
        assert "too elongated to score" in refused[0].error
    assert backend.device.pinned == {}  # close() released every staging and result buffer
    pipeline.close()  # closing again frees nothing twice
    assert set(backend.device.allocations) == {a for e in backend.engines.values()
                                               for a in (e.input_address, e.output_address)}


def test_cuda_graph_replays_later_batches_with_their_own_images(tiny_engine_set, kernel_host, photographs):
    """Batches of the captured size replay the graph; each must still see its own images (the
    graph reads the job table's addresses, which are uploaded before every replay). After a batch
    of another size the contexts ran another shape, so the graph is captured again: replaying it
    then computed on a context TensorRT had re-set (the HostEngine asserts this)."""
    rng = np.random.default_rng(3)
    images = [photographs["astronaut"], photographs["coffee"], photographs["chelsea"]]
    images += [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in
               rng.integers(180, 700, size=(4, 2))]
    manifest = load_manifest(tiny_engine_set)
    backend = HostFusedBackend(manifest, kernel_host, "others_first", max_batch=4)
    with _open(tiny_engine_set, backend, batch_size=2, cuda_graph_batch=2) as fused, \
            _open(tiny_engine_set, OnnxRuntimeBackend(manifest), batch_size=2) as host:
        assert "CUDA graph for batches of 2" in fused.preprocessing
        _same(fused.detect(images), host.detect(images))  # 2, 2, 2, 1
        assert (backend.device.graphs_captured, backend.device.graphs_replayed) == (1, 2)
        _same(fused.detect(images[::-1]), host.detect(images[::-1]))  # 2 (recaptured), 2, 2, 1
        assert (backend.device.graphs_captured, backend.device.graphs_replayed) == (2, 4)
    # plain, capture, (replays), 1; plain, capture, (replays), 1
    assert [e.batches for e in backend.engines.values()] == [[2, 2, 1, 2, 2, 1]] * 3


def test_a_failed_capture_is_ended_and_batches_go_on_without_graphs(tiny_engine_set, kernel_host, photographs):
    """TensorRT may refuse to enqueue into a capture: the capture used to stay open, so every later
    call failed (a capturing stream cannot be synchronised) and close() raised."""
    images = [photographs["astronaut"], photographs["coffee"], photographs["chelsea"]] * 2
    manifest = load_manifest(tiny_engine_set)
    backend = HostFusedBackend(manifest, kernel_host, max_batch=4)
    for engine in backend.engines.values():
        engine.refuse_capture = True
    with _open(tiny_engine_set, backend, batch_size=2, cuda_graph_batch=2) as fused, \
            _open(tiny_engine_set, OnnxRuntimeBackend(manifest), batch_size=2) as host:
        _same(fused.detect(images), host.detect(images))
        _same(fused.detect(images[:3]), host.detect(images[:3]))
        assert "CUDA-graph capture failed (TensorRT execute_async_v3 failed); batches run without a graph" \
            in fused.preprocessing
        # the one failed capture was ended (and its graph destroyed); nothing was captured or replayed after
        assert (backend.device.graphs_captured, backend.device.graphs_replayed) == (1, 0)
        assert not backend.device._capturing
    assert backend.device.pinned == {}


def test_cuda_graph_needs_the_fused_path(tiny_engine_set, kernel_host):
    manifest = load_manifest(tiny_engine_set)
    with pytest.raises(DfdError, match="needs the tensorrt backend"):
        _open(tiny_engine_set, OnnxRuntimeBackend(manifest), cuda_graph_batch=2)
    with pytest.raises(DfdError, match="host preprocessing .* turns off"):
        _open(tiny_engine_set, HostFusedBackend(manifest, kernel_host), gpu_preprocessing=False,
              cuda_graph_batch=2)
    with pytest.raises(DfdError, match="batches of 4 would never replay"):
        _open(tiny_engine_set, HostFusedBackend(manifest, kernel_host), batch_size=2, cuda_graph_batch=4)
    with pytest.raises(DfdError, match="outside the engines' profile"):
        _open(tiny_engine_set, HostFusedBackend(manifest, kernel_host, max_batch=4), cuda_graph_batch=5)


def test_cli_refuses_a_cuda_graph_without_the_tensorrt_backend(tiny_engine_set, photographs, tmp_path):
    from click.testing import CliRunner

    from dfd.export.cli import main

    image = tmp_path / "coffee.png"
    cv2.imwrite(str(image), photographs["coffee"])
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--backend", "onnxruntime",
                                       "--cuda-graph-batch", "4"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "a CUDA graph needs the tensorrt backend" in result.output
    result = CliRunner().invoke(main, ["detect", str(tiny_engine_set), str(image), "--backend", "onnxruntime"])
    assert result.exit_code == 0 and "preprocessing and vote: host (NumPy/OpenCV)" in result.output


def test_unusable_fused_path_falls_back_to_the_host_and_says_why(tiny_engine_set, kernel_host, photographs):
    manifest = load_manifest(tiny_engine_set)
    backend = HostFusedBackend(manifest, kernel_host)
    backend.engines["face"].output_dtype = np.dtype(np.float16)
    with _open(tiny_engine_set, backend) as detector, _open(tiny_engine_set, OnnxRuntimeBackend(manifest)) as host:
        assert detector.fused is None
        assert "fused GPU path is unavailable: engine outputs must be float32" in detector.preprocessing
        _same(detector.detect([photographs["coffee"]]), host.detect([photographs["coffee"]]))
    with _open(tiny_engine_set, HostFusedBackend(manifest, kernel_host), gpu_preprocessing=False) as detector:
        assert detector.fused is None and detector.preprocessing == "host (NumPy/OpenCV)"


def test_fused_path_problems_are_named():
    def engine(dtype=np.float32, out=np.float32):
        return types.SimpleNamespace(input_dtype=np.dtype(dtype), output_dtype=np.dtype(out))

    engines = {s: engine() for s in SIZES}
    assert fused_path_problem(engines, PREPROCESSING, SIZES) is None
    assert "all be float32 or all float16" in fused_path_problem({**engines, "face": engine(np.float16)},
                                                               PREPROCESSING, SIZES)
    assert fused_path_problem({s: engine(np.float16) for s in SIZES}, PREPROCESSING, SIZES) is None
    assert "no fusion stream" in fused_path_problem({s: engines[s] for s in ("global", "face")},
                                                    PREPROCESSING, SIZES)
    assert "not the kernel's" in fused_path_problem(engines, PREPROCESSING, {**SIZES, "fusion": 252})
    assert "ImageNet" in fused_path_problem(engines, {"mean": [0.5] * 3, "std": [0.5] * 3}, SIZES)


class _NaNForRow:
    """An ONNX Runtime session whose logits are NaN for one row (an fp16 overflow, say)."""

    def __init__(self, session, row: int) -> None:
        self._session, self._row = session, row

    def get_inputs(self):
        return self._session.get_inputs()

    def run(self, outputs, feed):
        (logits,) = self._session.run(outputs, feed)
        logits = np.array(logits)
        logits[self._row] = np.nan
        return [logits]


def test_a_non_finite_stream_output_fails_only_its_image(tiny_engine_set, kernel_host, photographs):
    images = [photographs["astronaut"], photographs["coffee"], photographs["chelsea"]]
    manifest = load_manifest(tiny_engine_set)
    backend = HostFusedBackend(manifest, kernel_host)
    backend.engines["face"]._session = _NaNForRow(backend.sessions["face"], 1)
    host_backend = OnnxRuntimeBackend(manifest)
    host_backend.sessions["face"] = _NaNForRow(host_backend.sessions["face"], 1)
    with _open(tiny_engine_set, backend) as fused, _open(tiny_engine_set, host_backend) as host:
        got, want = fused.detect(images), host.detect(images)
    _same(got, want)
    assert [d.ok for d in got] == [True, False, True]
    assert "face stream produced a non-finite probability" in got[1].error and got[1].score is None


class _StagingDevice:
    """The four calls a staging buffer makes, recorded; ``fail`` names calls that raise once."""

    def __init__(self, *fail: str) -> None:
        self.calls: list[str] = []
        self.fail = set(fail)

    def _call(self, name: str, value=None):
        self.calls.append(name)
        if name in self.fail:
            self.fail.discard(name)
            raise DfdError(f"{name} failed")
        return value

    def synchronize(self, stream) -> None:
        self._call("synchronize")

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        return self._call("alloc_pinned", np.zeros(nbytes, np.uint8))

    def alloc(self, nbytes: int) -> int:
        return self._call("alloc", 4096)

    def free(self, address: int) -> None:
        self._call("free")

    def free_pinned(self, buffer: np.ndarray) -> None:
        self._call("free_pinned")


def test_a_staging_buffer_releases_each_half_once_whatever_fails():
    """The host buffer alone is held when the device allocation after it failed, and is freed; a
    failed free is raised after the other is freed, and a second release frees nothing again
    (the buffers are forgotten before the failure is raised)."""
    from dfd.runtime.gpu_pipeline import _Staging

    device = _StagingDevice("alloc")
    staging = _Staging(device)
    with pytest.raises(DfdError, match="alloc failed"):
        staging.reserve(64, stream=0)
    staging.release()
    assert device.calls == ["synchronize", "alloc_pinned", "alloc", "free_pinned"]
    device = _StagingDevice("free")
    staging = _Staging(device)
    staging.reserve(64, stream=0)
    with pytest.raises(DfdError, match="free failed"):
        staging.release()
    assert device.calls[-2:] == ["free", "free_pinned"]
    made = len(device.calls)
    staging.release()
    assert len(device.calls) == made and staging.address == 0 and staging.host.size == 0
