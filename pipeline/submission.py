"""Challenge submission files: read, write, check, and score against annotations.

Format (the ABAW challenge's test-set submission files; README, "Metrics and submissions"): a header
``image_location,<names>`` and one row per frame,
``video/00001.jpg,<values>``, in the order of the organisers' example file, frames without a face
included. VA rows carry two floats in [-1, 1], Expr one class index 0..7, AU twelve 0/1 values.
"""

from pathlib import Path

import numpy as np

from pipeline.data.affwild2 import HEADERS, VALIDATION, AffWild2, check_task
from pipeline.errors import InputError
from pipeline.metrics import TASK_METRICS
from pipeline.runs import atomic_write_text


def read_submission(path: Path, task: str, what: str = "submission file") -> tuple[list[str],
                                                                                 np.ndarray]:
    """Read a submission or example file (``what`` names it in messages).

    Returns:
        the image locations (``video/NNNNN.jpg``) and their values (N, K), K = 2, 1 or 12.
    Raises:
        InputError: the file is missing, a folder or not text, or a line is malformed (file and
            line named).
    """
    task = check_task(task)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: a folder; give the {what} itself (a CSV file)")
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file (byte {err.start} is not UTF-8); give the "
                         f"{what} as CSV text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    expected = ("image_location", *HEADERS[task])
    if not lines or tuple(h.strip() for h in lines[0].split(",")) != expected:
        got = lines[0] if lines else "nothing"
        raise InputError(f"{path}:1: header {got!r}; expected {','.join(expected)!r}")
    width = 2 if task == "expr" else len(expected)
    locations, rows = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != width:
            raise InputError(f"{path}:{lineno}: {len(fields)} fields, expected {width}: {line!r}")
        try:
            rows.append([float(f) for f in fields[1:]])
        except ValueError:
            raise InputError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
        locations.append(fields[0].strip())
    return locations, np.asarray(rows, dtype=np.float64).reshape(len(rows), width - 1)


def parse_location(location: str) -> tuple[str, int]:
    """``video/00012.jpg`` -> (``video``, 12)."""
    video, _, image = location.rpartition("/")
    stem = image.rsplit(".", 1)[0]
    if not video or not stem.isdigit():
        raise ValueError(f"not a <video>/<NNNNN>.jpg location: {location!r}")
    return video, int(stem)


def format_rows(task: str, values: np.ndarray) -> list[str]:
    """Values (N, K) as the challenge's value columns, one string per row."""
    if task == "va":
        return [f"{v:.6f},{a:.6f}" for v, a in np.clip(values, -1, 1)]
    if task == "expr":
        return [str(int(c)) for c in values.reshape(-1)]
    return [",".join(str(int(b)) for b in row) for row in values]


def write_submission(path: Path, task: str, locations: list[str], values: np.ndarray) -> None:
    """Write a submission file atomically (header, then one row per location, in the given
    order).

    Args:
        values: (N, K) predictions, K as the task's columns (VA 2, Expr 1, AU 12).
    Raises:
        ValueError: a count mismatch; InputError: a prediction is NaN or infinite (a diverged
            head), named by its location; nothing is written then.
    """
    task = check_task(task)
    if len(locations) != len(values):
        raise ValueError(f"{len(locations)} locations but {len(values)} value rows")
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)).all(
        axis=tuple(range(1, np.ndim(values)))))
    if len(bad):
        raise InputError(f"{path}: the prediction for {locations[bad[0]]} ({len(bad)} rows in "
                         "all) is NaN or infinite: the head's weights are not finite (a diverged "
                         "run); train it again with a lower lr. Nothing was written")
    header = ",".join(("image_location", *HEADERS[task]))
    body = "".join(f"{loc},{row}\n"
                   for loc, row in zip(locations, format_rows(task, values), strict=True))
    atomic_write_text(Path(path), header + "\n" + body)


