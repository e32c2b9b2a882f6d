"""``sqlvision demo``: the whole flow on the bundled sample, in embedded DuckDB."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlvision.connection import connect
from sqlvision.result import format_table

SAMPLE = Path(__file__).parent / "sample"


def run_demo(workdir: str = "sqlvision-demo", url: str | None = None, epochs: int = 6) -> int:
    """Ingest the sample photos and Fashion-MNIST subset, explore, train, predict from SQL,
    evaluate; prints the test accuracy."""
    work = Path(workdir)
    if url is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        url = f"duckdb:///{work / 'demo.duckdb'}"
    else:
        work.mkdir(parents=True, exist_ok=True)
    print(f"sqlvision demo: database {url}")
    with connect(url) as db:
        for table, source in (("clothing", SAMPLE / "clothing"),
                              ("fashion", SAMPLE / "fashion-mnist")):
            report = db.ingest(table, source)
            print(report.summary())
            counts = db.stats(table, plot=work / f"{table}-stats.png")
            print(format_table(counts.arrow()))
            db.contact_sheet(table, work / f"{table}-sheet.png", per_label=8)
        print(db.sql("SELECT format, mode, count(*) AS images, round(avg(width)) AS avg_width, "
                     "round(avg(height)) AS avg_height FROM clothing GROUP BY ALL"))
        n_train = db.sql("SELECT count(*) FROM fashion WHERE split = 'train'").scalar()
        print(f"training fashion-cnn on {n_train} images ({epochs} epochs)...")
        result = db.train("fashion-cnn", "fashion", epochs=epochs,
                          checkpoint_dir=work / "runs" / "fashion-cnn")
        from sqlvision.train import run_summary

        print(run_summary(result))
        print("predicting from SQL:")
        query = ("SELECT id, label, predict('fashion-cnn', data).label AS predicted, "
                 "round(predict('fashion-cnn', data).confidence, 3) AS confidence "
                 "FROM fashion WHERE split = 'test' ORDER BY id LIMIT 5")
        print(f"  {query}")
        print(db.sql(query))
        acc, n = db.sql("SELECT avg(CASE WHEN predict('fashion-cnn', data).label = label THEN 1.0 "
                        "ELSE 0.0 END), count(*) FROM fashion WHERE split = 'test'").fetchall()[0]
        print(f"test accuracy of {result.bundle.ref} on {n} held-out images (from SQL): {acc:.4f}")
        report = db.predict("fashion-cnn", "fashion", where="split = 'test'")
        print(report.summary())
        evaluation = db.evaluate("fashion-cnn", "fashion", where="split = 'test'",
                                 report=work / "evaluation")
        print(f"evaluate: accuracy {evaluation.accuracy:.4f}, top-{evaluation.k} "
              f"{evaluation.top_k_accuracy:.4f}, macro F1 {evaluation.macro_f1:.4f}; report: "
              f"{evaluation.report}")
    print(f"charts, contact sheets, training curves and the evaluation report: {work}/")
    return 0
