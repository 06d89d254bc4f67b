"""``benchmarks/preprocess_variants.py`` times kernel versions on a lent GPU; here it runs on the
emulated GPU of tests/host_cuda.py (the kernels' own code compiled for the host), which checks its
variant specs, its loading of kernel folders, and that it reports which variants wrote other bits
than the first. Its timings mean nothing here."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from emulated_torch import TorchOnTheEmulatedGpu, short_of_the_last_fusion_row

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "preprocess_variants.py"
KERNELS = ROOT / "runtime" / "kernels"


@pytest.fixture(scope="module")
def variants():
    spec = importlib.util.spec_from_file_location("preprocess_variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_variant_specs(variants, tmp_path):
    v = variants.parse_variant(f"old={tmp_path}:rows:1")
    assert (v.name, v.directory, v.decomposition, v.pixels_per_task) == ("old", tmp_path, "rows", 1)
    v = variants.parse_variant(f"new={KERNELS}")
    assert (v.decomposition, v.pixels_per_task) == ("pixels", 2)
    for bad, why in [("nodir", "NAME=DIR"), (f"a={tmp_path}:tiles", "decomposition"),
                     (f"a={tmp_path}:pixels:two", "whole number"), (f"a={tmp_path}:pixels:5", "does not divide"),
                     (f"a={tmp_path / 'missing'}", "not a folder")]:
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            variants.parse_variant(bad)
    assert variants.parse_case("32x1080x1440") == (32, 1080, 1440)
    with pytest.raises(argparse.ArgumentTypeError):
        variants.parse_case("32x1080")
    assert variants.parse_cases("1x2x3,4x5x6") == [(1, 2, 3), (4, 5, 6)]


def test_column_grid_follows_the_versions_column_height(variants, tmp_path, monkeypatch):
    """A version with columns of 4 rows launches 182 blocks per image, the runtime's (7 rows) 104;
    load reads the height from the version's own header, and launch_geometry applies it only
    while that version runs."""
    header = (KERNELS / "preprocess.cuh").read_text()
    assert variants.column_blocks_per_image(header) == variants.cuda_kernels.COLUMN_BLOCKS_PER_IMAGE == 104
    short = header.replace("constexpr int kColumnRows = 7;", "constexpr int kColumnRows = 4;")
    assert short != header
    assert variants.column_blocks_per_image(short) == 182
    assert variants.column_blocks_per_image("// a version before the column kernels") == 104
    own = tmp_path / "c4"
    own.mkdir()
    (own / "preprocess.cuh").write_text(short)
    v = variants.parse_variant(f"c4={own}:columns")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(variants.cuda_kernels, "CudaKernels", lambda device: None)  # no GPU: no build
    variants.load(v, work)
    assert v.column_blocks_per_image == 182
    with variants.launch_geometry(v):
        assert variants.cuda_kernels.COLUMN_BLOCKS_PER_IMAGE == 182
    assert variants.cuda_kernels.COLUMN_BLOCKS_PER_IMAGE == 104


def test_variants_may_follow_the_cases(variants, monkeypatch):
    """--cases takes one argument, so a variant after it is not read as a case (argparse would exit
    with a usage error instead of reaching main's torch import)."""
    monkeypatch.setitem(sys.modules, "torch", None)  # main stops at its torch import, after parsing
    with pytest.raises(ImportError):
        variants.main(["--cases", "1x300x400,2x30x40", f"a={KERNELS}:columns"])


def test_duplicate_names_are_refused(variants, capsys):
    with pytest.raises(SystemExit):
        variants.main([f"a={KERNELS}", f"a={KERNELS}:rows"])
    assert "must differ" in capsys.readouterr().err


def test_variants_are_loaded_timed_and_compared(variants, emulated_gpu, tmp_path, monkeypatch):
    """Three variants over the same sources (a folder with only preprocess.cu of its own, one with
    nothing of its own, and the row decomposition): all write the first one's bits, until the
    emulated per-pixel kernel is made to skip the last fusion row, which the report must show."""
    import torch

    shim = TorchOnTheEmulatedGpu(torch, emulated_gpu, monkeypatch)
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(KERNELS / "preprocess.cu", own / "preprocess.cu")
    empty = tmp_path / "empty"
    empty.mkdir()
    chosen = [variants.parse_variant(s) for s in (f"own={own}", f"empty={empty}", f"rows={KERNELS}:rows")]
    work = tmp_path / "work"
    work.mkdir()
    for v in chosen:
        variants.load(v, work)
    assert sorted(p.name for p in (work / "own").iterdir()) == sorted(
        variants.cuda_kernels.KERNEL_SOURCES + variants.cuda_kernels.KERNEL_HEADERS)
    assert variants.cuda_kernels.KERNEL_DIR == KERNELS  # restored after loading

    report = variants.compare(shim, chosen, [(2, 300, 400)], rounds=2, repeat=1, copy_bytes=1 << 16)
    assert report["copy_bandwidth_GBps"] > 0
    assert set(report["cases"]) == {"2x300x400 fp32", "2x300x400 fp16"}
    for case in report["cases"].values():
        assert [case[name]["same_bits_as_own"] for name in ("own", "empty", "rows")] == [True, True, True]
        assert all(len(case[name]["rounds_us"]) == 2 and case[name]["fraction_of_copy_bandwidth"] > 0
                   for name in case)
    json.dumps(report)

    with short_of_the_last_fusion_row(emulated_gpu, "dfd_preprocess_f32", 0.0):
        report = variants.compare(shim, chosen, [(1, 300, 400)], rounds=1, repeat=1, copy_bytes=1 << 16)
    fp32, fp16 = report["cases"]["1x300x400 fp32"], report["cases"]["1x300x400 fp16"]
    assert [fp32[name]["same_bits_as_own"] for name in ("own", "empty", "rows")] == [True, True, False]
    assert all(fp16[name]["same_bits_as_own"] for name in fp16)
    for v in chosen:
        v.kernels.close()
