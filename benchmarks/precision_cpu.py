"""fp32 vs fp16 vs INT8 stream graphs on ONNX Runtime CPU at ViT-S size: speed and accuracy.

What it does, in order (every step timed):
  1. writes HF-style configs for a ViT-S-sized detector (DINOv2 384 wide, 12 layers, 6 heads,
     plain MLP like dinov2-small; CLIP 384 wide, 12 layers, 6 heads, patch 14) and builds the
     fp32 engine set with random weights through the real CLI (`dfd-export build`);
  2. builds the calibration set (``--calib-count`` built-in photographs, half degraded);
  3. makes the fp16 graphs (ranges measured on the first ``--fp16-range-images`` calibration
     images) and the INT8 graphs (entropy, on the whole calibration set), plus INT8 ablations
     (max calibration; heads quantized too) for the keep-list decision;
  4. times every graph at batch 1 and 4 in this one process, as ratios to fp32;
  5. measures |delta P| per stream and the discretised-vote agreement against fp32 on the
     built-in photographs, clean and through fixed degradations.
Writes JSON (``--json``) and a Markdown summary (``--markdown``) generated from it.

    .venv/bin/python benchmarks/precision_cpu.py --work /tmp/precision-bench \
        --json benchmarks/precision_cpu.json --markdown benchmarks/precision_cpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from dfd.calibration.calibset import build_calibration_set
from dfd.runtime.backends import onnxruntime_session_options
from dfd.calibration.degrade import fixed_degradation
from dfd.calibration.sources import builtin_photographs
from dfd.export.precision import DEFAULT_KEEP, fake_probabilities, make_fp16_graph, make_int8_graph, quantized_layers
from dfd.runtime.preprocess import preprocess_face, preprocess_fusion, preprocess_global
from dfd.runtime.vote import discretised_vote_batch

STREAMS = ("global", "face", "fusion")
SIZES = {"global": 252, "face": 252, "fusion": 224}
PREPROCESS = {"global": preprocess_global, "face": preprocess_face, "fusion": preprocess_fusion}
DEGRADATIONS = ("jpeg10", "blur3", "noise25", "compound_a")
DINOV2_VIT_S = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                "mlp_ratio": 4.0, "patch_size": 14, "image_size": 518, "layer_norm_eps": 1e-6,
                "hidden_act": "gelu", "use_swiglu_ffn": False}
CLIP_VIT_S = {"model_type": "clip", "vision_config": {
    "hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6,
    "patch_size": 14, "image_size": 224, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}}


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    versions = {}
    for name in ("onnxruntime", "onnx", "numpy", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    flags = fields.get("Flags", "")
    return {"cpu": fields.get("Model name", "").strip(), "cpus": fields.get("CPU(s)", "").strip(),
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_fp16")
                    if f in flags.split()],
            "python": platform.python_version(), "versions": versions}


def build_fp32(work: Path) -> float:
    models = work / "models"
    (models / "dinov2-giant").mkdir(parents=True, exist_ok=True)
    (models / "clip-vit-large-patch14").mkdir(parents=True, exist_ok=True)
    (models / "dinov2-giant" / "config.json").write_text(json.dumps(DINOV2_VIT_S, indent=1))
    (models / "clip-vit-large-patch14" / "config.json").write_text(json.dumps(CLIP_VIT_S, indent=1))
    cli = Path(sys.executable).with_name("dfd-export")
    started = time.perf_counter()
    subprocess.run([str(cli), "build", "--models-dir", str(models), "--out", str(work / "fp32"), "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def evaluation_arrays() -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """{condition: {stream: [N,3,S,S]}} for the built-in photographs, clean and degraded."""
    photos = builtin_photographs()
    conditions = {"clean": [rgb for _, rgb in photos]}
    for name in DEGRADATIONS:
        apply = fixed_degradation(name)
        conditions[name] = [apply(rgb) for _, rgb in photos]
    arrays = {condition: {s: np.stack([PREPROCESS[s](rgb, size=SIZES[s]).tensor for rgb in images])
                          for s in STREAMS}
              for condition, images in conditions.items()}
    return arrays, [name for name, _ in photos]


def session(path: Path, threads: int, optimized: Path | None = None) -> ort.InferenceSession:
    options = onnxruntime_session_options(threads)  # the runtime's (u8 x u8 INT8 kernels on x86 without VNNI)
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_graphs(paths: dict[str, Path], size: int, batch: int, repeats: int, threads: int) -> dict[str, float]:
    """Median seconds per run of each graph on one fixed random batch. The graphs take turns
    run by run, so load from other processes on the machine hits them alike."""
    runners = {name: session(path, threads) for name, path in paths.items()}
    pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for runner in runners.values():
        for _ in range(2):
            runner.run(None, {"pixels": pixels})
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.run(None, {"pixels": pixels})
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def fused_census(path: Path, work: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (after its Q/DQ fusions)."""
    optimized = work / f"{path.stem}.ort-optimized.onnx"
    session(path, 1, optimized)
    counts = Counter(n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node)
    optimized.unlink()
    for data in work.glob(f"{optimized.name}*"):
        data.unlink()
    keys = ("MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
            "MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QGemm", "FusedMatMul", "Cast")
    return {k: counts[k] for k in keys if counts[k]}


