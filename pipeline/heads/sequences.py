"""Sequences for the temporal heads: features and labels in memory once, windows as slices.

One or more feature stores are loaded with ``load_all`` and concatenated along the feature axis
(frames aligned), so a second extractor's features can be added. A task's annotations are laid on
the same rows. Time stays contiguous: invalid labels, absent faces and window padding are masks,
never deletions. Absent-face rows are filled by one explicit rule (``fill``), the same in training
and inference. A video's length T is the store's; annotation rows beyond T are masked in training
(and predicted from the last frame at evaluation), missing annotation rows are invalid.

Windows of W frames with stride S cover every frame: starts 0, S, 2S, ... while the window fits,
then a last window aligned to the video's end; a video shorter than W is one window, padded to W in
a batch.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from features import IDENTITY_KEYS, open_store
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, VA_NAMES, Annotation
from pipeline.device import to_device
from pipeline.errors import InputError

OUT_DIMS = {"va": len(VA_NAMES), "expr": len(EXPR_CLASSES), "au": len(AU_NAMES)}
# Identity of a store's features: what must agree between a trained head and the store it is run on.
HEAD_IDENTITY_KEYS = tuple(k for k in IDENTITY_KEYS if k != "dtype")


def store_identity(attrs: dict) -> dict:
    """The attributes that say which encoder made a store's features (not its storage dtype)."""
    return {k: attrs.get(k) for k in HEAD_IDENTITY_KEYS}


@dataclass
class FeatureTable:
    """Every video's features, back to back, from one or more stores side by side.

    features: (sum T, D) float16 or float32 (the stores' widest dtype); present: (sum T,) bool, true
    where every store had a face; offsets: video -> (start, stop) rows; identities: one per store.
    """

    features: np.ndarray
    present: np.ndarray
    offsets: dict[str, tuple[int, int]]
    identities: list[dict]
    paths: list[str]
    fill: str
    incomplete: tuple[str, ...] = ()  # videos the first store's extraction began, never finished

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def videos(self) -> list[str]:
        return list(self.offsets)

    def length(self, video: str) -> int:
        start, stop = self.offsets[video]
        return stop - start

    def require(self, videos) -> None:
        """InputError naming the first video the stores lack."""
        missing = [v for v in videos if v not in self.offsets]
        begun = [v for v in missing if v in self.incomplete]
        if begun:
            raise InputError(
                f"{len(missing)} video(s) are not in the feature store {', '.join(self.paths)}, "
                f"e.g. {begun[0]!r}, begun by an extraction that did not finish; run the same "
                "`mae-affect extract` again to finish it"
            )
        if missing:
            raise InputError(
                f"{len(missing)} video(s) are not in the feature store {', '.join(self.paths)}, "
                f"e.g. {missing[0]!r}: extract features for them (`mae-affect extract`; an "
                "interrupted extraction goes on when run again) or use a store that has them"
            )


def load_features(stores, fill: str = "nearest") -> FeatureTable:
    """Load one or more stores into memory, concatenated along the feature axis.

    Args:
        stores: store paths; all must hold the same videos with the same frame counts.
        fill: rows of frames without a face: "nearest", "linear" or "zeros".
    """
    stores = [Path(p) for p in stores]
    if not stores:
        raise InputError("no feature store given: pass --store PATH (once per store)")
    parts, identities, reference, incomplete = [], [], None, ()
    for path in stores:
        with open_store(path) as store:
            if reference is None:
                reference = (path, store.videos(), {v: store.num_frames(v) for v in store.videos()})
                incomplete = tuple(store.incomplete_videos())
                if not store.videos():
                    raise InputError(f"{path}: the feature store holds no complete video; run "
                                     "`mae-affect extract`")
            else:
                _check_aligned(reference, path, store)
            identities.append(store_identity(store.attrs))
            # float16 halves the memory
            dtype = np.float16 if store.dtype == np.float16 else np.float32
            parts.append(store.load_all(videos=reference[1], dtype=dtype, fill=fill))
    dtype = np.result_type(*(p.features.dtype for p in parts))
    if len(parts) == 1:
        features = parts[0].features
    else:
        # (sum T, D1 + D2 ...)
        features = np.concatenate([p.features.astype(dtype, copy=False) for p in parts], axis=1)
    present = np.logical_and.reduce([p.present for p in parts])
    return FeatureTable(features, present, dict(parts[0].offsets), identities,
                        [str(p) for p in stores], fill, incomplete)


def _check_aligned(reference, path: Path, store) -> None:
    """Refuse a second store whose videos or frame counts differ from the first's."""
    first_path, videos, frames = reference
    if store.videos() != videos:
        only_first = sorted(set(videos) - set(store.videos()))
        only_here = sorted(set(store.videos()) - set(videos))
        example = (f"{only_first[0]!r} only in {first_path}" if only_first
                   else f"{only_here[0]!r} only in {path}")
        raise InputError(
            f"stores {first_path} and {path} hold different videos ({example}): stores combined "
            "with several --store options must be extracted from the same videos"
        )
    for v in videos:
        if store.num_frames(v) != frames[v]:
            raise InputError(
                f"video {v!r} has {frames[v]} frames in {first_path} but {store.num_frames(v)} in "
                f"{path}: combined stores must be extracted with the same frame counts"
            )


