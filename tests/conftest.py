"""Shared fixtures: real database files per backend, generated images, the real datasets."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sqlvision as sv

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "sqlvision" / "sample"
SHARED_DATA = Path(os.environ.get("SQLVISION_SHARED_DATA", REPO.parent / "shared" / "data"))

EMBEDDED_BACKENDS = ("duckdb", "sqlite")


def backend_url(kind: str, folder: Path) -> str:
    """A URL for a fresh database of ``kind`` inside ``folder``."""
    return {"duckdb": f"duckdb:///{folder / 'test.duckdb'}",
            "sqlite": f"sqlite:///{folder / 'test.sqlite'}"}[kind]


@pytest.fixture(params=EMBEDDED_BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request.param, tmp_path)


@pytest.fixture
def db(db_url: str) -> Iterator[sv.Database]:
    database = sv.connect(db_url)
    yield database
    database.close()


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (32, 24), mode: str = "RGB",
                seed: int = 0) -> bytes:
    """A real encoded image with random content (so every seed gives distinct bytes)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def make_images(tmp_path: Path) -> Callable[..., Path]:
    """Write a class-folder tree: ``make_images({"cat": 3, "dog": 2}, fmt="PNG")`` -> root."""
    counter = iter(range(10**6))

    def make(classes: dict[str, int], root: Path | None = None, fmt: str = "JPEG",
             size: tuple[int, int] = (32, 24)) -> Path:
        root = root or tmp_path / "images"
        ext = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}[fmt]
        for label, n in classes.items():
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{label}_{i}.{ext}").write_bytes(
                    image_bytes(fmt, size, seed=next(counter)))
        return root

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the repository (``../shared/data``)."""
    if not (SHARED_DATA / "clothing-small").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set SQLVISION_SHARED_DATA)")
    return SHARED_DATA
