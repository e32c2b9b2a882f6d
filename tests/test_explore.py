"""Exploration: counts, the bar chart, one image out, the contact sheet, users' own tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import sqlvision as sv
from tests.conftest import image_bytes


def test_stats_counts_and_plot(db: sv.Database, make_images: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_images({"cat": 3, "dog": 1}, root=root / "train")
    make_images({"cat": 1}, root=root / "test")
    (root / "unlabeled.jpg").write_bytes(image_bytes(seed=77))
    db.ingest("photos", root)
    plot = tmp_path / "chart.png"
    rows = db.stats("photos", plot=plot).to_pylist()
    assert rows == [
        {"label": "cat", "train": 3, "test": 1, "(none)": 0, "total": 4},
        {"label": "dog", "train": 1, "test": 0, "(none)": 0, "total": 1},
        {"label": None, "train": 0, "test": 0, "(none)": 1, "total": 1},
    ]
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 300
    assert db.stats("photos", where="label = 'dog'").to_pylist()[0]["total"] == 1


def test_show_writes_the_stored_bytes_or_converts(db: sv.Database, make_images: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    root = make_images({"cat": 1})
    db.ingest("photos", root)
    same = db.show("photos", 1, tmp_path / "same.jpg")
    assert same.read_bytes() == (root / "cat" / "cat_0.jpg").read_bytes()
    converted = db.show("photos", 1, tmp_path / "as.png")
    with Image.open(converted) as img:
        assert img.format == "PNG" and img.size == (32, 24)
    with pytest.raises(sv.SqlvisionError, match="no row with id = 42"):
        db.show("photos", 42, tmp_path / "x.png")


def test_contact_sheet(db: sv.Database, make_images: Callable[..., Path], tmp_path: Path) -> None:
    db.ingest("photos", make_images({"cat": 5, "dog": 2, "eel": 1}))
    out = db.contact_sheet("photos", tmp_path / "sheet.png", per_label=4, thumb=50)
    with Image.open(out) as img:
        assert img.size == (120 + 4 * 54 + 4, 3 * (50 + 12 + 4) + 4)  # 12: the id under each


def test_users_own_table_with_named_columns(db: sv.Database, tmp_path: Path) -> None:
    db.backend.execute("CREATE TABLE tf_images (img_idx INTEGER, img_label INTEGER, "
                       f"img_blob {db.backend.type_names['blob']}, img_use INTEGER)")
    db.backend.executemany("INSERT INTO tf_images VALUES (?, ?, ?, ?)",
                           [(i, i % 2, image_bytes("PNG", (28, 28), "L", seed=i), 1 + i % 2)
                            for i in range(6)])
    cols = {"id_col": "img_idx", "image_col": "img_blob", "label_col": "img_label"}
    rows = db.stats("tf_images", **cols).to_pylist()
    assert [(r["label"], r["total"]) for r in rows] == [("0", 3), ("1", 3)]
    out = db.show("tf_images", 3, tmp_path / "three.png", **cols)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(sv.SqlvisionError, match="no column 'nope'"):
        db.stats("tf_images", id_col="img_idx", image_col="nope")
    with pytest.raises(sv.SqlvisionError, match=r"no 'id' column .* name it with --id-col"):
        db.stats("tf_images")
    with pytest.raises(sv.SqlvisionError, match="not found"):
        db.stats("missing_table")


def test_labels_with_dollar_signs_plot(tmp_path: Path) -> None:
    import pyarrow as pa

    from sqlvision.explore import plot_counts
    from sqlvision.train.runlog import plot_curves

    counts = pa.table({"label": ["$\\foo$", "plain"], "train": [2, 3], "total": [2, 3]})
    assert plot_counts(counts, tmp_path / "c.png", "$\\foo$ stats").exists()
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": None,
                "val_accuracy": None}]
    assert plot_curves(history, tmp_path / "h.png", "$\\foo$") is not None
