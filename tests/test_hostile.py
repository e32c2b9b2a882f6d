"""The hostile-input catalogue: bad files, hostile names, credentials in URLs, unlucky users.

The rule every case checks: a bad item costs only itself, one user's data never reaches
another's, and what sqlvision records or prints is true. Cases come in tables (bad files,
hostile names, URLs with secrets) run on every engine they concern; the rest are one test each.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

import sqlvision as sv
from sqlvision.cli import build_parser, main
from sqlvision.db import parse_url
from sqlvision.db.url import redact_text
from sqlvision.imaging import decode, decode_array, probe
from sqlvision.models import registry
from sqlvision.preprocess import PreprocessSpec
from tests.conftest import BACKEND_PARAMS, REPO, SAMPLE, SERVER_URLS, fresh_database, image_bytes

SECRET = "hunter2-Zq9"


# -- helpers ---------------------------------------------------------------------------------------
def tiny_onnx(path: Path, classes: int = 2, channels: int = 1) -> Path:
    """A real ONNX classifier (global average pool, then a linear layer), built without torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(channels, classes)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.arange(classes, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def register_tiny(db: sv.Database, folder: Path, name: str = "tiny",
                  classes: tuple[str, ...] = ("cat", "dog")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("\n".join(classes) + "\n")
    db.import_model(name, tiny_onnx(folder / "tiny.onnx", len(classes)),
                    labels=str(folder / "labels.txt"), image_size=(8, 8), grayscale=True)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def corrupt_avif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, "AVIF")
    data = bytearray(buf.getvalue())
    data[-50:] = bytes(50)
    return bytes(data)


def avif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "blue").save(buf, "AVIF")
    return buf.getvalue()


def png16() -> bytes:
    """16-bit grayscale: a ramp over the whole 0-65535 range."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    return buf.getvalue()


def rotated_jpeg(fmt: str = "JPEG") -> bytes:
    """200x100 pixels stored, EXIF orientation 6: displayed 100 wide, 200 high."""
    img = Image.new("RGB", (200, 100), "red")
    img.paste((0, 0, 255), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif)
    return buf.getvalue()


needs_avif = pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")


# -- 1, 9: bad files cost only themselves ------------------------------------------------------------
def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _loop(path: Path) -> None:
    path.symlink_to(path.name)  # a link to itself


def _device(path: Path) -> None:
    path.symlink_to("/dev/null")


def _bytes(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data() if callable(data) else data)


# (file name, how to make it, what its error row says)
BAD_FILES = [
    *([("bad.jpg", _bytes(corrupt_avif), "cannot decode image")] if features.check("avif") else []),
    ("empty.png", _bytes(b""), "empty file"),
    ("text.jpg", _bytes(b"just some text, not an image"), "not an image"),
    ("cut.png", _bytes(lambda: image_bytes("PNG", (64, 64))[:200]), "truncated PNG"),
    ("huge.png", _bytes(lambda: image_bytes("PNG", (300, 300))), "file too large"),
    ("pipe.jpg", _fifo, "named pipe (FIFO)"),
    ("loop.jpg", _loop, "symlink loop"),
    ("null.jpg", _device, "character device"),
    ("dangling.jpg", lambda p: p.symlink_to("nowhere.jpg"), "broken symlink"),
    ("esc\x1b[31mape.jpg", _bytes(b"not an image either"), "not an image"),
]


def test_bad_files_cost_only_themselves(db: sv.Database, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mixed" / "cat"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"good_{i}.png").write_bytes(image_bytes("PNG", (32, 24), seed=i))
    expected = {}
    for name, make, reason in BAD_FILES:
        make(root / name)
        expected[name] = reason
    report = db.ingest("photos", tmp_path / "mixed", max_bytes=20_000, progress=False)
    assert report.added == 3
    rows = db.sql("SELECT path, reason FROM sv_ingest_errors WHERE table_name = 'photos'").fetchall()
    found = {os.path.basename(path): reason for path, reason in rows}
    for name, reason in expected.items():
        assert reason in found.get(name, ""), (name, found.get(name))
    assert len(rows) == len(expected)
    again = db.ingest("photos", tmp_path / "mixed", max_bytes=20_000, progress=False)
    assert (again.added, again.unchanged) == (0, 3)
    assert db.sql("SELECT count(*) FROM sv_ingest_errors").scalar() == len(expected)
    # printed names are escaped: a file name cannot write a terminal escape
    from sqlvision.cli import print_ingest_errors

    print_ingest_errors(report, limit=len(expected))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "esc\\x1b[31mape.jpg" in out


@needs_avif
def test_avif_is_read_not_ignored(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "sky").mkdir(parents=True)
    (tmp_path / "imgs" / "sky" / "blue.avif").write_bytes(avif())
    with sv.connect(tmp_path / "a.duckdb") as db:
        report = db.ingest("photos", tmp_path / "imgs", progress=False)
        assert (report.added, report.ignored) == (1, 0)
        assert db.sql("SELECT format, width, height FROM photos").fetchall() == [("AVIF", 40, 30)]


@needs_avif
@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_an_undecodable_row_costs_only_itself_in_predict_and_sql(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        root = tmp_path / "imgs" / "cat"
        root.mkdir(parents=True)
        for i in range(4):
            (root / f"{i}.png").write_bytes(image_bytes("PNG", (16, 16), mode="L", seed=i))
        db.ingest("photos", tmp_path / "imgs", progress=False)
        db.backend.execute("UPDATE photos SET data = ? WHERE id = 2", [corrupt_avif()])
        register_tiny(db, tmp_path / "model")
        report = db.predict("tiny", "photos", progress=False)
        assert report.predicted == 3 and [k for k, _ in report.failed] == [2]
        if kind == "duckdb":
            rows = db.sql("SELECT id, predict('tiny', data).label, predict('tiny', data).error, "
                          "predict_topk('tiny', data, 2) FROM photos ORDER BY id").fetchall()
        else:
            rows = db.sql("SELECT id, json_extract(predict('tiny', data), '$.label'), "
                          "json_extract(predict('tiny', data), '$.error'), "
                          "predict_topk('tiny', data, 2) FROM photos ORDER BY id").fetchall()
        assert [r[1] is None for r in rows] == [False, True, False, False]
        assert "cannot decode image" in rows[1][2] and rows[0][2] is None
        assert rows[1][3] is None and rows[0][3] is not None


# -- 2: one schema never sees another's catalog ------------------------------------------------------
@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own, so its ``public`` schema may be used."""
    psycopg = pytest.importorskip("psycopg")
    name = f"sv_iso_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(SERVER_URLS["postgresql"], autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable ({exc})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield SERVER_URLS["postgresql"].rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.server