def check_submission(path: Path, task: str, example: Path) -> list[str]:
    """Problems of a submission against the organisers' example file; empty when it is valid.

    Checks header, row count, row order (the example's image locations, one for one) and value
    ranges; the first problem of each kind is named with its line, the ones that name a line
    first (the command shows the first).
    """
    try:
        locations, values = read_submission(path, task)
    except InputError as err:
        return [str(err)]
    example_locations, _ = read_submission(example, task, "example file (--example)")
    # the most precise first (a line to fix), the row count, which they explain, last
    problems = row_problems(path, task, locations, values)
    for i, (got, want) in enumerate(zip(locations, example_locations, strict=False)):
        if got != want:
            problems.append(f"{path}:{i + 2}: row for {got!r}, the example has {want!r} there "
                            "(order must match)")
            break
    if len(locations) != len(example_locations):
        problems.append(
            f"{path}: {len(locations)} rows, the example {example} has {len(example_locations)}"
        )
    return problems


def row_problems(path: Path, task: str, locations: list[str], values: np.ndarray) -> list[str]:
    """What ``check-submission`` and ``score`` both refuse in a file's rows, the first of each kind
    with its line: a value outside the task's range (VA: finite, in [-1, 1]; Expr: a class index
    0..7; AU: 0 or 1) and a second row for an image location."""
    problems = []
    bad = _out_of_range(task, values)
    if len(bad):
        problems.append(
            f"{path}:{int(bad[0]) + 2}: value out of range for {task}: {values[bad[0]].tolist()}"
        )
    first: dict[str, int] = {}
    for i, location in enumerate(locations):
        if location in first:
            problems.append(f"{path}:{i + 2}: a second row for {location!r} (the first is line "
                            f"{first[location] + 2})")
            break
        first[location] = i
    return problems


def _out_of_range(task: str, values: np.ndarray) -> np.ndarray:
    if task == "va":
        wrong = (np.abs(values) > 1).any(axis=1) | ~np.isfinite(values).all(axis=1)
    elif task == "expr":
        wrong = ~np.isin(values, np.arange(len(HEADERS["expr"]))).all(axis=1)
    else:
        wrong = ~np.isin(values, (0, 1)).all(axis=1)
    return np.flatnonzero(wrong)


def score_submission(path: Path, task: str, data: AffWild2, split: str = VALIDATION) -> dict:
    """Score a submission-format file against the annotations of ``split``.

    Every valid annotated frame of every video of the split needs a row; rows for other frames are
    ignored. Rows ``check_submission`` refuses (:func:`row_problems`: a value out of range, NaN
    included, or a second row for a frame) are refused here too, naming the file and line.
    Returns the task's metric dict (``score`` plus per-dimension/class/AU figures).
    """
    task = check_task(task)
    locations, values = read_submission(path, task)
    problems = row_problems(path, task, locations, values)
    if problems:
        raise InputError(problems[0])
    annotations = data.annotations(task, split)
    rows: dict[tuple[str, int], int] = {}
    for i, loc in enumerate(locations):
        try:
            rows[parse_location(loc)] = i
        except ValueError as err:
            raise InputError(f"{path}:{i + 2}: {err}") from None
    preds, trues = [], []
    for video, ann in annotations.items():
        frames = np.flatnonzero(ann.valid) + 1
        index = [rows.get((video, int(k)), -1) for k in frames]
        if -1 in index:
            k = frames[index.index(-1)]
            raise InputError(
                f"{path}: no row for {video}/{k:05d}.jpg, a valid frame of {split}; "
                "a submission needs a row for every annotated frame"
            )
        preds.append(values[index])
        trues.append(ann.labels[ann.valid])
    if not preds:
        raise InputError(f"{data.root}: no {task} annotations in {split}")
    pred = np.concatenate(preds)
    true = np.concatenate(trues)
    if task == "expr":
        pred = pred[:, 0]
    result = TASK_METRICS[task](pred, true)
    result.update(task=task, split=split, videos=len(annotations))
    return result
