"""What only the servers have: connections that go away mid-run, MariaDB's packet limit,
pgvector, and the MariaDB walk-through run end to end against the local servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import sqlvision as sv
from tests.conftest import (
    BACKEND_PARAMS,
    SAMPLE,
    SERVER_BACKENDS,
    SERVER_URLS,
    fresh_database,
    load_example,
)

FAST = {"arch": "sv_cnn_small", "batch_size": 32, "workers": 2}


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.server) for kind in SERVER_BACKENDS])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def admin_execute(kind: str, sql: str) -> None:
    """Run ``sql`` on a connection of its own, as an administrator would."""
    if kind == "postgresql":
        import psycopg

        with psycopg.connect(SERVER_URLS["postgresql"], autocommit=True) as con:
            con.execute(sql)
        return
    import pymysql

    with pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True) as con, \
            con.cursor() as cur:
        cur.execute(sql)


def kill_connection(backend: Any) -> None:
    """Terminate ``backend``'s connection from the server side (what a restart does to it)."""
    if backend.dialect == "postgresql":
        admin_execute("postgresql", f"SELECT pg_terminate_backend({backend.con.info.backend_pid})")
    else:
        admin_execute("mariadb", f"KILL CONNECTION {backend.con.thread_id()}")


def train_small(db: sv.Database, folder: Path, **settings: Any) -> None:
    db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
    db.train("fm", "fashion", where="id % 10 = 0", epochs=1, checkpoint_dir=folder / "ck",
             progress=False, log=lambda _: None, **{**FAST, **settings})


def test_connection_lost_mid_predict_fails_cleanly_and_a_rerun_completes(
        server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlvision.predict.batch as batch

    with sv.connect(server_url) as db:
        train_small(db, tmp_path)
    real_write = batch.write_predictions
    written = []

    def write_then_lose_the_connection(backend: Any, *args: Any, **kwargs: Any) -> None:
        real_write(backend, *args, **kwargs)
        written.append(1)
        if len(written) == 2:
            kill_connection(backend)

    monkeypatch.setattr(batch, "write_predictions", write_then_lose_the_connection)
    with sv.connect(server_url) as db, pytest.raises(sv.SqlvisionError) as info:
        db.predict("fm", "fashion", where="id <= 600", progress=False)
    message = str(info.value)
    assert message.startswith("lost the connection to") and "rerun the same command" in message
    monkeypatch.setattr(batch, "write_predictions", real_write)
    with sv.connect(server_url) as db:
        report = db.predict("fm", "fashion", where="id <= 600", progress=False)
        assert report.already == 512 and report.predicted == 88  # two groups of 256 kept
        counts = db.sql("SELECT count(*), count(DISTINCT image_id) FROM sv_predictions").fetchall()
        assert counts == [(600, 600)]


@pytest.mark.server
def test_mariadb_packet_limit_skips_big_images_and_splits_big_models(tmp_path: Path) -> None:
    with fresh_database("mariadb", tmp_path) as url:
        admin_execute("mariadb", "SET GLOBAL max_allowed_packet = 1048576")
        try:
            with sv.connect(url) as db:
                assert db.backend.max_packet() == 1048576  # type: ignore[attr-defined]
                root = tmp_path / "images" / "noise"
                root.mkdir(parents=True)
                rng = np.random.default_rng(0)
                for i, side in enumerate((700, 16)):  # ~1.5 MB and ~1 kB of incompressible PNG
                    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / f"{i}.png")
                report = db.ingest("photos", root.parent, progress=False)
                assert report.added == 1 and len(report.errors) == 1
                assert "max_allowed_packet" in report.errors[0][1]
                assert db.sql("SELECT count(*) FROM sv_ingest_errors").scalar() == 1
                # sv_cnn's ONNX bytes and weights are over 1 MB each: stored in parts
                train_small(db, tmp_path, arch="sv_cnn")
                assert db.sql("SELECT onnx IS NULL FROM sv_models").scalar() == 1
                assert db.sql("SELECT count(*) FROM sv_model_parts").scalar() >= 4
                bundle = db.model("fm")
                db.predict("fm", "fashion", where="id <= 64", progress=False)
                assert db.sql("SELECT count(*) FROM sv_predictions").scalar() == 64
                from sqlvision.models.bundle import ModelBundle

                bundle.write(tmp_path / "fm.svmodel")
                assert ModelBundle.read(tmp_path / "fm.svmodel").onnx == bundle.onnx
                assert bundle.weights is not None and len(bundle.onnx) > 1048576
        finally:
            admin_execute("mariadb", "SET GLOBAL max_allowed_packet = 16777216")


@pytest.mark.server
def test_pgvector_similarity_agrees_with_the_plain_scan(tmp_path: Path) -> None:
    from sqlvision.embed import EMBEDDINGS, nearest_by_scan

    with fresh_database("postgresql", tmp_path) as url, sv.connect(url) as db:
        if not db.backend.has_pgvector:  # type: ignore[attr-defined]
            pytest.skip("pgvector is not installed here: scripts/setup-services.sh installs it")
        train_small(db, tmp_path)
        db.embed("fm", "fashion", where="id <= 500", progress=False)
        bundle = db.model("fm")
        query = np.asarray(db.sql("SELECT embedding FROM sv_embeddings WHERE image_id = 7").scalar(),
                           np.float32)
        filters = {"source_table": "fashion", "model": bundle.name, "model_version": bundle.version}
        by_db = db.backend.nearest(EMBEDDINGS, filters, query, 5)
        assert by_db is not None
        by_scan = nearest_by_scan(db.backend, bundle, "fashion", query, 5)
        assert by_db[0][0] == by_scan[0][0] == 7
        assert by_db[1] == pytest.approx(by_scan[1], abs=1e-5)
        hits = db.similar("fm", "fashion", db.sql("SELECT data FROM fashion WHERE id = 7").scalar(), 3)
        assert hits.to_pylist()[0]["id"] == 7


