"""``dfd-export bench``: how fast an engine set scores images, per stage, next to the reference.

Users pick this tool because it is faster than running the reference code, so the benchmark
measures both in one process, on the same images, and reports the ratio:

* **runtime**: ``Detector.detect`` end to end (what a user calls), plus a staged run that calls
  the same runtime functions one stage at a time (decode, face localisation, preprocessing,
  each stream on the backend, vote) so the time can be attributed;
* **torch** (``--compare torch``): the reference-style PyTorch eager pipeline: ``cv2.imread``,
  the reference's OpenCV crop/resize, torchvision-style ``ToTensor``+``Normalize`` in torch,
  the fp32 stream modules one after another under ``torch.no_grad`` with torch's default
  threads, and the reference's text-rounded vote. The weights are the engine set's own: the
  checkpoints its manifest records, or the same seeded random initialisation.

Iterations of the two pipelines alternate (when memory allows both to be resident), so load
from other processes on a shared machine hits both alike and the ratio stays meaningful.
Everything is recorded in one JSON document: percentiles, per-stage times, analytic FLOPs (to
read a result as a fraction of a device's peak), peak memory and the environment.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from dfd.runtime.errors import DfdError

from .configs import ClipVisionConfig, DinoV2Config

SCHEMA = "dfd-bench/1"
STAGES = ("decode", "face_localisation", "preprocess", "stream:global", "stream:face", "stream:fusion", "vote")
PERCENTILES = (50, 90, 99)
FUSION_HIDDEN = 512  # the fusion head's hidden width (export/streams.py)
NUM_CLASSES = 2
# Both pipelines resident need about twice the weights; leave room for activations and the OS.
RESIDENT_MEMORY_FACTOR = 2.3
DEFAULT_IMAGE_COUNT = 8


class BenchError(DfdError, ValueError):
    """The benchmark cannot run as asked; the message says what to change."""


# --------------------------------------------------------------------------------------------
# FLOPs, computed analytically from the architecture recorded in the manifest.

FLOP_FORMULA = (
    "1 multiply-add = 2 FLOPs; only matrix products are counted (LayerNorm, softmax, GELU/SiLU, "
    "residual adds and LayerScale are elementwise and add well under 1%). For a ViT with input "
    "side S, patch p, grid g = S/p, tokens T = g^2 + 1 (CLS), width D, L layers, MLP hidden M, "
    "C input channels: patch embedding 2*g^2*D*C*p^2; per layer: QKV 2*T*D*3D, attention scores "
    "Q.K^T 2*T^2*D, attention-weighted values 2*T^2*D, output projection 2*T*D^2, MLP 4*T*D*M "
    "(fc1 + fc2), or 6*T*D*M for SwiGLU (fc1 holds gate and value, 2M wide). Heads per image: "
    "global/face Linear(D,2) = 4*D; fusion Linear(Dd+Dc,512)+Linear(512,2) = 2*512*(Dd+Dc) + "
    "2*512*2. The fusion stream runs DINOv2 and CLIP at 224. Numbers are per image; a batch "
    "of N costs N times as much."
)


def vit_flops(input_size: int, patch: int, width: int, layers: int, mlp_hidden: int, *,
              swiglu: bool, channels: int = 3) -> dict[str, int]:
    """Matmul FLOPs of one ViT encoder on one image, by part (see ``FLOP_FORMULA``)."""
    grid = input_size // patch
    tokens = grid * grid + 1
    mlp_factor = 6 if swiglu else 4
    per_layer = {
        "qkv": 2 * tokens * width * 3 * width,
        "attention_scores": 2 * tokens * tokens * width,
        "attention_values": 2 * tokens * tokens * width,
        "attention_projection": 2 * tokens * width * width,
        "mlp": mlp_factor * tokens * width * mlp_hidden,
    }
    parts = {"patch_embedding": 2 * grid * grid * width * channels * patch * patch}
    parts.update({name: value * layers for name, value in per_layer.items()})
    parts["total"] = sum(parts.values())
    return parts


def dinov2_flops(config: DinoV2Config, input_size: int) -> dict[str, int]:
    return vit_flops(input_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
                     config.mlp_hidden_size, swiglu=config.use_swiglu_ffn, channels=config.num_channels)


def clip_flops(config: ClipVisionConfig) -> dict[str, int]:
    return vit_flops(config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
                     config.intermediate_size, swiglu=False, channels=config.num_channels)


def stream_flops(name: str, input_size: int, dino: DinoV2Config, clip: ClipVisionConfig | None) -> dict[str, Any]:
    """Per-image FLOPs of one stream: its towers and its head."""
    towers = {"dinov2": dinov2_flops(dino, input_size)}
    if name == "fusion":
        if clip is None:
            raise BenchError("the fusion stream's architecture has no CLIP config in the manifest")
        towers["clip"] = clip_flops(clip)
        head = 2 * FUSION_HIDDEN * (dino.hidden_size + clip.hidden_size) + 2 * FUSION_HIDDEN * NUM_CLASSES
    else:
        head = 2 * dino.hidden_size * NUM_CLASSES
    total = sum(t["total"] for t in towers.values()) + head
    return {"towers": towers, "head": head, "total": total}


def stream_architectures(details: dict[str, Any], name: str) -> tuple[DinoV2Config, ClipVisionConfig | None]:
    """The configs a stream was built from, as its manifest entry records them."""
    arch = details.get("architecture")
    if not isinstance(arch, dict) or "dinov2" not in arch:
        raise BenchError(f"the manifest's {name} stream records no architecture; rebuild the engine set "
                         f"with this dfd-export")
    try:
        dino = DinoV2Config(**arch["dinov2"])
        clip = ClipVisionConfig(**arch["clip"]) if "clip" in arch else None
    except TypeError as exc:
        raise BenchError(f"the manifest's {name} architecture is not understood: {exc}") from exc
    return dino, clip


def ensemble_flops(manifest) -> dict[str, Any]:
    """FLOPs per image of every stream of ``manifest`` and of the whole ensemble."""
    streams = {}
    for name, entry in manifest.streams.items():
        dino, clip = stream_architectures(entry.details, name)
        streams[name] = stream_flops(name, entry.input_size, dino, clip)
    return {
        "per_image": {**{n: s["total"] for n, s in streams.items()},
                      "ensemble": sum(s["total"] for s in streams.values())},
        "streams": streams,
        "formula": FLOP_FORMULA,
        "not_counted": "the face detector (BlazeFace, ~0.1% of a ViT-S stream) and preprocessing",
    }


# --------------------------------------------------------------------------------------------
# Statistics.

def summarise(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50/p90/p99 (linear interpolation, so always ordered), mean, min, max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise BenchError("no timings to summarise")
    out = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    out.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()))
    return out


def _batch_report(batch: int, totals: Sequence[float], stages: Sequence[dict[str, float]],
                  ensemble_flops_per_image: int | None) -> dict[str, Any]:
    latency = summarise(totals)
    names = [s for s in STAGES if any(s in row for row in stages)]
    stage_ms = {name: summarise([row.get(name, 0.0) for row in stages]) for name in names}
    stage_sum = sum(v["p50"] for v in stage_ms.values())
    report = {
        "batch_size": batch,
        "iterations": len(totals),
        "latency_ms": latency,
        "per_image_ms_p50": latency["p50"] / batch,
        "throughput_images_per_s": batch / (latency["p50"] / 1e3),
        "stages_ms": {name: {"p50": v["p50"], "mean": v["mean"]} for name, v in stage_ms.items()},
        "stage_sum_ms_p50": stage_sum,
    }
    if ensemble_flops_per_image:
        report["achieved_gflop_per_s"] = ensemble_flops_per_image * batch / (latency["p50"] / 1e3) / 1e9
    return report


class StageClock:
    """Accumulates wall time per named stage for one run of a pipeline."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Memory.

