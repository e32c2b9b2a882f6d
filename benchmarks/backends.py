"""Every backend against DuckDB on the same data, and each server's bulk path against executemany.

    python benchmarks/backends.py [--repeat 3] [--rows 1000]

- ingest: `sqlvision ingest` of ../shared/data/clothing-small/train (3,068 JPEGs) into a fresh
  database of each engine (DuckDB and SQLite files; a schema of the local PostgreSQL; a
  database of the local MariaDB);
- predict: `sqlvision predict` of the first --rows rows with a small CNN at 64 px (cheap
  inference, so the database path shows), end to end into sv_predictions;
- bulk writes: the same Arrow batch written by sqlvision's path (PostgreSQL: binary COPY;
  MariaDB: LOAD DATA LOCAL, and its multi-row INSERT fallback) and by the driver's executemany
  with one parameter row per row (what a hand-written loader does); once with image rows
  (the ingest shape), once with 50,000 prediction rows (the write-back shape).

Best of --repeat for each; ratios against DuckDB (ingest, predict) or executemany (bulk).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

import sqlvision as sv
from sqlvision.catalog import utcnow
from sqlvision.db.base import Column, arrow_schema
from sqlvision.models import registry
from sqlvision.models.architectures import create
from sqlvision.models.export import bundle_from_torch
from sqlvision.predict.batch import PREDICTION_COLUMNS
from sqlvision.preprocess import PreprocessSpec

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
POSTGRES = os.environ.get("SQLVISION_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB = os.environ.get("SQLVISION_BENCH_MARIADB", "mysql://root@127.0.0.1:3306/test")
ENGINES = ("duckdb", "sqlite", "postgresql", "mariadb")


@contextlib.contextmanager
def fresh(engine: str, folder: Path) -> Iterator[str]:
    """A URL to an empty database of ``engine``, removed afterwards."""
    name = f"sv_bench_{uuid.uuid4().hex[:10]}"
    if engine in ("duckdb", "sqlite"):
        yield f"{engine}:///{folder / (name + '.' + engine)}"
        return
    if engine == "postgresql":
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as admin:
            try:
                yield f"{POSTGRES}?schema={name}"
            finally:
                admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return
    import pymysql

    with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as admin, \
            admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        try:
            yield MARIADB.rsplit("/", 1)[0] + "/" + name
        finally:
            cur.execute(f"DROP DATABASE `{name}`")


def best_of(repeat: int, run: Callable[[], float]) -> float:
    """The smallest of ``repeat`` timings; ``run`` returns the seconds of the part measured."""
    return min(run() for _ in range(repeat))


def time_ingest(engine: str, folder: Path, images: Path) -> float:
    with fresh(engine, folder) as url, sv.connect(url) as db:
        start = time.perf_counter()
        db.ingest("photos", images, progress=False)
        return time.perf_counter() - start


def time_predict(engine: str, folder: Path, images: Path, rows: int) -> float:
    with fresh(engine, folder) as url, sv.connect(url) as db:
        db.ingest("photos", images, progress=False)
        classes = sorted(r[0] for r in db.sql("SELECT DISTINCT label FROM photos"))
        spec = PreprocessSpec(64, 64, "RGB", "crop")
        model = create("sv_cnn_small", len(classes), 3)
        example = np.stack([spec(r[0]) for r in db.sql("SELECT data FROM photos LIMIT 4")])
        registry.save(db.backend, bundle_from_torch(model, name="small", architecture="sv_cnn_small",
                                                    classes=classes, spec=spec, example=example))
        start = time.perf_counter()
        db.predict("small", "photos", where=f"id <= {rows}", progress=False)
        return time.perf_counter() - start


def image_batch(images: Path, n: int) -> pa.Table:
    files = sorted(str(p) for p in images.rglob("*.jpg"))[:n]
    return pa.table({"id": pa.array(range(1, len(files) + 1), pa.int64()),
                     "uri": files, "data": [Path(f).read_bytes() for f in files]})


IMAGE_COLUMNS = [Column("id", "bigint", primary_key=True), Column("uri", "key"),
                 Column("data", "blob")]
PREDICTION_ROWS = 50_000


def prediction_batch() -> pa.Table:
    """Rows shaped like sv_predictions (the write-back shape): small, many."""
    n = PREDICTION_ROWS
    rng = np.random.default_rng(0)
    data = {"source_table": ["photos"] * n, "image_id": list(range(n)), "model": ["m"] * n,
            "model_version": [1] * n, "label": [f"class{i % 10}" for i in range(n)],
            "confidence": rng.random(n).tolist(), "predicted_at": [utcnow()] * n}
    return pa.table(data, schema=arrow_schema(PREDICTION_COLUMNS[:6] + PREDICTION_COLUMNS[8:]))


def time_bulk(engine: str, folder: Path, batch: pa.Table, columns: list[Column], how: str) -> float:
    """Write ``batch`` into a fresh table by sqlvision's bulk path (``how``: sqlvision, or
    sqlvision-insert for MariaDB's INSERT fallback) or by the driver's executemany."""
    with fresh(engine, folder) as base:
        url = base + ("?local_infile=0" if how == "sqlvision-insert" else "")
        with sv.connect(url) as db:
            b = db.backend
            b.create_table("bulk", columns)
            names = ", ".join(b.quote_column(c) for c in batch.column_names)
            start = time.perf_counter()  # both start from the same Arrow batch
            if how.startswith("sqlvision"):
                with b.transaction():
                    b.insert("bulk", batch)
            else:  # the driver's executemany, one parameter row per row
                rows = list(zip(*(c.to_pylist() for c in batch.columns), strict=True))
                marks = ", ".join(["%s"] * batch.num_columns)
                with b.transaction(), b.con.cursor() as cur:  # type: ignore[attr-defined]
                    cur.executemany(f"INSERT INTO {b.quote('bulk')} ({names}) VALUES ({marks})",
                                    rows)
            elapsed = time.perf_counter() - start
            assert b.scalar(f"SELECT count(*) FROM {b.quote('bulk')}") == batch.num_rows
            return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "clothing-small" / "train")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1000, help="rows to predict")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--parts", default="ingest,predict,bulk")
    args = parser.parse_args()
    engines = args.engines.split(",")
    n_files = sum(1 for _ in args.images.rglob("*.jpg"))
    with tempfile.TemporaryDirectory(dir=os.environ.get("SQLVISION_BENCH_DIR")) as tmp:
        folder = Path(tmp)
        parts = args.parts.split(",")
        print(f"ingest: {n_files} JPEGs from {args.images}, best of {args.repeat}")
        ingest = {e: best_of(args.repeat, lambda e=e: time_ingest(e, folder, args.images))
                  for e in engines if "ingest" in parts}
        for e, s in ingest.items():
            print(f"  {e:<11} {s:7.3f} s  {n_files / s:8,.0f} files/s  "
                  f"{ingest['duckdb'] / s if 'duckdb' in ingest else float('nan'):5.2f}x DuckDB")
        print(f"predict: {args.rows} rows, sv_cnn_small at 64 px, best of {args.repeat}")
        pred = {e: best_of(args.repeat, lambda e=e: time_predict(e, folder, args.images, args.rows))
                for e in engines if "predict" in parts}
        for e, s in pred.items():
            print(f"  {e:<11} {s:7.3f} s  {args.rows / s:8,.0f} images/s  "
                  f"{pred['duckdb'] / s if 'duckdb' in pred else float('nan'):5.2f}x DuckDB")
        images = image_batch(args.images, n_files)
        mb = sum(len(x) for x in images.column("data").to_pylist()) / 2**20
        shapes = [(f"{images.num_rows} image rows ({mb:.0f} MiB)", images, IMAGE_COLUMNS),
                  (f"{PREDICTION_ROWS:,} prediction rows", prediction_batch(),
                   list(PREDICTION_COLUMNS[:6] + PREDICTION_COLUMNS[8:]))]
        for what, batch, columns in shapes if "bulk" in parts else []:
            print(f"bulk writes: {what} in one transaction, best of {args.repeat}")
            for e in (x for x in engines if x in ("postgresql", "mariadb")):
                has_bytes = "data" in batch.column_names
                paths = ([("binary COPY", "sqlvision")] if e == "postgresql" else
                         [("LOAD DATA LOCAL", "sqlvision"), ("multi-row INSERT", "sqlvision-insert")]
                         if has_bytes else [("multi-row INSERT", "sqlvision")])
                slow = best_of(args.repeat,
                               lambda e=e, b=batch, c=columns: time_bulk(e, folder, b, c, "executemany"))
                for label, how in paths:
                    fast = best_of(args.repeat, lambda e=e, b=batch, c=columns, h=how:
                                   time_bulk(e, folder, b, c, h))
                    print(f"  {e:<11} {label + ':':<18} {fast:6.3f} s, executemany: {slow:6.3f} s "
                          f"-> {slow / fast:5.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
