"""Batch predict and embed on a Dask cluster: partitions by bytes, the model once per worker,
each partition's results committed once.

Where the bytes and the results go depends on the engine:

* PostgreSQL and MariaDB: every worker opens its own connection, streams its partition (an id
  range) and writes its results with the engine's bulk path, one transaction per partition.
  Workers may run on any machine that reaches the server.
* DuckDB and SQLite: the database is a file of this machine. Workers that reach the file (a
  LocalCluster, or workers on this machine) open it read-only and read their partitions
  themselves; this client writes the results that come back (one writer). SQLite's WAL lets
  readers and the writer work at once. DuckDB gives its file to one process while that one may
  write, so the client lends it for the run (it detaches the file) and takes it back for each
  commit, under a Dask lock that the readers hold while they read. Workers that cannot reach
  the file get their rows from the client with the task.

Exactly once: a partition reads only its rows that have no result for this model version yet,
and commits all its results in one transaction; the results table's primary key
(source_table, image_id, model, model_version) is the backstop. A partition that Dask retries
after its worker was killed redoes only what had not been committed, and a rerun after a killed
client predicts only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlvision.db.base import Backend
from sqlvision.db.url import DatabaseURL
from sqlvision.deps import require
from sqlvision.errors import MissingDependencyError, SqlvisionError
from sqlvision.models.bundle import ModelBundle
from sqlvision.tables import ImageTable

#: modules a worker needs to score (the ``train`` extra brings them)
WORKER_MODULES = ("onnxruntime", "numpy", "PIL")
PARTITION_BYTES = 64 << 20  # the most images a partition holds, about
GUIDED_SHARE = 2  # a partition holds what is left / (this x workers) ...
FLOOR_SHARE = 16  # ... and at least the whole / (this x workers)
CONNECT_TIMEOUT = "5s"  # to reach a scheduler
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


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
    #: the database file's URL when workers read it themselves (embedded engines)
    file_url: DatabaseURL | None = None
    #: the Dask lock readers hold while they read, where a reader blocks the client's commits
    read_lock: str | None = None

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


def byte_partitions(backend: Backend, job: ClusterJob, workers: int,
                    target_bytes: int = PARTITION_BYTES) -> list[tuple[int, int, int]]:
    """``(first_id, last_id, rows)`` ranges of the pending rows by stored bytes (the image
    column's length, read without the images), largest first.

    Each range holds the bytes still unassigned divided by ``GUIDED_SHARE`` per worker, at most
    ``target_bytes`` and at least ``1 / FLOOR_SHARE`` per worker of the whole: the workers
    start on large partitions (little overhead) and finish on small ones together (little
    waiting for the last one), as a guided schedule does.
    """
    table = job.table
    q, qt = backend.quote_column, backend.quote(table.name)
    sizes = backend.query(
        f"SELECT {q(table.id)}, coalesce({backend.byte_length(q(table.image))}, 0) FROM {qt} "
        f"WHERE {job.pending} ORDER BY {q(table.id)}", list(job.pending_params))
    ids, lengths = sizes.column(0).to_pylist(), sizes.column(1).to_pylist()
    if not ids:
        return []
    remaining = float(sum(max(size, 1) for size in lengths))
    floor = remaining / (FLOOR_SHARE * workers)

    def share() -> float:
        return max(floor, min(float(target_bytes), remaining / (GUIDED_SHARE * workers)))

    out: list[tuple[int, int, int]] = []
    start, held, wanted = 0, 0, share()
    for i, size in enumerate(lengths):
        held += max(size, 1)
        if held >= wanted or i == len(ids) - 1:
            out.append((int(ids[start]), int(ids[i]), i - start + 1))
            remaining -= held
            start, held, wanted = i + 1, 0, share()
    return out


def run_job(backend: Backend, client: Any, job: ClusterJob, bundle: ModelBundle,
            writer: Any, bar: Any, target_bytes: int | None = None) -> Outcome:
    """Run ``job`` over its partitions on ``client``'s workers; ``writer(keys, outputs,
    failed)`` commits one partition's results when the client writes (embedded engines)."""
    from distributed import as_completed

    check_workers(client)
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    ranges = byte_partitions(backend, job, workers, target_bytes or PARTITION_BYTES)
    outcome = Outcome(partitions=len(ranges))
    if not ranges:
        return outcome
    # The model travels once per worker: scattered where the client sends the rows, else read
    # by each worker from the database (then kept, by content hash, for later runs).
    client_reads = not job.workers_connect and job.file_url is None
    model = client.scatter(bundle, broadcast=True) if client_reads else None
    pending = iter(ranges)
    submitted: list[Any] = []

    def submit() -> Any:
        """The next partition's task, or None."""
        part = next(pending, None)
        if part is None:
            return None
        lo, hi, _ = part
        if job.workers_connect:
            future = client.submit(score_partition, job, lo, hi, pure=False)
        elif job.file_url is not None:
            future = client.submit(read_and_score, job, lo, hi, pure=False)
        else:
            future = client.submit(score_rows_of, job, model,
                                   _partition_rows(backend, job, lo, hi), pure=False)
        submitted.append(future)
        return future

    # Where this client reads the rows and sends them with the tasks, only a window of
    # partitions is read ahead: memory stays bounded by it.
    window = 2 * workers if client_reads else len(ranges)
    lent = backend.lend_file() if job.read_lock else contextlib.nullcontext()
    with lent:
        futures = as_completed([f for f in (submit() for _ in range(window)) if f is not None])
        try:
            for future in futures:
                result = future.result()
                if not job.workers_connect:
                    keys, outputs, failed = result
                    with _committing(backend, client, job):
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
    _count_lost_answers(backend, job, ranges, outcome, bar)
    return outcome