def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _ru_maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PeakRss:
    """Samples this process's resident set every few milliseconds while active (Linux), so the
    peak of one phase can be told apart from the process-wide ``ru_maxrss``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = _rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)


def _available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _gpu_memory_used_mib() -> list[int] | None:
    out = _command(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    return [int(v) for v in out.split()] if out else None


# --------------------------------------------------------------------------------------------
# Environment.

def _command(argv: Sequence[str], timeout: float = 20.0) -> str | None:
    """A tool's stdout, or None when the tool is absent or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> dict[str, Any]:
    model, cores = platform.processor() or platform.machine(), set()
    try:
        physical_id = "0"
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                model = value
            elif key == "physical id":
                physical_id = value
            elif key == "core id":
                cores.add((physical_id, value))
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": len(cores) or None,
            "usable_cores": usable, "architecture": platform.machine()}


def _gpus() -> list[dict[str, str]]:
    out = _command(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                    "--format=csv,noheader"])
    gpus = []
    for line in (out or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 4:
            gpus.append(dict(zip(("name", "driver", "compute_capability", "memory_total"), fields)))
    return gpus


def jetson_clocks_locked(show_output: str) -> bool | None:
    """Whether ``jetson_clocks --show`` reports every clock pinned (MinFreq == MaxFreq), or None
    when the output lists no clocks."""
    pinned = []
    for line in show_output.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "MinFreq" in fields and "MaxFreq" in fields:
            pinned.append(fields["MinFreq"] == fields["MaxFreq"])
    return all(pinned) if pinned else None


def _jetson(warnings: list[str]) -> dict[str, Any] | None:
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return None
    power_mode = _command(["nvpmodel", "-q"])
    clocks = _command(["jetson_clocks", "--show"])
    locked = jetson_clocks_locked(clocks) if clocks else None
    if locked is not True:
        warnings.append("Jetson clocks are not locked (or their state could not be read): results vary with "
                        "DVFS. Run `sudo nvpmodel -m 0 && sudo jetson_clocks` first.")
    return {"release": release.read_text(encoding="utf-8", errors="replace").strip(),
            "power_mode": power_mode or "unknown (nvpmodel -q failed)",
            "clocks": clocks or "unknown (jetson_clocks --show needs root)", "clocks_locked": locked}


def capture_environment(warnings: list[str]) -> dict[str, Any]:
    """Machine and software this benchmark ran on; appends warnings about unstable settings."""
    import onnxruntime

    cuda = {"torch_build": "torch not installed"}
    if _version("torch") != "not installed":
        import torch

        cuda["torch_build"] = torch.version.cuda or "none (CPU build of torch)"
        cuda["torch_sees_gpu"] = torch.cuda.is_available()
    header = _command(["nvidia-smi"]) or ""
    driver_cuda = [part.split(":")[1].split()[0] for part in header.split("|") if "CUDA Version:" in part]
    cuda["driver"] = driver_cuda[0] if driver_cuda else "no NVIDIA driver (nvidia-smi absent)"
    memory_total = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    gpus = _gpus()
    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu(),
        "memory_total_bytes": memory_total,
        "gpus": gpus or "none (nvidia-smi absent or found no GPU)",
        "jetson": _jetson(warnings),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": {
            "dfd-export": _version("dfd-export"),
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(),
            "tensorrt": _version("tensorrt"),
            "cuda": cuda,
            "torch": _version("torch"),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }


