"""Shared fixtures: tiny reference-format checkpoints and real photographs.

Checkpoints are written by the reference network code (transformers 4.x + peft, see
``reference_network.py``) at tiny sizes, so every parity test compares against an independent
implementation, not against our own code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from host_gpu import load_kernel_host
from reference_network import ReferenceEnsemble, tiny_clip_config, tiny_dinov2_config

LORA_R, LORA_ALPHA = 4, 8.0
# Face boxes (x1, y1, x2, y2) of the built-in photographs that show one, as the reference's
# RetinaFace step would give them: the source of reference-style face crops
FACE_BOXES = {"astronaut": (120, 30, 320, 260), "chelsea": (120, 40, 300, 260)}


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB image file (the format from the suffix), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_grey_images(folder: Path, count: int = 16, side: int = 64) -> list[Path]:
    """``count`` grey PNGs 00.png, 01.png, ... of distinct levels, making ``folder``: 16 by
    default, where detect starts drawing its progress."""
    return [write_rgb(folder / f"{index:02d}.png", np.full((side, side, 3), index * 8, np.uint8))
            for index in range(count)]


class HeldPreparations:
    """A stand-in for ``Detector._prepare`` whose images, except those ``passes(*args)`` lets
    through, wait for ``release``, set ``release_after_s`` after the first of them starts.
    ``running`` counts those in progress: 0 once a call has waited for its preparations."""

    def __init__(self, prepare: Callable, passes: Callable[..., bool], release_after_s: float = 0.3) -> None:
        self._prepare, self._passes, self._release_after_s = prepare, passes, release_after_s
        self._lock = threading.Lock()
        self.running = 0
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, *args):
        if self._passes(*args):
            return self._prepare(*args)
        with self._lock:
            self.running += 1
        try:
            if not self.started.is_set():
                self.started.set()
                threading.Timer(self._release_after_s, self.release.set).start()
            self.release.wait(30)
            return self._prepare(*args)
        finally:
            with self._lock:
                self.running -= 1


def save_state_dict(state: dict, path: Path) -> Path:
    """Save a state dict as the path's suffix says: ``.safetensors``, ``.legacy`` (torch's old
    pickle format, as older reference checkpoints are) or anything else as ``torch.save``'s ZIP."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=path.suffix != ".legacy")
    return path


def write_rebuilt_manifest(folder: Path, data: dict) -> None:
    """Write ``data`` as a build would have, its content digest recomputed: a test that stands in
    for another build (other engines, fewer streams, moved checkpoints) reaches the checks after
    the digest instead of being refused as an edited manifest."""
    import json

    from dfd.runtime.manifest import CONTENT_HASH_KEY, MANIFEST_NAME, manifest_digest

    (Path(folder) / MANIFEST_NAME).write_text(json.dumps({**data, CONTENT_HASH_KEY: manifest_digest(data)}))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 160x164 crop of a real photograph (face and texture), odd-free but not block-aligned."""
    from dfd.calibration.sources import builtin_photographs

    return dict(builtin_photographs())["skimage:astronaut.png"][40:200, 180:344].copy()


@pytest.fixture(scope="session")
def reference_ensemble(tmp_path_factory) -> ReferenceEnsemble:
    """Three tiny reference streams and their checkpoints in the reference file names."""
    return ReferenceEnsemble(tmp_path_factory.mktemp("reference"), tiny_dinov2_config(), tiny_clip_config(),
                             r=LORA_R, alpha=LORA_ALPHA)


@pytest.fixture(scope="session")
def photographs() -> dict[str, np.ndarray]:
    """Real photographs that ship inside scikit-image (RGB uint8, various sizes)."""
    return {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}


@pytest.fixture(scope="session")
def degraded_cameraman() -> np.ndarray:
    """The face benchmark's compound_blur_noise_jpeg (blur sigma 2, noise sigma 20, JPEG q15) on
    scikit-image's cameraman: a face BlazeFace's plain pass misses and the cascade's first step
    (bilateral filter) finds."""
    camera = cv2.cvtColor(skdata.camera(), cv2.COLOR_GRAY2RGB)
    blurred = cv2.GaussianBlur(camera, (0, 0), 2.0)
    noisy = np.clip(np.round(blurred + np.random.default_rng(0).normal(0, 20.0, blurred.shape)), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 15])
    assert ok
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="session")
def kernel_cache(tmp_path_factory) -> Path:
    """One NVRTC kernel cache ($DFD_KERNEL_CACHE) for the whole session. The suite needs the same
    four builds (PTX and CUBIN for sm_87 and sm_90) in many tests; the first test to ask compiles
    each with NVRTC and the others read it, as a second run on a machine does. Each build took 10
    to 20 s, and compiling afresh per module cost over two minutes of the suite. Tests of the cache
    itself (damaged or unwritable files) work on a copy in their own folder."""
    return tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture(scope="session")
def kernel_host(tmp_path_factory):
    """The CUDA kernels' own code compiled for this CPU (tests/host_gpu.py)."""
    return load_kernel_host(tmp_path_factory.mktemp("kernel_host"))


@pytest.fixture
def make_unlistable(monkeypatch):
    """A function that makes listing a folder fail as a folder the user may not read does: chmod
    000 where that binds, and where it does not (root, as in containers) the same PermissionError
    raised by ``os.scandir`` for that folder alone. Permissions are restored afterwards."""
    locked: list[Path] = []
    real_scandir = os.scandir

    def scandir(path=".", *args):
        # shutil.rmtree lists by file descriptor (an int), never one of these folders
        if not isinstance(path, int) and any(Path(os.fsdecode(path)) == folder for folder in locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *args)

    def make(folder: Path) -> None:
        locked.append(folder)
        if os.geteuid() != 0:
            folder.chmod(0)
        else:
            monkeypatch.setattr(os, "scandir", scandir)

    yield make
    for folder in locked:
        folder.chmod(0o755)


@pytest.fixture
def opencv_without_ipp(monkeypatch):
    """x86 OpenCV's IPP bicubic differs from OpenCV's own code by one grey level on a few percent
    of pixels (see test_cuda_kernels.py); with it off the kernels and OpenCV agree to the last bit.
    OpenCV keeps the switch per thread, so Detectors opened without a ``prepare_workers`` prepare
    in the calling thread here, where it is off."""
    import dfd.runtime.detector

    monkeypatch.setattr(dfd.runtime.detector, "default_prepare_workers", lambda: 1)
    optimized = cv2.useOptimized()
    cv2.setUseOptimized(False)
    yield
    cv2.setUseOptimized(optimized)


@pytest.fixture(scope="session")
def tiny_engine_set(reference_ensemble, tmp_path_factory):
    """The tiny reference checkpoints built into an fp32 ONNX engine set."""
    from dfd.export.build import BuildRequest, build_engine_set
    from dfd.export.checkpoint import LoraSettings

    out = tmp_path_factory.mktemp("engine-set") / "fp32"
    build_engine_set(BuildRequest(out_dir=out, weights_dir=reference_ensemble.weights_dir,
                                  models_dir=reference_ensemble.models_dir, lora=LoraSettings(LORA_R, LORA_ALPHA)))
    return out


@pytest.fixture(scope="session")
def tiny_random_engine_set(reference_ensemble, tmp_path_factory):
    """The tiny architecture built with seeded random weights (no checkpoints, no face detector)."""
    from dfd.export.build import BuildRequest, build_engine_set

    out = tmp_path_factory.mktemp("engine-set") / "random"
    build_engine_set(BuildRequest(out_dir=out, models_dir=reference_ensemble.models_dir, seed=7, face_detector=False))
    return out
