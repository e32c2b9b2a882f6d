"""Dask against in-process predict, the cost of a partition, and how many workers one
PostgreSQL server can feed: measured side by side in one run.

    python benchmarks/dask_predict.py [--rows 1000] [--repeat 2] [--pg postgresql://postgres@127.0.0.1/test]

On clothing-small JPEGs (../shared/data/clothing-small/train) with the ImageNet
EfficientNet-Lite0 classifier (224 px), round-robin, best of ``--repeat``:

(a) ``predict`` in process against ``predict --cluster`` on a LocalCluster of 2 worker
    processes (started once, as a user keeps a cluster up) on the same 2 cores, on DuckDB and
    SQLite (the workers read the file, the client writes) and on PostgreSQL (the workers read
    and write), with the cluster's start-up time given apart;
(b) the cost of one partition beyond its images: a one-row partition's round trip once the
    model is cached, and the one-off costs per worker (model load, connection);
(c) one PostgreSQL server: image rows streamed to 1 and 2 concurrent readers (MB/s), and
    prediction rows accepted (rows/s); from these and (a), the workers one server can feed and
    the images/s at 10 and 100 workers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

import sqlvision as sv
from sqlvision.db import open_backend
from sqlvision.models import registry
from sqlvision.models.runtime import load_classifier
from sqlvision.predict import cluster as cluster_module
from sqlvision.predict.batch import write_predictions

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def prepare(url: str, photos: list[Path]) -> None:
    with sv.connect(url) as db:
        db.ingest("photos", *photos, progress=False)
        db.register_imagenet("tf_efficientnet_lite0", "imagenet")


def timed_predict(url: str, cluster: object | None) -> float:
    with sv.connect(url) as db:
        started = time.perf_counter()
        report = db.predict("imagenet", "photos", recompute=True, progress=False, cluster=cluster,
                            log=lambda _: None)
        elapsed = time.perf_counter() - started
        assert report.predicted > 0
    return elapsed


def partition_costs(url: str, client: object) -> dict[str, float]:
    """(b): a one-row partition's round trip with the model cached; model load; connection."""
    with sv.connect(url) as db:
        bundle = registry.load(db.backend, "imagenet", weights=False)
        table = db.image_table("photos")
        started = time.perf_counter()
        load_classifier(bundle)
        model_load = time.perf_counter() - started
        started = time.perf_counter()
        open_backend(url).close()
        connect = time.perf_counter() - started
        first = int(db.sql("SELECT min(id) FROM photos").scalar())
        db.backend.execute("DELETE FROM sv_predictions WHERE image_id = ?", [first])
        job = cluster_module.ClusterJob("predict", url, table, bundle.name, int(bundle.version),
                                        hashlib.sha256(bundle.onnx).hexdigest(),
                                        "1 = 1", ())
        times = []
        for _ in range(12):
            db.backend.execute("DELETE FROM sv_predictions WHERE image_id = ?", [first])
            started = time.perf_counter()
            client.submit(cluster_module.score_partition, job, first, first,  # type: ignore[attr-defined]
                          pure=False).result()
            times.append(time.perf_counter() - started)
        classifier = load_classifier(bundle)
        pixels = np.stack([bundle.spec(db.sql(f"SELECT data FROM photos WHERE id = {first}"
                                              ).scalar())])
        started = time.perf_counter()
        for _ in range(12):
            classifier.predict_proba(pixels)
        one_image = (time.perf_counter() - started) / 12
    return {"round_trip": statistics.median(times[2:]), "one_image": one_image,
            "model_load": model_load, "connect": connect}


