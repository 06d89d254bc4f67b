"""The wheel a user installs (not the editable install the tests run from) carries what the
runtime loads from beside its modules: the CUDA kernel sources that NVRTC compiles at first use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "calibration", "runtime")


def test_wheel_carries_every_kernel_source_the_c_shims_and_the_three_packages(tmp_path):
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
    assert "dfd/export/capi_shims.c" in names  # what `dfd-export capi` compiles
    for package in PACKAGES:
        modules = {f"dfd/{package}/{p.relative_to(REPO / package).as_posix()}"
                   for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
        assert modules <= names, sorted(modules - names)


def _make_dry_run(folder: Path) -> list[str]:
    """The commands ``make test`` would run in ``folder`` (a copy of the Makefile), not running them;
    as a make of its own, not a sub-make of the ``make test`` running this suite."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=folder, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_make_test_remakes_a_venv_that_no_longer_works_and_keeps_one_that_does(tmp_path):
    """A .venv whose interpreter was removed (a Python upgrade) kept its install stamp, so every
    ``make test`` ran the missing interpreter and failed until ``make clean``."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    stamp = tmp_path / ".venv" / ".dfd-installed"

    def installed() -> None:  # the stamp newer than the Makefile and pyproject.toml
        stamp.touch()
        later = (tmp_path / "Makefile").stat().st_mtime + 10
        os.utime(stamp, (later, later))

    python.symlink_to(tmp_path / "gone" / "python3.11")
    installed()
    commands = _make_dry_run(tmp_path)
    assert any(line.endswith("|| python3 -m venv --clear .venv") for line in commands), commands
    assert any("pip install" in line for line in commands) and commands[-1] == ".venv/bin/python -m pytest tests"

    python.unlink()
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # a working interpreter with pip
    python.chmod(0o755)
    installed()
    assert _make_dry_run(tmp_path) == [".venv/bin/python -m pytest tests"]
