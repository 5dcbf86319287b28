"""MAE pretraining: images found and decoded, the schedule, a resumed run equals an uninterrupted
one, unreadable images reported once and skipped, the loss falls on synthetic faces, two gloo
ranks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from pipeline.checkpoint import load_encoder, read_checkpoint, save_checkpoint
from pipeline.configs import PretrainConfig
from pipeline.data.images import decode_image
from pipeline.data.pretrain_images import PretrainImages, find_images
from pipeline.engine import lr_at
from pipeline.errors import InputError
from pipeline.models.encoder import normalize
from pipeline.pretrain import pretrain
from pipeline.runs import check_resumable, check_run_kind, read_jsonl
from tests.conftest import run_two_ranks

# Tiny encoder at 32 px with 8 px patches (16 patches, 4 visible) and a one-block decoder: seconds
# per run.
FAST = dict(model="mae_vit_tiny_patch16", img_size=32, patch_size=8, epochs=2, batch_size=4,
            accum_iter=2, warmup_epochs=1, decoder_embed_dim=32, decoder_depth=1,
            decoder_num_heads=2, max_images=24, workers=0, device="cpu", bf16=False,
            recon_images=3, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces(tiny_root) -> Path:
    return tiny_root / "cropped_aligned"


def run_config(images, out, **kw) -> PretrainConfig:
    return PretrainConfig(images=(str(images),), out=str(out), **{**FAST, **kw})


def without_timing(records):
    timing = ("seconds", "img_per_s", "first_batch_s", "img_per_s_after_first_batch")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_find_images_recursive_and_refusals(tmp_path):
    (tmp_path / "a" / "v1").mkdir(parents=True)
    (tmp_path / "a" / "v1" / "00001.jpg").write_bytes(b"x")
    (tmp_path / "a" / "00002.PNG").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert [p.name for p in find_images([tmp_path / "a"])] == ["00002.PNG", "00001.jpg"]
    with pytest.raises(InputError, match=f"{tmp_path / 'missing'} does not exist"):
        find_images([tmp_path / "missing"])
    with pytest.raises(InputError, match=f"no .jpg/.jpeg/.png image under {tmp_path / 'empty'}"):
        find_images([tmp_path / "a", tmp_path / "empty"])


def test_cli_refuses_a_missing_folder_with_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["pretrain", "--images", str(tmp_path / "nope"), "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "nope does not exist" in result.output


def test_augmentation_is_seeded_per_sample_and_epoch(faces):
    paths = find_images([faces])[:4]
    ds = PretrainImages(paths, 32, seed=3)
    first, bad = ds[1]
    assert first.dtype == torch.uint8 and first.shape == (3, 32, 32) and bad == -1
    assert torch.equal(PretrainImages(paths, 32, seed=3)[1][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first)
    assert decode_image(paths[0], 48).shape == (3, 48, 48)

    # A crop of the whole area is the plain resize, maybe flipped.
    whole = PretrainImages(paths, 32, seed=3, crop_scale=(1.0, 1.0))
    for i in range(4):
        plain = decode_image(paths[i], 32)
        assert torch.equal(whole[i][0], plain) or torch.equal(whole[i][0], plain.flip(2))


def test_cli_refuses_a_bad_crop_scale_or_image_count(faces, tmp_path):
    result = CliRunner().invoke(cli, ["pretrain", "--images", str(faces), "--out",
                                      str(tmp_path / "r"), "--crop-scale", "0.6", "0.3"])
    assert result.exit_code == 2 and "--crop-scale 0.6 0.3" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(cli, ["pretrain", "--images", str(faces), "--out",
                                      str(tmp_path / "r"), "--max-images", "0"])
    assert result.exit_code == 2 and "--max-images 0: use a positive number" in result.output
    assert not (tmp_path / "r").exists()


def test_lr_schedule_warms_up_then_follows_a_cosine():
    assert lr_at(0, 1.0, 0.1, 10, 110) == 0.0
    assert lr_at(5, 1.0, 0.1, 10, 110) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 0.1, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 0.1, 10, 110) == pytest.approx(0.55)
    assert lr_at(110, 1.0, 0.1, 10, 110) == pytest.approx(0.1)


def test_resumed_run_equals_uninterrupted_run(faces, tmp_path, capsys):
    whole = pretrain(run_config(faces, tmp_path / "whole"), progress=False)
    cut = tmp_path / "cut"
    assert pretrain(run_config(faces, cut), stop_at_epoch=1, progress=False)["epochs_done"] == 1
    with open(cut / "log.jsonl", "a") as f:  # as if killed half-way through epoch 2
        f.write(json.dumps({"epoch": 2, "step": 4, "loss": 9.9, "lr": 0.0}) + "\n")
    capsys.readouterr()
    # said without the bar too (--json)
    resumed = pretrain(run_config(faces, cut, workers=2), progress=False)  # workers may change
    assert f"pretrain: resuming {cut / 'checkpoint-last.pt'} after epoch 1 of 2" in (
        capsys.readouterr().err)

    a, b = (read_checkpoint(tmp_path / "whole" / "checkpoint-last.pt"),
            read_checkpoint(cut / "checkpoint-last.pt"))
    assert a["epoch"] == b["epoch"] == 2 and a["scheduler"] == b["scheduler"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(),
                      strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (without_timing(read_jsonl(tmp_path / "whole" / "log.jsonl"))
            == without_timing(read_jsonl(cut / "log.jsonl")))
    assert resumed["loss_last_epoch"] == whole["loss_last_epoch"]

    # What a run directory holds: resolved config, a recon picture per epoch, a loadable encoder.
    config = json.loads((cut / "config.json").read_text())
    assert config["effective_batch"] == 8 and config["peak_lr"] == pytest.approx(1.25e-4 * 8 / 256)
    assert (config["model_config"]["patch_size"] == 8
            and config["pixel_mean"] == [0.485, 0.456, 0.406])
    # resolved (one_thread)
    assert (config["pretrain"]["workers"], config["pretrain"]["threads"]) == (2, 1)
    # absolute, so that --config RUN/config.json resumes this run from any folder
    assert config["pretrain"]["out"] == str(cut.resolve())
    pngs = sorted(p.name for p in (cut / "recon").iterdir())
    assert pngs == ["epoch-001.png", "epoch-002.png"]
    # a title row, 3 rows of 32 px tiles, the norm-pix note wrapped to three lines of 12 px
    assert Image.open(cut / "recon" / "epoch-002.png").size == (4 * 34 - 2, 12 + 3 * 34 - 2 + 36)
    encoder, info = load_encoder(cut / "checkpoint-last.pt")
    assert info.kind == "mae" and info.img_size == 32
    assert all(torch.equal(v, a["encoder"][k]) for k, v in encoder.state_dict().items())

    # Finished: a rerun does nothing; options that change the result refuse to resume.
    assert pretrain(run_config(faces, cut), progress=False)["epochs_done"] == 2
    assert "has trained its 2 epochs already; give epochs above 2 (--epochs) to go on" in (
        capsys.readouterr().err)
    with pytest.raises(InputError, match="mask_ratio: 0.75 -> 0.5"):
        pretrain(run_config(faces, cut, mask_ratio=0.5), progress=False)


def test_a_finished_run_is_extended_over_a_longer_schedule(faces, tmp_path, capsys):
    """MAE users train on (400 -> 800 -> 1600 epochs): a larger epochs continues a finished run, the
    cosine is stretched over the new length, and the change is recorded; fewer epochs than done is
    refused."""
    run = tmp_path / "run"
    pretrain(run_config(faces, run, epochs=1), progress=False)
    first = read_checkpoint(run / "checkpoint-last.pt")
    steps = first["scheduler"]["step"]
    assert first["scheduler"]["total_steps"] == steps  # one epoch's schedule, finished

    capsys.readouterr()
    summary = pretrain(run_config(faces, run, epochs=2), progress=False)
    assert ("after epoch 1 of 2 (epochs 1 -> 2: the learning-rate schedule is stretched to 2)"
            in capsys.readouterr().err)
    last = read_checkpoint(run / "checkpoint-last.pt")
    assert summary["epochs_done"] == 2 and last["epoch"] == 2 and last["epochs"] == 2
    assert last["scheduler"]["step"] == 2 * steps and last["scheduler"]["total_steps"] == 2 * steps
    change = {"epochs": 1, "changed_to": 2, "at_epoch": 1}
    assert last["epochs_history"] == [change]
    assert json.loads((run / "config.json").read_text())["epochs_history"] == [change]
    records = read_jsonl(run / "log.jsonl")
    assert {"epoch": 1, "event": "epochs changed", **change} in records
    # the second epoch's lr follows the 2-epoch cosine: above the floor the 1-epoch
    # schedule had reached
    second = [r for r in records if r.get("step", 0) > steps]
    assert second and all(r["lr"] > 0 for r in second)
    assert [r["epoch"] for r in records if "seconds" in r] == [1, 2]

    with pytest.raises(InputError, match="has trained 2 epochs already; give 2 to keep it as it "
                                         "is, more to go on"):
        pretrain(run_config(faces, run, epochs=1), progress=False)
    # a run stopped before its planned end: its plan is named
    pretrain(run_config(faces, run, epochs=4), stop_at_epoch=3, progress=False)
    with pytest.raises(InputError, match="has trained 3 epochs already; give 4 to go on as "
                                         "planned, or another count above 3"):
        pretrain(run_config(faces, run, epochs=2), progress=False)


def test_tensorboard_gets_the_logs_scalars_and_the_reconstruction(faces, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    pretrain(run_config(faces, run), progress=False)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = read_jsonl(run / "log.jsonl")
    steps = [r for r in records if "step" in r]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in steps]
    assert ([e.value for e in events.Scalars("train/loss")]
            == pytest.approx([r["loss"] for r in steps]))
    assert [e.step for e in events.Scalars("epoch/loss")] == [1, 2]
    assert [e.step for e in events.Images("reconstruction")] == [1, 2]
    # a rerun of the finished run writes no event, nor an empty event file
    files = sorted((run / "tensorboard").iterdir())
    pretrain(run_config(faces, run), progress=False)
    assert sorted((run / "tensorboard").iterdir()) == files
    assert not (tmp_path / "off" / "tensorboard").exists() and pretrain(
        run_config(faces, tmp_path / "off", epochs=1, tensorboard=False),
        progress=False)["epochs_done"] == 1
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_unreadable_images_are_reported_once_and_skipped(faces, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = find_images([faces])[:10]
    for p in good:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[0].read_bytes()[:100])
    summary = pretrain(run_config(folder, tmp_path / "run", max_images=None), progress=False)
    err = capsys.readouterr().err
    assert err.count("empty.jpg") == 1 and err.count("truncated.jpg") == 1
    assert summary["unreadable"] == 2 and summary["epochs_done"] == 2
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert [Path(p).name for p in ckpt["unreadable"]] == ["empty.jpg", "truncated.jpg"]


def test_too_few_images_for_one_step(faces, tmp_path):
    with pytest.raises(InputError, match="lower batch_size or accum_iter"):
        pretrain(run_config(faces, tmp_path / "r", max_images=6, batch_size=4, accum_iter=2),
                 progress=False)


@pytest.mark.slow
def test_loss_falls_on_synthetic_faces(faces, tmp_path):
    summary = pretrain(run_config(faces, tmp_path / "run", epochs=4, batch_size=16, accum_iter=1,
                                  lr=1.5e-3, decoder_embed_dim=64, decoder_num_heads=4,
                                  max_images=96), progress=False)
    # Per-patch normalised targets: predicting each patch's mean scores 1.0.
    end = summary["loss_last_epoch"]
    assert end < 0.95 and end < 0.75 * summary["loss_first_step"]


@pytest.mark.slow
def test_two_gloo_processes(faces, tmp_path):
    out = tmp_path / "ddp"
    args = ["--images", str(faces), "--out", str(out), "--model", "mae_vit_tiny_patch16",
            "--img-size", "32", "--patch-size", "8", "--epochs", "1", "--batch-size", "4",
            "--accum-iter", "1", "--warmup-epochs", "1", "--decoder-embed-dim", "32",
            "--decoder-depth", "1", "--decoder-num-heads", "2", "--max-images", "32",
            "--workers", "0", "--device", "cpu", "--no-bf16"]
    summary, stdout = run_two_ranks("pretrain", *args)
    assert summary["epochs_done"] == 1 and stdout.count('"epochs_done"') == 1  # rank 0 only
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-last.pt", "config.json",
                                                     "log.jsonl", "recon", "tensorboard"]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["effective_batch"] == 8
    # 32 images / 8 per step
    assert read_checkpoint(out / "checkpoint-last.pt")["scheduler"]["step"] == 4
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl") if "seconds" in r] == [1]


def test_loss_map_reads_where_the_decoder_draws_detail(faces, tmp_path, capsys):
    from bench.mae_loss_map import load_mae, loss_map
    from bench.mae_loss_map import main as loss_map_main

    run = tmp_path / "r"
    pretrain(run_config(faces, run, epochs=1), progress=False)
    ckpt_path = run / "checkpoint-last.pt"
    result = loss_map_main(["--ckpt", str(ckpt_path), "--images", str(faces), "--frames", "16",
                            "--json"])
    assert json.loads(capsys.readouterr().out) == result
    grid = np.array(result["grid"])
    assert grid.shape == (4, 4) and np.isfinite(grid).all() and (grid > 0).all()
    assert result["frames"] == 16 and result["norm_pix_loss"] and result["epoch"] == 1

    # A decoder that predicts 0 draws every hidden patch flat at its own mean: norm-pix loss
    # (P - 1) / P everywhere, P = 8 * 8 * 3 values a patch (the target divides by the unbiased
    # variance).
    model, ckpt = load_mae(ckpt_path)
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    images = torch.stack([decode_image(p, 32) for p in find_images([faces])[:16]])
    flat = loss_map(model, normalize(images, ckpt["pixel_mean"], ckpt["pixel_std"]), repeats=3)
    assert flat == pytest.approx(np.full((4, 4), 191 / 192), abs=1e-4)

    encoder_only = {k: v for k, v in read_checkpoint(ckpt_path).items() if k != "model"}
    save_checkpoint(encoder_only, tmp_path / "encoder.pt")
    with pytest.raises(SystemExit) as exit_info:
        loss_map_main(["--ckpt", str(tmp_path / "encoder.pt"), "--images", str(faces)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "holds no MAE decoder" in err


def test_resuming_takes_a_moved_file_and_names_the_process_count(tmp_path):
    saved = {"init": "/runs/mae/last.pt", "init_sha256": "ab", "lr": 1e-3, "world_size": 2}
    check_resumable(saved, {**saved, "init": "/elsewhere/last.pt"}, tmp_path)  # moved, same bytes
    with pytest.raises(InputError, match="init: '/runs/mae/last.pt' -> '/elsewhere/last.pt'"):
        check_resumable(saved, {**saved, "init": "/elsewhere/last.pt", "init_sha256": "cd"},
                        tmp_path)
    with pytest.raises(InputError, match="run it under torchrun with 2 processes in all, as it "
                                         "was made .e.g. --nproc_per_node 2 on one machine."):
        check_resumable(saved, {**saved, "world_size": 1}, tmp_path)
    with pytest.raises(InputError, match="run it without torchrun, as it was made"):
        check_resumable({**saved, "world_size": 1}, saved, tmp_path)


def test_an_out_folder_of_no_run_is_refused_only_where_the_run_would_mix_in(tmp_path):
    for held, refused in [("train.log", None), ("job.sh", None), ("zarr.json", "a feature store"),
                          ("best.pt", "best.pt")]:
        folder = tmp_path / held.replace(".", "_")
        folder.mkdir()
        (folder / held).write_text("someone's")
        if refused is None:
            check_run_kind(folder, "pretrain")  # a log tee'd into the run folder stays beside it
        else:
            with pytest.raises(InputError, match=f"holds {refused} and no pretrain run"):
                check_run_kind(folder, "pretrain")