def accuracy(graphs: dict[str, dict[str, Path]], arrays: dict, names: list[str]) -> dict:
    """Per precision and condition: per-stream max/mean |dP|, vote agreement, changed images."""
    probabilities = {precision: {condition: {s: fake_probabilities(graphs[precision][s], by_stream[s], batch=4)
                                             for s in STREAMS}
                                 for condition, by_stream in arrays.items()}
                     for precision in graphs}
    for by_condition in probabilities.values():  # every image of every condition together
        by_condition["all"] = {s: np.concatenate([by_condition[c][s] for c in arrays]) for s in STREAMS}
    names = names * len(arrays)
    report = {}
    for precision in graphs:
        if precision == "fp32":
            continue
        report[precision] = {}
        for condition in probabilities["fp32"]:
            reference = probabilities["fp32"][condition]
            candidate = probabilities[precision][condition]
            delta = {s: np.abs(candidate[s].astype(np.float64) - reference[s]) for s in STREAMS}
            votes_ref = discretised_vote_batch(np.stack([reference[s] for s in STREAMS], axis=1))
            votes = discretised_vote_batch(np.stack([candidate[s] for s in STREAMS], axis=1))
            changed = [names[i] for i in np.flatnonzero(votes != votes_ref)]
            report[precision][condition] = {
                "max_abs_dp": {s: float(delta[s].max()) for s in STREAMS},
                "mean_abs_dp": {s: float(delta[s].mean()) for s in STREAMS},
                "vote_agreement": float(np.mean(votes == votes_ref)),
                "vote_changed": changed,
            }
    return report


