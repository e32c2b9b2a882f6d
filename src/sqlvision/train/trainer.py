"""The training run: data selection, model set-up, the epoch loop with checkpoints and resume,
validation and early stopping, then export, check and registration of the best epoch."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Backend, Column, arrow_schema
from sqlvision.errors import SqlvisionError
from sqlvision.models import architectures, registry
from sqlvision.models.bundle import ModelBundle, weights_from_bytes
from sqlvision.models.export import bundle_from_torch
from sqlvision.parallel import cpu_count
from sqlvision.preprocess import PreprocessSpec
from sqlvision.progress import progress_bar
from sqlvision.tables import ImageTable, image_bytes
from sqlvision.train import augment as augmentation
from sqlvision.train.config import TrainConfig
from sqlvision.train.data import ImageStream, Selection, select_rows

RUNS = "sv_runs"
RUN_COLUMNS = (
    Column("run_id", "key", not_null=True),
    Column("model", "key", not_null=True),
    Column("epoch", "int", not_null=True),
    Column("train_loss", "double"),
    Column("train_accuracy", "double"),
    Column("val_loss", "double"),
    Column("val_accuracy", "double"),
    Column("learning_rate", "double"),
    Column("images_per_second", "double"),
    Column("seconds", "double"),
    Column("skipped", "int"),
    Column("recorded_at", "timestamp"),
)
SMALL_IMAGE = 64  # images at most this large train at their own size with the small-image recipe
PHOTO_SIZE = 64  # default input size for larger images with the built-in CNNs


@dataclass
class TrainResult:
    """What a run produced: the registered bundle, per-epoch history, where its files are."""

    bundle: ModelBundle
    history: list[dict[str, Any]]
    run_id: str
    checkpoint_dir: Path
    curves: Path | None
    skipped_unlabeled: int = 0
    skipped_unreadable: int = 0
    best_epoch: int = 0
    messages: list[str] = field(default_factory=list)


# -- data ------------------------------------------------------------------------------------------
def split_rows(selection: Selection, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Positions of training and validation rows: the ``split`` column when it names validation
    rows, else a seeded, stratified hold-out of ``val_fraction``. Test rows are never used."""
    splits = selection.splits
    train = [i for i, s in enumerate(splits) if s in (None, "train")]
    val = [i for i, s in enumerate(splits) if s in ("validation", "val", "valid")]
    if not val and config.val_fraction > 0:
        rng = np.random.default_rng([config.seed, 1])
        by_label: dict[str, list[int]] = {}
        for i in train:
            by_label.setdefault(selection.labels[i], []).append(i)
        held: set[int] = set()
        for positions in by_label.values():
            n = round(len(positions) * config.val_fraction)
            if len(positions) > 1 and n:
                held.update(rng.choice(positions, size=n, replace=False).tolist())
        val = sorted(held)
        train = [i for i in train if i not in held]
    if config.downsample is not None and config.downsample < 1:
        rng = np.random.default_rng([config.seed, 2])
        by_label = {}
        for i in train:
            by_label.setdefault(selection.labels[i], []).append(i)
        kept = []
        for positions in by_label.values():
            n = max(1, round(len(positions) * config.downsample))
            kept += rng.choice(positions, size=n, replace=False).tolist()
        train = sorted(kept)
    return train, val


def data_fingerprint(selection: Selection, train: list[int], val: list[int]) -> str:
    """A hash of which rows, labels and splits a run uses (stored as lineage, checked on resume)."""
    h = hashlib.sha256()
    for part, positions in (("train", train), ("val", val)):
        for i in positions:
            h.update(f"{part}\x1f{selection.ids[i]}\x1f{selection.labels[i]}\x1e".encode())
    return h.hexdigest()[:16]


