"""A feature store against the Aff-Wild2-layout dataset it was extracted from: what each split's
annotated videos find in the store, and the frame count the dataset gives each video (what
``features verify --data`` checks the store's rows against).

``features/`` knows nothing of the dataset (a collaborator reads a store with plain zarr or h5py);
this is the one place where the two meet outside extraction.
"""

from features import FeatureStore
from pipeline.data.affwild2 import SPLITS, TASKS, AffWild2


def split_counts(store: FeatureStore, ds: AffWild2) -> dict[str, dict[str, int]]:
    """Per ``task/split`` the dataset annotates: its annotated videos, how many the store holds
    complete, and their frames (rows, with or without a face).

    Returns:
        e.g. ``{"va/Train_Set": {"videos": 9, "annotated": 10, "frames": 4210}, ...}``.
    """
    have = set(store.videos())
    counts = {}
    for task in TASKS:
        for split in SPLITS:
            if ds.available(task, split):
                annotated = set(ds.annotations(task, split))
                held = annotated & have
                counts[f"{task}/{split}"] = {"videos": len(held), "annotated": len(annotated),
                                             "frames": sum(store.num_frames(v) for v in held)}
    return counts


def expected_frames(ds: AffWild2) -> dict[str, int]:
    """Frames (T, the store's rows) of every video the dataset lists, by the dataset's rule
    (``AffWild2.num_frames``: the last image number, the longest annotation, the ``faces``
    record)."""
    return {v: ds.num_frames(v) for v in ds.listed_videos()}