def test_postgres_schema_catalogs_never_meet(own_pg_database: str, tmp_path: Path) -> None:
    with sv.connect(own_pg_database) as public:
        register_tiny(public, tmp_path / "m0", name="shared-name")
    for schema in ("a", "b"):
        with sv.connect(f"{own_pg_database}?schema={schema}") as db:
            with pytest.raises(sv.SqlvisionError, match="shared-name"):
                registry.load(db.backend, "shared-name")  # public's model is not seen here
            register_tiny(db, tmp_path / schema, name="shared-name")
            root = tmp_path / f"imgs_{schema}" / "cat"
            root.mkdir(parents=True)
            (root / "x.png").write_bytes(image_bytes("PNG", (16, 16), mode="L", seed=ord(schema)))
            db.ingest("photos", root.parent, progress=False)
            db.predict("shared-name", "photos", progress=False)
    with sv.connect(own_pg_database) as public:
        where = "table_name LIKE 'sv_%' OR table_name LIKE 'photos%'"
        placed = public.sql(f"SELECT table_schema, table_name FROM information_schema.tables "
                            f"WHERE {where} ORDER BY 1, 2").fetchall()
        assert ("public", "sv_models") in placed
        assert {t for s, t in placed if s == "a"} == {t for s, t in placed if s == "b"} >= {
            "sv_models", "sv_predictions", "photos", "photos_predicted"}
        versions = public.sql("SELECT table_schema, count(*) FROM (SELECT 'public' AS table_schema "
                              "FROM public.sv_models UNION ALL SELECT 'a' FROM a.sv_models "
                              "UNION ALL SELECT 'b' FROM b.sv_models) v GROUP BY 1 ORDER BY 1"
                              ).fetchall()
        assert versions == [("a", 1), ("b", 1), ("public", 1)]
        # each schema's view reads its own predictions table
        deps = public.sql(
            "SELECT DISTINCT vn.nspname, tn.nspname FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
            "JOIN pg_namespace vn ON vn.oid = v.relnamespace JOIN pg_class t ON t.oid = d.refobjid "
            "JOIN pg_namespace tn ON tn.oid = t.relnamespace "
            "WHERE v.relname = 'photos_predicted' AND t.relname = 'sv_predictions'").fetchall()
        assert sorted(deps) == [("a", "a"), ("b", "b")]


