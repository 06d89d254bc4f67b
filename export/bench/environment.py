"""What a benchmark ran on: machine, versions, GPU/Jetson state, and this process's memory."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def process_peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PeakRss:
    """Samples this process's resident set every few milliseconds while active (Linux), so the
    peak of one phase can be told apart from the process-wide ``ru_maxrss``."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes() or 0)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() or 0)


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def gpu_memory_used_mib() -> list[int] | None:
    out = _command(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    return [int(v) for v in out.split()] if out else None


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


def cpu_description() -> dict[str, Any]:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows) and core counts."""
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


# Other work above this share of the usable cores (1-minute load average, before measuring)
# draws a warning: the two pipelines' timings, and so their ratio, then swing from run to run.
BUSY_LOAD_SHARE = 0.5


def busy_machine_warning(load_average: tuple[float, float, float] | None, usable_cores: int) -> str | None:
    """A warning when the machine was already busy before the benchmark started, else None."""
    if load_average is None or load_average[0] <= BUSY_LOAD_SHARE * usable_cores:
        return None
    return (f"the machine was busy before measuring (1-minute load average {load_average[0]:.1f} on "
            f"{usable_cores} usable core(s)): timings and speed-ups swing with that load; rerun on an idle machine")


def source_commit() -> str | None:
    """The git commit of this dfd-export checkout (with "+changes" when its tree differs), or None
    for an installed wheel: what exactly was measured."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    commit = _command(["git", "-C", str(root), "rev-parse", "HEAD"])
    if commit is None:
        return None
    changed = _command(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
    return commit + ("+changes" if changed else "")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS",
                    "CUDA_VISIBLE_DEVICES")


def capture_environment(warnings: list[str], torch_details: bool = False) -> dict[str, Any]:
    """Machine and software this benchmark ran on; appends warnings about unstable settings.
    torch is imported only with ``torch_details`` (``--compare torch``): a runtime-only benchmark
    must not carry torch's ~0.5 GB in the runtime's memory figures, nor fail on a broken torch."""
    import onnxruntime

    cuda: dict[str, Any] = {"torch_build": "torch not installed"}
    if _version("torch") != "not installed":
        cuda["torch_build"] = "not inspected (torch is imported only with --compare torch)"
        if torch_details:
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
    load_average = os.getloadavg() if hasattr(os, "getloadavg") else None
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = busy_machine_warning(load_average, usable_cores)
    if busy:
        warnings.append(busy)
    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "memory_total_bytes": memory_total,
        "gpus": gpus or "none (nvidia-smi absent or found no GPU)",
        "jetson": _jetson(warnings),
        "load_average": load_average,
        "usable_cores": usable_cores,
        "working_directory": os.getcwd(),
        "thread_variables": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
        "versions": {
            "dfd-export": _version("dfd-export"),
            "dfd-export_commit": source_commit(),
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(),
            "tensorrt": _version("tensorrt"),
            "cuda": cuda,
            "torch": _version("torch"),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
    }
