"""FLOPs per stream (:mod:`dfd.export.bench.flops`), against a hand computation and torch's own counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dfd.export.bench.flops import stream_flops
from dfd.export.configs import ClipVisionConfig, DinoV2Config
from dfd.export.streams import build_stream


TINY_DINO = DinoV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4.0,
                         patch_size=14, image_size=98, use_swiglu_ffn=True)
TINY_CLIP = ClipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                             patch_size=14, image_size=224)


def test_flops_match_a_hand_computation():
    # DINOv2 at 252: grid 18, T = 325, D = 32, SwiGLU hidden M = (int(128*2/3)+7)//8*8 = 88
    t, d, m = 325, 32, 88
    dino = 2 * 324 * d * 3 * 14 * 14 + 2 * (2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d + 6 * t * d * m)
    assert stream_flops(252, TINY_DINO, None)["total"] == dino + 2 * d * 2
    # fusion at 224: DINOv2 grid 16 (T = 257) + CLIP (D = 24, M = 48, plain MLP) + the 512-wide head
    t, c, cm = 257, 24, 48
    dino224 = 2 * 256 * d * 3 * 196 + 2 * (2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d + 6 * t * d * m)
    clip = 2 * 256 * c * 3 * 196 + 2 * (2 * t * c * 3 * c + 4 * t * t * c + 2 * t * c * c + 4 * t * c * cm)
    head = 2 * 512 * (d + c) + 2 * 512 * 2
    assert stream_flops(224, TINY_DINO, TINY_CLIP)["total"] == dino224 + clip + head


@pytest.mark.parametrize("swiglu", [True, False])
def test_flops_match_torch_flop_counter(swiglu):
    """torch's own counter (matmuls and convolutions) on the real DINOv2 stream module. timm's
    fused attention kernel is switched off because the counter does not see inside it on CPU;
    the explicit q @ k^T and attn @ v matmuls compute the same thing."""
    config = DinoV2Config(**{**TINY_DINO.to_dict(), "use_swiglu_ffn": swiglu})
    module = build_stream("global", config, None)
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):
            layer.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, 3, 252, 252))
    assert stream_flops(252, config, None)["total"] == counter.get_total_flops()