# --------------------------------------------------------------------------------------------
# Images.

def bench_images(images_dir: Path | None, work_dir: Path, count: int = DEFAULT_IMAGE_COUNT) -> tuple[list[Path], str]:
    """The image files to score, and where they came from.

    Without a folder: photographs shipped inside installed packages (scikit-image, matplotlib),
    written losslessly as PNG so every pipeline reads the same pixels from a file.
    """
    from dfd.calibration.sources import builtin_photographs, list_images

    if images_dir is not None:
        paths = list_images(Path(images_dir))
        return paths, f"folder {images_dir}"
    paths = []
    for name, rgb in builtin_photographs():
        if min(rgb.shape[:2]) < 252:  # the reference pipeline cannot take smaller images
            continue
        path = work_dir / (name.replace(":", "_").rsplit(".", 1)[0] + ".png")
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
        if len(paths) == count:
            break
    if not paths:
        raise BenchError("no built-in photographs of at least 252x252; pass --images DIR")
    return paths, "photographs shipped in installed packages (scikit-image, matplotlib), as PNG"


def _batch_of(paths: Sequence[Path], size: int) -> list[Path]:
    """``size`` images, cycling through ``paths`` when there are fewer."""
    return [paths[i % len(paths)] for i in range(size)]


# --------------------------------------------------------------------------------------------
# The runtime pipeline.

