"""Curves of the encoder's training runs, as PNG bytes for the report: the MAE's masked-patch loss
per step, and Expr fine-tuning's validation macro F1 and loss per epoch (with its linear probe's,
for LP-FT).

Built with matplotlib's object API (``Figure``): no global state and no display backend.
"""

import io

from matplotlib.figure import Figure


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (100 dpi, tight)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def mae_loss(steps: list[dict]) -> bytes:
    """The loss of each logged optimizer step (``log.jsonl`` step lines: ``step``, ``loss``)."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="step")
    ax.set(xlabel="optimizer step", ylabel="masked-patch loss", title="MAE pretraining")
    return png(fig)


def finetune_curves(epochs: list[dict], probe: list[dict] | None = None) -> bytes:
    """Validation macro F1 and training loss per epoch (``log.jsonl`` epoch lines: ``epoch``,
    ``val_f1``, ``loss``), and the linear probe's validation F1 whose head started the fine-tune, if
    any."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.plot([r["epoch"] for r in epochs], [r["val_f1"] for r in epochs], marker="o",
            label="validation macro F1")
    ax.plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker="s",
            label="training loss")
    if probe:
        ax.plot([r["epoch"] for r in probe], [r["val_f1"] for r in probe], marker="^",
                linestyle="--", label="linear probe (its head starts the fine-tune)")
    ax.set(xlabel="epoch", title="Expr fine-tuning")
    ax.legend()
    return png(fig)
