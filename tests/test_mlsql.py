"""The ML statements (CREATE MODEL, ML.PREDICT and kin) on every engine, and their parser."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sqlvision as sv
from sqlvision.cli import main
from sqlvision.mlsql.parse import find_calls, parse_statement
from tests.conftest import BACKEND_PARAMS, SAMPLE, fresh_database, image_bytes
from tests.test_predict import FAST

GROUPED = ("SELECT predicted_label, count(*) AS n FROM ML.PREDICT(MODEL clothes, "
           "(SELECT id, data FROM fashion)) GROUP BY predicted_label ORDER BY predicted_label")


# -- the parser: table-driven, no database --------------------------------------------------------
@pytest.mark.parametrize(("dialect", "sql", "expected"), [
    ("duckdb", "SELECT * FROM ML.PREDICT(MODEL m, (SELECT id, data FROM t))",
     [("PREDICT", "m", "SELECT id, data FROM t", {}, False)]),
    ("postgres", "select * from ml.predict(model \"fashion-cnn\", (select id from t where x = ')'),"
                 " struct(3 as top_k, -0.5 as min_prob)) p",
     [("PREDICT", "fashion-cnn", "select id from t where x = ')'", {"top_k": 3, "min_prob": -0.5},
       True)]),
    ("mysql", "SELECT * FROM ML.EVALUATE(MODEL `m:2`, TABLE photos)",
     [("EVALUATE", "m:2", "SELECT * FROM photos", {}, False)]),
    ("sqlite", "SELECT * FROM ML.PREDICT(MODEL fashion-cnn:3, (SELECT 1)) a JOIN ML.MODELS b ON 1=1",
     [("PREDICT", "fashion-cnn:3", "SELECT 1", {}, True), ("MODELS", "", "", {}, True)]),
    ("duckdb", "SELECT 'ML.PREDICT(MODEL m, (SELECT 1))' AS text, ml_column FROM t", []),
])
def test_calls_are_found_with_their_parts(dialect: str, sql: str, expected: list[Any]) -> None:
    calls = find_calls(sql, dialect)
    assert [(c.kind, c.model, c.query, c.options, c.aliased) for c in calls] == expected
    for call in calls:
        assert sql[call.start:call.end].upper().startswith("ML.")


@pytest.mark.parametrize(("sql", "expected"), [
    ("CREATE MODEL m OPTIONS(epochs=1) AS SELECT data, label FROM t",
     ("m", {"epochs": 1}, "SELECT data, label FROM t", False, False)),
    ("create or replace model `fashion-cnn` options(from='base', train_layers='head', "
     "image_size=[96, 96], pretrained=false, lr=1e-3) as select data, label from t where id > 3;",
     ("fashion-cnn", {"from": "base", "train_layers": "head", "image_size": [96, 96],
                      "pretrained": False, "lr": 0.001},
      "select data, label from t where id > 3", True, False)),
    ("CREATE MODEL IF NOT EXISTS m OPTIONS(model_type='onnx', model_path='m.onnx')",
     ("m", {"model_type": "onnx", "model_path": "m.onnx"}, None, False, True)),
])
def test_create_model_is_read(sql: str, expected: tuple[Any, ...]) -> None:
    statement = parse_statement(sql, "mysql")
    assert statement is not None
    assert (statement.name, statement.options, statement.query, statement.replace,  # type: ignore[union-attr]
            statement.if_not_exists) == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(("sql", "where", "message"), [
    ("CREATE MODEL m OPTIONS(epochs 1) AS SELECT 1", "line 1, column 31", "expected = after epochs"),
    ("SELECT *\nFROM ML.PREDICT(MODEL m)", "line 2, column 24", "expected a comma"),
    ("SELECT * FROM ML.PREDICT(m, (SELECT 1))", "line 1, column 26", "MODEL name first"),
    ("SELECT * FROM ML.PREDICT(MODEL m, (SELECT 1), STRUCT(5 top_k))", "line 1, column 56",
     "expected AS name"),
    ("CREATE MODEL m OPTIONS(a=1, a=2)", "line 1, column 29", "option a is given twice"),
    ("DROP MODEL m; SELECT 1", "line 1, column 15", "one statement at a time"),
])
def test_parse_errors_point_at_the_position(sql: str, where: str, message: str) -> None:
    def read(text: str) -> Any:
        return parse_statement(text, "duckdb") or find_calls(text, "duckdb")

    with pytest.raises(sv.SqlvisionError, match=message) as info:
        read(sql)
    assert str(info.value).startswith(where)


def test_plain_sql_is_left_alone(tmp_path: Path) -> None:
    with sv.connect(tmp_path / "t.duckdb") as db:
        assert db.sql("SELECT 'CREATE MODEL' AS model, 2 AS ml").fetchall() == [("CREATE MODEL", 2)]


# -- on every engine -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int]]]:
    """A small Fashion-MNIST model as a bundle file, and its label counts over the sample (the
    answer every engine must give)."""
    folder = tmp_path_factory.mktemp("bundle")
    with sv.connect(folder / "t.duckdb") as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        db.train("clothes", "fashion", where="id % 4 = 0", epochs=2, checkpoint_dir=folder / "ck",
                 progress=False, log=lambda _: None, **FAST)
        db.predict("clothes", "fashion", progress=False)
        counts = db.sql("SELECT label, count(*) FROM sv_predictions GROUP BY label "
                        "ORDER BY label").fetchall()
    path = folder / "clothes.svmodel"
    assert main(["models", "export", "clothes", "--out", str(path), "--db",
                 str(folder / "t.duckdb")]) == 0
    return path, counts


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           bundle_file: tuple[Path, Any]) -> Iterator[sv.Database]:
    """Each engine with the sample ingested and the bundle imported by CREATE MODEL."""
    folder = tmp_path_factory.mktemp(request.param)
    with fresh_database(request.param, folder) as url, sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        made = db.sql(f"CREATE MODEL clothes OPTIONS(model_type='svmodel', "
                      f"model_path={db.backend.quote_literal(str(bundle_file[0]))})").to_pylist()
        assert made == [{"model": "clothes", "version": 1, "action": "imported", "classes": 10,
                         "accuracy": pytest.approx(made[0]["accuracy"])}]
        yield db


def test_ml_predict_gives_the_same_answer_on_every_engine(
        engine: sv.Database, bundle_file: tuple[Path, list[tuple[str, int]]]) -> None:
    assert engine.sql(GROUPED).fetchall() == bundle_file[1]
    assert engine.sql(GROUPED).fetchall() == bundle_file[1]  # again: stored or recomputed alike
    if not engine.backend.vectorized_functions:  # scored once into sv_predictions, then joined
        assert engine.sql("SELECT count(*) FROM sv_predictions").scalar() == 4000


def test_ml_predict_columns_top_k_and_options(engine: sv.Database) -> None:
    rows = engine.sql("SELECT * FROM ML.PREDICT(MODEL clothes:1, (SELECT id, label AS truth, data "
                      "FROM fashion WHERE id <= 3 ORDER BY id), STRUCT(3 AS top_k, 0.0 AS min_prob)) "
                      "AS p ORDER BY id").to_pylist()
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["id", "truth", "data", "predicted_label", "confidence", "top_k",
                             "prediction_error"]
    for r in rows:
        top = r["top_k"] if engine.backend.native_lists else json.loads(r["top_k"])
        assert len(top) == 3 and top[0]["label"] == r["predicted_label"]
        assert top[0]["probability"] == pytest.approx(r["confidence"])
        assert r["prediction_error"] is None
    strict = engine.sql("SELECT top_k FROM ML.PREDICT(MODEL clothes, (SELECT id, data FROM fashion "
                        "WHERE id <= 3), STRUCT(2 AS top_k, 0.999 AS min_prob))").fetchall()
    for (top,) in strict:
        assert (top if engine.backend.native_lists else json.loads(top)) == []
    with pytest.raises(sv.SqlvisionError, match="no option 'k'"):
        engine.sql("SELECT * FROM ML.PREDICT(MODEL clothes, (SELECT id, data FROM fashion), "
                   "STRUCT(3 AS k))")


def test_ml_evaluate_and_the_confusion_matrix_agree_with_evaluate(engine: sv.Database) -> None:
    where = "split = 'test'"
    reference = engine.evaluate("clothes", "fashion", where=where, progress=False)
    rows = engine.sql("SELECT * FROM ML.EVALUATE(MODEL clothes, (SELECT id, data, label FROM "
                      f"fashion WHERE {where}))").to_pylist()
    overall = next(r for r in rows if r["class"] is None)
    assert overall["accuracy"] == pytest.approx(reference.accuracy)
    assert overall["f1_score"] == pytest.approx(reference.macro_f1)
    assert overall["support"] == reference.rows
    per_class = {r["class"]: r for r in rows if r["class"] is not None}
    for expected in reference.per_class:
        assert per_class[expected["label"]]["recall"] == pytest.approx(expected["recall"])
    matrix = engine.sql("SELECT * FROM ML.CONFUSION_MATRIX(MODEL clothes, (SELECT id, data, label "
                        f"FROM fashion WHERE {where}))").fetchall()
    assert [list(r[1:]) for r in matrix] == reference.confusion


def test_ml_embed_and_models(engine: sv.Database) -> None:
    rows = engine.sql("SELECT id, embedding FROM ML.EMBED(MODEL clothes, (SELECT id, data FROM "
                      "fashion WHERE id <= 2)) AS e ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    vector = rows[0][1]
    if isinstance(vector, str):
        vector = json.loads(vector)
    assert len(engine.backend.read_vector(vector)) == 64
    models = engine.sql("SELECT name, version FROM ML.MODELS ORDER BY version").fetchall()
    assert models == [("clothes", 1)]


def test_a_bad_image_costs_only_its_row(engine: sv.Database) -> None:
    engine.backend.execute("CREATE TABLE mixed (id INTEGER PRIMARY KEY, data "
                           f"{engine.backend.type_names['blob']})")
    try:
        engine.backend.executemany("INSERT INTO mixed VALUES (?, ?)",
                                   [(1, image_bytes("PNG", (28, 28), "L")), (2, b"not an image"),
                                    (3, None)])
        rows = engine.sql("SELECT id, predicted_label, prediction_error FROM ML.PREDICT(MODEL "
                          "clothes, (SELECT id, data FROM mixed)) AS p ORDER BY id").fetchall()
        assert rows[0][1] is not None and rows[0][2] is None
        assert rows[1][1] is None and rows[1][2]
        assert rows[2][1] is None
    finally:  # stored predictions come with the mixed_predicted view
        engine.backend.execute(f"DROP VIEW IF EXISTS {engine.backend.quote('mixed_predicted')}")
        engine.backend.drop_table("mixed")


def test_create_model_trains_on_exactly_the_query_rows(engine: sv.Database, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # checkpoints go to ./sqlvision-runs
    where = "id % 10 = 0 AND label <> 'Bag'"
    made = engine.sql(f"CREATE MODEL small OPTIONS(epochs=1, arch='sv_cnn_small', batch_size=32, "
                      f"workers=2) AS SELECT data, label, split FROM fashion WHERE {where}")
    assert made.to_pylist()[0]["version"] == 1
    bundle = engine.model("small")
    selected = engine.sql(f"SELECT count(*) FROM fashion WHERE {where} AND split <> 'test'").scalar()
    assert bundle.metrics["train_rows"] + bundle.metrics["val_rows"] == selected
    assert "Bag" not in bundle.classes and bundle.lineage["where"] == where
    with pytest.raises(sv.SqlvisionError, match="exists"):
        engine.sql("CREATE MODEL small AS SELECT data, label FROM fashion")
    assert engine.sql("CREATE MODEL IF NOT EXISTS small AS SELECT data, label FROM fashion"
                      ).to_pylist()[0]["action"] == "exists"
    with pytest.raises(sv.SqlvisionError, match="epochs: invalid int value"):
        engine.sql("CREATE OR REPLACE MODEL small OPTIONS(epochs='many') AS SELECT data, label "
                   "FROM fashion")
    with pytest.raises(sv.SqlvisionError, match="unknown option 'epoch'"):
        engine.sql("CREATE OR REPLACE MODEL small OPTIONS(epoch=1) AS SELECT data, label FROM fashion")
    with pytest.raises(sv.SqlvisionError, match="one table"):
        engine.sql("CREATE OR REPLACE MODEL small AS SELECT f.data, f.label FROM fashion f "
                   "JOIN fashion g ON f.id = g.id")
    assert engine.sql("DROP MODEL small").fetchall() == [("small", 1)]
    assert engine.sql("DROP MODEL IF EXISTS small").fetchall() == [("small", 0)]


def test_inputs_the_stored_path_cannot_key(engine: sv.Database) -> None:
    joined = ("SELECT count(*) FROM ML.PREDICT(MODEL clothes, (SELECT f.id, f.data FROM fashion f "
              "JOIN fashion g ON f.id = g.id WHERE f.id <= 4)) AS p")
    if engine.backend.sql_functions:  # the SQL functions score any query
        assert engine.sql(joined).scalar() == 4
        return
    with pytest.raises(sv.SqlvisionError, match="must read one table"):
        engine.sql(joined)
    with pytest.raises(sv.SqlvisionError, match=r"must select fashion\.id"):
        engine.sql("SELECT * FROM ML.PREDICT(MODEL clothes, (SELECT data FROM fashion))")


def test_the_cli_runs_ml_statements(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    bundle_file: tuple[Path, list[tuple[str, int]]]) -> None:
    url = f"duckdb:///{tmp_path / 't.duckdb'}"
    with sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
    assert main(["sql", f"CREATE MODEL clothes OPTIONS(model_type='svmodel', "
                        f"model_path='{bundle_file[0]}')", "--db", url]) == 0
    assert main(["sql", GROUPED, "--db", url, "--format", "json"]) == 0
    out = capsys.readouterr().out
    answer = json.loads(out[out.index("["):])
    assert [(r["predicted_label"], r["n"]) for r in answer] == bundle_file[1]
    assert main(["sql", "SELECT * FROM ML.PREDICT(MODEL nothere, (SELECT id, data FROM fashion))",
                 "--db", url]) == 1
    assert "nothere" in capsys.readouterr().err


def test_bigquery_walkthrough_runs_in_sql_only(tmp_path: Path, shared_data: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "bigquery_style" / "walkthrough.sql"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").symlink_to(shared_data / "clothing-small" / "validation")
    source = ["--db", "model-source.duckdb"]
    assert main(["models", "pretrained", *source]) == 0
    assert main(["models", "export", "imagenet", "--onnx", "--out", "imagenet.onnx",
                 "--labels", "imagenet-labels.txt", *source]) == 0
    capsys.readouterr()
    assert main(["sql", "--db", "bq.duckdb", "--file", str(script), "--format", "json"]) == 0
    results = [json.loads(part[part.index("\n") + 1:])
               for part in capsys.readouterr().out.split("-- ")[1:]]
    assert results[0] == [{"table": "photos", "added": 341, "updated": 0, "missing": 0,
                           "skipped": 0}]
    assert len(results[1]) == 3 and all(r["label"] == "shoes" for r in results[1])
    top5 = [r["score"] for r in results[5]]
    assert len(top5) == 5 and top5 == sorted(top5, reverse=True)
    assert results[5][0]["label"] == results[4][0]["predicted_label"]
    joined = {r["category"]: r for r in results[-1]}
    assert len(joined) == 10 and joined["pants"]["washing"] == "40 C"
    assert joined["pants"]["predicted_label"] == "jean, blue jean, denim"


# -- each engine's forms, table-driven -------------------------------------------------------------
SQL_FUNCTIONS = {"predict", "predict_topk", "embed", "ml_predict"}


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT predict('m', data).label FROM t",
     "SELECT JSON_EXTRACT(PREDICT('m', data), '$.label') FROM t"),
    ("SELECT unnest(predict_topk('m', data, 3)) AS e FROM t WHERE id < 5",
     "SELECT sv_unnest_0_0.value AS e FROM t CROSS JOIN JSON_EACH(PREDICT_TOPK('m', t.data, 3)) "
     "AS sv_unnest_0_0 WHERE t.id < 5"),
    ("SELECT id, predict('m', data).confidence AS c FROM t JOIN u ON t.id = u.id",
     "SELECT id, JSON_EXTRACT(PREDICT('m', data), '$.confidence') AS c FROM t JOIN u ON t.id = u.id"),
    ("SELECT label, unnest(tags) FROM t", "SELECT label, unnest(tags) FROM t"),  # no function call
])
def test_sqlite_rewrites_struct_fields_and_unnest(sql: str, expected: str) -> None:
    from sqlvision.db.sqlite_rewrite import rewrite_for_sqlite

    assert rewrite_for_sqlite(sql, SQL_FUNCTIONS) == expected


@pytest.mark.parametrize(("kind", "value"), [
    ("duckdb", "{'label': 'cat', 'confidence': 0.5}"),
    ("sqlite", "'{\"label\": \"cat\", \"confidence\": 0.5}'"),
])
def test_struct_fields_read_in_each_engines_form(kind: str, value: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        b = db.backend
        got = b.query(f"SELECT {b.field(value, 'label')} AS a, {b.field(value, 'confidence')} AS b")
        assert got.to_pylist() == [{"a": "cat", "b": 0.5}]


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_literal_tables_read_alike_everywhere(kind: str, tmp_path: Path) -> None:
    from sqlvision.mlsql.tables import literal_table

    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        b = db.backend
        rows = [[None, 0.25, 3], ["it's \"odd\"", 1.0, 4]]
        table = literal_table(b, ["class", "score", "n"], rows)
        got = b.query(f"SELECT * FROM {table} AS t ORDER BY n").to_pylist()
        assert got == [{"class": None, "score": 0.25, "n": 3},
                       {"class": "it's \"odd\"", "score": 1.0, "n": 4}]
        empty = literal_table(b, ["class"], [])
        assert b.query(f"SELECT * FROM {empty} AS t").num_rows == 0
