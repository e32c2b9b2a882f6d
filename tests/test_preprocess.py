"""The preprocessing spec: serialization, resize modes, color modes, normalization."""

from __future__ import annotations

import numpy as np
import pytest

import sqlvision as sv
from sqlvision.preprocess import PreprocessSpec
from tests.conftest import image_bytes


def test_json_roundtrip_keeps_every_field() -> None:
    spec = PreprocessSpec(32, 48, "L", "pad", (0.3,), (0.2,), "bicubic", 1000, 7)
    assert PreprocessSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_resize_modes_give_the_input_shape(resize: str) -> None:
    spec = PreprocessSpec.for_images(24, 40, "RGB", resize=resize)
    out = spec(image_bytes("JPEG", (100, 30)))
    assert out.shape == (3, 24, 40) and out.dtype == np.uint8


def test_color_mode_follows_the_spec() -> None:
    gray = PreprocessSpec.for_images(28, 28, "L")
    assert gray(image_bytes("PNG", (28, 28), "RGB")).shape == (1, 28, 28)
    rgb = PreprocessSpec.for_images(28, 28, "RGB")
    assert rgb(image_bytes("PNG", (28, 28), "L")).shape == (3, 28, 28)
    assert gray.mean == (0.5,) and rgb.mean == (0.485, 0.456, 0.406)


def test_normalize() -> None:
    spec = PreprocessSpec(4, 4, "L", mean=(0.5,), std=(0.25,))
    pixels = np.arange(0, 256, 16, dtype=np.uint8).reshape(1, 1, 4, 4)
    out = spec.normalize(pixels)
    expected = (pixels[0, 0] / 255 - 0.5) / 0.25
    assert out.dtype == np.float32 and np.allclose(out[0, 0], expected, atol=1e-5)


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(sv.SqlvisionError, match="mean/std"):
        PreprocessSpec(28, 28, "RGB", mean=(0.5,), std=(0.5,))
    with pytest.raises(sv.SqlvisionError, match="color mode"):
        PreprocessSpec(28, 28, "CMYK")
    with pytest.raises(sv.SqlvisionError, match="positive"):
        PreprocessSpec(28, 28, "L", mean=(0.5,), std=(0.0,))
