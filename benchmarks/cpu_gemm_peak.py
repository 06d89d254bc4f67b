"""Float32 matrix-product throughput of this CPU: the ceiling any fp32 runtime can reach.

Why: the ViT streams spend ~75 % of their time in matrix products, so the best sgemm rate the
machine sustains bounds how fast an fp32 engine set can be, whatever the runtime. The bench
reports ``achieved_gflop_per_s`` per pipeline; this script says how close to the ceiling that is.
It times PyTorch (``torch.mm``, oneDNN/MKL) and ONNX Runtime (a one-node ``MatMul`` graph, MLAS) on
a large square product and on the ViT-S layer shapes at 252 pixels (325 tokens).

It also times the attention core (softmax(QK^T/sqrt(d))V over 6 heads) at those shapes three ways:
as the exported stream graphs hold it (MatMul, Mul, Softmax, MatMul and the head transposes), as
ONNX Runtime's fused contrib ``MultiHeadAttention``, and as PyTorch's
``scaled_dot_product_attention``. That answers whether an ONNX Runtime-only graph with fused
attention would make the CPU runtime faster.

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
ATTENTION_TOKENS, ATTENTION_DIM, ATTENTION_HEADS = 325, 384, 6
ATTENTION_BATCHES = (1, 4)


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


def _attention_model(batch: int, fused: bool) -> ort.InferenceSession:
    """q, k, v [batch, tokens, dim] -> attention output, decomposed (as exported) or fused."""
    tokens, dim, heads = ATTENTION_TOKENS, ATTENTION_DIM, ATTENTION_HEADS
    if fused:
        nodes = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft",
                                  num_heads=heads)]
        initializers = []
    else:
        nodes = [helper.make_node("Reshape", [x, "heads"], [f"{x}4"]) for x in "qkv"] + [
            helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
            helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
            helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
            helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
            helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
            helper.make_node("MatMul", ["weights", "vt"], ["heads_out"]),
            helper.make_node("Transpose", ["heads_out"], ["merged"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["merged", "tokens"], ["out"])]
        initializers = [helper.make_tensor("heads", TensorProto.INT64, [4], [0, 0, heads, dim // heads]),
                        helper.make_tensor("tokens", TensorProto.INT64, [3], [0, 0, dim]),
                        helper.make_tensor("scale", TensorProto.FLOAT, [], [(dim // heads) ** -0.5])]
    shape = [batch, tokens, dim]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)
                                                   for x in "qkv"],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), onnxruntime_session_options(),
                                providers=["CPUExecutionProvider"])


def measure_attention() -> dict:
    """Milliseconds per attention core, per batch size, the three ways (outputs checked equal).
    The three are timed in turn within each repeat, so a host that changes speed during the run
    (these machines do, several-fold) moves all three alike and their ratios stay meaningful."""
    rng = np.random.default_rng(1)
    rows = {}
    heads, head_dim = ATTENTION_HEADS, ATTENTION_DIM // ATTENTION_HEADS
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for batch in ATTENTION_BATCHES:
        feeds = {x: rng.standard_normal((batch, ATTENTION_TOKENS, ATTENTION_DIM), dtype=np.float32) for x in "qkv"}
        decomposed, fused = _attention_model(batch, fused=False), _attention_model(batch, fused=True)
        q, k, v = (torch.from_numpy(feeds[x]).view(batch, ATTENTION_TOKENS, heads, head_dim).transpose(1, 2)
                   for x in "qkv")
        runs = {"onnxruntime_decomposed": lambda: decomposed.run(None, feeds)[0],
                "onnxruntime_multiheadattention": lambda: fused.run(None, feeds)[0],
                "torch_sdpa": lambda: sdpa(q, k, v).transpose(1, 2).reshape(batch, ATTENTION_TOKENS, ATTENTION_DIM)}
        with torch.no_grad():
            reference = runs["onnxruntime_decomposed"]()
            for name, run in runs.items():
                out = np.asarray(run())
                if not np.allclose(out, reference, atol=1e-5):
                    raise AssertionError(f"{name} differs from the decomposed attention by "
                                         f"{np.abs(out - reference).max():.2e}")
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(3 * REPEATS):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        medians = {name: float(np.median(values)) for name, values in times.items()}
        rows[f"batch_{batch}"] = {
            **{f"{name}_ms": round(1e3 * seconds, 3) for name, seconds in medians.items()},
            **{f"{name}_speedup_vs_decomposed": round(medians["onnxruntime_decomposed"] / medians[name], 3)
               for name in runs if name != "onnxruntime_decomposed"}}
    return rows


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
        "attention_core": {"tokens": ATTENTION_TOKENS, "dim": ATTENTION_DIM, "heads": ATTENTION_HEADS,
                           **measure_attention()},
    }
    result["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name:16s} torch {row['torch_gflop_per_s']:7.1f} GFLOP/s   onnxruntime {row['onnxruntime_gflop_per_s']:7.1f} GFLOP/s")
    for batch in ATTENTION_BATCHES:
        row = result["attention_core"][f"batch_{batch}"]
        print(f"attention batch {batch}: onnxruntime decomposed {row['onnxruntime_decomposed_ms']:.2f} ms, "
              f"MultiHeadAttention {row['onnxruntime_multiheadattention_ms']:.2f} ms "
              f"({row['onnxruntime_multiheadattention_speedup_vs_decomposed']:.2f}x), "
              f"torch sdpa {row['torch_sdpa_ms']:.2f} ms ({row['torch_sdpa_speedup_vs_decomposed']:.2f}x)")


if __name__ == "__main__":
    main()
