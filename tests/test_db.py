"""URLs, identifier quoting and the backend interface on real database files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import sqlvision as sv
from sqlvision.db import open_backend, parse_url
from sqlvision.db.base import Column
from sqlvision.db.identifiers import quote_name
from tests.conftest import SERVER_URLS


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("duckdb:///rel.duckdb", "duckdb", "rel.duckdb"),
        ("duckdb:////abs/x.duckdb", "duckdb", "/abs/x.duckdb"),
        ("duckdb://", "duckdb", ":memory:"),
        ("duckdb:///:memory:", "duckdb", ":memory:"),
        ("sqlite:///a.sqlite", "sqlite", "a.sqlite"),
        ("photos.sqlite", "sqlite", "photos.sqlite"),
        ("photos.duckdb", "duckdb", "photos.duckdb"),
    ],
)
def test_embedded_urls(url: str, scheme: str, path: str) -> None:
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.path) == (scheme, path)


def test_duckdb_url_options_are_duckdb_settings(tmp_path: Path) -> None:
    path = tmp_path / "opts.duckdb"
    with sv.connect(f"duckdb:///{path}?memory_limit=300MB&threads=1") as db:
        db.backend.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert db.sql("SELECT current_setting('threads')").scalar() == 1
        assert "286" in db.sql("SELECT current_setting('memory_limit')").scalar()  # 300 MB in MiB
        # spills go beside the database file, not into the working directory
        assert db.sql("SELECT current_setting('temp_directory')").scalar() == f"{path}.tmp"
    assert path.exists() and not (tmp_path / "opts.duckdb?memory_limit=300MB&threads=1").exists()
    with pytest.raises(sv.SqlvisionError, match=r"bad DuckDB option.*bogus"):
        sv.connect(f"duckdb:///{tmp_path / 'other.duckdb'}?bogus=1")
    with pytest.raises(sv.SqlvisionError, match="SQLite URLs take no options"):
        parse_url("sqlite:///a.sqlite?x=1")


def test_default_url_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLVISION_DB", raising=False)
    assert parse_url(None).raw == "duckdb:///sqlvision.duckdb"
    monkeypatch.setenv("SQLVISION_DB", "sqlite:///other.sqlite")
    assert parse_url(None).scheme == "sqlite"


def test_server_url_redacts_password() -> None:
    parsed = parse_url("postgresql://alice:s3cr%40t@db.example:5433/images")
    assert (parsed.scheme, parsed.host, parsed.port, parsed.user, parsed.database) == (
        "postgresql", "db.example", 5433, "alice", "images")
    assert parsed.password == "s3cr@t"
    assert "s3cr" not in parsed.redacted and ":***@" in parsed.redacted
    assert parse_url("mariadb://root@localhost/test").scheme == "mysql"


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(sv.SqlvisionError, match="duckdb://"):
        parse_url("oracle://x/y")


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("photos", '"photos"'),
        ("main.photos", '"main"."photos"'),
        ('we"ird', '"we""ird"'),
        ("x; DROP TABLE y; --", '"x; DROP TABLE y; --"'),
    ],
)
def test_quote_name(name: str, quoted: str) -> None:
    assert quote_name(name) == quoted


@pytest.mark.parametrize("name", ["", "a\x00b", "tab\tname", "x" * 64, "a..b", "a.b.c.d"])
def test_refused_names(name: str) -> None:
    with pytest.raises(sv.SqlvisionError):
        quote_name(name)


def test_backend_roundtrip(db_url: str) -> None:
    backend = open_backend(db_url)
    cols = [Column("id", "bigint", primary_key=True), Column("name", "text"),
            Column("payload", "blob"), Column("flag", "bool")]
    backend.create_table("t", cols)
    assert backend.table_exists("t") and not backend.table_exists("nope")
    assert backend.table_columns("t") == ["id", "name", "payload", "flag"]
    data = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "payload": [b"x", b"", None],
                     "flag": [True, False, None]})
    backend.insert("t", data)
    backend.update("t", "id", pa.table({"id": [2], "name": ["b"]}))
    rows = backend.query("SELECT id, name, payload FROM t ORDER BY id").to_pylist()
    assert rows == [{"id": 1, "name": "a", "payload": b"x"}, {"id": 2, "name": "b", "payload": b""},
                    {"id": 3, "name": "c", "payload": None}]
    streamed = [b.num_rows for b in backend.stream("SELECT * FROM t", batch_rows=2)]
    assert sum(streamed) == 3 and max(streamed) <= 2
    backend.close()


def test_transaction_rolls_back_on_error(db_url: str) -> None:
    backend = open_backend(db_url)
    backend.create_table("t", [Column("id", "bigint", primary_key=True)])
    def fail_half_way() -> None:
        with backend.transaction():
            backend.insert("t", pa.table({"id": [1, 2]}))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_half_way()
    assert backend.scalar("SELECT count(*) FROM t") == 0
    backend.close()


def test_sql_result_conversions(db: sv.Database) -> None:
    db.backend.execute("CREATE TABLE nums (n INTEGER, s TEXT)")
    db.backend.executemany("INSERT INTO nums VALUES (?, ?)", [(1, "a"), (2, "b")])
    result = db.sql("SELECT n, s FROM nums ORDER BY n")
    assert result.columns == ["n", "s"]
    assert result.fetchall() == [(1, "a"), (2, "b")]
    assert result.arrow().num_rows == 2
    assert list(result.df()["s"]) == ["a", "b"]
    assert db.sql("SELECT count(*) FROM nums WHERE n > ?", [1]).scalar() == 1
    assert "nums" in db.tables()


@pytest.mark.parametrize("url", ["postgresql://user:hunter2@127.0.0.1:1/x",
                                 "mysql://user:hunter2@127.0.0.1:1/x"])
def test_unreachable_server_is_one_clear_line_without_the_password(url: str) -> None:
    with pytest.raises(sv.SqlvisionError) as info:
        sv.connect(url)
    message = str(info.value)
    assert "hunter2" not in message and "user:***@127.0.0.1:1/x" in message
    assert message.startswith("cannot connect to") and "server is running" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_wrong_password_is_named_without_printing_it(kind: str) -> None:
    url = SERVER_URLS[kind].replace("://", "://sv_nobody:s3cret-pw@", 1).replace("postgres@", "")
    url = url.replace("root@", "")
    with pytest.raises(sv.SqlvisionError) as info:
        sv.connect(url)
    assert "s3cret-pw" not in str(info.value) and "sv_nobody:***@" in str(info.value)


_READER = """
import sys
from sqlvision.db import open_backend
reader = open_backend(sys.argv[1], read_only=True)
print(reader.scalar("SELECT count(*) FROM t"))
reader.close()
"""


def _count_in_another_process(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _READER, url], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("kind", ["duckdb", "sqlite"])
def test_other_processes_read_a_lent_database_file(kind: str, tmp_path: Path) -> None:
    """DuckDB lets no reader in while it holds its file, so the file is lent (detached) and
    taken back for writes; SQLite readers and the writer work at once (WAL)."""
    writer = open_backend(f"{kind}:///{tmp_path / ('db.' + kind)}")
    try:
        writer.execute("CREATE TABLE t (id INTEGER)")
        writer.execute("INSERT INTO t VALUES (1), (2)")
        reader = writer.reader_url()
        assert reader is not None and Path(reader.path).is_absolute()
        held = _count_in_another_process(str(reader.path))
        if writer.readers_block_writes:
            assert held.returncode != 0 and "cannot open DuckDB database" in held.stderr
        else:
            assert held.stdout.strip() == "2"
        with writer.lend_file():
            assert _count_in_another_process(str(reader.path)).stdout.strip() == "2"
            with writer.take_file_back():
                writer.execute("INSERT INTO t VALUES (3)")
            assert _count_in_another_process(str(reader.path)).stdout.strip() == "3"
        writer.execute("INSERT INTO t VALUES (4)")  # held again, tables and all
        assert writer.scalar("SELECT count(*) FROM t") == 4
    finally:
        writer.close()


def test_read_only_readers_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "ro.duckdb"
    with sv.connect(path) as db:
        db.backend.execute("CREATE TABLE t (id INTEGER)")
    for url in (str(path), f"sqlite:///{tmp_path / 'ro.sqlite'}"):
        if url.startswith("sqlite"):
            open_backend(url).execute("CREATE TABLE t (id INTEGER)")
        reader = open_backend(url, read_only=True)
        try:
            with pytest.raises(Exception, match=r"(?i)read.only|readonly"):
                reader.execute("INSERT INTO t VALUES (1)")
        finally:
            reader.close()
    with pytest.raises(sv.SqlvisionError, match="read-only"):
        open_backend("postgresql://postgres@127.0.0.1:1/x", read_only=True)
