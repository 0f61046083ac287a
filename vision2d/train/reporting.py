"""Per-epoch metrics of a training run: CSV table, PNG plot of loss and accuracy curves, optional TensorBoard."""
from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure  # the Figure API renders with Agg: no display, no global backend switch

from ..checkpoint import atomic_write

METRICS_FILE = "metrics.csv"
PLOT_FILE = "curves.png"


def write_metrics_csv(history: list[dict], path: Path) -> None:
    """Write one row per epoch (the keys of the history rows as columns), atomically."""
    columns = list(dict.fromkeys(key for row in history for key in row))

    def write(temp_path: Path) -> None:
        with open(temp_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)


def plot_curves(history: list[dict], path: Path) -> None:
    """Save a PNG with loss (train, val) and accuracy (val top-1/top-5, and EMA top-1) against epochs."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for key, label in (("train_loss", "train (augmented)"), ("val_loss", "val"), ("ema_val_loss", "val, EMA")):
        if key in history[0]:
            loss_axes.plot(epochs, [row[key] for row in history], marker=".", label=label)
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5"), ("ema_val_top1", "top-1, EMA")):
        if key in history[0]:
            accuracy_axes.plot(epochs, [row[key] for row in history], marker=".", label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    atomic_write(path, lambda temp_path: figure.savefig(temp_path, format="png", dpi=100))


class TensorBoardLogger:
    """Scalars of each history row, written with torch's SummaryWriter (needs the tensorboard package)."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from error
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, global_step=row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
