"""What a run records as it goes: one ``sv_runs`` row per epoch, the console line, TensorBoard
scalars, and the training-curves chart at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from sqlvision.catalog import utcnow
from sqlvision.db.base import Backend, Column, arrow_schema

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


def ensure_runs_table(backend: Backend) -> None:
    """Create ``sv_runs`` if needed."""
    if not backend.table_exists(RUNS):
        backend.create_table(RUNS, RUN_COLUMNS)


class RunLog:
    """Records the epochs of run ``run_id`` of model ``name`` (idempotent per epoch, so a
    resumed run rewrites rather than duplicates an epoch)."""

    def __init__(self, backend: Backend, name: str, epochs: int, tensorboard: str | None,
                 log: Any) -> None:
        self.backend, self.name, self.epochs, self.log = backend, name, epochs, log
        ensure_runs_table(backend)
        self.writer = _tensorboard(tensorboard)

    def epoch(self, run_id: str, record: dict[str, Any], phase: str | None = None) -> None:
        """Store one epoch's metrics and print its line."""
        row = {"run_id": [run_id], "model": [self.name], "recorded_at": [utcnow()],
               **{k: [v] for k, v in record.items()}}
        with self.backend.transaction():
            self.backend.execute(f"DELETE FROM {self.backend.quote(RUNS)} WHERE run_id = ? AND epoch = ?",
                                 [run_id, record["epoch"]])
            self.backend.insert(RUNS, pa.table(row, schema=arrow_schema(RUN_COLUMNS)))
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and value is not None:
                    self.writer.add_scalar(key, value, record["epoch"])
        self.log(epoch_line(record, self.epochs, phase))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_line(record: dict[str, Any], epochs: int, phase: str | None = None) -> str:
    """``epoch 2/5 (last:4): train loss ... acc ..., val loss ... acc ..., 40 img/s``."""
    val = (f", val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
           if record["val_loss"] is not None else "")
    return (f"epoch {record['epoch']}/{epochs}{f' ({phase})' if phase else ''}: train loss "
            f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f}{val}, "
            f"{record['images_per_second']:.0f} img/s"
            + (f", {record['skipped']} unreadable skipped" if record["skipped"] else ""))


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
    from matplotlib.ticker import MaxNLocator

    from sqlvision.explore import mathtext_safe

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
        if history[0].get(f"val_{metric}") is not None:
            ax.plot(epochs, [h[f"val_{metric}"] for h in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(mathtext_safe(f"{title}: training curves"))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
