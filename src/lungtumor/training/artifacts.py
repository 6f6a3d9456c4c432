"""The files a training run writes besides checkpoints: ``metrics.csv``, ``loss_curves.png`` and the
validation example figure for TensorBoard. Pure functions of the run's history (no Lightning).

``history`` is ``{"epochs": [row, ...], "steps": [[step, loss], ...]}``: one dict per validated epoch
(``epoch``, ``step``, ``train_loss``, ``val_loss``, ``val_dice``, ...; the columns of metrics.csv) and one
training loss per optimiser step.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lungtumor.core.errors import atomic_path, atomic_write_text


def write_metrics_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the epoch rows as CSV (header from the first row's keys), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_history(history: dict[str, list], run_dir: Path, steps_per_epoch: int) -> None:
    """Write ``run_dir/metrics.csv`` and ``run_dir/loss_curves.png`` from the run's history."""
    write_metrics_csv(history["epochs"], run_dir / "metrics.csv")
    write_loss_curves(history, run_dir / "loss_curves.png", steps_per_epoch)


def example_figure(ct: np.ndarray, gt: np.ndarray, pred: np.ndarray):
    """Matplotlib figure: CT slice | ground truth | prediction, each (H, W)."""

    fig = Figure(figsize=(9, 3.2))
    for i, (im, title) in enumerate(((ct, "CT slice"), (gt, "ground truth"), (pred, "prediction"))):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(ct, cmap="gray")
        if i:
            ax.imshow(np.ma.masked_where(im < 0.5, im), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def _smooth(v: np.ndarray, n: int) -> np.ndarray:
    if len(v) < 3:
        return v
    alpha = 2.0 / (max(2, n) + 1)
    out = np.empty_like(v)
    acc = v[0]
    for i, x in enumerate(v):
        acc = alpha * x + (1 - alpha) * acc
        out[i] = acc
    return out


def write_loss_curves(history: dict[str, list], path: Path, steps_per_epoch: int) -> None:
    """Write a PNG of the smoothed per-step training loss, epoch val loss and val Dice (x axis in epochs)."""

    steps = np.asarray(history["steps"], dtype=np.float64).reshape(-1, 2)
    rows = history["epochs"]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    spe = max(1, steps_per_epoch)
    if len(steps):
        ax.plot(steps[:, 0] / spe, steps[:, 1], color="tab:blue", alpha=0.2, lw=0.8)
        ax.plot(
            steps[:, 0] / spe,
            _smooth(steps[:, 1], max(5, spe // 2)),
            color="tab:blue",
            label="train loss (smoothed)",
        )
    if rows:
        ep = np.array([r["epoch"] + 1 for r in rows], dtype=float)
        ax.plot(ep, [r["val_loss"] for r in rows], "o-", color="tab:orange", label="val loss")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["val_dice"] for r in rows], "s--", color="tab:green", label="val Dice (per patient)")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("val Dice")
        ax2.legend(loc="upper right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