class RuntimePipeline:
    """The lean runtime: end to end through ``Detector.detect``, and staged through the same
    runtime functions the Detector calls, to attribute the time."""

    name = "runtime"

    def __init__(self, engine_dir: Path, backend: str) -> None:
        from dfd.runtime.detector import Detector

        self.detector = Detector.open(engine_dir, backend=backend, batch_size=1 << 30)
        self.label = f"{self.detector.backend.description}; preprocessing: {self.detector.preprocessing}"

    def end_to_end(self, paths: Sequence[Path]) -> tuple[float, list]:
        start = time.perf_counter()
        detections = self.detector.detect([str(p) for p in paths])
        elapsed = time.perf_counter() - start
        failed = [d for d in detections if not d.ok]
        if failed:
            raise BenchError(f"the runtime could not score {failed[0].image}: {failed[0].error}")
        return elapsed, detections

    def face_input(self, rgb: np.ndarray) -> np.ndarray:
        """The image the face stream sees: the located face crop, else the original image."""
        from dfd.runtime.preprocess import crop_face, face_is_too_small

        locator = self.detector.face_locator
        found = locator.locate(rgb) if locator is not None else None
        if found is None or face_is_too_small(found.box, rgb.shape[:2]):
            return rgb
        return crop_face(rgb, found.box)

    def staged(self, paths: Sequence[Path]) -> dict[str, float]:
        from dfd.runtime.images import decode_image
        from dfd.runtime.preprocess import preprocess_face, preprocess_fusion, preprocess_global, \
            reencode_like_reference_face_file
        from dfd.runtime.vote import discretised_vote, softmax_fake_probability

        detector = self.detector
        functions = {"global": preprocess_global, "face": preprocess_face, "fusion": preprocess_fusion}
        mean, std = tuple(detector.manifest.preprocessing["mean"]), tuple(detector.manifest.preprocessing["std"])
        sizes = {s: detector.manifest.streams[s].input_size for s in detector.streams}
        clock = StageClock()
        with clock.stage("decode"):
            images = [decode_image(str(p)).rgb for p in paths]
        if detector.face_locator is not None:
            with clock.stage("face_localisation"):
                faces = [self.face_input(rgb) for rgb in images]
        else:
            faces = images
        with clock.stage("preprocess"):
            faces = [reencode_like_reference_face_file(f, p.suffix)[0] for f, p in zip(faces, paths)]
            batches = {
                stream: np.stack([functions[stream](faces[i] if stream == "face" else images[i],
                                                    sizes[stream], mean, std).tensor
                                  for i in range(len(paths))])
                for stream in detector.streams
            }
        probabilities = {}
        for stream in detector.streams:
            with clock.stage(f"stream:{stream}"):
                logits = detector.backend.run(stream, batches[stream])
            probabilities[stream] = logits
        with clock.stage("vote"):
            fake = {s: softmax_fake_probability(v) for s, v in probabilities.items()}
            for row in range(len(paths)):
                discretised_vote({s: float(fake[s][row]) for s in fake}, detector.vote_weights)
        return clock.seconds

    def close(self) -> None:
        self.detector = None
        gc.collect()


# --------------------------------------------------------------------------------------------
# The reference-style PyTorch pipeline.

