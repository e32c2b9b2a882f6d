"""The training run: the epoch loop over a :class:`~sqlvision.train.plan.TrainPlan`, with
phases (the classifier alone, then deeper layers), checkpoints and resume, validation and early
stopping, then export, check and registration of the best epoch.

The parts live beside it: the plan (rows, recipe, spec) in ``plan``, starting weights and
frozen layers in ``transfer``, optimizers and schedules in ``optim``, checkpoints in
``checkpoint``, ``sv_runs`` and the curves in ``runlog``.
"""

from __future__ import annotations

import copy
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import registry
from sqlvision.models.bundle import ModelBundle
from sqlvision.models.export import bundle_from_torch
from sqlvision.parallel import cpu_count
from sqlvision.progress import progress_bar
from sqlvision.tables import ImageTable
from sqlvision.train import augment as augmentation
from sqlvision.train import optim
from sqlvision.train.checkpoint import FORMAT, Checkpoints
from sqlvision.train.config import TrainConfig
from sqlvision.train.data import Batch, ImageStream
from sqlvision.train.plan import TrainPlan, make_plan
from sqlvision.train.runlog import RunLog, plot_curves
from sqlvision.train.transfer import apply_parent, build_network, freeze_layers, train_mode


@dataclass
class TrainResult:
    """What a run produced: the registered bundle, per-epoch history, where its files are."""

    bundle: ModelBundle
    history: list[dict[str, Any]]
    run_id: str
    checkpoint_dir: Path | None
    curves: Path | None
    skipped_unlabeled: int = 0
    skipped_unreadable: int = 0
    best_epoch: int = 0
    messages: list[str] = field(default_factory=list)


@dataclass
class RunState:
    """Where a run stands: saved in every checkpoint, restored by ``--resume``."""

    run_id: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # the epoch to run next (0-based)
    step: int = 0  # batches of that epoch already done
    running: dict[str, Any] = field(default_factory=dict)  # that epoch's partial sums