@pytest.mark.server
def test_mariadb_walkthrough_example_runs_end_to_end(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    walkthrough = load_example("mariadb_fashion_mnist")
    with fresh_database("mariadb", tmp_path) as url:
        code = walkthrough.main(["--db", url, "--data", str(SAMPLE / "fashion-mnist"),
                                 "--train-rows", "800", "--test-rows", "200", "--epochs", "1",
                                 "--out", str(tmp_path / "out")])
        assert code == 0
        printed = capsys.readouterr().out
        assert "loaded 1000 images into tf_images" in printed and "test accuracy" in printed
        with sv.connect(url) as db:
            assert db.sql("SELECT count(*) FROM tf_images_predicted WHERE img_use = 2 AND "
                          "predicted_label IS NOT NULL").scalar() == 200
            assert db.sql("SELECT count(*) FROM tf_images WHERE predicted_label IS NOT NULL"
                          ).scalar() == 200
            classes = set(db.model("fashion").classes)
            assert "Ankle boot" in classes and len(classes) == 10
    for name in ("labels.png", "test-image.png", "report/report.html"):
        assert (tmp_path / "out" / name).exists()


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_clothing_validation_gives_341_predictions(kind: str, tmp_path: Path,
                                                   shared_data: Path) -> None:
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        db.ingest("photos", shared_data / "clothing-small" / "validation", split="none",
                  progress=False)
        db.train("clothes", "photos", epochs=1, image_size=(32, 32), checkpoint_dir=tmp_path / "ck",
                 progress=False, log=lambda _: None, **FAST)
        first = db.predict("clothes", "photos", progress=False)
        second = db.predict("clothes", "photos", progress=False)
        assert (first.predicted, second.predicted, second.already) == (341, 0, 341)
        ev = db.evaluate("clothes", "photos", progress=False)
        assert ev.rows == 341
        assert db.sql("SELECT count(*), count(DISTINCT image_id) FROM sv_predictions").fetchall() \
            == [(341, 341)]



@pytest.mark.server
def test_mariadb_load_data_and_insert_paths_store_the_same_values(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa
    import pymysql

    from sqlvision.db.base import Column, arrow_schema

    columns = [Column("id", "bigint", primary_key=True), Column("name", "text"),
               Column("data", "blob"), Column("at", "timestamp"), Column("flag", "bool"),
               Column("score", "double"), Column("vec", "vector")]
    tricky = bytes(range(256)) + b"\\N\t\n\0\\\\'\""
    batch = pa.table({
        "id": [1, 2, 3], "name": ["caf\u00e9 \t tab", None, "back\\slash\nnew"],
        "data": [tricky, b"", None], "at": [dt.datetime(2026, 11, 22, 1, 2, 3, 456789), None,
                                            dt.datetime(2000, 1, 1)],
        "flag": [True, False, None], "score": [0.1, None, -1e300], "vec": [[1.5, -2.0], None, []],
    }, schema=arrow_schema(columns))
    with fresh_database("mariadb", tmp_path) as url:
        stored = []
        for suffix in ("", "?local_infile=0"):
            with sv.connect(url + suffix) as db:
                assert db.backend.local_infile == (suffix == "")  # type: ignore[attr-defined]
                db.backend.create_table(f"t{len(stored)}", columns)
                with db.backend.transaction():
                    db.backend.insert(f"t{len(stored)}", batch)
                stored.append(db.sql(f"SELECT * FROM t{len(stored)} ORDER BY id").to_pylist())
                # LOAD DATA LOCAL would only warn about a duplicate key: it must fail and roll back
                with pytest.raises((sv.SqlvisionError, pymysql.err.IntegrityError),
                                   match="Duplicate"), db.backend.transaction():
                    db.backend.insert(f"t{len(stored) - 1}", batch.slice(0, 1))
                assert db.sql(f"SELECT count(*) FROM t{len(stored) - 1}").scalar() == 3
    assert stored[0] == stored[1]
    assert stored[0][0]["data"] == tricky and stored[0][2]["name"] == "back\\slash\nnew"
    assert stored[0][0]["at"] == dt.datetime(2026, 11, 22, 1, 2, 3, 456789)


@pytest.mark.server
@pytest.mark.parametrize("kind", SERVER_BACKENDS)
def test_cli_wrong_credentials_is_one_line_without_the_password(
        kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlvision.cli import main

    host = "127.0.0.1:5432/test" if kind == "postgresql" else "127.0.0.1:3306/test"
    scheme = "postgresql" if kind == "postgresql" else "mariadb"
    code = main(["tables", "--db", f"{scheme}://sv_nobody:Pa55-w0rd@{host}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "Pa55-w0rd" not in err and "sv_nobody:***@" in err and "cannot connect" in err