def server_rates(url: str) -> dict[str, float]:
    """(c): image bytes streamed to 1 and 2 readers, prediction rows accepted."""
    out: dict[str, float] = {}
    with sv.connect(url) as db:
        total = float(db.sql("SELECT sum(octet_length(data)) FROM photos").scalar())
        rows = int(db.sql("SELECT count(*) FROM photos").scalar())

    def stream() -> None:
        backend = open_backend(url)
        for _ in backend.stream("SELECT id, data FROM photos", batch_rows=256):
            pass
        backend.close()

    for readers in (1, 2):
        best = float("inf")
        for _ in range(3):
            threads = [threading.Thread(target=stream) for _ in range(readers)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best = min(best, time.perf_counter() - started)
        out[f"stream_{readers}_mb_s"] = readers * total / best / 2**20
        out[f"stream_{readers}_rows_s"] = readers * rows / best
    with sv.connect(url) as db:
        bundle = registry.load(db.backend, "imagenet", weights=False)
        n = 20_000
        probs = np.random.default_rng(0).dirichlet(np.ones(len(bundle.classes)), n).astype(np.float32)
        db.backend.execute("DELETE FROM sv_predictions")
        started = time.perf_counter()
        for lo in range(0, n, 1000):
            write_predictions(db.backend, "bench_rows", bundle, list(range(lo, lo + 1000)),
                              probs[lo:lo + 1000], [], 5, 0.0)
        out["accept_rows_s"] = n / (time.perf_counter() - started)
        db.backend.execute("DELETE FROM sv_predictions WHERE source_table = 'bench_rows'")
    out["bytes_per_image"] = total / rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1/test")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    photos = sorted((SHARED / "clothing-small" / "train").rglob("*.jpg"))[:args.rows]
    tmp = Path(tempfile.mkdtemp(prefix="sv-dist-", dir=os.environ.get("SQLVISION_BENCH_DIR")))
    schema = f"sv_bench_{uuid.uuid4().hex[:8]}"
    urls = {"duckdb": f"duckdb:///{tmp / 'bench.duckdb'}", "sqlite": f"sqlite:///{tmp / 'bench.sqlite'}",
            "postgresql": f"{args.pg}?schema={schema}"}
    for url in urls.values():
        prepare(url, photos)
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as local, Client(local) as client:
        startup = time.perf_counter() - started
        print(f"{len(photos)} photos; LocalCluster of 2 workers started in {startup:.2f} s")
        best: dict[tuple[str, str], float] = {}
        for url in urls.values():
            timed_predict(url, client)  # warm: the workers load the model once
        for _ in range(args.repeat):
            for engine, url in urls.items():
                for contender, cluster in (("in process", None), ("local:2", client)):
                    t = timed_predict(url, cluster)
                    best[engine, contender] = min(best.get((engine, contender), t), t)
        print("\n(a) predict, best of", args.repeat)
        print("| engine | in process | --cluster local:2 | cluster / in-process throughput |")
        print("| --- | --- | --- | --- |")
        for engine in urls:
            here, there = best[engine, "in process"], best[engine, "local:2"]
            print(f"| {engine} | {here:.2f} s ({len(photos) / here:.1f} img/s) | {there:.2f} s "
                  f"({len(photos) / there:.1f} img/s) | {here / there:.2f}x |")
        costs = partition_costs(urls["postgresql"], client)
        print("\n(b) per partition (PostgreSQL):",
              f"one-row partition round trip {costs['round_trip'] * 1000:.1f} ms, of which one "
              f"image's scoring {costs['one_image'] * 1000:.1f} ms; once per worker: model load "
              f"{costs['model_load'] * 1000:.0f} ms, connection {costs['connect'] * 1000:.0f} ms")
        per_worker = len(photos) / best["postgresql", "local:2"] / 2
    rates = server_rates(urls["postgresql"])
    print("\n(c) one PostgreSQL server (this machine, loopback):")
    print(f"  images streamed: 1 reader {rates['stream_1_mb_s']:.0f} MB/s "
          f"({rates['stream_1_rows_s']:,.0f} rows/s), 2 readers {rates['stream_2_mb_s']:.0f} MB/s "
          f"({rates['stream_2_rows_s']:,.0f} rows/s)")
    print(f"  prediction rows accepted: {rates['accept_rows_s']:,.0f} rows/s")
    feed = min(rates["stream_2_rows_s"], rates["accept_rows_s"])
    workers = feed / per_worker
    print(f"\nprojection: one worker core scores {per_worker:.1f} img/s "
          f"({per_worker * rates['bytes_per_image'] / 2**20:.2f} MB/s of images); the server feeds "
          f"{feed:,.0f} img/s, so about {workers:,.0f} worker cores per server before it is the "
          f"bottleneck; 10 workers: {min(10 * per_worker, feed):,.0f} img/s, 100 workers: "
          f"{min(100 * per_worker, feed):,.0f} img/s")
    import psycopg

    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