@dataclass
class EpochSums:
    """Running loss and accuracy of one epoch."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def add(self, loss: float, correct: int, n: int) -> None:
        self.loss += loss * n
        self.correct += correct
        self.seen += n


class Trainer:
    """One training run of model ``name`` on ``table``; :meth:`fit` does the work."""

    def __init__(self, backend: Backend, name: str, table: ImageTable, config: TrainConfig, *,
                 where: str | None = None, checkpoint_dir: str | os.PathLike[str] | None = None,
                 resume: bool = False, progress: bool | None = None, log: Any = print) -> None:
        self.backend, self.name, self.table = backend, registry.check_model_name(name), table
        self.config = config.validate()
        self.where = where
        self.checkpoints = Checkpoints(Path(checkpoint_dir or Path("sqlvision-runs") / name))
        self.resume = resume
        self.progress = progress
        self.log = log

    @property
    def dir(self) -> Path:
        return self.checkpoints.dir

    def plan(self) -> TrainPlan:
        """Rows, classes, recipe and preprocessing of this run (reads the table, trains nothing)."""
        return make_plan(self.backend, self.table, self.config, self.where)

    def fit(self) -> TrainResult:
        """Train, then register the best epoch as the next version of the model."""
        plan = self.plan()
        messages: list[str] = []

        def note(text: str) -> None:
            messages.append(text)
            self.log(text)

        for text in plan.notes:
            note(text)
        run = _Run(self, plan, note)
        run.train()
        return run.finish(messages)


class _Run:
    """The state of one run in progress: model, data stream, device, phases, checkpoints."""

    def __init__(self, trainer: Trainer, plan: TrainPlan, note: Any) -> None:
        import torch

        self.trainer, self.plan, self.note = trainer, plan, note
        cfg = self.cfg = plan.config
        self.stream = ImageStream(trainer.backend, trainer.table, plan.spec,
                                  cache_bytes=cfg.cache_mb << 20, workers=cfg.workers)
        self.train_keys = plan.keys(plan.train_pos)
        self.train_targets = plan.targets[plan.train_pos]
        self.val_keys = plan.keys(plan.val_pos)
        self.val_targets = plan.targets[plan.val_pos]
        self.batch_size = int(cfg.batch_size or 64)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_keys) / self.batch_size))
        self.epochs = int(cfg.epochs or 0)
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.device == "auto" else cfg.device))
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_count())
        # --seed fixes the initialization and dropout too (data order and augmentation are
        # seeded per image): the same command on the same machine trains the same model.
        torch.manual_seed(cfg.seed)
        self.model, source = build_network(plan.arch, len(plan.classes), plan.spec.channels,
                                           dropout=cfg.dropout,
                                           pretrained_weights=bool(cfg.pretrained) and not plan.parent,
                                           pretrained_file=cfg.pretrained_file)
        self.weights_source = source or (plan.parent.ref if plan.parent else None)
        if source:
            note(f"pretrained weights: {source}")
        if plan.parent:
            note(f"started from {plan.parent.ref} "
                 f"({apply_parent(self.model, plan.parent, plan.classes)})")
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last)
        self.fine_tuning = bool(plan.parent or cfg.pretrained)
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.class_weights = self._class_weights()
        mean = torch.tensor(plan.spec.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.mean, self.inv_std = mean, 1 / (
            torch.tensor(plan.spec.std, device=self.device).view(1, -1, 1, 1) * 255)
        self.augment = augmentation.build(cfg.augment or "none", plan.spec.channels)
        self.state = RunState(uuid.uuid4().hex[:12])
        self.best_weights: dict[str, Any] | None = None
        self.trainable = 0
        self.phase: str | None = None
        self.optimizer: Any = None
        self.schedule: Any = None
        self.runlog = RunLog(trainer.backend, trainer.name, self.epochs, cfg.tensorboard, trainer.log)
        saved = self._restore() if trainer.resume else None
        if saved is None:
            self.enter_phase(0)
            if cfg.probe:
                self.probe()

    # -- phases ------------------------------------------------------------------------------------
    def phase_of(self, epoch: int) -> str:
        """``head`` during the recipe's first epochs (classifier alone), then ``--train-layers``."""
        layers = self.cfg.train_layers or "all"
        return "head" if epoch < int(self.cfg.head_epochs or 0) else layers

    def phase_epochs(self, epoch: int) -> int:
        phase = self.phase_of(epoch)
        return sum(1 for e in range(self.epochs) if self.phase_of(e) == phase)

    def enter_phase(self, epoch: int) -> None:
        """Freeze for the phase of ``epoch`` and give it its own optimizer and schedule."""
        phase = self.phase_of(epoch)
        if phase == self.phase:
            return
        self.phase = phase
        self.trainable = max(self.trainable, freeze_layers(self.model, phase))
        pretrained_layers = self.fine_tuning and phase != "head"
        lr = optim.peak_lr(self.cfg, pretrained_layers)
        scale = self.plan.recipe.backbone_lr_scale if pretrained_layers else 1.0
        self.optimizer = optim.build_optimizer(self.cfg, optim.param_groups(self.model, lr, scale))
        self.schedule = optim.build_schedule(self.cfg, self.optimizer,
                                             self.phase_epochs(epoch) * self.steps_per_epoch)
        if epoch and self._phased:
            self.note(f"epoch {epoch + 1}: now training {phase} "
                      f"({sum(p.numel() for p in self.model.parameters() if p.requires_grad):,} "
                      "parameters)")

    def probe(self) -> None:
        """Start the new classifier from a logistic regression on the frozen network's features
        of the training images (linear probing before fine-tuning: a random head would first
        pull the pretrained layers towards noise). One pass without augmentation; it also fills
        the decode cache for the first epoch."""
        import torch

        from sqlvision.train.logistic import fit_linear_head

        started = time.perf_counter()
        self.model.eval()
        features, targets = [], []
        with torch.no_grad():
            for batch in self.stream.batches(self.train_keys, self.train_targets, 64):
                if len(batch.targets):
                    x = self.to_input(batch.pixels)
                    out = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                    features.append(out.float().cpu().numpy())
                    targets.append(batch.targets)
        if not features:
            return
        names = np.asarray(self.plan.classes)[np.concatenate(targets)]
        if set(names) != set(self.plan.classes):
            self.note("classifier not probed: some classes have no decodable training images")
            return
        head = fit_linear_head(np.concatenate(features), names, seed=self.cfg.seed,
                               classes=self.plan.classes)
        head.load_into(self.model.get_classifier())
        _, val_acc = self.validate()
        val = f", validation accuracy {val_acc:.4f}" if val_acc is not None else ""
        self.note(f"classifier initialised by logistic regression (C={head.c:g}, by 3-fold "
                  f"cross-validation) on the frozen features of {len(names)} images{val} "
                  f"({time.perf_counter() - started:.0f} s)")

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        stale = 0
        for epoch in range(self.state.epoch, self.epochs):
            self.enter_phase(epoch)
            sums = self.train_epoch(epoch)
            val_loss, val_acc = self.validate()
            record = {
                "epoch": epoch + 1, "train_loss": sums.loss / max(sums.seen, 1),
                "train_accuracy": sums.correct / max(sums.seen, 1), "val_loss": val_loss,
                "val_accuracy": val_acc,
                "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                "images_per_second": sums.seen / max(sums.seconds, 1e-9), "seconds": sums.seconds,
                "skipped": sums.skipped,
            }
            self.state.history.append(record)
            self.runlog.epoch(self.state.run_id, record, self.phase if self._phased else None)
            if self._improved(record):
                self.state.best = dict(record)
                self.best_weights = copy.deepcopy(
                    {k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                self.trainer.checkpoints.save({"model": self.best_weights, "epoch": epoch + 1},
                                              "best.pt")
                stale = 0
            else:
                stale += 1
            self.state.epoch, self.state.step, self.state.running = epoch + 1, 0, {}
            self.trainer.checkpoints.save(self.checkpoint_state())
            if cfg.patience and stale >= cfg.patience:
                self.note(f"early stop after epoch {epoch + 1}: no improvement in "
                          f"{cfg.patience} epochs")
                break
        self.runlog.close()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    @property
    def _phased(self) -> bool:
        return self.phase_epochs(0) != self.epochs

    def to_input(self, pixels: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last)

    def train_epoch(self, epoch: int) -> EpochSums:
        cfg = self.cfg
        skip = self.state.step if epoch == self.state.epoch else 0
        sums = EpochSums(**self.state.running) if skip else EpochSums()
        train_mode(self.model, frozen_norm=self.plan.recipe.frozen_norm and self.fine_tuning)
        bar = progress_bar(self.steps_per_epoch, f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                           enabled=self.trainer.progress, initial=skip)
        step = skip
        try:
            tick = time.perf_counter()
            for batch in self.stream.batches(self.train_keys, self.train_targets, self.batch_size,
                                             seed=cfg.seed, epoch=epoch, augment=self.augment,
                                             skip_batches=skip):
                sums.skipped += len(batch.failed)
                if not len(batch.targets):
                    continue
                loss, correct = self.step(batch)
                step += 1
                sums.add(loss, correct, len(batch.targets))
                now = time.perf_counter()
                sums.seconds += now - tick
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{sums.loss / sums.seen:.3f}", acc=f"{sums.correct / sums.seen:.3f}",
                                img_s=f"{sums.seen / max(sums.seconds, 1e-9):.0f}")
                if step % cfg.checkpoint_every == 0 and step < self.steps_per_epoch:
                    self.state.epoch, self.state.step = epoch, step
                    self.state.running = vars(sums).copy()
                    self.trainer.checkpoints.save(self.checkpoint_state())
        finally:
            bar.close()
        return sums

    def step(self, batch: Batch) -> tuple[float, int]:
        """One optimizer step; returns the batch's loss and correct count."""
        import torch
        import torch.nn.functional as F

        x = self.to_input(batch.pixels)
        y = torch.from_numpy(batch.targets).to(self.device)
        try:
            with torch.autocast(self.device.type, enabled=self.use_amp):
                logits = self.model(x)
                loss = F.cross_entropy(logits, y, weight=self.class_weights,
                                       label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise SqlvisionError(
                f"a batch of {self.batch_size} images does not fit in memory",
                f"use a smaller --batch-size (e.g. {max(1, self.batch_size // 2)})") from exc
        if self.schedule.last_epoch < getattr(self.schedule, "total_steps", math.inf):
            self.schedule.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())

    def validate(self) -> tuple[float | None, float | None]:
        import torch
        import torch.nn.functional as F

        if not self.val_keys:
            return None, None
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for batch in self.stream.batches(self.val_keys, self.val_targets,
                                             max(self.batch_size, 256)):
                if not len(batch.targets):
                    continue
                y = torch.from_numpy(batch.targets).to(self.device)
                logits = self.model(self.to_input(batch.pixels)).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
        return (loss_sum / seen, correct / seen) if seen else (None, None)

    def _improved(self, record: dict[str, Any]) -> bool:
        best = self.state.best
        if not best:
            return True
        key = "val_accuracy" if record["val_accuracy"] is not None else "train_accuracy"
        loss_key = "val_loss" if record["val_loss"] is not None else "train_loss"
        return (record[key], -record[loss_key]) > (best[key], -best[loss_key])

    def _class_weights(self) -> Any:
        if not self.cfg.balance:
            return None
        import torch

        freq = np.asarray([self.plan.class_counts.get(c, 0) for c in self.plan.classes], np.float64)
        return torch.tensor(freq.sum() / np.maximum(freq, 1) / len(freq), dtype=torch.float32,
                            device=self.device)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        plan, s = self.plan, self.state
        return {
            "format": FORMAT, "arch": plan.arch, "classes": plan.classes, "spec": plan.spec.to_dict(),
            "config": self.cfg.to_dict(), "fingerprint": plan.fingerprint, "run_id": s.run_id,
            "name": self.trainer.name, "model": self.model.state_dict(),
            "phase": self.phase, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": s.epoch, "step": s.step, "history": s.history, "best": s.best,
            "bad_rows": sorted(map(str, self.stream.bad)), "running": s.running,
        }

    def _restore(self) -> dict[str, Any]:
        """Continue from the last checkpoint: weights, the phase's optimizer, position, history."""
        saved = self.trainer.checkpoints.resume_state(self.plan.fingerprint, self.plan.arch)
        if saved["epoch"] >= self.epochs:
            version = registry.version_of_run(self.trainer.backend, self.trainer.name, saved["run_id"])
            if version is not None:
                raise SqlvisionError(
                    f"run {saved['run_id']} already finished and is registered as "
                    f"{self.trainer.name}:{version}; nothing to resume",
                    "drop --resume to train a new version (or raise --epochs to continue it)")
        self.model.load_state_dict(saved["model"])
        s = self.state = RunState(saved["run_id"], saved["history"], saved["best"], saved["epoch"],
                                  saved["step"], saved.get("running") or {})
        self.enter_phase(s.epoch)
        if saved.get("phase", self.phase) == self.phase:  # else a new phase starts fresh
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["scheduler"])
            if self.scaler and saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
        self.best_weights = self.trainer.checkpoints.best_weights()
        self.note(f"resuming run {s.run_id} at epoch {s.epoch + 1}, step {s.step}")
        return saved

    # -- export and registration -------------------------------------------------------------------
    def finish(self, messages: list[str]) -> TrainResult:
        plan, s, trainer = self.plan, self.state, self.trainer
        sample_keys = (self.val_keys or self.train_keys)[:16]
        sample = [b.pixels for b in self.stream.batches(sample_keys, np.zeros(len(sample_keys), np.int64),
                                                        len(sample_keys) or 1)]
        pixels = np.concatenate(sample) if sample else np.zeros((1, *plan.spec.input_shape), np.uint8)
        best = s.best or (s.history[-1] if s.history else {})
        metrics = {k: v for k, v in best.items() if k not in ("learning_rate",)}
        metrics.update({"epochs_run": len(s.history), "best_epoch": best.get("epoch"),
                        "train_rows": len(plan.train_pos), "val_rows": len(plan.val_pos),
                        "trainable_parameters": self.trainable})
        lineage = {"source_table": trainer.table.name, "where": trainer.where,
                   "id_col": trainer.table.id, "image_col": trainer.table.image,
                   "label_col": trainer.table.label,
                   "row_count": len(plan.train_pos) + len(plan.val_pos),
                   "fingerprint": plan.fingerprint, "run_id": s.run_id,
                   "parent": plan.parent.ref if plan.parent else None,
                   "recipe": plan.recipe.name, "weights_source": self.weights_source,
                   "unlabeled_skipped": plan.selection.unlabeled,
                   "unreadable_skipped": len(self.stream.bad),
                   "database": trainer.backend.url.redacted}
        bundle = bundle_from_torch(self.model, name=trainer.name, architecture=plan.arch,
                                   classes=plan.classes, spec=plan.spec, example=pixels,
                                   metrics=metrics, config=self.cfg.to_dict(), lineage=lineage)
        registry.save(trainer.backend, bundle)
        curves = plot_curves(s.history, trainer.dir / f"{trainer.name}-curves.png", trainer.name)
        return TrainResult(bundle, s.history, s.run_id, trainer.dir, curves,
                           plan.selection.unlabeled, len(self.stream.bad),
                           int(best.get("epoch") or 0), messages)


def run_summary(result: TrainResult) -> str:
    """One line for the CLI."""
    m = result.bundle.metrics
    acc = m.get("val_accuracy") if m.get("val_accuracy") is not None else m.get("train_accuracy")
    which = "validation" if m.get("val_accuracy") is not None else "training"
    acc_text = f"{which} accuracy {acc:.4f}" if acc is not None else "no epochs run"
    when = f" at epoch {m['best_epoch']}" if m.get("best_epoch") else ""
    head = ", logistic regression head" if m.get("head") == "logistic" else ""
    return (f"model {result.bundle.ref} registered ({result.bundle.architecture}{head}, "
            f"{len(result.bundle.classes)} classes, {acc_text}{when})")
