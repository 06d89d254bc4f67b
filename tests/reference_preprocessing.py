"""The reference's test-time preprocessing, written for tests straight from REFERENCE.md.

Kept independent of ``dfd.runtime.preprocess`` on purpose: it is what the runtime is checked
against. torch arithmetic mirrors torchvision's ``ToTensor`` + ``Normalize`` as the reference
applies them.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def to_normalised_tensor(rgb: np.ndarray) -> torch.Tensor:
    """torchvision ToTensor (uint8 -> float32 / 255, CHW) then Normalize(mean, std)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32).div(255)
    return (x - MEAN) / STD


def reference_center_crop(rgb: np.ndarray, size: int = 252) -> np.ndarray:
    """The reference's zero-interpolation centre crop (valid only for images >= size)."""
    h, w = rgb.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    crop = rgb[top:top + size, left:left + size]
    assert crop.shape[:2] == (size, size), "the reference raises for images smaller than the crop"
    return crop


def reference_fusion_resize(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    """``cv2.resize(img, (size, size))``: INTER_AREA when taller than size, INTER_CUBIC when shorter."""
    h = rgb.shape[0]
    if h > size:
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    if h < size:
        return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    return rgb


def stream_batch(images: list[np.ndarray], stream: str) -> torch.Tensor:
    """A normalised NCHW batch for ``stream`` ("global"/"face" crop 252, "fusion" resize 224)."""
    if stream == "fusion":
        tensors = [to_normalised_tensor(reference_fusion_resize(im)) for im in images]
    else:
        tensors = [to_normalised_tensor(reference_center_crop(im)) for im in images]
    return torch.stack(tensors)


def reference_face_crop(rgb: np.ndarray, box, margin: float = 1.3, out_size: int = 256) -> np.ndarray:
    """The reference's face crop: square of side max(w,h)*margin around the box centre, int()
    corners, black padding (cv2.copyMakeBorder), INTER_AREA to out_size."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = x1 + w / 2, y1 + h / 2
    side = max(w, h) * margin
    left, top, right, bottom = int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)
    img_h, img_w = rgb.shape[:2]
    pad_l, pad_t = max(0, -left), max(0, -top)
    pad_r, pad_b = max(0, right - img_w), max(0, bottom - img_h)
    padded = cv2.copyMakeBorder(rgb, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    window = padded[top + pad_t:bottom + pad_t, left + pad_l:right + pad_l]
    return cv2.resize(window, (out_size, out_size), interpolation=cv2.INTER_AREA)


def reference_vote(p_global: float, p_face: float, p_fusion: float, weights=(2, 1, 2)) -> float:
    """The reference ensemble: one-decimal strings per stream, np.average, np.round, one decimal."""
    values = [float(f"{float(np.float32(p)):.1f}") for p in (p_global, p_face, p_fusion)]
    mean = np.average(np.array(values)[:, None], axis=0, weights=weights)
    return float(f"{float(np.round(mean, 1)[0]):.1f}")
