"""predict() inside PostgreSQL for any client: install-functions, then plain SQL through psycopg
and the psql command line, checked against batch predict on the same rows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

import sqlvision as sv
from sqlvision.db import parse_url
from sqlvision.db.identifiers import quote_identifier
from sqlvision.db.plpython import install_functions, plpython_missing
from sqlvision.models import registry
from tests.conftest import SAMPLE, SERVER_URLS, fresh_database

pytestmark = pytest.mark.server
FAST: dict[str, Any] = {"arch": "sv_cnn_small", "batch_size": 32, "workers": 2}
ROWS = "id <= 60"


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def server() -> Any:
    """A plain client connection, as any application would open (no sqlvision on it)."""
    import psycopg

    return psycopg.connect(SERVER_URLS["postgresql"], autocommit=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sv.Database, str]]:
    """A schema with the Fashion-MNIST sample, model ``fm`` (one quick epoch) and the functions
    installed by the CLI, with a password in the URL that must never be printed."""
    folder = tmp_path_factory.mktemp("plpython")
    with fresh_database("postgresql", folder) as url, sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        db.train("fm", "fashion", where="id % 10 = 0", epochs=1, checkpoint_dir=folder / "ck",
                 progress=False, log=lambda _: None, **FAST)
        with_password = url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
        done = subprocess.run([sys.executable, "-m", "sqlvision.cli", "install-functions",
                               "--db", with_password], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "installed predict(model, image)" in done.stdout
        assert "s3cret" not in done.stdout + done.stderr
        yield db, schema_of(url)


def test_sql_predict_matches_batch_predict(installed: tuple[sv.Database, str]) -> None:
    db, schema = installed
    db.predict("fm", "fashion", where=ROWS, progress=False, log=lambda _: None)
    batch = dict(db.sql("SELECT image_id, label FROM sv_predictions ORDER BY image_id").fetchall())
    confidence = dict(db.sql("SELECT image_id, confidence FROM sv_predictions").fetchall())
    s = quote_identifier(schema)
    with server() as con:
        rows = con.execute(f"SELECT id, {s}.predict('fm', data) FROM {s}.fashion WHERE {ROWS} "
                           "ORDER BY id").fetchall()
        labels = con.execute(f"SELECT id, {s}.predict('fm', data)->>'label' FROM {s}.fashion "
                             f"WHERE {ROWS} ORDER BY id").fetchall()
    assert len(rows) == len(batch) == 60
    assert {i: r["label"] for i, r in rows} == batch == dict(labels)
    for i, r in rows:
        assert r["error"] is None and r["confidence"] == pytest.approx(confidence[i], abs=1e-5)


def test_sql_embed_matches_batch_embed(installed: tuple[sv.Database, str]) -> None:
    db, schema = installed
    db.embed("fm", "fashion", where="id <= 5", progress=False, log=lambda _: None)
    stored = dict(db.sql("SELECT image_id, embedding FROM sv_embeddings").fetchall())
    s = quote_identifier(schema)
    with server() as con:
        rows = con.execute(f"SELECT id, {s}.embed('fm', data) FROM {s}.fashion WHERE id <= 5"
                           ).fetchall()
        assert con.execute(f"SELECT {s}.embed('fm', 'garbage'::bytea)").fetchone() == (None,)
    assert len(rows) == len(stored) == 5
    for i, vector in rows:
        assert np.allclose(vector, db.backend.read_vector(stored[i]), atol=1e-5)


def test_psql_runs_predict_as_written(installed: tuple[sv.Database, str]) -> None:
    db, schema = installed
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    done = subprocess.run(["psql", SERVER_URLS["postgresql"], "-Atc",
                           "SELECT predict('fm', data) FROM fashion ORDER BY id LIMIT 3"],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    values = [json.loads(line) for line in done.stdout.splitlines()]
    classes = db.model("fm").classes
    assert len(values) == 3 and all(v["label"] in classes and v["error"] is None for v in values)
    done = subprocess.run(["psql", SERVER_URLS["postgresql"], "-Atc",
                           "SELECT e->>'label' FROM fashion, jsonb_array_elements("
                           "predict_topk('fm', data, 3)) e WHERE id = 1"],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    assert len(done.stdout.split()) == 3


def test_bad_and_null_images_cost_only_their_row(installed: tuple[sv.Database, str]) -> None:
    _, schema = installed
    s = quote_identifier(schema)
    with server() as con:
        rows = con.execute(
            f"SELECT {s}.predict('fm', v), {s}.predict_topk('fm', v, 2, 0.0) FROM (VALUES "
            f"(1, 'garbage'::bytea), (2, NULL), (3, (SELECT data FROM {s}.fashion WHERE id = 1))) "
            "t(n, v) ORDER BY n").fetchall()
    (bad, bad_top), (null, null_top), (good, good_top) = rows
    assert bad["label"] is None and bad["confidence"] is None and "not an image" in bad["error"]
    assert bad_top is None and null is None and null_top is None
    assert good["label"] == good_top[0]["label"] and len(good_top) == 2
    assert good_top[0]["probability"] >= good_top[1]["probability"]


def test_a_newer_version_is_picked_up_and_versions_pin(installed: tuple[sv.Database, str]) -> None:
    db, schema = installed
    s = quote_identifier(schema)
    query = (f"SELECT {s}.predict('fm', data)->>'label', {s}.predict('fm:1', data)->>'label' "
             f"FROM {s}.fashion WHERE id = 1")
    with server() as con:  # one session: the model is cached in it
        latest, pinned = con.execute(query).fetchone()
        assert latest == pinned
        newer = db.model("fm")
        newer.classes = [c.upper() for c in newer.classes]
        registry.save(db.backend, newer)
        try:
            assert con.execute(query).fetchone() == (latest.upper(), pinned)
        finally:
            registry.delete(db.backend, "fm", newer.version)


def test_hostile_names_stay_values_and_quoted(installed: tuple[sv.Database, str]) -> None:
    _, schema = installed
    s = quote_identifier(schema)
    import psycopg

    with server() as con:
        with pytest.raises(psycopg.Error, match="not found") as caught:
            con.execute(f"SELECT {s}.predict($$x'); DROP TABLE {s}.fashion; --$$, data) "
                        f"FROM {s}.fashion LIMIT 1")
        assert "sqlvision models list" in str(caught.value.diag.message_hint)
        assert con.execute(f"SELECT count(*) FROM {s}.fashion").fetchone()[0] > 0
    weird = 'sv_test "odd\' name'
    url = f"{SERVER_URLS['postgresql']}?schema={quote(weird)}"
    try:
        report = install_functions(url, log=lambda _: None)
        assert report.schema == weird and report.info["onnxruntime"]
        w = quote_identifier(weird)
        with server() as con:
            with pytest.raises(psycopg.Error, match="no models yet"):
                con.execute(f"SELECT {w}.predict('fm', data) FROM {s}.fashion LIMIT 1")
            con.execute(f"CREATE TABLE {w}.sv_models AS SELECT * FROM {s}.sv_models")
            there, here = con.execute(f"SELECT {w}.predict('fm', data), {s}.predict('fm', data) "
                                      f"FROM {s}.fashion WHERE id = 1").fetchone()
        assert there == here
    finally:
        with server() as con:
            con.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(weird)} CASCADE")


def test_a_role_that_is_not_superuser_is_told_why() -> None:
    role = f"sv_test_role_{uuid.uuid4().hex[:8]}"
    with server() as con:
        con.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        try:
            con.execute(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
            base = parse_url(SERVER_URLS["postgresql"])
            # ?schema= runs CREATE SCHEMA IF NOT EXISTS, which needs CREATE on the database
            con.execute(f"GRANT CREATE ON DATABASE {quote_identifier(str(base.database))} TO {role}")
            url = f"postgresql://{role}@{base.host}:{base.port}/{base.database}?schema={role}"
            with pytest.raises(sv.SqlvisionError, match="untrusted language: run install-functions "
                                                         "as a superuser"):
                install_functions(url, sync=False)
        finally:
            con.execute(f"DROP SCHEMA IF EXISTS {role} CASCADE")
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE {role}")


def test_a_server_directory_without_sqlvision_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    empty.chmod(0o755)
    expected = rf"cannot import sqlvision\b.* from {re.escape(str(empty))} \(ModuleNotFoundError"
    with fresh_database("postgresql", tmp_path) as url, \
            pytest.raises(sv.SqlvisionError, match=expected):
        install_functions(url, server_path=str(empty), sync=False)


def test_missing_plpython_names_the_package() -> None:
    message = str(plpython_missing(15))
    assert "\n" not in message and "postgresql-plpython3-15" in message


@pytest.mark.parametrize("url", ["duckdb:///x.duckdb", "mysql://root@127.0.0.1:3306/test"])
def test_other_engines_are_told_where_predict_runs(url: str) -> None:
    with pytest.raises(sv.SqlvisionError, match="install-functions is for PostgreSQL"):
        install_functions(url)
