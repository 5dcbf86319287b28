"""Filling the rows of frames without a face: the reader's explicit choice, never baked into a
store.

- ``zeros``: the rows as stored (zero vectors);
- ``nearest``: the row of the nearest frame with a face (ties go to the earlier frame);
- ``linear``: linear interpolation between the frames with a face on either side, the nearest one
  beyond the first and last.
A video without any face keeps its zero rows in every mode.
"""

import numpy as np

from .errors import StoreError

FILLS = ("zeros", "nearest", "linear")


def check_fill(fill: str) -> None:
    """Raises StoreError unless ``fill`` is one of FILLS (the rules for rows without a face)."""
    if fill not in FILLS:
        raise StoreError(f"fill={fill!r} is not a fill mode: use one of {', '.join(FILLS)}")


def fill_absent(features: np.ndarray, present: np.ndarray, fill: str) -> np.ndarray:
    """Fill the rows of absent frames in place.

    Args:
        features: (T, D) rows of one video; absent rows are overwritten (unless fill="zeros").
        present: (T,) bool, true where the frame had a face.
        fill: one of FILLS.
    Returns:
        ``features``.
    """
    check_fill(fill)
    have = np.flatnonzero(present)  # frames with a face, ascending
    missing = np.flatnonzero(~present)
    if fill == "zeros" or have.size == 0 or missing.size == 0:
        return features
    # Index in `have` of the first face frame after each missing frame.
    after = np.searchsorted(have, missing)
    prev = have[np.clip(after - 1, 0, have.size - 1)]
    nxt = have[np.clip(after, 0, have.size - 1)]
    if fill == "nearest":
        use_prev = (missing - prev <= nxt - missing) | (after == have.size)
        use_prev &= after > 0
        features[missing] = features[np.where(use_prev, prev, nxt)]
        return features
    # linear: weight of the next face frame; 0 or 1 beyond the ends (prev == nxt there).
    gap = (nxt - prev).astype(np.float32)
    w = np.divide(missing - prev, gap, out=np.zeros_like(gap), where=gap > 0)[:, None]  # (M, 1)
    lo = features[prev].astype(np.float32)  # (M, D)
    hi = features[nxt].astype(np.float32)  # (M, D)
    features[missing] = (lo + w * (hi - lo)).astype(features.dtype)
    return features