def markdown(result: dict) -> str:
    lines = ["# fp32 vs fp16 vs INT8 stream graphs on ONNX Runtime CPU (ViT-S size, random weights)", "",
             f"Generated by `{result['command']}`.", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs "
             f"({', '.join(result['machine']['isa'])}); ONNX Runtime "
             f"{result['machine']['versions'].get('onnxruntime')}, {result['threads']} intra-op threads. "
             f"Configuration: {json.dumps(result['configuration'])}.", "",
             "## Speed (median seconds per batch; ratio = fp32 time / this time, > 1 is faster)", "",
             "| stream | batch | fp32 s | fp16 s | fp16 speed-up | int8 s | int8 speed-up |",
             "|---|---|---|---|---|---|---|"]
    for stream, by_batch in result["timing"].items():
        for batch, row in by_batch.items():
            lines.append(f"| {stream} | {batch} | {row['fp32']:.4f} | {row['fp16']:.4f} | "
                         f"{row['fp32'] / row['fp16']:.2f}x | {row['int8']:.4f} | {row['fp32'] / row['int8']:.2f}x |")
    lines += ["", "Ops ONNX Runtime runs for the INT8 graphs after its Q/DQ fusions:", ""]
    for stream, census in result["int8_fused_ops"].items():
        lines.append(f"- {stream}: {json.dumps(census)}")
    lines += ["", "## Accuracy against fp32 (built-in photographs, clean and degraded)", "",
              "| graph | condition | max abs dP (global/face/fusion) | mean abs dP (global/face/fusion) | vote agreement |",
              "|---|---|---|---|---|"]
    for precision, by_condition in result["accuracy"].items():
        for condition, row in by_condition.items():
            maxes = "/".join(f"{row['max_abs_dp'][s]:.1e}" for s in STREAMS)
            means = "/".join(f"{row['mean_abs_dp'][s]:.1e}" for s in STREAMS)
            lines.append(f"| {precision} | {condition} | {maxes} | {means} | {row['vote_agreement']:.1%} |")
    lines += ["", "## Build times (seconds)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in result["seconds"].items()]
    lines += ["", f"INT8 acceptance (`build --precision int8 --calib-count {result['calib_count']}` in "
              f"<= 600 s): fp32 export + calibration set + INT8 graphs = "
              f"{result['int8_build_estimate_seconds']:.1f} s.", "",
              "INT8 linear layers quantized per stream (default keep-list "
              f"{list(DEFAULT_KEEP)}): " + ", ".join(f"{s} {n}" for s, n in result["int8_layers"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument("--calib-count", type=int, default=256)
    parser.add_argument("--fp16-range-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: all cores)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    seconds: dict[str, float] = {"fp32 export (dfd-export build)": build_fp32(args.work)}
    fp32 = {s: args.work / "fp32" / f"{s}.fp32.onnx" for s in STREAMS}

    started = time.perf_counter()
    calib = build_calibration_set(builtin_photographs(), count=args.calib_count, degrade_share=0.5, seed=0,
                                  progress=False)
    seconds["calibration set"] = time.perf_counter() - started

    variants = {"fp16": {}, "int8": {}, "int8-max": {}, "int8-heads-quantized": {}}
    for stream in STREAMS:
        array = calib.arrays[stream]
        out = args.work / "graphs"
        started = time.perf_counter()
        make_fp16_graph(fp32[stream], out / f"{stream}.fp16.onnx", array[:args.fp16_range_images])
        seconds[f"fp16 {stream}"] = time.perf_counter() - started
        started = time.perf_counter()
        make_int8_graph(fp32[stream], out / f"{stream}.int8.onnx", array, method="entropy")
        seconds[f"int8 entropy {stream}"] = time.perf_counter() - started
        started = time.perf_counter()
        make_int8_graph(fp32[stream], out / f"{stream}.int8-max.onnx", array, method="max")
        seconds[f"int8 max {stream}"] = time.perf_counter() - started
        make_int8_graph(fp32[stream], out / f"{stream}.int8-heads-quantized.onnx", array, method="entropy",
                        keep_fp32=())
        for variant in variants:
            variants[variant][stream] = out / f"{stream}.{variant}.onnx"

    timing = {s: {str(b): time_graphs({"fp32": fp32[s], "fp16": variants["fp16"][s], "int8": variants["int8"][s]},
                                      SIZES[s], b, args.repeats, args.threads)
                  for b in (1, 4)}
              for s in STREAMS}
    arrays, names = evaluation_arrays()
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "threads": args.threads or ort.SessionOptions().intra_op_num_threads or "default (all cores)",
        "configuration": {"dinov2": DINOV2_VIT_S, "clip": CLIP_VIT_S["vision_config"], "weights": "random"},
        "calib_count": args.calib_count,
        "calibration_set": calib.manifest_entry(),
        "evaluation_images": names,
        "degradations": list(DEGRADATIONS),
        "seconds": seconds,
        "int8_build_estimate_seconds": seconds["fp32 export (dfd-export build)"] + seconds["calibration set"]
        + sum(seconds[f"int8 entropy {s}"] for s in STREAMS),
        "int8_layers": {s: len(quantized_layers(variants["int8"][s])) for s in STREAMS},
        "int8_fused_ops": {s: fused_census(variants["int8"][s], args.work) for s in STREAMS},
        "timing": timing,
        "accuracy": accuracy({"fp32": fp32, **variants}, arrays, names),
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    args.markdown.write_text(markdown(result))


if __name__ == "__main__":
    main()