def sniff_images(backend: Backend, table: ImageTable, keys: list[Any]) -> tuple[int, int, str]:
    """Median height and width and the color mode (``L`` only if all are grayscale) of a sample."""
    stream = ImageStream(backend, table, PreprocessSpec(8, 8, "RGB"), cache_bytes=0)
    sample = keys[:: max(1, len(keys) // 24)][:24]
    sizes, modes = [], set()
    from sqlvision.imaging import decode

    for data, uri in stream.fetch(sample).values():
        try:
            img = decode(image_bytes(data, uri))
        except SqlvisionError:
            continue
        sizes.append(img.size)
        modes.add("L" if img.mode in ("L", "1", "I;16", "LA") else "RGB")
    if not sizes:
        raise SqlvisionError(f"none of the {len(sample)} sampled images of {table.name} decodes",
                             "check the image column (--image-col) and the data")
    width = int(np.median([s[0] for s in sizes]))
    height = int(np.median([s[1] for s in sizes]))
    return height, width, "L" if modes == {"L"} else "RGB"


# -- model -------------------------------------------------------------------------------------------
@dataclass
class Parent:
    """A model to start from: its architecture, spec, classes and PyTorch weights."""

    ref: str
    architecture: str
    spec: PreprocessSpec | None
    classes: list[str] | None
    state: dict[str, Any]


def load_parent(backend: Backend, source: str, arch: str | None) -> Parent:
    """``--from``: a registered model (``name`` or ``name:version``) or a checkpoint file."""
    if os.path.isfile(source):
        import torch

        try:
            blob = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SqlvisionError(f"cannot read checkpoint {source}: {str(exc).splitlines()[0]}",
                                 "give a checkpoint sqlvision wrote, or a PyTorch state dict") from exc
        if isinstance(blob, dict) and "model" in blob and "arch" in blob:
            return Parent(source, blob["arch"], PreprocessSpec.from_dict(blob["spec"]),
                          list(blob["classes"]), blob["model"])
        if isinstance(blob, dict) and blob and all(hasattr(v, "shape") for v in blob.values()):
            if arch is None:
                raise SqlvisionError(f"{source} is a plain state dict", "name its --arch")
            return Parent(source, arch, None, None, blob)
        raise SqlvisionError(f"{source} is not a checkpoint", "give a .pt file written by sqlvision")
    name, version = registry.parse_ref(source)
    bundle = registry.load(backend, name, version)
    if bundle.weights is None:
        raise SqlvisionError(f"model {bundle.ref} has no PyTorch weights (it was imported from ONNX)",
                             "start from a model sqlvision trained, or a checkpoint file")
    return Parent(bundle.ref, bundle.architecture, bundle.spec, bundle.classes,
                  weights_from_bytes(bundle.weights))


def apply_parent(model: Any, parent: Parent, classes: list[str]) -> str:
    """Load the parent's weights; its head too when the classes are the same. Returns a note."""
    state = dict(parent.state)
    head_names = {n for n, _ in model.get_classifier().named_parameters()}
    same_classes = parent.classes == classes
    if not same_classes:
        prefix = _classifier_prefix(model)
        state = {k: v for k, v in state.items() if not (prefix and k.startswith(prefix))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not any(k.endswith(h) for h in head_names)]
    if real_missing or unexpected:
        raise SqlvisionError(
            f"weights of {parent.ref} do not fit {parent.architecture} here "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})",
            "use the same --arch and color mode as the parent model")
    return "all layers" if same_classes else "all but the classifier (new classes)"


def _classifier_prefix(model: Any) -> str | None:
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name + "."
    return None


