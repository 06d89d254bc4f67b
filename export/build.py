"""``dfd-export build``: checkpoints -> stream modules -> ONNX -> an engine set folder.

One stream at a time (a DINOv2-giant stream is 4.4 GB of fp32 weights; the machine this must run
on has 24 GB), into a hidden staging folder that replaces the output folder only when every
stream is built, hashed and described in the manifest: an interrupted build loses nothing.
"""

from __future__ import annotations

import fcntl
import gc
import math
import os
import platform
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch

from dfd.runtime.atomic_files import flush_to_disk, sync_folder
from dfd.runtime.errors import DfdError, first_few, os_error_text, stop_request_handled
from dfd.runtime.images import DEFAULT_MAX_PIXELS
from dfd.runtime.manifest import (FORMAT, FORMAT_VERSION, MANIFEST_NAME, PRECISIONS, FileEntry, engine_set_files,
                                  write_manifest)
from dfd.runtime.preprocess import preprocessing_record
from dfd.runtime.progress import progress_bar
from dfd.runtime.vote import DEFAULT_VOTE_WEIGHTS, VOTE_RULES

from .checkpoint import CheckpointError, check_reference_checkpoint, load_reference_checkpoint
from .checkpoint_files import find_checkpoint
from .configs import (PAPER_CLIP, PAPER_DINOV2, STREAM_NAMES, STREAM_SPECS, ClipVisionConfig, DinoV2Config,
                      LoraSettings, load_clip_config, load_dinov2_config)
from .onnx_export import DEFAULT_OPSET, export_stream_onnx, parameter_bytes
from .recorded_build import SEED_RANGE, RecordedBuild
from .streams import build_stream
from .tensorrt_build import TensorRTOptions

CALIBRATION_METHODS = ("entropy", "max")
# Fewer distinct calibration photographs than this draw a warning: ranges (INT8) and overflow
# checks (fp16) measured on a handful of images need not cover what the engines will see.
FEW_CALIBRATION_IMAGES = 8
BACKENDS = ("onnxruntime", "tensorrt", "auto")


class BuildError(DfdError, RuntimeError):
    """A build cannot start or finish; the message says what to change."""


@dataclass(frozen=True)
class BuildRequest:
    out_dir: Path
    weights_dir: Path | None = None
    models_dir: Path | None = None
    precision: str = "fp32"
    backend: str = "onnxruntime"
    streams: tuple[str, ...] = STREAM_NAMES
    lora: LoraSettings = field(default_factory=LoraSettings)
    opset: int = DEFAULT_OPSET
    seed: int = 0
    force: bool = False
    face_detector: bool = True
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    calib_dir: Path | None = None  # None: photographs shipped in installed packages
    calib_count: int = 256
    calib_degrade: float = 0.5  # the paper's share of degraded training images (global_p)
    calib_method: str = "entropy"
    calib_seed: int = 0
    calib_cache: Path | None = None
    calib_max_pixels: int = DEFAULT_MAX_PIXELS  # decoding limit of the calibration images


def _versions() -> dict[str, str]:
    names = ("dfd-export", "torch", "timm", "open_clip_torch", "onnx", "onnxscript", "onnxruntime", "numpy",
             "opencv-python-headless")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _resolve_configs(request: BuildRequest) -> tuple[DinoV2Config, ClipVisionConfig]:
    if request.models_dir is None:
        return PAPER_DINOV2, PAPER_CLIP
    dino = load_dinov2_config(request.models_dir)
    clip = load_clip_config(request.models_dir) if "fusion" in request.streams else PAPER_CLIP
    return dino, clip


