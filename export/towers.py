"""Backbone towers as plain modules: DINOv2 from timm, the CLIP vision tower from open_clip.

Both are built at one fixed input size, with the position grid baked in as a parameter, so the
exported graph has static H/W and no ``Resize`` node. timm resamples position embeddings with
anti-aliasing, which transformers does not; we therefore do the reference's interpolation
ourselves (``interpolate_position_grid``) and hand timm the finished table.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.layers import GluMlp, Mlp
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from .configs import ClipVisionConfig, ConfigError, DinoV2Config


def interpolate_position_grid(position_embeddings: torch.Tensor, grid: int) -> torch.Tensor:
    """Resample a ``[1, 1 + g*g, D]`` table to ``grid x grid`` like transformers' Dinov2.

    transformers' ``Dinov2Embeddings.interpolate_pos_encoding``: bicubic, ``align_corners=False``,
    no anti-aliasing, computed in float32, class position untouched; skipped when the grid
    already has the requested size.
    """
    num_positions = position_embeddings.shape[1] - 1
    source = int(round(num_positions**0.5))
    if source * source != num_positions:
        raise ConfigError(f"position table of {num_positions} patches is not a square grid")
    if source == grid:
        return position_embeddings.clone()
    dim = position_embeddings.shape[-1]
    class_pos = position_embeddings[:, :1]
    patch_pos = position_embeddings[:, 1:].reshape(1, source, source, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos.to(torch.float32), size=(grid, grid), mode="bicubic", align_corners=False
    ).to(position_embeddings.dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat((class_pos, patch_pos), dim=1)


def _fixed_width_mlp(mlp_class: type[nn.Module], fc1_width: int, **fixed):
    """timm's Block sizes its MLP as ``int(dim * mlp_ratio)``, which float rounding can miss by
    one (1536 * 16/3 -> 8191); this factory pins the exact width transformers uses."""

    def make(in_features: int, hidden_features: int, **kwargs) -> nn.Module:
        kwargs.pop("norm_layer", None)
        kwargs.update(fixed)
        return mlp_class(in_features=in_features, hidden_features=fc1_width, **kwargs)

    return make


class DinoV2Tower(nn.Module):
    """DINOv2 encoder at one input size; returns the final-layernorm CLS feature
    (transformers' ``pooler_output``)."""

    def __init__(self, config: DinoV2Config, input_size: int) -> None:
        super().__init__()
        if input_size % config.patch_size:
            raise ConfigError(f"input size {input_size} is not a multiple of patch {config.patch_size}")
        self.config = config
        self.input_size = input_size
        self.grid = input_size // config.patch_size
        if config.use_swiglu_ffn:
            # transformers packs gate then value in `weights_in`: silu(first half) * second half,
            # which is timm's GluMlp with gate_last=False (fc1 holds both halves).
            mlp_layer = _fixed_width_mlp(
                GluMlp, 2 * config.mlp_hidden_size, act_layer=nn.SiLU, gate_last=False
            )
        else:
            act = nn.GELU if config.hidden_act == "gelu" else nn.SiLU
            mlp_layer = _fixed_width_mlp(Mlp, config.mlp_hidden_size, act_layer=act)
        self.vit = TimmVisionTransformer(
            img_size=input_size,
            patch_size=config.patch_size,
            in_chans=config.num_channels,
            num_classes=0,
            global_pool="token",
            embed_dim=config.hidden_size,
            depth=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            qkv_bias=config.qkv_bias,
            init_values=1.0,
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
            mlp_layer=mlp_layer,
            dynamic_img_size=False,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels)


class ClipVisionTower(nn.Module):
    """CLIP vision encoder; returns ``post_layernorm(CLS)`` (transformers' ``pooler_output``),
    i.e. before the visual projection."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        if config.intermediate_size * config.num_attention_heads == 0:
            raise ConfigError("CLIP config has a zero size")
        mlp_ratio = config.intermediate_size / config.hidden_size
        if int(config.hidden_size * mlp_ratio) != config.intermediate_size:
            raise ConfigError(
                f"CLIP intermediate_size {config.intermediate_size} is not reachable from "
                f"hidden_size {config.hidden_size} with open_clip's integer MLP width"
            )
        self.config = config
        self.input_size = config.image_size
        act = QuickGELU if config.hidden_act == "quick_gelu" else nn.GELU
        self.vit = OpenClipVisionTransformer(
            image_size=config.image_size,
            patch_size=config.patch_size,
            width=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            mlp_ratio=mlp_ratio,
            output_dim=config.hidden_size,
            pool_type="tok",
            act_layer=act,
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
        )
        # pooler_output is post_layernorm(CLS) before CLIP's visual projection.
        self.vit.proj = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels)