# -- 3: literals hold whatever the engine's string settings -----------------------------------------
HOSTILE_NAMES = ["rel_\\') p ON true; DROP TABLE victim; --", "it's", "back\\slash", 'dq"uote',
                 "%s%%y", "日本語の表", "tab\\tname"]
STRING_SETTINGS = {"postgresql": "SET standard_conforming_strings = off",
                   "mysql": "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"}


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_literals_mean_the_same_text_under_any_string_setting(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        settings = [None, STRING_SETTINGS.get(db.backend.dialect)]
        for setting in filter(None, settings[1:]):
            db.backend.execute(setting)
        for name in HOSTILE_NAMES:
            assert db.backend.scalar(f"SELECT {db.backend.quote_literal(name)}") == name


@pytest.mark.server
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_predicted_view_of_a_hostile_table_name_drops_nothing(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        db.backend.execute(STRING_SETTINGS[db.backend.dialect])
        db.backend.execute("CREATE TABLE victim (x INT)")
        hostile = HOSTILE_NAMES[0]
        root = tmp_path / "imgs" / "cat"
        root.mkdir(parents=True)
        (root / "x.png").write_bytes(image_bytes("PNG", (16, 16), mode="L"))
        db.ingest(hostile, root.parent, progress=False)
        register_tiny(db, tmp_path / "m")
        db.predict("tiny", hostile, progress=False)
        assert db.backend.table_exists("victim")
        view = db.backend.quote(f"{hostile}_predicted")
        assert db.sql(f"SELECT predicted_label FROM {view}").fetchall()[0][0] in ("cat", "dog")


# -- 4: names and keys are refused, never cut -------------------------------------------------------
@pytest.mark.server
def test_postgres_refuses_names_it_would_cut(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url, sv.connect(url) as db:
        root = tmp_path / "imgs" / "cat"
        root.mkdir(parents=True)
        (root / "x.png").write_bytes(image_bytes("PNG"))
        for name in ("画像" * 12 + "一", "画像" * 12 + "二"):  # 25 characters, 75 bytes each
            with pytest.raises(sv.SqlvisionError, match=r"75 bytes long.*63 bytes"):
                db.ingest(name, root.parent, progress=False)
        assert not [t for t in db.tables() if t.startswith("画")]
        db.ingest("画" * 21, root.parent, progress=False)  # 63 bytes: held whole
        assert [t for t in db.tables() if t.startswith("画")] == ["画" * 21]


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_a_path_too_long_to_index_costs_only_itself(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    deep = root / "cat"
    for i in range(12):  # about 2,900 characters: over MariaDB's 768 and PostgreSQL's 2,704 bytes
        deep = deep / (f"{i:02d}" + "d" * 238)
    deep.mkdir(parents=True)
    (deep / "far.png").write_bytes(image_bytes("PNG", seed=1))
    (root / "cat" / "near.png").write_bytes(image_bytes("PNG", seed=2))
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        for _ in range(2):  # the rerun does not fail on the row it could not store
            db.ingest("photos", root, progress=False)
        stored = db.sql("SELECT count(*) FROM photos").scalar()
        errors = db.sql("SELECT reason FROM sv_ingest_errors").fetchall()
        if db.backend.dialect in ("postgresql", "mysql"):
            assert stored == 1 and len(errors) == 1 and "path too long" in errors[0][0]
        else:
            assert stored == 2 and not errors


# -- 5: one rule for orientation and bit depth ------------------------------------------------------
def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    data = png16()
    assert probe(data).mode == "I;16"
    assert decode_array(data, "L").mean() == pytest.approx(127.5)  # was 254.5: white
    old = PreprocessSpec.from_dict({"height": 8, "width": 8, "mode": "L", "mean": [0.5],
                                    "std": [0.5]})
    assert old.decode_rule == 1 and old.decode(data).mean() > 250  # old models keep theirs
    assert PreprocessSpec.for_images(8, 8, "L").decode_rule == 2


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_everywhere(fmt: str, tmp_path: Path) -> None:
    data = rotated_jpeg(fmt)
    info = probe(data)
    assert (info.width, info.height, info.orientation) == (100, 200, 6)
    assert decode_array(data, "RGB").shape == (200, 100, 3)
    assert decode(data).size == (100, 200)
    old = PreprocessSpec.from_dict({"height": 400, "width": 400})
    assert old.decode(data).shape == (100, 200, 3)  # rule 1: pixels as stored
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    (tmp_path / "imgs" / "x" / f"r.{fmt.lower()}").write_bytes(data)
    with sv.connect(tmp_path / "o.duckdb") as db:
        db.ingest("photos", tmp_path / "imgs", progress=False)
        assert db.sql("SELECT width, height FROM photos").fetchall() == [(100, 200)]
        same = db.show("photos", 1, tmp_path / f"same.{fmt.lower()}")
        converted = db.show("photos", 1, tmp_path / "converted.bmp")
        with Image.open(converted) as img:
            assert decode(same.read_bytes()).size == img.size == (100, 200)


# -- 6: credentials are masked everywhere ------------------------------------------------------------
SECRET_URLS = [
    f"postgresql://user:{SECRET}@127.0.0.1:1/db",
    f"postgresql://user@127.0.0.1:1/db?password={SECRET}&sslmode=disable",
    f"postgresql://127.0.0.1:1/db?user=u&PassWord={SECRET}",
    f"mysql://root:{SECRET}@127.0.0.1:1/test",
    f"mysql://root:p%40ss:{SECRET}@127.0.0.1:1/test",
    f"duckdb:///x.duckdb?motherduck_token={SECRET}",
    f"postgresql://u@127.0.0.1:1/db?sslpassword={SECRET}",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_form_of_credential_is_printed(url: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    parsed = parse_url(url)
    assert SECRET not in parsed.redacted and "***" in parsed.redacted
    password = parsed.password or SECRET
    assert SECRET not in redact_text(f"could not connect to {url}: password {password} refused",
                                     url)
    if parsed.scheme == "duckdb":
        return
    code, out, err = cli(capsys, "sql", "SELECT 1", "--db", url)  # a closed port on 127.0.0.1
    assert code == 1 and SECRET not in out + err and ("cannot connect" in err or "option" in err)


@pytest.mark.server
def test_a_password_in_the_url_is_never_stored(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        base, _, schema = url.partition("?")
        url = base.replace("postgres@", f"postgres:{SECRET}@") + f"?{schema}&password={SECRET}"
        with sv.connect(url) as db:  # trust authentication: the password is not checked
            db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
            db.train("fm", "fashion", where="id % 40 = 0", epochs=1, arch="sv_cnn_small",
                     checkpoint_dir=tmp_path / "ck", progress=False, log=lambda _: None)
            stored = db.sql("SELECT * FROM sv_models").fetchall()
            assert SECRET not in repr(stored)
            runs = db.sql("SELECT * FROM sv_runs").fetchall()
            assert SECRET not in repr(runs)
        assert cli(capsys, "models", "export", "fm", "--out", str(tmp_path / "fm.svmodel"),
                   "--db", url)[0] == 0
        assert SECRET.encode() not in (tmp_path / "fm.svmodel").read_bytes()
        code, out, err = cli(capsys, "models", "show", "fm", "--db", url)
        assert code == 0 and SECRET not in out + err
        assert SECRET not in "".join(p.read_text(errors="replace") for p in
                                     (tmp_path / "ck").rglob("*") if p.suffix in (".json", ".csv"))


# -- 7: one pixel cap, a byte cap --------------------------------------------------------------------
def test_the_pixel_cap_is_the_one_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own check trips at 2,000
    data = image_bytes("PNG", (60, 60))  # 3,600 pixels
    assert decode(data, max_pixels=10_000).size == (60, 60)  # a raised cap lets it through
    with pytest.raises(sv.SqlvisionError, match=r"cap of 2,500 pixels.*--max-pixels"):
        decode(data, max_pixels=2500)
    monkeypatch.setenv("SQLVISION_MAX_PIXELS", "100")  # what --max-pixels sets, for every verb
    with pytest.raises(sv.SqlvisionError, match="cap of 100 pixels"):
        probe(data)
    with pytest.raises(sv.SqlvisionError, match="cap of 100 pixels"):
        PreprocessSpec.for_images(8, 8, "L")(data)


def test_every_verb_takes_max_pixels() -> None:
    parser = build_parser()
    for argv in (["predict", "m", "--table", "t"], ["train", "m", "--table", "t"],
                 ["evaluate", "m", "--table", "t"], ["embed", "m", "--table", "t"],
                 ["show", "t"], ["ingest", "t", "."]):
        assert parser.parse_args([*argv, "--max-pixels", "5"]).max_pixels == 5


# -- 10: ONNX with external data ---------------------------------------------------------------------
def test_onnx_with_external_data_is_stored_self_contained(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    export = tmp_path / "export"
    export.mkdir()
    plain = onnx.load(tiny_onnx(export / "plain.onnx"))
    onnx.save_model(plain, export / "model.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    (export / "labels.txt").write_text("cat\ndog\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the model's folder
    with sv.connect(tmp_path / "m.duckdb") as db:
        db.import_model("ext", export / "model.onnx", labels=str(export / "labels.txt"),
                        image_size=(8, 8), grayscale=True)
        shutil.rmtree(export)  # nothing may point back at the disk
        (tmp_path / "imgs" / "cat").mkdir(parents=True)
        (tmp_path / "imgs" / "cat" / "x.png").write_bytes(image_bytes("PNG", (16, 16), mode="L"))
        db.ingest("photos", tmp_path / "imgs", progress=False)
        assert db.predict("ext", "photos", progress=False).predicted == 1


# -- 9 and the first hour: smaller cases ------------------------------------------------------------
@pytest.mark.server
def test_mariadb_table_names_with_percent_signs(tmp_path: Path) -> None:
    with fresh_database("mariadb", tmp_path) as url, sv.connect(url) as db:
        root = tmp_path / "imgs" / "cat"
        root.mkdir(parents=True)
        for i in range(3):
            (root / f"{i}.png").write_bytes(image_bytes("PNG", seed=i))
        assert db.ingest("x_%s%%y", root.parent, progress=False).added == 3
        assert db.sql("SELECT count(*) FROM `x_%s%%y`").scalar() == 3


@pytest.mark.server
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_concurrent_writer_gets_a_message_not_a_driver_error(kind: str, tmp_path: Path) -> None:
    import pyarrow as pa

    from sqlvision.db import Column

    with fresh_database(kind, tmp_path) as url, sv.connect(url) as first, sv.connect(url) as second:
        first.backend.create_table("rows", [Column("id", "bigint", primary_key=True)])
        first.backend.insert("rows", pa.table({"id": [1, 2]}))
        with pytest.raises(sv.SqlvisionError, match=r"another sqlvision run.*rerun this command"):
            second.backend.insert("rows", pa.table({"id": [2, 3]}))  # what a second run writes


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_a_dotted_name_of_a_missing_schema_is_refused(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    (root / "x.png").write_bytes(image_bytes("PNG"))
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db, pytest.raises(
            sv.SqlvisionError, match="schema 'nosuch', which does not exist"):
        db.ingest("nosuch.photos", root.parent, progress=False)


def test_libtiff_writes_nothing_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "TIFF", compression="tiff_lzw", description="HELLOWORLD")
    data = bytearray(buf.getvalue())
    at = data.find(b"HELLOWORLD\x00")
    data[at + 10] = ord("X")  # an ASCII tag without its NUL: libtiff warns about it
    decode(bytes(data))
    probe(bytes(data))
    assert capfd.readouterr().err == ""


def test_read_verbs_refuse_a_database_file_that_is_not_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "photo.duckdb"
    for argv in (["sql", "SELECT 1"], ["stats", "photos"], ["tables"], ["models", "list"]):
        code, _, err = cli(capsys, *argv, "--db", str(typo))
        assert code == 1 and "photo.duckdb' does not exist" in err
    assert not typo.exists()


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_random_splits_are_stratified_and_validated(kind: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "imgs"
    for j, label in enumerate("abc"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i}.png").write_bytes(image_bytes("PNG", (8, 8), seed=10 * j + i))
    with fresh_database(kind, tmp_path) as url, sv.connect(url) as db:
        with pytest.raises(sv.SqlvisionError, match=r"add\s+up to 1"):
            db.ingest("photos", root, split="random:0.8,0.3", progress=False)
        db.ingest("photos", root, split="random:0.8,0.1,0.1", progress=False)
        counts = db.sql("SELECT label, split, count(*) FROM photos GROUP BY label, split").fetchall()
        assert sorted(counts) == sorted((lab, s, n) for lab in "abc" for s, n in
                                        (("test", 1), ("train", 8), ("validation", 1)))
        again = db.ingest("photos", root, split="random:0.5,0.5", progress=False)
        assert again.split_kept > 0 and "--resplit" in again.summary()
        moved = db.ingest("photos", root, split="random:0.5,0.5", resplit=True, progress=False)
        assert moved.resplit == again.split_kept
        assert db.sql("SELECT count(*) FROM photos WHERE split = 'validation'").scalar() == 15


def test_evaluate_defaults_to_the_test_split(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    seeds = iter(range(100))
    for split, n in (("train", 5), ("test", 3)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                (root / split / label / f"{i}.png").write_bytes(
                    image_bytes("PNG", (16, 16), mode="L", seed=next(seeds)))
    with sv.connect(tmp_path / "e.duckdb") as db:
        db.ingest("photos", root, progress=False)
        register_tiny(db, tmp_path / "m")
        ev = db.evaluate("tiny", "photos", progress=False)
        assert ev.rows == 6 and "test split" in ev.text().splitlines()[0]
        assert db.evaluate("tiny", "photos", where="split = 'train'", progress=False).rows == 10


def test_messages_say_what_is_true(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_url = str(tmp_path / "m.duckdb")
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    photo = tmp_path / "imgs" / "cat" / "photo.jpg"
    photo.write_bytes(image_bytes("JPEG", (16, 16)))
    assert cli(capsys, "ingest", "photos", str(tmp_path / "imgs"), "--db", db_url,
               "--no-progress")[0] == 0
    code, _, err = cli(capsys, "models", "import", "x", str(photo), "--db", db_url)
    assert code == 1 and "is not a model" in err and "plain ONNX" not in err
    code, _, err = cli(capsys, "show", "photos", "--id", "abc", "--db", db_url)
    assert code == 1 and "bad id 'abc'" in err and "Exception" not in err
    with sv.connect(db_url) as db:
        register_tiny(db, tmp_path / "m")
    code, _, err = cli(capsys, "similar", "tiny", "--table", "photos", "--image", "/nope.jpg",
                       "--db", db_url)
    assert code == 1 and "query image" in err and "--refresh" not in err


def test_the_same_seed_trains_the_same_model(tmp_path: Path) -> None:
    results = []
    for run in range(2):
        with sv.connect(tmp_path / f"r{run}.duckdb") as db:
            db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
            result = db.train("fm", "fashion", where="id % 20 = 0", epochs=1, arch="sv_cnn_small",
                              seed=3, checkpoint_dir=tmp_path / f"ck{run}", progress=False,
                              log=lambda _: None)
            timings = ("seconds", "images_per_second")
            results.append({k: v for k, v in result.bundle.metrics.items() if k not in timings})
    assert results[0] == results[1]


def test_every_verb_and_option_says_what_it_does() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not sub.description:
                        yield f"{path} {name}: no description"
                    yield from walk(sub, f"{path} {name}")
            elif not action.help:
                yield f"{path} {action.option_strings or action.dest}: no help"

    assert list(walk(build_parser(), "sqlvision")) == []


def test_setup_script_names_no_download_address() -> None:
    script = (REPO / "scripts" / "setup-services.sh").read_text()
    code = "\n".join(line.split("#")[0] for line in script.splitlines())
    assert "http://" not in code and "https://" not in code and "curl" not in code


def test_ctrl_c_in_train_says_to_resume(tmp_path: Path) -> None:
    import signal
    import time

    db = tmp_path / "k.duckdb"
    with sv.connect(db) as conn:
        conn.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
    # A suite started in the background of a non-interactive shell ignores SIGINT, and a
    # child inherits that: give the command the default disposition, as a terminal does.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sqlvision.cli", "train", "fm", "--table", "fashion",
             "--epochs", "30", "--arch", "sv_cnn_small", "--db", str(db), "--no-progress",
             "--checkpoint-dir", str(tmp_path / "ck")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch 1"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err
