"""Challenge submission files from one or more trained heads (an ensemble averages them).

For the test set the rows are exactly those of the organisers' example file, in its order: every
frame of every test video, frames without a face included (their features come from the run's fill
rule, as in training). Runs' outputs are averaged before post-processing (VA values, Expr / AU
probabilities), then post-processed once. A frame beyond a video's length in the store gets the last
frame's prediction (the nearest). For a split with annotations (``Validation_Set``, ``Train_Set``,
or ``Test_Set`` where ground truth exists) the rows are every frame 1..T of each annotated video, so
``mae-affect score`` can check the file against the figures ``evaluate`` prints. ``predict_videos``
is the prediction path itself, shared with ``analyze`` (new, unannotated footage).
"""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.affwild2 import TEST, AffWild2
from pipeline.device import resolve_device
from pipeline.errors import InputError
from pipeline.heads import postprocess
from pipeline.heads.evaluate import Run, load_run, tables_for
from pipeline.heads.sequences import FeatureTable
from pipeline.runs import check_out_file
from pipeline.submission import parse_location, read_submission, write_submission


def _rows_of_example(ds: AffWild2, task: str) -> tuple[list[str], list[tuple[str, int]]]:
    example = ds.example_submission(task)
    locations, _ = read_submission(example, task, "the dataset's example submission file")
    frames = []
    for i, loc in enumerate(locations):
        try:
            video, k = parse_location(loc)
        except ValueError as err:
            raise InputError(f"{example}:{i + 2}: {err}") from None
        if k < 1:
            raise InputError(f"{example}:{i + 2}: frame number {k} in {loc!r}; frames are numbered "
                             "from 1")
        frames.append((video, k))
    return locations, frames


def _rows_of_split(ds: AffWild2, task: str, split: str,
                   lengths: dict[str, int]) -> tuple[list[str], list[tuple[str, int]]]:
    locations, frames = [], []
    for video, ann in sorted(ds.annotations(task, split).items()):
        suffix = ds.videos[video].suffix if video in ds.videos else ".jpg"
        for k in range(1, max(lengths.get(video, 0), ann.num_frames) + 1):
            locations.append(f"{video}/{k:05d}{suffix}")
            frames.append((video, k))
    return locations, frames


def load_runs(run_dirs) -> list[Run]:
    """The runs of an ensemble (InputError when none is given or they are of different tasks)."""
    runs = [load_run(r) for r in run_dirs]
    if not runs:
        raise InputError("no run given: pass --run RUN (once per run of an ensemble)")
    other = [r for r in runs if r.task != runs[0].task]
    if other:
        raise InputError(f"{other[0].path} is a {other[0].task} run but {runs[0].path} is "
                         f"{runs[0].task}: ensemble one task")
    return runs


def predict_videos(runs: list[Run], tables: dict[str, FeatureTable], videos: list[str], device,
                   progress: bool = False) -> tuple[dict[str, np.ndarray], postprocess.PostProcess]:
    """Whole-video outputs of the runs of one task, averaged, and the one post-processing to apply.

    The same path serves submissions and ``analyze``: any videos of the stores, annotated or not.

    Args:
        runs: head runs of one task (``load_runs``).
        tables: their feature tables by fill rule (``tables_for``).
        videos: the videos to predict (InputError naming one the stores lack).
        device: where the heads run.
    Returns:
        video -> (T, K) raw outputs averaged over the runs (VA values, Expr / AU probabilities), and
        the runs' combined post-processing (``PostProcess.apply`` turns raw outputs into final
        predictions).
    """
    next(iter(tables.values())).require(videos)
    raw = {v: 0.0 for v in videos}
    for run in tqdm(runs, desc="runs", unit="run", disable=not progress or len(runs) == 1):
        outputs = run.infer(tables[run.config["fill"]], videos, device, progress)
        raw = {v: raw[v] + outputs[v] / len(runs) for v in videos}
    return raw, postprocess.combine([r.postprocess for r in runs])


def predict(run_dirs, out: Path, split: str = TEST, data_root: Path | None = None, stores=None,
            device: str = "auto", progress: bool = True) -> dict:
    """Write a submission-format file of the runs' averaged predictions.

    Args:
        run_dirs: one or more run directories of one task.
        out: the CSV to write (atomically).
        split: "test" (rows of the example file) or an annotated split.
        data_root, stores: default to those the first run was trained with; every run must have been
            trained on stores of the same identity as these.
    """
    check_out_file(out)
    runs = load_runs(run_dirs)
    task = runs[0].task
    ds = AffWild2(Path(data_root) if data_root else runs[0].data)
    tables = tables_for(runs, stores)
    first = next(iter(tables.values()))
    if split == TEST:
        locations, frames = _rows_of_example(ds, task)
    else:
        locations, frames = _rows_of_split(ds, task, split,
                                           {v: first.length(v) for v in first.videos})
    videos = list(dict.fromkeys(v for v, _ in frames))
    raw, pp = predict_videos(runs, tables, videos, resolve_device(device), progress)
    last = {}
    for v, k in frames:
        last[v] = max(last.get(v, 0), k)
    # frames 1..max needed
    final = {v: postprocess.extend(pp.apply(raw[v]), last[v]) for v in videos}
    values = np.stack([final[v][k - 1] for v, k in frames]) if frames else np.zeros((0, 1))
    write_submission(Path(out), task, locations, values)
    return {
        "out": str(out), "task": task, "split": split, "rows": len(locations),
        "videos": len(videos), "runs": [str(r.path) for r in runs], "postprocess": pp.to_dict(),
    }
