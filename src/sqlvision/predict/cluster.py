"""Batch predict and embed on a Dask cluster: partitions by bytes, the model once per worker,
each partition's results committed once.

Where the bytes and the results go depends on the engine:

* PostgreSQL and MariaDB: every worker opens its own connection, streams its partition (an id
  range) and writes its results with the engine's bulk path, one transaction per partition.
  Workers may run on any machine that reaches the server.
* DuckDB and SQLite: the database is a file of this machine, and DuckDB lets one process write
  it (readers in other processes are locked out while it is open for writing), so this client
  reads each partition's rows, sends them with the task, and commits the results that come
  back. Workers only decode and score; a LocalCluster is the deployment that fits.

Exactly once: a partition reads only its rows that have no result for this model version yet,
and commits all its results in one transaction; the results table's primary key
(source_table, image_id, model, model_version) is the backstop. A partition that Dask retries
after its worker was killed redoes only what had not been committed, and a rerun after a killed
client predicts only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlvision.db.base import Backend
from sqlvision.deps import require
from sqlvision.errors import MissingDependencyError, SqlvisionError
from sqlvision.models.bundle import ModelBundle
from sqlvision.tables import ImageTable

#: modules a worker needs to score (the ``train`` extra brings them)
WORKER_MODULES = ("onnxruntime", "numpy", "PIL")
PARTITION_BYTES = 64 << 20  # a partition's images, about; at least a few partitions per worker
PARTITIONS_PER_WORKER = 4
CONNECT_TIMEOUT = "5s"  # to reach a scheduler


@dataclass(frozen=True)
class ClusterJob:
    """What every partition task needs, small enough to send with each task: the model travels
    as (name, version, content hash), never as a pickled model."""

    kind: str  # "predict" or "embed"
    url: str  # the database URL, for workers that connect themselves (server engines)
    table: ImageTable
    model: str
    version: int
    onnx_sha256: str
    pending: str  # SQL condition: rows of the table still without a result
    pending_params: tuple[Any, ...]
    top_k: int = 5
    min_prob: float = 0.0

    @property
    def workers_connect(self) -> bool:
        """Whether workers read and write the database themselves."""
        from sqlvision.db import parse_url

        return parse_url(self.url).scheme in ("postgresql", "mysql")


@dataclass
class Outcome:
    """What the partitions did, added up by the client."""

    done: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    partitions: int = 0


# -- the client side ----------------------------------------------------------------------------------
@contextlib.contextmanager
def open_cluster(cluster: Any, log: Any = print) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster``: ``local`` or ``local:N`` (a LocalCluster of N
    worker processes, one thread each, closed afterwards), a scheduler address
    (``tcp://host:port``), or a ``Client`` to use as it is."""
    require("distributed", "dask")
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        yield cluster
        return
    text = str(cluster)
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if count and not count.isdigit():
            raise SqlvisionError(f"bad --cluster {text!r}", "use local, local:N or tcp://HOST:PORT")
        from sqlvision.parallel import cpu_count

        with LocalCluster(n_workers=int(count or cpu_count()), threads_per_worker=1,
                          processes=True, dashboard_address=":0", silence_logs=40) as local, \
                Client(local) as client:
            _announce(client, log)
            yield client
        return
    if "://" not in text:
        raise SqlvisionError(f"bad --cluster {text!r}", "use local, local:N or tcp://HOST:PORT")
    try:
        client = Client(text, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise SqlvisionError(f"cannot reach the Dask scheduler at {text}: {exc}",
                             "check the address and that the scheduler is running") from None
    with client:
        _announce(client, log)
        yield client


def _announce(client: Any, log: Any) -> None:
    workers = len(client.scheduler_info().get("workers", {}))
    import importlib.util

    link = client.dashboard_link
    served = "" if importlib.util.find_spec("bokeh") else " (served once bokeh is installed)"
    log(f"dask: {workers} workers at {client.scheduler.address}; dashboard {link}{served}")


def check_workers(client: Any) -> None:
    """Every worker can import what scoring needs, else the install command to run there."""
    missing = {addr: found for addr, found in client.run(_missing_modules).items() if found}
    if missing:
        address, modules = next(iter(missing.items()))
        raise MissingDependencyError(
            f"{len(missing)} Dask worker(s) lack {', '.join(modules)} (e.g. {address})",
            'pip install "sqlvision[train]" on the workers')


def _missing_modules() -> list[str]:
    import importlib

    missing = []
    for module in WORKER_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def byte_partitions(backend: Backend, job: ClusterJob, parts: int,
                    target_bytes: int = PARTITION_BYTES) -> list[tuple[int, int, int]]:
    """``(first_id, last_id, rows)`` ranges of the pending rows holding about equal stored
    bytes (the image column's length, read without the images): at least ``parts`` of them,
    more when that leaves any over ``target_bytes``."""
    table = job.table
    q, qt = backend.quote_column, backend.quote(table.name)
    sizes = backend.query(
        f"SELECT {q(table.id)}, coalesce({backend.byte_length(q(table.image))}, 0) FROM {qt} "
        f"WHERE {job.pending} ORDER BY {q(table.id)}", list(job.pending_params))
    ids, lengths = sizes.column(0).to_pylist(), sizes.column(1).to_pylist()
    if not ids:
        return []
    total = sum(lengths)
    count = max(parts, -(-total // target_bytes) if target_bytes else parts)
    count = min(count, len(ids))
    share = max(1, total / count)
    out: list[tuple[int, int, int]] = []
    start, held = 0, 0
    for i, size in enumerate(lengths):
        held += size or 1
        last = i == len(ids) - 1
        if last or (held >= share and len(out) < count - 1):
            out.append((int(ids[start]), int(ids[i]), i - start + 1))
            start, held = i + 1, 0
    return out


def run_job(backend: Backend, client: Any, job: ClusterJob, bundle: ModelBundle,
            writer: Any, bar: Any, target_bytes: int | None = None) -> Outcome:
    """Run ``job`` over its partitions on ``client``'s workers; ``writer(keys, outputs,
    failed)`` commits one partition's results when the client writes (embedded engines)."""
    from distributed import as_completed

    check_workers(client)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    ranges = byte_partitions(backend, job, workers * PARTITIONS_PER_WORKER,
                             target_bytes or PARTITION_BYTES)
    outcome = Outcome(partitions=len(ranges))
    if not ranges:
        return outcome
    model = None if job.workers_connect else client.scatter(bundle, broadcast=True)
    pending = iter(ranges)

    submitted: list[Any] = []

    def submit() -> Any:
        """The next partition's task, or None. Embedded engines send the rows with the task, so
        only a window of partitions is read ahead: memory stays bounded by it."""
        part = next(pending, None)
        if part is None:
            return None
        lo, hi, _ = part
        if model is None:
            future = client.submit(score_partition, job, lo, hi, pure=False)
        else:
            future = client.submit(score_rows_of, job, model,
                                   _partition_rows(backend, job, lo, hi), pure=False)
        submitted.append(future)
        return future

    window = 2 * workers if model is not None else len(ranges)
    futures = as_completed([f for f in (submit() for _ in range(window)) if f is not None])
    try:
        for future in futures:
            result = future.result()
            if model is not None:
                keys, outputs, failed = result
                writer(keys, outputs, failed)
                result = (len(keys), failed)
            done, failed = result
            outcome.done += done
            outcome.failed.extend(failed)
            bar.update(done + len(failed))
            if (following := submit()) is not None:
                futures.add(following)
    except BaseException:
        client.cancel(submitted)
        raise
    return outcome


def _partition_rows(backend: Backend, job: ClusterJob, lo: int, hi: int) -> list[tuple[Any, ...]]:
    """The pending rows of one id range, as ``(id, data, uri)``: what an embedded engine's client
    sends with the task."""
    sql, params = partition_query(backend, job, lo, hi)
    rows = backend.query(sql, params)
    return list(zip(*(rows.column(i).to_pylist() for i in range(3)), strict=True))


def partition_query(backend: Backend, job: ClusterJob, lo: int, hi: int) -> tuple[str, list[Any]]:
    """The pending rows with ids in ``[lo, hi]``: id, image bytes, uri."""
    table = job.table
    q, qt = backend.quote_column, backend.quote(table.name)
    uri = q(table.uri) if table.uri else "NULL"
    return (f"SELECT {q(table.id)}, {q(table.image)}, {uri} FROM {qt} WHERE {job.pending} "
            f"AND {q(table.id)} BETWEEN ? AND ? ORDER BY {q(table.id)}",
            [*job.pending_params, lo, hi])


# -- the worker side ------------------------------------------------------------------------------------
_lock = threading.RLock()  # the classifier loader opens the backend under it
_classifiers: dict[tuple[str, str, int, str], Any] = {}
_backends: dict[str, Backend] = {}


def _worker_backend(url: str) -> Backend:
    """This worker's connection to ``url`` (opened once per worker process)."""
    from sqlvision.db import open_backend

    with _lock:
        if url not in _backends:
            _backends[url] = open_backend(url)
        return _backends[url]


def _worker_classifier(job: ClusterJob, bundle: ModelBundle | None) -> Any:
    """The model of ``job``, loaded once per worker process and kept by its content hash."""
    from sqlvision.models import registry
    from sqlvision.models.runtime import load_classifier

    key = (job.url, job.model, job.version, job.onnx_sha256)
    with _lock:
        if key not in _classifiers:
            if bundle is None:
                bundle = registry.load(_worker_backend(job.url), job.model, job.version,
                                       weights=False)
            if hashlib.sha256(bundle.onnx).hexdigest() != job.onnx_sha256:
                raise SqlvisionError(f"model {job.model}:{job.version} changed during the run",
                                     "rerun the command")
            _classifiers[key] = load_classifier(bundle)
        return _classifiers[key]


def _scored(classifier: Any, job: ClusterJob, rows: Any) -> Iterator[Any]:
    from sqlvision.predict.stream import score_rows

    return score_rows(classifier, rows, features=job.kind == "embed", workers=1)


def score_rows_of(job: ClusterJob, bundle: ModelBundle, rows: list[tuple[Any, ...]]
                  ) -> tuple[list[Any], Any, list[tuple[Any, str]]]:
    """Score rows the client sent (embedded engines); the client writes the results."""
    import numpy as np

    classifier = _worker_classifier(job, bundle)
    keys: list[Any] = []
    outputs: list[Any] = []
    failed: list[tuple[Any, str]] = []
    for group in _scored(classifier, job, rows):
        keys.extend(group.keys)
        if group.keys:
            outputs.append(group.outputs)
        failed.extend(group.failed)
    return keys, (np.concatenate(outputs) if outputs else np.zeros((0, 1), np.float32)), failed


def score_partition(job: ClusterJob, lo: int, hi: int) -> tuple[int, list[tuple[Any, str]]]:
    """Read, score and write one id range on a worker (server engines), in one transaction."""
    from sqlvision.embed import write_embeddings
    from sqlvision.predict.batch import write_predictions
    from sqlvision.predict.stream import table_rows

    backend = _worker_backend(job.url)
    classifier = _worker_classifier(job, None)
    bundle = classifier.bundle
    sql, params = partition_query(backend, job, lo, hi)
    done, failed = 0, []
    with backend.transaction():  # the partition commits whole, or not at all
        for group in _scored(classifier, job, table_rows(backend, sql, params)):
            if job.kind == "embed":
                write_embeddings(backend, job.table.name, bundle, group.keys, group.outputs)
            else:
                write_predictions(backend, job.table.name, bundle, group.keys, group.outputs,
                                  group.failed, job.top_k, job.min_prob)
            done += len(group.keys)
            failed.extend(group.failed)
    return done, failed


def check_cluster_engine(engine: str, device: str | None) -> None:
    """Workers score with ONNX Runtime on their CPUs: refuse a run that asks for another engine
    or device rather than silently ignoring it."""
    if engine != "onnxruntime" or device not in (None, "cpu", "auto"):
        raise SqlvisionError(
            "on a cluster the workers score with ONNX Runtime on their CPUs; "
            f"--engine {engine}{f' --device {device}' if device else ''} is not used there",
            "leave --engine and --device out with --cluster, or run without --cluster")


def on_cluster(backend: Backend, cluster: Any, kind: str, table: ImageTable, bundle: ModelBundle,
               pending: str, pending_params: Any, writer: Any, bar: Any, *, top_k: int = 5,
               min_prob: float = 0.0, log: Any = print) -> Outcome:
    """Predict or embed (``kind``) the ``pending`` rows of ``table`` on ``cluster``."""
    assert bundle.version is not None
    job = ClusterJob(kind, backend.url.raw, table, bundle.name, bundle.version,
                     hashlib.sha256(bundle.onnx).hexdigest(), pending, tuple(pending_params),
                     top_k, min_prob)
    with open_cluster(cluster, log) as client:
        return run_job(backend, client, job, bundle, writer, bar)
