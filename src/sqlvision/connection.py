"""``Database``: the Python API. Each method mirrors a CLI verb of the same name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlvision.db import open_backend, parse_url
from sqlvision.db.base import Backend
from sqlvision.imaging import DEFAULT_MAX_PIXELS
from sqlvision.ingest import DEFAULT_MAX_BYTES, IngestReport
from sqlvision.result import Result
from sqlvision.tables import ImageTable


class Database:
    """A connection to one database: embedded DuckDB by default, SQLite, or a server."""

    def __init__(self, url: str | os.PathLike[str] | None = None) -> None:
        self.url = parse_url(url)
        self.backend: Backend = open_backend(self.url)
        self._models: Any = None  # SQL functions' model cache, set up on first use

    def __repr__(self) -> str:
        return f"Database({self.url.redacted!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.backend.close()

    # -- SQL -----------------------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> Result:
        """Run SQL and return its rows (``.arrow()``, ``.df()``, ``.fetchall()``).

        ``predict(model, image)``, ``predict_topk(model, image, k[, min_prob])`` and
        ``embed(model, image)`` work inside the query on DuckDB and SQLite; ``CREATE MODEL``,
        ``DROP MODEL`` and ``ML.PREDICT(MODEL m, (SELECT ...))`` and its kin on every engine
        (see :mod:`sqlvision.mlsql`).
        """
        from sqlvision import mlsql
        from sqlvision.predict.functions import models_in

        answer = mlsql.run(self, query, params or ())
        if answer is not None:
            return Result(answer)
        refs = models_in(query)
        if refs:
            query = self.register_functions(refs, query)
        return Result(self.backend.query(query, params or ()))

    def register_functions(self, refs: Sequence[str] = (), query: str = "") -> str:
        """Register the SQL functions on this connection and load the models ``refs`` (newer
        versions are picked up); returns ``query`` in the engine's form."""
        from sqlvision.predict import functions

        if self._models is None:
            cache = functions.ModelCache(self.backend)
            self.backend.install_functions(functions.sql_functions(cache))
            self._models = cache
        self._models.refresh(list(refs))
        return self.backend.adapt_query(query)

    def tables(self) -> list[str]:
        """The tables in the database, catalog tables (``sv_*``) included."""
        return self.backend.list_tables()

    def image_table(self, table: str, *, id_col: str | None = None, image_col: str | None = None,
                    label_col: str | None = None, split_col: str | None = None,
                    label_names: str | dict[Any, str] | None = None) -> ImageTable:
        """Describe ``table``'s image columns (defaults fit tables made by :meth:`ingest`);
        ``label_names`` maps label codes to class names (a dict, or a two-column query)."""
        return ImageTable.resolve(self.backend, table, id_col=id_col, image_col=image_col,
                                  label_col=label_col, split_col=split_col,
                                  label_names=label_names)

    # -- verbs ----------------------------------------------------------------------------------
    def ingest(self, table: str, *sources: str | os.PathLike[str], labels: str | None = None,
               split: str | None = None, seed: int = 0, reference: bool = False,
               refresh: bool = False, resplit: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, check: str = "header", workers: int | None = None,
               batch_rows: int = 2048, progress: bool | None = None) -> IngestReport:
        """Add images from folders, files, globs, URIs, labels files or IDX archives to ``table``.

        ``labels``: ``folder`` (class folders, the default), ``csv:PATH``, ``parquet:PATH``,
        ``regex:PATTERN`` with a ``label`` group, or ``none``. ``split``: ``folder`` (``train``,
        ``validation``/``val``, ``test`` folders), ``random:TRAIN,VAL,TEST`` seeded by ``seed``,
        or ``none``. ``reference`` stores uris and metadata only. Reruns add only what is new;
        ``refresh`` also re-reads changed files and flags missing ones; ``resplit`` gives stored
        rows the split this run's rule gives them (else they keep theirs). Bad files (corrupt, over
        ``max_pixels`` or ``max_bytes``) are skipped and recorded in ``sv_ingest_errors``.
        """
        from sqlvision.ingest import ingest

        return ingest(self.backend, table, [os.fspath(s) for s in sources], labels=labels,
                      split=split, seed=seed, reference=reference, refresh=refresh,
                      resplit=resplit,
                      max_pixels=max_pixels, max_bytes=max_bytes, check=check, workers=workers,
                      batch_rows=batch_rows, progress=progress)

    def train(self, name: str, table: str, *, where: str | None = None,
              checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
              progress: bool | None = None, log: Any = print, id_col: str | None = None,
              image_col: str | None = None, label_col: str | None = None,
              split_col: str | None = None, label_names: str | dict[Any, str] | None = None,
              **settings: Any) -> Any:
        """Train classifier ``name`` on ``table`` and register it as a new version in ``sv_models``.

        ``settings`` are :class:`sqlvision.train.TrainConfig` fields (``arch``, ``epochs``,
        ``batch_size``, ``lr``, ``augment``, ``from_model``, ``train_layers``, ...). Rows come
        from the ``split`` column (``train``; ``validation`` for validation; ``test`` is never
        used) or a seeded hold-out. Returns a :class:`sqlvision.train.TrainResult`.
        """
        from sqlvision.train import TrainConfig, Trainer

        spec = self.image_table(table, id_col=id_col, image_col=image_col, label_col=label_col,
                                split_col=split_col, label_names=label_names)
        if settings.pop("head", "network") == "logistic":
            from sqlvision.train.logistic import fit_logistic_head

            base = settings.get("from_model")
            if not base:
                from sqlvision.errors import SqlvisionError

                raise SqlvisionError("--head logistic fits on a model's embeddings",
                                     "name that model with --from")
            return fit_logistic_head(self.backend, name, base, spec, where=where,
                                     seed=settings.get("seed", 0), progress=progress)
        config = TrainConfig(**settings)
        trainer = Trainer(self.backend, name, spec, config, where=where,
                          checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, log=log)
        return trainer.fit()

    def predict(self, model: str, table: str, *, where: str | None = None,
                version: int | None = None, top_k: int = 5, min_prob: float = 0.0,
                recompute: bool = False, into_columns: bool = False, engine: str = "onnxruntime",
                device: str | None = None, batch_size: int | None = None, workers: int | None = None,
                progress: bool | None = None, id_col: str | None = None,
                image_col: str | None = None, cluster: Any = None, log: Any = print) -> Any:
        """Predict the rows of ``table`` into ``sv_predictions`` (one row per image and model
        version; already predicted rows are skipped unless ``recompute``). ``into_columns`` also
        writes ``predicted_label``, ``confidence`` and ``predicted_at`` into ``table``.
        ``cluster``: on Dask (``local``, ``local:N``, ``tcp://HOST:PORT`` or a ``Client``)."""
        from sqlvision.predict.batch import predict_table

        spec = self.image_table(table, id_col=id_col, image_col=image_col)
        return predict_table(self.backend, model, spec, where=where, version=version, top_k=top_k,
                             min_prob=min_prob, recompute=recompute, into_columns=into_columns,
                             engine=engine, device=device, batch_size=batch_size, workers=workers,
                             progress=progress, cluster=cluster, log=log)

    def evaluate(self, model: str, table: str, *, where: str | None = None,
                 version: int | None = None, k: int = 5,
                 report: str | os.PathLike[str] | None = None, engine: str = "onnxruntime",
                 progress: bool | None = None, id_col: str | None = None,
                 image_col: str | None = None, label_col: str | None = None,
                 label_names: str | dict[Any, str] | None = None) -> Any:
        """Accuracy, top-k accuracy, per-class precision/recall/F1 and the confusion matrix of
        ``model`` on the labeled rows of ``table``; ``report`` writes the HTML report there.
        ``label_names`` maps stored label codes to the model's class names."""
        from sqlvision.evaluate import evaluate

        spec = self.image_table(table, id_col=id_col, image_col=image_col, label_col=label_col,
                                label_names=label_names)
        return evaluate(self.backend, model, spec, where=where, version=version, k=k,
                        report_dir=report, engine=engine, progress=progress)

    def embed(self, model: str, table: str, *, where: str | None = None,
              version: int | None = None, recompute: bool = False, progress: bool | None = None,
              id_col: str | None = None, image_col: str | None = None, cluster: Any = None,
              log: Any = print) -> Any:
        """Store penultimate-layer vectors of ``table``'s rows in ``sv_embeddings``
        (``cluster``: on Dask, as for :meth:`predict`)."""
        from sqlvision.embed import embed_table

        spec = self.image_table(table, id_col=id_col, image_col=image_col)
        return embed_table(self.backend, model, spec, where=where, version=version,
                           recompute=recompute, progress=progress, cluster=cluster, log=log)

    def similar(self, model: str, table: str, image: str | bytes, k: int = 5, *,
                progress: bool | None = None, id_col: str | None = None,
                image_col: str | None = None) -> Result:
        """The ``k`` rows of ``table`` whose images are most similar to ``image`` (cosine)."""
        from sqlvision.embed import similar

        spec = self.image_table(table, id_col=id_col, image_col=image_col)
        return Result(similar(self.backend, model, spec, image, k, progress=progress))

    def model(self, name: str, version: int | None = None) -> Any:
        """The registered :class:`~sqlvision.models.bundle.ModelBundle` ``name`` (latest version)."""
        from sqlvision.models import registry

        return registry.load(self.backend, name, version)

    def import_model(self, name: str, path: str | os.PathLike[str], *, labels: str | None = None,
                     image_size: tuple[int, int] = (224, 224), mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, grayscale: bool = False,
                     resize: str = "crop", resampler: str | None = None) -> Any:
        """Register a ``.svmodel`` bundle, or an external ONNX classifier with ``labels`` (one class
        name per line) and its preprocessing, as the next version of ``name``."""
        from sqlvision.models.importing import import_model

        return import_model(self.backend, name, path, labels=labels, image_size=image_size,
                            mean=mean, std=std, grayscale=grayscale, resize=resize,
                            resampler=resampler)

    def register_imagenet(self, arch: str = "tf_efficientnet_lite0", name: str = "imagenet", *,
                          pretrained_file: str | None = None) -> Any:
        """Register ``arch`` with its ImageNet weights and 1,000 class names as the next version
        of ``name`` (weights: ``pretrained_file``, packaged, or timm's hub)."""
        from sqlvision.models.imagenet import register_imagenet

        return register_imagenet(self.backend, arch, name, pretrained_file=pretrained_file)

    def quantize(self, model: str, table: str, *, where: str | None = None,
                 eval_where: str | None = None, calibration_rows: int = 256,
                 eval_rows: int = 1000, force: bool = False, **columns: Any) -> Any:
        """Int8 version of ``model`` calibrated on ``table``'s ``where`` rows (default: its
        ``train`` split), compared with it on ``eval_where`` rows (default: ``validation``);
        registered when faster here, or with ``force``. Returns the comparison."""
        from sqlvision.models.quantize import quantize_model

        spec = self.image_table(table, **columns)
        split = self.backend.quote_column(spec.split) if spec.split else None
        if split and where is None:
            where = f"{split} = 'train'"
        if split and eval_where is None:
            eval_where = f"{split} IN ('validation', 'val', 'valid')"
        return quantize_model(self.backend, model, spec, where=where, eval_where=eval_where,
                              calibration_rows=calibration_rows, eval_rows=eval_rows, force=force)

    def models(self) -> Result:
        """Registered models, one row per version."""
        from sqlvision.models import registry

        return Result(registry.list_models(self.backend))

    def stats(self, table: str, *, where: str | None = None,
              plot: str | os.PathLike[str] | None = None, **columns: Any) -> Result:
        """Image counts per label (rows) and split (columns); ``plot`` also writes the bar chart."""
        from sqlvision.explore import label_split_counts, plot_counts

        spec = self.image_table(table, **columns)
        counts = label_split_counts(self.backend, spec, where)
        if plot is not None:
            plot_counts(counts, plot, f"{table}: images per label and split")
        return Result(counts)

    def show(self, table: str, image_id: Any, out: str | os.PathLike[str] | None = None,
             **columns: Any) -> Path:
        """Write one row's image to ``out`` (its own format unless the extension asks another)."""
        from sqlvision.explore import fetch_image, write_image

        spec = self.image_table(table, **columns)
        if isinstance(image_id, str) and image_id.strip().lstrip("-").isdigit():
            image_id = int(image_id)  # from the command line
        data, _ = fetch_image(self.backend, spec, image_id)
        return write_image(data, out, f"{table}-{image_id}")

    def contact_sheet(self, table: str, out: str | os.PathLike[str], *, per_label: int = 6,
                      where: str | None = None, thumb: int = 96, **columns: Any) -> Path:
        """Write a PNG grid of the first ``per_label`` images of each label."""
        from sqlvision.explore import contact_sheet

        spec = self.image_table(table, **columns)
        return contact_sheet(self.backend, spec, out, per_label=per_label, where=where,
                             thumb=thumb)


def connect(url: str | os.PathLike[str] | None = None) -> Database:
    """Open a database: ``None`` means ``$SQLVISION_DB``, else ``duckdb:///sqlvision.duckdb``."""
    return Database(url)