def freeze_layers(model: Any, spec: str) -> int:
    """``head``: train only the classifier; ``last:N``: the last N top-level blocks (the
    classifier included); ``all``. Returns the number of trainable parameters."""
    if spec != "all":
        blocks = [m for _, m in model.named_children() if any(True for _ in m.parameters())]
        if hasattr(model, "features") and len(blocks) <= 3:  # built-in CNNs: count conv layers
            import torch.nn as nn
            blocks = [m for m in model.features if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
            blocks.append(model.get_classifier())
        head = model.get_classifier()
        keep = [head] if spec == "head" else blocks[-int(spec.split(":")[1]):]
        for p in model.parameters():
            p.requires_grad = False
        for block in (*keep, head):
            for p in block.parameters():
                p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- the run -------------------------------------------------------------------------------------------
class Trainer:
    """One training run of model ``name`` on ``table``; :meth:`fit` does the work."""

    def __init__(self, backend: Backend, name: str, table: ImageTable, config: TrainConfig, *,
                 where: str | None = None, checkpoint_dir: str | os.PathLike[str] | None = None,
                 resume: bool = False, progress: bool | None = None, log: Any = print) -> None:
        self.backend, self.name, self.table = backend, name, table
        self.config = config.validate()
        self.where = where
        self.dir = Path(checkpoint_dir or Path("sqlvision-runs") / name)
        self.resume = resume
        self.progress = progress
        self.log = log

    # -- set-up ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        self.selection = select_rows(self.backend, self.table, self.where)
        sel = self.selection
        if not sel.ids:
            where = f" matching {self.where!r}" if self.where else ""
            raise SqlvisionError(f"no labeled rows in {self.table.name}{where} "
                                 f"({sel.unlabeled} unlabeled)", "check the table, --where and labels")
        self.train_pos, self.val_pos = split_rows(sel, cfg)
        if not self.train_pos:
            raise SqlvisionError(f"no training rows in {self.table.name} (all are validation or test)",
                                 "add rows with split 'train' or NULL")
        self.parent = load_parent(self.backend, cfg.from_model, cfg.arch) if cfg.from_model else None
        counts = Counter(sel.labels[i] for i in self.train_pos)
        self.classes = sorted(counts)
        if len(self.classes) < 2:
            raise SqlvisionError(f"only one class ({self.classes[0]!r}) in the training rows",
                                 "a classifier needs at least two labels")
        if self.parent and self.parent.classes and set(self.classes) <= set(self.parent.classes):
            self.classes = list(self.parent.classes)  # keep the parent's head and class order
        index = {c: i for i, c in enumerate(self.classes)}
        self.val_pos = [i for i in self.val_pos if sel.labels[i] in index]
        self.targets = np.asarray([index.get(lab, -1) for lab in sel.labels], np.int64)
        self.class_counts = counts
        self.spec = self._spec()
        self.arch = cfg.arch or (self.parent.architecture if self.parent else self._default_arch())
        architectures.check_architecture(self.arch)
        if self.parent and self.arch != self.parent.architecture:
            raise SqlvisionError(f"--arch {self.arch} differs from {self.parent.ref}'s "
                                 f"{self.parent.architecture}", "drop --arch to keep the parent's")
        self.fingerprint = data_fingerprint(sel, self.train_pos, self.val_pos)

    def _default_arch(self) -> str:
        small = max(self.spec.height, self.spec.width) <= SMALL_IMAGE
        return architectures.DEFAULT_ARCH if small else "sv_cnn_wide"

    def _spec(self) -> PreprocessSpec:
        cfg = self.config
        if self.parent and self.parent.spec:
            base = self.parent.spec
            mode = base.mode if cfg.grayscale is None else ("L" if cfg.grayscale else "RGB")
            if mode != base.mode:
                raise SqlvisionError(
                    f"{self.parent.ref} takes {base.mode} images but this run asks for {mode}",
                    "drop --grayscale/--rgb: the first layer's channels are fixed by the parent")
            height, width = cfg.image_size or (base.height, base.width)
            return PreprocessSpec(height, width, base.mode, cfg.resize or base.resize,
                                  tuple(cfg.mean or base.mean), tuple(cfg.std or base.std),
                                  base.interpolation, resampler=cfg.resampler or base.resampler)
        keys = [self.selection.ids[i] for i in self.train_pos]
        height, width, mode = sniff_images(self.backend, self.table, keys)
        if cfg.grayscale is not None:
            mode = "L" if cfg.grayscale else "RGB"
        if cfg.image_size:
            height, width = cfg.image_size
        elif max(height, width) > SMALL_IMAGE:
            # Photos: ImageNet's size for pretrained weights; otherwise small enough that a
            # laptop CPU trains an epoch of a few thousand images in seconds, not minutes.
            builtin = cfg.arch is None or cfg.arch in architectures.builtin_architectures()
            height = width = 224 if cfg.pretrained else (PHOTO_SIZE if builtin else 128)
        return PreprocessSpec.for_images(height, width, mode, resize=cfg.resize, mean=cfg.mean,
                                         std=cfg.std, resampler=cfg.resampler)

    def build_model(self) -> Any:
        import torch

        cfg = self.config
        model = architectures.create(self.arch, len(self.classes), self.spec.channels,
                                     drop_rate=cfg.dropout, pretrained=cfg.pretrained and not self.parent,
                                     pretrained_file=cfg.pretrained_file if not self.parent else None)
        self.messages: list[str] = []
        if self.parent:
            loaded = apply_parent(model, self.parent, self.classes)
            self.messages.append(f"started from {self.parent.ref} ({loaded})")
        self.trainable = freeze_layers(model, cfg.train_layers)
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.device == "auto" else cfg.device))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_count())
        return model.to(self.device).to(memory_format=torch.channels_last)

    def build_optimizer(self, model: Any, steps_per_epoch: int) -> tuple[Any, Any]:
        import torch

        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        fine_tuning = bool(self.parent or cfg.pretrained)
        lr = cfg.lr or (0.05 if cfg.optimizer == "sgd" else 3e-3) * (0.3 if fine_tuning else 1.0)
        opt: torch.optim.Optimizer
        sched: torch.optim.lr_scheduler.LRScheduler
        if cfg.optimizer == "sgd":
            wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
            opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd, nesterov=True)
        else:
            wd = 0.01 if cfg.weight_decay is None else cfg.weight_decay
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        total = max(1, cfg.epochs * steps_per_epoch)
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total,
                                                        pct_start=0.25)
        elif cfg.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif cfg.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.1)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        self.lr = lr
        return opt, sched

    # -- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_state(self, model: Any, opt: Any, sched: Any, scaler: Any, epoch: int,
                         step: int) -> dict[str, Any]:
        return {
            "format": 1, "arch": self.arch, "classes": self.classes, "spec": self.spec.to_dict(),
            "config": self.config.to_dict(), "fingerprint": self.fingerprint, "run_id": self.run_id,
            "name": self.name, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler else {},
            "epoch": epoch, "step": step, "global_step": self.global_step,
            "history": self.history, "best": self.best, "bad_rows": sorted(map(str, self.stream.bad)),
            "running": self.running,
        }

    def save_checkpoint(self, state: dict[str, Any], name: str = "last.pt") -> Path:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: a kill leaves the previous checkpoint whole
        return path

    def load_checkpoint(self) -> dict[str, Any] | None:
        import torch

        path = self.dir / "last.pt"
        if not self.resume:
            return None
        if not path.exists():
            raise SqlvisionError(f"no checkpoint to resume in {self.dir}",
                                 "drop --resume to start a new run (or pass --checkpoint-dir)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint or state.get("arch") != self.arch:
            raise SqlvisionError(f"the checkpoint in {self.dir} is for another run (different data, "
                                 "selection or architecture)", "drop --resume or change --checkpoint-dir")
        return state

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        import torch
        import torch.nn.functional as F

        self.prepare()
        cfg = self.config
        sel = self.selection
        self.stream = ImageStream(self.backend, self.table, self.spec,
                                  cache_bytes=cfg.cache_mb << 20, workers=cfg.workers)
        train_keys = [sel.ids[i] for i in self.train_pos]
        train_targets = self.targets[self.train_pos]
        val_keys = [sel.ids[i] for i in self.val_pos]
        val_targets = self.targets[self.val_pos]
        steps_per_epoch = max(1, math.ceil(len(train_keys) / cfg.batch_size))
        model = self.build_model()
        opt, sched = self.build_optimizer(model, steps_per_epoch)
        use_amp = self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        weights = None
        if cfg.balance:
            freq = np.asarray([self.class_counts.get(c, 0) for c in self.classes], np.float64)
            weights = torch.tensor(freq.sum() / np.maximum(freq, 1) / len(freq), dtype=torch.float32,
                                   device=self.device)
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, -1, 1, 1) * 255
        inv_std = 1 / (torch.tensor(self.spec.std, device=self.device).view(1, -1, 1, 1) * 255)
        aug = augmentation.build(cfg.augment, self.spec.channels)

        self.run_id = uuid.uuid4().hex[:12]
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.global_step = 0
        self.running: dict[str, float] = {}
        start_epoch, start_step = 0, 0
        state = self.load_checkpoint()
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            self.run_id, self.history, self.best = state["run_id"], state["history"], state["best"]
            self.global_step, self.running = state["global_step"], state.get("running") or {}
            start_epoch, start_step = state["epoch"], state["step"]
            self.messages.append(f"resumed run {self.run_id} at epoch {start_epoch + 1}, "
                                 f"step {start_step}")
        ensure_runs_table(self.backend)
        self.dir.mkdir(parents=True, exist_ok=True)
        best_state = None
        if (self.dir / "best.pt").exists() and state is not None:
            best_state = torch.load(self.dir / "best.pt", map_location="cpu", weights_only=True)["model"]
        writer = _tensorboard(cfg.tensorboard)

        def to_input(pixels: np.ndarray) -> Any:
            x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            x = (x.float() - mean) * inv_std
            return x.contiguous(memory_format=torch.channels_last)

        stale = 0
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            skip = start_step if epoch == start_epoch else 0
            run = self.running if skip else {}
            loss_sum, correct, seen = run.get("loss", 0.0), run.get("correct", 0), run.get("seen", 0)
            skipped = int(run.get("skipped", 0))
            train_seconds = run.get("seconds", 0.0)
            step = skip
            bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                               enabled=self.progress, initial=skip)
            try:
                tick = time.perf_counter()
                for batch in self.stream.batches(train_keys, train_targets, cfg.batch_size,
                                                 seed=cfg.seed, epoch=epoch, augment=aug,
                                                 skip_batches=skip):
                    skipped += len(batch.failed)
                    if not len(batch.targets):
                        continue
                    x = to_input(batch.pixels)
                    y = torch.from_numpy(batch.targets).to(self.device)
                    try:
                        with torch.autocast(self.device.type, enabled=use_amp):
                            logits = model(x)
                            loss = F.cross_entropy(logits, y, weight=weights,
                                                   label_smoothing=cfg.label_smoothing)
                        opt.zero_grad(set_to_none=True)
                        if scaler:
                            scaler.scale(loss).backward()
                            scaler.step(opt)
                            scaler.update()
                        else:
                            loss.backward()
                            opt.step()
                    except (torch.OutOfMemoryError, MemoryError) as exc:
                        raise SqlvisionError(
                            f"a batch of {cfg.batch_size} images does not fit in memory",
                            f"use a smaller --batch-size (e.g. {max(1, cfg.batch_size // 2)})") from exc
                    if self.global_step < getattr(sched, "total_steps", math.inf):
                        sched.step()
                    step += 1
                    self.global_step += 1
                    n = len(y)
                    loss_sum += float(loss.detach()) * n
                    correct += int((logits.detach().argmax(1) == y).sum())
                    seen += n
                    now = time.perf_counter()
                    train_seconds += now - tick
                    tick = now
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                    img_s=f"{seen / max(train_seconds, 1e-9):.0f}")
                    if step % cfg.checkpoint_every == 0 and step < steps_per_epoch:
                        self.running = {"loss": loss_sum, "correct": correct, "seen": seen,
                                        "skipped": skipped, "seconds": train_seconds}
                        self.save_checkpoint(self.checkpoint_state(model, opt, sched, scaler, epoch, step))
            finally:
                bar.close()
            self.running = {}
            val_loss, val_acc = self.evaluate(model, val_keys, val_targets, to_input)
            record = {
                "epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1), "val_loss": val_loss,
                "val_accuracy": val_acc, "learning_rate": float(opt.param_groups[0]["lr"]),
                "images_per_second": seen / max(train_seconds, 1e-9), "seconds": train_seconds,
                "skipped": skipped,
            }
            self.history.append(record)
            self.log_epoch(record)
            if writer is not None:
                for key, value in record.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key, value, epoch + 1)
            improved = self.improved(record)
            if improved:
                self.best = dict(record)
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                self.save_checkpoint({"model": best_state, "epoch": epoch + 1}, "best.pt")
                stale = 0
            else:
                stale += 1
            self.save_checkpoint(self.checkpoint_state(model, opt, sched, scaler, epoch + 1, 0))
            if cfg.patience and stale >= cfg.patience:
                self.messages.append(f"early stop after epoch {epoch + 1}: no improvement in "
                                     f"{cfg.patience} epochs")
                break
        if writer is not None:
            writer.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        return self.finish(model, val_keys, train_keys)

    def improved(self, record: dict[str, Any]) -> bool:
        if not self.best:
            return True
        key = "val_accuracy" if record["val_accuracy"] is not None else "train_accuracy"
        loss_key = "val_loss" if record["val_loss"] is not None else "train_loss"
        return (record[key], -record[loss_key]) > (self.best[key], -self.best[loss_key])

    def evaluate(self, model: Any, keys: list[Any], targets: np.ndarray,
                 to_input: Any) -> tuple[float | None, float | None]:
        import torch
        import torch.nn.functional as F

        if not keys:
            return None, None
        model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for batch in self.stream.batches(keys, targets, max(self.config.batch_size, 256)):
                if not len(batch.targets):
                    continue
                y = torch.from_numpy(batch.targets).to(self.device)
                logits = model(to_input(batch.pixels)).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
        return (loss_sum / seen, correct / seen) if seen else (None, None)

    def log_epoch(self, record: dict[str, Any]) -> None:
        row = {"run_id": [self.run_id], "model": [self.name], "recorded_at": [utcnow()],
               **{k: [v] for k, v in record.items()}}
        with self.backend.transaction():
            self.backend.execute(f"DELETE FROM {self.backend.quote(RUNS)} WHERE run_id = ? AND epoch = ?",
                                 [self.run_id, record["epoch"]])
            self.backend.insert(RUNS, pa.table(row, schema=arrow_schema(RUN_COLUMNS)))
        val = (f", val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
               if record["val_loss"] is not None else "")
        self.log(f"epoch {record['epoch']}/{self.config.epochs}: train loss "
                 f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}{val}, "
                 f"{record['images_per_second']:.0f} img/s"
                 + (f", {record['skipped']} unreadable skipped" if record["skipped"] else ""))

    # -- export and registration ---------------------------------------------------------------------------
    def finish(self, model: Any, val_keys: list[Any], train_keys: list[Any]) -> TrainResult:
        sample_keys = (val_keys or train_keys)[:16]
        sample = [b.pixels for b in self.stream.batches(sample_keys, np.zeros(len(sample_keys), np.int64),
                                                        len(sample_keys) or 1)]
        pixels = np.concatenate(sample) if sample else np.zeros((1, *self.spec.input_shape), np.uint8)
        best = self.best or (self.history[-1] if self.history else {})
        sel = self.selection
        metrics = {k: v for k, v in best.items() if k not in ("learning_rate",)}
        metrics.update({"epochs_run": len(self.history), "best_epoch": best.get("epoch"),
                        "train_rows": len(self.train_pos), "val_rows": len(self.val_pos),
                        "trainable_parameters": self.trainable})
        lineage = {"source_table": self.table.name, "where": self.where,
                   "id_col": self.table.id, "image_col": self.table.image, "label_col": self.table.label,
                   "row_count": len(self.train_pos) + len(self.val_pos),
                   "fingerprint": self.fingerprint, "run_id": self.run_id,
                   "parent": self.parent.ref if self.parent else None,
                   "unlabeled_skipped": sel.unlabeled, "unreadable_skipped": len(self.stream.bad),
                   "database": self.backend.url.redacted}
        bundle = bundle_from_torch(model, name=self.name, architecture=self.arch,
                                   classes=self.classes, spec=self.spec, example=pixels,
                                   metrics=metrics, config=self.config.to_dict(), lineage=lineage)
        registry.save(self.backend, bundle)
        curves = plot_curves(self.history, self.dir / f"{self.name}-curves.png", self.name)
        return TrainResult(bundle, self.history, self.run_id, self.dir, curves, sel.unlabeled,
                           len(self.stream.bad), int(best.get("epoch") or 0), self.messages)


def ensure_runs_table(backend: Backend) -> None:
    """Create ``sv_runs`` if needed."""
    if not backend.table_exists(RUNS):
        backend.create_table(RUNS, RUN_COLUMNS)


def _tensorboard(logdir: str | None) -> Any:
    if not logdir:
        return None
    from sqlvision.deps import require

    require("tensorboard", "train")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(logdir)


def plot_curves(history: list[dict[str, Any]], out: Path, title: str) -> Path | None:
    """Loss and accuracy per epoch, training and validation (PNG); ``None`` without matplotlib."""
    if not history:
        return None
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        if history[0].get(f"val_{metric}") is not None:
            ax.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run_summary(result: TrainResult) -> str:
    """One line for the CLI."""
    m = result.bundle.metrics
    acc = m.get("val_accuracy") if m.get("val_accuracy") is not None else m.get("train_accuracy")
    which = "validation" if m.get("val_accuracy") is not None else "training"
    acc_text = f"{which} accuracy {acc:.4f}" if acc is not None else "no epochs run"
    return (f"model {result.bundle.ref} registered ({result.bundle.architecture}, "
            f"{len(result.bundle.classes)} classes, {acc_text} at epoch {m.get('best_epoch')})")

