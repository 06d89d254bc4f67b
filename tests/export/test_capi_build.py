"""``dfd-export capi`` (:mod:`dfd.export.capi_build`): the header and library it writes, what it
refuses to write over, and a library whose embedded Python could not load the runtime. What the
library does once loaded is tested in tests/runtime/test_capi.py."""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner

from host_gpu import required_compiler


@pytest.fixture(autouse=True, scope="module")
def system_c_compiler() -> str:
    """cc builds the library; without it every test here fails, none skips."""
    return required_compiler("cc")


def test_capi_verb_writes_header_and_library(tmp_path):
    from dfd.export.capi_build import capi

    result = CliRunner().invoke(capi, ["--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    header = (tmp_path / "out" / "dfd_runtime.h").read_text()
    for declaration in ("dfd_status dfd_open_abi(const char *engine_dir, const char *backend, dfd_detector **out, "
                        "uint32_t abi);", "#define dfd_open(engine_dir, backend, out) dfd_open_abi(",
                        "dfd_status dfd_detect(dfd_detector *d, const dfd_image *images, int32_t count, dfd_result *results);",
                        "dfd_status dfd_detect_file(dfd_detector *d, const char *path, dfd_result *result);",
                        "void dfd_close(dfd_detector *d);", "const char *dfd_last_error(void);",
                        "const char *dfd_version(void);", "DFD_E_INTERNAL = 5", "DFD_PIXEL_BGR8 = 1",
                        "#define dfd_options_init(options) dfd_options_init_sized((options), sizeof(dfd_options))",
                        "dfd_status dfd_open_with_abi(const char *engine_dir, const dfd_options *options, "
                        "dfd_detector **out, uint32_t abi);",
                        "dfd_status dfd_describe(dfd_detector *d, char *buffer, size_t size);"):
        assert declaration in header
    library = tmp_path / "out" / "libdfd_runtime.so"
    assert library.stat().st_size > 0
    # a rebuild replaces its own files by a rename: a service with the old library mapped keeps its file
    with open(library, "rb") as mapped_by_a_service:
        again = CliRunner().invoke(capi, ["--out", str(tmp_path / "out")])
        assert again.exit_code == 0, again.output
        assert os.fstat(mapped_by_a_service.fileno()).st_ino != library.stat().st_ino
        assert os.fstat(mapped_by_a_service.fileno()).st_nlink == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dfd_runtime.h", "libdfd_runtime.so"]
    # files of those names that this verb did not write are refused, and kept
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "dfd_runtime.h").write_text("/* my own header */\n")
    kept = CliRunner().invoke(capi, ["--out", str(foreign)])
    assert kept.exit_code == 1 and "was not written by dfd-export capi" in kept.output
    assert (foreign / "dfd_runtime.h").read_text() == "/* my own header */\n"
    assert not (foreign / "libdfd_runtime.so").exists()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    refused = CliRunner().invoke(capi, ["--out", str(blocker / "out")])
    assert refused.exit_code == 1 and f"error: Not a directory: {blocker / 'out'}" in refused.output
    # the header compiles as C++ too
    check = subprocess.run([required_compiler("c++"), "-fsyntax-only", "-I", ".", "-x", "c++", "-"],
                           input='#include "dfd_runtime.h"\n', text=True, capture_output=True, cwd=tmp_path / "out")
    assert check.returncode == 0, check.stderr


def test_capi_refuses_a_library_whose_embedded_python_could_not_load_the_runtime(tmp_path, monkeypatch):
    """Built from a Python whose dfd lives where the isolated embedded interpreter does not look,
    the library was written without a word and every dfd_open failed with ModuleNotFoundError;
    the user's site-packages (pip install --user) is now one of the places it looks."""
    import site

    from dfd.export.capi_build import CapiBuildError, build_capi, embedded_site_dirs

    installed = embedded_site_dirs()
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path / "empty")])
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)
    with pytest.raises(CapiBuildError, match=r"would not load dfd.runtime from \[.*empty'\]: ModuleNotFoundError: "
                                             r"No module named 'dfd'\. Install dfd-export"):
        build_capi(tmp_path / "out")
    assert not (tmp_path / "out").exists()

    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)  # dfd and its dependencies installed with --user
    monkeypatch.setattr(site, "getusersitepackages", lambda: installed[0])
    assert embedded_site_dirs() == [str(tmp_path / "empty"), installed[0]]
    header, library = build_capi(tmp_path / "out")
    assert library.exists() and repr(installed[0]) in library.read_bytes().decode("latin-1")


def test_capi_failed_build_keeps_the_earlier_files(tmp_path, monkeypatch):
    import cffi

    from dfd.export.capi_build import CapiBuildError, build_capi

    (tmp_path / "dfd_runtime.h").write_text("/* dfd_runtime.h - C ABI of the dfd-export lean runtime, older */\n")
    (tmp_path / "libdfd_runtime.so").write_bytes(b"older library exporting dfd_last_error")

    def fails(*args, **kwargs):
        raise RuntimeError("linker says no")

    monkeypatch.setattr(cffi.FFI, "compile", fails)
    with pytest.raises(CapiBuildError, match="linker says no"):
        build_capi(tmp_path)
    assert (tmp_path / "dfd_runtime.h").read_text().endswith("older */\n")
    assert (tmp_path / "libdfd_runtime.so").read_bytes() == b"older library exporting dfd_last_error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dfd_runtime.h", "libdfd_runtime.so"]


def test_the_ownership_check_finds_its_marker_across_read_chunks(tmp_path):
    """capi decides whether a file in --out is its own by a marker, read a chunk at a time (a
    file in the way may be huge): the marker is found wherever a chunk boundary cuts it."""
    from dfd.export.capi_build import _file_contains

    marker = b"dfd_last_error"
    path = tmp_path / "libdfd_runtime.so"
    for offset in range(0, 12):
        path.write_bytes(b"x" * offset + marker + b"y" * 5)
        for chunk_size in range(1, len(marker) + 3):
            assert _file_contains(path, marker, chunk_size), (offset, chunk_size)
        path.write_bytes(b"x" * offset + marker[:-1] + b"y" + marker[1:])
        assert not any(_file_contains(path, marker, size) for size in range(1, len(marker) + 3)), offset
