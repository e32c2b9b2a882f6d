"""The prediction service against batch ``predict``: the same model and images, in one run.

    python benchmarks/serve.py [--rows 400] [--arch mobilenetv3_large_100] [--clients 32]
                               [--seconds 10] [--repeat 2] [--variants '--batch-wait-ms 4;--no-batching']

On clothing-small JPEGs (../shared/data/clothing-small/train) in a fresh DuckDB file, with a
randomly initialized timm model at 224 px (weights do not change the cost), round-robin, best of
``--repeat`` rounds:
- batch predict: ``Database.predict`` of every row (recomputed), end to end, images/s;
- the service (``sqlvision serve`` in its own process, on loopback) with each of ``--variants``
  (default: dynamic batching waiting 4 ms or 0 ms to fill a batch of the engine's size, batches
  of up to 32, batching off): ``--clients`` concurrent clients posting
  one JPEG each (raw bytes) for ``--seconds`` (at most ``--max-requests``), images/s; then an
  open-loop load at half that rate for as long, its p50/p99 latency; errors (any answer but
  200); the server's resident memory after a warmup at full load and after the run (flat
  memory); the mean batch size from its Prometheus metrics.
The load generator (a minimal HTTP/1.1 client on asyncio streams) runs in this process, on the
same cores as the server: the service's figures include its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import sqlvision as sv
from sqlvision.models import registry
from sqlvision.models.export import bundle_from_torch
from sqlvision.preprocess import PreprocessSpec

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
SPEC = PreprocessSpec(224, 224, "RGB", "crop")


def prepare(folder: Path, rows: int, arch: str) -> tuple[str, list[bytes]]:
    """A DuckDB file with ``rows`` clothing-small JPEGs and model ``bench``; the JPEG bytes."""
    import timm

    files = sorted((SHARED / "clothing-small" / "train").rglob("*.jpg"))[:rows]
    source = folder / "images"
    for f in files:
        target = source / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    url = f"duckdb:///{folder / 'serve.duckdb'}"
    with sv.connect(url) as db:
        db.ingest("photos", source, progress=False)
        classes = sorted({f.parent.name for f in files})
        example = np.stack([SPEC(files[0].read_bytes())])
        model = timm.create_model(arch, num_classes=len(classes))
        registry.save(db.backend, bundle_from_torch(model, name="bench", architecture=arch,
                                                    classes=classes, spec=SPEC, example=example))
    return url, [f.read_bytes() for f in files]


def batch_predict(url: str) -> float:
    """Images/s of ``predict`` over the whole table (recomputed)."""
    with sv.connect(url) as db:
        started = time.perf_counter()
        report = db.predict("bench", "photos", recompute=True, progress=False, log=lambda _: None)
        return report.predicted / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Service:
    """``sqlvision serve`` in a subprocess."""

    def __init__(self, url: str, options: list[str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "sqlvision.cli", "serve", "--db", url, "--port", str(self.port)]
        self.proc = subprocess.Popen(argv + options,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> Service:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the service did not start: " + self.proc.stderr.read().decode()[-2000:]
                           if self.proc.stderr else "")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def batch_mean(self) -> float:
        text = httpx.get(self.base + "/metrics").text
        values = {line.split()[0].split("{")[0]: float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith("sqlvision_batch_size_")}
        count = max(1.0, values.get("sqlvision_batch_size_count", 0))
        return values.get("sqlvision_batch_size_sum", 0) / count


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: the load generator shares the
    cores with the server, so it should cost as little as possible (httpx costs several times
    more per request)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, path: str, body: bytes) -> int:
        """POST ``body`` as a JPEG; the answer's status (its body is read and dropped)."""
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\n"
                          b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        self.used = time.monotonic()
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        self.writer.close()


PATH = "/v1/models/bench/predict"