@dataclass
class TaskData:
    """A task's features and labels, laid on the feature table's rows.

    labels: (sum T, K) float32 (VA values, Expr class index, AU 0/1), zero where unlabelled;
    valid: (sum T,) bool, true on frames whose label counts; annotations: the split's full files by
    video (their rows beyond T still count for the official metric).
    """

    task: str
    table: FeatureTable
    labels: np.ndarray
    valid: np.ndarray
    annotations: dict[str, Annotation]
    train_videos: list[str]
    val_videos: list[str]

    def frames(self, videos) -> int:
        return sum(self.table.length(v) for v in videos)


def lay_labels(task: str, table: FeatureTable,
               annotations: dict[str, Annotation]) -> tuple[np.ndarray, np.ndarray]:
    """Annotations on the table's rows: labels (sum T, K) float32, valid (sum T,) bool."""
    K = OUT_DIMS[task]
    labels = np.zeros((len(table.features), K), np.float32)  # (sum T, K)
    valid = np.zeros(len(table.features), bool)
    for video, ann in annotations.items():
        start, stop = table.offsets[video]
        n = min(stop - start, ann.num_frames)
        labels[start : start + n] = ann.labels[:n].reshape(n, -1)  # Expr (T,) -> (T, 1)
        valid[start : start + n] = ann.valid[:n]
    return labels, valid


def task_data(task: str, table: FeatureTable, train_videos, val_videos,
              annotations: dict[str, Annotation]) -> TaskData:
    """Put a task's train and validation videos on the table (refusing videos the store lacks)."""
    videos = list(train_videos) + list(val_videos)
    table.require(videos)
    labels, valid = lay_labels(task, table, {v: annotations[v] for v in videos})
    return TaskData(task, table, labels, valid, annotations, list(train_videos), list(val_videos))


def window_starts(T: int, W: int, S: int) -> np.ndarray:
    """Start rows of the windows over a video of T frames: 0, S, 2S, ... then one aligned to the
    end.

    A video of T <= W frames is one window starting at 0 (of length T, padded in a batch).
    """
    if W < 1 or S < 1:
        raise ValueError(f"window {W} and stride {S} must be positive")
    if T <= W:
        return np.zeros(1, np.int64)
    starts = np.arange(0, T - W + 1, S)
    if starts[-1] != T - W:
        starts = np.append(starts, T - W)  # the tail window, aligned to the end
    return starts


def make_windows(table: FeatureTable, videos, W: int, S: int) -> np.ndarray:
    """Windows of the given videos as rows (global start row, length), length <= W."""
    rows = []
    for v in videos:
        start, stop = table.offsets[v]
        T = stop - start
        starts = window_starts(T, W, S)
        rows.append(np.stack([start + starts, np.full(len(starts), min(T, W))], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def window_index(windows: np.ndarray, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (B, W) of a batch of windows and their keep mask (B, W), false on padding.

    Padded positions point at the window's last real row (any real row would do: they are masked).
    """
    windows = torch.as_tensor(windows)
    offset = torch.arange(W)  # (W,)
    keep = offset[None, :] < windows[:, 1:2]  # (B, W)
    rows = windows[:, 0:1] + torch.minimum(offset[None, :], windows[:, 1:2] - 1)  # (B, W)
    return rows, keep


class Batcher:
    """Gathers batches of windows from the table held in memory, on the host or on a device: one
    index op per tensor, no file reads.

    On a GPU with room for it, the whole table is copied there once, so that a step's batch is a
    gather on the device: only the (B, W) row indices cross from the host each step, and they do
    not make the host wait (``pipeline.device.to_device``).

    Args:
        features: (sum T, D) table rows.
        labels, valid: (sum T, K) and (sum T,) from ``lay_labels`` (None at inference).
        device: where the table is held and the batches are made (default: the host).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray | None = None,
                 valid: np.ndarray | None = None, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.features = torch.from_numpy(features).to(self.device)
        self.labels = None if labels is None else torch.from_numpy(labels).to(self.device)
        self.valid = None if valid is None else torch.from_numpy(valid).to(self.device)

    def without_labels(self) -> "Batcher":
        """A Batcher over the same table (nothing copied) that gathers the features only, for
        inference."""
        other = copy.copy(self)
        other.labels = other.valid = None
        return other

    def batch(self, windows: np.ndarray, W: int) -> dict[str, torch.Tensor]:
        """x (B, W, D) float32 with zeros on padding, keep (B, W), rows (B, W); labels (B, W, K) and
        counted (B, W) (valid label and real frame: the frames the loss counts) when labels were
        given. All on the Batcher's device."""
        # a batch of short videos needs no more than its longest
        W = min(W, int(windows[:, 1].max()))
        rows, keep = window_index(windows, W)
        rows, keep = to_device(rows, self.device), to_device(keep, self.device)
        x = self.features[rows].float() * keep[..., None]  # (B, W, D)
        out = {"x": x, "keep": keep, "rows": rows}
        if self.labels is not None:
            out["labels"] = self.labels[rows]  # (B, W, K)
            out["counted"] = self.valid[rows] & keep  # (B, W)
        return out
