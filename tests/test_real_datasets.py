"""The acceptance checks on the real datasets in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import sqlvision as sv


@pytest.fixture
def validation_copy(shared_data: Path, tmp_path: Path) -> Path:
    target = tmp_path / "validation"
    shutil.copytree(shared_data / "clothing-small" / "validation", target)
    return target


def test_clothing_validation_ingest_rerun_and_bad_files(validation_copy: Path, tmp_path: Path) -> None:
    with sv.connect(tmp_path / "photos.duckdb") as db:
        first = db.ingest("photos", validation_copy)
        assert (first.added, first.skipped) == (341, 0)
        assert db.sql("SELECT count(DISTINCT label) FROM photos").scalar() == 10
        assert db.ingest("photos", validation_copy).added == 0
        (validation_copy / "dress" / "notes.jpg").write_text("meeting notes, not a photo")
        some = next((validation_copy / "hat").iterdir())
        (validation_copy / "hat" / "cut.jpg").write_bytes(some.read_bytes()[:4000])
        report = db.ingest("photos", validation_copy)
        assert report.added == 0 and report.skipped == 2
        assert db.sql("SELECT count(*) FROM photos").scalar() == 341
        assert db.sql("SELECT count(*) FROM sv_ingest_errors").scalar() == 2


def test_clothing_reference_mode(shared_data: Path, tmp_path: Path) -> None:
    with sv.connect(tmp_path / "refs.duckdb") as db:
        db.ingest("photos", shared_data / "clothing-small" / "validation", reference=True)
        row = db.sql("SELECT count(*), count(data), count(width), count(height), count(sha256) "
                     "FROM photos").fetchall()[0]
        assert row == (341, 0, 341, 341, 341)
        out = db.show("photos", 7, tmp_path / "seven.jpg")
        uri = db.sql("SELECT uri FROM photos WHERE id = 7").scalar()
        assert out.read_bytes() == Path(uri).read_bytes()


def test_fashion_mnist_idx_folder(shared_data: Path, tmp_path: Path) -> None:
    with sv.connect(tmp_path / "fm.duckdb") as db:
        report = db.ingest("fashion", shared_data / "fashion-mnist")
        assert report.added == 70_000
        rows = db.sql("SELECT split, count(*), count(DISTINCT label) FROM fashion GROUP BY split "
                      "ORDER BY split").fetchall()
        assert rows == [("test", 10_000, 10), ("train", 60_000, 10)]
        labels = {r[0] for r in db.sql("SELECT DISTINCT label FROM fashion").fetchall()}
        assert {"T-shirt/top", "Ankle boot", "Sneaker"} <= labels
