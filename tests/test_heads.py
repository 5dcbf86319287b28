"""Temporal heads on cached features: sequences, windows, masks, losses, post-processing, folds,
and end-to-end runs (train -> evaluate -> predict -> check-submission -> score) on the tiny
synthetic set.

The tiny store's features are cheap but carry a real signal: an 8x8 grayscale thumbnail of the
face's centre (eyes to chin) of each frame (D=64), zeros where there is no face.
"""

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from features import create_store
from pipeline.checkpoint import read_checkpoint
from pipeline.config import parse_settings
from pipeline.data.affwild2 import AffWild2, Annotation
from pipeline.errors import InputError
from pipeline.heads import postprocess
from pipeline.heads.evaluate import infer
from pipeline.heads.folds import fold_split
from pipeline.heads.losses import TaskLoss
from pipeline.heads.sequences import (
    Batcher,
    FeatureTable,
    lay_labels,
    load_features,
    window_starts,
)
from pipeline.heads.train import (
    TrainConfig,
    build_head,
    learning_rate,
    prepare,
    train_run,
    warmup_epochs,
)
from pipeline.models import build_model

FACE_BOX = (28, 36, 84, 92)  # eyes to chin in a 112-pixel crop
SMALL = ["--set", "tcn_channels=64-32-32", "--set", "d_model=32", "--set", "num_layers=2",
         "--set", "num_heads=2", "--set", "ff_dim=64", "--set", "head_hidden=32",
         "--set", "dropout=0.1"]
FAST = ["--window", "100", "--stride", "50", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
        *SMALL]


def store_attrs(dim: int, sha: str = "0" * 64) -> dict:
    return dict(encoder="thumbnail8", encoder_config={"box": list(FACE_BOX)},
                checkpoint_sha256=sha, input_size=8, pixel_mean=[0.5], pixel_std=[0.25],
                pooling="mean", feature_dim=dim, dtype="float32")


def thumbnails(ds: AffWild2, name: str) -> tuple[np.ndarray, np.ndarray]:
    video = ds.videos[name]
    T = ds.num_frames(name)
    feats, present = np.zeros((T, 64), np.float32), np.zeros(T, bool)
    for k in video.frames:
        img = Image.open(video.image_path(int(k))).convert("L")
        scale = img.size[0] / 112
        face = img.crop(tuple(int(b * scale) for b in FACE_BOX)).resize((8, 8), Image.BOX)
        feats[k - 1] = np.asarray(face, np.float32).reshape(-1) / 255.0 - 0.5
        present[k - 1] = True
    return feats, present


def write_store(path: Path, rows: dict[str, tuple[np.ndarray, np.ndarray]],
                sha: str = "0" * 64) -> Path:
    dim = next(iter(rows.values()))[0].shape[1]
    with create_store(path, store_attrs(dim, sha), overwrite=True) as writer:
        for name, (feats, present) in rows.items():
            vw = writer.begin_video(name, len(feats))
            vw.write(0, feats, present)
            vw.finish()
    return path


@pytest.fixture(scope="session")
def tiny_rows(tiny_root) -> dict:
    ds = AffWild2(tiny_root)
    return {name: thumbnails(ds, name) for name in ds.videos}


@pytest.fixture(scope="session")
def tiny_store(tiny_root, tiny_rows, tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("heads") / "thumbs.zarr", tiny_rows)


