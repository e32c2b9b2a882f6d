"""The Saturn Cloud + Snowflake walk-through (Dask inference on clothing photos), with sqlvision.

The walk-through keeps its photos in object storage and only their references in the database:
a directory-style table with FILE_URL, RELATIVE_PATH, SIZE and LAST_MODIFIED. It scores the
test table on a Dask cluster, then writes TYPE, CONFIDENCE and PRED_TIMESTAMP back into it.
Here the same table lives in PostgreSQL (any schema), the photos are files reached by
``file://`` URLs (an ``s3://`` listing works the same with s3fs), and:

1. ``load`` registers the photos in the walk-through's table ``clothing_test`` and ingests the
   training photos in reference mode (``clothing_train``);
2. ``train`` trains a classifier on them (``--small``: a quick small network);
3. ``predict ... --cluster local:2`` scores ``clothing_test`` on Dask, reading every photo from
   its URL on the workers, and writes ``predicted_label``, ``confidence`` and ``predicted_at``
   back into the table;
4. SQL reads them.

    python examples/dask_clothing/walkthrough.py --db "postgresql://postgres@127.0.0.1/test?schema=clothing"
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import pyarrow as pa

import sqlvision as sv

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "data" / "clothing-small"
BUNDLED = HERE.parents[1] / "src" / "sqlvision" / "sample" / "clothing"

# The walk-through's directory table, its column names as it shows them (lower case here).
SCHEMA = ("CREATE TABLE clothing_test (id BIGINT PRIMARY KEY, relative_path TEXT, file_url TEXT, "
          "size BIGINT, last_modified TIMESTAMP)")
COLUMNS = {"id_col": "id", "image_col": "file_url"}


def load(db: sv.Database, data: Path, test_split: str) -> int:
    """Register the test photos in ``clothing_test`` (references only) and ingest the training
    photos in reference mode; returns the number of test photos."""
    b = db.backend
    b.execute("DROP VIEW IF EXISTS clothing_test_predicted")
    b.execute("DROP TABLE IF EXISTS clothing_test")
    b.execute(SCHEMA)
    photos = sorted(p for p in (data / test_split).rglob("*") if p.is_file()
                    and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rows = pa.table({
        "id": list(range(1, len(photos) + 1)),
        "relative_path": [p.relative_to(data).as_posix() for p in photos],
        "file_url": [p.resolve().as_uri() for p in photos],
        "size": [p.stat().st_size for p in photos],
        "last_modified": [dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC).replace(tzinfo=None)
                          for p in photos],
    })
    b.insert("clothing_test", rows)
    print(db.ingest("clothing_train", data / "train", reference=True, progress=False).summary())
    return len(photos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="PostgreSQL URL (use ?schema=NAME)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir()
                        else BUNDLED, help="clothing photos in train/ and validation/ (or test/)")
    parser.add_argument("--cluster", default="local:2", help="Dask cluster (default local:2)")
    parser.add_argument("--small", action="store_true",
                        help="a small network for one epoch (fast), instead of the recipe's")
    args = parser.parse_args(argv)
    test_split = "test" if (args.data / "test").is_dir() else "validation"
    with sv.connect(args.db) as db:
        n = load(db, args.data, test_split)
        print(f"registered {n} {test_split} photos in clothing_test (file_url, relative_path, "
              "size, last_modified)")
        options = ({"arch": "sv_cnn_small", "epochs": 1, "image_size": (64, 64),
                    "pretrained": False} if args.small else {})
        result = db.train("clothes", "clothing_train", progress=False, log=print,
                          checkpoint_dir=Path("sqlvision-runs") / "clothes", **options)
        print(f"trained {result.bundle.ref}")
        report = db.predict("clothes", "clothing_test", cluster=args.cluster, into_columns=True,
                            progress=False, **COLUMNS)
        print(report.summary())
        query = ("SELECT relative_path, predicted_label AS type, round(confidence::numeric, 3) "
                 "AS confidence, predicted_at AS pred_timestamp FROM clothing_test ORDER BY id "
                 "LIMIT 5")
        print(query)
        print(db.sql(query))
        scored = db.sql("SELECT count(*) FROM clothing_test WHERE predicted_label IS NOT NULL"
                        ).scalar()
        right = db.sql("SELECT avg(CASE WHEN relative_path LIKE '%/' || predicted_label || '/%' "
                       "THEN 1.0 ELSE 0.0 END) FROM clothing_test").scalar()
        print(f"{scored} of {n} photos scored on Dask; accuracy against their folders: "
              f"{float(right):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