def _check_request(request: BuildRequest) -> None:
    if request.precision not in PRECISIONS:
        raise BuildError(f"precision {request.precision!r} is not available; choose from {', '.join(PRECISIONS)}")
    if request.backend not in BACKENDS:
        raise BuildError(f"backend {request.backend!r} is not available; choose from {', '.join(BACKENDS)}")
    if request.calib_method not in CALIBRATION_METHODS:
        raise BuildError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
    if request.calib_count < 1 or not 0.0 <= request.calib_degrade <= 1.0:
        raise BuildError("--calib-count must be >= 1 and --calib-degrade within [0, 1]")
    if request.calib_max_pixels < 1:
        raise BuildError(f"--max-pixels must be >= 1, got {request.calib_max_pixels}")
    if request.lora.r < 1 or not (math.isfinite(request.lora.alpha) and request.lora.alpha > 0):
        raise BuildError(f"LoRA rank must be >= 1 and alpha a positive number; got r={request.lora.r}, "
                         f"alpha={request.lora.alpha}")
    if not SEED_RANGE[0] <= request.seed <= SEED_RANGE[1]:
        raise BuildError(f"--seed must be within [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (what torch can seed with), "
                         f"got {request.seed}")
    if request.calib_dir is not None and not Path(request.calib_dir).is_dir():
        raise BuildError(f"calibration folder not found: {request.calib_dir}")
    if request.precision != "fp32":
        _check_calibration_memory(request)
    # contradictory flags are refused whatever the backend: the same command must not pass here
    # (ONNX Runtime, options unused) and fail on a machine where --backend auto finds TensorRT
    request.tensorrt.check()
    unknown = [s for s in request.streams if s not in STREAM_NAMES]
    if unknown or not request.streams:
        raise BuildError(f"unknown stream(s) {unknown}; choose from {', '.join(STREAM_NAMES)}")
    out = Path(request.out_dir)
    if request.precision != "fp32" and request.calib_cache is not None:
        cache, root = _absolute(request.calib_cache).resolve(), _absolute(out).resolve()
        if cache == root or root in cache.parents:
            raise BuildError(f"--calib-cache {request.calib_cache} is inside --out {out}, which the build replaces "
                             "whole; choose a cache folder outside it")
    if out.is_symlink():  # a build replaces its folder whole, and a link is not a folder to replace
        raise BuildError(f"{out} is a symbolic link (to {os.readlink(out)}); give the folder it points to, "
                         f"or a new --out")
    problem = _output_problem(out, request.force)
    if problem:
        raise BuildError(problem)
    if request.face_detector:
        from .face_detector import default_tflite_path
        from .mtcnn import default_mtcnn_weights_dir

        try:
            default_tflite_path()
            default_mtcnn_weights_dir()
        except DfdError as exc:
            raise BuildError(f"{exc} (or build without face localisation: --no-face-detector)") from exc
    if request.weights_dir is not None:
        missing = [str(path) for path in (find_checkpoint(request.weights_dir, s) for s in request.streams)
                   if not path.is_file()]
        if missing:
            raise BuildError("checkpoint(s) not found: " + ", ".join(missing) + " (nor the same names as .safetensors)")


def _check_checkpoints(request: BuildRequest, dino: DinoV2Config, clip: ClipVisionConfig) -> None:
    """Check every stream's checkpoint (names, shapes, dtypes; no values read) before the build's
    long work, and name the problems of all of them at once: a wrong third checkpoint used to be
    found only after the calibration set and two streams' exports, and the next one after that."""
    errors = []
    for name in request.streams:
        try:
            check_reference_checkpoint(find_checkpoint(request.weights_dir, name), name, dino, clip, request.lora)
        except CheckpointError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise CheckpointError(f"{len(errors)} of the {len(request.streams)} checkpoints cannot be built:\n"
                              + "\n".join(str(error) for error in errors))


def load_stream_module(name: str, request: BuildRequest, dino: DinoV2Config, clip: ClipVisionConfig) -> tuple[torch.nn.Module, dict]:
    """The fp32 stream module for ``request``: its checkpoint, or seeded random weights (the same
    seed gives the same weights, which is how ``verify`` rebuilds a random set's reference)."""
    torch.manual_seed(request.seed + STREAM_NAMES.index(name))
    module = build_stream(name, dino, clip if STREAM_SPECS[name].uses_clip else None)
    if request.weights_dir is None:
        return module, {"checkpoint": None}
    path = find_checkpoint(request.weights_dir, name)
    state = load_reference_checkpoint(path, name, dino, clip, request.lora)
    module.load_state_dict(state, strict=True)
    del state
    source = FileEntry.of(path.parent, path, "checkpoint")
    return module, {"checkpoint": {"file": source.path, "sha256": source.sha256, "bytes": source.bytes}}


