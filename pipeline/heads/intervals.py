"""95 % intervals over validation videos for head runs of one task, and for their differences.

Frames of one video are strongly correlated, so a score's uncertainty comes from which videos the
validation set happens to hold: whole videos are drawn with replacement (a video bootstrap, as
``bench.compare_stages`` does for the encoder), the same draws for every run, and the official
metric is recomputed on each draw from per-video sufficient statistics
(:func:`pipeline.metrics.video_statistics`). A difference between two runs whose interval straddles
0 is not resolved by this validation set.

The runs' post-processed validation predictions come from their ``val_predictions.npz``
(``pipeline.heads.train``), so the point estimates are the runs' own ``score``.
"""

from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.heads.postprocess import extend
from pipeline.metrics import score_from_statistics, video_bootstrap, video_statistics


def run_statistics(run_dir: Path, task: str) -> tuple[list[str], np.ndarray]:
    """(validation videos, their statistics (V, K)) of a head run's post-processed predictions.

    Raises:
        InputError: the run has no ``val_predictions.npz``.
    """
    path = Path(run_dir) / "val_predictions.npz"
    if not path.is_file():
        raise InputError(f"{path} does not exist; is {run_dir} a finished run of "
                         "`mae-affect train`?")
    with np.load(path) as npz:  # plain arrays only: no pickled objects are loaded
        videos = [str(v) for v in npz["videos"]]
        stats = []
        for i in range(len(videos)):
            labels, valid = npz[f"labels_{i}"], npz[f"valid_{i}"].astype(bool)
            # annotation rows beyond T: the last frame's
            pred = extend(npz[f"pred_{i}"], len(labels))
            stats.append(video_statistics(task, pred[valid], labels[valid]))
    return videos, np.stack(stats)


def intervals(runs: dict[str, Path], task: str, reference: str, resamples: int = 2000,
              seed: int = 0) -> dict:
    """Scores with 95 % intervals for several runs of one task, and each run's difference to
    ``reference``.

    Args:
        runs: name -> head run directory; every run must be validated on the same videos.
        task: ``va``, ``expr`` or ``au``.
        reference: the name of the run the others are compared with (e.g. the full model).
        resamples: bootstrap draws of the validation videos.
        seed: seed of the draws.
    Returns:
        {"videos": V, "resamples": R, "runs": {name: {"score", "ci95": [lo, hi]}},
         "differences": {name: {"diff", "ci95", "share_above_0"}}} (name minus reference; not for
         it).
    Raises:
        InputError: a run is missing its predictions, or the runs were validated on other videos.
    """
    stats = {}
    videos = None
    for name, run in runs.items():
        these, stats[name] = run_statistics(run, task)
        if videos is not None and these != videos:
            raise InputError(f"{run} was validated on other videos than {runs[reference]}; compare "
                             "runs of one split")
        videos = these
    draws = video_bootstrap(len(videos), resamples, seed).astype(np.float64)  # (R, V)
    scores = {name: score_from_statistics(task, s.sum(0)) for name, s in stats.items()}
    boot = {name: score_from_statistics(task, draws @ s) for name, s in stats.items()}  # (R,) each
    out = {"videos": len(videos), "resamples": resamples, "runs": {}, "differences": {}}
    for name in runs:
        low, high = np.percentile(boot[name], [2.5, 97.5])
        out["runs"][name] = {"score": float(scores[name]), "ci95": [float(low), float(high)]}
        if name != reference:
            diff = boot[name] - boot[reference]
            low, high = np.percentile(diff, [2.5, 97.5])
            out["differences"][name] = {"diff": float(scores[name] - scores[reference]),
                                        "ci95": [float(low), float(high)],
                                        "share_above_0": float((diff > 0).mean())}
    return out