def _count_lost_answers(backend: Backend, job: ClusterJob, ranges: list[tuple[int, int, int]],
                        outcome: Outcome, bar: Any) -> None:
    """A worker killed after its partition committed but before its answer came back leaves
    rows this run predicted that no answer counted (Dask's retry finds them done): count those
    from the table, so the report and the bar tell what this run did."""
    planned = sum(rows for _, _, rows in ranges)
    answered = outcome.done + len(outcome.failed)
    if answered >= planned:
        return
    left = int(backend.scalar(f"SELECT count(*) FROM {backend.quote(job.table.name)} "
                              f"WHERE {job.pending}", list(job.pending_params)) or 0)
    unanswered = max(0, planned - left - answered)
    outcome.done += unanswered
    bar.update(unanswered)


@contextlib.contextmanager
def _committing(backend: Backend, client: Any, job: ClusterJob) -> Iterator[None]:
    """Hold the database file for one commit while the workers read it (DuckDB: no reader
    holds it meanwhile)."""
    if job.read_lock is None:
        yield
        return
    from distributed import Lock

    with Lock(job.read_lock, scheduler_rpc=client.scheduler, loop=client.loop), \
            backend.take_file_back():
        yield


def file_access(backend: Backend, client: Any, job: ClusterJob, log: Any = print) -> ClusterJob:
    """``job`` with the database file for its workers to read, where they all reach it."""
    reader = backend.reader_url()
    if job.workers_connect or reader is None:
        return job
    here = _file_identity(reader.path)
    there = client.run(_file_identity, reader.path)
    if here is None or any(found != here for found in there.values()):
        log(f"dask: not every worker reaches {reader.path}; this client reads the rows and "
            "sends them with the tasks")
        return job
    log(f"dask: the workers read {reader.path} themselves (read-only); this client writes")
    lock = f"sqlvision-read-{uuid.uuid4().hex}" if backend.readers_block_writes else None
    return dataclasses.replace(job, file_url=reader, read_lock=lock)


def _file_identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode) on the machine this runs on, or None where it is absent."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _partition_rows(backend: Backend, job: ClusterJob, lo: int, hi: int) -> list[tuple[Any, ...]]:
    """The pending rows of one id range, as ``(id, data, uri)``, read whole (a partition is
    bounded by ``PARTITION_BYTES``)."""
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


def _worker_classifier(job: ClusterJob, bundle: ModelBundle | None,
                       backend: Backend | None = None) -> Any:
    """The model of ``job``, loaded once per worker process and kept by its content hash (from
    ``bundle``, else from the registry through ``backend`` or this worker's connection)."""
    from sqlvision.models import registry
    from sqlvision.models.runtime import load_classifier

    key = (job.url, job.model, job.version, job.onnx_sha256)
    with _lock:
        if key not in _classifiers:
            if bundle is None:
                bundle = registry.load(backend or _worker_backend(job.url), job.model,
                                       job.version, weights=False)
            if hashlib.sha256(bundle.onnx).hexdigest() != job.onnx_sha256:
                raise SqlvisionError(f"model {job.model}:{job.version} changed during the run",
                                     "rerun the command")
            roomy_allocator()
            _classifiers[key] = load_classifier(bundle)
        return _classifiers[key]


@functools.cache
def roomy_allocator() -> None:
    """Let glibc keep freed image buffers in this process's heap. A Dask nanny starts its
    workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the threshold above which
    malloc maps fresh pages, so every decoded photo costs page faults: about 9% of the scoring
    rate. Raised here (32 MB mapped, 64 MB kept), in the worker processes that score."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):  # not glibc
        return


def _scored(classifier: Any, job: ClusterJob, rows: Any) -> Iterator[Any]:
    from sqlvision.predict.stream import score_rows

    return score_rows(classifier, rows, features=job.kind == "embed", workers=1)


def score_rows_of(job: ClusterJob, bundle: ModelBundle, rows: list[tuple[Any, ...]]
                  ) -> tuple[list[Any], Any, list[tuple[Any, str]]]:
    """Score rows the client sent (embedded engines); the client writes the results."""
    return _score_rows_with(_worker_classifier(job, bundle), job, rows)


def _score_rows_with(classifier: Any, job: ClusterJob, rows: list[tuple[Any, ...]]
                     ) -> tuple[list[Any], Any, list[tuple[Any, str]]]:
    """``(keys, outputs, failed)`` of ``rows``, scored in this worker."""
    import numpy as np

    keys: list[Any] = []
    outputs: list[Any] = []
    failed: list[tuple[Any, str]] = []
    for group in _scored(classifier, job, rows):
        keys.extend(group.keys)
        if group.keys:
            outputs.append(group.outputs)
        failed.extend(group.failed)
    return keys, (np.concatenate(outputs) if outputs else np.zeros((0, 1), np.float32)), failed


def read_and_score(job: ClusterJob, lo: int, hi: int
                   ) -> tuple[list[Any], Any, list[tuple[Any, str]]]:
    """Read one id range from the database file (read-only; the model too, the first time) and
    score it (embedded engines whose file this worker reaches); the client writes the results.
    The file is open only while it is read: DuckDB's client needs it back to commit."""
    from sqlvision.db import open_backend

    assert job.file_url is not None
    held: Any = contextlib.nullcontext()
    if job.read_lock is not None:
        from distributed import Lock

        held = Lock(job.read_lock)
    with held:
        reader = open_backend(job.file_url, read_only=True)
        try:
            classifier = _worker_classifier(job, None, reader)
            rows = _partition_rows(reader, job, lo, hi)
        finally:
            reader.close()
    return _score_rows_with(classifier, job, rows)


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
        return run_job(backend, client, file_access(backend, client, job, log), bundle, writer,
                       bar)
