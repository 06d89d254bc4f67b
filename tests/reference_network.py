"""The reference network, rebuilt for tests with transformers 4.x + peft (test-only dependencies).

This mirrors the reference repository's wrappers (``training/networks/dinov2.py`` and
``dinov2_clip_fusion.py``): a transformers ``Dinov2Model`` wrapped by peft LoRA on
query/key/value/dense, a ``CLIPVisionModel``, and the same heads, under ``backbone.``. It is the
independent reference our stream modules, ONNX graphs and runtime are checked against, and it
writes reference-format checkpoints of any (tiny) size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

LORA_TARGETS = ["query", "key", "value", "dense"]


def tiny_dinov2_config(**overrides) -> Dinov2Config:
    """A DINOv2 small enough for CI; image 98 = a 7x7 grid, so 252/224 inputs interpolate."""
    values = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        patch_size=14,
        image_size=98,
        use_swiglu_ffn=True,
        layer_norm_eps=1e-6,
    )
    values.update(overrides)
    return Dinov2Config(**values)


def tiny_clip_config(**overrides) -> CLIPVisionConfig:
    values = dict(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=224,
        hidden_act="quick_gelu",
    )
    values.update(overrides)
    return CLIPVisionConfig(**values)


def _lora(model: nn.Module, r: int, alpha: float, seed: int) -> nn.Module:
    wrapped = get_peft_model(
        model,
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.15, bias="none", target_modules=LORA_TARGETS),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero; make the adapters matter
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return wrapped


def _randomise_layer_scale(model: nn.Module, seed: int) -> None:
    """HF initialises LayerScale to 1.0 and LayerNorms to identity; random values make the test
    sensitive to a swapped or dropped tensor."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lambda1" in name or "norm" in name or "layrnorm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias") or "embedding" in name or "cls_token" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


class ReferenceDinoV2(nn.Module):
    """The reference's ``DINOv2`` backbone: LoRA-wrapped Dinov2Model + Linear head."""

    def __init__(self, config: Dinov2Config, r: int = 4, alpha: float = 8.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        model = Dinov2Model(config)
        _randomise_layer_scale(model, seed)
        self.vision_model = _lora(model, r, alpha, seed + 1)
        self.last_layer = nn.Linear(config.hidden_size, 2)
        with torch.no_grad():  # spread P(fake) over (0, 1) so rounding and the vote are exercised
            self.last_layer.weight.mul_(40.0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.vision_model(pixel_values=pixel_values).pooler_output)


class ReferenceDinoV2ClipFusion(nn.Module):
    """The reference's ``DINOv2_CLIP_Fusion`` backbone."""

    def __init__(
        self, dino: Dinov2Config, clip: CLIPVisionConfig, r: int = 4, alpha: float = 8.0, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        model = Dinov2Model(dino)
        _randomise_layer_scale(model, seed)
        self.vision_model = _lora(model, r, alpha, seed + 1)
        self.clip_model = CLIPVisionModel(clip)
        _randomise_layer_scale(self.clip_model, seed + 2)
        self.fusion_head = nn.Sequential(
            nn.Linear(dino.hidden_size + clip.hidden_size, 512), nn.GELU(), nn.Dropout(p=0.2), nn.Linear(512, 2)
        )
        with torch.no_grad():
            self.fusion_head[3].weight.mul_(40.0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dino = self.vision_model(pixel_values=pixel_values).pooler_output
        clip = self.clip_model(pixel_values=pixel_values).pooler_output
        return self.fusion_head(torch.cat((dino, clip), dim=-1))


def reference_state_dict(model: nn.Module, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """What the reference's trainer saves: the detector's state dict, backbone under ``prefix``."""
    return {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}


def write_models_dir(root: Path, dino: Dinov2Config, clip: CLIPVisionConfig) -> Path:
    """A models folder laid out like the reference's (``dinov2-giant/``, ``clip-vit-large-patch14/``)."""
    models = Path(root)
    (models / "dinov2-giant").mkdir(parents=True, exist_ok=True)
    (models / "clip-vit-large-patch14").mkdir(parents=True, exist_ok=True)
    dino.to_json_file(models / "dinov2-giant" / "config.json")
    # the real clip-vit-large-patch14 folder holds a full CLIPConfig; nest the vision part the same way
    full = {"model_type": "clip", "vision_config": json.loads(clip.to_json_string())}
    (models / "clip-vit-large-patch14" / "config.json").write_text(json.dumps(full, indent=2))
    return models


@torch.no_grad()
def centre_head(model: nn.Module, size: int) -> None:
    """Shift the last bias so P(fake) straddles 0.5 on ordinary inputs: random tiny networks
    otherwise saturate, and a test whose probabilities are all 0.01 cannot see vote errors."""
    generator = torch.Generator().manual_seed(size)
    logits = model(torch.randn(8, 3, size, size, generator=generator))
    last = model.last_layer if hasattr(model, "last_layer") else model.fusion_head[3]
    shift = (logits[:, 1] - logits[:, 0]).mean() / 2
    last.bias[1] -= shift
    last.bias[0] += shift


class ReferenceEnsemble:
    """Three reference streams with their checkpoints written in the reference file names."""

    def __init__(self, root: Path, dino: Dinov2Config, clip: CLIPVisionConfig, r: int = 4, alpha: float = 8.0) -> None:
        self.models_dir = write_models_dir(Path(root) / "models", dino, clip)
        self.weights_dir = Path(root) / "weights"
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        self.r, self.alpha = r, alpha
        self.streams: dict[str, nn.Module] = {
            "global": ReferenceDinoV2(dino, r, alpha, seed=10).eval(),
            "face": ReferenceDinoV2(dino, r, alpha, seed=20).eval(),
            "fusion": ReferenceDinoV2ClipFusion(dino, clip, r, alpha, seed=30).eval(),
        }
        files = {"global": "dinov2_252.pth", "face": "dinov2_252_crop.pth", "fusion": "dinov2_clip.pth"}
        for name, model in self.streams.items():
            centre_head(model, 224 if name == "fusion" else 252)
            torch.save(reference_state_dict(model), self.weights_dir / files[name])

    @torch.no_grad()
    def p_fake(self, stream: str, pixels: torch.Tensor) -> torch.Tensor:
        """P(fake) exactly as the reference's detector computes it: softmax(logits)[:, 1]."""
        return torch.softmax(self.streams[stream](pixels), dim=1)[:, 1]
