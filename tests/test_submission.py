"""Submission files: write/read round trip, the checker, and `mae-affect score` against the
metrics."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.data.affwild2 import AffWild2
from pipeline.errors import InputError
from pipeline.metrics import au_f1, va_score
from pipeline.submission import (
    check_submission,
    read_submission,
    score_submission,
    write_submission,
)


def _val_frames(ds, task):
    """All frames 1..T of every validation video, as locations, plus the annotation of each."""
    locations = []
    for video, ann in ds.annotations(task, "Validation_Set").items():
        locations += [f"{video}/{k:05d}.jpg" for k in range(1, ann.num_frames + 1)]
    return locations


def test_write_read_round_trip(tmp_path):
    locs = ["a/00001.jpg", "a/00002.jpg"]
    path = tmp_path / "va.csv"
    write_submission(path, "va", locs, np.array([[0.1, -0.2], [1.5, -3.0]]))
    got_locs, values = read_submission(path, "va")
    assert got_locs == locs
    np.testing.assert_allclose(values, [[0.1, -0.2], [1.0, -1.0]])  # clipped to [-1, 1]
    assert path.read_text().splitlines()[0] == "image_location,valence,arousal"
    # a diverged head's NaN is refused by its location, and nothing is written
    for task, values in [("va", [[0.1, -0.2], [np.nan, 0.0]]), ("expr", [3, np.nan]),
                         ("au", [[0] * 12, [1] * 11 + [np.inf]])]:
        with pytest.raises(InputError, match="prediction for a/00002.jpg .1 rows in all. is NaN"):
            write_submission(tmp_path / f"nan-{task}.csv", task, locs, np.array(values))
        assert not (tmp_path / f"nan-{task}.csv").exists()


def test_score_agrees_with_independent_metrics(mini_root, tmp_path):
    ds = AffWild2(mini_root)
    locs = _val_frames(ds, "va")
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, (len(locs), 2))
    path = tmp_path / "va.csv"
    write_submission(path, "va", locs, values)
    ann = ds.annotations("va", "Validation_Set")["105"]
    expected = va_score(np.round(values[ann.valid], 6), ann.labels[ann.valid])
    assert score_submission(path, "va", ds)["score"] == pytest.approx(expected["score"], abs=1e-9)

    locs = _val_frames(ds, "au")
    au = (rng.random((len(locs), 12)) < 0.5).astype(int)
    write_submission(tmp_path / "au.csv", "au", locs, au)
    ann = ds.annotations("au", "Validation_Set")["105"]
    result = CliRunner().invoke(
        cli, ["score", "--task", "au", "--pred", str(tmp_path / "au.csv"), "--data", str(mini_root),
              "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["score"] == pytest.approx(
        au_f1(au[ann.valid], ann.labels[ann.valid])["score"])


def test_score_refuses_missing_rows(mini_root, tmp_path):
    ds = AffWild2(mini_root)
    locs = _val_frames(ds, "va")[:-1]  # drop the last frame, which is annotated and valid
    write_submission(tmp_path / "va.csv", "va", locs, np.zeros((len(locs), 2)))
    with pytest.raises(InputError, match="no row for 105/00003.jpg"):
        score_submission(tmp_path / "va.csv", "va", ds)


@pytest.mark.parametrize(("task", "row", "bad", "expected"), [
    ("va", 0, "nan,0.1", ":2: value out of range for va: [nan, 0.1]"),
    ("va", 2, "0.1,inf", ":4: value out of range"),
    ("va", 1, "1.5,0.0", ":3: value out of range"),
    ("expr", 0, "8", ":2: value out of range for expr"),
    ("expr", 1, "2.5", ":3: value out of range"),
    ("au", 2, "0,1,0,0,0,0,0,0,0,0,0,nan", ":4: value out of range for au"),
    ("va", 2, None, ":4: a second row for"),
])
def test_score_refuses_what_check_submission_refuses(mini_root, tmp_path, task, row, bad, expected):
    ds = AffWild2(mini_root)
    split = "Train_Set" if task == "expr" else "Validation_Set"
    locs = [f"{v}/{k:05d}.jpg" for v, ann in sorted(ds.annotations(task, split).items())
            for k in range(1, ann.num_frames + 1)]
    path = tmp_path / f"{task}.csv"
    write_submission(path, task, locs, np.zeros((len(locs), {"va": 2, "expr": 1, "au": 12}[task])))
    lines = path.read_text().splitlines()
    if bad is None:
        lines.insert(row + 1, lines[1])  # frame 1 again, after the first two rows
    else:
        lines[row + 1] = f"{locs[row]},{bad}"
    path.write_text("\n".join(lines) + "\n")
    example = tmp_path / "example.txt"
    write_submission(example, task, locs,
                     np.zeros((len(locs), {"va": 2, "expr": 1, "au": 12}[task])))
    assert any(expected in p for p in check_submission(path, task, example))
    result = CliRunner().invoke(cli, ["score", "--task", task, "--pred", str(path), "--data",
                                      str(mini_root), "--split", split, "--json"])
    assert result.exit_code == 2, result.output
    assert (result.stderr.count("\n") == 1 and f"{path}{expected}" in result.stderr
            and not result.stdout)


def test_check_submission_names_the_first_problem(tmp_path):
    example = tmp_path / "example.txt"
    locs = ["v/00001.jpg", "v/00002.jpg", "v/00003.jpg"]
    write_submission(example, "expr", locs, np.zeros(3))
    good = tmp_path / "good.csv"
    write_submission(good, "expr", locs, np.array([4, 2, 7]))
    assert check_submission(good, "expr", example) == []

    swapped = tmp_path / "swapped.csv"
    write_submission(swapped, "expr", [locs[1], locs[0], locs[2]], np.array([4, 2, 7]))
    assert "swapped.csv:2: row for 'v/00002.jpg'" in check_submission(swapped, "expr", example)[0]

    short = tmp_path / "short.csv"
    write_submission(short, "expr", locs[:2], np.array([1, 2]))
    assert "2 rows, the example" in check_submission(short, "expr", example)[0]

    # a duplicated row: the line to fix comes first, the row count it explains after
    twice = tmp_path / "twice.csv"
    write_submission(twice, "expr", [locs[0], locs[1], locs[1], locs[2]], np.array([4, 2, 2, 7]))
    problems = check_submission(twice, "expr", example)
    assert "twice.csv:4: a second row for 'v/00002.jpg'" in problems[0], problems
    assert "4 rows, the example" in problems[-1]

    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text().replace("v/00003.jpg,7", "v/00003.jpg,9"))
    assert ":4: value out of range" in check_submission(bad, "expr", example)[0]

    result = CliRunner().invoke(cli, ["check-submission", str(bad), "--task", "expr", "--example",
                                      str(example)])
    assert result.exit_code == 2
    assert "value out of range" in result.output

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    for path, message in ((tmp_path, "a folder; give the submission file"),
                          (binary, "not a text file (byte 0 is not UTF-8)")):
        assert message in check_submission(path, "expr", example)[0]

    header = tmp_path / "header.csv"
    header.write_text("image_location,valence\n")
    assert ":1: header" in check_submission(header, "va", example)[0]

    result = CliRunner().invoke(cli, ["check-submission", str(good), "--task", "expr", "--example",
                                      str(tmp_path / "nothere.txt")])
    assert result.exit_code == 2
    missing = tmp_path / "nothere.txt"
    assert result.output == f"error: {missing}: example file (--example) not found\n"


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(
        cli, ["score", "--task", "va", "--pred", str(tmp_path / "x.csv"), "--data",
              str(tmp_path / "none")]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output
