"""The wheel a user installs (not the editable install the tests run from) carries what the
runtime loads from beside its modules: the CUDA kernel sources that NVRTC compiles at first use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "calibration", "runtime")


def test_wheel_carries_every_kernel_source_and_the_three_packages(tmp_path):
    source = tmp_path / "source"  # built from a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
                            str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert "Package would be ignored" not in built.stderr  # every folder of sources is a declared package
    (wheel,) = tmp_path.glob("dfd_export-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = {f"dfd/runtime/kernels/{p.name}" for p in (REPO / "runtime" / "kernels").iterdir()
               if p.suffix in (".cu", ".cuh")}
    assert kernels and kernels <= names, sorted(kernels - names)
    for package in PACKAGES:
        modules = {f"dfd/{package}/{p.relative_to(REPO / package).as_posix()}"
                   for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
        assert modules <= names, sorted(modules - names)
