"""The three stream networks of the ensemble as plain modules: pixels in, logits ``[N, 2]`` out.

| stream   | class                        | input     |
|----------|------------------------------|-----------|
| global   | ``GlobalTextureStream``      | 252 crop  |
| face     | ``LocalizedFacialStream``    | 252 crop of the face crop |
| fusion   | ``HybridSemanticFusionStream`` | 224 resize |
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import FUSION_HIDDEN, NUM_CLASSES, STREAM_NAMES, STREAM_SPECS, ClipVisionConfig, ConfigError, DinoV2Config
from .towers import ClipVisionTower, DinoV2Tower


class DinoLinearStream(nn.Module):
    """DINOv2 CLS feature -> Linear(D, 2): the reference's ``DINOv2`` backbone wrapper."""

    def __init__(self, dino: DinoV2Config, input_size: int) -> None:
        super().__init__()
        self.dino = DinoV2Tower(dino, input_size)
        self.head = nn.Linear(dino.hidden_size, NUM_CLASSES)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.dino(pixels))


class GlobalTextureStream(DinoLinearStream):
    """Stream 1: whole-image texture cues from the 252x252 centre crop (no resampling)."""

    def __init__(self, dino: DinoV2Config) -> None:
        super().__init__(dino, STREAM_SPECS["global"].input_size)


class LocalizedFacialStream(DinoLinearStream):
    """Stream 2: same architecture, separate weights, fed the 252 crop of the face crop."""

    def __init__(self, dino: DinoV2Config) -> None:
        super().__init__(dino, STREAM_SPECS["face"].input_size)


class HybridSemanticFusionStream(nn.Module):
    """Stream 3: concat[DINOv2 CLS, CLIP pooled] -> Linear -> GELU(erf) -> Dropout -> Linear."""

    def __init__(self, dino: DinoV2Config, clip: ClipVisionConfig) -> None:
        super().__init__()
        input_size = STREAM_SPECS["fusion"].input_size
        if clip.image_size != input_size:
            raise ConfigError(
                f"the fusion stream feeds CLIP {input_size}x{input_size} images; the CLIP config "
                f"says image_size {clip.image_size} (transformers' CLIP would reject that input)"
            )
        self.dino = DinoV2Tower(dino, input_size)
        self.clip = ClipVisionTower(clip)
        self.head = nn.Sequential(
            nn.Linear(dino.hidden_size + clip.hidden_size, FUSION_HIDDEN),
            nn.GELU(),
            nn.Dropout(p=0.2),
            nn.Linear(FUSION_HIDDEN, NUM_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = torch.cat((self.dino(pixels), self.clip(pixels)), dim=-1)
        return self.head(features)


def build_stream(name: str, dino: DinoV2Config, clip: ClipVisionConfig | None) -> nn.Module:
    """A randomly initialised stream module in eval mode, ready for ``load_state_dict``."""
    if name == "global":
        module: nn.Module = GlobalTextureStream(dino)
    elif name == "face":
        module = LocalizedFacialStream(dino)
    elif name == "fusion":
        if clip is None:
            raise ConfigError("the fusion stream needs a CLIP config")
        module = HybridSemanticFusionStream(dino, clip)
    else:
        raise ValueError(f"unknown stream {name!r}; expected one of {', '.join(STREAM_NAMES)}")
    return module.eval()
