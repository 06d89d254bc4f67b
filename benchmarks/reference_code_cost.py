"""What the reference's own network code costs, against this project's PyTorch stream modules and
ONNX Runtime, on the same checkpoints (CPU, batch 1, one stream at a time).

Why: the bench's torch column (`dfd-export bench --compare torch`) runs this project's
timm/open_clip stream modules with the LoRA merged into the weights, the fastest eager PyTorch
form of the network. The reference repository runs transformers' ``Dinov2Model`` wrapped by peft
with the LoRA unmerged (a rank-32 product beside every query/key/value/dense projection) and
interpolates the position grid on every call. This script measures how much slower that is, so
"faster than the reference" can be read against either baseline. It writes reference-format
checkpoints with the test suite's reference network (transformers<5 + peft, test dependencies),
builds an fp32 engine set from them with ``build_engine_set``, checks that the three forms agree,
then times them interleaved. The face stream has the global stream's architecture and input
size, so it is not timed separately.

    .venv/bin/python benchmarks/reference_code_cost.py [--iterations 20] \\
        [--out benchmarks/results/reference-code-cost.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_network import ReferenceEnsemble  # noqa: E402  (test-only reference code)
from transformers import CLIPVisionConfig, Dinov2Config  # noqa: E402

from dfd.export.bench.environment import capture_environment  # noqa: E402
from dfd.export.build import BuildRequest, build_engine_set, load_stream_module  # noqa: E402
from dfd.export.checkpoint import LoraSettings  # noqa: E402
from dfd.export.configs import load_clip_config, load_dinov2_config  # noqa: E402
from dfd.runtime.backends import onnxruntime_session_options  # noqa: E402

# ViT-S-sized DINOv2 and CLIP, as the bench's ViT-S engine set; LoRA as the reference trains it
VITS_DINO = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                 image_size=518, use_swiglu_ffn=False, layer_norm_eps=1e-6)
VITS_CLIP = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                 patch_size=14, image_size=224, hidden_act="quick_gelu")
# a CI-sized pair with the same structure, so a test can run the script end to end
TINY_DINO = dict(VITS_DINO, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=98)
TINY_CLIP = dict(VITS_CLIP, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2)
SIZES = {"vits": (VITS_DINO, VITS_CLIP), "tiny": (TINY_DINO, TINY_CLIP)}
LORA_R, LORA_ALPHA = 32, 64.0
STREAMS = {"global": 252, "fusion": 224}
PIPELINES = ("reference", "stream_module", "onnxruntime")


def _pipelines(root: Path, dino: dict, clip: dict) -> tuple[dict, dict]:
    """name -> stream -> callable(x: torch.Tensor) -> logits (numpy), all on one set of weights."""
    reference = ReferenceEnsemble(root, Dinov2Config(**dino), CLIPVisionConfig(**clip), LORA_R, LORA_ALPHA)
    request = BuildRequest(out_dir=root / "set", weights_dir=reference.weights_dir,
                           models_dir=reference.models_dir, streams=tuple(STREAMS),
                           lora=LoraSettings(LORA_R, LORA_ALPHA), face_detector=False)
    print("building the fp32 engine set from the reference checkpoints ...", file=sys.stderr)
    started = time.perf_counter()
    build_engine_set(request)
    build_s = time.perf_counter() - started
    dino_config, clip_config = load_dinov2_config(reference.models_dir), load_clip_config(reference.models_dir)
    modules = {s: load_stream_module(s, request, dino_config, clip_config)[0].eval() for s in STREAMS}
    sessions = {s: ort.InferenceSession(str(request.out_dir / f"{s}.fp32.onnx"), onnxruntime_session_options(),
                                        providers=["CPUExecutionProvider"]) for s in STREAMS}
    runs = {
        "reference": {s: (lambda x, s=s: reference.streams[s](x).numpy()) for s in STREAMS},
        "stream_module": {s: (lambda x, s=s: modules[s](x).numpy()) for s in STREAMS},
        "onnxruntime": {s: (lambda x, s=s: sessions[s].run(None, {"pixels": x.numpy()})[0]) for s in STREAMS},
    }
    return runs, {"engine_set_build_s": round(build_s, 1)}


def measure(iterations: int, warmup: int, sizes: str = "vits") -> dict:
    """Agreement and interleaved timings of the three pipelines at ``sizes`` ("vits" or "tiny")."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="dfd-refcost-") as work, torch.no_grad():
        runs, build = _pipelines(Path(work), *SIZES[sizes])
        inputs = {s: torch.randn(1, 3, size, size) for s, size in STREAMS.items()}
        agreement = {}
        for stream, x in inputs.items():
            logits = {name: runs[name][stream](x) for name in PIPELINES}
            agreement[stream] = {name: float(np.abs(logits[name] - logits["reference"]).max())
                                 for name in PIPELINES[1:]}
            if max(agreement[stream].values()) > 1e-3:
                raise SystemExit(f"{stream}: the pipelines disagree ({agreement[stream]}); not timing them")
        times: dict[str, dict[str, list[float]]] = {s: {n: [] for n in PIPELINES} for s in STREAMS}
        for step in range(warmup + iterations):
            order = PIPELINES[step % 3:] + PIPELINES[:step % 3]  # rotate, so no pipeline always runs first
            for stream, x in inputs.items():
                for name in order:
                    start = time.perf_counter()
                    runs[name][stream](x)
                    if step >= warmup:
                        times[stream][name].append((time.perf_counter() - start) * 1000)
    rows = {}
    for stream, by_name in times.items():
        median = {name: float(np.median(v)) for name, v in by_name.items()}
        rows[stream] = {
            "median_ms": {n: round(m, 1) for n, m in median.items()},
            "p90_ms": {n: round(float(np.percentile(v, 90)), 1) for n, v in by_name.items()},
            "reference_over_stream_module": round(median["reference"] / median["stream_module"], 3),
            "reference_over_onnxruntime": round(median["reference"] / median["onnxruntime"], 3),
            "stream_module_over_onnxruntime": round(median["stream_module"] / median["onnxruntime"], 3),
            "max_abs_logit_difference_vs_reference": agreement[stream],
        }
    totals = {n: sum(rows[s]["median_ms"][n] for s in STREAMS) for n in PIPELINES}
    return {"streams": rows, "global_plus_fusion_median_ms": {n: round(t, 1) for n, t in totals.items()},
            "reference_over_stream_module": round(totals["reference"] / totals["stream_module"], 3),
            "reference_over_onnxruntime": round(totals["reference"] / totals["onnxruntime"], 3), **build}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="vits",
                        help="network sizes: vits (the bench's ViT-S set) or tiny (a smoke test)")
    parser.add_argument("--iterations", type=int, default=20, help="timed calls per pipeline and stream")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    warnings: list[str] = []
    dino, clip = SIZES[args.sizes]
    result = {
        "benchmark": "reference_code_cost",
        "command": " ".join(sys.argv if argv is None else ["benchmarks/reference_code_cost.py", *argv]),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {"sizes": args.sizes, "dinov2": dino, "clip": clip, "lora": {"r": LORA_R, "alpha": LORA_ALPHA},
                   "batch": 1, "threads_torch": torch.get_num_threads(), "iterations": args.iterations},
        "pipelines": {
            "reference": "transformers Dinov2Model + peft LoRA (unmerged) + CLIPVisionModel, as the reference repository",
            "stream_module": "this project's timm/open_clip stream modules, LoRA merged (the bench's torch column)",
            "onnxruntime": "this project's fp32 ONNX graph on ONNX Runtime's CPU EP (the runtime's backend)",
        },
        **measure(args.iterations, args.warmup, args.sizes),
    }
    result["environment"] = capture_environment(warnings)
    result["warnings"] = warnings
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
