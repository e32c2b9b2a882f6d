"""Training-time augmentation on preprocessed uint8 ``C x H x W`` images.

Every random choice comes from a per-image NumPy generator seeded from (seed, epoch, position),
so a run is reproducible however many decode threads share the work. Presets:

- ``none``: nothing.
- ``light``: random crop after reflection padding (1/8 of the side) and horizontal flips;
  the classic recipe for small images such as Fashion-MNIST.
- ``standard``: random resized crop (scale 0.6-1), flips, shear and zoom (the Keras
  ``ImageDataGenerator`` recipe), brightness/contrast jitter for color images.
- ``trivialaugment`` / ``randaugment``: torchvision's TrivialAugmentWide / RandAugment, plus flips.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

PRESETS = ("none", "light", "standard", "trivialaugment", "randaugment")
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return img[:, :, ::-1] if rng.random() < 0.5 else img


def _pad_crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w = img.shape
    pad = max(1, min(h, w) // 8)
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    return padded[:, top:top + h, left:left + w]


def _resized_crop_affine(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, h, w = img.shape
    scale = rng.uniform(0.6, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = min(w, round(w * np.sqrt(scale * ratio)))
    ch = min(h, round(h * np.sqrt(scale / ratio)))
    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    shear = np.tan(np.radians(rng.uniform(-10, 10)))
    zoom = rng.uniform(0.9, 1.1)
    # Affine map from output pixels back into the crop: zoom about the center, then shear.
    sx, sy = cw / w / zoom, ch / h / zoom
    cx, cy = x0 + cw / 2, y0 + ch / 2
    a, b = sx, shear * sy
    c = cx - a * w / 2 - b * h / 2
    e = sy
    f = cy - e * h / 2
    inverse = np.array([[a, b, c], [0.0, e, f]])
    return _warp(img, inverse)


def _warp(img: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """``C x H x W`` uint8 resampled (bilinear, black outside) where output pixel ``(x, y)``
    reads input ``inverse @ (x, y, 1)``; OpenCV, several times faster than Pillow here."""
    from sqlvision.preprocess import opencv

    cv2 = opencv()
    _, h, w = img.shape
    hwc = np.ascontiguousarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
    out = cv2.warpAffine(hwc, inverse, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness then contrast about the mean: one linear map of the 256 gray levels, applied
    through a lookup table (no float copy of the image)."""
    brightness = rng.uniform(0.8, 1.2)
    contrast = rng.uniform(0.8, 1.2)
    mean = brightness * float(img.mean())
    levels = np.arange(256, dtype=np.float64) * brightness
    lut = np.clip((levels - mean) * contrast + mean, 0, 255).astype(np.uint8)
    return lut[img]


class _TorchvisionPolicy:
    """torchvision's AutoAugment-family policies, seeded per image (under a lock, because they
    draw from torch's global generator)."""

    def __init__(self, name: str) -> None:
        from torchvision.transforms import v2

        self.policy: Any = v2.TrivialAugmentWide() if name == "trivialaugment" else v2.RandAugment()
        self.lock = threading.Lock()

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(img))
        with self.lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**31)))
            out = self.policy(tensor)
        return _flip(out.numpy(), rng)


def build(preset: str, channels: int) -> Augment | None:
    """The augmentation function for ``preset`` (``None`` for ``none``)."""
    if preset == "none":
        return None
    if preset == "light":
        return lambda img, rng: _flip(_pad_crop(img, rng), rng)
    if preset == "standard":
        def standard(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            out = _flip(_resized_crop_affine(img, rng), rng)
            return _jitter(out, rng) if channels == 3 else out
        return standard
    if preset in ("trivialaugment", "randaugment"):
        return _TorchvisionPolicy(preset)
    raise ValueError(f"unknown augmentation preset {preset!r}")
