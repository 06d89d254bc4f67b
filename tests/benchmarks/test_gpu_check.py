"""``benchmarks/gpu_check.py`` is run by hand on a lent GPU machine; its GPU-free part runs here so
the script cannot rot between loans: NVRTC builds the kernels and the stand-in engines' kernel,
job packing works, and the stand-in reference gives probabilities for fp32 and fp16 inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_compiles_and_packs_without_a_gpu(gpu_check, tmp_path):
    out = tmp_path / "dry.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())["dry_run"]
    assert report["ptx_bytes"]["sm_87"] > 0 and report["ptx_bytes"]["sm_90"] > 0
    assert report["stand_in_ptx_bytes"] > 0 and report["jobs"] == 12
    fp32, fp16 = report["stand_in_expected"]
    assert all(0.0 < p < 1.0 for p in fp32 + fp16)
    # fp16 inputs move the channel means a little, never by more than fp16's resolution near 2
    assert max(abs(a - b) for a, b in zip(fp32, fp16)) < 1e-3
