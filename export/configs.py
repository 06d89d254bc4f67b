"""Backbone sizes, read from the HuggingFace ``config.json`` files the reference keeps.

The reference builds its backbones with ``AutoModel.from_pretrained("models/dinov2-giant")`` and
``CLIPVisionModel.from_pretrained("models/clip-vit-large-patch14")``, so the architecture of a
checkpoint is whatever those two configs describe. We read the same files (any size works, the
tests use tiny ones) and fall back to HuggingFace's own defaults for keys a config leaves out,
exactly as ``transformers`` would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from dfd.runtime.errors import DfdError

DINOV2_DIRNAME = "dinov2-giant"
CLIP_DIRNAME = "clip-vit-large-patch14"


class ConfigError(DfdError, ValueError):
    """A backbone config.json is missing, unreadable or describes something we cannot build."""


@dataclass(frozen=True)
class DinoV2Config:
    """The fields of a HuggingFace ``Dinov2Config`` that change the computation."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 14
    image_size: int = 224
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    use_swiglu_ffn: bool = False
    qkv_bias: bool = True
    num_channels: int = 3

    @property
    def mlp_hidden_size(self) -> int:
        """Width of the FFN's hidden layer, computed the way transformers' Dinov2 does."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @property
    def pretrained_grid(self) -> int:
        """Side of the square position grid the checkpoint's position embeddings hold."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClipVisionConfig:
    """The fields of a HuggingFace ``CLIPVisionConfig`` that change the computation."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    patch_size: int = 32
    image_size: int = 224
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    num_channels: int = 3

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The paper's backbones (facebook/dinov2-giant and openai/clip-vit-large-patch14), used when a
# user builds without a models folder (demo engine sets with random weights).
PAPER_DINOV2 = DinoV2Config(
    hidden_size=1536,
    num_hidden_layers=40,
    num_attention_heads=24,
    mlp_ratio=4.0,
    patch_size=14,
    image_size=518,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    use_swiglu_ffn=True,
)
PAPER_CLIP = ClipVisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    layer_norm_eps=1e-5,
    hidden_act="quick_gelu",
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"backbone config not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read backbone config {path}: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"cannot read backbone config {path}: its JSON is nested too deeply") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"backbone config {path} is not a JSON object")
    return data


def _checked(source: Path, name: str, kind: type, value: Any) -> Any:
    """``value`` if it is a valid ``kind`` for field ``name``: every number in these configs is a
    size, a ratio or an epsilon, so it must be positive (and finite); a bool must be a JSON bool."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    else:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and value > 0)
    if not ok:
        wanted = {bool: "true or false", str: "a string", int: "a positive integer"}.get(kind, "a positive number")
        raise ConfigError(f"{source}: {name} must be {wanted}, got {json.dumps(value)}")
    return float(value) if kind is float else value


def _pick(cls: type, data: dict[str, Any], source: Path) -> Any:
    """The fields of ``cls`` that ``data`` sets, type-checked, over HuggingFace's defaults."""
    kinds = get_type_hints(cls)  # the fields' classes (the annotations are strings in this module)
    config = cls(**{f.name: _checked(source, f.name, kinds[f.name], data[f.name]) for f in fields(cls) if f.name in data})
    if config.num_channels != 3:
        raise ConfigError(f"{source}: num_channels is {config.num_channels}; the streams take RGB images (3)")
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"{source}: hidden_size {config.hidden_size} is not divisible by "
            f"num_attention_heads {config.num_attention_heads}"
        )
    if config.image_size < config.patch_size:
        raise ConfigError(f"{source}: image_size {config.image_size} is smaller than patch_size {config.patch_size}")
    return config


def load_dinov2_config(models_dir: Path) -> DinoV2Config:
    """Read ``models_dir/dinov2-giant/config.json`` (the reference's folder name, any size)."""
    path = Path(models_dir) / DINOV2_DIRNAME / "config.json"
    data = _read_json(path)
    model_type = data.get("model_type", "dinov2")
    if model_type != "dinov2":
        raise ConfigError(f"{path}: model_type is {model_type!r}, expected 'dinov2'")
    config = _pick(DinoV2Config, data, path)
    if config.hidden_act not in ("gelu", "silu", "swish"):
        raise ConfigError(f"{path}: unsupported hidden_act {config.hidden_act!r}")
    return config


def load_clip_config(models_dir: Path) -> ClipVisionConfig:
    """Read ``models_dir/clip-vit-large-patch14/config.json``: a full CLIPConfig (its
    ``vision_config`` is used, as ``CLIPVisionModel.from_pretrained`` does) or a vision config."""
    path = Path(models_dir) / CLIP_DIRNAME / "config.json"
    data = _read_json(path)
    if "vision_config" in data:
        data = data["vision_config"] or {}
    config = _pick(ClipVisionConfig, data, path)
    if config.hidden_act not in ("quick_gelu", "gelu"):
        raise ConfigError(f"{path}: unsupported hidden_act {config.hidden_act!r}")
    if config.image_size % config.patch_size:
        raise ConfigError(f"{path}: image_size is not a multiple of patch_size")
    return config
