"""Evaluation: a model's predictions on a labeled selection, against the labels.

Predictions go through ``sv_predictions`` (computed incrementally if missing), so every number
here can be recomputed from that table. Results: printed, stored in ``sv_evaluations``, and
written as an HTML report with the confusion matrix and the most confident mistakes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.deps import require
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.runtime import OnnxClassifier
from sqlvision.predict.batch import PREDICTIONS, predict_table
from sqlvision.tables import ImageTable, image_bytes

EVALUATIONS = "sv_evaluations"
EVALUATION_COLUMNS = (
    Column("model", "key", not_null=True),
    Column("model_version", "int", not_null=True),
    Column("source_table", "key", not_null=True),
    Column("where_clause", "text"),
    Column("row_count", "bigint"),
    Column("accuracy", "double"),
    Column("top_k_accuracy", "double"),
    Column("k", "int"),
    Column("per_class", "json"),
    Column("confusion", "json"),
    Column("evaluated_at", "timestamp"),
)


@dataclass
class Evaluation:
    """Metrics of one model version on one selection."""

    model: str
    table: str
    classes: list[str]
    rows: int
    accuracy: float
    top_k_accuracy: float
    k: int
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    macro_f1: float
    undecodable: int = 0
    unknown_labels: dict[str, int] = field(default_factory=dict)
    mistakes: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    selection: str = ""

    def text(self) -> str:
        """The printed report: headline numbers, per-class table, confusion matrix."""
        lines = [f"{self.model} on {self.table}: {self.rows} labeled images "
                 f"({self.selection or 'all rows'})",
                 f"accuracy {self.accuracy:.4f}, top-{self.k} accuracy {self.top_k_accuracy:.4f}, "
                 f"macro F1 {self.macro_f1:.4f}"]
        if self.undecodable:
            lines.append(f"{self.undecodable} rows could not be decoded (left out)")
        if self.unknown_labels:
            unknown = ", ".join(f"{k!r} ({v})" for k, v in sorted(self.unknown_labels.items()))
            lines.append(f"labels the model does not know, left out: {unknown}")
        width = max(len(c) for c in self.classes)
        lines.append(f"{'class':{width}s}  precision  recall  f1      support")
        for r in self.per_class:
            lines.append(f"{r['label']:{width}s}  {r['precision']:.4f}     {r['recall']:.4f}  "
                         f"{r['f1']:.4f}  {r['support']}")
        lines.append("confusion matrix (rows: true, columns: predicted, in the class order above):")
        lines += ["  " + " ".join(f"{v:5d}" for v in row) for row in self.confusion]
        return "\n".join(lines)


def evaluate(backend: Backend, model: str, table: ImageTable, *, where: str | None = None,
             version: int | None = None, k: int = 5, report_dir: str | os.PathLike[str] | None = None,
             engine: str = "onnxruntime", progress: bool | None = None) -> Evaluation:
    """Score ``model`` on the labeled rows of ``table`` matching ``where``."""
    require("sklearn", "train")
    if table.label is None:
        raise SqlvisionError(f"table {table.name!r} has no label column", "name it with --label-col")
    name, ref_version = registry.parse_ref(model)
    bundle = registry.load(backend, name, version or ref_version)
    where, selection = held_out_rows(backend, table, where)
    predict_table(backend, bundle.ref, table, where=where, top_k=max(k, 5), engine=engine,
                  progress=progress, bundle=bundle)
    q, qt = backend.quote_column, backend.quote(table.name)
    condition = f"WHERE {where}" if where else ""
    rows = backend.query(
        f"SELECT t.id AS id, t.truth AS truth, p.label AS predicted, p.confidence AS confidence, "
        f"p.top_k AS top_k FROM (SELECT {q(table.id)} AS id, {q(table.label)} AS truth FROM {qt} "
        f"{condition}) AS t JOIN {backend.quote(PREDICTIONS)} AS p ON p.image_id = t.id "
        "AND p.source_table = ? AND p.model = ? AND p.model_version = ? "
        "WHERE t.truth IS NOT NULL ORDER BY t.id", [table.name, bundle.name, bundle.version]
    ).to_pylist()
    evaluation = score_predictions(bundle.ref, list(bundle.classes), rows, table.label_of, k,
                                   source=table.name, selection=selection, where=where)
    store(backend, evaluation, bundle.name, bundle.version, where)
    if report_dir is not None:
        evaluation.report = write_report(backend, table, evaluation, Path(report_dir))
    return evaluation


def score_predictions(model: str, classes: list[str], rows: list[dict[str, Any]],
                      label_of: Any, k: int, *, source: str, selection: str = "",
                      where: str | None = None) -> Evaluation:
    """Metrics from prediction rows (``truth``, ``predicted``, ``confidence``, ``top_k`` as a
    list or JSON text); ``label_of`` turns a stored label into a class name. Rows whose label
    the model does not know, or that did not decode, are counted and left out."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    known = set(classes)
    undecodable = sum(1 for r in rows if r["predicted"] is None)
    unknown: dict[str, int] = {}
    scored = []
    for r in rows:
        if r["truth"] is None:
            continue
        label = str(label_of(r["truth"]))
        if label not in known:
            unknown[label] = unknown.get(label, 0) + 1
        elif r["predicted"] is not None:
            scored.append({**r, "truth": label})
    if not scored:
        if unknown:
            raise SqlvisionError(
                f"none of the labels of {source} are classes of {model} "
                f"(table: {sorted(unknown)[:5]}, model: {classes[:5]})",
                "evaluate on a table labeled with the model's classes, or map labels first")
        raise SqlvisionError(f"no labeled, decodable rows in {source}"
                             + (f" matching {where!r}" if where else ""), "check --where and labels")
    truth = [r["truth"] for r in scored]
    predicted = [r["predicted"] for r in scored]
    top_hits = [r["truth"] in [e["label"] for e in _entries(r["top_k"])[:k]] for r in scored]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=classes, zero_division=0)
    matrix = confusion_matrix(truth, predicted, labels=classes)
    return Evaluation(
        model=model, table=source, classes=classes, rows=len(scored),
        accuracy=float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)])),
        top_k_accuracy=float(np.mean(top_hits)), k=k,
        per_class=[{"label": c, "precision": float(p), "recall": float(r), "f1": float(f),
                    "support": int(s)} for c, p, r, f, s in zip(classes, precision, recall, f1,
                                                               support, strict=True)],
        confusion=matrix.tolist(), macro_f1=float(np.mean(f1)), undecodable=undecodable,
        unknown_labels=unknown, selection=selection,
        mistakes=sorted((r for r in scored if r["truth"] != r["predicted"]),
                        key=lambda r: -r["confidence"])[:16])