def load_reference_stream(build: RecordedBuild, name: str, weights_dir: Path | None) -> torch.nn.Module:
    """The fp32 PyTorch module the set's ``name`` stream was built from: its checkpoint, found in
    ``weights_dir`` (which must hold the very file the build hashed), or the build's seeded
    random weights."""
    stream = build.streams[name]
    request = BuildRequest(out_dir=Path("."), weights_dir=weights_dir if stream.checkpoint else None,
                           seed=build.seed, lora=build.lora)
    module, source = load_stream_module(name, request, stream.dino, stream.clip)
    loaded = source["checkpoint"]
    if stream.checkpoint and loaded["sha256"] != stream.checkpoint.sha256:
        raise CheckpointError(f"{Path(weights_dir) / loaded['file']} is not the checkpoint the {name} stream was "
                              f"built from (its sha256 differs); pass --weights-dir where that file is")
    return module


def _face_detector_entry(staging: Path, request: BuildRequest) -> dict[str, Any]:
    """Export the packaged face localisers next to the streams (their own manifest entry):
    BlazeFace for the letterbox pass and MTCNN's three networks for the small-face pass. Both run
    on ONNX Runtime in every set (fp32): BlazeFace is 0.21 GFLOP per pass and MTCNN's pyramid
    ~1-2 GFLOP on a 1920-pixel photo (P-Net's convolutions, estimated), against 2286 for the
    paper-size streams, and boxes would move in fp16."""
    from dfd.runtime.face_detection import DEFAULT_SCORE_THRESHOLD, INPUT_SIZE, SMALL_FACE_THRESHOLDS

    from .face_detector import default_tflite_path, export_face_detector_onnx
    from .mtcnn import ONNX_FILES, default_mtcnn_weights_dir, export_mtcnn_onnx

    tflite = default_tflite_path()
    graph = staging / "face_detector.fp32.onnx"
    export_face_detector_onnx(graph, opset=request.opset, tflite_path=tflite)
    source = FileEntry.of(tflite.parent, tflite, "tflite")
    files = [FileEntry.of(staging, graph, "onnx")]
    weights = default_mtcnn_weights_dir()
    small_graphs = export_mtcnn_onnx(staging, opset=request.opset, weights_dir=weights)
    files += [FileEntry.of(staging, small_graphs[net], f"mtcnn_{net}") for net in ONNX_FILES]
    small_sources = [FileEntry.of(weights, weights / f"{net}.pt", "weights") for net in ONNX_FILES]
    return {
        "input_size": INPUT_SIZE,
        "precision": "fp32",
        "backend": "onnxruntime",  # in TensorRT sets too: the runtime runs it on ONNX Runtime
        "files": [f.__dict__ for f in files],
        "model": "MediaPipe BlazeFace full-range (face_detection_full_range.tflite, Apache-2.0)",
        "source": {"file": source.path, "sha256": source.sha256, "bytes": source.bytes},
        "score_threshold": DEFAULT_SCORE_THRESHOLD,
        "small_faces": {
            "model": "MTCNN P-Net/R-Net/O-Net (facenet-pytorch 2.6.0 weights, MIT)",
            "sources": [{"file": f.path, "sha256": f.sha256, "bytes": f.bytes} for f in small_sources],
            "thresholds": list(SMALL_FACE_THRESHOLDS),
        },
    }


def resolve_backend(request: BuildRequest, warn: Callable[[str], None]) -> BuildRequest:
    """``auto`` -> tensorrt when it can build here, else onnxruntime (said); ``tensorrt`` without
    TensorRT or a GPU -> one clear error before any work starts."""
    from dataclasses import replace

    from .tensorrt_build import check_hardware_compatibility, tensorrt_unavailable_reason

    if request.backend == "onnxruntime":
        return request
    reason = tensorrt_unavailable_reason()
    if reason:
        if request.backend == "tensorrt":
            raise BuildError(f"cannot build TensorRT engines here: {reason}")
        warn(f"--backend auto: building for onnxruntime ({reason})")
        return replace(request, backend="onnxruntime")
    check_hardware_compatibility(request.tensorrt)
    return replace(request, backend="tensorrt")


