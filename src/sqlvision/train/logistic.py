"""A classical model on a network's features (the Dataiku recipe): a logistic regression fitted
on a registered model's stored embeddings, folded into that network as its new classifier and
registered as an ordinary model, so ``predict`` and SQL ``predict()`` use it like any other."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.deps import require
from sqlvision.embed import embed_table, load_embeddings
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import weights_from_bytes
from sqlvision.tables import ImageTable, image_bytes
from sqlvision.train.rows import VALIDATION_SPLITS
from sqlvision.train.trainer import TrainResult


@dataclass
class LinearHead:
    """A fitted multinomial logistic regression as ``logits = features @ coef.T + intercept``
    (the feature standardization folded in), in the order of ``classes``."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray
    c: float = 1.0  # the inverse regularization it was fitted with

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.coef.T + self.intercept

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        predicted = np.asarray(self.classes)[self.logits(features).argmax(axis=1)]
        return float(np.mean(predicted == np.asarray(labels).astype(str)))

    def load_into(self, layer: Any) -> None:
        """Copy into a ``torch.nn.Linear`` of matching shape."""
        import torch

        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.coef.astype(np.float32)))
            layer.bias.copy_(torch.from_numpy(self.intercept.astype(np.float32)))


CANDIDATE_C = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
CV_FOLDS = 3


def fit_linear_head(features: np.ndarray, labels: np.ndarray, *, c: float | None = None,
                    seed: int = 0, classes: list[str] | None = None) -> LinearHead:
    """Logistic regression on standardized ``features``; the standardization is folded into
    the weights so the head computes exactly ``softmax(W (x - mean) / std + b)`` on raw features.

    ``c`` (inverse regularization) ``None``: chosen among :data:`CANDIDATE_C` by stratified
    3-fold cross-validation on these rows (validation rows are never looked at). ``classes``
    fixes the output order (every class must occur in ``labels``)."""
    labels = np.asarray(labels).astype(str)
    mean = features.mean(axis=0)
    std = np.maximum(features.std(axis=0), 1e-6)
    scaled = (features - mean) / std
    chosen = c if c is not None else choose_c(scaled, labels, seed)
    clf = _logistic(chosen, seed).fit(scaled, labels)
    fitted = [str(x) for x in clf.classes_]
    coef = clf.coef_ / std
    intercept = clf.intercept_ - coef @ mean
    if len(fitted) == 2:  # binary: one sigmoid row; as softmax logits that is [0, z]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    if classes is not None:
        if set(classes) != set(fitted):
            raise SqlvisionError(f"classes {sorted(set(classes) - set(fitted))} have no training "
                                 "rows", "every class needs labeled training rows")
        order = [fitted.index(name) for name in classes]
        coef, intercept, fitted = coef[order], intercept[order], list(classes)
    return LinearHead(fitted, coef, intercept, chosen)


def _logistic(c: float, seed: int) -> Any:
    require("sklearn", "train")
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


def choose_c(scaled: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """The candidate C with the best mean accuracy over stratified folds of these rows (1.0
    when a class has too few rows to fold)."""
    require("sklearn", "train")
    from sklearn.model_selection import StratifiedKFold

    _, counts = np.unique(labels, return_counts=True)
    if counts.min() < CV_FOLDS:
        return 1.0
    folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(scaled, labels))
    scores = [np.mean([_logistic(c, seed).fit(scaled[a], labels[a]).score(scaled[b], labels[b])
                       for a, b in folds]) for c in CANDIDATE_C]
    return float(CANDIDATE_C[int(np.argmax(scores))])


def fit_logistic_head(backend: Backend, name: str, base: str, table: ImageTable, *,
                      where: str | None = None, c: float | None = None, seed: int = 0,
                      progress: bool | None = None) -> TrainResult:
    """Fit a logistic regression on ``base``'s stored embeddings of ``table``'s training rows and
    register base network + this head as model ``name``: ``predict`` and ``predict()`` use it
    like any other model."""
    from sqlvision.models import architectures
    from sqlvision.models.export import bundle_from_torch
    from sqlvision.train.data import select_rows

    started = time.perf_counter()

    parent, parent_weights = registry.load_trainable(backend, base)
    embed_table(backend, parent.ref, table, where=where, progress=progress)
    selection = select_rows(backend, table, where)
    label_of = {k: lab for k, lab, s in zip(selection.ids, selection.labels, selection.splits,
                                           strict=True) if s not in ("test",)}
    split_of = dict(zip(selection.ids, selection.splits, strict=True))
    keys, matrix = load_embeddings(backend, parent, table.name, list(label_of))
    if not keys:
        raise SqlvisionError(f"no labeled, embedded rows in {table.name}", "check --where and labels")
    train = [i for i, k in enumerate(keys) if split_of[k] not in VALIDATION_SPLITS]
    val = [i for i, k in enumerate(keys) if split_of[k] in VALIDATION_SPLITS]
    labels = np.asarray([label_of[k] for k in keys])
    if len(set(labels[train])) < 2:
        raise SqlvisionError("the training rows have fewer than two labels",
                             "a classifier needs at least two")
    linear = fit_linear_head(matrix[train], labels[train], c=c, seed=seed)
    classes = linear.classes
    model = architectures.create(parent.architecture, len(parent.classes), parent.spec.channels)
    model.load_state_dict(weights_from_bytes(parent_weights))
    model.reset_classifier(len(classes))
    linear.load_into(model.get_classifier())
    metrics: dict[str, Any] = {"train_accuracy": linear.accuracy(matrix[train], labels[train]),
                               "train_rows": len(train), "val_rows": len(val), "head": "logistic",
                               "C": linear.c, "best_epoch": None}
    if val:
        metrics["val_accuracy"] = linear.accuracy(matrix[val], labels[val])
    q = backend.quote_column
    uri = q(table.uri) if table.uri else "NULL"
    sample_rows = backend.query(
        f"SELECT {q(table.image)}, {uri} FROM {backend.quote(table.name)} "
        f"WHERE {q(table.id)} IN ({', '.join('?' for _ in keys[:8])})", keys[:8])
    example = np.stack([parent.spec(image_bytes(d, u)) for d, u in
                        zip(*(c.to_pylist() for c in sample_rows.columns), strict=True)])
    bundle = bundle_from_torch(model, name=name, architecture=parent.architecture,
                               classes=classes, spec=parent.spec, example=example, metrics=metrics,
                               config={"head": "logistic", "C": linear.c, "from_model": parent.ref,
                                       "pretrained": bool(parent.config.get("pretrained"))},
                               lineage={"source_table": table.name, "where": where,
                                        "parent": parent.ref, "row_count": len(keys),
                                        "weights_source": parent.lineage.get("weights_source")})
    bundle.metrics["seconds"] = time.perf_counter() - started
    registry.save(backend, bundle)
    return TrainResult(bundle, [], "", None, None,
                       messages=[f"logistic regression on {len(train)} embeddings of {parent.ref}"])