class TorchReferencePipeline:
    """What running the reference code costs: OpenCV decoding and preprocessing as the reference
    writes it, fp32 eager stream modules one after another, the text-rounded vote. Faces are
    pre-cropped offline in the reference (a separate script), so the face inputs are given."""

    name = "torch"

    def __init__(self, manifest, face_inputs: dict[Path, np.ndarray]) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.manifest = manifest
        self.face_inputs = face_inputs
        self.sizes = {name: entry.input_size for name, entry in manifest.streams.items()}
        prep = manifest.preprocessing
        self.mean = torch.tensor(prep["mean"], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(prep["std"], dtype=torch.float32).view(3, 1, 1)
        self.weights_note: list[str] = []
        self.modules = {name: self._load(name) for name in manifest.streams}
        self.label = (f"torch {torch.__version__} eager fp32 on {self.device} "
                      f"({torch.get_num_threads()} threads), timm/open_clip stream modules")

    def _load(self, name: str):
        from .build import BuildRequest, load_stream_module
        from .checkpoint import LoraSettings
        from .streams import STREAM_SPECS

        entry = self.manifest.streams[name]
        build = self.manifest.raw.get("build", {})
        dino, clip = stream_architectures(entry.details, name)
        recorded = (entry.details.get("source") or {}).get("checkpoint")
        weights_dir = build.get("weights_dir")
        if recorded and not weights_dir:
            raise BenchError(f"the manifest records a checkpoint for the {name} stream but no build.weights_dir")
        if recorded and not (Path(weights_dir) / STREAM_SPECS[name].checkpoint).is_file():
            raise BenchError(f"checkpoint {Path(weights_dir) / STREAM_SPECS[name].checkpoint} recorded by the "
                             f"manifest is not there; the torch comparison needs the same weights")
        lora = build.get("lora", {})
        request = BuildRequest(out_dir=Path("unused"), weights_dir=Path(weights_dir) if recorded else None,
                               seed=int(build.get("seed", 0)),
                               lora=LoraSettings(int(lora.get("r", 32)), float(lora.get("alpha", 64.0))))
        module, source = load_stream_module(name, request, dino, clip)
        if recorded and source["checkpoint"]["sha256"] != recorded["sha256"]:
            raise BenchError(f"{source['checkpoint']['file']} is not the checkpoint the engine set was built "
                             f"from (sha256 differs)")
        self.weights_note.append(f"{name}: " + (f"checkpoint {recorded['file']}" if recorded
                                                else f"random init, seed {request.seed}"))
        return module.to(self.device).eval()

    def _tensor(self, rgb: np.ndarray):
        x = self.torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(self.torch.float32).div(255)
        return (x - self.mean) / self.std

    def run(self, paths: Sequence[Path]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        torch = self.torch
        clock = StageClock()
        with clock.stage("decode"):
            images = []
            for path in paths:
                bgr = cv2.imread(str(path))
                if bgr is None:
                    raise BenchError(f"cv2.imread cannot read {path}")
                images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        with clock.stage("preprocess"):
            batches = {}
            for stream, size in self.sizes.items():
                if stream == "fusion":
                    crops = [reference_fusion_resize(rgb, size) for rgb in images]
                else:
                    sources = [self.face_inputs[p] for p in paths] if stream == "face" else images
                    crops = [reference_center_crop(rgb, size) for rgb in sources]
                batches[stream] = torch.stack([self._tensor(c) for c in crops])
        probabilities = {}
        with torch.no_grad():
            for stream, batch in batches.items():
                with clock.stage(f"stream:{stream}"):
                    logits = self.modules[stream](batch.to(self.device))
                    probabilities[stream] = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        with clock.stage("vote"):
            for row in range(len(paths)):
                reference_vote({s: float(p[row]) for s, p in probabilities.items()}, self.manifest.vote_weights)
        return clock.seconds, probabilities

    def close(self) -> None:
        self.modules = {}
        gc.collect()


def reference_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The reference's centre crop (no resampling); it cannot take a smaller image."""
    h, w = rgb.shape[:2]
    if h < size or w < size:
        raise BenchError(f"an image of {w}x{h} is smaller than the {size} crop, which the reference "
                         f"pipeline cannot take; use images of at least {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top:top + size, left:left + size]


def reference_fusion_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """``cv2.resize`` to size x size, INTER_AREA when taller, INTER_CUBIC when shorter (the
    reference looks at the height only, and leaves an image exactly ``size`` high alone)."""
    h, w = rgb.shape[:2]
    if h == size:
        if w != size:
            raise BenchError(f"an image {size} high but {w} wide breaks the reference's fusion batch")
        return rgb
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_CUBIC)


def reference_vote(probs: dict[str, float], weights: dict[str, float]) -> float:
    """The reference's vote: each P written as ``f"{p:.1f}"``, read back, weighted mean,
    ``np.round(x, 1)``."""
    names = list(probs)
    rounded = [float(f"{probs[n]:.1f}") for n in names]
    return float(f"{float(np.round(np.average(rounded, weights=[weights[n] for n in names]), 1)):.1f}")


# --------------------------------------------------------------------------------------------
# The benchmark.

@dataclass(frozen=True)
class BenchSettings:
    engine_dir: Path
    images_dir: Path | None = None
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    warmup: int = 2
    iterations: int = 20
    compare_torch: bool = False
    backend: str = "auto"
    label: str | None = None


def _check(settings: BenchSettings) -> None:
    if not settings.batch_sizes or any(b < 1 for b in settings.batch_sizes):
        raise BenchError(f"batch sizes must be positive integers, got {settings.batch_sizes}")
    if settings.iterations < 1 or settings.warmup < 0:
        raise BenchError("--iterations must be at least 1 and --warmup at least 0")


def _engine_set_summary(manifest) -> dict[str, Any]:
    entries = manifest.entries()
    return {
        "path": str(manifest.root),
        "random_weights": manifest.random_weights,
        "streams": {name: {"input_size": e.input_size, "precision": e.precision, "backend": e.backend,
                           "bytes": sum(f.bytes for f in e.files)} for name, e in manifest.streams.items()},
        "bytes": sum(f.bytes for e in entries for f in e.files),
        "created_utc": manifest.raw.get("created_utc"),
        "build": manifest.raw.get("build"),
    }


def _sanity(runtime_detections: list, torch_probs: dict[str, np.ndarray], weights: dict[str, float]) -> dict[str, Any]:
    """Do both pipelines compute the same thing? Per-stream max |dP| and the vote agreement."""
    streams = list(torch_probs)
    deltas = {s: float(max(abs(d.streams[s] - float(torch_probs[s][i])) for i, d in enumerate(runtime_detections)))
              for s in streams}
    same = sum(d.score == reference_vote({s: float(torch_probs[s][i]) for s in streams}, weights)
               for i, d in enumerate(runtime_detections))
    return {"images": len(runtime_detections), "max_abs_delta_p": deltas,
            "votes_equal": int(same), "votes_total": len(runtime_detections)}


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] = lambda m: None,
                  tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Measure ``settings`` and return the JSON-ready result document.

    ``progress`` receives phase descriptions, ``tick`` is called once per measured iteration.
    """
    from dfd.runtime.manifest import load_manifest

    _check(settings)
    warnings: list[str] = []
    started = datetime.now(timezone.utc)
    environment = capture_environment(warnings)
    manifest = load_manifest(settings.engine_dir)
    flops = ensemble_flops(manifest)
    per_image_flops = flops["per_image"]["ensemble"]
    if manifest.random_weights:
        warnings.append("the engine set has RANDOM weights: the timings are real, the scores mean nothing")

    with tempfile.TemporaryDirectory(prefix="dfd-bench-") as tmp:
        paths, image_source = bench_images(settings.images_dir, Path(tmp))
        image_sizes = [f"{w}x{h}" for h, w in (cv2.imread(str(p)).shape[:2] for p in paths)]
        memory: dict[str, Any] = {"rss_before_bytes": _rss_bytes()}
        available = _available_memory_bytes()
        engine_bytes = _engine_set_summary(manifest)["bytes"]
        resident = not settings.compare_torch or available is None or \
            engine_bytes * RESIDENT_MEMORY_FACTOR < available
        if not resident:
            warnings.append(f"both pipelines do not fit in memory together ({engine_bytes / 1e9:.1f} GB of weights, "
                            f"{available / 1e9:.1f} GB available): they ran one after the other, not interleaved, "
                            f"so the ratio is more exposed to load changes")

        progress("open engine set")
        with PeakRss() as open_peak:
            runtime = RuntimePipeline(settings.engine_dir, settings.backend)
        memory["runtime_rss_after_open_bytes"] = _rss_bytes()
        memory["runtime_open_peak_rss_bytes"] = open_peak.peak
        face_localisation = {"present": runtime.detector.face_locator is not None}
        if not face_localisation["present"]:
            face_localisation["reason"] = "the engine set has no face detector (or it is switched off)"
        distinct = list(paths)
        runtime_detections = runtime.end_to_end(distinct)[1]
        face_inputs = {}
        if settings.compare_torch:
            from dfd.runtime.images import decode_image

            face_inputs = {p: runtime.face_input(decode_image(str(p)).rgb) for p in distinct}

        samples: dict[str, dict[int, dict[str, list]]] = {"runtime": {}, "torch": {}}
        torch_pipeline = None
        sanity = None

        def measure_runtime(batch: list[Path], record: bool) -> None:
            total, _ = runtime.end_to_end(batch)
            stages = runtime.staged(batch)
            if record:
                row = samples["runtime"].setdefault(len(batch), {"totals": [], "stages": []})
                row["totals"].append(total)
                row["stages"].append(stages)

        def measure_torch(batch: list[Path], record: bool) -> None:
            start = time.perf_counter()
            stages, _ = torch_pipeline.run(batch)
            total = time.perf_counter() - start
            if record:
                row = samples["torch"].setdefault(len(batch), {"totals": [], "stages": []})
                row["totals"].append(total)
                row["stages"].append(stages)

        def open_torch() -> Any:
            progress("build the PyTorch reference pipeline")
            pipeline = TorchReferencePipeline(manifest, face_inputs)
            memory["torch_rss_after_open_bytes"] = _rss_bytes()
            return pipeline

        def loop(measures: list[Callable[[list[Path], bool], None]]) -> None:
            for batch_size in settings.batch_sizes:
                batch = _batch_of(paths, batch_size)
                progress(f"batch {batch_size}: warm-up")
                for _ in range(settings.warmup):
                    for measure in measures:
                        measure(batch, False)
                progress(f"batch {batch_size}: measure")
                for _ in range(settings.iterations):
                    for measure in measures:
                        measure(batch, True)
                        tick()

        if not settings.compare_torch:
            with PeakRss() as peak:
                loop([measure_runtime])
            memory["runtime_peak_rss_bytes"] = peak.peak
        elif resident:
            torch_pipeline = open_torch()
            _, torch_probs = torch_pipeline.run(distinct)
            sanity = _sanity(runtime_detections, torch_probs, manifest.vote_weights)
            with PeakRss() as peak:
                loop([measure_runtime, measure_torch])
            memory["interleaved_peak_rss_bytes"] = peak.peak
        else:
            with PeakRss() as peak:
                loop([measure_runtime])
            memory["runtime_peak_rss_bytes"] = peak.peak
            memory["gpu_memory_used_mib_runtime"] = _gpu_memory_used_mib()
            runtime.close()
            with PeakRss() as peak:
                torch_pipeline = open_torch()
                _, torch_probs = torch_pipeline.run(distinct)
                sanity = _sanity(runtime_detections, torch_probs, manifest.vote_weights)
                loop([measure_torch])
            memory["torch_peak_rss_bytes"] = peak.peak
        memory["gpu_memory_used_mib"] = _gpu_memory_used_mib()
        if torch_pipeline is not None and torch_pipeline.device.type == "cuda":
            memory["torch_gpu_max_allocated_bytes"] = torch_pipeline.torch.cuda.max_memory_allocated()
        memory["process_peak_rss_bytes"] = _ru_maxrss_bytes()

    runs = {}
    labels = {"runtime": runtime.label, "torch": torch_pipeline.label if torch_pipeline else None}
    for name, by_batch in samples.items():
        if by_batch:
            runs[name] = {
                "label": labels[name],
                "batches": {str(b): _batch_report(b, v["totals"], v["stages"], per_image_flops)
                            for b, v in by_batch.items()},
            }
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "label": settings.label,
        "created_utc": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "command": sys.argv,
        "settings": {"batch_sizes": list(settings.batch_sizes), "warmup": settings.warmup,
                     "iterations": settings.iterations, "compare": "torch" if settings.compare_torch else None,
                     "backend": settings.backend, "interleaved": settings.compare_torch and resident},
        "images": {"source": image_source, "count": len(paths), "sizes": image_sizes},
        "engine_set": _engine_set_summary(manifest),
        "face_localisation": face_localisation,
        "flops": flops,
        "environment": environment,
        "memory": memory,
        "runs": runs,
        "warnings": warnings,
    }
    if torch_pipeline is not None:
        result["torch_weights"] = torch_pipeline.weights_note
        result["sanity"] = sanity
        result["speedup"] = {
            str(b): {
                "end_to_end_p50": runs["torch"]["batches"][str(b)]["latency_ms"]["p50"]
                / runs["runtime"]["batches"][str(b)]["latency_ms"]["p50"],
                "streams_p50": _streams_ms(runs["torch"]["batches"][str(b)])
                / _streams_ms(runs["runtime"]["batches"][str(b)]),
                "without_face_localisation_p50": runs["torch"]["batches"][str(b)]["stage_sum_ms_p50"]
                / _stage_sum_without_face(runs["runtime"]["batches"][str(b)]),
            }
            for b in settings.batch_sizes
        }
        torch_pipeline.close()
    environment["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return result


def _streams_ms(batch_report: dict[str, Any]) -> float:
    return sum(v["p50"] for k, v in batch_report["stages_ms"].items() if k.startswith("stream:"))


def _stage_sum_without_face(batch_report: dict[str, Any]) -> float:
    """The runtime's stage sum less face localisation: the reference localises faces offline in a
    separate script, so this is the like-for-like comparison with its pipeline."""
    face = batch_report["stages_ms"].get("face_localisation", {"p50": 0.0})["p50"]
    return batch_report["stage_sum_ms_p50"] - face


# --------------------------------------------------------------------------------------------
# Plot.

STAGE_COLOURS = {"decode": "#8c8c8c", "face_localisation": "#b07aa1", "preprocess": "#f28e2b",
                 "stream:global": "#4e79a7", "stream:face": "#76b7b2", "stream:fusion": "#59a14f",
                 "vote": "#e15759"}


def write_plot(result: dict[str, Any], path: Path) -> Path:
    """Latency per image vs batch size (p50, bars to p90) and stacked per-stage bars per image."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib (an optional extra): pip install matplotlib") from exc
    runs = result["runs"]
    batch_sizes = result["settings"]["batch_sizes"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, run in runs.items():
        p50 = [run["batches"][str(b)]["latency_ms"]["p50"] / b for b in batch_sizes]
        p90 = [run["batches"][str(b)]["latency_ms"]["p90"] / b for b in batch_sizes]
        left.errorbar(batch_sizes, p50, yerr=[np.zeros(len(p50)), np.subtract(p90, p50)], marker="o",
                      capsize=3, label=f"{name} (p50, bar to p90)")
    left.set_xscale("log", base=2)
    left.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    left.set_xlabel("batch size")
    left.set_ylabel("ms per image")
    left.set_title("end-to-end latency per image")
    left.grid(alpha=0.3)
    left.legend()
    width = 0.8 / max(1, len(runs))
    for index, (name, run) in enumerate(runs.items()):
        bottoms = np.zeros(len(batch_sizes))
        positions = np.arange(len(batch_sizes)) + (index - (len(runs) - 1) / 2) * width
        for stage in STAGES:
            values = np.array([run["batches"][str(b)]["stages_ms"].get(stage, {"mean": 0.0})["mean"] / b
                               for b in batch_sizes])
            if not values.any():
                continue
            right.bar(positions, values, width * 0.95, bottom=bottoms, color=STAGE_COLOURS[stage],
                      label=stage if index == 0 or stage not in right.get_legend_handles_labels()[1] else None)
            bottoms += values
        for x, top in zip(positions, bottoms):
            right.text(x, top, name, ha="center", va="bottom", fontsize=7, rotation=90)
    right.set_xticks(np.arange(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    right.set_ylabel("ms per image (mean)")
    right.set_title("per-stage time")
    right.legend(fontsize=7)
    title = result.get("label") or Path(result["engine_set"]["path"]).name
    figure.suptitle(f"{title}: {result['environment']['cpu']['model']}", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------
# The command.

def _parse_batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,4,16, got {value!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise click.BadParameter(f"batch sizes must be positive, got {value!r}")
    return tuple(sorted(set(sizes)))


def _summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'pipeline':8} {'batch':>5} {'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'img/s':>8}"]
    for name, run in result["runs"].items():
        for b, r in run["batches"].items():
            lat = r["latency_ms"]
            lines.append(f"{name:8} {b:>5} {lat['p50']:>10.1f} {lat['p90']:>10.1f} {lat['p99']:>10.1f} "
                         f"{r['throughput_images_per_s']:>8.2f}")
    for b, ratio in result.get("speedup", {}).items():
        lines.append(f"speed-up vs torch at batch {b}: {ratio['end_to_end_p50']:.2f}x end to end, "
                     f"{ratio['without_face_localisation_p50']:.2f}x without face localisation, "
                     f"{ratio['streams_p50']:.2f}x streams only")
    return lines


@click.command("bench")
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of images to score [default: photographs shipped in installed packages].")
@click.option("--batch-sizes", default="1,4,16", show_default=True, callback=_parse_batch_sizes,
              help="Comma-separated batch sizes to measure.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Unrecorded iterations per batch size before measuring.")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Recorded iterations per batch size (and pipeline).")
@click.option("--compare", type=click.Choice(["torch"]), default=None,
              help="Also measure the reference-style PyTorch eager pipeline on the same images.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True, help="Runtime backend to measure.")
@click.option("--label", default=None, help="A name for this run, kept in the JSON and the plot title.")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the full result document here.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG plot here (needs matplotlib).")
def bench(engine_dir, images_dir, batch_sizes, warmup, iterations, compare, backend, label, json_out, plot_out):
    """Measure an engine set: latency percentiles, throughput and per-stage time per batch size,
    optionally next to the reference PyTorch pipeline (--compare torch)."""
    from tqdm import tqdm

    settings = BenchSettings(engine_dir=engine_dir, images_dir=images_dir, batch_sizes=batch_sizes,
                             warmup=warmup, iterations=iterations, compare_torch=compare == "torch",
                             backend=backend, label=label)
    pipelines = 2 if settings.compare_torch else 1
    bar = tqdm(total=len(batch_sizes) * iterations * pipelines, unit="it", file=sys.stderr, desc="bench")
    try:
        result = run_benchmark(settings, progress=bar.set_description, tick=lambda: bar.update(1))
        bar.close()
        if plot_out is not None:
            write_plot(result, plot_out)
    except DfdError as exc:
        bar.close()
        raise click.ClickException(str(exc)) from exc
    for warning in result["warnings"]:
        click.secho(f"WARNING: {warning}", fg="yellow", err=True)
    for line in _summary_lines(result):
        click.echo(line)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        click.echo(f"results written: {json_out}", err=True)
    if plot_out is not None:
        click.echo(f"plot written: {plot_out}", err=True)