def run_cli(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --- windows and sequences -------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 99, 100, 101, 299, 300, 301, 500, 1001])
@pytest.mark.parametrize("W,S", [(100, 50), (100, 100), (300, 200), (10, 3)])
def test_windows_cover_every_frame(T, W, S):
    starts = window_starts(T, W, S)
    length = min(T, W)
    covered = np.zeros(T, int)
    for s in starts:
        assert 0 <= s and s + length <= T
        covered[s : s + length] += 1
    assert covered.min() >= 1  # no frame dropped
    assert starts[-1] + length == T  # the tail window ends at the video's end
    assert len(set(starts.tolist())) == len(starts)
    assert len(starts) <= max(1, -(-(T - W) // S) + 1)  # no more windows than needed


def test_batches_pad_and_mask_short_videos():
    # rows 0..14: one 5-frame and one 10-frame video
    feats = np.arange(30, dtype=np.float32).reshape(15, 2)
    labels = np.arange(15, dtype=np.float32)[:, None]
    valid = np.ones(15, bool)
    valid[3] = False
    windows = np.array([[0, 5], [5, 8]])  # (start, length)
    b = Batcher(feats, labels, valid).batch(windows, W=8)
    assert b["x"].shape == (2, 8, 2)
    assert b["keep"].tolist() == [[True] * 5 + [False] * 3, [True] * 8]
    assert (b["x"][0, 5:] == 0).all()  # padding is zero
    torch.testing.assert_close(b["x"][1, :, 0], torch.arange(10.0, 26.0, 2))
    assert not b["counted"][0, 3] and not b["counted"][0, 5:].any()


def test_stores_side_by_side_and_refusals(tiny_rows, tmp_path):
    a = write_store(tmp_path / "a.zarr", tiny_rows)
    doubled = {v: (np.concatenate([f, 2 * f], axis=1), p) for v, (f, p) in tiny_rows.items()}
    b = write_store(tmp_path / "b.h5", doubled, sha="1" * 64)
    table = load_features([a, b], fill="zeros")
    assert table.dim == 64 + 128 and len(table.identities) == 2
    video = table.videos[0]
    rows = table.features[slice(*table.offsets[video])]
    np.testing.assert_allclose(rows[:, 64:128], tiny_rows[video][0])
    np.testing.assert_allclose(rows[:, 128:], 2 * tiny_rows[video][0])

    fewer = dict(list(tiny_rows.items())[1:])
    with pytest.raises(InputError, match="different videos"):
        load_features([a, write_store(tmp_path / "fewer.zarr", fewer)])
    name, (f, p) = next(iter(tiny_rows.items()))
    shorter = {**tiny_rows, name: (f[:-1], p[:-1])}
    with pytest.raises(InputError, match=f"video '{name}' has {len(f)} frames"):
        load_features([a, write_store(tmp_path / "short.zarr", shorter)])


def test_fill_rule_applies_to_absent_frames(tiny_store, tiny_rows):
    nearest = load_features([tiny_store], fill="nearest")
    zeros = load_features([tiny_store], fill="zeros")
    assert not nearest.present.all()  # the tiny set has frames without a face
    absent = ~nearest.present
    assert (zeros.features[absent] == 0).all()
    assert (np.abs(nearest.features[absent]).sum(axis=1) > 0).all()
    np.testing.assert_array_equal(nearest.features[~absent], zeros.features[~absent])


def test_labels_beyond_the_store_or_missing_are_masked(tiny_store):
    table = load_features([tiny_store])
    video = table.videos[0]
    T = table.length(video)
    start = table.offsets[video][0]
    long = Annotation(video, "va", "Train_Set", Path("x"), np.full((T + 5, 2), 0.5, np.float32),
                      np.ones(T + 5, bool))
    labels, valid = lay_labels("va", table, {video: long})
    # rows beyond T are not laid anywhere
    assert valid[start : start + T].all() and valid.sum() == T
    short = Annotation(video, "va", "Train_Set", Path("x"), np.full((T - 4, 2), 0.5, np.float32),
                       np.ones(T - 4, bool))
    labels, valid = lay_labels("va", table, {video: short})
    assert valid.sum() == T - 4 and not valid[start + T - 4 : start + T].any()
    # at evaluation, rows beyond T take the last frame's prediction
    pred, true = postprocess.valid_pairs({video: np.arange(T, dtype=float)[:, None]},
                                         {video: long})
    assert len(pred) == T + 5 and (pred[T:, 0] == T - 1).all()


def test_overlapping_windows_equal_a_whole_video_pass(tiny_store):
    """For a frame-wise model (no state across windows) the averaged windows equal one pass."""
    table = load_features([tiny_store])
    torch.manual_seed(0)
    model = build_model("temporal_linear", in_dim=table.dim, out_dim=2, head_hidden=16).eval()
    videos = table.videos
    windowed = infer(model, "va", table, videos, window=50, stride=20, batch_size=4)
    for video in videos:
        x = torch.from_numpy(table.features[slice(*table.offsets[video])]).float()[None]
        with torch.no_grad():
            whole = model(x)[0].numpy()
        np.testing.assert_allclose(windowed[video], whole, atol=1e-5)


@pytest.mark.parametrize("task,K", [("va", 2), ("expr", 8), ("au", 12)])
def test_masked_frames_never_reach_the_loss(task, K):
    torch.manual_seed(0)
    out = torch.randn(3, 20, K, requires_grad=True)
    if task == "va":
        labels = torch.rand(3, 20, 2) * 2 - 1
    elif task == "expr":
        labels = torch.randint(0, 8, (3, 20, 1)).float()
    else:
        labels = torch.randint(0, 2, (3, 20, 12)).float()
    mask = torch.rand(3, 20) > 0.4
    loss_fn = TaskLoss(task)
    loss = loss_fn(out, labels, mask)
    (grad,) = torch.autograd.grad(loss, out)
    garbage = labels.clone()
    garbage[~mask] = float("nan")  # invalid labels and padding may hold anything
    loss2 = loss_fn(out, garbage, mask)
    (grad2,) = torch.autograd.grad(loss2, out)
    assert torch.isfinite(loss2) and loss2 == loss
    assert torch.equal(grad, grad2) and (grad[~mask] == 0).all()


# --- post-processing, folds, config --------------------------------------------------------------


def test_filters():
    x = np.array([0.0, 0, 3, 0, 0])
    np.testing.assert_allclose(postprocess.moving_average(x, 3), [0, 1, 1, 1, 0])
    assert len(postprocess.moving_average(x, 4)) == 5  # even windows round up to odd
    classes = np.array([1, 1, 2, 1, 1, 3, 3, 3])
    assert postprocess.mode_filter(classes, 4, 3).tolist() == [1, 1, 1, 1, 1, 3, 3, 3]
    assert postprocess.mode_filter(classes, 4, 1).tolist() == classes.tolist()
    assert postprocess.extend(np.array([[1], [2]]), 4)[:, 0].tolist() == [1, 2, 2, 2]


def test_au_thresholds_chosen_on_validation_do_not_lower_f1():
    rng = np.random.default_rng(0)
    T = 400
    labels = (rng.random((T, 12)) < 0.2).astype(np.int64)
    prob = 0.2 * labels + rng.random((T, 12)) * 0.3  # informative, but below 0.5 almost always
    ann = {"v": Annotation("v", "au", "Validation_Set", Path("v"), labels, np.ones(T, bool))}
    raw = {"v": prob}
    pp = postprocess.choose("au", raw, ann)
    at_half = postprocess.score(
        "au", postprocess.apply_all(postprocess.PostProcess("au"), raw), ann)
    chosen = postprocess.score("au", postprocess.apply_all(pp, raw), ann)
    assert chosen["score"] > at_half["score"] + 0.3
    assert postprocess.PostProcess.from_dict(pp.to_dict()) == pp


def test_folds_group_sources_and_fold_zero_is_official(tiny_root):
    ds = AffWild2(tiny_root)
    task = "va"
    train, val = fold_split(ds, task, 0)
    assert (train, val) == (sorted(ds.annotations(task, "Train_Set")),
                            sorted(ds.annotations(task, "Validation_Set")))
    pool = set(train) | set(val)
    folds = 2
    vals = [fold_split(ds, task, k, folds)[1] for k in range(1, folds + 1)]
    # a partition of Train + Validation
    assert sorted(v for fold in vals for v in fold) == sorted(pool)
    from pipeline.data.affwild2 import source_video

    for k in range(1, folds + 1):
        tr, va = fold_split(ds, task, k, folds)
        assert not {source_video(v) for v in tr} & {source_video(v) for v in va}
    with pytest.raises(InputError, match="--fold"):
        fold_split(ds, task, 3, 2)


def test_schedule_warms_up_then_anneals_with_restarts():
    cfg = TrainConfig("va", epochs=10, lr=1.0, warmup_epochs=1, restart_epochs=3, min_lr=0.0)
    assert learning_rate(cfg, 0) == 0 and learning_rate(cfg, 0.5) == pytest.approx(0.5)
    assert learning_rate(cfg, 1) == pytest.approx(1.0)
    assert learning_rate(cfg, 2.5) == pytest.approx(0.5)
    assert (learning_rate(cfg, 3.99) < 0.01
            and learning_rate(cfg, 4) == pytest.approx(1.0))  # restart
    assert learning_rate(cfg, 7) == pytest.approx(0.5)  # the second period is twice as long
    paper = TrainConfig("va")
    assert ((paper.epochs, paper.lr, paper.batch_size, paper.window, paper.stride)
            == (40, 3e-5, 32, 300, 200))
    assert (TrainConfig("expr").epochs, TrainConfig("au").epochs) == (10, 30)


def test_warm_up_never_fills_a_short_run():
    cfg = TrainConfig("va", epochs=1, lr=1.0, warmup_epochs=1, min_lr=0.0)
    assert warmup_epochs(cfg) == 0.5
    assert (learning_rate(cfg, 0.25) == pytest.approx(0.5)
            and learning_rate(cfg, 0.5) == pytest.approx(1.0))
    # half the run at a high rate, annealing over a period of 1.5
    assert learning_rate(cfg, 1.0) > 0.5
    assert warmup_epochs(TrainConfig("va", epochs=40)) == 1.0  # the paper's runs: unchanged


def test_a_one_epoch_run_of_one_step_trains_its_head(tiny_root, tiny_store, tmp_path, capsys,
                                                     monkeypatch):
    cfg = TrainConfig.create(task="va", stores=(str(tiny_store),), data=str(tiny_root), epochs=1,
                             window=400, stride=400, batch_size=64, device="cpu",
                             tcn_channels=(8, 8, 8), d_model=8, num_layers=1, num_heads=2, ff_dim=8,
                             head_hidden=8)
    data = prepare(cfg)
    summary = train_run(data, cfg, tmp_path / "one", progress=False, make_plots=False)
    assert "warm-up of 1 epoch(s) would fill" in capsys.readouterr().err
    assert summary["warmup_epochs"] == 0.5
    torch.manual_seed(cfg.seed)
    untrained = build_head(cfg, data.table.dim).state_dict()
    trained = read_checkpoint(tmp_path / "one" / "best.pt")["state_dict"]
    assert any(not torch.equal(trained[k], v)
               for k, v in untrained.items() if v.is_floating_point())
    # a run refused for its settings leaves the earlier run in its directory as it was
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if p.is_file()}
    with pytest.raises(InputError, match="no CUDA device is visible"):
        train_run(data, dataclasses.replace(cfg, device="cuda"), tmp_path / "one",
                  progress=False, make_plots=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if p.is_file()} == before


def test_a_diverging_head_is_refused_naming_its_epoch(tiny_root, tiny_store, tmp_path):
    """A head whose loss overflows stops with one line naming the epoch, the step and the lr,
    instead of scoring NaN predictions as CCC 0 and writing them to a submission."""
    cfg = TrainConfig.create(task="va", stores=(str(tiny_store),), data=str(tiny_root), epochs=1,
                             window=100, stride=50, batch_size=8, device="cpu", lr=1e30,
                             tcn_channels=(8, 8, 8), d_model=8, num_layers=1, num_heads=2, ff_dim=8,
                             head_hidden=8)
    refused = r"the loss became (nan|inf) at epoch 1, step \d+; lower the lr setting"
    with pytest.raises(InputError, match=refused):
        train_run(prepare(cfg), cfg, tmp_path / "nan", progress=False, make_plots=False)
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_settings_parse_by_field_type():
    assert parse_settings(TrainConfig, ["tcn_channels=256-128-64", "causal=false", "lr=1e-3",
                                        "restart_epochs=none", "model=temporal_tcn"]) == {
        "tcn_channels": (256, 128, 64), "causal": False, "lr": 1e-3, "restart_epochs": None,
        "model": "temporal_tcn"}
    cfg = TrainConfig.create(task="va", d_model=64, window=100)
    assert cfg.head.d_model == 64 and (cfg.window, cfg.stride) == (100, 66)
    with pytest.raises(InputError, match="dmodel is not a setting"):
        parse_settings(TrainConfig, ["dmodel=3"])
    with pytest.raises(InputError, match="window 'big' is not a valid int"):
        parse_settings(TrainConfig, ["window=big"])
    with pytest.raises(InputError, match="skip frames"):
        TrainConfig("va", window=100, stride=150)


# --- end to end ---------------------------------------------------------------------------------


def test_training_is_deterministic(tiny_root, tiny_store, tmp_path):
    cfg = TrainConfig.create(task="au", stores=(str(tiny_store),), data=str(tiny_root), epochs=1,
                             window=100, stride=50, batch_size=8, device="cpu",
                             tcn_channels=(16, 16, 8), d_model=16, num_layers=1, num_heads=2,
                             ff_dim=16, head_hidden=8, absent_in_loss=False)
    data = prepare(cfg)
    a = train_run(data, cfg, tmp_path / "a", progress=False, make_plots=False)
    b = train_run(data, cfg, tmp_path / "b", progress=False, make_plots=False)
    assert a["before"] == b["before"]
    sa = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_va_train_evaluate_predict_score(tiny_root, tiny_store, tmp_path):
    """A short VA training learns (validation CCC well above zero); predict writes a valid
    submission whose `score` equals what `evaluate` printed for the same frames."""
    run = tmp_path / "va"
    out = run_cli("train", "va", "--store", tiny_store, "--data", tiny_root, "--out", run,
                  "--epochs", 8, *FAST, "--json")
    summary = json.loads(out)
    assert summary["before"]["score"] > 0.2 and summary["before"]["valence"] > 0.5
    for name in ("config.json", "log.jsonl", "best.pt", "val_predictions.npz",
                 "training_curves.png", "va_traces.png"):
        assert (run / name).is_file(), name
    assert len((run / "log.jsonl").read_text().splitlines()) == 8

    evaluated = json.loads(run_cli("evaluate", "--run", run, "--device", "cpu", "--json"))
    assert evaluated["after"]["score"] == pytest.approx(summary["after"]["score"], abs=1e-9)
    run_cli("predict", "--run", run, "--split", "Validation_Set", "--out", tmp_path / "val.csv",
            "--device", "cpu")
    scored = json.loads(run_cli("score", "--task", "va", "--pred", tmp_path / "val.csv", "--data",
                                tiny_root, "--json"))
    assert scored["score"] == pytest.approx(evaluated["after"]["score"], abs=1e-5)

    ds = AffWild2(tiny_root)
    test_eval = json.loads(run_cli("evaluate", "--run", run, "--split", "Test_Set", "--device",
                                   "cpu", "--json"))
    run_cli("predict", "--run", run, "--out", tmp_path / "test.csv", "--device", "cpu")
    run_cli("check-submission", tmp_path / "test.csv", "--task", "va", "--example",
            ds.example_submission("va"))
    scored = json.loads(run_cli("score", "--task", "va", "--pred", tmp_path / "test.csv", "--data",
                                tiny_root, "--split", "Test_Set", "--json"))
    assert scored["score"] == pytest.approx(test_eval["after"]["score"], abs=1e-5)
    assert scored["frames"] == test_eval["after"]["frames"]


@pytest.mark.parametrize("task", ["expr", "au"])
def test_expr_au_runs_ensemble_and_submit(task, tiny_root, tiny_store, tmp_path):
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"{task}{seed}")
        run_cli("train", task, "--store", tiny_store, "--data", tiny_root, "--out", runs[-1],
                "--epochs", 2, "--seed", seed, "--model", "temporal_tcn", *FAST)
    plot = {"expr": "expr_confusion.png", "au": "au_f1.png"}[task]
    assert (runs[0] / plot).is_file()
    ckpt = torch.load(runs[0] / "best.pt", weights_only=True)
    assert (ckpt["postprocess"]["task"] == task
            and ckpt["stores"][0]["checkpoint_sha256"] == "0" * 64)

    ds = AffWild2(tiny_root)
    sub = tmp_path / f"{task}.csv"
    run_cli("predict", "--run", runs[0], "--run", runs[1], "--out", sub, "--device", "cpu")
    run_cli("check-submission", sub, "--task", task, "--example", ds.example_submission(task))
    scored = json.loads(run_cli("score", "--task", task, "--pred", sub, "--data", tiny_root,
                                "--split", "Test_Set", "--json"))
    assert 0 <= scored["score"] <= 1


