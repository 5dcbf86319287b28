"""The ABAW challenge metrics, exactly as the challenge defines them (Kollias et al., ABAW6, 2024).

All are computed over every valid frame of a whole set (videos concatenated), never per window.

Degenerate cases, defined here once:
- CCC is 0 when its denominator is 0 (both series constant and equal): no agreement can be shown.
  A constant prediction against varying labels has covariance 0 and so CCC 0 without special-casing.
  CCC is NaN when a value is NaN or infinite: a diverged model never scores as a constant one.
- F1 of a class (or AU) with no true and no predicted positives is 0 (scikit-learn's
  ``zero_division=0``); Expr macro F1 always averages over all 8 classes, so a class missing from
  the set lowers the score rather than vanishing from the mean.
"""

import math

import numpy as np

from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, VA_NAMES


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient with population (biased) moments.

    Args:
        x: predictions (N,).
        y: labels (N,).
    Returns:
        CCC in [-1, 1]; 0 when both are constant and equal; NaN when a value is not finite.
    Raises:
        ValueError: not two 1-D arrays of one length, or empty.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"ccc needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError("ccc of an empty set")
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = x.var() + y.var() + (mx - my) ** 2
    if not np.isfinite(denom):
        return math.nan
    return float(2 * cov / denom) if denom > 0 else 0.0


def _pair(metric: str, pred, true, shape: str) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``true`` as arrays, refused unless both have the shape ``shape`` says ("N",
    "N, 2", "N, 12"), N the same: numpy would broadcast a mismatch into a wrong score."""
    pred, true = np.asarray(pred), np.asarray(true)
    width = [int(w) for w in shape.split(", ")[1:]]
    if pred.shape != true.shape or pred.ndim != 1 + len(width) or list(pred.shape[1:]) != width:
        raise ValueError(f"{metric} needs predictions and labels of shape ({shape}) with one N, "
                         f"got {pred.shape} and {true.shape}")
    return pred, true


def binary_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """F1 of the positive class of 0/1 arrays (N,); 0 when there are no positives on either side.

    Raises:
        ValueError: the two differ in shape.
    """
    pred, true = _pair("binary_f1", pred, true, "N")
    pred = pred.astype(bool)
    true = true.astype(bool)
    tp = np.count_nonzero(pred & true)
    denom = np.count_nonzero(pred) + np.count_nonzero(true)
    return 2 * tp / denom if denom else 0.0


def va_score(pred: np.ndarray, true: np.ndarray) -> dict:
    """VA challenge score: mean of CCC(valence) and CCC(arousal).

    Args:
        pred: (N, 2) predictions, columns valence, arousal.
        true: (N, 2) labels of valid frames.
    Raises:
        ValueError: other shapes.
    """
    pred, true = _pair("va_score", pred, true, "N, 2")
    per = {name: ccc(pred[:, i], true[:, i]) for i, name in enumerate(VA_NAMES)}
    return {"score": float(np.mean(list(per.values()))), **per, "frames": int(len(true))}


def expr_f1(pred: np.ndarray, true: np.ndarray) -> dict:
    """Expr challenge score: macro F1 over the 8 classes.

    Args:
        pred: (N,) predicted class indices 0..7.
        true: (N,) labels of valid frames.
    Raises:
        ValueError: other shapes.
    """
    pred, true = _pair("expr_f1", pred, true, "N")
    pred, true = pred.astype(np.int64), true.astype(np.int64)
    per = {name: binary_f1(pred == k, true == k) for k, name in enumerate(EXPR_CLASSES)}
    accuracy = float((pred == true).mean()) if len(true) else 0.0
    return {"score": float(np.mean(list(per.values()))), **per, "accuracy": accuracy,
            "frames": int(len(true))}


def uniform_guess_expr_f1(true: np.ndarray) -> float:
    """Macro F1 expected of a guess uniform over the 8 classes: per class 2 p q / (p + q), q = 1/8,
    where p is the class's share of ``true`` (N,); classes absent from ``true`` score 0, as in
    :func:`expr_f1`."""
    counts = np.bincount(np.asarray(true, dtype=np.int64), minlength=len(EXPR_CLASSES))
    return float(uniform_guess_f1_from_counts(counts))


def uniform_guess_f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """:func:`uniform_guess_expr_f1` from class counts (..., 8) -> (...)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
    q = 1 / len(EXPR_CLASSES)
    return np.where(p > 0, 2 * p * q / (p + q), 0.0).mean(-1)


