"""Train / validation splits of a task: the official one (fold 0) and N folds grouped by source
video.

The authors' folds split videos one by one, so ``X_left`` and ``X_right`` (two subjects of one
source video, same scene) could land on both sides and leak. Here Train_Set + Validation_Set videos
are grouped by source video and the groups dealt to N folds, largest first, each to the fold with
the fewest annotated frames so far: deterministic and balanced in frames.
"""

from pipeline.data.affwild2 import AffWild2, source_video
from pipeline.errors import InputError
from pipeline.partition import balance


def pooled_annotations(ds: AffWild2, task: str, videos) -> dict:
    """The annotations of the given videos, wherever they are (Train_Set or Validation_Set)."""
    pool = {**ds.annotations(task, "Train_Set"), **ds.annotations(task, "Validation_Set")}
    return {v: pool[v] for v in videos}


def official_split(ds: AffWild2, task: str) -> tuple[list[str], list[str]]:
    """The organisers' split of ``task``: its Train_Set and Validation_Set videos, sorted."""
    return sorted(ds.annotations(task, "Train_Set")), sorted(ds.annotations(task, "Validation_Set"))


def fold_split(ds: AffWild2, task: str, fold: int = 0,
               folds: int = 5) -> tuple[list[str], list[str]]:
    """Train and validation videos of ``fold``: 0 is the official split, 1..folds the grouped folds.

    Args:
        ds: the dataset.
        task: va, expr or au.
        fold: 0 (official) or 1..folds (fold k validates on the k-th group of sources).
        folds: number of grouped folds.
    """
    if folds < 2 or not 0 <= fold <= folds:
        raise InputError(f"--fold {fold} --folds {folds}: use --folds N >= 2 and --fold 0 "
                         "(official split) .. N")
    if fold == 0:
        return official_split(ds, task)
    frames: dict[str, int] = {}
    for split in ("Train_Set", "Validation_Set"):
        for video, ann in ds.annotations(task, split).items():
            frames[video] = int(ann.valid.sum())
    groups: dict[str, list[str]] = {}
    for video in sorted(frames):
        groups.setdefault(source_video(video), []).append(video)
    if len(groups) < folds:
        raise InputError(f"{task}: {len(groups)} source videos cannot make {folds} folds; use "
                         f"--folds {len(groups)} or fewer")
    parts = balance(list(groups), lambda s: sum(frames[v] for v in groups[s]), folds)
    members = [[v for source in part for v in groups[source]] for part in parts]
    val = sorted(members[fold - 1])
    train = sorted(v for k, m in enumerate(members) if k != fold - 1 for v in m)
    return train, val
