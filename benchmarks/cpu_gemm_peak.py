"""Float32 matrix-product throughput of this CPU: the ceiling any fp32 runtime can reach.

Why: the ViT streams spend ~75 % of their time in matrix products, so the best sgemm rate the
machine sustains bounds how fast an fp32 engine set can be, whatever the runtime. The bench
reports ``achieved_gflop_per_s`` per pipeline; this script says how close to the ceiling that is.
It times PyTorch (``torch.mm``, oneDNN/MKL) and ONNX Runtime (a one-node ``MatMul`` graph, MLAS) on
a large square product and on the ViT-S layer shapes at 252 pixels (325 tokens).

    .venv/bin/python benchmarks/cpu_gemm_peak.py [--out benchmarks/results/cpu-gemm-peak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from dfd.export.bench.environment import capture_environment
from dfd.runtime.backends import onnxruntime_session_options

# (M, K, N): a large square product, then ViT-S at 252 px (T = 18*18 + 1 tokens, D = 384): QKV,
# MLP up, MLP down, attention output projection.
SHAPES = {
    "square_2048": (2048, 2048, 2048),
    "vits_qkv": (325, 384, 1152),
    "vits_mlp_up": (325, 384, 1536),
    "vits_mlp_down": (325, 1536, 384),
    "vits_projection": (325, 384, 384),
}
REPEATS = 30


def _median_seconds(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _onnxruntime_matmul(k: int, n: int, weight: np.ndarray) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), onnxruntime_session_options(),
                                providers=["CPUExecutionProvider"])


def measure() -> dict:
    rng = np.random.default_rng(0)
    rows = {}
    for name, (m, k, n) in SHAPES.items():
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flop = 2.0 * m * k * n
        repeats = 5 if name == "square_2048" else REPEATS
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        session = _onnxruntime_matmul(k, n, b)
        with torch.no_grad():
            torch_s = _median_seconds(lambda: torch.mm(ta, tb), repeats)
        ort_s = _median_seconds(lambda: session.run(None, {"x": a}), repeats)
        rows[name] = {"m": m, "k": k, "n": n, "torch_gflop_per_s": round(flop / torch_s / 1e9, 1),
                      "onnxruntime_gflop_per_s": round(flop / ort_s / 1e9, 1)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu-gemm-peak.json"))
    args = parser.parse_args()
    rows = measure()
    warnings: list[str] = []
    result = {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": capture_environment(warnings),  # the same record `dfd-export bench` writes
        "torch_threads": torch.get_num_threads(),
        "warnings": warnings,
        "shapes": rows,
    }
    result["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name:16s} torch {row['torch_gflop_per_s']:7.1f} GFLOP/s   onnxruntime {row['onnxruntime_gflop_per_s']:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
