"""Inference backends behind one small interface: stream name + NCHW batch in, logits out.

``onnxruntime`` is the embedded default and always works (CPU; the CUDA execution provider when
onnxruntime-gpu is installed). ``tensorrt`` runs engines compiled by ``dfd-export build --backend
tensorrt``; ``select_backend("auto", ...)`` picks it only when the set has engines and TensorRT
is usable here, and says why it did or did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from .errors import DfdError
from .manifest import EngineSetError, Manifest, StreamEntry

if TYPE_CHECKING:  # imported where a session is made: the runtime opens without it until then
    import onnxruntime as ort

BACKEND_CHOICES = ("auto", "onnxruntime", "tensorrt")


class BackendError(DfdError, RuntimeError):
    """A backend cannot be used here; the message says what is missing."""


class Backend(Protocol):
    """What the Detector needs from an inference backend."""

    name: str
    description: str

    def run(self, stream: str, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` float32 [N,3,H,W] normalised -> logits float32 [N,2]. Thread-safe."""
        ...


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    reason: str  # why this backend, in words, for `--backend auto`


def onnxruntime_session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Session options every ONNX Runtime session of an engine set shares.

    Spinning is off: the set's sessions (three streams and the face detector) each own a thread
    pool, and a pool that spins after its run steals the cores from the next session. Measured at
    ViT-S on 2 cores: the three streams one after another take 250 ms without spinning and
    320 ms with it; a session on its own loses ~3 % (benchmarks/README.md).

    ``session.x64quantprecision``: ONNX Runtime fuses an INT8 graph's QuantizeLinear /
    DequantizeLinear pairs into integer matrix products, which on x86 CPUs without VNNI (AVX2, or
    AVX-512 without VNNI) multiply u8 by s8 in 16-bit pairs that saturate. The tiny test streams'
    INT8 P(fake) was then off by 0.11 on average (0.29 at worst) on an AMD EPYC with AVX2 only,
    against 0.006 with this option, which takes the u8 x u8 kernels there (faster than fp32 still;
    with VNNI nothing changes). An INT8 graph must compute the same numbers on every CPU, and
    what TensorRT computes, or ``verify`` would measure the CPU rather than the quantisation.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def stream_shape_problem(stream: StreamEntry, input_shape: Sequence[Any], output_shape: Sequence[Any]) -> str | None:
    """Why a stream's network does not fit its manifest entry (``[N, 3, S, S]`` pixels with S the
    entry's input_size in, ``[N, 2]`` logits out), or None. Checked when a backend opens, so an
    edited manifest or a swapped graph fails there, not with the runtime's error on the first image.
    Symbolic (dynamic) dimensions other than the batch count as a mismatch."""
    size = stream.input_size
    if len(input_shape) != 4 or list(input_shape)[1:] != [3, size, size]:
        shown = "x".join(str(d) for d in list(input_shape)[1:])
        return (f"the {stream.name} stream's network takes {shown} inputs but the manifest says "
                f"3x{size}x{size}")
    if len(output_shape) != 2 or output_shape[1] != 2:
        return f"the {stream.name} stream's network outputs {list(output_shape)}, not [N, 2] logits"
    return None


class OnnxRuntimeBackend:
    """One ``InferenceSession`` per stream over the set's ONNX graphs (session.run is thread-safe)."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = onnxruntime_session_options()
        self.sessions = {}
        for name, stream in manifest.streams.items():
            graph = stream.file("onnx")
            if graph is None:
                raise EngineSetError(f"{manifest.root}: the {name} stream has no ONNX graph for onnxruntime")
            try:
                self.sessions[name] = ort.InferenceSession(
                    str(manifest.path_of(graph)), sess_options=options, providers=self.providers
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise EngineSetError(f"onnxruntime cannot load {graph.path}: {exc}") from exc
            session = self.sessions[name]
            problem = stream_shape_problem(stream, session.get_inputs()[0].shape, session.get_outputs()[0].shape)
            if problem:
                raise EngineSetError(f"{manifest.root}: {graph.path}: {problem}; rebuild the engine set")
        self.description = f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"

    def close(self) -> None:
        """Drop the sessions, whose weights and thread pools otherwise stay as long as anything
        holds the closed Detector (gigabytes at paper size)."""
        self.sessions = {}

    def run(self, stream: str, pixels: np.ndarray) -> np.ndarray:
        """One stream's logits [N, 2] for normalised pixels [N, 3, S, S]."""
        session = self.sessions[stream]
        input_name = session.get_inputs()[0].name
        (logits,) = session.run(None, {input_name: np.ascontiguousarray(pixels, dtype=np.float32)})
        return np.asarray(logits, dtype=np.float32)


def tensorrt_unavailable_reason(manifest: Manifest) -> str | None:
    """Why the TensorRT backend cannot run this set here, or None when it can."""
    if not all(entry.file("engine") is not None for entry in manifest.streams.values()):
        return "the engine set has no TensorRT engines (built with --backend onnxruntime)"
    from .tensorrt_backend import tensorrt_mismatch, tensorrt_unusable_reason

    reason = tensorrt_unusable_reason()
    if reason:
        return reason
    import tensorrt

    from .cuda_kernels import gpu_info

    gpu = gpu_info()
    major, minor = gpu.compute_capability
    return tensorrt_mismatch(manifest.raw.get("tensorrt", {}), tensorrt.__version__, f"{major}.{minor}",
                             local_integrated=gpu.integrated)


def check_backend_name(name: object) -> None:
    """Refuse a backend name that is none of ``BACKEND_CHOICES``, before the engine set's files are
    hashed (minutes at paper size) rather than after."""
    if name not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_CHOICES)}")


def select_backend(name: str, manifest: Manifest) -> BackendChoice:
    """Open the backend ``name`` ("auto", "onnxruntime" or "tensorrt") for ``manifest``."""
    check_backend_name(name)
    if name in ("auto", "tensorrt"):
        reason = tensorrt_unavailable_reason(manifest)
        if reason is None:
            from .tensorrt_backend import TensorRTBackend

            try:
                backend = TensorRTBackend(manifest)
                return BackendChoice(backend, backend.description)
            except DfdError as exc:  # e.g. a driver too old for cuda-python, no GPU memory left
                if name == "tensorrt":
                    raise
                reason = f"opening the engines failed: {exc}"
        if name == "tensorrt":
            raise BackendError(f"cannot use the tensorrt backend: {reason}")
        backend = OnnxRuntimeBackend(manifest)
        return BackendChoice(backend, f"auto: {backend.description}; TensorRT not used: {reason}")
    backend = OnnxRuntimeBackend(manifest)
    return BackendChoice(backend, backend.description)
