"""Batch predict and embed on a Dask LocalCluster of 2 worker processes, on all four engines:
the same predictions as in process, exactly one per row when a worker or the client is killed,
and one-line failures for an unreachable scheduler or workers without the ``train`` extra."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sqlvision as sv
from sqlvision.predict import cluster as cluster_module
from tests.conftest import BACKEND_PARAMS, SAMPLE, fresh_database

distributed = pytest.importorskip("distributed")

FAST = {"arch": "sv_cnn_small", "batch_size": 32, "workers": 2}
ROWS = 4000  # the Fashion-MNIST sample


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """One LocalCluster of 2 worker processes for the tests that do not kill anything."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as local, \
            distributed.Client(local) as connected:
        yield connected


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def trained(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[sv.Database]:
    folder = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with fresh_database(request.param, folder) as url, sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        db.train("fm", "fashion", where="id % 10 = 0", epochs=1, checkpoint_dir=folder / "ck",
                 progress=False, log=lambda _: None, **FAST)
        yield db


def predictions(db: sv.Database) -> dict[int, tuple[str, float]]:
    rows = db.sql("SELECT image_id, label, confidence FROM sv_predictions").fetchall()
    return {int(i): (lab, conf) for i, lab, conf in rows}


def test_cluster_predictions_equal_in_process_ones(trained: sv.Database, client: object) -> None:
    db = trained
    lines: list[str] = []
    report = db.predict("fm", "fashion", cluster=client, progress=False, into_columns=True,
                        log=lines.append, recompute=True)
    assert report.predicted == ROWS
    reads_file = db.backend.reader_url() is not None  # embedded engines: workers read the file
    assert any("the workers read" in line for line in lines) == reads_file
    on_cluster = predictions(db)
    written_back = db.sql("SELECT count(*) FROM fashion WHERE predicted_label IS NOT NULL").scalar()
    db.predict("fm", "fashion", progress=False, recompute=True)
    here = predictions(db)
    assert len(on_cluster) == len(here) == ROWS and written_back == ROWS
    assert all(on_cluster[i][0] == here[i][0] for i in here)
    assert all(abs(on_cluster[i][1] - here[i][1]) < 1e-5 for i in here)
    again = db.predict("fm", "fashion", cluster=client, progress=False)
    assert (again.predicted, again.already) == (0, ROWS)


def test_workers_that_cannot_reach_the_file_get_their_rows_from_the_client(
        trained: sv.Database, client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    db = trained
    if db.backend.reader_url() is None:
        pytest.skip("server engines: the workers always connect themselves")
    monkeypatch.setattr(cluster_module, "_file_identity", lambda path: None)  # here only
    lines: list[str] = []
    report = db.predict("fm", "fashion", cluster=client, progress=False, recompute=True,
                        where="id <= 300", log=lines.append)
    assert report.predicted == 300 and any("not every worker reaches" in x for x in lines)
    counts = db.sql("SELECT count(*), count(DISTINCT image_id) FROM sv_predictions "
                    "WHERE image_id <= 300").fetchall()
    assert counts == [(300, 300)]


def test_cluster_embeddings(trained: sv.Database, client: object) -> None:
    db = trained
    db.backend.execute("DROP TABLE IF EXISTS sv_embeddings")
    report = db.embed("fm", "fashion", cluster=client, where="id <= 500", progress=False)
    assert report.embedded == 500
    assert db.sql("SELECT count(DISTINCT image_id) FROM sv_embeddings").scalar() == 500


def test_partitions_shrink_by_bytes_towards_the_end(trained: sv.Database) -> None:
    db = trained
    table = db.image_table("fashion")
    job = cluster_module.ClusterJob("predict", db.backend.url.raw, table, "fm", 1, "", "1 = 1", ())
    parts = cluster_module.byte_partitions(db.backend, job, 2)
    assert sum(n for _, _, n in parts) == ROWS
    assert all(parts[i][1] < parts[i + 1][0] for i in range(len(parts) - 1))
    def stored(ranges: list[tuple[int, int, int]]) -> list[float]:
        return [float(db.sql(f"SELECT sum(size_bytes) FROM fashion WHERE id BETWEEN {lo} AND {hi}"
                             ).scalar()) for lo, hi, _ in ranges]

    sizes = stored(parts)
    total, row = sum(sizes), max(sizes) / parts[0][2] * 3  # a few rows' bytes of slack
    assert abs(sizes[0] - total / 4) < row  # what is left / (2 x 2 workers)
    assert all(later <= earlier + row for earlier, later in itertools.pairwise(sizes))
    assert all(size >= total / 32 - row for size in sizes[:-1])  # the floor: 1/16 per worker
    capped = cluster_module.byte_partitions(db.backend, job, 2, target_bytes=int(total / 20))
    assert all(size <= total / 20 + row for size in stored(capped))


def _slow_partitions() -> None:
    """Run on every worker: each partition takes a while, so a kill lands mid-run."""
    from sqlvision.predict import cluster

    scored = cluster._scored

    def slow(*args: object) -> object:
        time.sleep(0.3)
        return scored(*args)  # type: ignore[arg-type]

    cluster._scored = slow  # type: ignore[assignment]


_CLIENT_SCRIPT = """
import sys, sqlvision as sv
from sqlvision.predict import cluster
cluster.PARTITION_BYTES = 40_000  # dozens of partitions
if __name__ == "__main__":
    with sv.connect(sys.argv[1]) as db:
        print(db.predict("fm", "fashion", cluster=sys.argv[2], progress=False).predicted)
"""


def _start_client(url: str, cluster: str, folder: Path) -> subprocess.Popen[str]:
    """``predict --cluster`` in a process of its own, as a user runs it."""
    script = folder / "client.py"
    script.write_text(_CLIENT_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), url, cluster], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


def _committed(url: str) -> int:
    """Predictions committed so far, read beside the running client (a database file
    read-only; 0 while DuckDB's client holds its file to commit)."""
    from sqlvision.db import open_backend, parse_url

    try:
        backend = open_backend(url, read_only=parse_url(url).scheme in ("duckdb", "sqlite"))
    except sv.SqlvisionError:
        return 0
    try:
        if not backend.table_exists("sv_predictions"):
            return 0
        return int(backend.scalar("SELECT count(*) FROM sv_predictions") or 0)
    finally:
        backend.close()


def _first_commit(url: str, proc: subprocess.Popen[str]) -> int:
    """Wait for the running client's first committed partition. The database is read only
    once the client has opened it and announced its cluster: a reader that comes first would
    keep a DuckDB client from opening its file."""
    assert proc.stdout is not None
    proc.stdout.readline()  # "dask: 2 workers at ..."
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if committed := _committed(url):
            return committed
        time.sleep(0.05)
    return _committed(url)


def _train_small(url: str, folder: Path) -> None:
    with sv.connect(url) as db:
        db.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        db.train("fm", "fashion", where="id % 10 = 0", epochs=1, checkpoint_dir=folder / "ck",
                 progress=False, log=lambda _: None, **FAST)


def _one_per_row(url: str) -> list[tuple[int, int]]:
    with sv.connect(url) as db:
        return db.sql("SELECT count(*), count(DISTINCT image_id) FROM sv_predictions").fetchall()


@pytest.mark.parametrize("kind", BACKEND_PARAMS)
def test_a_killed_worker_leaves_exactly_one_prediction_per_row(kind: str, tmp_path: Path) -> None:
    """Servers: the workers commit; database files: the workers read, the client commits."""
    with fresh_database(kind, tmp_path) as url:
        _train_small(url, tmp_path)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as local, \
                distributed.Client(local) as client:
            client.run(_slow_partitions)
            pids = client.run(os.getpid)
            proc = _start_client(url, local.scheduler_address, tmp_path)
            committed = _first_commit(url, proc)
            os.kill(next(iter(pids.values())), signal.SIGKILL)  # one worker, mid-run
            out, _ = proc.communicate(timeout=300)
        assert 0 < committed < ROWS
        assert proc.returncode == 0 and out.split()[-1] == str(ROWS)
        assert _one_per_row(url) == [(ROWS, ROWS)]


def _die_after_the_first_commit(marker: str) -> None:
    """Run on every worker: the first partition to commit kills its worker before answering."""
    from sqlvision.predict import cluster

    original = cluster.score_partition

    def commit_then_die(*args: object) -> object:
        result = original(*args)  # type: ignore[arg-type]
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return result
        os._exit(1)

    cluster.score_partition = commit_then_die  # type: ignore[assignment]


@pytest.mark.server
def test_a_partition_committed_by_a_worker_that_died_before_answering_is_counted(
        tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        _train_small(url, tmp_path)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as local, \
                distributed.Client(local) as client:
            client.run(_die_after_the_first_commit, str(tmp_path / "died"))
            with sv.connect(url) as db:
                report = db.predict("fm", "fashion", cluster=client, progress=False,
                                    log=lambda _: None)
        assert (tmp_path / "died").exists()
        assert report.predicted == ROWS and _one_per_row(url) == [(ROWS, ROWS)]


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgresql", marks=pytest.mark.server)])
def test_a_rerun_after_a_killed_client_predicts_only_what_is_missing(kind: str,
                                                                     tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url:
        _train_small(url, tmp_path)
        proc = _start_client(url, "local:2", tmp_path)
        _first_commit(url, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its cluster
        proc.communicate()
        with sv.connect(url) as db:
            before = db.sql("SELECT count(*) FROM sv_predictions").scalar()
            assert 0 < before < ROWS
            report = db.predict("fm", "fashion", progress=False)
            assert report.predicted == ROWS - before
        assert _one_per_row(url) == [(ROWS, ROWS)]


def test_an_unreachable_scheduler_fails_in_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from sqlvision.cli import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "u.duckdb"
    with sv.connect(db) as conn:
        conn.ingest("fashion", SAMPLE / "fashion-mnist", progress=False)
        conn.train("fm", "fashion", where="id % 40 = 0", epochs=1, checkpoint_dir=tmp_path / "ck",
                   progress=False, log=lambda _: None, **FAST)
    code = main(["predict", "fm", "--table", "fashion", "--db", str(db), "--cluster",
                 f"tcp://127.0.0.1:{port}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and f"tcp://127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    # an engine or device the workers would not use is refused before anything runs
    code = main(["predict", "fm", "--table", "fashion", "--db", str(db), "--cluster",
                 f"tcp://127.0.0.1:{port}", "--engine", "torch", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "--engine torch is not used there" in err


def test_workers_without_the_train_extra_get_the_install_command(
        trained: sv.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if trained.backend.dialect != "duckdb":
        pytest.skip("the check runs before any engine is touched: one engine shows it")
    monkeypatch.setattr(cluster_module, "WORKER_MODULES", ("sv_module_that_is_not_installed",))
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as local, \
            distributed.Client(local) as threads_here, \
            pytest.raises(sv.SqlvisionError, match=r'pip install "sqlvision\[train\]"'):
        trained.predict("fm", "fashion", cluster=threads_here, progress=False, recompute=True)


@pytest.mark.server
def test_dask_walkthrough_example_runs_end_to_end(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import load_example

    walkthrough = load_example("dask_clothing")
    monkeypatch.chdir(tmp_path)
    with fresh_database("postgresql", tmp_path) as url:
        assert walkthrough.main(["--db", url, "--data", str(SAMPLE / "clothing"), "--small"]) == 0
        printed = capsys.readouterr().out
        assert "80 of 80 photos scored on Dask" in printed
        with sv.connect(url) as db:
            rows = db.sql("SELECT count(*) FROM clothing_test WHERE predicted_label IS NOT NULL "
                          "AND confidence IS NOT NULL AND predicted_at IS NOT NULL").scalar()
            assert rows == 80