def _compile_tensorrt(staging: Path, graph: Path, input_size: int, request: BuildRequest) -> list[FileEntry]:
    from .tensorrt_build import build_engine

    engine = graph.with_suffix(".engine")
    build_engine(graph, engine, input_size, request.tensorrt, staging / "timing.cache")
    return [FileEntry.of(staging, engine, "engine")]


def _check_calibration_memory(request: BuildRequest) -> None:
    """The calibration tensors (float32, every stream's input for every slot) are held at once:
    a --calib-count they cannot fit in failed minutes in with a numpy allocation traceback."""
    from .bench.environment import available_memory_bytes

    needed = request.calib_count * sum(3 * STREAM_SPECS[s].input_size ** 2 * 4 for s in request.streams)
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise BuildError(f"--calib-count {request.calib_count} makes calibration tensors of {needed / 2**30:,.1f} GiB, "
                         f"more than the {available / 2**30:,.1f} GiB of memory available; lower it (the default "
                         f"is {BuildRequest.calib_count})")


def _calibration_set(request: BuildRequest, warn: Callable[[str], None]):
    """The calibration set of an fp16/INT8 build, from the runtime's own preprocessing."""
    from dfd.calibration.calibset import build_calibration_set
    from dfd.calibration.sources import builtin_photographs, list_images

    if request.calib_dir is not None:
        found = list_images(Path(request.calib_dir))
        for warning in found.warnings(Path(request.calib_dir)):  # what the set is not drawn from
            warn(warning)
        # absolute, so the manifest says which folder whichever folder the build ran from
        images, source = found.images, str(_absolute(Path(request.calib_dir)))
    else:
        images, source = builtin_photographs(), "photographs shipped in installed packages"
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = request.calib_cache or user_cache / "dfd-export" / "calibration"
    calibration = build_calibration_set(
        images, count=request.calib_count, degrade_share=request.calib_degrade, seed=request.calib_seed,
        stream_sizes={s: STREAM_SPECS[s].input_size for s in request.streams}, cache_dir=cache, source=source,
        max_pixels=request.calib_max_pixels, warn=warn,
    )
    if calibration.unreadable:
        errors = list(calibration.unreadable.values())
        warn(f"{len(errors)} calibration image(s) could not be read; their slots hold other images of the "
             f"set (listed in the manifest): {first_few(errors, 3, separator='; ')}")
    noted = calibration.noted_slots
    if noted:  # as detect's rows carry them, so a small calibration photograph is not taken for a large one
        first = calibration.items[noted[0]]
        warn(f"{len(noted)} of the {request.calib_count} calibration slot(s) hold an image preprocessed by a "
             f"documented rule, as detect would score it; the first, {first.name}: {first.notes[0]} (the "
             f"manifest's calibration slots list each)")
    # distinct photographs read, not files found: a folder of one good file and seven corrupt ones
    # filled every slot from that one file without this warning
    photographs = len(calibration.source_pixels)
    if photographs < min(FEW_CALIBRATION_IMAGES, request.calib_count):
        warn(f"the calibration set draws its {request.calib_count} slots from only {photographs} distinct "
             f"photograph(s) of the {len(images)} image(s) in {source}; an {request.precision} graph calibrated on "
             f"so few may not cover the images it will score. Give --calib-dir a folder of at least "
             f"{FEW_CALIBRATION_IMAGES} (a few hundred is better)")
    return calibration


