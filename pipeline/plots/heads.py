"""PNG plots of a head run: training curves, VA traces, the Expr confusion matrix, per-AU F1 bars.

Each figure is rendered to memory and written atomically, so a killed run leaves no half-written
PNG. Figures are built with matplotlib's object API (``Figure``), not pyplot: no global state and no
display backend, so plotting is safe in a headless training job.
"""

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, VA_NAMES
from pipeline.runs import atomic_write_bytes


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def training_curves(log: list[dict], path: Path) -> Path:
    """Training loss and validation score per epoch (best epoch marked)."""
    epochs = [r["epoch"] for r in log]
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in log], marker=".")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    scores = [r["val_score"] for r in log]
    ax2.plot(epochs, scores, marker=".", color="tab:green")
    best = int(np.argmax(scores))
    ax2.axvline(epochs[best], color="grey", ls=":", label=f"best epoch {epochs[best]}")
    ax2.set(xlabel="epoch", ylabel="official score", title="validation (whole videos)")
    ax2.legend()
    return _save(fig, path)


def va_traces(preds: dict[str, np.ndarray], annotations: dict, path: Path, videos: int = 3) -> Path:
    """Valence and arousal against the labels for the first few validation videos."""
    names = sorted(preds)[:videos]
    fig = Figure(figsize=(12, 2.4 * len(names)), layout="tight")
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, video in enumerate(names):
        ann = annotations[video]
        frames = np.arange(1, ann.num_frames + 1)
        for d, name in enumerate(VA_NAMES):
            ax = axes[row, d]
            label = np.where(ann.valid, ann.labels[:, d], np.nan)  # gaps where the label is invalid
            ax.plot(frames, label, color="black", lw=1, label="label")
            pred = preds[video][: ann.num_frames, d]
            ax.plot(np.arange(1, len(pred) + 1), pred, color="tab:red", lw=1, label="prediction")
            ax.set(ylim=(-1.05, 1.05), title=f"{video}: {name}", xlabel="frame")
    axes[0, 0].legend(loc="upper right")
    return _save(fig, path)


def confusion_matrix(pred: np.ndarray, true: np.ndarray, path: Path) -> Path:
    """Row-normalised Expr confusion matrix over the valid frames."""
    C = len(EXPR_CLASSES)
    counts = np.zeros((C, C))
    np.add.at(counts, (true.astype(int), pred.astype(int)), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(C), EXPR_CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(C), EXPR_CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title="Expr confusion (row-normalised)")
    for i in range(C):
        for j in range(C):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def au_f1_bars(before: dict, after: dict, path: Path) -> Path:
    """F1 of each AU at threshold 0.5 and at the thresholds chosen on validation."""
    x = np.arange(len(AU_NAMES))
    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, [before[a] for a in AU_NAMES], 0.4, label=f"0.5 (mean {before['score']:.3f})")
    ax.bar(x + 0.2, [after[a] for a in AU_NAMES], 0.4, label=f"chosen (mean {after['score']:.3f})")
    ax.set_xticks(x, AU_NAMES)
    ax.set(ylabel="F1", ylim=(0, 1), title="per-AU F1 on validation")
    ax.legend()
    return _save(fig, path)
