"""PL/Python ``predict()`` inside PostgreSQL against batch ``predict`` on the same rows, in one run.

    python benchmarks/plpython_predict.py [--rows 1000] [--repeat 3] [--pg postgresql://postgres@127.0.0.1/test]

On clothing-small JPEGs (../shared/data/clothing-small/train) with the ImageNet
EfficientNet-Lite0 classifier (224 px), in a schema of its own, round-robin, best of ``--repeat``:

* batch: ``Database.predict(recompute=True)`` (what ``sqlvision predict`` runs: rows streamed
  to this client, decoded and scored on a thread per core, results written to sv_predictions);
* SQL: ``SELECT id, predict('imagenet', data) FROM photos`` from a plain psycopg connection,
  the model already cached in that session (one backend process, one row per call);
* SQL in one session per core: the same statement split by ``id % N`` over N connections
  at once (PostgreSQL's own parallel query cannot run PL/Python functions that query: their
  SPI calls open subtransactions).

It also times the first call of a new session (its Python imports sqlvision and ONNX Runtime
and loads the model) and checks that both give the same labels.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlvision as sv
from sqlvision.db.plpython import install_functions

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def batch(url: str) -> tuple[float, dict[int, str]]:
    with sv.connect(url) as db:
        started = time.perf_counter()
        db.predict("imagenet", "photos", recompute=True, progress=False, log=lambda _: None)
        elapsed = time.perf_counter() - started
        labels = dict(db.sql("SELECT image_id, label FROM sv_predictions").fetchall())
    return elapsed, labels


def in_sql(connections: list[Any], schema: str) -> tuple[float, dict[int, str]]:
    """All rows through ``predict()``, split by ``id % len(connections)``, one thread each."""
    n = len(connections)
    parts: list[list[Any]] = [[] for _ in connections]

    def run(i: int) -> None:
        parts[i] = connections[i].execute(
            f'SELECT id, "{schema}".predict(\'imagenet\', data) FROM "{schema}".photos '
            "WHERE id %% %s = %s", [n, i]).fetchall()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if sum(map(len, parts)) == 0:
        raise RuntimeError("predict() returned no rows (see the errors above)")
    return elapsed, {i: p["label"] for part in parts for i, p in part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1/test")
    args = parser.parse_args()
    import psycopg

    photos = sorted((SHARED / "clothing-small" / "train").rglob("*.jpg"))[:args.rows]
    schema = f"sv_bench_{uuid.uuid4().hex[:8]}"
    url = f"{args.pg}?schema={schema}"
    try:
        with sv.connect(url) as db:
            db.ingest("photos", *photos, progress=False)
            db.register_imagenet("tf_efficientnet_lite0", "imagenet")
        print(install_functions(url, log=print).summary())
        with psycopg.connect(args.pg, autocommit=True) as fresh:
            started = time.perf_counter()
            fresh.execute(f'SELECT "{schema}".predict(\'imagenet\', data) FROM "{schema}".photos '
                          "LIMIT 1").fetchall()
            first_call = time.perf_counter() - started
        cores = os.cpu_count() or 2
        connections = [psycopg.connect(args.pg, autocommit=True) for _ in range(cores)]
        try:
            in_sql(connections[:1], schema), in_sql(connections, schema)  # warm: models cached
            best = {"batch": float("inf"), "sql": float("inf"), "sessions": float("inf")}
            for _ in range(args.repeat):
                t, batch_labels = batch(url)
                best["batch"] = min(best["batch"], t)
                t, sql_labels = in_sql(connections[:1], schema)
                best["sql"] = min(best["sql"], t)
                t, split_labels = in_sql(connections, schema)
                best["sessions"] = min(best["sessions"], t)
        finally:
            for con in connections:
                con.close()
        same = sum(batch_labels[i] == sql_labels[i] == split_labels[i] for i in batch_labels)
        n = len(photos)
        print(f"\n{n} photos, ImageNet EfficientNet-Lite0, best of {args.repeat}; first call of a "
              f"new session (imports + model load): {first_call:.2f} s")
        print("| contender | time | images/s | against batch |")
        print("| --- | --- | --- | --- |")
        for name, label in (("batch", "batch `Database.predict` (sqlvision predict)"),
                            ("sql", "`SELECT predict(...)` in PostgreSQL, one session"),
                            ("sessions", f"`SELECT predict(...)`, {cores} sessions at once")):
            print(f"| {label} | {best[name]:.2f} s | {n / best[name]:.1f} | "
                  f"{best['batch'] / best[name]:.2f}x |")
        print(f"labels equal on {same} of {len(batch_labels)} rows")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
