"""Training benchmarks: throughput against a plain PyTorch loop, and quality on real data.

    python benchmarks/train.py throughput [--rows 12000] [--arch sv_cnn] [--batch-size 64]
    python benchmarks/train.py fashion [--epochs 12]         # test accuracy, wall time
    python benchmarks/train.py photos                        # clothing-small: recipes, int8

throughput: the same rows of Fashion-MNIST, the same model and batch size, side by side in one
process: (a) a plain PyTorch loop over images pre-decoded into one in-memory uint8 tensor
(normalization per batch, shuffled, no augmentation), (b) ``sqlvision train`` streaming from
DuckDB with ``--augment none``: epoch 1 fetches and decodes, epoch 2 reads the decode cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import sqlvision as sv
from sqlvision.evaluate import accuracy
from sqlvision.preprocess import PreprocessSpec

SHARED = Path(os.environ.get("SQLVISION_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def plain_loop(pixels: np.ndarray, targets: np.ndarray, arch: str, batch_size: int,
               mean: float, std: float, epochs: int = 1) -> float:
    """Images/s of a hand-written loop over pre-decoded tensors (the baseline)."""
    import torch
    import torch.nn.functional as F

    from sqlvision.models.architectures import create
    from sqlvision.parallel import cpu_count

    torch.manual_seed(0)
    torch.set_num_threads(cpu_count())
    model = create(arch, 10, 1, drop_rate=0.2).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    x_all = torch.from_numpy(pixels)
    y_all = torch.from_numpy(targets)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y_all))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = ((x_all[idx].float() - mean * 255) / (std * 255)).contiguous(
                memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - start)


def throughput(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, sv.connect(Path(tmp) / "bench.duckdb") as db:
        db.ingest("fashion", SHARED / "fashion-mnist", progress=False)
        where = f"split = 'train' AND id <= {args.rows}"
        rows = db.sql(f"SELECT data, label FROM fashion WHERE {where} ORDER BY id").fetchall()
        classes = sorted({r[1] for r in rows})
        spec = PreprocessSpec.for_images(28, 28, "L")
        pixels = np.stack([spec(r[0]) for r in rows])
        targets = np.asarray([classes.index(r[1]) for r in rows], np.int64)
        n = len(rows)
        print(f"{n} Fashion-MNIST images, {args.arch}, batch {args.batch_size}")
        baseline = plain_loop(pixels, targets, args.arch, args.batch_size, 0.5, 0.5)
        result = db.train("bench", "fashion", where=where, arch=args.arch, epochs=2,
                          batch_size=args.batch_size, augment="none", val_fraction=0.0,
                          checkpoint_dir=Path(tmp) / "ck", progress=False, log=lambda _: None)
        cold, warm = (h["images_per_second"] for h in result.history)
        light = db.train("bench2", "fashion", where=where, arch=args.arch, epochs=2,
                         batch_size=args.batch_size, augment="light", val_fraction=0.0,
                         checkpoint_dir=Path(tmp) / "ck2", progress=False, log=lambda _: None)
        print(f"plain PyTorch loop, pre-decoded tensors: {baseline:8.0f} img/s")
        print(f"sqlvision epoch 1 (fetch + decode):      {cold:8.0f} img/s  ratio {cold / baseline:.2f}")
        print(f"sqlvision epoch 2 (decode cache):        {warm:8.0f} img/s  ratio {warm / baseline:.2f}"
              "  (target >= 0.8)")
        print(f"sqlvision epoch 2, --augment light:      {light.history[1]['images_per_second']:8.0f} img/s")


def fashion(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, sv.connect(Path(tmp) / "fm.duckdb") as db:
        db.ingest("fashion", SHARED / "fashion-mnist", progress=False)
        start = time.perf_counter()
        result = db.train("fashion", "fashion", epochs=args.epochs, batch_size=args.batch_size,
                          checkpoint_dir=Path(tmp) / "ck", progress=False)
        minutes = (time.perf_counter() - start) / 60
        acc, _ = accuracy(db.backend, "fashion", "fashion", "split = 'test'")
        print(f"default recipe ({result.bundle.architecture}, {args.epochs} epochs, batch "
              f"{args.batch_size}): test accuracy {acc:.4f} in {minutes:.1f} min "
              "(target >= 0.93 in <= 20 min)")


def photos(args: argparse.Namespace) -> None:
    """clothing-small (3,068 train, 341 validation photos): the default recipe and the
    alternatives side by side, then int8 against fp32 on the default model."""
    root = SHARED / "clothing-small"
    quiet = {"progress": False, "log": lambda line: print(f"    {line}", flush=True)}
    with tempfile.TemporaryDirectory() as tmp, sv.connect(Path(tmp) / "c.duckdb") as db:
        db.ingest("photos", root / "train", progress=False)
        db.ingest("photos", root / "validation", progress=False)
        runs = []

        def timed(label: str, run: Callable[[], Any]) -> Any:
            print(f"{label} ...", flush=True)
            start = time.perf_counter()
            result = run()
            minutes = (time.perf_counter() - start) / 60
            bundle = result.bundle
            runs.append((label, bundle.metrics["val_accuracy"], minutes,
                         f"{bundle.architecture}, {bundle.spec.height} px"))
            print(f"  validation accuracy {bundle.metrics['val_accuracy']:.4f} in {minutes:.1f} min",
                  flush=True)
            return result

        def train(model: str, **settings: Any) -> Callable[[], Any]:
            return lambda: db.train(model, "photos", checkpoint_dir=Path(tmp) / model,
                                    **{**quiet, **settings})

        only = set(args.only or ("default", "logistic", "head", "scratch", "quantize"))
        if "default" in only:
            timed("(d) default train (fine-tune recipe)", train("clothes"))

        def logistic() -> Any:
            db.register_imagenet("tf_efficientnet_lite0", "imagenet")
            return db.train("clothes-lr", "photos", from_model="imagenet", head="logistic",
                            progress=False)

        if "logistic" in only:
            timed("(b) logistic head on pretrained features, embedding included", logistic)
        if "head" in only:
            timed("(c) fine-tune the classifier only (probe + 2 epochs)",
                  train("clothes-head", train_layers="head", epochs=2))
        if "scratch" in only:
            timed(f"(a) from scratch (--no-pretrained, {args.scratch_epochs} epochs)",
                  train("scratch", pretrained=False, epochs=args.scratch_epochs))
        print()
        for label, acc, minutes, what in runs:
            print(f"{label:64s} {acc:.4f}  {minutes:5.1f} min  ({what})")
        print("targets: default >= 0.92 in <= 15 min; logistic >= 0.85 in <= 5 min")
        if "quantize" in only and "default" in only:
            quantized(db)


def quantized(db: sv.Database, rows: int = 1000, repeat: int = 2) -> None:
    """int8 against fp32 of the default model: accuracy on the validation photos, and end-to-end
    ``predict`` throughput on the same rows, round-robin, best of ``repeat``."""
    report = db.quantize("clothes", "photos", force=True)
    print(report.summary())
    assert report.registered is not None
    fp32, int8 = f"clothes:{report.registered.version - 1}", report.registered.ref
    where = f"id <= {rows}"
    best = {fp32: 0.0, int8: 0.0}
    for _ in range(repeat):
        for ref in (fp32, int8):
            out = db.predict(ref, "photos", where=where, recompute=True, progress=False)
            best[ref] = max(best[ref], out.predicted / out.seconds)
    print(f"predict end to end, {rows} photos: fp32 {best[fp32]:.1f} img/s, int8 {best[int8]:.1f} "
          f"img/s: {best[int8] / best[fp32]:.2f}x (target >= 1.8x with <= 1 point accuracy loss)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="which", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--rows", type=int, default=12000)
    p.add_argument("--arch", default="sv_cnn")
    p.add_argument("--batch-size", type=int, default=64)
    p = sub.add_parser("fashion")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p = sub.add_parser("photos")
    p.add_argument("--scratch-epochs", type=int, default=10)
    p.add_argument("--only", nargs="+", choices=("default", "logistic", "head", "scratch", "quantize"),
                   help="run only these (default: all)")
    args = parser.parse_args()
    {"throughput": throughput, "fashion": fashion, "photos": photos}[args.which](args)


if __name__ == "__main__":
    main()
