"""Expression fine-tuning: the labelled frame set, the epoch plan, layer-wise lr decay, labels -1
never in the loss, resume equality, the best-by-F1 checkpoint, load_encoder on the result, learning,
two gloo ranks."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

import pipeline.finetune as ft
import pipeline.finetune_eval as ft_eval
import pipeline.finetune_loss as ft_loss
import pipeline.finetune_model as ft_model
from cli import cli
from pipeline.checkpoint import (
    encoder_checkpoint,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.data.affwild2 import AffWild2
from pipeline.data.frames import (
    EpochSampler,
    ExprFrames,
    class_weights,
    epoch_rows,
    erase_box,
    expr_frames,
    jitter_colour,
)
from pipeline.data.synth import SynthConfig, generate
from pipeline.errors import InputError
from pipeline.metrics import expr_f1, uniform_guess_expr_f1
from pipeline.models.classifier import ExprClassifier
from pipeline.models.encoder import normalize, pool_tokens
from pipeline.models.mae import build_encoder, mae_config
from pipeline.runs import read_jsonl
from tests.conftest import run_two_ranks, write_annotation, write_images

# A 32 px, 8 px-patch, 32-wide, 2-block encoder: a run of a few epochs on tiny takes seconds.
TINY_ENCODER = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8)
FAST = dict(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, frames_per_video=24,
            val_frames_per_video=40, workers=0, device="cpu", bf16=False, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_init(path: Path, seed: int = 0, **encoder) -> Path:
    torch.manual_seed(seed)
    config = asdict(mae_config("mae_vit_tiny_patch16", **{**TINY_ENCODER, **encoder}))
    enc = build_encoder("mae_vit_tiny_patch16", **config)
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", config, enc,
                                       config["img_size"]), path)
    return path


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    return make_init(tmp_path_factory.mktemp("init") / "mae.pt")


def run_config(data, out, init, **kw) -> ft.FinetuneConfig:
    return ft.FinetuneConfig(data=str(data), out=str(out), init=str(init) if init else None,
                             **{**FAST, **kw})


def without_timing(records):
    timing = ("seconds", "img_per_s", "first_batch_s", "img_per_s_after_first_batch")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_frames_keep_only_valid_labels_with_images(tmp_path):
    root = tmp_path / "aw2"
    write_images(root, "a", [1, 2, 3, 5, 6])
    write_images(root, "b", [1, 2])
    # frame 3 of a: image but -1; frame 4: label but no image; frame 6: image beyond the annotation
    write_annotation(root, "EXPR_Recognition_Challenge", "Train_Set", "a", "expr",
                     ["0", "7", "-1", "4", "4"])
    write_annotation(root, "EXPR_Recognition_Challenge", "Train_Set", "b", "expr", ["-1", "-1"])
    write_annotation(root, "AU_Detection_Challenge", "Train_Set", "a", "au",
                     ["0,1,0,0,0,0,0,0,0,0,0,1", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"])
    index = expr_frames(AffWild2(root), "Train_Set")
    assert index.videos == ("a",)  # b has no valid label
    assert index.frame.tolist() == [1, 2, 5] and index.expr.tolist() == [0, 7, 4]
    assert [p.name for p in index.image_paths] == ["00001.jpg", "00002.jpg", "00005.jpg"]
    assert index.au_valid.tolist() == [True, False, False] and index.au[0].tolist()[:2] == [0, 1]
    assert not index.va_valid.any()  # no VA folder at all
    assert index.class_counts().tolist() == [1, 0, 0, 0, 1, 0, 0, 1]

    write_annotation(root, "EXPR_Recognition_Challenge", "Validation_Set", "b", "expr",
                     ["-1", "-1"])
    with pytest.raises(InputError, match="no frame with both a valid Expr label and an image"):
        expr_frames(AffWild2(root), "Validation_Set")


def test_frames_named_with_another_width_are_read_for_training(tmp_path):
    root = tmp_path / "aw2"
    write_images(root, "a", [1, 2, 3])
    write_annotation(root, "EXPR_Recognition_Challenge", "Train_Set", "a", "expr", ["0", "7", "4"])
    folder = root / "cropped_aligned" / "a"
    for image in folder.iterdir():
        image.rename(folder / f"{int(image.stem):06d}.jpg")  # ffmpeg's %06d
    index = expr_frames(AffWild2(root), "Train_Set")
    assert [p.name for p in index.image_paths] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    frames = ExprFrames(index, img_size=16)
    assert all(bool(frames[row]["ok"]) for row in range(3))
    assert all(bool(frames[(row, 0, row)]["ok"]) for row in range(3))  # training items too


def test_epoch_plan_caps_videos_balances_classes_and_is_seeded(tiny_root):
    index = expr_frames(AffWild2(tiny_root), "Train_Set")
    rows = epoch_rows(index, epoch=0, seed=1, frames_per_video=30, balance="none")
    assert len(rows) == len(set(rows.tolist())) == 30 * len(index.videos)
    assert np.bincount(index.video_id[rows]).tolist() == [30] * len(index.videos)
    assert np.array_equal(rows, epoch_rows(index, 0, 1, 30, "none"))
    # a fresh draw
    assert not np.array_equal(np.sort(rows), np.sort(epoch_rows(index, 1, 1, 30, "none")))

    balanced = epoch_rows(index, 0, 1, 0, "sampler")
    present = index.class_counts() > 0
    share = index.class_counts(balanced)[present] / len(balanced)
    assert np.all(np.abs(share - 1 / present.sum()) < 0.05)  # uniform over the classes present
    # ... which the raw data is far from
    assert index.class_counts()[present].min() / len(index) < 0.06

    weights = class_weights(np.array([10, 0, 30, 60, 0, 0, 0, 0]))
    assert weights[1] == 0 and weights[0] == pytest.approx(6 * weights[3])
    assert weights[[0, 2, 3]].mean() == pytest.approx(1)

    # Two ranks split one epoch's order between them, the same order a single process sees.
    one = list(EpochSampler(index, 3, 30, "sampler"))
    two = [list(EpochSampler(index, 3, 30, "sampler", rank=r, world_size=2)) for r in range(2)]
    assert sorted(two[0] + two[1], key=lambda k: k[2]) == one


def test_training_items_are_seeded_augmentations(tiny_root):
    index = expr_frames(AffWild2(tiny_root), "Train_Set")
    ds = ExprFrames(index, 48, seed=5)
    item = ds[(7, 0, 3)]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8 and item["ok"]
    assert torch.equal(ExprFrames(index, 48, seed=5)[(7, 0, 3)]["image"], item["image"])
    assert not torch.equal(ds[(7, 1, 3)]["image"], item["image"])
    assert ds[7]["image"].shape == (3, 48, 48) and int(ds[7]["expr"]) == index.expr[7]


def test_colour_gray_and_erasing_are_seeded_and_do_what_they_say(tiny_root):
    index = expr_frames(AffWild2(tiny_root), "Train_Set")
    plain = ExprFrames(index, 48, seed=5)[(7, 0, 3)]["image"]
    jittered = ExprFrames(index, 48, seed=5, color_jitter=0.4)
    item = jittered[(7, 0, 3)]["image"]
    assert torch.equal(jittered[(7, 0, 3)]["image"], item) and not torch.equal(item, plain)
    gray = ExprFrames(index, 48, seed=5, grayscale=1.0)[(7, 0, 3)]["image"]
    assert (torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
            and not torch.equal(plain[0], plain[1]))

    # Random erasing replaces one box and leaves every other pixel as it was.
    erased = ExprFrames(index, 48, seed=5, erase=1.0)[(7, 0, 3)]["image"]
    changed = (erased != plain).any(dim=0)  # (48, 48)
    rows, cols = changed.any(dim=1).nonzero().ravel(), changed.any(dim=0).nonzero().ravel()
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert 0.02 * 48 * 48 * 0.9 <= box.numel() <= 48 * 48 / 3 * 1.1 and box.float().mean() > 0.9

    rng = np.random.default_rng(0)
    arr = np.zeros((40, 40, 3), np.uint8)
    hue = jitter_colour(Image.fromarray(np.full((8, 8, 3), (200, 40, 40), np.uint8)), 0.9, rng)
    assert (np.asarray(hue).std(axis=(0, 1)).max() < 1
            and tuple(np.asarray(hue)[0, 0]) != (200, 40, 40))
    erase_box(arr, rng)
    assert 0.02 * 1600 * 0.9 <= (arr.any(axis=2)).sum() <= 1600 / 3 * 1.1


def _batch(n=8):
    g = torch.Generator().manual_seed(0)
    return {"expr": torch.arange(n) % 8, "ok": torch.ones(n, dtype=torch.bool),
            "au": torch.randint(0, 2, (n, 12), generator=g), "au_valid": torch.arange(n) != 2,
            "va": torch.rand(n, 2, generator=g), "va_valid": torch.ones(n, dtype=torch.bool)}


def test_mixup_blends_images_and_targets_alike():
    torch.manual_seed(1)
    x, batch = torch.rand(8, 3, 16, 16), _batch()
    batch["ok"][1] = False
    mixed_x, mixed = ft_loss.mix_batch(x, batch, mixup=0.8, cutmix=0.0, num_classes=8)
    # x = lam * x + (1 - lam) * reversed x; recover lam from row 0 and check every row and target
    # with it.
    lam = float(mixed["expr_soft"][0, batch["expr"][0]])
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(mixed["expr_soft"].sum(dim=1), torch.ones(8))
    assert mixed["expr_soft"][0, batch["expr"][7]] == pytest.approx(1 - lam)
    assert torch.allclose(mixed["va"], lam * batch["va"] + (1 - lam) * batch["va"].flip(0))
    # row 6 mixes in row 1
    assert mixed["ok"].tolist() == [True, False, True, True, True, True, False, True]
    assert not mixed["au_valid"][2] and not mixed["au_valid"][5] and mixed["au_valid"][0]
    # the input batch is untouched
    assert batch["expr"].dtype == torch.int64 and "expr_soft" not in batch


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    torch.manual_seed(3)
    x = torch.arange(8.0)[:, None, None, None].expand(8, 3, 32, 32).contiguous()  # image i is all i
    for _ in range(5):
        mixed_x, mixed = ft_loss.mix_batch(x, _batch(), mixup=0.0, cutmix=1.0, num_classes=8)
        pasted = (mixed_x[0, 0] == 7).float().mean()  # image 0's partner is image 7
        assert ((mixed_x[0, 0] == 0) | (mixed_x[0, 0] == 7)).all()
        assert (mixed["expr_soft"][0, 7] == pytest.approx(float(pasted))
                and mixed["expr_soft"][0, 0] == pytest.approx(1 - float(pasted)))


def test_soft_one_hot_targets_give_the_hard_label_loss():
    logits, labels = torch.randn(6, 8), torch.tensor([0, 3, 7, 1, 1, 5])
    weight = torch.rand(8)
    onehot = torch.nn.functional.one_hot(labels, 8).float()
    for w in (weight, None):
        assert torch.allclose(ft_loss.expr_loss(logits, labels, w, 0.1),
                              ft_loss.expr_loss(logits, onehot, w, 0.1), atol=1e-6)


def test_augmented_run_resumes_like_an_uninterrupted_one(tiny_root, init_ckpt, tmp_path):
    aug = dict(color_jitter=0.3, grayscale=0.2, erase=0.25, mixup=0.8, cutmix=1.0, aux_au=True)
    whole = ft.finetune(run_config(tiny_root, tmp_path / "whole", init_ckpt, **aug), progress=False)
    cut = tmp_path / "cut"
    ft.finetune(run_config(tiny_root, cut, init_ckpt, **aug), stop_at_epoch=1, progress=False)
    resumed = ft.finetune(run_config(tiny_root, cut, init_ckpt, **aug), progress=False)
    a, b = (read_checkpoint(tmp_path / "whole" / "checkpoint-last.pt"),
            read_checkpoint(cut / "checkpoint-last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["last_f1"] == whole["last_f1"]
    plain = read_checkpoint(ft.finetune(
        run_config(tiny_root, tmp_path / "plain", init_ckpt, aux_au=True),
        progress=False)["last_checkpoint"])
    assert not torch.equal(plain["model"]["head.weight"], a["model"]["head.weight"])


def test_layer_wise_lr_decay_groups():
    model = ExprClassifier(build_encoder("mae_vit_tiny_patch16", **TINY_ENCODER), 8, num_aus=12)
    groups = ft.layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    where = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert where[id(named["encoder.patch_embed.proj.weight"])]["lr_scale"] == 0.5 ** 3
    assert where[id(named["encoder.cls_token"])]["weight_decay"] == 0.0
    assert where[id(named["encoder.blocks.0.attn.qkv.weight"])]["lr_scale"] == 0.5 ** 2
    assert where[id(named["encoder.blocks.1.mlp.fc1.weight"])]["weight_decay"] == 0.05
    assert where[id(named["encoder.blocks.1.mlp.fc1.bias"])]["weight_decay"] == 0.0
    assert (where[id(named["head.weight"])]["lr_scale"]
            == where[id(named["au_head.bias"])]["lr_scale"] == 1.0)
    assert id(named["encoder.pos_embed"]) not in where  # fixed sin-cos table
    probe = ExprClassifier(build_encoder("mae_vit_tiny_patch16", **TINY_ENCODER), 8,
                           linear_probe=True)
    # head weight, bias
    assert sum(len(g["params"]) for g in ft.layer_decay_groups(probe, 0.05, 0.5)) == 2


def test_labels_minus_one_never_reach_the_loss(tiny_root, init_ckpt, tmp_path, monkeypatch):
    ds = AffWild2(tiny_root)
    ann = ds.annotations("expr", "Train_Set")
    with_image_and_invalid = sum(
        int((~a.valid[ds.videos[v].frames[ds.videos[v].frames <= a.num_frames] - 1]).sum())
        for v, a in ann.items())
    assert with_image_and_invalid > 0  # the test data has frames the loss must not see

    seen = []
    real = ft_loss.expr_loss

    def spy(logits, labels, weight, smoothing):
        seen.append(labels.clone())
        return real(logits, labels, weight, smoothing)

    monkeypatch.setattr(ft_loss, "expr_loss", spy)
    ft.finetune(run_config(tiny_root, tmp_path / "run", init_ckpt, epochs=1, frames_per_video=0,
                           balance="weights", aux_au=True, aux_va=True), progress=False)
    labels = torch.cat(seen)
    assert len(labels) == (len(expr_frames(ds, "Train_Set")) // 16) * 16
    assert labels.min() >= 0 and labels.max() < 8
    steps = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if "step" in r]
    assert all(np.isfinite([r["loss_expr"], r["loss_au"], r["loss_va"]]).all() for r in steps)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # tiny has no Sadness in Train_Set: weight 0, not inf
    assert config["class_weights"][5] == 0


def test_resumed_run_equals_uninterrupted_run(tiny_root, init_ckpt, tmp_path):
    whole = ft.finetune(run_config(tiny_root, tmp_path / "whole", init_ckpt), progress=False)
    cut = tmp_path / "cut"
    assert ft.finetune(run_config(tiny_root, cut, init_ckpt), stop_at_epoch=1,
                       progress=False)["epochs_done"] == 1
    with open(cut / "log.jsonl", "a") as f:  # as if killed half-way through epoch 2
        f.write(json.dumps({"epoch": 2, "step": 9, "loss": 9.9, "lr": 0.0}) + "\n")
    resumed = ft.finetune(run_config(tiny_root, cut, init_ckpt, workers=2), progress=False)

    a, b = (read_checkpoint(tmp_path / "whole" / "checkpoint-last.pt"),
            read_checkpoint(cut / "checkpoint-last.pt"))
    assert (a["epoch"] == b["epoch"] == 2 and a["scheduler"] == b["scheduler"]
            and a["best"] == b["best"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (without_timing(read_jsonl(tmp_path / "whole" / "log.jsonl"))
            == without_timing(read_jsonl(cut / "log.jsonl")))
    assert resumed["best_f1"] == whole["best_f1"] and resumed["last_f1"] == whole["last_f1"]

    assert ft.finetune(run_config(tiny_root, cut, init_ckpt),
                       progress=False)["epochs_done"] == 2  # done
    with pytest.raises(InputError, match="label_smoothing: 0.1 -> 0.2"):
        ft.finetune(run_config(tiny_root, cut, init_ckpt, label_smoothing=0.2), progress=False)


def test_best_checkpoint_is_the_best_validation_epoch(tiny_root, init_ckpt, tmp_path,
                                                      monkeypatch):
    scores = iter([0.2, 0.5, 0.3])
    real = ft_eval.validation_f1

    def scripted(result, index):
        return {**real(result, index), "score": next(scores)}

    monkeypatch.setattr(ft, "validation_f1", scripted)
    run = tmp_path / "run"
    summary = ft.finetune(run_config(tiny_root, run, init_ckpt, epochs=3), progress=False)
    assert summary["best_f1"] == 0.5 and summary["best_epoch"] == 2 and summary["last_f1"] == 0.3
    best, last = read_checkpoint(run / "best.pt"), read_checkpoint(run / "checkpoint-last.pt")
    assert best["epoch"] == 2 and best["val"]["score"] == 0.5 and last["epoch"] == 3
    assert "optimizer" not in best and last["best"] == {"f1": 0.5, "epoch": 2}
    assert not torch.equal(best["model"]["head.weight"], last["model"]["head.weight"])
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "checkpoint-last.pt", "config.json",
                                                     "log.jsonl", "tensorboard"]


def test_checkpoint_loads_with_load_encoder_and_gives_the_same_features(tiny_root, init_ckpt,
                                                                        tmp_path):
    run = tmp_path / "run"
    ft.finetune(run_config(tiny_root, run, init_ckpt, epochs=1, pooling="mean"), progress=False)
    encoder, info = load_encoder(run / "best.pt")
    assert info.kind == "finetune" and info.pooling == "mean" and info.img_size == 32
    assert (info.model_config["embed_dim"] == 32 and not info.missing_keys
            and not info.unexpected_keys)
    classifier, _ = ft_model.load_classifier(run / "best.pt")
    images = torch.stack([
        ExprFrames(expr_frames(AffWild2(tiny_root), "Validation_Set"), 32)[i]["image"]
        for i in range(6)])
    x = normalize(images, info.pixel_mean, info.pixel_std)  # (B, C, H, W)
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(pool_tokens(encoder.forward_features(x), info.pooling),
                           classifier.forward_features(x))
    with pytest.raises(InputError, match="not a fine-tuned classifier"):
        ft_model.load_classifier(init_ckpt)


def test_linear_probe_trains_only_the_head(tiny_root, init_ckpt, tmp_path):
    run = tmp_path / "probe"
    ft.finetune(run_config(tiny_root, run, init_ckpt, epochs=1, linear_probe=True), progress=False)
    before, after = (read_checkpoint(init_ckpt)["encoder"],
                     read_checkpoint(run / "checkpoint-last.pt"))
    assert all(torch.equal(before[k], after["encoder"][k]) for k in before)
    # init std is 2e-5
    assert after["linear_probe"] and after["model"]["head.weight"].abs().max() > 1e-3
    assert "probe_norm.running_mean" in after["model"]


def test_lp_ft_starts_from_exactly_the_probes_predictions(tiny_root, init_ckpt, tmp_path):
    probe = tmp_path / "probe"
    ft.finetune(run_config(tiny_root, probe, init_ckpt, epochs=1, linear_probe=True, aux_au=True),
                progress=False)
    cfg = run_config(tiny_root, tmp_path / "lpft", init_ckpt, head_init=str(probe / "best.pt"),
                     aux_au=True)
    model, source = ft_model.build_classifier(cfg)
    probe_model, _ = ft_model.load_classifier(probe / "best.pt")
    # the fold is not trivial
    assert source["head_init_sha256"] and probe_model.probe_norm.running_var.std() > 0
    images = torch.stack([
        ExprFrames(expr_frames(AffWild2(tiny_root), "Validation_Set"), 32)[i]["image"]
        for i in range(6)])
    x = normalize(images, source["pixel_mean"], source["pixel_std"])
    with torch.no_grad():
        want, got = probe_model(x), model.eval()(x)
    for key in ("expr", "au"):
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    summary = ft.finetune(cfg, progress=False)  # and the run trains the encoder from there
    after = read_checkpoint(Path(summary["last_checkpoint"]))["encoder"]
    assert any(not torch.equal(v, after[k])
               for k, v in read_checkpoint(init_ckpt)["encoder"].items())


def test_lp_ft_refuses_a_head_that_does_not_fit(tiny_root, init_ckpt, tmp_path):
    probe, plain = tmp_path / "probe", tmp_path / "plain"
    ft.finetune(run_config(tiny_root, probe, init_ckpt, epochs=1, linear_probe=True),
                progress=False)
    ft.finetune(run_config(tiny_root, plain, init_ckpt, epochs=1), progress=False)
    other = make_init(tmp_path / "other.pt", seed=1)
    for init, head, message in ((init_ckpt, plain / "best.pt", "not a linear-probe run"),
                                (other, probe / "best.pt", "was trained on the encoder"),
                                (None, probe / "best.pt", "needs init")):
        with pytest.raises(InputError, match=message):
            ft.finetune(run_config(tiny_root, tmp_path / "r", init, head_init=str(head)),
                        progress=False)
    with pytest.raises(InputError, match="has no au_head"):
        ft_model.build_classifier(run_config(tiny_root, tmp_path / "r", init_ckpt,
                                             head_init=str(probe / "best.pt"), aux_au=True))
    assert not (tmp_path / "r").exists()
    # --init may also be the probe's own checkpoint (its encoder is the frozen one).
    ft_model.build_classifier(run_config(tiny_root, tmp_path / "r", probe / "best.pt",
                                         head_init=str(probe / "best.pt")))


def test_random_init_is_recorded_and_warned(tiny_root, tmp_path, capsys):
    summary = ft.finetune(run_config(tiny_root, tmp_path / "scratch", None, epochs=1,
                                     model="mae_vit_tiny_patch16", img_size=32, patch_size=8),
                          progress=False)
    assert "random weights" in capsys.readouterr().err and summary["epochs_done"] == 1
    config = json.loads((tmp_path / "scratch" / "config.json").read_text())
    assert (config["encoder"]["init_kind"] == "random"
            and config["encoder"]["model_config"]["patch_size"] == 8)


def test_fine_tune_fits_the_training_frames(tiny_root, init_ckpt, tmp_path):
    """The loop learns: after a short run, training frames (no augmentation) score far above
    chance."""
    run = tmp_path / "fit"
    ft.finetune(run_config(tiny_root, run, init_ckpt, epochs=6, frames_per_video=0, lr=2e-3,
                           drop_path_rate=0.0, layer_decay=1.0, label_smoothing=0.0,
                           crop_scale=(1.0, 1.0)), progress=False)
    classifier, info = ft_model.load_classifier(run / "checkpoint-last.pt")
    index = expr_frames(AffWild2(tiny_root), "Train_Set")
    loader = DataLoader(ExprFrames(index, 32), batch_size=128, sampler=list(range(len(index))))
    result = ft_eval.predict_expr(classifier, loader, torch.device("cpu"), False)
    score = expr_f1(result["pred"], index.expr[result["row"]])["score"]
    chance = uniform_guess_expr_f1(index.expr)
    assert score > 4 * chance, (score, chance)


def test_cli_refuses_bad_input_with_one_line(tiny_root, tmp_path):
    result = CliRunner().invoke(cli, ["finetune", "--data", str(tiny_root), "--init",
                                      str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r"),
                                      "--device", "cpu"])
    assert (result.exit_code == 2 and result.output.count("\n") == 1
            and "nope.pt does not exist" in result.output)
    result = CliRunner().invoke(cli, ["finetune", "--data", str(tmp_path / "none"), "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2 and "dataset folder not found" in result.output
    for option, value, message in (("--erase", "1.5", "--erase 1.5 is a probability"),
                                   ("--mixup", "-1", "is a Beta alpha"),
                                   ("--color-jitter", "1.2", "[0, 1)")):
        result = CliRunner().invoke(cli, ["finetune", "--data", str(tiny_root), "--out",
                                          str(tmp_path / "r"), option, value])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def many_people(tmp_path_factory) -> Path:
    """tiny has 4 training faces, too few for any model to generalise (a pixel-PCA logistic
    regression scores below chance on its validation set); 20 short training videos are enough for
    one."""
    root = tmp_path_factory.mktemp("synth") / "many"
    generate(root, SynthConfig(videos=32, frames_per_video=60, pairs=1, long_video_factor=1.5,
                               task_prob=1.0, test_fraction=0.1, val_fraction=0.3), progress=False)
    return root


@pytest.mark.slow
def test_short_fine_tune_scores_above_chance_on_validation(many_people, tmp_path):
    init = make_init(tmp_path / "init.pt", img_size=32, patch_size=4, embed_dim=64)
    summary = ft.finetune(run_config(many_people, tmp_path / "run", init, epochs=3,
                                     frames_per_video=0, val_frames_per_video=0, batch_size=32,
                                     lr=5e-4, layer_decay=1.0, balance="weights"), progress=False)
    chance = uniform_guess_expr_f1(expr_frames(AffWild2(many_people), "Validation_Set").expr)
    assert summary["best_f1"] > 1.5 * chance, (summary["best_f1"], chance)


@pytest.mark.slow
def test_two_gloo_processes(tiny_root, init_ckpt, tmp_path):
    out = tmp_path / "ddp"
    args = ["--data", str(tiny_root), "--init", str(init_ckpt), "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--frames-per-video", "16", "--val-frames-per-video", "10",
            "--workers", "0", "--device", "cpu", "--no-bf16"]
    summary, stdout = run_two_ranks("finetune", *args)
    assert summary["epochs_done"] == 1 and stdout.count('"epochs_done"') == 1  # rank 0 only
    config = json.loads((out / "config.json").read_text())
    assert (config["world_size"] == 2 and config["effective_batch"] == 16
            and config["steps_per_epoch"] == 4)
    val = read_checkpoint(out / "best.pt")["val"]
    assert val["frames"] == config["val_frames"]  # both ranks' predictions were gathered


def test_stage_comparison_runs_probe_fine_tune_and_scratch_alike(tiny_root, init_ckpt, tmp_path,
                                                                  capsys):
    from bench.compare_stages import main as compare_stages

    result = compare_stages(["--data", str(tiny_root), "--init", str(init_ckpt),
                             "--seeds", "0", "1", "--preset", "tiny", "--set", "batch_size=16",
                             "--set", "frames_per_video=24",  # workers: the default, none
                             "--settings", "fedcba", "--out", str(tmp_path), "--json"])
    assert json.loads(capsys.readouterr().out) == result
    assert (set(result["settings"]) == set("abcdef")
            and all(len(s["best_f1"]) == 2 for s in result["settings"].values()))
    configs = {k: json.loads((tmp_path / f"{k}-seed1" / "config.json").read_text())
               for k in "abcdef"}
    assert configs["d"]["encoder"]["head_init"] == str(tmp_path / "a-seed1" / "best.pt")
    assert configs["f"]["encoder"]["head_init"] == str(tmp_path / "e-seed1" / "best.pt")
    assert configs["d"]["encoder"]["init_sha256"] == configs["b"]["encoder"]["init_sha256"]
    assert [k for k in "abcdef" if configs[k]["finetune"]["linear_probe"]] == ["a", "e"]
    assert ({configs[k]["finetune"]["lr"] for k in "ae"} == {5e-3}
            and configs["b"]["finetune"]["lr"] == 5e-4)
    assert (configs["a"]["encoder"]["init_sha256"] == configs["b"]["encoder"]["init_sha256"]
            is not None)
    assert (configs["c"]["encoder"]["init_sha256"]
            not in (None, configs["b"]["encoder"]["init_sha256"]))
    assert (configs["e"]["encoder"]["init_sha256"] == configs["f"]["encoder"]["init_sha256"]
            == configs["c"]["encoder"]["init_sha256"])
    assert configs["c"]["encoder"]["model_config"] == configs["b"]["encoder"]["model_config"]
    b, c = (read_checkpoint(tmp_path / "b-seed1" / "best.pt"),
            read_checkpoint(tmp_path / "c-seed1" / "best.pt"))
    assert not torch.equal(b["encoder"]["patch_embed.proj.weight"],
                           c["encoder"]["patch_embed.proj.weight"])
    assert ({c["finetune"]["epochs"] for c in configs.values()} == {1}
            and configs["c"]["finetune"]["seed"] == 1)
    assert 0 < result["uniform_guess_f1"] < 0.2
    boot = result["bootstrap"]
    assert boot["videos"] == result["validation_videos"] and boot["resamples"] == 2000
    # re-predicted from best.pt: the runs' own validation F1
    for key, row in result["settings"].items():
        assert boot["settings"][key]["mean"] == pytest.approx(row["mean"], abs=2e-4)
        low, high = boot["settings"][key]["ci95"]
        assert 0 <= low <= high <= 1
    assert boot["settings"]["guess"]["mean"] == pytest.approx(result["uniform_guess_f1"], abs=1e-4)
    pairs = {c["pair"]: c for c in boot["contrasts"]}
    assert (set(pairs)
            == {"b-c", "d-f", "d-c", "a-e", "b-a", "d-a"} | {f"{k}-guess" for k in "abcdef"})
    assert pairs["b-c"]["diff"] == pytest.approx(
        boot["settings"]["b"]["mean"] - boot["settings"]["c"]["mean"], abs=2e-4)


def test_stage_comparison_refuses_bad_input_with_one_line(tiny_root, tmp_path, capsys):
    from bench.compare_stages import main as compare_stages

    with pytest.raises(SystemExit) as exit_info:
        compare_stages(["--data", str(tiny_root), "--init", str(tmp_path / "nope.pt"), "--out",
                        str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "nope.pt does not exist" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("settings", ["bd", "cf", "ax"])
def test_stage_comparison_refuses_an_lp_ft_without_its_probe(tiny_root, init_ckpt, tmp_path,
                                                             settings, capsys):
    from bench.compare_stages import main as compare_stages

    with pytest.raises(SystemExit) as exit_info:
        compare_stages(["--data", str(tiny_root), "--init", str(init_ckpt), "--settings", settings,
                        "--out", str(tmp_path / "r")])
    assert (exit_info.value.code == 2
            and "d starts from a's head, f from e's" in capsys.readouterr().err)
    assert not (tmp_path / "r").exists()