async def closed_loop(base: str, images: list[bytes], clients: int, seconds: float,
                      limit: int) -> tuple[float, int, int]:
    """``clients`` clients posting back to back: (images/s, answered, errors)."""
    done = errors = sent = 0
    connections = [await Connection.open(base) for _ in range(clients)]
    stop = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        nonlocal done, errors, sent
        while time.perf_counter() < stop and sent < limit:
            data = images[sent % len(images)]
            sent += 1
            status = await connection.post(PATH, data)
            done += 1
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    rate = done / (time.perf_counter() - started)
    for c in connections:
        c.close()
    return rate, done, errors


async def open_loop(base: str, images: list[bytes], rate: float, seconds: float,
                    limit: int) -> tuple[list[float], int]:
    """Requests sent at ``rate`` per second whatever the answers: (latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    idle: list[Connection] = []

    async def one(data: bytes) -> None:
        nonlocal errors
        while idle and time.monotonic() - idle[-1].used > 2:  # the server closes idle ones
            idle.pop().close()
        connection = idle.pop() if idle else await Connection.open(base)
        started = time.perf_counter()
        status = await connection.post(PATH, data)
        latencies.append(time.perf_counter() - started)
        errors += status != 200
        idle.append(connection)

    tasks = []
    start = time.perf_counter()
    for i in range(min(limit, int(rate * seconds))):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(images[i % len(images)])))
    await asyncio.gather(*tasks)
    for c in idle:
        c.close()
    return latencies, errors


def serve_round(url: str, images: list[bytes], options: list[str],
                args: argparse.Namespace) -> dict[str, Any]:
    with Service(url, options) as service:
        # warm, at full load: model loaded, thread pools and ONNX Runtime's arena at their size
        asyncio.run(closed_loop(service.base, images, args.clients, 2.0, args.max_requests))
        before = rss_mib(service.proc.pid)
        rate, done, errors = asyncio.run(closed_loop(service.base, images, args.clients, args.seconds,
                                                     args.max_requests))
        latencies, late_errors = asyncio.run(open_loop(service.base, images, rate / 2, args.seconds,
                                                       args.max_requests))
        after = rss_mib(service.proc.pid)
        mean_batch = service.batch_mean()
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {"rate": rate, "requests": done + len(latencies), "errors": errors + late_errors,
            "p50": p50, "p99": p99, "rss_before": before, "rss_after": after, "batch": mean_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--arch", default="mobilenetv3_large_100")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--variants", default="--batch-wait-ms 4;--batch-wait-ms 0;--max-batch 32;"
                                                  "--no-batching",
                        help="the service's settings to compare: ';'-separated, each a list of "
                             "sqlvision serve options")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("SQLVISION_BENCH_DIR")) as tmp:
        url, images = prepare(Path(tmp), args.rows, args.arch)
        contenders = {f"serve {v.strip()}": v.split() for v in args.variants.split(";")}
        batch: list[float] = []
        served: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            batch.append(batch_predict(url))
            for name, options in contenders.items():
                served[name].append(serve_round(url, images, options, args))
    best = max(batch)
    print(f"{args.rows} clothing-small JPEGs, {args.arch} at 224 px, {os.cpu_count()} cores, "
          f"{args.clients} clients, {args.seconds:g} s per phase, best of {args.repeat}")
    print("| contender | images/s | vs batch predict | p50 ms at half load | p99 ms | errors | "
          "mean batch | server RSS MiB (warm -> end) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| batch predict | {best:,.0f} | 1.00 | | | | | |")
    for name, rounds in served.items():
        r = max(rounds, key=lambda x: x["rate"])
        errors = sum(x["errors"] for x in rounds)
        print(f"| {name} | {r['rate']:,.0f} | {r['rate'] / best:.2f} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{errors} of {sum(x['requests'] for x in rounds):,} | {r['batch']:.1f} | "
              f"{r['rss_before']:.0f} -> {r['rss_after']:.0f} |")


if __name__ == "__main__":
    main()
