"""Ingest on real DuckDB and SQLite files: sources, labels, splits, bad input, reruns, kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sqlvision as sv
from tests.conftest import SAMPLE, image_bytes


def count(db: sv.Database, table: str, where: str = "TRUE") -> int:
    return db.sql(f"SELECT count(*) FROM {db.backend.quote(table)} WHERE {where}").scalar()


def labels_by_uri(db: sv.Database, table: str = "photos") -> dict[str, tuple[str, str]]:
    rows = db.sql(f"SELECT uri, label, split FROM {db.backend.quote(table)}").fetchall()
    return {os.path.basename(u): (lab, s) for u, lab, s in rows}


def test_class_folders_give_labels_and_metadata(db: sv.Database, make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 3, "dog": 2})
    report = db.ingest("photos", root)
    assert (report.added, report.skipped) == (5, 0)
    rows = db.sql("SELECT label, width, height, format, mode, size_bytes, sha256, data, "
                  "last_modified, ingested_at, missing FROM photos ORDER BY id").to_pylist()
    assert [r["label"] for r in rows] == ["cat", "cat", "cat", "dog", "dog"]
    first = rows[0]
    assert (first["width"], first["height"], first["format"], first["mode"]) == (32, 24, "JPEG", "RGB")
    assert first["size_bytes"] == len(first["data"]) == (root / "cat" / "cat_0.jpg").stat().st_size
    assert len(first["sha256"]) == 64 and first["last_modified"] and first["ingested_at"]
    assert first["missing"] in (False, 0)


def test_rerun_adds_nothing_and_new_files_are_picked_up(db: sv.Database,
                                                        make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 3})
    db.ingest("photos", root)
    again = db.ingest("photos", root)
    assert (again.added, again.unchanged) == (0, 3)
    (root / "cat" / "new.png").write_bytes(image_bytes("PNG", seed=99))
    assert db.ingest("photos", root).added == 1
    assert count(db, "photos") == 4
    ids = [r[0] for r in db.sql("SELECT id FROM photos ORDER BY id").fetchall()]
    assert ids == [1, 2, 3, 4]


def test_split_folders_at_any_level(db: sv.Database, make_images: Callable[..., Path],
                                    tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_images({"cat": 2}, root=root / "train")
    make_images({"cat": 1, "dog": 1}, root=root / "val")
    make_images({"dog": 1}, root=root / "test")
    db.ingest("photos", root)
    got = sorted(db.sql("SELECT label, split, count(*) FROM photos GROUP BY label, split").fetchall())
    assert got == [("cat", "train", 2), ("cat", "validation", 1), ("dog", "test", 1),
                   ("dog", "validation", 1)]


def test_source_folder_named_like_a_split(db: sv.Database, make_images: Callable[..., Path],
                                          tmp_path: Path) -> None:
    root = make_images({"cat": 2}, root=tmp_path / "validation")
    db.ingest("photos", root)
    assert db.sql("SELECT DISTINCT split FROM photos").fetchall() == [("validation",)]


def test_random_split_is_seeded_and_stable(tmp_path: Path, make_images: Callable[..., Path]) -> None:
    root = make_images({"a": 60, "b": 60})
    splits = []
    for name in ("one", "two"):
        with sv.connect(tmp_path / f"{name}.duckdb") as db:
            db.ingest("photos", root, split="random:0.5,0.25,0.25", seed=7)
            splits.append(dict(db.sql("SELECT uri, split FROM photos").fetchall()))
            counts = dict(db.sql("SELECT split, count(*) FROM photos GROUP BY split").fetchall())
    assert splits[0] == splits[1]
    assert set(counts) == {"train", "validation", "test"}
    assert 40 <= counts["train"] <= 80
    with sv.connect(tmp_path / "three.duckdb") as db:
        db.ingest("photos", root, split="random:0.5,0.25,0.25", seed=8)
        assert dict(db.sql("SELECT uri, split FROM photos").fetchall()) != splits[0]


def test_regex_labels(db: sv.Database, tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    for i, name in enumerate(["homer_simpson_pic_0001.jpg", "homer_simpson_pic_0002.jpg",
                              "bart_simpson_pic_0001.jpg", "unrelated.jpg"]):
        (folder / name).write_bytes(image_bytes(seed=i))
    report = db.ingest("photos", folder, labels=r"regex:^(?P<label>.+)_pic_\d+")
    assert report.unlabeled == 1
    got = labels_by_uri(db)
    assert got["homer_simpson_pic_0001.jpg"][0] == "homer_simpson"
    assert got["bart_simpson_pic_0001.jpg"][0] == "bart_simpson"
    assert got["unrelated.jpg"][0] is None


def test_regex_without_label_group_fails_fast(db: sv.Database, tmp_path: Path) -> None:
    with pytest.raises(sv.SqlvisionError, match="label"):
        db.ingest("photos", tmp_path, labels=r"regex:^(.+)_pic")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_labels_file_as_option_and_as_source(db: sv.Database, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg", "sub/c.png"]):
        (folder / name).write_bytes(image_bytes("PNG" if name.endswith("png") else "JPEG", seed=i))
    table = pa.table({"path": ["a.jpg", "b.jpg", "sub/c.png", "gone.jpg"],
                      "label": ["x", "y", "x", "y"], "split": ["train", "test", "val", "train"]})
    labels_path = folder / f"labels.{kind}"
    if kind == "csv":
        import pyarrow.csv as pacsv
        pacsv.write_csv(table, labels_path)
    else:
        pq.write_table(table, labels_path)
    report = db.ingest("photos", folder, labels=f"{kind}:{labels_path}")
    assert report.added == 3
    assert labels_by_uri(db)["c.png"] == ("x", "validation")
    # The labels file as a source lists the images itself; a listed file that is gone is an error.
    report = db.ingest("listed", labels_path)
    assert report.added == 3
    assert [reason for _, reason in report.errors] == [
        f"listed in labels.{kind} but cannot be read: No such file or directory"]
    assert labels_by_uri(db, "listed")["b.jpg"] == ("y", "test")


def test_bad_files_are_recorded_and_the_rest_goes_in(db: sv.Database,
                                                     make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 3})
    good = (root / "cat" / "cat_0.jpg").read_bytes()
    (root / "cat" / "text.jpg").write_text("not really a jpeg")
    (root / "cat" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "copy.jpg").write_bytes(good)
    (root / "cat" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "cat" / "README.txt").write_text("ignored: not an image extension")
    report = db.ingest("photos", root)
    assert report.added == 3
    reasons = {os.path.basename(p): r for p, r in report.errors}
    assert set(reasons) == {"text.jpg", "cut.jpg", "empty.png", "copy.jpg", "dangling.jpg"}
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["cut.jpg"].startswith("truncated JPEG")
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["copy.jpg"].startswith("duplicate content")
    assert reasons["dangling.jpg"].startswith("broken symlink")
    assert report.ignored == 1
    assert "5 skipped" in report.summary() and "sv_ingest_errors" in report.summary()
    stored = db.sql("SELECT path, reason FROM sv_ingest_errors WHERE table_name = 'photos'")
    assert len(stored) == 5
    # A rerun reports them again without piling up rows; a fixed file goes in and leaves the list.
    (root / "cat" / "text.jpg").write_bytes(image_bytes(seed=1234))
    report = db.ingest("photos", root)
    assert report.added == 1 and report.skipped == 4
    assert count(db, "sv_ingest_errors") == 4
    assert count(db, "photos") == 4


def test_decompression_bomb_is_skipped(db: sv.Database, make_images: Callable[..., Path]) -> None:
    from tests.test_imaging import _png_header

    root = make_images({"cat": 1})
    (root / "cat" / "bomb.png").write_bytes(_png_header(60_000, 60_000))
    report = db.ingest("photos", root)
    assert report.added == 1
    assert report.errors[0][1].startswith("image too large")
    assert db.ingest("small", root, max_pixels=100).added == 0


def test_symlink_loop_is_reported_not_followed(db: sv.Database, make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 2})
    (root / "cat" / "loop").symlink_to(root)
    report = db.ingest("photos", root)
    assert report.added == 2
    assert any("symlink loop" in reason for _, reason in report.errors)


def test_missing_source_is_a_clear_error(db: sv.Database, tmp_path: Path) -> None:
    with pytest.raises(sv.SqlvisionError, match="source not found"):
        db.ingest("photos", tmp_path / "nope")
    assert "photos" not in db.tables()


def test_glob_file_uri_and_memory_uri(db: sv.Database, make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 2, "dog": 2}, fmt="PNG")
    assert db.ingest("globbed", str(root / "*" / "*_0.png")).added == 2
    assert sorted(labels_by_uri(db, "globbed").values()) == [("cat", None), ("dog", None)]
    assert db.ingest("fileuri", f"file://{root}").added == 4
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/imgs/train/cat/a.jpg", image_bytes(seed=1))
    fs.pipe("/bucket/imgs/train/dog/b.jpg", image_bytes(seed=2))
    fs.pipe("/bucket/imgs/notes.txt", b"skip me")
    try:
        report = db.ingest("remote", "memory://bucket/imgs")
        assert (report.added, report.ignored) == (2, 1)
        rows = db.sql("SELECT uri, label, split FROM remote ORDER BY uri").fetchall()
        assert rows == [("memory:///bucket/imgs/train/cat/a.jpg", "cat", "train"),
                        ("memory:///bucket/imgs/train/dog/b.jpg", "dog", "train")]
        assert db.ingest("remote", "memory://bucket/imgs").added == 0
    finally:
        fs.rm("/bucket", recursive=True)


def test_reference_mode_reads_bytes_from_the_uri(db: sv.Database, make_images: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    root = make_images({"cat": 2})
    db.ingest("refs", root, reference=True)
    row = db.sql("SELECT id, data, width, sha256, uri FROM refs ORDER BY id").to_pylist()[0]
    assert row["data"] is None and row["width"] == 32 and len(row["sha256"]) == 64
    out = db.show("refs", row["id"], tmp_path / "out.jpg")
    assert out.read_bytes() == Path(row["uri"]).read_bytes()


def test_refresh_updates_changed_and_flags_missing(db: sv.Database, make_images: Callable[..., Path]) -> None:
    root = make_images({"cat": 3})
    db.ingest("photos", root)
    changed = root / "cat" / "cat_0.jpg"
    changed.write_bytes(image_bytes(size=(50, 40), seed=500))
    os.utime(changed, (time.time() + 10, time.time() + 10))
    (root / "cat" / "cat_1.jpg").unlink()
    plain = db.ingest("photos", root)
    assert (plain.added, plain.updated, plain.missing) == (0, 0, 0)
    report = db.ingest("photos", root, refresh=True)
    assert (report.added, report.updated, report.missing) == (0, 1, 1)
    rows = {os.path.basename(u): (w, bool(m)) for u, w, m in
            db.sql("SELECT uri, width, missing FROM photos").fetchall()}
    assert rows == {"cat_0.jpg": (50, False), "cat_1.jpg": (32, True), "cat_2.jpg": (32, False)}
    (root / "cat" / "cat_1.jpg").write_bytes(image_bytes(seed=1))
    report = db.ingest("photos", root, refresh=True)
    assert report.restored == 1
    assert count(db, "photos") == 3


def test_idx_archive_folder(db: sv.Database, tmp_path: Path) -> None:
    report = db.ingest("fashion", SAMPLE / "fashion-mnist")
    assert report.added == 4000
    rows = db.sql("SELECT split, count(*), count(DISTINCT label) FROM fashion GROUP BY split "
                  "ORDER BY split").fetchall()
    assert rows == [("test", 1000, 10), ("train", 3000, 10)]
    png = db.sql("SELECT data, width, height, format, mode FROM fashion WHERE label = 'Trouser' "
                 "LIMIT 1").fetchall()[0]
    assert png[0][:4] == b"\x89PNG" and png[1:] == (28, 28, "PNG", "L")
    assert db.ingest("fashion", SAMPLE / "fashion-mnist").added == 0
    with pytest.raises(sv.SqlvisionError, match="--reference"):
        db.ingest("refs", SAMPLE / "fashion-mnist", reference=True)


def test_hostile_table_and_label_names_are_data_not_sql(db: sv.Database,
                                                        make_images: Callable[..., Path]) -> None:
    hostile_label = "x'); DROP TABLE victims; --"
    root = make_images({hostile_label: 1, 'quote"d': 1})
    db.backend.execute("CREATE TABLE victims (a INTEGER)")
    table = 'photos"; DROP TABLE victims; --'
    report = db.ingest(table, root)
    assert report.added == 2
    assert "victims" in db.tables() and table in db.tables()
    labels = sorted(r[0] for r in db.sql(f"SELECT label FROM {db.backend.quote(table)}"))
    assert labels == ['quote"d', hostile_label]
    with pytest.raises(sv.SqlvisionError, match="control characters"):
        db.ingest("bad\nname", root)


def test_existing_non_image_table_is_refused(db: sv.Database, make_images: Callable[..., Path]) -> None:
    db.backend.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    with pytest.raises(sv.SqlvisionError, match="not an image table"):
        db.ingest("customers", make_images({"cat": 1}))


_KILL_SCRIPT = """
import sys, time, sqlvision as sv
from sqlvision.ingest import pipeline
append = pipeline._Ingest.append
def slow_append(*args, **kwargs):  # 30 chunks of 20 rows: a run of 1.5 s or more, killed mid-way
    append(*args, **kwargs)
    time.sleep(0.05)
