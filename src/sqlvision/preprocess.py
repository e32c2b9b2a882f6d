"""The preprocessing spec: one definition of resize, color mode and normalization, saved with
every model and applied identically in training, export checks and prediction.

Pure NumPy and Pillow, so inference never needs torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sqlvision.errors import SqlvisionError
from sqlvision.imaging import DEFAULT_MAX_PIXELS, decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "crop", "pad")
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """How bytes become the model's input tensor (float32, N x C x H x W).

    ``resize``: ``squash`` stretches to ``height x width``; ``crop`` scales the shorter side and
    center-crops; ``pad`` letterboxes on ``fill``. ``mode`` is ``L`` (1 channel) or ``RGB``.
    """

    height: int
    width: int
    mode: str = "RGB"
    resize: str = "squash"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    max_pixels: int = DEFAULT_MAX_PIXELS
    fill: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise SqlvisionError(f"unsupported color mode {self.mode!r}", "use L or RGB")
        if self.resize not in RESIZE_MODES:
            raise SqlvisionError(f"unknown resize {self.resize!r}", f"use one of {RESIZE_MODES}")
        if self.interpolation not in _INTERPOLATION:
            raise SqlvisionError(f"unknown interpolation {self.interpolation!r}",
                                 f"use one of {sorted(_INTERPOLATION)}")
        if not (4 <= self.height <= 4096 and 4 <= self.width <= 4096):
            raise SqlvisionError(f"bad image size {self.height}x{self.width}", "use 4 to 4096 pixels")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise SqlvisionError(
                f"mean/std need {self.channels} value(s) for mode {self.mode}",
                "give one value per channel, e.g. --mean 0.5 --std 0.5 for grayscale")
        if any(s <= 0 for s in self.std):
            raise SqlvisionError("std values must be positive", "fix --std")

    @property
    def channels(self) -> int:
        """1 for grayscale, 3 for RGB."""
        return 1 if self.mode == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, self.height, self.width)

    # -- serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (stored with the model)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def to_json(self) -> str:
        """The spec as JSON text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Rebuild a spec saved by :meth:`to_dict` (unknown keys are kept in ``extra``)."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Rebuild a spec from :meth:`to_json` text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def for_images(cls, height: int, width: int, mode: str, *, resize: str | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                   ) -> PreprocessSpec:
        """Defaults that suit the data: ImageNet statistics for RGB, 0.5/0.5 for grayscale."""
        channels = 1 if mode == "L" else 3
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        return cls(height, width, mode, resize or ("squash" if max(height, width) <= 64 else "crop"),
                   tuple(mean) if mean else default_mean, tuple(std) if std else default_std)

    # -- applying --------------------------------------------------------------------------------
    def open(self, data: bytes) -> Image.Image:
        """Decode ``data`` safely into this spec's color mode (JPEGs decode at reduced scale when
        much larger than needed: same result, several times faster)."""
        return decode(data, mode=self.mode, max_pixels=self.max_pixels,
                      draft=(self.width * 2, self.height * 2))

    def resized(self, img: Image.Image) -> Image.Image:
        """Resize ``img`` to ``height x width`` the way this spec says."""
        size = (self.width, self.height)
        if img.size == size:
            return img
        method = _INTERPOLATION[self.interpolation]
        if self.resize == "squash":
            return img.resize(size, method)
        if self.resize == "crop":
            scale = max(self.width / img.width, self.height / img.height)
            w, h = max(self.width, round(img.width * scale)), max(self.height, round(img.height * scale))
            img = img.resize((w, h), method)
            left, top = (w - self.width) // 2, (h - self.height) // 2
            return img.crop((left, top, left + self.width, top + self.height))
        scale = min(self.width / img.width, self.height / img.height)
        w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        canvas = Image.new(self.mode, size, self.fill if self.mode == "L" else (self.fill,) * 3)
        canvas.paste(img.resize((w, h), method), ((self.width - w) // 2, (self.height - h) // 2))
        return canvas

    def pixels(self, img: Image.Image) -> np.ndarray:
        """``img`` (already ``height x width``) as uint8 ``C x H x W``."""
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``N x C x H x W`` to the normalized float32 tensor the model takes."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1) * 255.0
        scale = 1.0 / (np.asarray(self.std, np.float32).reshape(1, -1, 1, 1) * 255.0)
        return (batch.astype(np.float32) - mean) * scale

    def __call__(self, data: bytes) -> np.ndarray:
        """Bytes to uint8 ``C x H x W`` (decode, color mode, resize): the per-image step."""
        return self.pixels(self.resized(self.open(data)))
