"""The preprocessing spec: serialization, resize modes, color modes, normalization."""

from __future__ import annotations

from pathlib import Path

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


def test_specs_saved_without_a_resampler_keep_pillow() -> None:
    old = PreprocessSpec(32, 32, "RGB").to_dict()
    del old["resampler"]
    assert PreprocessSpec.from_dict(old).resampler == "pillow"
    assert PreprocessSpec.from_json(PreprocessSpec(32, 32).to_json()).resampler == "opencv"
    with pytest.raises(sv.SqlvisionError, match="resampler"):
        PreprocessSpec(32, 32, resampler="magick")


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
@pytest.mark.parametrize("size", [224, 64])
def test_opencv_resampler_matches_pillow_closely(resize: str, size: int) -> None:
    """The fast path (whole-factor box reduction + OpenCV) and Pillow's antialiased resize give
    the same picture: a real 400x533 photo, shrunk by under 2x and by over 6x."""
    photo = next((Path(sv.__file__).parent / "sample" / "clothing").rglob("*.jpg")).read_bytes()
    fast = PreprocessSpec(size, size, "RGB", resize)(photo).astype(np.int16)
    exact = PreprocessSpec(size, size, "RGB", resize, resampler="pillow")(photo).astype(np.int16)
    assert fast.shape == exact.shape == (3, size, size)
    assert np.abs(fast - exact).mean() < 3.5  # of 255: the same picture, within a little aliasing


def test_unknown_fields_survive_round_trips_without_nesting() -> None:
    spec = PreprocessSpec.from_dict({**PreprocessSpec.for_images(32, 32, "L").to_dict(), "future": 1})
    again = PreprocessSpec.from_json(PreprocessSpec.from_json(spec.to_json()).to_json())
    assert again.extra == {"future": 1} and "extra" not in again.to_dict()
    assert again.to_dict()["future"] == 1 and again.crop_pct == 1.0
