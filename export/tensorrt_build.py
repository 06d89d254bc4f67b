"""Compile validated ONNX graphs into TensorRT engines: the only module that calls TensorRT to build.

NOT EXECUTED IN THIS PROJECT: TensorRT cannot be installed on its machines (PyPI serves a stub that
downloads from NVIDIA's index; no GPU either). The code is written against the documented
TensorRT 10.x/11.x Python API only (``Builder``, ``OnnxParser.parse_from_file``,
``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, ``IBuilderConfig.set_memory_pool_limit``,
optimization profiles, timing caches, ``BuilderFlag.VERSION_COMPATIBLE``,
``HardwareCompatibilityLevel``, ``BuilderFlag.TF32`` cleared, ``build_serialized_network``), and its
argument plumbing is tested with a fake module. Precision is decided in the ONNX graph (explicit Casts, Q/DQ); the
network is created strongly typed, so TensorRT keeps every tensor's type — the mode TensorRT 11
keeps (it has no FP16/INT8 builder flags and no calibrators) and TensorRT 10 supports.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dfd.runtime.errors import DfdError
from dfd.runtime.tensorrt_backend import local_platform, tensorrt_logger
from dfd.runtime.tensorrt_backend import tensorrt_unusable_reason as tensorrt_unavailable_reason

from .onnx_files import INPUT_NAME


class TensorRTBuildError(DfdError, RuntimeError):
    """TensorRT is missing here, or it rejected a graph; one readable line."""


@dataclass(frozen=True)
class TensorRTOptions:
    """Builder options recorded in the manifest next to each engine."""

    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 16
    workspace_gib: float = 4.0
    version_compatible: bool = False
    hardware_compatibility: bool = False  # Ampere+ engines, portable across those GPUs

    def check(self) -> None:
        """Refuse options TensorRT would refuse only after parsing the network."""
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise TensorRTBuildError(
                f"batch profile must satisfy 1 <= min <= opt <= max; got --min-batch {self.min_batch}, --opt-batch "
                f"{self.opt_batch}, --max-batch {self.max_batch} (defaults 1, 4, 16: a --max-batch below 4 needs a "
                f"--opt-batch no larger)"
            )
        if self.workspace_gib <= 0:
            raise TensorRTBuildError("the workspace limit must be positive")


def _tensorrt():
    reason = tensorrt_unavailable_reason()
    if reason:
        raise TensorRTBuildError(reason)
    return importlib.import_module("tensorrt")


def local_target() -> dict[str, Any]:
    """TensorRT version and the local GPU, as the manifest records them."""
    from dfd.runtime.cuda_kernels import gpu_info

    trt = _tensorrt()
    gpu = gpu_info()
    major, minor = gpu.compute_capability
    return {"version": trt.__version__, "gpu": gpu.name, "compute_capability": f"{major}.{minor}",
            "platform": local_platform()}


def build_engine(onnx_path: Path, engine_path: Path, input_size: int, options: TensorRTOptions,
                 timing_cache: Path) -> Path:
    """Parse ``onnx_path`` as a strongly typed network and write the serialized engine.

    The timing cache file is read if present and rewritten after the build, so rebuilding (or
    building the other streams, which share layer shapes) reuses measured tactics.
    """
    options.check()
    trt = _tensorrt()
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))  # resolves external data next to the file
    if not parsed or parser.num_errors:  # an error recorded with success reported fails too (as Polygraphy)
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_path.name}: "
                                 f"{errors or 'no error recorded; see TensorRT log above'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    # TF32 is on by default and lets float32 MatMuls/Convs round their inputs to 10-bit mantissas on
    # Ampere and later: the fp32 graph, and the fp32 parts of the fp16/INT8 graphs, would no longer
    # compute what ONNX Runtime validated. Precision is decided in the graph, so TF32 is off.
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    profile = builder.create_optimization_profile()
    shape = lambda n: (n, 3, input_size, input_size)  # noqa: E731 - a one-line shape helper
    profile.set_shape(INPUT_NAME, shape(options.min_batch), shape(options.opt_batch), shape(options.max_batch))
    if config.add_optimization_profile(profile) < 0:  # the profile's index, -1 when it is invalid
        raise TensorRTBuildError(f"TensorRT refused the batch profile {options.min_batch}/{options.opt_batch}/"
                                 f"{options.max_batch} for {onnx_path.name} (see TensorRT log above)")
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise TensorRTBuildError(f"TensorRT refused the timing cache {timing_cache} (made by another TensorRT "
                                 f"version or GPU); delete it and build again")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path


def _strongly_typed_flags(trt: Any) -> int:
    """The network creation flags: strongly typed. The flag's number differs between TensorRT 10
    (1) and 11 (0, deprecated: every network is strongly typed), so it is read by name; where a
    later version has dropped the name, no flag is needed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def check_hardware_compatibility(options: TensorRTOptions) -> None:
    """Refuse --hardware-compatibility where TensorRT cannot honour it, before minutes of export:
    on a GPU older than Ampere (``HardwareCompatibilityLevel.AMPERE_PLUS`` engines are built only
    on such a GPU), and on a Jetson or DRIVE GPU (integrated), where NVIDIA does not support
    hardware compatibility."""
    from dfd.runtime.cuda_kernels import gpu_info

    if not options.hardware_compatibility:
        return
    gpu = gpu_info()
    if gpu.integrated:
        raise TensorRTBuildError(f"--hardware-compatibility is not supported by TensorRT on Jetson or DRIVE GPUs "
                                 f"(this is {gpu.name}, an integrated GPU): build without it; engines for each "
                                 f"Jetson model are built on that model")
    major, minor = gpu.compute_capability
    if major < 8:
        raise TensorRTBuildError(f"--hardware-compatibility builds engines for Ampere and newer GPUs, which TensorRT "
                                 f"does only on such a GPU; this one is of compute capability {major}.{minor}")


def manifest_entry(options: TensorRTOptions) -> dict[str, Any]:
    """The ``tensorrt`` block of the manifest: what the runtime checks before deserializing."""
    return {**local_target(), "options": asdict(options)}