pipeline._Ingest.append = slow_append
db = sv.connect(sys.argv[1])
db.ingest("photos", sys.argv[2], batch_rows=20, check="full", progress=False)
"""


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_killed_ingest_resumes_without_duplicates(tmp_path: Path, make_images: Callable[..., Path],
                                                  kind: str) -> None:
    root = make_images({f"c{i}": 150 for i in range(4)}, size=(160, 120))
    url = f"{kind}:///{tmp_path / ('db.' + kind)}"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, url, str(root)])
    deadline = time.time() + 60
    partial = 0
    while time.time() < deadline and proc.poll() is None:
        if kind == "sqlite":  # SQLite lets another process read while the ingest writes
            try:
                with sv.connect(url) as peek:
                    partial = peek.sql("SELECT count(*) FROM photos").scalar()
            except Exception:  # noqa: BLE001 - the table may not exist yet
                partial = 0
            if partial >= 40:
                break
        elif time.time() > deadline - 59.0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sv.connect(url) as db:
        before = count(db, "photos") if "photos" in db.tables() else 0
        assert before < 600
        if kind == "sqlite":
            assert before >= 40  # killed mid-run, after some batches committed
        report = db.ingest("photos", root)
        assert count(db, "photos") == 600
        assert db.sql("SELECT count(DISTINCT uri) FROM photos").scalar() == 600
        assert report.added == 600 - before
