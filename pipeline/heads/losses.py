"""Per-task losses over the counted frames of a batch (Zhou et al. 2024, ABAW6, "Losses").

Only frames whose label is valid and that are not window padding enter a loss: they are selected
before any arithmetic, so an uncounted label's value (even NaN) cannot reach the loss or its
gradient.

- VA: 1 - CCC per dimension, summed over valence and arousal (optionally plus MSE).
- Expr: cross-entropy, optionally class-weighted or focal.
- AU: BCE with logits, optionally with a positive weight per AU.
"""

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.affwild2 import EXPR_CLASSES


def ccc_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """1 - CCC of (N,) series with population moments, as the metric defines them."""
    mp, mt = pred.mean(), true.mean()
    cov = ((pred - mp) * (true - mt)).mean()
    denom = pred.var(unbiased=False) + true.var(unbiased=False) + (mp - mt) ** 2
    return 1 - 2 * cov / (denom + 1e-8)


class TaskLoss:
    """The loss of one task on (B, T, K) outputs.

    Args:
        task: va, expr or au.
        va_loss: "ccc" (paper) or "ccc+mse".
        class_weight: Expr (8,) weights or None.
        focal_gamma: Expr focal-loss exponent; 0 is plain cross-entropy.
        pos_weight: AU (12,) positive weights or None.
    """

    def __init__(self, task: str, va_loss: str = "ccc", class_weight: torch.Tensor | None = None,
                 focal_gamma: float = 0.0, pos_weight: torch.Tensor | None = None):
        self.task, self.va_loss = task, va_loss
        self.class_weight, self.focal_gamma, self.pos_weight = class_weight, focal_gamma, pos_weight

    def __call__(self, out: torch.Tensor, labels: torch.Tensor,
                 counted: torch.Tensor) -> torch.Tensor:
        """
        Args:
            out: model outputs (B, T, K).
            labels: (B, T, K) float (Expr: class index in column 0).
            counted: (B, T) bool, true on frames that count (valid label, real frame).
        """
        out = out[counted].float()  # (M, K) counted frames only
        labels = labels[counted]  # (M, K)
        if len(out) == 0:
            return out.sum() * 0.0  # keeps the graph: no counted frame in this batch
        if self.task == "va":
            loss = sum(ccc_loss(out[:, i], labels[:, i]) for i in range(out.shape[1]))
            if self.va_loss == "ccc+mse":
                loss = loss + F.mse_loss(out, labels)
            return loss
        if self.task == "expr":
            target = labels[:, 0].long()
            weight = None if self.class_weight is None else self.class_weight.to(out.device)
            if self.focal_gamma == 0:
                return F.cross_entropy(out, target, weight=weight)
            logp = F.log_softmax(out, dim=1).gather(1, target[:, None])[:, 0]  # (M,)
            focal = -((1 - logp.exp()) ** self.focal_gamma) * logp
            if weight is None:
                return focal.mean()
            w = weight[target]
            return (w * focal).sum() / w.sum()
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(out.device)
        return F.binary_cross_entropy_with_logits(out, labels, pos_weight=pos_weight)


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Expr weights N / (C * n_c) from the training frames' labels (a class absent from them gets
    0)."""
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64)
    weight = np.divide(len(labels), num_classes * counts, out=np.zeros(num_classes),
                       where=counts > 0)
    return torch.tensor(weight, dtype=torch.float32)


def balanced_pos_weight(labels: np.ndarray) -> torch.Tensor:
    """AU positive weights n_neg / n_pos per AU from the training frames (1 where an AU never
    fires)."""
    pos = labels.sum(axis=0)
    neg = len(labels) - pos
    return torch.tensor(np.divide(neg, pos, out=np.ones(labels.shape[1]), where=pos > 0),
                        dtype=torch.float32)


def make_loss(task: str, va_loss: str, class_weights: str, focal_gamma: float, pos_weight: str,
              train_labels: np.ndarray) -> TaskLoss:
    """The configured loss; balanced weights come from the training frames' labels (N, K)."""
    cw = (balanced_class_weight(train_labels[:, 0], len(EXPR_CLASSES))
          if task == "expr" and class_weights == "balanced" else None)
    pw = balanced_pos_weight(train_labels) if task == "au" and pos_weight == "balanced" else None
    return TaskLoss(task, va_loss, cw, focal_gamma, pw)
