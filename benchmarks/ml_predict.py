"""``ML.PREDICT`` in SQL against batch ``predict``, on DuckDB, SQLite, PostgreSQL and MariaDB, in one run.

    python benchmarks/ml_predict.py [--rows 1000] [--repeat 2] [--engines duckdb sqlite postgresql mariadb]
        [--photo-engines duckdb sqlite postgresql mariadb] [--pg postgresql://postgres@127.0.0.1:5432/test]
        [--mariadb mysql://root@127.0.0.1:3306/test]

Two cases, the same rows on every engine:

* Fashion-MNIST: ``--rows`` test images of ../shared/data/fashion-mnist (t10k), scored by a
  small CNN (``sv_cnn_small``, one epoch on 3,000 of its training images in a scratch DuckDB,
  exported once as a ``.svmodel`` and imported into each engine with ``CREATE MODEL``);
* photos: ``--rows`` clothing-small JPEGs (every third of ../shared/data/clothing-small/train),
  scored by the packaged ImageNet EfficientNet-Lite0 (``register_imagenet``, 224 px).

For each engine, each repetition (best of ``--repeat``), on a fresh connection each for (a) and (b):

(a) ``Database.predict(model, table, where=...)`` from no stored predictions (``sv_predictions``
    emptied first): rows streamed to this client, scored in batches, written back;
(b) ``SELECT predicted_label, count(*) FROM ML.PREDICT(MODEL m, (SELECT id, data FROM t WHERE
    ...)) GROUP BY 1`` from the same cold state: on DuckDB and SQLite through the SQL function
    ``ml_predict`` in-process (SQLite: when the input is not one table's rows with their ids),
    else by scoring the missing rows into ``sv_predictions`` in batches and joining;
(c) the same statement again on the same connection (stored rows are reused; DuckDB scores
    again).

The servers' tables live in a schema (PostgreSQL) or database (MariaDB) of the script's own,
dropped at the end; the embedded engines' in files in a temporary folder
(``$SQLVISION_BENCH_DIR`` picks where). Checks that (a), (b) and (c) give the same label counts.
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sqlvision as sv
from backends import fresh  # the servers' scratch schema and database, made and dropped
from sqlvision.ingest.idx import read_idx

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
ENGINES = ("duckdb", "sqlite", "postgresql", "mariadb")
TRAIN_ROWS = 3000


def _quiet(_line: str) -> None:
    pass


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fashion_subset(folder: Path, rows: int) -> Path:
    """The first ``TRAIN_ROWS`` training and ``rows`` test images of Fashion-MNIST as IDX files
    (a folder named fashion-mnist, so ingest names the classes)."""
    out = folder / "fashion-mnist"
    out.mkdir()
    source = SHARED / "fashion-mnist"
    for prefix, n in (("train", TRAIN_ROWS), ("t10k", rows)):
        for kind, dims in (("images", 3), ("labels", 1)):
            array = read_idx(str(source / f"{prefix}-{kind}-idx{dims}-ubyte.gz"))[:n]
            _write_idx(out / f"{prefix}-{kind}-idx{dims}-ubyte.gz", array)
    return out


def clear(db: sv.Database) -> None:
    if "sv_predictions" in db.tables():
        db.sql("DELETE FROM sv_predictions")


def measure(url: str, model: str, table: str, where: str, repeat: int) -> dict[str, object]:
    """Best times of (a), (b), (c) and their label counts."""
    statement = (f"SELECT predicted_label, count(*) FROM ML.PREDICT(MODEL {model}, "
                 f"(SELECT id, data FROM {table} WHERE {where})) GROUP BY 1")
    best = {"a": float("inf"), "b": float("inf"), "c": float("inf")}
    counts: dict[str, dict[str, int]] = {}
    rows = 0
    for _ in range(repeat):
        with sv.connect(url) as db:
            clear(db)
            started = time.perf_counter()
            report = db.predict(model, table, where=where, progress=False, log=_quiet)
            best["a"] = min(best["a"], time.perf_counter() - started)
            rows = report.predicted
            counts["a"] = dict(db.sql(f"SELECT label, count(*) FROM sv_predictions WHERE model = "
                                      f"'{model}' GROUP BY 1").fetchall())
        with sv.connect(url) as db:
            clear(db)
            for step in ("b", "c"):
                started = time.perf_counter()
                answer = db.sql(statement).fetchall()
                best[step] = min(best[step], time.perf_counter() - started)
                counts[step] = {label: int(n) for label, n in answer}
    return {"rows": rows, "best": best, "counts": counts}


def prepare_fashion(url: str, subset: Path, bundle: Path, where: str) -> None:
    with sv.connect(url) as db:
        db.ingest("fashion", subset, progress=False)
        db.sql(f"CREATE MODEL fm OPTIONS(model_type='svmodel', model_path='{bundle}')")
        first = db.sql(f"SELECT min(id) FROM fashion WHERE {where}").scalar()
        # untimed warm-up on a few rows: imports, the predictions table, the page cache
        db.predict("fm", "fashion", where=f"{where} AND id < {first + 16}", progress=False,
                   log=_quiet)


def prepare_photos(url: str, photos: list[Path], where: str) -> None:
    with sv.connect(url) as db:
        db.ingest("photos", *photos, progress=False)
        db.register_imagenet("tf_efficientnet_lite0", "imagenet")
        first = db.sql(f"SELECT min(id) FROM photos WHERE {where}").scalar()
        db.predict("imagenet", "photos", where=f"{where} AND id < {first + 4}", progress=False,
                   log=_quiet)


def train_fashion(folder: Path, subset: Path) -> tuple[Path, float]:
    """Train ``fm`` once in a scratch DuckDB and export it; returns the bundle and test accuracy."""
    url = f"duckdb:///{folder / 'train.duckdb'}"
    with sv.connect(url) as db:
        db.ingest("fashion", subset, progress=False)
        db.train("fm", "fashion", epochs=1, arch="sv_cnn_small", batch_size=64, progress=False,
                 log=_quiet)
        accuracy = db.evaluate("fm", "fashion", where="split = 'test'", progress=False).accuracy
    bundle = folder / "fm.svmodel"
    subprocess.run([sys.executable, "-c", "import sys; from sqlvision.cli import main; "
                    "sys.exit(main())", "models", "export", "fm", "--out", str(bundle), "--db", url],
                   check=True, stdout=subprocess.DEVNULL)  # = sqlvision models export fm ...
    return bundle, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--photo-engines", nargs="*", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args()
    results: list[tuple[str, str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("SQLVISION_BENCH_DIR")) as tmp:
        folder = Path(tmp)
        subset = fashion_subset(folder, args.rows)
        started = time.perf_counter()
        bundle, accuracy = train_fashion(folder, subset)
        print(f"fm (sv_cnn_small, 1 epoch on {TRAIN_ROWS} images): trained and exported in "
              f"{time.perf_counter() - started:.1f} s, test accuracy {accuracy:.3f}", flush=True)
        where = "split = 'test'"
        for kind in args.engines:
            with fresh(kind, folder) as url:
                prepare_fashion(url, subset, bundle, where)
                results.append(("Fashion-MNIST, sv_cnn_small", kind,
                                measure(url, "fm", "fashion", where, args.repeat)))
                print(f"fashion on {kind}: done", flush=True)
        # every third photo, so all ten classes are in
        photos = sorted((SHARED / "clothing-small" / "train").rglob("*.jpg"))[::3][:args.rows]
        where = "id > 0"
        for kind in args.photo_engines:
            with fresh(kind, folder) as url:
                prepare_photos(url, photos, where)
                results.append(("clothing-small photos, EfficientNet-Lite0", kind,
                                measure(url, "imagenet", "photos", where, args.repeat)))
                print(f"photos on {kind}: done", flush=True)
    report(results, args.repeat)


def report(results: list[tuple[str, str, dict[str, object]]], repeat: int) -> None:
    print(f"\nbest of {repeat}; images/s (seconds)\n")
    print("| case | engine | rows | (a) `predict` | (b) `ML.PREDICT` cold | (c) `ML.PREDICT` warm "
          "| (b)/(a) | label counts (a) = (b) = (c) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    reference: dict[str, dict[str, int]] = {}
    for case, kind, result in results:
        n = int(result["rows"])  # type: ignore[call-overload]
        best: dict[str, float] = result["best"]  # type: ignore[assignment]
        counts: dict[str, dict[str, int]] = result["counts"]  # type: ignore[assignment]
        cells = [f"{n / best[s]:,.0f} ({best[s]:.2f} s)" for s in ("a", "b", "c")]
        if counts["a"] == counts["b"] == counts["c"]:
            agree = "yes"
        else:
            moved = sum(abs(counts["a"].get(k, 0) - counts["b"].get(k, 0))
                        for k in set(counts["a"]) | set(counts["b"])) // 2
            agree = f"**no**: {moved} rows move between labels"
        first = reference.setdefault(case, counts["a"])
        if first != counts["a"]:
            agree += " (differs from the first engine)"
        print(f"| {case} | {kind} | {n} | {' | '.join(cells)} | {best['a'] / best['b']:.2f}x "
              f"| {agree} |")


if __name__ == "__main__":
    main()
