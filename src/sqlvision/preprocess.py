"""The preprocessing spec: one definition of resize, color mode and normalization, saved with
every model and applied identically in training, export checks and prediction.

Pure NumPy and Pillow, so inference never needs torch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sqlvision.deps import require
from sqlvision.errors import SqlvisionError
from sqlvision.imaging import DECODE_RULE, DECODE_RULES, DEFAULT_MAX_PIXELS, decode_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "crop", "pad")
RESAMPLERS = ("opencv", "pillow")
DEFAULT_RESAMPLER = "opencv"
_INTERPOLATION = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST}
_CV2_INTERPOLATION = {"bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC", "nearest": "INTER_NEAREST"}


@functools.cache
def opencv() -> Any:
    """OpenCV, imported once; its own thread pool off (callers decode on one thread per core)."""
    cv2 = require("cv2", "train")
    cv2.setNumThreads(1)
    return cv2


@dataclass(frozen=True)
class PreprocessSpec:
    """How bytes become the model's input tensor (float32, N x C x H x W).

    ``resize``: ``squash`` stretches to ``height x width``; ``crop`` scales the shorter side to
    the size divided by ``crop_pct`` (1: the size itself; timm's ImageNet evaluation uses 0.875,
    224 of 256) and center-crops; ``pad`` letterboxes on ``fill``. ``mode`` is ``L`` (1 channel)
    or ``RGB``.

    ``resampler``: ``opencv`` (the default) shrinks by the largest whole factor with a box
    filter (Pillow's ``reduce``), then interpolates the remaining factor (under 2) with OpenCV:
    the same result quality as an antialiased resize, about five times faster. ``pillow`` is
    Pillow's antialiased resize, as torchvision's PIL transforms do; specs saved before this
    field existed mean ``pillow`` and keep it.

    ``decode_rule``: how stored pixels become the image (:mod:`sqlvision.imaging.decode`):
    2 applies the EXIF orientation and scales 16-bit samples; specs saved before it existed
    mean 1 (pixels as stored) and keep it.
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
    resampler: str = DEFAULT_RESAMPLER
    crop_pct: float = 1.0
    decode_rule: int = DECODE_RULE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise SqlvisionError(f"unsupported color mode {self.mode!r}", "use L or RGB")
        if self.resize not in RESIZE_MODES:
            raise SqlvisionError(f"unknown resize {self.resize!r}", f"use one of {RESIZE_MODES}")
        if self.resampler not in RESAMPLERS:
            raise SqlvisionError(f"unknown resampler {self.resampler!r}", f"use one of {RESAMPLERS}")
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
        if self.decode_rule not in DECODE_RULES:
            raise SqlvisionError(f"unknown decode rule {self.decode_rule}",
                                 f"use one of {DECODE_RULES} (or upgrade sqlvision)")
        if not 0.25 <= self.crop_pct <= 1:
            raise SqlvisionError(f"bad crop_pct {self.crop_pct}", "use a fraction in [0.25, 1]")

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
        """A JSON-ready dict (stored with the model); keys this version does not know, kept in
        ``extra``, are written back beside the others, not nested."""
        out = asdict(self)
        extra = out.pop("extra")
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return {**extra, **out}

    def to_json(self) -> str:
        """The spec as JSON text."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """Rebuild a spec saved by :meth:`to_dict` (unknown keys are kept in ``extra``)."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        data = {"resampler": "pillow", "decode_rule": 1, **data}  # saved before these existed
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
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   resampler: str | None = None) -> PreprocessSpec:
        """Defaults that suit the data: ImageNet statistics for RGB, 0.5/0.5 for grayscale."""
        channels = 1 if mode == "L" else 3
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        return cls(height, width, mode, resize or ("squash" if max(height, width) <= 64 else "crop"),
                   tuple(mean) if mean else default_mean, tuple(std) if std else default_std,
                   resampler=resampler or DEFAULT_RESAMPLER)

    # -- applying --------------------------------------------------------------------------------
    def decode(self, data: bytes) -> np.ndarray:
        """Decode ``data`` safely into this spec's color mode, as uint8 ``H x W [x C]`` (JPEGs
        decode at reduced scale when much larger than needed: same result, several times faster)."""
        return decode_array(data, self.mode, self.max_pixels, draft=(self.width * 2, self.height * 2),
                            rule=self.decode_rule)

    def _scaled_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the image is resized to before a center crop or a pad."""
        if self.resize == "squash":
            return self.width, self.height
        if self.resize == "crop":
            scale = max(self.width / width, self.height / height) / self.crop_pct
            return max(self.width, round(width * scale)), max(self.height, round(height * scale))
        scale = min(self.width / width, self.height / height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _scaled(self, arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if arr.shape[1::-1] == size:
            return arr
        if self.resampler == "pillow":
            return np.asarray(Image.fromarray(arr).resize(size, _INTERPOLATION[self.interpolation]))
        factor = min(arr.shape[1] // size[0], arr.shape[0] // size[1])
        if factor >= 2 and self.interpolation != "nearest":
            arr = np.asarray(Image.fromarray(arr).reduce(factor))
            if arr.shape[1::-1] == size:
                return arr
        cv2 = opencv()
        return cv2.resize(arr, size, interpolation=getattr(cv2, _CV2_INTERPOLATION[self.interpolation]))

    def resized(self, arr: np.ndarray) -> np.ndarray:
        """A decoded ``H x W [x C]`` array resized to ``height x width`` the way this spec says."""
        w, h = self._scaled_size(arr.shape[1], arr.shape[0])
        arr = self._scaled(arr, (w, h))
        if self.resize == "crop":
            left, top = (w - self.width) // 2, (h - self.height) // 2
            return arr[top:top + self.height, left:left + self.width]
        if self.resize == "pad" and (w, h) != (self.width, self.height):
            canvas = np.full((self.height, self.width, *arr.shape[2:]), self.fill, np.uint8)
            left, top = (self.width - w) // 2, (self.height - h) // 2
            canvas[top:top + h, left:left + w] = arr
            return canvas
        return arr

    def pixels(self, arr: np.ndarray) -> np.ndarray:
        """A resized ``H x W [x C]`` array as a contiguous uint8 ``C x H x W``."""
        chw = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(chw, dtype=np.uint8)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 ``N x C x H x W`` to the normalized float32 tensor the model takes.

        Two passes into one output buffer, no temporaries: this runs on every image predicted.
        """
        scale = 1.0 / (np.asarray(self.std, np.float32).reshape(1, -1, 1, 1) * 255.0)
        shift = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1) * 255.0 * scale
        out = np.multiply(batch, scale, dtype=np.float32)
        out -= shift
        return out

    def __call__(self, data: bytes) -> np.ndarray:
        """Bytes to uint8 ``C x H x W`` (decode, color mode, resize): the per-image step, the same
        in training, evaluation and prediction."""
        return self.pixels(self.resized(self.decode(data)))