def _entries(top_k: Any) -> list[dict[str, Any]]:
    """A top-k list stored as JSON text, or given as a list."""
    if top_k is None:
        return []
    return json.loads(top_k) if isinstance(top_k, str | bytes) else list(top_k)


def held_out_rows(backend: Backend, table: ImageTable, where: str | None
                  ) -> tuple[str | None, str]:
    """The rows to evaluate and how to say which: ``where`` if given, else the test split, else
    the validation split (so training rows never count by default), else every row."""
    if where:
        return where, f"where {where}"
    if table.split is not None:
        column = backend.quote_column(table.split)
        for split in ("test", "validation"):
            condition = f"{column} = '{split}'"  # a constant: no quoting needed on any engine
            if backend.scalar(f"SELECT count(*) FROM {backend.quote(table.name)} WHERE {condition}"):
                return condition, f"the {split} split; --where chooses other rows"
    return None, "all rows: the table has no test or validation split"


def store(backend: Backend, ev: Evaluation, name: str, version: int | None, where: str | None) -> None:
    """Append the evaluation to ``sv_evaluations``."""
    if not backend.table_exists(EVALUATIONS):
        backend.create_table(EVALUATIONS, EVALUATION_COLUMNS)
    row = {"model": [name], "model_version": [version], "source_table": [ev.table],
           "where_clause": [where], "row_count": [ev.rows], "accuracy": [ev.accuracy],
           "top_k_accuracy": [ev.top_k_accuracy], "k": [ev.k],
           "per_class": [json.dumps(ev.per_class)],
           "confusion": [json.dumps({"classes": ev.classes, "matrix": ev.confusion})],
           "evaluated_at": [utcnow()]}
    with backend.transaction():
        backend.insert(EVALUATIONS, pa.table(row, schema=arrow_schema(EVALUATION_COLUMNS)))


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def confusion_png(ev: Evaluation) -> bytes:
    """The confusion matrix as a PNG heat map with counts."""
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ev.classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * n + 2), max(4.0, 0.6 * n + 1.5)))
    matrix = np.asarray(ev.confusion)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), ev.classes, rotation=45, ha="right")
    ax.set_yticks(range(n), ev.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black", fontsize=8)
    ax.set_title(f"{ev.model} on {ev.table}: accuracy {ev.accuracy:.3f}")
    fig.tight_layout()
    return _png(fig)


def mistakes_png(backend: Backend, table: ImageTable, ev: Evaluation) -> bytes | None:
    """A grid of the most confident mistakes: image, true label, predicted label, confidence."""
    if not ev.mistakes:
        return None
    require("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sqlvision.explore import fetch_image
    from sqlvision.imaging import decode

    cols = 4
    rows = (len(ev.mistakes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, ev.mistakes, strict=False):
        try:
            img = decode(fetch_image(backend, table, m["id"])[0], mode="RGB")
            ax.imshow(img)
        except SqlvisionError:
            ax.text(0.5, 0.5, "unreadable", ha="center")
        ax.set_title(f"#{m['id']} true: {m['truth']}\npred: {m['predicted']} ({m['confidence']:.2f})",
                     fontsize=8)
    fig.suptitle("most confident mistakes")
    fig.tight_layout()
    return _png(fig)


def write_report(backend: Backend, table: ImageTable, ev: Evaluation, folder: Path) -> Path:
    """``report.html`` (self-contained) plus ``confusion.png``, ``mistakes.png``, ``metrics.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    confusion = confusion_png(ev)
    (folder / "confusion.png").write_bytes(confusion)
    mistakes = mistakes_png(backend, table, ev)
    if mistakes:
        (folder / "mistakes.png").write_bytes(mistakes)
    (folder / "metrics.json").write_text(json.dumps(
        {k: v for k, v in ev.__dict__.items() if k not in ("report",)}, indent=2, default=str))

    def img(data: bytes) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    rows = "".join(f"<tr><td>{html.escape(r['label'])}</td><td>{r['precision']:.4f}</td>"
                   f"<td>{r['recall']:.4f}</td><td>{r['f1']:.4f}</td><td>{r['support']}</td></tr>"
                   for r in ev.per_class)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(ev.model)} on {html.escape(ev.table)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>{html.escape(ev.model)} on {html.escape(ev.table)}</h1>
<p>{ev.rows} labeled images: accuracy <b>{ev.accuracy:.4f}</b>, top-{ev.k} accuracy
{ev.top_k_accuracy:.4f}, macro F1 {ev.macro_f1:.4f}.
{f'{ev.undecodable} rows could not be decoded.' if ev.undecodable else ''}</p>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th>
<th>support</th></tr>{rows}</table>
<h2>Confusion matrix</h2>{img(confusion)}
{'<h2>Most confident mistakes</h2>' + img(mistakes) if mistakes else ''}
</body></html>"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def accuracy(backend: Backend, model: str, table: str, where: str = "1 = 1",
             image_col: str = "data", label_col: str = "label") -> tuple[float, int]:
    """Share of the rows of ``table`` matching ``where`` whose label the model predicts, and how
    many rows were scored, computed directly through ONNX Runtime (no tables written)."""
    name, version = registry.parse_ref(model)
    classifier = OnnxClassifier(registry.load(backend, name, version))
    q = backend.quote_column
    correct = total = 0
    for batch in backend.stream(f"SELECT {q(image_col)}, {q(label_col)} FROM {backend.quote(table)} "
                                f"WHERE {where}", batch_rows=512):
        labels = [str(v) for v in batch.column(1).to_pylist()]
        images = [image_bytes(v, None) for v in batch.column(0).to_pylist()]
        predicted = classifier.labels(classifier.predict_bytes(images))
        correct += sum(p == t for p, t in zip(predicted, labels, strict=True))
        total += len(labels)
    return correct / max(total, 1), total