def expr_confusion(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(8, 8) frame counts of predictions and labels (N,), row = true class, column = predicted
    class."""
    pred, true = _pair("expr_confusion", pred, true, "N")
    k = len(EXPR_CLASSES)
    flat = true.astype(np.int64) * k + pred.astype(np.int64)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def expr_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """:func:`expr_f1`'s score from confusion counts (..., 8, 8) -> (...), for many resamples at
    once."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    denom = confusion.sum(-1) + confusion.sum(-2)  # true + predicted count per class
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)
    return per_class.mean(-1)


def video_bootstrap(n_videos: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n_videos) counts: how often each video is drawn when ``n_videos`` are drawn with
    replacement. Frames of one video are strongly correlated, so a set-level metric's uncertainty
    comes from resampling whole videos (weight a per-video statistic, e.g. a confusion matrix, by
    these)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=resamples)


def au_f1(pred: np.ndarray, true: np.ndarray) -> dict:
    """AU challenge score: mean over the 12 AUs of each AU's binary F1.

    Args:
        pred: (N, 12) predicted 0/1.
        true: (N, 12) labels of valid frames.
    Raises:
        ValueError: other shapes.
    """
    pred, true = _pair("au_f1", pred, true, f"N, {len(AU_NAMES)}")
    per = {name: binary_f1(pred[:, i], true[:, i]) for i, name in enumerate(AU_NAMES)}
    return {"score": float(np.mean(list(per.values()))), **per, "frames": int(len(true))}


TASK_METRICS = {"va": va_score, "expr": expr_f1, "au": au_f1}


def video_statistics(task: str, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The sums a video adds to its task's official metric, so that a set's score is a function of
    the summed statistics of its videos (:func:`score_from_statistics`) and resampling whole videos
    costs one matrix product (:func:`video_bootstrap`).

    Args:
        task: ``va``, ``expr`` or ``au``.
        pred, true: the video's valid frames, as the task's metric takes them
            ((N, 2), (N,), (N, 12)).
    Returns:
        (K,) float64: VA, per dimension n, sum x, sum y, sum x^2, sum y^2, sum xy (K = 12); Expr,
        the 8 x 8 confusion counts (K = 64); AU, per AU true positives, predicted and true positives
        (K = 36).
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if task == "va":
        return np.concatenate([[len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(),
                                (x * y).sum()]
                               for x, y in zip(pred.T, true.T, strict=True)])
    if task == "expr":
        return expr_confusion(pred.astype(np.int64),
                              true.astype(np.int64)).ravel().astype(np.float64)
    p, t = pred.astype(bool), true.astype(bool)
    return np.stack([(p & t).sum(0), p.sum(0), t.sum(0)], axis=1).ravel().astype(np.float64)


def score_from_statistics(task: str, stats: np.ndarray) -> np.ndarray:
    """The official score from summed :func:`video_statistics` (..., K) -> (...); equal to the
    task's metric on the concatenated frames (up to float rounding in CCC's moments)."""
    stats = np.asarray(stats, dtype=np.float64)
    if task == "expr":
        return expr_f1_from_confusion(stats.reshape(*stats.shape[:-1], len(EXPR_CLASSES),
                                                    len(EXPR_CLASSES)))
    if task == "au":
        tp, predicted, actual = np.moveaxis(
            stats.reshape(*stats.shape[:-1], len(AU_NAMES), 3), -1, 0)
        denom = predicted + actual
        return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0).mean(-1)
    n, sx, sy, sxx, syy, sxy = np.moveaxis(
        stats.reshape(*stats.shape[:-1], len(VA_NAMES), 6), -1, 0)
    safe = np.maximum(n, 1)
    mx, my = sx / safe, sy / safe
    cov = sxy / safe - mx * my
    denom = (sxx / safe - mx * mx) + (syy / safe - my * my) + (mx - my) ** 2
    # a denominator at rounding level means both series constant and equal: CCC 0, as ccc()
    # defines it
    per_dim = np.divide(2 * cov, denom, out=np.zeros_like(denom), where=(denom > 1e-12) & (n > 0))
    return per_dim.mean(-1)
