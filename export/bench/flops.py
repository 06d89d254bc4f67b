"""Per-image FLOPs of the streams, computed analytically from the architecture in the manifest,
to read a measured latency as a fraction of a device's peak."""

from __future__ import annotations

from typing import Any

from dfd.runtime.manifest import Manifest

from ..configs import FUSION_HIDDEN, NUM_CLASSES, ClipVisionConfig, DinoV2Config
from ..recorded_build import read_recorded_build

FLOP_FORMULA = (
    "1 multiply-add = 2 FLOPs; only matrix products are counted (LayerNorm, softmax, GELU/SiLU, "
    "residual adds and LayerScale are elementwise and add well under 1%). For a ViT with input "
    "side S, patch p, grid g = S/p, tokens T = g^2 + 1 (CLS), width D, L layers, MLP hidden M, "
    "C input channels: patch embedding 2*g^2*D*C*p^2; per layer: QKV 2*T*D*3D, attention scores "
    "Q.K^T 2*T^2*D, attention-weighted values 2*T^2*D, output projection 2*T*D^2, MLP 4*T*D*M "
    "(fc1 + fc2), or 6*T*D*M for SwiGLU (fc1 holds gate and value, 2M wide). Heads per image: "
    "global/face Linear(D,2) = 4*D; fusion Linear(Dd+Dc,512)+Linear(512,2) = 2*512*(Dd+Dc) + "
    "2*512*2. The fusion stream runs DINOv2 and CLIP at 224. Numbers are per image; a batch "
    "of N costs N times as much."
)


def vit_flops(input_size: int, patch: int, width: int, layers: int, mlp_hidden: int, *,
              swiglu: bool, channels: int = 3) -> dict[str, int]:
    """Matmul FLOPs of one ViT encoder on one image, by part (see ``FLOP_FORMULA``)."""
    grid = input_size // patch
    tokens = grid * grid + 1
    mlp_factor = 6 if swiglu else 4
    per_layer = {
        "qkv": 2 * tokens * width * 3 * width,
        "attention_scores": 2 * tokens * tokens * width,
        "attention_values": 2 * tokens * tokens * width,
        "attention_projection": 2 * tokens * width * width,
        "mlp": mlp_factor * tokens * width * mlp_hidden,
    }
    parts = {"patch_embedding": 2 * grid * grid * width * channels * patch * patch}
    parts.update({name: value * layers for name, value in per_layer.items()})
    parts["total"] = sum(parts.values())
    return parts


def dinov2_flops(config: DinoV2Config, input_size: int) -> dict[str, int]:
    return vit_flops(input_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
                     config.mlp_hidden_size, swiglu=config.use_swiglu_ffn, channels=config.num_channels)


def clip_flops(config: ClipVisionConfig) -> dict[str, int]:
    return vit_flops(config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
                     config.intermediate_size, swiglu=False, channels=config.num_channels)


def stream_flops(input_size: int, dino: DinoV2Config, clip: ClipVisionConfig | None) -> dict[str, Any]:
    """Per-image FLOPs of one stream: its towers and its head (the fusion head where it has CLIP)."""
    towers = {"dinov2": dinov2_flops(dino, input_size)}
    if clip is not None:
        towers["clip"] = clip_flops(clip)
        head = 2 * FUSION_HIDDEN * (dino.hidden_size + clip.hidden_size) + 2 * FUSION_HIDDEN * NUM_CLASSES
    else:
        head = 2 * dino.hidden_size * NUM_CLASSES
    total = sum(t["total"] for t in towers.values()) + head
    return {"towers": towers, "head": head, "total": total}


def ensemble_flops(manifest: Manifest) -> dict[str, Any]:
    """FLOPs per image of every stream of ``manifest`` and of the whole ensemble."""
    recorded = read_recorded_build(manifest).streams
    streams = {name: stream_flops(entry.input_size, recorded[name].dino, recorded[name].clip)
               for name, entry in manifest.streams.items()}
    return {
        "per_image": {**{n: s["total"] for n, s in streams.items()},
                      "ensemble": sum(s["total"] for s in streams.values())},
        "streams": streams,
        "formula": FLOP_FORMULA,
        "not_counted": "the face detector (BlazeFace, ~0.1% of a ViT-S stream) and preprocessing",
    }