def test_predict_refuses_a_store_of_another_encoder(tiny_root, tiny_rows, tiny_store, tmp_path):
    run = tmp_path / "run"
    run_cli("train", "va", "--store", tiny_store, "--data", tiny_root, "--out", run, "--epochs", 1,
            "--model", "temporal_linear", *FAST)
    other = write_store(tmp_path / "other.zarr", tiny_rows, sha="f" * 64)
    result = CliRunner().invoke(cli, ["predict", "--run", str(run), "--store", str(other), "--out",
                                      str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "checkpoint_sha256" in result.output and not (tmp_path / "x.csv").exists()


def test_ablate_grid_by_seeds(tiny_root, tiny_store, tmp_path):
    out = run_cli("ablate", "--task", "va", "--store", tiny_store, "--data", tiny_root,
                  "--grid", "model=temporal_linear,temporal_tcn", "--grid", "window=50,100",
                  "--seeds", 2, "--out", tmp_path / "abl", "--epochs", 1, *FAST[2:])
    # the header, then 2 per row
    assert "| model | window |" in out and out.count("±") == 1 + 2 * 4
    rows = (tmp_path / "abl" / "ablation.csv").read_text().splitlines()
    assert (len(rows) == 1 + 4
            and len((tmp_path / "abl" / "runs.csv").read_text().splitlines()) == 1 + 8)
    assert (tmp_path / "abl" / "model-temporal_tcn_window-100" / "seed1" / "best.pt").is_file()
    # again with one seed and one combination: the folder holds what its tables say
    (tmp_path / "abl" / "notes.txt").write_text("mine")
    out = run_cli("ablate", "--task", "va", "--store", tiny_store, "--data", tiny_root,
                  "--grid", "model=temporal_linear", "--seeds", 1, "--out", tmp_path / "abl",
                  "--epochs", 1, *FAST[2:])
    # one seed gives no spread: no '± 0.0000', an empty cell in the CSV
    assert "va score (1 seed)" in out and "±" not in out
    row = next(csv.DictReader(io.StringIO((tmp_path / "abl" / "ablation.csv").read_text())))
    assert row["score_std"] == row["postprocessed_std"] == "" and float(row["score_mean"]) > -1
    left = sorted(p.relative_to(tmp_path / "abl").as_posix()
                  for p in (tmp_path / "abl").glob("*/seed*"))
    assert left == ["model-temporal_linear/seed0"], left
    assert (tmp_path / "abl" / "notes.txt").read_text() == "mine"
    # a grid value that does not parse is named as the --grid item it came from
    result = CliRunner().invoke(cli, ["ablate", "--task", "va", "--store", str(tiny_store),
                                      "--data", str(tiny_root), "--grid", "kernel_size=3,x",
                                      "--out", str(tmp_path / "abl2")])
    assert result.exit_code == 2 and "--grid 'kernel_size=3,x': 'x' is not a valid int" in (
        result.output)


def test_a_run_directory_works_from_anywhere_and_after_a_move(mini_root, tmp_path, monkeypatch):
    """Trained with relative --store/--data, a run finds them from any working directory (by the
    absolute paths it recorded) and after the whole folder moved (by their places relative to the
    run)."""
    project = tmp_path / "project"
    project.mkdir()
    mini_root.rename(project / "aw2")
    rng = np.random.default_rng(0)
    write_store(project / "f.zarr",
                {v: (rng.standard_normal((t, 4)).astype(np.float32), np.ones(t, bool))
                 for v, t in (("vid_left", 6), ("105", 3))})
    monkeypatch.chdir(project)
    run_cli("train", "va", "--store", "f.zarr", "--data", "aw2", "--out", "runs/va", "--preset",
            "demo", "--epochs", 1, "--window", 4, "--device", "cpu", "--json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["--split", "Validation_Set", "--device", "cpu", "--json"]
    run_cli("predict", "--run", "../project/runs/va", "--out", "a.csv", *args)
    run_cli("evaluate", "--run", "../project/runs/va", "--json")
    project.rename(tmp_path / "moved")  # the run, its store and its dataset, moved together
    run_cli("predict", "--run", "../moved/runs/va", "--out", "b.csv", *args)
    assert (elsewhere / "a.csv").read_text() == (elsewhere / "b.csv").read_text()
    # its store gone from both places
    (tmp_path / "moved" / "f.zarr").rename(tmp_path / "moved" / "g.zarr")
    result = CliRunner().invoke(cli, ["predict", "--run", "../moved/runs/va", "--out", "c.csv",
                                      *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert (f"{project / 'f.zarr'}" in result.stderr
            and f"{tmp_path / 'moved' / 'f.zarr'}" in result.stderr)
    assert "--store" in result.stderr and not (elsewhere / "c.csv").exists()
    run_cli("predict", "--run", "../moved/runs/va", "--out", "c.csv", "--store", "../moved/g.zarr",
            *args)


def test_videos_a_store_lacks_are_told_apart_from_an_unfinished_extraction(tmp_path):
    def table(incomplete):
        return FeatureTable(np.zeros((3, 2)), np.ones(3, bool), {"101": (0, 3)}, [], ["f.zarr"],
                            "nearest", incomplete)

    with pytest.raises(InputError, match="e.g. '102', begun by an extraction that did not "
                                         "finish; run the same `mae-affect extract` again"):
        table(("102",)).require(["101", "102"])
    for begun in ((), ("103",)):  # another video unfinished: not the one asked for
        with pytest.raises(InputError, match="e.g. '102': extract features for them"):
            table(begun).require(["101", "102"])
    table(()).require(["101"])
    # through load_features: a store whose second video was begun, never finished
    path = tmp_path / "f.zarr"
    write_store(path, {"101": (np.ones((3, 2), np.float32), np.ones(3, bool))})
    with create_store(path, store_attrs(2, "0" * 64)) as writer:
        writer.begin_video("102", 5).write(0, np.ones((2, 2), np.float32), np.ones(2, bool))
    with pytest.raises(InputError, match="e.g. '102', begun by an extraction"):
        load_features([path]).require(["101", "102"])


def test_a_users_files_in_the_run_folder_survive_a_train(tiny_root, tiny_store, tmp_path):
    run = tmp_path / "va"
    run.mkdir()
    (run / "train.log").write_text("tee'd")
    (run / "figure.png").write_bytes(b"mine")
    for _ in range(2):  # a first run, then a rerun replacing its outputs
        run_cli("train", "va", "--store", tiny_store, "--data", tiny_root, "--out", run,
                "--epochs", 1, *FAST[2:])
    assert (run / "figure.png").read_bytes() == b"mine" and (run / "train.log").exists()
    assert (run / "training_curves.png").exists()
