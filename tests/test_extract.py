"""Extraction: stored values equal the encoder's own output, resume equals an uninterrupted run,
corrupt images are reported and marked absent, a store from another checkpoint is refused."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

import features
from cli import cli
from pipeline.checkpoint import encoder_checkpoint, save_checkpoint
from pipeline.data.affwild2 import AffWild2
from pipeline.data.images import decode_image
from pipeline.errors import InputError
from pipeline.extract import ExtractConfig, balance, extract, store_is_current
from pipeline.models.encoder import normalize, pool_tokens
from pipeline.models.mae import build_encoder
from pipeline.runs import sha256_file
from pipeline.store_feeder import StoreFeeder
from tests.conftest import run_two_ranks, write_annotation, write_images

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)
CPU32 = dict(device="cpu", bf16=False, workers=0, batch_size=4, dtype="float32")


def make_ckpt(path, seed=0, **extra):
    torch.manual_seed(seed)
    encoder = build_encoder("mae_vit_tiny_patch16", **TINY)
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY, encoder, 32, **extra),
                    path)
    return encoder


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "enc.pt"
    return path, make_ckpt(path)


def read_all(store_path):
    with features.open_store(store_path) as store:
        return {v: store.read(v) for v in store.videos()}


def spy_on_feeder(monkeypatch) -> list[bool]:
    """Where each StoreFeeder of the test writes: True on a thread of its own, False in turn."""
    modes, real_init = [], StoreFeeder.__init__

    def init(self, *args, background=True):
        modes.append(background)
        real_init(self, *args, background=background)

    monkeypatch.setattr(StoreFeeder, "__init__", init)
    return modes


# 0 workers: the main process decodes and writes in turn with the encoder (a CPU of < 4 cores);
# 1 worker: a decode worker process and a writer thread (as on CUDA)
@pytest.mark.parametrize("workers", [0, 1])
def test_store_holds_the_encoders_output(mini_root, ckpt, tmp_path, monkeypatch, workers):
    path, encoder = ckpt
    store_path = tmp_path / "f.zarr"
    modes = spy_on_feeder(monkeypatch)
    result = extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                                   **{**CPU32, "workers": workers}, pooling="mean"),
                     progress=False)
    assert result["frames"] == 7 and result["videos"] == 2
    assert modes == [workers > 0]
    ds = AffWild2(mini_root)
    store = features.open_store(store_path)
    assert store.videos() == ["105", "vid_left"]
    feats, present = store.read("vid_left")
    assert feats.shape == (6, 32)  # T from the VA annotation, longer than the last image (5)
    assert present.tolist() == [True, True, False, True, True, False]
    assert not feats[~present].any()  # absent rows are zeros
    video = ds.videos["vid_left"]
    images = torch.stack([decode_image(video.image_path(k), 32) for k in video.frames])
    with torch.inference_mode():
        expected = pool_tokens(encoder.eval().forward_features(normalize(images)), "mean").numpy()
    np.testing.assert_allclose(feats[present], expected, rtol=1e-5, atol=1e-5)
    attrs = store.attrs
    assert (attrs["encoder"] == "mae_vit_tiny_patch16" and attrs["pooling"] == "mean"
            and attrs["feature_dim"] == 32)
    # a collaborator opens it with plain zarr
    group = zarr.open_group(str(store_path), mode="r")
    np.testing.assert_array_equal(group["videos/vid_left/features"][:], feats)


def test_float16_and_hdf5_match_zarr(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(tmp_path / "a.zarr"),
                          **CPU32), progress=False)
    config = ExtractConfig(**{**CPU32, "dtype": "float16"})
    extract(replace(config, data=str(mini_root), ckpt=str(path), store=str(tmp_path / "b.h5")),
            progress=False)
    a, b = read_all(tmp_path / "a.zarr"), read_all(tmp_path / "b.h5")
    for video in a:
        assert b[video][0].dtype == np.float16
        np.testing.assert_allclose(b[video][0].astype(np.float32), a[video][0], rtol=1e-3,
                                   atol=1e-3)
        np.testing.assert_array_equal(b[video][1], a[video][1])


@pytest.mark.parametrize("workers", [0, 1])  # written in turn, and by the writer thread
def test_resume_after_a_crash_equals_an_uninterrupted_run(mini_root, ckpt, tmp_path, monkeypatch,
                                                          workers):
    path, _ = ckpt
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(tmp_path / "whole.zarr"),
                          **CPU32), progress=False)

    calls = {"n": 0}
    real_put = StoreFeeder.put

    def crashing_put(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # the first video is complete, the second half-written
            raise KeyboardInterrupt
        real_put(self, *args)

    monkeypatch.setattr(StoreFeeder, "put", crashing_put)
    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                              store=str(tmp_path / "resumed.zarr"),
                              **{**CPU32, "workers": workers}), progress=False)
    monkeypatch.setattr(StoreFeeder, "put", real_put)
    assert features.create_store(
        tmp_path / "resumed.zarr", features.open_store(tmp_path / "whole.zarr").attrs,
    ).completed() == {"105"}
    result = extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                                   store=str(tmp_path / "resumed.zarr"), **CPU32), progress=False)
    assert result["skipped"] == 1 and result["extracted"] == 1
    whole, resumed = read_all(tmp_path / "whole.zarr"), read_all(tmp_path / "resumed.zarr")
    assert whole.keys() == resumed.keys()
    for video in whole:
        np.testing.assert_array_equal(resumed[video][0], whole[video][0])
        np.testing.assert_array_equal(resumed[video][1], whole[video][1])


def test_an_interrupted_hdf5_extraction_leaves_its_file_closed(mini_root, ckpt, tmp_path,
                                                                monkeypatch):
    path, _ = ckpt
    store_path = tmp_path / "f.h5"
    real_put, calls = StoreFeeder.put, {"n": 0}

    def interrupted_put(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_put(self, *args)

    monkeypatch.setattr(StoreFeeder, "put", interrupted_put)
    with pytest.raises(KeyboardInterrupt) as caught:
        extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32),
                progress=False)
    # the traceback, kept here as a notebook keeps it, holds extract's frame and its writer; another
    # process opens the file all the same (HDF5 locks a file open for writing)
    assert caught.traceback
    read = subprocess.run(
        [sys.executable, "-c", "import features, sys; s = features.open_store(sys.argv[1]); "
         "print(s.videos(), s.incomplete_videos())", str(store_path)],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert read.returncode == 0, read.stderr[-500:]
    assert read.stdout.split() == ["[]", "['105']"]


def test_a_failure_while_opening_an_hdf5_store_leaves_it_closed(mini_root, ckpt, tmp_path,
                                                                 monkeypatch):
    path, _ = ckpt
    store_path = tmp_path / "f.h5"
    config = ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32)
    extract(config, progress=False)

    def unreadable(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(features.StoreWriter, "completed", unreadable)
    with pytest.raises(OSError, match="Input/output error") as caught:
        extract(config, progress=False)
    assert caught.traceback  # kept, as a notebook keeps it
    read = subprocess.run([sys.executable, "-c", "import features, sys; "
                           "print(features.open_store(sys.argv[1]).videos())", str(store_path)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert read.returncode == 0 and read.stdout.split() == ["['105',", "'vid_left']"], read.stderr


def test_corrupt_image_is_reported_and_marked_absent(mini_root, ckpt, tmp_path, capsys):
    path, _ = ckpt
    bad = mini_root / "cropped_aligned" / "vid_left" / "00002.jpg"
    bad.write_bytes(b"not a jpeg")
    result = extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                                   store=str(tmp_path / "f.zarr"), **CPU32), progress=False)
    assert result["unreadable"] == [str(bad)] and result["unreadable_frames"] == 1
    out, err = capsys.readouterr()  # the warning on stderr: stdout is left to --json
    assert out == "" and f"warning: unreadable image {bad}" in err
    _, present = features.open_store(tmp_path / "f.zarr").read("vid_left")
    assert present.tolist() == [True, False, False, True, True, False]


def test_refuses_a_store_of_another_checkpoint(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    store_path = tmp_path / "f.zarr"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                          **CPU32), progress=False)
    other = tmp_path / "other.pt"
    make_ckpt(other, seed=1)
    args = ["extract", "--data", str(mini_root), "--ckpt", str(other), "--store", str(store_path),
            "--device", "cpu", "--workers", "0", "--dtype", "float32", "--no-bf16", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "checkpoint_sha256" in result.output
    result = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert features.open_store(store_path).attrs["checkpoint_sha256"] == sha256_file(other)
    assert features.open_store(store_path).attrs["compute_dtype"] == "float32"
    # the same checkpoint under bf16 autocast computes other values: not resumed into this store
    bf16 = [a for a in args if a != "--no-bf16"]
    result = CliRunner().invoke(cli, bf16)
    assert result.exit_code == 2
    assert "compute_dtype (store 'float32', given 'bfloat16')" in result.output


def test_balance_splits_frames_evenly():
    lengths = {"a": 1000, "b": 600, "c": 500, "d": 300, "e": 100}
    parts = balance(list(lengths), lengths, 2)
    loads = sorted(sum(lengths[v] for v in p) for p in parts)
    assert loads == [1200, 1300]  # greedy longest-first: a+d | b+c+e
    assert sorted(v for p in parts for v in p) == sorted(lengths)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_two_ranks_write_one_store(mini_root, ckpt, tmp_path, suffix):
    path, _ = ckpt
    single = tmp_path / f"single{suffix}"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(single),
                          **CPU32), progress=False)
    store_path = tmp_path / f"two{suffix}"
    summary, _ = run_two_ranks("extract", "--data", str(mini_root), "--ckpt", str(path), "--store",
                               str(store_path), "--device", "cpu", "--workers", "0", "--batch-size",
                               "4", "--dtype", "float32", "--no-bf16")
    # rank 0 prints the summary of both ranks
    assert summary["ranks"] == 2 and summary["frames"] == 7 and summary["extracted"] == 2
    assert features.verify_store(store_path, {"105": 3, "vid_left": 6}) == []
    two, one = read_all(store_path), read_all(single)
    assert two.keys() == one.keys()
    for video in one:
        np.testing.assert_allclose(two[video][0], one[video][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(two[video][1], one[video][1])
    if suffix == ".h5":
        assert not list(tmp_path.glob("two.part*"))  # parts merged and removed


def test_video_folder_without_images_is_skipped(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    (mini_root / "cropped_aligned" / "empty_video").mkdir()
    result = extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                                   store=str(tmp_path / "f.zarr"), **CPU32), progress=False)
    assert result["videos"] == 2
    assert features.open_store(tmp_path / "f.zarr").videos() == ["105", "vid_left"]


@pytest.mark.parametrize("workers", [0, 1])  # written in turn, and by the writer thread
def test_a_failing_final_write_raises_instead_of_hanging(mini_root, ckpt, tmp_path, monkeypatch,
                                                         workers):
    import threading

    path, _ = ckpt
    modes = spy_on_feeder(monkeypatch)

    def full_disk(self, **extra):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.VideoWriter, "finish", full_disk)
    outcome = {}

    def run():
        try:
            extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                                  store=str(tmp_path / "f.zarr"), **{**CPU32, "workers": workers}),
                    progress=False)
        except OSError as err:
            outcome["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "extraction hung after a failed write"
    assert "No space left" in str(outcome["error"]) and modes == [workers > 0]


def test_frames_named_with_another_width_are_read(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(tmp_path / "five.zarr"),
                          **CPU32), progress=False)
    for folder in (mini_root / "cropped_aligned" / "vid_left",
                   mini_root / "cropped_aligned_new_50_vids" / "105"):
        for image in folder.iterdir():
            image.rename(folder / f"{int(image.stem):06d}.jpg")  # ffmpeg's %06d
    result = extract(ExtractConfig(data=str(mini_root), ckpt=str(path),
                                   store=str(tmp_path / "six.zarr"), **CPU32), progress=False)
    assert result["unreadable"] == [] and result["frames"] == 7
    five, six = read_all(tmp_path / "five.zarr"), read_all(tmp_path / "six.zarr")
    for video in five:
        np.testing.assert_array_equal(six[video][0], five[video][0])
        np.testing.assert_array_equal(six[video][1], five[video][1])


def add_imageless_test_video(root, name="noface", frames=7):
    """A VA test list and example file naming ``105`` and ``name``, a video without any image."""
    lists = root / "names_of_videos_in_each_test_set"
    lists.mkdir(exist_ok=True)
    (lists / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").write_text(
        f"105\n{name}\n")
    rows = ([f"105/{k:05d}.jpg,0,0" for k in (1, 2, 3)]
            + [f"{name}/{k:05d}.jpg,0,0" for k in range(1, frames + 1)])
    example = root / "CVPR_6th_ABAW_VA_test_set_example.txt"
    example.write_text("image_location,valence,arousal\n" + "\n".join(rows) + "\n")
    return example


@pytest.mark.parametrize("splits", [("all",), ("test",)])
def test_listed_video_without_images_is_stored_all_absent(mini_root, ckpt, tmp_path, capsys,
                                                           splits):
    path, _ = ckpt
    add_imageless_test_video(mini_root)
    store_path = tmp_path / "f.zarr"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32,
                          splits=splits), progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "noface" in line]
    assert len(warnings) == 1 and "noface (7 frames)" in warnings[0] and "all-absent" in warnings[0]
    store = features.open_store(store_path)
    feats, present = store.read("noface", fill="nearest")
    assert feats.shape == (7, 32) and not present.any() and not feats.any()
    ds = AffWild2(mini_root)
    expected = {v: ds.num_frames(v) for v in ds.listed_videos()}
    if splits == ("all",):
        assert expected == {"105": 3, "noface": 7, "vid_left": 6}
        assert features.verify_store(store_path, expected) == []


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_rerun_redoes_complete_videos_that_no_longer_fit_the_data(mini_root, ckpt, tmp_path,
                                                                    capsys, suffix):
    path, _ = ckpt
    add_imageless_test_video(mini_root)
    store_path = tmp_path / f"f{suffix}"
    config = ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32,
                           splits=("all",))
    extract(config, progress=False)
    first = read_all(store_path)
    # 105's VA annotation grows from 3 to 5 rows; noface's crops are made after the extraction
    write_annotation(mini_root, "VA_Estimation_Challenge", "Validation_Set", "105", "va",
                     ["0.1,0.1"] * 5)
    write_images(mini_root, "noface", [1, 2, 3])
    capsys.readouterr()
    result = extract(config, progress=False)
    assert result["extracted"] == 2 and result["skipped"] == 1  # vid_left still fits
    said = [line for line in capsys.readouterr().err.splitlines() if "extracted again" in line]
    assert len(said) == 1 and "2 complete video(s)" in said[0]
    assert "105: 3 rows stored, 5 frames now" in said[0]
    assert "noface: 3 image(s) now for rows stored without a face" in said[0]
    with features.open_store(store_path) as store:
        assert store.num_frames("105") == 5 and store.num_present("105") == 3
        # a video with images is as long as its last image or annotation (a test video's example
        # rows past its last face are filled by predict)
        assert store.num_frames("noface") == 3 and store.num_present("noface") == 3
        np.testing.assert_array_equal(store.read("vid_left")[0], first["vid_left"][0])
        np.testing.assert_array_equal(store.read("105")[0][:3], first["105"][0])
    # a third run finds everything in place
    capsys.readouterr()
    assert extract(config, progress=False)["extracted"] == 0
    assert "extracted again" not in capsys.readouterr().err


def test_a_rerun_keeps_a_video_whose_images_are_gone_and_one_whose_images_do_not_decode(
        mini_root, ckpt, tmp_path, capsys):
    # vid_left's images are all unreadable
    path, _ = ckpt
    for image in (mini_root / "cropped_aligned" / "vid_left").iterdir():
        image.write_bytes(b"a Git LFS pointer, not a JPEG")
    store_path = tmp_path / "f.zarr"
    config = ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32)
    extract(config, progress=False)
    first = read_all(store_path)
    assert first["105"][1].all() and not first["vid_left"][1].any()
    # two of 105's three crops are lost (an unfinished copy, a sync that dropped files)
    for k in (2, 3):
        (mini_root / "cropped_aligned_new_50_vids" / "105" / f"{k:05d}.jpg").unlink()
    capsys.readouterr()
    result = extract(config, progress=False)
    assert result["extracted"] == 0 and result["skipped"] == 2
    err = capsys.readouterr().err
    assert "extracted again" not in err
    assert ("warning: 1 video(s) in" in err and "105: 2 of its faces have no image now" in err
            and "kept as stored" in err), err
    kept = read_all(store_path)
    np.testing.assert_array_equal(kept["105"][0], first["105"][0])
    assert kept["105"][1].all()
    # one pointer deleted: no face lost, nothing new, nothing said
    (mini_root / "cropped_aligned" / "vid_left" / "00005.jpg").unlink()
    capsys.readouterr()
    assert extract(config, progress=False)["extracted"] == 0
    assert "vid_left" not in capsys.readouterr().err
    # the pointers are pulled (the files decode now): vid_left is extracted again, with its faces
    write_images(mini_root, "vid_left", [1, 2, 4, 5])
    capsys.readouterr()
    assert extract(config, progress=False)["extracted"] == 1
    assert "vid_left: 4 image(s) now for rows stored without a face" in capsys.readouterr().err
    assert read_all(store_path)["vid_left"][1].sum() == 4
    # --redo names a video to extract again whatever the data says; a name not selected is refused
    result = CliRunner().invoke(cli, ["extract", "--data", str(mini_root), "--ckpt", str(path),
                                      "--store", str(store_path), "--device", "cpu", "--workers",
                                      "0", "--no-bf16", "--dtype", "float32", "--batch-size", "4",
                                      "--redo", "105", "--json"])
    assert result.exit_code == 0, result.output
    assert "105: asked for by --redo" in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["extracted"] == 1
    result = CliRunner().invoke(cli, ["extract", "--data", str(mini_root), "--ckpt", str(path),
                                      "--store", str(store_path), "--redo", "106"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "error: --redo '106' is not a video this run extracts" in result.output


@pytest.mark.slow
def test_two_ranks_redo_a_video_of_an_hdf5_store_that_no_longer_fits(mini_root, ckpt, tmp_path):
    # under torchrun HDF5 ranks write part files merged into the store: the merge keeps each
    # video's num_images (else a video with an unreadable image would be redone on every run), and
    # replaces the store's own outdated copy
    path, _ = ckpt
    (mini_root / "cropped_aligned" / "vid_left" / "00002.jpg").write_bytes(b"not a jpeg")
    store_path = tmp_path / "f.h5"
    two_ranks = ["extract", "--data", str(mini_root), "--ckpt", str(path), "--store",
                 str(store_path), "--device", "cpu", "--workers", "0", "--batch-size", "4",
                 "--dtype", "float32", "--no-bf16"]
    assert run_two_ranks(*two_ranks)[0]["extracted"] == 2
    with features.open_store(store_path) as store:
        assert store.video_attrs("vid_left")["num_images"] == 4
        assert store.num_present("vid_left") == 3
    assert extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                                 **CPU32), progress=False)["extracted"] == 0
    write_annotation(mini_root, "VA_Estimation_Challenge", "Validation_Set", "105", "va",
                     ["0.1,0.1"] * 5)
    summary, _ = run_two_ranks(*two_ranks)
    assert summary["extracted"] == 1 and summary["skipped"] == 1
    assert features.verify_store(store_path, {"105": 5, "vid_left": 6}) == []
    assert not list(tmp_path.glob("f.part*.h5"))


def test_verify_with_data_misses_a_listed_video_without_images(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    store_path = tmp_path / "f.zarr"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                          **CPU32), progress=False)
    add_imageless_test_video(mini_root)  # listed after the extraction: the store lacks it
    result = CliRunner().invoke(cli, ["features", "verify", str(store_path), "--data",
                                      str(mini_root), "--json"])
    assert (result.exit_code == 1
            and "video noface: missing (the dataset has it with 7 frames)" in result.output)
    # the rerun adds it
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                          **CPU32), progress=False)
    result = CliRunner().invoke(cli, ["features", "verify", str(store_path), "--data",
                                      str(mini_root), "--json"])
    assert result.exit_code == 0, result.output


def test_test_video_without_images_gets_its_rows_in_a_submission(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    example = add_imageless_test_video(mini_root)
    store_path = tmp_path / "f.zarr"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path),
                          **CPU32), progress=False)
    run = tmp_path / "va"
    train = CliRunner().invoke(cli, [
        "train", "va", "--store", str(store_path), "--data", str(mini_root), "--out", str(run),
        "--preset", "demo", "--epochs", "1", "--window", "4", "--device", "cpu", "--json"])
    assert train.exit_code == 0, train.output
    out = tmp_path / "va_test.csv"
    result = CliRunner().invoke(cli, ["predict", "--run", str(run), "--out", str(out), "--device",
                                      "cpu", "--json"])
    assert result.exit_code == 0, result.output
    check = CliRunner().invoke(cli, ["check-submission", str(out), "--task", "va", "--example",
                                     str(example)])
    assert check.exit_code == 0, check.output
    assert sum(line.startswith("noface/") for line in out.read_text().splitlines()) == 7


def test_extract_takes_a_checkpoint_of_facebookresearch_mae(mini_root, tmp_path):
    from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT
    from tests.test_checkpoint import save_like_facebookresearch_mae

    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(MAEConfig(img_size=32, embed_dim=192, depth=12, num_heads=3,
                                         decoder_embed_dim=32, decoder_depth=1,
                                         decoder_num_heads=2))
    path = tmp_path / "checkpoint-799.pth"
    save_like_facebookresearch_mae(path, mae)
    raw = torch.load(path, weights_only=False)
    # MAE's own key names
    raw["model"] = {k.removeprefix("encoder."): v for k, v in raw["model"].items()}
    torch.save(raw, path)
    store_path = tmp_path / "f.zarr"
    result = CliRunner().invoke(cli, [
        "extract", "--data", str(mini_root), "--ckpt", str(path), "--store", str(store_path),
        "--device", "cpu", "--workers", "0", "--no-bf16", "--json"])
    assert result.exit_code == 0, result.output
    assert features.open_store(store_path).attrs["encoder"] == "mae_vit_tiny_patch16"


def cli_extract(root, ckpt_path, store_path, *extra):
    return CliRunner().invoke(cli, ["extract", "--data", str(root), "--ckpt", str(ckpt_path),
                                    "--store", str(store_path), "--device", "cpu", "--workers", "0",
                                    "--dtype", "float32", "--no-bf16", "--json", *extra])


def test_a_truncated_hdf5_store_is_replaced_by_extract_overwrite(mini_root, ckpt, tmp_path):
    path, _ = ckpt
    store_path = tmp_path / "f.h5"
    assert cli_extract(mini_root, path, store_path).exit_code == 0
    data = store_path.read_bytes()
    store_path.write_bytes(data[: len(data) // 2])  # killed mid-write, or a full disk
    info = CliRunner().invoke(cli, ["features", "info", str(store_path), "--json"])
    assert info.exit_code == 2 and "--overwrite" in info.stderr
    assert cli_extract(mini_root, path, store_path).exit_code == 2  # not without --overwrite
    result = cli_extract(mini_root, path, store_path, "--overwrite")
    assert result.exit_code == 0, result.output
    verify = CliRunner().invoke(cli, ["features", "verify", str(store_path), "--data",
                                      str(mini_root), "--json"])
    assert verify.exit_code == 0, verify.output


def test_a_video_deleted_by_hand_is_missing_for_every_reader_and_extract_repairs_it(
        mini_root, ckpt, tmp_path):
    path, _ = ckpt
    store_path = tmp_path / "f.zarr"
    assert cli_extract(mini_root, path, store_path).exit_code == 0
    # a collaborator, with plain zarr
    del zarr.open_group(str(store_path), mode="r+")["videos/vid_left"]
    info = CliRunner().invoke(cli, ["features", "info", str(store_path), "--data", str(mini_root),
                                    "--json"])
    summary = json.loads(info.output)
    assert summary["videos"] == 1 and summary["listing_stale"]
    assert summary["splits"]["va/Train_Set"] == {"videos": 0, "annotated": 1, "frames": 0}
    train = CliRunner().invoke(cli, [
        "train", "va", "--store", str(store_path), "--data", str(mini_root), "--out",
        str(tmp_path / "run"), "--preset", "demo", "--epochs", "1", "--window", "4", "--device",
        "cpu", "--json"])
    assert train.exit_code == 2 and "'vid_left'" in train.stderr
    assert features.open_store(store_path).videos() == ["105"]
    result = cli_extract(mini_root, path, store_path)  # the rerun redoes it and consolidates again
    assert result.exit_code == 0 and json.loads(result.stdout)["extracted"] == 1
    verify = CliRunner().invoke(cli, ["features", "verify", str(store_path), "--data",
                                      str(mini_root), "--json"])
    assert verify.exit_code == 0, verify.output
    assert not features.open_store(store_path).listing_stale


def test_info_shows_a_store_without_identity_attributes_and_verify_names_them(
        mini_root, ckpt, tmp_path):
    """A store whose writer (a collaborator's code) gave no encoder: info still describes it,
    verify says what it lacks."""
    path, _ = ckpt
    store_path = tmp_path / "f.zarr"
    assert cli_extract(mini_root, path, store_path).exit_code == 0
    root = zarr.open_group(str(store_path), mode="r+")
    root.attrs.put({k: v for k, v in root.attrs.asdict().items() if k != "encoder"})
    zarr.consolidate_metadata(str(store_path))
    info = CliRunner().invoke(cli, ["features", "info", str(store_path)])
    assert info.exit_code == 0, info.output
    assert "encoder     ?, pooling cls" in info.output and "computed in float32" in info.output
    verify = CliRunner().invoke(cli, ["features", "verify", str(store_path)])
    assert verify.exit_code == 1 and "root attributes lack encoder" in verify.output


def test_store_is_current_follows_the_checkpoint_and_the_precision(mini_root, ckpt, tmp_path):
    """What the demo and analyze ask before reusing their own store."""
    path, _ = ckpt
    store_path = tmp_path / "f.zarr"
    cpu = torch.device("cpu")
    assert not store_is_current(store_path, path, cpu, bf16=False)  # none yet
    extract(ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(store_path), **CPU32),
            progress=False)
    assert store_is_current(store_path, path, cpu, bf16=False)
    assert not store_is_current(store_path, path, cpu, bf16=True)
    other = tmp_path / "other.pt"
    make_ckpt(other, seed=1)
    assert not store_is_current(store_path, other, cpu, bf16=False)


def test_parts_of_a_killed_torchrun_run_are_merged_whatever_the_process_count(
        mini_root, ckpt, tmp_path, capsys):
    path, _ = ckpt
    config = ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(tmp_path / "whole.h5"),
                           **CPU32)
    extract(config, progress=False)
    whole = read_all(tmp_path / "whole.h5")
    # what rank 1 of a killed two-process run leaves: its part, both its videos complete
    (tmp_path / "whole.h5").rename(tmp_path / "f.part1.h5")
    capsys.readouterr()
    result = extract(replace(config, store=str(tmp_path / "f.h5")), progress=False)  # one process
    assert (result["extracted"], result["skipped"]) == (0, 2)
    assert "extract: 2 of the 2 videos are in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("f*")) == ["f.h5"]
    merged = read_all(tmp_path / "f.h5")
    assert merged.keys() == whole.keys()
    for video in whole:
        np.testing.assert_array_equal(merged[video][0], whole[video][0])


def test_a_damaged_part_is_dropped_and_a_foreign_one_refused_before_the_store_is_made(
        mini_root, ckpt, tmp_path, capsys):
    path, _ = ckpt
    config = ExtractConfig(data=str(mini_root), ckpt=str(path), store=str(tmp_path / "f.h5"),
                           **CPU32)
    features.create_store(tmp_path / "f.part0.h5", {**features.open_store(
        _whole(mini_root, path, tmp_path)).attrs, "checkpoint_sha256": "0" * 64}).close()
    with pytest.raises(InputError, match=r"f.part0.h5: a part file of another extraction "
                                         r"\(checkpoint_sha256"):
        extract(config, progress=False)
    assert not (tmp_path / "f.h5").exists()
    # a part truncated by a kill: dropped with a warning, its videos extracted again
    data = (tmp_path / "f.part0.h5").read_bytes()
    (tmp_path / "f.part0.h5").write_bytes(data[: len(data) // 2])
    result = extract(config, progress=False)
    assert result["extracted"] == 2 and not (tmp_path / "f.part0.h5").exists()
    assert "f.part0.h5: a damaged part file of a killed run" in capsys.readouterr().err


def _whole(mini_root, ckpt_path, tmp_path):
    store = tmp_path / "whole.zarr"
    extract(ExtractConfig(data=str(mini_root), ckpt=str(ckpt_path), store=str(store), **CPU32),
            progress=False)
    return store
