"""Metric parity: our CCC and F1s against scikit-learn and a plain numpy reference on random
inputs."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from pipeline.metrics import (
    au_f1,
    binary_f1,
    ccc,
    expr_confusion,
    expr_f1,
    expr_f1_from_confusion,
    score_from_statistics,
    uniform_guess_expr_f1,
    uniform_guess_f1_from_counts,
    va_score,
    video_bootstrap,
    video_statistics,
)


def reference_ccc(x, y):
    # Written from the definition with explicit sums, independent of pipeline.metrics.
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / n
    return 2 * cov / (vx + vy + (mx - my) ** 2)


@pytest.mark.parametrize("seed", range(20))
def test_ccc_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 500))
    y = rng.uniform(-1, 1, n)
    x = 0.6 * y + rng.normal(0, rng.uniform(0.05, 1), n) + rng.uniform(-0.3, 0.3)
    assert ccc(x, y) == pytest.approx(reference_ccc(list(x), list(y)), abs=1e-12)


def test_ccc_properties():
    y = np.linspace(-1, 1, 101)
    assert ccc(y, y) == pytest.approx(1.0)
    assert ccc(-y, y) == pytest.approx(-1.0)
    assert ccc(y + 0.5, y) < 1.0  # a shift is penalised, unlike Pearson
    assert ccc(np.zeros_like(y), y) == 0.0  # constant prediction
    assert ccc(np.ones(5), np.ones(5)) == 0.0  # degenerate: zero denominator
    # a diverged model's NaN or inf never scores as a constant prediction's 0
    assert np.isnan(ccc(np.where(y > 0.9, np.nan, y), y))
    assert np.isnan(ccc(np.where(y > 0.9, np.inf, y), y))


@pytest.mark.parametrize("seed", range(20))
def test_expr_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    true = rng.integers(0, 8, n)
    pred = np.where(rng.random(n) < 0.5, true, rng.integers(0, rng.integers(1, 9), n))
    expected = f1_score(true, pred, labels=list(range(8)), average="macro", zero_division=0)
    assert expr_f1(pred, true)["score"] == pytest.approx(expected, abs=1e-12)


def test_expr_f1_absent_class_counts_as_zero():
    true = np.array([0, 0, 1, 1])
    result = expr_f1(true.copy(), true)
    assert result["Neutral"] == 1.0 and result["Anger"] == 1.0 and result["Other"] == 0.0
    assert result["score"] == pytest.approx(2 / 8)


def test_uniform_guess_f1_is_what_random_guessing_scores():
    rng = np.random.default_rng(0)
    true = rng.choice(8, 20000, p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0])
    guessed = np.mean([expr_f1(rng.integers(0, 8, len(true)), true)["score"] for _ in range(5)])
    assert uniform_guess_expr_f1(true) == pytest.approx(guessed, abs=0.003)
    assert uniform_guess_expr_f1(np.zeros(10, int)) == pytest.approx(2 * 0.125 / 1.125 / 8)


@pytest.mark.parametrize("seed", range(10))
def test_f1_from_confusion_is_expr_f1_and_sums_over_videos(seed):
    rng = np.random.default_rng(seed)
    videos = [(rng.integers(0, rng.integers(1, 9), n), rng.integers(0, 8, n))
              for n in rng.integers(1, 200, 5)]
    confusions = np.stack([expr_confusion(pred, true) for pred, true in videos])  # (5, 8, 8)
    pred, true = (np.concatenate(x) for x in zip(*videos, strict=True))
    assert confusions.sum() == len(true) and np.trace(confusions.sum(0)) == (pred == true).sum()
    assert expr_f1_from_confusion(confusions.sum(0)) == pytest.approx(
        expr_f1(pred, true)["score"], abs=1e-12)
    batched = expr_f1_from_confusion(confusions)  # one score per video at once
    assert batched == pytest.approx([expr_f1(p, t)["score"] for p, t in videos], abs=1e-12)
    counts = np.stack([np.bincount(t, minlength=8) for _, t in videos])
    assert uniform_guess_f1_from_counts(counts) == pytest.approx(
        [uniform_guess_expr_f1(t) for _, t in videos])


def test_video_bootstrap_draws_whole_videos_with_replacement():
    weights = video_bootstrap(7, 4000, seed=1)
    assert weights.shape == (4000, 7) and (weights.sum(1) == 7).all() and weights.min() >= 0
    assert np.allclose(weights.mean(0), 1.0, atol=0.1)  # every video equally likely
    assert (weights == 0).any(1).mean() > 0.9  # most draws leave some video out
    assert np.array_equal(weights, video_bootstrap(7, 4000, seed=1))


@pytest.mark.parametrize("seed", range(20))
def test_au_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    true = (rng.random((n, 12)) < rng.uniform(0.05, 0.6, 12)).astype(int)
    pred = np.where(rng.random((n, 12)) < 0.7, true, rng.integers(0, 2, (n, 12)))
    expected = np.mean([f1_score(true[:, i], pred[:, i], zero_division=0) for i in range(12)])
    assert au_f1(pred, true)["score"] == pytest.approx(expected, abs=1e-12)


def test_binary_f1_degenerate():
    assert binary_f1(np.zeros(4), np.zeros(4)) == 0.0
    assert binary_f1(np.ones(4), np.zeros(4)) == 0.0


def test_va_score_is_mean_of_the_two_cccs():
    rng = np.random.default_rng(0)
    true = rng.uniform(-1, 1, (300, 2))
    pred = true + rng.normal(0, 0.3, (300, 2))
    result = va_score(pred, true)
    assert result["score"] == pytest.approx(
        (ccc(pred[:, 0], true[:, 0]) + ccc(pred[:, 1], true[:, 1])) / 2)
    assert set(result) >= {"score", "valence", "arousal"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_from_summed_video_statistics_are_the_official_ones(seed):
    """A set's score from its videos' summed statistics equals the metric on the concatenated
    frames, and a bootstrap draw is the metric on the videos drawn, repeated as often as drawn."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, 6)
    videos = {
        "va": [(rng.uniform(-1, 1, (n, 2)), np.clip(rng.normal(0.2, 0.4, (n, 2)), -1, 1))
               for n in lengths],
        "expr": [(rng.integers(0, 8, n), rng.integers(0, 6, n)) for n in lengths],
        "au": [(rng.integers(0, 2, (n, 12)), (rng.random((n, 12)) < 0.2).astype(int))
               for n in lengths],
    }
    metric = {"va": va_score, "expr": expr_f1, "au": au_f1}
    for task, pairs in videos.items():
        stats = np.stack([video_statistics(task, p, t) for p, t in pairs])
        whole = metric[task](np.concatenate([p for p, _ in pairs]),
                             np.concatenate([t for _, t in pairs]))
        assert score_from_statistics(task, stats.sum(0)) == pytest.approx(
            whole["score"], abs=1e-9), task
        draw = np.array([2, 0, 1, 0, 3, 0])
        picked = [pairs[i] for i, k in enumerate(draw) for _ in range(k)]
        again = metric[task](np.concatenate([p for p, _ in picked]),
                             np.concatenate([t for _, t in picked]))
        assert score_from_statistics(task, draw @ stats) == pytest.approx(
            again["score"], abs=1e-9), task
    constant = video_statistics("va", np.full((5, 2), 0.3), np.full((5, 2), 0.3))
    assert score_from_statistics("va", constant) == 0.0  # both constant and equal: 0, as ccc() says


@pytest.mark.parametrize("metric,pred,true", [
    (expr_f1, np.array([3]), np.zeros(1000)),  # numpy would broadcast this into a score
    (expr_f1, np.zeros((5, 1)), np.zeros(5)),
    (au_f1, np.zeros((5, 12)), np.zeros((6, 12))),
    (au_f1, np.zeros((5, 11)), np.zeros((5, 11))),
    (va_score, np.zeros((5, 2)), np.zeros(5)),
])
def test_predictions_and_labels_of_other_shapes_are_refused(metric, pred, true):
    with pytest.raises(ValueError, match="needs predictions and labels of shape"):
        metric(pred, true)
