"""Following one or two people across frames, so that a subject is decided once per video, not per
frame.

A greedy online tracker over face boxes (the IoU association of SORT, Bewley et al. 2016, without
its motion model): each frame, a track takes the detection that overlaps its last box most (IoU >=
0.3); tracks left over take the nearest remaining detection (centre distance in units of the track's
box width), which re-finds a face after a missed frame or a jump; free slots start a new track on
the largest remaining face. There are never more tracks than subjects, so an extra face (a
passer-by, a false detection) is ignored while the subjects are in view.

After the video, :func:`name_tracks` decides once which track is ``left`` and which ``right`` (by
the mean centre of its boxes), and, for ``--subjects auto``, whether a second track is a subject at
all.
"""

import numpy as np

IOU_MATCH = 0.3


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of box a (4,) with boxes b (K, 4) -> (K,)."""
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (np.clip(r[..., 2] - r[..., 0], 0, None)  # noqa: E731
                      * np.clip(r[..., 3] - r[..., 1], 0, None))
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _centre(box: np.ndarray) -> np.ndarray:
    return np.stack([(box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2], axis=-1)


class Tracker:
    """Assigns each frame's detections to at most ``tracks`` tracks.

    Args:
        tracks: the number of subjects followed (1 or 2).
    """

    def __init__(self, tracks: int):
        if tracks < 1:
            raise ValueError(f"tracks must be >= 1, got {tracks}")
        self.last: list[np.ndarray | None] = [None] * tracks  # each track's last box (4,)

    def update(self, boxes: np.ndarray) -> list[int]:
        """One frame's boxes (K, 4) -> per track the index of its detection, or -1 when it has
        none."""
        n, K = len(self.last), len(boxes)
        assigned, free = [-1] * n, set(range(K))
        if K:
            live = [t for t in range(n) if self.last[t] is not None]
            # 1. overlap with the last box
            pairs = [(o, t, k) for t in live for k, o in enumerate(iou(self.last[t], boxes))
                     if o >= IOU_MATCH]
            for _, t, k in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
                if assigned[t] < 0 and k in free:
                    assigned[t] = k
                    free.discard(k)
            # 2. the nearest remaining face, for tracks that found no overlap
            pairs = []
            for t in live:
                if assigned[t] < 0:
                    width = max(float(self.last[t][2] - self.last[t][0]), 1.0)
                    for k in free:
                        gap = float(np.linalg.norm(_centre(self.last[t])
                                                   - _centre(boxes[k]))) / width
                        pairs.append((gap, t, k))
            for _, t, k in sorted(pairs):
                if assigned[t] < 0 and k in free:
                    assigned[t] = k
                    free.discard(k)
            # 3. free slots start on the largest remaining faces
            sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for t in range(n):
                if self.last[t] is None and free:
                    k = max(free, key=lambda j: (sizes[j], -j))
                    assigned[t] = k
                    free.discard(k)
        for t, k in enumerate(assigned):
            if k >= 0:
                self.last[t] = boxes[k].copy()
        return assigned


def name_tracks(stem: str, mean_x: list[float | None], counts: list[int], subjects: str, width: int,
                min_share: float = 0.25) -> list[str | None]:
    """Output video names of the tracks, decided once per video.

    Args:
        stem: the source video's name.
        mean_x: per track, the mean x of its box centres (None for a track that never started).
        counts: per track, the frames it has a face in.
        subjects: "1", "2" or "auto".
        width: frame width, pixels (a lone track of two is named by the half of the frame it is in).
        min_share: with "auto", a second track is a subject when it has a face in at least this
            share of the frames the first has one in.
    Returns:
        per track its name (``stem``, ``stem_left`` or ``stem_right``), or None for a track dropped.
    """
    if len(counts) == 1:
        return [stem]
    a, b = 0, 1
    if subjects == "auto":
        big, small = (a, b) if counts[a] >= counts[b] else (b, a)
        if counts[small] == 0 or counts[small] < min_share * counts[big]:
            names: list[str | None] = [None, None]
            names[big] = stem
            return names
    xa, xb = mean_x[a], mean_x[b]
    if xa is not None and xb is not None:
        a_left = xa <= xb
    elif xa is not None:
        a_left = xa < width / 2
    elif xb is not None:
        a_left = not xb < width / 2
    else:
        a_left = True
    return [f"{stem}_left", f"{stem}_right"] if a_left else [f"{stem}_right", f"{stem}_left"]
