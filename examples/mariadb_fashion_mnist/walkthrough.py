"""The MariaDB image-classification walk-through, end to end, with sqlvision.

Fashion-MNIST lives in MariaDB as the walk-through keeps it: PNG bytes in ``tf_images.img_blob``,
an integer ``img_label`` whose names are in ``categories``, and ``img_use`` (1 = training,
2 = testing) described in ``img_use``. The script loads that schema (``load``), explores it
with SQL (``explore``), then trains, evaluates and stores predictions through sqlvision with
the schema as it is: no copy, no renamed column.

    python examples/mariadb_fashion_mnist/walkthrough.py --db mysql://root@127.0.0.1/test

Every step is also one CLI command; the README beside this file lists them.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

import sqlvision as sv
from sqlvision.ingest.idx import FASHION_MNIST_CLASSES, read_idx

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "data" / "fashion-mnist"
BUNDLED = HERE.parents[1] / "src" / "sqlvision" / "sample" / "fashion-mnist"

# The walk-through's tables, as its article shows them.
SCHEMA = (
    "CREATE TABLE tf_images (img_label tinyint(4), img_vector blob, "
    "img_idx int(10) unsigned NOT NULL, img_blob blob, img_use tinyint(4)) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE img_use (use_id tinyint(4) NOT NULL AUTO_INCREMENT, "
    "use_name varchar(10) NOT NULL, use_desc varchar(100) NOT NULL, PRIMARY KEY (use_id)) "
    "ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE categories (class_idx tinyint(4) NOT NULL, class_name char(20) DEFAULT NULL, "
    "PRIMARY KEY (class_idx)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
)
COLUMNS = {"id_col": "img_idx", "image_col": "img_blob", "label_col": "img_label"}
LABEL_NAMES = "SELECT class_idx, class_name FROM categories"


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load(db: sv.Database, data: Path, train_rows: int | None, test_rows: int | None) -> None:
    """Create the walk-through's tables and fill them from the IDX files in ``data``."""
    b = db.backend
    for table in ("tf_images_predicted",):
        b.execute(f"DROP VIEW IF EXISTS {table}")
    for table in ("tf_images", "img_use", "categories"):
        b.execute(f"DROP TABLE IF EXISTS {table}")
    for ddl in SCHEMA:
        b.execute(ddl)
    b.executemany("INSERT INTO img_use (use_id, use_name, use_desc) VALUES (?, ?, ?)",
                  [(1, "Training", "The image is used for training the model"),
                   (2, "Testing", "The image is used for testing the model")])
    b.executemany("INSERT INTO categories VALUES (?, ?)", list(enumerate(FASHION_MNIST_CLASSES)))
    next_idx = 0
    for prefix, use, limit in (("train", 1, train_rows), ("t10k", 2, test_rows)):
        images = read_idx(str(data / f"{prefix}-images-idx3-ubyte.gz"))[:limit]
        labels = read_idx(str(data / f"{prefix}-labels-idx1-ubyte.gz"))[:limit]
        for start in range(0, len(images), 5000):
            chunk = slice(start, start + 5000)
            n = len(images[chunk])
            with b.transaction():
                b.insert("tf_images", pa.table({
                    # img_idx restarts at 0 per role in the article; here it stays unique
                    "img_idx": np.arange(next_idx, next_idx + n),
                    "img_label": labels[chunk].astype(np.int64),
                    "img_blob": [png(p) for p in images[chunk]],
                    "img_use": np.full(n, use),
                }))
            next_idx += n
    print(f"loaded {next_idx} images into tf_images")


def explore(db: sv.Database, out: Path) -> None:
    """The walk-through's queries, its bar chart and one image from its BLOB."""
    print(db.sql("SELECT use_name AS `Image Role`, use_desc AS `Description` FROM img_use").text())
    print(db.sql("SELECT class_name AS `Image Label`, "
                 "COUNT(CASE WHEN img_use = 1 THEN img_label END) AS `Training Images`, "
                 "COUNT(CASE WHEN img_use = 2 THEN img_label END) AS `Testing Images` "
                 "FROM tf_images INNER JOIN categories ON class_idx = img_label "
                 "GROUP BY class_name").text())
    db.stats("tf_images", plot=out / "labels.png", split_col="img_use", label_names=LABEL_NAMES,
             **COLUMNS)
    first_test = db.sql("SELECT min(img_idx) FROM tf_images WHERE img_use = 2").scalar()
    image = db.show("tf_images", first_test, out / "test-image.png", **COLUMNS)
    print(f"bar chart: {out / 'labels.png'}; first test image: {image}")


def train_and_evaluate(db: sv.Database, out: Path, epochs: int) -> float:
    """Train on img_use = 1, evaluate on img_use = 2, store the predictions back."""
    result = db.train("fashion", "tf_images", where="img_use = 1", label_names=LABEL_NAMES,
                      epochs=epochs, checkpoint_dir=out / "runs", **COLUMNS)
    print(f"model {result.bundle.ref}: validation accuracy "
          f"{result.bundle.metrics['val_accuracy']:.4f}")
    report = db.predict("fashion", "tf_images", where="img_use = 2", into_columns=True,
                        id_col="img_idx", image_col="img_blob")
    print(report.summary())
    ev = db.evaluate("fashion", "tf_images", where="img_use = 2", report=out / "report",
                     label_names=LABEL_NAMES, **COLUMNS)
    print(ev.text())
    print(db.sql("SELECT predicted_label, count(*) AS n, avg(confidence) AS mean_confidence "
                 "FROM tf_images_predicted WHERE img_use = 2 GROUP BY predicted_label "
                 "ORDER BY n DESC").text())
    return float(ev.accuracy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("SQLVISION_DB", "mysql://root@127.0.0.1/test"),
                        help="a MariaDB/MySQL URL (default: the local server's test database)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else BUNDLED,
                        help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--train-rows", type=int, help="use only the first N training images")
    parser.add_argument("--test-rows", type=int, help="use only the first N test images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("mariadb-walkthrough"))
    parser.add_argument("--skip-load", action="store_true", help="reuse the tables already loaded")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with sv.connect(args.db) as db:
        if db.backend.dialect != "mysql":
            print("this walk-through uses MariaDB's SQL: give a mysql:// or mariadb:// URL",
                  file=sys.stderr)
            return 2
        if not args.skip_load:
            load(db, args.data, args.train_rows, args.test_rows)
        explore(db, args.out)
        accuracy = train_and_evaluate(db, args.out, args.epochs)
    print(f"test accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
