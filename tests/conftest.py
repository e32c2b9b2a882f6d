"""Shared fixtures: real database files per backend, generated images, the real datasets."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

import sqlvision as sv
from sqlvision.db import parse_url

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "sqlvision" / "sample"
SHARED_DATA = Path(os.environ.get("SQLVISION_SHARED_DATA", REPO.parent / "shared" / "data"))

EMBEDDED_BACKENDS = ("duckdb", "sqlite")
SERVER_BACKENDS = ("postgresql", "mariadb")
BACKENDS = EMBEDDED_BACKENDS + SERVER_BACKENDS
# as parameters: the server ones carry the ``server`` marker (pytest -m "not server" skips them)
BACKEND_PARAMS = [*EMBEDDED_BACKENDS,
                  *(pytest.param(kind, marks=pytest.mark.server) for kind in SERVER_BACKENDS)]
# The servers every machine of the project's kind runs (see scripts/setup-services.sh).
SERVER_URLS = {
    "postgresql": os.environ.get("SQLVISION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("SQLVISION_TEST_MARIADB", "mysql://root@127.0.0.1:3306/test"),
}


def _unreachable(kind: str, exc: Exception) -> None:
    pytest.skip(f"{kind} server not reachable at {SERVER_URLS[kind]} ({exc}); start it with "
                "scripts/setup-services.sh or set SQLVISION_TEST_{kind.upper()}")


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database of ``kind``: a file in ``folder``, or a schema (PostgreSQL)
    or database (MariaDB) of its own on the local server, dropped afterwards."""
    if kind == "duckdb":
        yield f"duckdb:///{folder / 'test.duckdb'}"
        return
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'test.sqlite'}"
        return
    name = f"sv_test_{uuid.uuid4().hex[:12]}"
    base = SERVER_URLS[kind]
    if kind == "postgresql":
        import psycopg

        try:
            admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            _unreachable(kind, exc)
        with admin:
            admin.execute(f'CREATE SCHEMA "{name}"')
            try:
                yield f"{base}?schema={name}"
            finally:
                admin.execute("SET lock_timeout = '20s'")
                admin.execute(f'DROP SCHEMA "{name}" CASCADE')
        return
    import pymysql

    parsed = parse_url(base)
    try:
        admin = pymysql.connect(host=parsed.host, port=parsed.port or 3306, user=parsed.user,
                                password=parsed.password or "", autocommit=True, connect_timeout=5)
    except pymysql.err.OperationalError as exc:
        _unreachable(kind, exc)
    with admin, admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield base.rsplit("/", 1)[0] + "/" + name
        finally:
            cur.execute(f"DROP DATABASE `{name}`")


@pytest.fixture(params=BACKEND_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


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


def load_example(folder: str) -> ModuleType:
    """``examples/FOLDER/walkthrough.py`` as a module, to call its ``main``."""
    path = REPO / "examples" / folder / "walkthrough.py"
    spec = importlib.util.spec_from_file_location(f"walkthrough_{folder}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the repository (``../shared/data``)."""
    if not (SHARED_DATA / "clothing-small").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set SQLVISION_SHARED_DATA)")
    return SHARED_DATA
