"""The explicit configs of the ensemble: what distinguishes each stream, the backbone sizes
(read from the HuggingFace ``config.json`` files the reference keeps) and the LoRA settings.
Plain data without torch, so the lean verbs (bench without --compare torch) can read them.

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
from dfd.runtime.vote import STREAMS

DINOV2_DIRNAME = "dinov2-giant"
CLIP_DIRNAME = "clip-vit-large-patch14"

STREAM_NAMES = STREAMS  # the vote's order
FUSION_HIDDEN = 512  # the fusion head's hidden width: Linear(DINO + CLIP, 512) -> GELU -> Linear(512, 2)
NUM_CLASSES = 2


@dataclass(frozen=True)
class StreamSpec:
    """What distinguishes one stream: its reference checkpoint file and its input size."""

    name: str
    checkpoint: str
    input_size: int
    uses_clip: bool


STREAM_SPECS: dict[str, StreamSpec] = {
    "global": StreamSpec("global", "dinov2_252.pth", 252, uses_clip=False),
    "face": StreamSpec("face", "dinov2_252_crop.pth", 252, uses_clip=False),
    "fusion": StreamSpec("fusion", "dinov2_clip.pth", 224, uses_clip=True),
}


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


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters of the reference training config (r=32, alpha=64): how a checkpoint's
    adapters merge into the backbone (scale alpha / r)."""

    r: int = 32
    alpha: float = 64.0

    @property
    def scale(self) -> float:
        return self.alpha / self.r


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


def _checked(where: str, name: str, kind: type, value: Any) -> Any:
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
        raise ConfigError(f"{where}: {name} must be {wanted}, got {json.dumps(value)}")
    return float(value) if kind is float else value


def _pick(cls: type, data: dict[str, Any], where: str) -> Any:
    """The fields of ``cls`` that ``data`` sets, type-checked, over HuggingFace's defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {json.dumps(data)[:80]}")
    kinds = get_type_hints(cls)  # the fields' classes (the annotations are strings in this module)
    config = cls(**{f.name: _checked(where, f.name, kinds[f.name], data[f.name]) for f in fields(cls) if f.name in data})
    if config.num_channels != 3:
        raise ConfigError(f"{where}: num_channels is {config.num_channels}; the streams take RGB images (3)")
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"{where}: hidden_size {config.hidden_size} is not divisible by "
            f"num_attention_heads {config.num_attention_heads}"
        )
    if config.image_size < config.patch_size:
        raise ConfigError(f"{where}: image_size {config.image_size} is smaller than patch_size {config.patch_size}")
    return config


def dinov2_config_from(data: dict[str, Any], where: str) -> DinoV2Config:
    """The DINOv2 config ``data`` describes (a ``config.json``, or a manifest's record of one),
    checked; ``where`` names it in errors. Keys it leaves out take HuggingFace's defaults."""
    config = _pick(DinoV2Config, data, where)
    if config.hidden_act not in ("gelu", "silu", "swish"):
        raise ConfigError(f"{where}: unsupported hidden_act {config.hidden_act!r}")
    return config


def clip_config_from(data: dict[str, Any], where: str) -> ClipVisionConfig:
    """The CLIP vision config ``data`` describes, checked as ``dinov2_config_from`` checks its own."""
    config = _pick(ClipVisionConfig, data, where)
    if config.hidden_act not in ("quick_gelu", "gelu"):
        raise ConfigError(f"{where}: unsupported hidden_act {config.hidden_act!r}")
    if config.image_size % config.patch_size:
        raise ConfigError(f"{where}: image_size is not a multiple of patch_size")
    return config


def load_dinov2_config(models_dir: Path) -> DinoV2Config:
    """Read ``models_dir/dinov2-giant/config.json`` (the reference's folder name, any size)."""
    path = Path(models_dir) / DINOV2_DIRNAME / "config.json"
    data = _read_json(path)
    model_type = data.get("model_type", "dinov2")
    if model_type != "dinov2":
        raise ConfigError(f"{path}: model_type is {model_type!r}, expected 'dinov2'")
    return dinov2_config_from(data, str(path))


def load_clip_config(models_dir: Path) -> ClipVisionConfig:
    """Read ``models_dir/clip-vit-large-patch14/config.json``: a full CLIPConfig (its
    ``vision_config`` is used, as ``CLIPVisionModel.from_pretrained`` does) or a vision config."""
    path = Path(models_dir) / CLIP_DIRNAME / "config.json"
    data = _read_json(path)
    if "vision_config" in data:  # null: the vision tower's defaults, as transformers takes it
        return clip_config_from(data["vision_config"] or {}, f"{path}: vision_config")
    return clip_config_from(data, str(path))