def _precision_graph(fp32_graph: Path, graph: Path, precision: str, calibration, name: str, method: str) -> tuple[list[Path], dict]:
    """fp32 graph -> the requested precision's graph (validated ONNX, see export/precision.py)."""
    from . import precision as precision_passes

    if precision == "fp16":
        return precision_passes.make_fp16_graph(fp32_graph, graph, calibration.arrays[name]), {
            "fp32_kept": "LayerNormalization, Softmax, residual stream, heads, out-of-fp16-range nodes"}
    keep = precision_passes.DEFAULT_KEEP
    written = precision_passes.make_int8_graph(fp32_graph, graph, calibration.arrays[name], method=method, keep_fp32=keep)
    return written, {"calibration_method": method, "fp32_kept": ["patch embedding Conv", *keep],
                     "quantized": "MatMul/Gemm with weight initializers: int8 symmetric, per-channel weights"}


def build_engine_set(request: BuildRequest, warn: Callable[[str], None] = lambda m: None) -> Path:
    """Build the engine set ``request`` describes; returns the manifest path."""
    _check_request(request)
    request = resolve_backend(request, warn)
    dino, clip = _resolve_configs(request)
    if request.weights_dir is not None:
        _check_checkpoints(request, dino, clip)
    else:
        warn(
            "NO --weights-dir: building RANDOMLY INITIALISED streams. Their scores mean nothing; "
            "use this only for demos, benchmarks and tests."
        )
    out = _absolute(request.out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create the engine set folder {out}: {os_error_text(exc)}") from exc
    with _exclusive_build(out):
        _restore_set_left_aside(out, request.force, warn)
        return _build_into(out, request, dino, clip, warn)


def _warn_about_shared_checkpoints(streams: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Two streams built from one checkpoint file (the same bytes under two names, e.g. a copy
    made to fill a missing file) are one stream counted twice: the vote loses its complementarity."""
    by_hash: dict[str, list[str]] = {}
    for name, entry in streams.items():
        checkpoint = entry["source"].get("checkpoint")
        if checkpoint is not None:
            by_hash.setdefault(checkpoint["sha256"], []).append(name)
    for sha256, names in by_hash.items():
        if len(names) > 1:
            warn(f"the {' and '.join(names)} streams were built from identical checkpoint files (sha256 "
                 f"{sha256[:12]}...): they will give the same probabilities, and the vote counts one stream twice. "
                 f"Check that each file in --weights-dir is that stream's own checkpoint")


def _output_problem(out: Path, force: bool) -> str | None:
    """Why the build may not put its engine set at ``out``, or None.

    A build replaces ``out`` whole, so it may only replace an empty folder or, with ``--force``,
    an engine set holding nothing but its own files: a folder that merely has a file called
    manifest.json (a web app's), or an engine set where someone keeps their notes or benchmark
    results, is never deleted. Checked before the build and again, under the build's lock, just
    before the new set replaces the old, since a long build leaves time for files to appear."""
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a folder; choose another --out"
    if out.is_dir() and os.path.ismount(out):
        return (f"{out} is a mount point, which the build cannot replace (it stages the set beside the folder and "
                f"renames it into place, so the whole build would fail at its end); give a folder inside it, e.g. "
                f"{out / 'engines'}")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not force:
        return f"{out} already exists and is not empty; pass --force to replace it"
    listed = engine_set_files(out)
    if listed is None:
        return (f"{out} is not an engine set (it holds no dfd-export {MANIFEST_NAME}), and --force replaces "
                "only engine sets; choose a new or empty --out")
    # a link is the user's whatever it leads to (a folder's was taken for one of the set's), and
    # so is an empty folder (a non-empty one shows by what it holds)
    others = sorted(rel for p in out.rglob("*")
                    if (rel := p.relative_to(out).as_posix()) not in listed
                    and (p.is_symlink() or not p.is_dir() or not any(p.iterdir())))
    if others:
        return (f"{out} holds files that are not part of its engine set ({first_few(others, 5)}), and --force "
                "replaces only an engine set's own files; move them out or choose a new --out")
    return None


def _aside(out: Path) -> Path:
    """Where :func:`_publish` keeps the old set while the new one moves in."""
    return out.parent / f".{out.name}.replaced"


def _publish(staging: Path, out: Path, force: bool) -> None:
    """Put the finished ``staging`` folder at ``out``. The old set is renamed aside, not deleted,
    until the new one is in place, so an interrupt leaves one complete set at ``out`` (the old on
    failure, the new after); a process killed between the two renames leaves the old set aside,
    and the next build puts it back (:func:`_restore_set_left_aside`). Once the new set is in
    place the build has succeeded: an interrupt while the old one is deleted only leaves its
    remains for the next build to delete."""
    problem = _output_problem(out, force)
    if problem:
        raise BuildError(f"{problem} (this appeared while the build ran; nothing was replaced)")
    if not out.exists():
        staging.rename(out)
        sync_folder(out.parent)
        return
    _take_access_of(out, staging)
    aside = _aside(out)
    shutil.rmtree(aside, ignore_errors=True)
    out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    sync_folder(out.parent)  # the renames reach the disk before the old set's files are deleted
    try:
        shutil.rmtree(aside, ignore_errors=True)
    except KeyboardInterrupt:  # the new set is complete and in place; the next build removes what is left
        stop_request_handled()


def _take_access_of(out: Path, staging: Path) -> None:
    """Give ``staging`` the permission bits (and, as root, the owner) of the folder it replaces: a
    shared ``--out`` made 0750 or 2775 for a group, or chowned to a service user, came back 0755
    and the builder's."""
    status = out.stat()
    if os.geteuid() == 0:
        os.chown(staging, status.st_uid, status.st_gid)
    os.chmod(staging, stat.S_IMODE(status.st_mode))  # after chown, which may clear set-id bits


def _restore_set_left_aside(out: Path, force: bool, warn: Callable[[str], None]) -> None:
    """A build killed (SIGKILL, power loss) between :func:`_publish`'s two renames left no set at
    ``out`` and the old one aside: put it back before anything else, under the build's lock."""
    aside = _aside(out)
    if aside.is_dir() and not out.exists() and engine_set_files(aside) is not None:
        aside.rename(out)
        warn(f"restored the engine set an interrupted build had moved aside ({aside} -> {out})")
        problem = _output_problem(out, force)
        if problem:
            raise BuildError(problem)


def _absolute(path: Path) -> Path:
    """``path`` made absolute without resolving links: the staging folder and the lock sit in the
    parent folder, and ``.`` or ``x/..`` have no usable parent or name as given."""
    return Path(os.path.abspath(path))


@contextmanager
def _exclusive_build(out: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out`` for the whole build, or refuse at once.

    A second build into the same folder would delete this one's staging folder and write its
    files into the one this build is filling. Seen without the lock (two demo-size builds, seeds 1
    and 2, started 4 s apart): the first reported success and published a set whose three stream
    graphs failed their sha256 and whose face detector was missing; the second failed with a
    missing-file error. The kernel drops the lock when the process ends however it ends, so a
    killed build never leaves the folder locked; the file is removed when the build is done.
    Because it is removed, a build that opened it just before may lock a file that no longer has
    the name, while a third creates and locks a new one: a lock only counts when the locked file
    is still the one at ``lock_path``, else it is taken again.
    """
    lock_path = out.parent / f".{out.name}.lock"
    while True:
        try:
            handle = open(lock_path, "a")
        except OSError as exc:
            raise BuildError(f"cannot create the engine set folder {out}: {os_error_text(exc)}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BuildError(f"another dfd-export build is writing {out} (it holds {lock_path}); wait for it "
                             "to finish or choose another --out") from None
        if _still_at(handle, lock_path):
            break
        handle.close()  # the build that held it removed it in the meantime: lock the current file
    with handle:
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _still_at(handle: IO, path: Path) -> bool:
    """Whether the open file ``handle`` is the file now at ``path``."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _build_into(out: Path, request: BuildRequest, dino: DinoV2Config, clip: ClipVisionConfig,
                warn: Callable[[str], None]) -> Path:
    """The build itself, in a staging folder that replaces ``out`` only when it is complete."""
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
    except OSError as exc:
        raise BuildError(f"cannot create the engine set folder {out}: {os_error_text(exc)}") from exc
    streams: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        calibration = _calibration_set(request, warn) if request.precision != "fp32" else None
        # closed however the build ends, so that its error starts a line of its own
        with progress_bar(total=len(request.streams), desc="build", unit="stream") as progress:
            for name in request.streams:
                progress.set_description(f"build {name}: load")
                module, source = load_stream_module(name, request, dino, clip)
                progress.set_description(f"build {name}: export ONNX ({parameter_bytes(module) / 1e9:.2f} GB)")
                graph = staging / f"{name}.{request.precision}.onnx"
                fp32_graph = graph if request.precision == "fp32" else staging / ".fp32" / f"{name}.fp32.onnx"
                written = export_stream_onnx(module, fp32_graph, STREAM_SPECS[name].input_size, request.opset)
                del module
                gc.collect()
                precision_details: dict[str, Any] = {}
                if request.precision != "fp32":
                    progress.set_description(f"build {name}: {request.precision} graph")
                    written, precision_details = _precision_graph(fp32_graph, graph, request.precision, calibration,
                                                                  name, request.calib_method)
                    shutil.rmtree(fp32_graph.parent)
                progress.set_description(f"build {name}: hash")
                files = [FileEntry.of(staging, p, "onnx" if p == graph else "onnx-data") for p in written]
                if request.backend == "tensorrt":
                    progress.set_description(f"build {name}: TensorRT engine")
                    files += _compile_tensorrt(staging, graph, STREAM_SPECS[name].input_size, request)
                streams[name] = {
                    "input_size": STREAM_SPECS[name].input_size,
                    "precision": request.precision,
                    "backend": request.backend,
                    "files": [f.__dict__ for f in files],
                    "source": source,
                    **({"precision_details": precision_details} if precision_details else {}),
                    "architecture": {
                        "dinov2": dino.to_dict(),
                        **({"clip": clip.to_dict()} if STREAM_SPECS[name].uses_clip else {}),
                    },
                }
                progress.update(1)
        _warn_about_shared_checkpoints(streams, warn)
        face_detector = _face_detector_entry(staging, request) if request.face_detector else None
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "random_weights": request.weights_dir is None,
            "tool_versions": _versions(),
            "build": {
                "seconds": round(time.perf_counter() - started, 1),
                "opset": request.opset,
                "seed": request.seed,
                "lora": {"r": request.lora.r, "alpha": request.lora.alpha},
                # absolute, so verify and bench find the checkpoints from any working folder
                "models_dir": str(_absolute(request.models_dir)) if request.models_dir else None,
                "weights_dir": str(_absolute(request.weights_dir)) if request.weights_dir else None,
            },
            "vote": {"weights": {s: DEFAULT_VOTE_WEIGHTS[s] for s in STREAM_NAMES}, **VOTE_RULES},
            "preprocessing": preprocessing_record({s: STREAM_SPECS[s].input_size for s in STREAM_NAMES}),
            **({"calibration": calibration.manifest_entry()} if calibration is not None else {}),
            "streams": streams,
            **({"face_detector": face_detector} if face_detector else {}),
        }
        if request.backend == "tensorrt":
            from .tensorrt_build import manifest_entry

            timing_cache = FileEntry.of(staging, staging / "timing.cache", "timing-cache")
            manifest["tensorrt"] = {**manifest_entry(request.tensorrt), "timing_cache": timing_cache.__dict__}
        write_manifest(staging, manifest)
        flush_to_disk(staging)
        _publish(staging, out, request.force)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.filename:
            raise
        # a write that names no file (ONNX's, on a full disk): say where the build was writing
        raise BuildError(f"{os_error_text(exc)} while writing the engine set's files in {staging.parent} "
                         f"(staged in {staging.name}, now removed)") from exc
    except (MemoryError, RuntimeError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):  # torch's CPU allocator's words
            raise
        raise BuildError(f"out of memory ({exc}); the sizes in the backbone config.json files and --calib-count "
                         f"decide what a build holds: build on a machine with more memory "
                         f"(staged in {staging.name}, now removed)") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "manifest.json"
