"""``benchmarks/reference_code_cost.py`` at CI sizes: the reference network code, this project's
stream modules and ONNX Runtime are built from one set of reference checkpoints and agree, and
every number the README quotes is in the JSON (the timings themselves are not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_code_cost.py"


def test_tiny_run_agrees_and_writes_every_field(tmp_path):
    spec = importlib.util.spec_from_file_location("reference_code_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cost.json"
    module.main(["--sizes", "tiny", "--iterations", "2", "--warmup", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["config"]["sizes"] == "tiny" and report["config"]["dinov2"]["hidden_size"] == 32
    assert set(report["streams"]) == {"global", "fusion"}
    for row in report["streams"].values():
        assert set(row["median_ms"]) == {"reference", "stream_module", "onnxruntime"}
        assert all(v > 0 for v in row["median_ms"].values())
        # the three forms compute the same network: unmerged LoRA vs merged vs ONNX
        assert max(row["max_abs_logit_difference_vs_reference"].values()) <= 1e-4
        assert row["reference_over_onnxruntime"] > 0
    assert report["reference_over_onnxruntime"] > 0 and report["environment"]["cpu"]["logical_cores"] >= 1
