"""Post-processing of whole-video outputs, chosen on validation and stored in the run.

Raw outputs per video are (T, K): VA values, Expr class probabilities, AU probabilities. The paper
clips VA, mode-filters Expr over 40 frames and thresholds AUs at 0.5; here each knob is chosen on
the validation set by the official metric: a centred moving-average window per VA dimension, the
mode filter's length, and one threshold per AU (per-AU F1 is independent across AUs, so choosing
each threshold alone maximises the mean). Filters act within a video, never across two.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.metrics import TASK_METRICS, binary_f1, ccc

VA_WINDOWS = (1, 3, 5, 9, 15, 25, 41, 61, 91)
EXPR_WINDOWS = (1, 5, 11, 21, 41, 61, 91)
AU_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))


@dataclass(frozen=True)
class PostProcess:
    """Per-task post-processing; the defaults change nothing beyond the paper's fixed rules
    (VA clipped, Expr argmax, AU at 0.5)."""

    task: str
    va_windows: tuple[int, int] = (1, 1)
    expr_window: int = 1
    au_thresholds: tuple[float, ...] = field(default_factory=lambda: (0.5,) * 12)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PostProcess":
        return cls(d["task"], tuple(d["va_windows"]), int(d["expr_window"]),
                   tuple(d["au_thresholds"]))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """One video's raw outputs (T, K) -> final predictions: VA (T, 2) in [-1, 1], Expr (T,)
        class indices, AU (T, 12) 0/1."""
        if self.task == "va":
            cols = [moving_average(raw[:, i], w) for i, w in enumerate(self.va_windows)]
            return np.clip(np.stack(cols, axis=1), -1.0, 1.0)
        if self.task == "expr":
            return mode_filter(raw.argmax(axis=1), raw.shape[1], self.expr_window)
        return (raw >= np.asarray(self.au_thresholds)[None, :]).astype(np.int64)


def moving_average(x: np.ndarray, w: int) -> np.ndarray:
    """Centred moving average of (T,) over 2 * (w // 2) + 1 frames, the edge values repeated beyond
    the ends."""
    r = w // 2
    if r == 0 or len(x) == 0:
        return x.astype(np.float64)
    padded = np.concatenate([np.full(r, x[0]), x, np.full(r, x[-1])]).astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    return (csum[2 * r + 1 :] - csum[: -2 * r - 1]) / (2 * r + 1)


def mode_filter(classes: np.ndarray, num_classes: int, w: int) -> np.ndarray:
    """The most frequent class in a centred window of w frames (truncated at the ends); a tie keeps
    the frame's own class when it is among the tied, else the lowest tied index."""
    if w <= 1 or len(classes) == 0:
        return classes.astype(np.int64)
    r = w // 2
    onehot = np.eye(num_classes)[classes]  # (T, C)
    csum = np.concatenate([np.zeros((1, num_classes)), np.cumsum(onehot, axis=0)])  # (T + 1, C)
    T = len(classes)
    lo = np.clip(np.arange(T) - r, 0, T)
    hi = np.clip(np.arange(T) + r + 1, 0, T)
    # (T, C); the half breaks ties toward the frame's own class
    counts = csum[hi] - csum[lo] + 0.5 * onehot
    return counts.argmax(axis=1).astype(np.int64)


def combine(pps: list[PostProcess]) -> PostProcess:
    """One post-processing for an ensemble of runs: the lower median of the smoothing windows (one
    of the runs' own), the mean of the AU thresholds."""
    if len(pps) == 1:
        return pps[0]

    def median(values):
        return sorted(values)[(len(values) - 1) // 2]

    return PostProcess(
        pps[0].task,
        va_windows=tuple(median([p.va_windows[i] for p in pps]) for i in range(2)),
        expr_window=median([p.expr_window for p in pps]),
        au_thresholds=tuple(float(t) for t in np.mean([p.au_thresholds for p in pps], axis=0)),
    )


def extend(pred: np.ndarray, n: int) -> np.ndarray:
    """Predictions (T, ...) for frames 1..n: rows beyond T repeat the last frame's (the nearest)."""
    if n <= len(pred):
        return pred[:n]
    return np.concatenate([pred, np.repeat(pred[-1:], n - len(pred), axis=0)])


def valid_pairs(preds: dict[str, np.ndarray], annotations: dict) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels of every valid annotated frame of the given videos, concatenated.

    ``preds[video]`` covers frames 1..T; annotation rows beyond T take the last frame's prediction.
    """
    ps, ys = [], []
    for video, pred in preds.items():
        ann = annotations[video]
        ps.append(extend(pred, ann.num_frames)[ann.valid])
        ys.append(ann.labels[ann.valid])
    return np.concatenate(ps), np.concatenate(ys)


def score(task: str, preds: dict[str, np.ndarray], annotations: dict) -> dict:
    """The official metric over every valid frame of the given videos (final predictions)."""
    pred, true = valid_pairs(preds, annotations)
    return TASK_METRICS[task](pred, true)


def choose(task: str, raw: dict[str, np.ndarray], annotations: dict) -> PostProcess:
    """The post-processing that maximises the official metric on these videos' valid frames."""
    if task == "va":
        windows = []
        for i in range(2):
            windows.append(max(VA_WINDOWS, key=lambda w, i=i: _va_dim_ccc(raw, annotations, i, w)))
        return PostProcess(task, va_windows=tuple(windows))
    if task == "expr":
        best = max(
            EXPR_WINDOWS,
            key=lambda w: score(task, apply_all(PostProcess(task, expr_window=w), raw),
                                annotations)["score"],
        )
        return PostProcess(task, expr_window=best)
    prob, true = valid_pairs(raw, annotations)  # (N, 12) probabilities and labels
    by_closeness = sorted(AU_THRESHOLDS, key=lambda t: abs(t - 0.5))  # ties go to the paper's 0.5
    thresholds = tuple(
        max(by_closeness, key=lambda t, j=j: binary_f1(prob[:, j] >= t, true[:, j]))
        for j in range(prob.shape[1])
    )
    return PostProcess(task, au_thresholds=thresholds)


def _va_dim_ccc(raw: dict, annotations: dict, dim: int, w: int) -> float:
    smoothed = {v: np.clip(moving_average(r[:, dim], w), -1, 1)[:, None] for v, r in raw.items()}
    pred, true = valid_pairs(smoothed, annotations)
    return ccc(pred[:, 0], true[:, dim])


def apply_all(pp: PostProcess, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final predictions of every video."""
    return {v: pp.apply(r) for v, r in raw.items()}
