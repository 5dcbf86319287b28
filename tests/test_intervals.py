"""Intervals over validation videos for head runs: point estimates are the runs' own scores, the
same draws serve every run, and runs validated on other videos are refused."""

import io

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.heads.intervals import intervals
from pipeline.metrics import va_score


def write_run(run, videos: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """A head run's val_predictions.npz as pipeline.heads.train writes it: per video i pred_i (T
    rows), labels_i and valid_i (annotation rows, possibly more than T)."""
    run.mkdir(parents=True)
    arrays = {"videos": np.array(list(videos))}
    for i, (pred, labels, valid) in enumerate(videos.values()):
        arrays.update({f"raw_{i}": pred, f"pred_{i}": pred, f"labels_{i}": labels,
                       f"valid_{i}": valid})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (run / "val_predictions.npz").write_bytes(buf.getvalue())
    return run


def test_va_intervals_and_differences(tmp_path):
    rng = np.random.default_rng(0)
    labels = {f"v{i}": np.clip(rng.normal(0, 0.5, (40 + 5 * i, 2)), -1, 1) for i in range(8)}
    valid = {v: rng.random(len(y)) > 0.1 for v, y in labels.items()}
    # 2 rows past T
    good = {v: (np.clip(y[:-2] + rng.normal(0, 0.2, y[:-2].shape), -1, 1), y, valid[v])
            for v, y in labels.items()}
    noise = {v: (rng.uniform(-1, 1, y.shape), y, valid[v]) for v, y in labels.items()}
    runs = {"full": write_run(tmp_path / "full", good),
            "noise": write_run(tmp_path / "noise", noise)}
    out = intervals(runs, "va", reference="full", resamples=500, seed=1)

    pred = np.concatenate([np.concatenate([p, p[-1:], p[-1:]])[m] for p, _, m in good.values()])
    true = np.concatenate([y[m] for _, y, m in good.values()])
    assert out["runs"]["full"]["score"] == pytest.approx(va_score(pred, true)["score"], abs=1e-9)
    assert out["videos"] == 8 and out["resamples"] == 500
    for run in out["runs"].values():
        assert run["ci95"][0] <= run["score"] <= run["ci95"][1]
    diff = out["differences"]["noise"]
    assert diff["diff"] == pytest.approx(out["runs"]["noise"]["score"]
                                         - out["runs"]["full"]["score"])
    # noise is resolved below the full model
    assert diff["ci95"][1] < 0 and diff["share_above_0"] == 0
    assert "full" not in out["differences"]
    assert intervals(runs, "va", reference="full", resamples=500, seed=1) == out  # seeded draws

    other = write_run(tmp_path / "other", dict(list(good.items())[:5]))
    with pytest.raises(InputError, match="validated on other videos"):
        intervals({"full": runs["full"], "other": other}, "va", reference="full")
    with pytest.raises(InputError, match="val_predictions.npz does not exist"):
        intervals({"full": tmp_path / "none"}, "va", reference="full")
