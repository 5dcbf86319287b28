"""Bad inputs from the field, one table: annotations, images, videos of frames, checkpoints, feature
stores, run directories and prediction files.

Each case builds its input next to a small valid project (a dataset root, an encoder checkpoint, a
store extracted from it and a one-epoch VA head, made once for the module) and runs one command
through the CLI. Every case must end the same way: exit code 2, exactly one line on stderr that
names the file (and the line or key at fault), no traceback, and nothing written or changed on disk.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import features
from cli import cli
from pipeline.checkpoint import encoder_checkpoint, save_checkpoint
from pipeline.models.mae import build_encoder
from tests.conftest import write_annotation, write_images

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)
DEVICE = ["--device", "cpu"]


@dataclass(frozen=True)
class Project:
    """The valid inputs every case starts from (read-only for the cases)."""

    dir: Path
    # an Aff-Wild2-layout dataset: VA and Expr, Train_Set (vid_left) and Validation_Set (105)
    root: Path
    ckpt: Path  # a mae-affect encoder checkpoint (32 px, 32 wide)
    store: Path  # features of every video, extracted with ckpt
    run: Path  # a VA head trained one epoch on store
    val_csv: Path  # the run's predictions for Validation_Set, a valid file to score


def make_root(root: Path) -> Path:
    write_images(root, "vid_left", [1, 2, 4, 5])
    write_images(root, "105", [1, 2, 3], folder="cropped_aligned_new_50_vids")
    write_annotation(root, "VA_Estimation_Challenge", "Train_Set", "vid_left", "va",
                     ["0.1,0.2", "-5,-5", "0.3,-0.4", "1,-1", "0.0,0.0", "0.5,0.5"])
    write_annotation(root, "VA_Estimation_Challenge", "Validation_Set", "105", "va",
                     ["0.1,0.1", "0.2,0.2", "0.3,0.3"])
    write_annotation(root, "EXPR_Recognition_Challenge", "Train_Set", "vid_left", "expr",
                     ["0", "7", "-1", "4", "4"])
    write_annotation(root, "EXPR_Recognition_Challenge", "Validation_Set", "105", "expr",
                     ["1", "1", "2"])
    return root


def invoke(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    d = tmp_path_factory.mktemp("project")
    root = make_root(d / "aw2")
    torch.manual_seed(0)
    ckpt = d / "enc.pt"
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY,
                                       build_encoder("mae_vit_tiny_patch16", **TINY), 32), ckpt)
    store = d / "f.zarr"
    result = invoke("extract", "--data", root, "--ckpt", ckpt, "--store", store, "--workers", 0,
                    "--no-bf16", "--json", *DEVICE)
    assert result.exit_code == 0, result.output
    run = d / "va"
    result = invoke("train", "va", "--store", store, "--data", root, "--out", run, "--preset",
                    "demo", "--epochs", 1, "--window", 4, "--json", *DEVICE)
    assert result.exit_code == 0, result.output
    val_csv = d / "val.csv"
    result = invoke("predict", "--run", run, "--split", "Validation_Set", "--out", val_csv,
                    "--json", *DEVICE)
    assert result.exit_code == 0, result.output
    return Project(d, root, ckpt, store, run, val_csv)


def copy_root(p: Project, tmp: Path) -> Path:
    return Path(shutil.copytree(p.root, tmp / "aw2"))


# --- annotations: `score` reads the split's annotation files --------------------------------------


def _annotation(lines: str, split: str = "Validation_Set", task: str = "va", video: str = "105"):
    challenge = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Recognition_Challenge"}[task]

    def setup(p: Project, tmp: Path):
        root = copy_root(p, tmp)
        path = root / "6th ABAW Annotations" / challenge / split / f"{video}.txt"
        path.write_text(lines)
        if task == "va":
            return (["score", "--task", task, "--pred", p.val_csv, "--data", root, "--split",
                     split], path)
        # info reads every split
        return ["features", "info", p.store, "--data", root, "--json"], path
    return setup


def annotations_of_other_images(p: Project, tmp: Path):
    root = copy_root(p, tmp)
    folder = root / "6th ABAW Annotations" / "VA_Estimation_Challenge" / "Validation_Set"
    (folder / "105.txt").rename(folder / "other_video.txt")
    return ["score", "--task", "va", "--pred", p.val_csv, "--data", root], folder


def annotations_of_a_misspelled_split(p: Project, tmp: Path):
    return (["score", "--task", "va", "--pred", p.val_csv, "--data", p.root, "--split",
             "Validaton_Set"], ("'Validaton_Set' is not a split", "Train_Set, Validation_Set"))


def annotations_of_the_test_split(p: Project, tmp: Path):
    return (["score", "--task", "va", "--pred", p.val_csv, "--data", p.root, "--split", "test"],
            ("'test' has no annotations", "Train_Set, Validation_Set"))


# --- images: `pretrain --images` ------------------------------------------------------------------


def images_folder_without_images(p: Project, tmp: Path):
    folder = tmp / "faces"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here")
    return ["pretrain", "--images", folder, "--out", tmp / "mae", "--json", *DEVICE], folder


def images_folder_missing(p: Project, tmp: Path):
    return (["pretrain", "--images", tmp / "nope", "--out", tmp / "mae", "--json", *DEVICE],
            tmp / "nope")


def images_a_file_not_a_folder(p: Project, tmp: Path):
    image = tmp / "face.png"
    Image.new("RGB", (32, 32)).save(image)
    return ["pretrain", "--images", image, "--out", tmp / "mae", "--json", *DEVICE], image


def images_side_not_a_multiple_of_the_patch(p: Project, tmp: Path):
    return (["pretrain", "--images", p.root, "--out", tmp / "mae", "--img-size", 60, "--json",
             *DEVICE], ("--img-size 60 is not a multiple of patch_size 16", "48 or 64"))


def ckpt_side_not_a_multiple_of_its_patch(p: Project, tmp: Path):
    return (["finetune", "--data", p.root, "--init", p.ckpt, "--out", tmp / "ft", "--img-size",
             30, "--json", *DEVICE], ("--img-size 30 is not a multiple of patch_size",))


# --- videos of frames: `extract --data` lists every video before anything else --------------------


def _frames(names: list[str], video: str = "vid_left", folder: str = "cropped_aligned"):
    def setup(p: Project, tmp: Path):
        root = copy_root(p, tmp)
        d = root / folder / video
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.new("RGB", (16, 16)).save(d / name)
        return (["extract", "--data", root, "--ckpt", p.ckpt, "--store", tmp / "s.zarr", "--json",
                 *DEVICE], d)
    return setup


def frames_without_image_root(p: Project, tmp: Path):
    root = tmp / "aw2"
    shutil.copytree(p.root / "6th ABAW Annotations", root / "6th ABAW Annotations")
    return (["extract", "--data", root, "--ckpt", p.ckpt, "--store", tmp / "s.zarr", "--json",
             *DEVICE], root)


# --- checkpoints: `extract --ckpt`, `finetune --init` ---------------------------------------------


class Pickled:
    """A class a checkpoint must never make us unpickle."""


def _ckpt(write, command: str = "extract", key: str | None = None):
    def setup(p: Project, tmp: Path):
        path = tmp / "bad.pt"
        write(path, p)
        if command == "extract":
            args = ["extract", "--data", p.root, "--ckpt", path, "--store", tmp / "s.zarr",
                    "--json", *DEVICE]
        else:
            args = ["finetune", "--data", p.root, "--init", path, "--out", tmp / "ft", "--model",
                    "mae_vit_small_patch16", "--workers", 0, "--json", *DEVICE]
        return args, (path, key) if key else path
    return setup


def _state(p: Project) -> dict:
    return dict(torch.load(p.ckpt, weights_only=True)["encoder"])


def ckpt_with_a_class(path, p):
    torch.save({"model": _state(p), "extra": Pickled()}, path)


def ckpt_truncated(path, p):
    data = p.ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def ckpt_text(path, p):
    path.write_text("weights: see the lab wiki\n")


def ckpt_no_weights(path, p):
    torch.save({"optimizer": {"lr": 1e-3}, "epoch": 3}, path)


def ckpt_a_list(path, p):
    torch.save([torch.zeros(2)], path)


def _registered_tiny() -> dict:
    """A ViT-Ti/16 state dict at 32 px (a 2 x 2 grid): a registered size the loader infers from
    shapes."""
    return build_encoder("mae_vit_tiny_patch16", img_size=32).state_dict()


def ckpt_extra_token(path, p):
    state = _registered_tiny()
    state["pos_embed"] = torch.zeros(1, 6, 192)  # cls + a distillation token + 2 x 2 grid rows
    state["dist_token"] = torch.zeros(1, 1, 192)
    torch.save({"model": state}, path)


def ckpt_unregistered(path, p):
    torch.save(_state(p), path)  # 32 wide, 2 deep: no registered size, no name in the file


def ckpt_other_width(path, p):
    torch.save(_registered_tiny(), path)  # 192 wide, refused as the --model small (384) it is not


# --- feature stores -------------------------------------------------------------------------------


def store_without_zarr_json(p: Project, tmp: Path):
    d = tmp / "feats.zarr"
    d.mkdir()
    (d / "README").write_text("features go here")
    return ["features", "info", d, "--json"], d


def store_truncated_hdf5(p: Project, tmp: Path):
    path = tmp / "feats.h5"
    features.export_store(p.store, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["features", "info", path, "--json"], path


def store_verify_not_a_store(p: Project, tmp: Path):
    path = tmp / "clip.mp4"  # verify of what is not a store: bad input, not a damaged store
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return ["features", "verify", path], path


def store_foreign_hdf5(p: Project, tmp: Path):
    path = tmp / "feats.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    return (["train", "va", "--store", path, "--data", p.root, "--out", tmp / "run", "--json",
             *DEVICE], (path, "attrs_json"))


def store_suffix_contradicts_the_format(p: Project, tmp: Path):
    return (["extract", "--data", p.root, "--ckpt", p.ckpt, "--store", tmp / "x.h5", "--format",
             "zarr", "--json", *DEVICE], ("--format zarr", tmp / "x.h5", "end the path in .zarr"))


def store_of_another_checkpoint(p: Project, tmp: Path):
    store = Path(shutil.copytree(p.store, tmp / "f.zarr"))
    other = tmp / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY,
                                       build_encoder("mae_vit_tiny_patch16", **TINY), 32), other)
    return (["extract", "--data", p.root, "--ckpt", other, "--store", store, "--workers", 0,
             "--json", *DEVICE], (store, "checkpoint_sha256"))


def store_overwrite_a_folder(p: Project, tmp: Path):
    folder = tmp / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep")
    return (["extract", "--data", p.root, "--ckpt", p.ckpt, "--store", folder, "--overwrite",
             "--workers", 0, "--json", *DEVICE], folder)


def store_of_a_newer_format(p: Project, tmp: Path):
    import zarr

    store = Path(shutil.copytree(p.store, tmp / "f.zarr"))
    zarr.open_group(store, mode="r+").attrs["format_version"] = 2
    return ["predict", "--run", p.run, "--store", store, "--split", "Validation_Set", "--out",
            tmp / "x.csv", "--json", *DEVICE], (store, "format_version 2")


# --- run directories: `predict` / `evaluate --run` ------------------------------------------------


def _run_copy(p: Project, tmp: Path) -> Path:
    return Path(shutil.copytree(p.run, tmp / "run"))


def out_train_into_a_file(p: Project, tmp: Path):
    (tmp / "heads").write_text("notes")  # refused before the stores are read (this one is not)
    return (["train", "va", "--store", tmp / "missing.zarr", "--data", p.root, "--out",
             tmp / "heads" / "va", "--json", *DEVICE], tmp / "heads")


def out_train_into_a_finetune_run(p: Project, tmp: Path):
    run = tmp / "ft"  # a fine-tuned encoder's run: its best.pt must not become a head's
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"finetune": {"epochs": 4}, "encoder": {}}))
    (run / "best.pt").write_bytes(b"the encoder")
    return (["train", "va", "--store", p.store, "--data", p.root, "--out", run, "--json",
             *DEVICE], run)


def out_pretrain_into_a_store(p: Project, tmp: Path):
    store = Path(shutil.copytree(p.store, tmp / "f.zarr"))  # not a run: its files would mix
    return (["pretrain", "--images", p.root, "--out", store, "--json", *DEVICE],
            (store, "holds a feature store and no pretrain run", "give --out a new folder"))


def out_predict_into_a_folder(p: Project, tmp: Path):
    (tmp / "sub").mkdir()
    return ["predict", "--run", p.run, "--out", tmp / "sub", "--json", *DEVICE], tmp / "sub"


def run_without_best(p: Project, tmp: Path):
    run = _run_copy(p, tmp)
    (run / "best.pt").unlink()
    return ["predict", "--run", run, "--out", tmp / "x.csv", "--json", *DEVICE], run / "best.pt"


def run_best_with_a_class(p: Project, tmp: Path):
    run = _run_copy(p, tmp)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["note"] = Pickled()
    torch.save(ckpt, run / "best.pt")
    return ["evaluate", "--run", run, "--json", *DEVICE], (run / "best.pt", "Pickled")


def run_best_is_an_encoder(p: Project, tmp: Path):
    run = _run_copy(p, tmp)
    shutil.copy(p.ckpt, run / "best.pt")
    return ["evaluate", "--run", run, "--json", *DEVICE], run / "best.pt"


def run_inputs_gone(p: Project, tmp: Path):
    run = _run_copy(p, tmp)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["inputs"]["stores"][0] = {"absolute": str(tmp / "gone.zarr"),
                                   "from_run": "../inputs/gone.zarr"}
    torch.save(ckpt, run / "best.pt")
    return (["predict", "--run", run, "--split", "Validation_Set", "--out", tmp / "x.csv", "--json",
             *DEVICE], (run, tmp / "gone.zarr", tmp / "inputs" / "gone.zarr"))


def run_with_a_store_of_another_encoder(p: Project, tmp: Path):
    import zarr

    store = Path(shutil.copytree(p.store, tmp / "f.zarr"))
    zarr.open_group(store, mode="r+").attrs["checkpoint_sha256"] = "0" * 64
    return (["evaluate", "--run", p.run, "--store", store, "--json", *DEVICE],
            (store, "checkpoint_sha256"))


# --- prediction files: `score`, `check-submission`, and an example file for `predict` -------------


def _prediction(edit, command: str = "score"):
    def setup(p: Project, tmp: Path):
        lines = p.val_csv.read_text().splitlines()
        lines = edit(lines)
        path = tmp / "pred.csv"
        path.write_text("\n".join(lines) + "\n")
        if command == "score":
            return ["score", "--task", "va", "--pred", path, "--data", p.root], path
        return ["check-submission", path, "--task", "va", "--example", p.val_csv], path
    return setup


def _set(i: int, text: str):
    def edit(lines):
        lines[i] = text
        return lines
    return edit


def example_with_a_bad_location(p: Project, tmp: Path):
    root = copy_root(p, tmp)
    lists = root / "names_of_videos_in_each_test_set"
    lists.mkdir()
    (lists / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").write_text("105\n")
    example = root / "CVPR_6th_ABAW_VA_test_set_example.txt"
    example.write_text("image_location,valence,arousal\n105/00001.jpg,0,0\n105/first.jpg,0,0\n")
    return (["predict", "--run", p.run, "--data", root, "--out", tmp / "x.csv", "--json", *DEVICE],
            f"{example}:3:")


VA_HEADER = "valence,arousal\n"
CASES = {
    # annotations
    "annotation-header": (_annotation("arousal,valence\n0.1,0.1\n"), ":1:"),
    "annotation-fields": (_annotation(VA_HEADER + "0.1,0.1\n0.2\n"), ":3:"),
    "annotation-not-a-number": (_annotation(VA_HEADER + "0.1,high\n"), ":2:"),
    "annotation-out-of-range": (_annotation(VA_HEADER + "0.1,0.1\n0.2,0.2\n1.5,0.1\n"), ":4:"),
    "annotation-nan": (_annotation(VA_HEADER + "nan,0.1\n"), ":2:"),
    "annotation-expr-fraction": (
        _annotation("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n2.5\n",
                    task="expr"), ":2:"),
    "annotation-empty": (_annotation(""), None),
    "annotations-of-other-images": (annotations_of_other_images, None),
    "annotations-of-a-misspelled-split": (annotations_of_a_misspelled_split, None),
    "annotations-of-the-test-split": (annotations_of_the_test_split, None),
    # images
    "images-none-in-folder": (images_folder_without_images, None),
    "images-folder-missing": (images_folder_missing, None),
    "images-a-file-not-a-folder": (images_a_file_not_a_folder, None),
    "images-side-not-a-multiple-of-the-patch": (images_side_not_a_multiple_of_the_patch, None),
    # videos of frames
    "frames-one-number-twice": (_frames(["1.jpg"]), "1.jpg"),
    "frames-number-zero": (_frames(["00000.jpg"]), "00000.jpg"),
    "frames-mixed-formats": (_frames(["00003.png"]), ".png"),
    "frames-video-in-two-roots": (_frames(["00001.jpg"], video="105"), "'105'"),
    "frames-no-image-root": (frames_without_image_root, "cropped_aligned"),
    # checkpoints
    "ckpt-pickled-class": (_ckpt(ckpt_with_a_class, key="Pickled"), None),
    "ckpt-truncated": (_ckpt(ckpt_truncated), None),
    "ckpt-not-a-checkpoint": (_ckpt(ckpt_text), None),
    "ckpt-no-weights": (_ckpt(ckpt_no_weights, key="optimizer"), None),
    "ckpt-a-list": (_ckpt(ckpt_a_list), None),
    "ckpt-extra-token": (_ckpt(ckpt_extra_token, key="'pos_embed'"), None),
    "ckpt-unregistered-size": (_ckpt(ckpt_unregistered), None),
    "ckpt-other-model": (_ckpt(ckpt_other_width, command="finetune", key="'cls_token'"), None),
    # feature stores
    "store-dir-without-zarr-json": (store_without_zarr_json, None),
    "store-truncated-hdf5": (store_truncated_hdf5, "--overwrite"),
    "store-verify-not-a-store": (store_verify_not_a_store, None),
    "store-foreign-hdf5": (store_foreign_hdf5, None),
    "ckpt-side-not-a-multiple-of-its-patch": (ckpt_side_not_a_multiple_of_its_patch, None),
    "store-suffix-contradicts-the-format": (store_suffix_contradicts_the_format, None),
    "store-of-another-checkpoint": (store_of_another_checkpoint, None),
    "store-overwrite-refuses-a-folder": (store_overwrite_a_folder, None),
    "store-newer-format": (store_of_a_newer_format, None),
    # outputs where a file or folder is in the way
    "out-train-into-a-file": (out_train_into_a_file, "a file, not a folder"),
    "out-predict-into-a-folder": (out_predict_into_a_folder, "a folder; give --out a file"),
    "out-train-into-a-finetune-run": (out_train_into_a_finetune_run, "holds a finetune run"),
    "out-pretrain-into-a-store": (out_pretrain_into_a_store, None),
    # run directories
    "run-without-best": (run_without_best, None),
    "run-best-with-a-class": (run_best_with_a_class, None),
    "run-best-is-an-encoder": (run_best_is_an_encoder, None),
    "run-inputs-gone": (run_inputs_gone, "--store"),
    "run-store-of-another-encoder": (run_with_a_store_of_another_encoder, None),
    # prediction files
    "pred-header": (_prediction(_set(0, "image_location,arousal,valence")), ":1:"),
    "pred-nan": (_prediction(_set(2, "105/00002.jpg,nan,0.1")), ":3:"),
    "pred-out-of-range": (_prediction(_set(1, "105/00001.jpg,0.5,-1.2")), ":2:"),
    "pred-fields": (_prediction(_set(3, "105/00003.jpg,0.1")), ":4:"),
    "pred-location": (_prediction(_set(1, "105/first.jpg,0.1,0.1")), ":2:"),
    "pred-second-row": (_prediction(lambda lines: [*lines, lines[1]]), ":"),
    "pred-missing-row": (_prediction(lambda lines: lines[:-1]), "105/00003.jpg"),
    "pred-order-vs-example": (_prediction(lambda lines: [lines[0], lines[2], lines[1], *lines[3:]],
                                          command="check"), ":2:"),
    "example-bad-location": (example_with_a_bad_location, None),
}


def snapshot(*dirs: Path) -> dict:
    """Every path under the given folders, with the bytes of each file."""
    state = {}
    for d in dirs:
        for path in sorted(d.rglob("*")):
            state[str(path)] = path.read_bytes() if path.is_file() else "<dir>"
    return state


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(project, tmp_path, case):
    setup, detail = CASES[case]
    args, named = setup(project, tmp_path)
    named = named if isinstance(named, tuple) else (named,)
    before = snapshot(tmp_path, project.dir)
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, f"{case}: exit {result.exit_code}\n{result.output}"
    assert isinstance(result.exception, SystemExit)  # not an exception escaping the CLI
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and not result.stdout
    for part in named + ((detail,) if detail else ()):
        assert str(part) in lines[0], f"{case}: {part!r} not in {lines[0]!r}"
    assert snapshot(tmp_path, project.dir) == before, f"{case} changed the disk"


def test_the_table_covers_every_kind_of_input():
    kinds = {case.split("-")[0] for case in CASES}
    assert kinds >= {"annotation", "images", "frames", "ckpt", "store", "run", "pred"}
    assert len(CASES) >= 25


@pytest.mark.parametrize("command, module, resumable", [
    (["synth", "--out", "unused"], "pipeline.data.synth.generate", False),
    (["extract", "--data", "d", "--ckpt", "c.pt", "--store", "s.zarr"], "pipeline.extract.extract",
     True),
])
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, command, module, resumable):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, interrupted)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == [
        "interrupted (Ctrl-C)" + ("; the same command goes on from what was finished"
                                  if resumable else "")]


@pytest.mark.parametrize("args, message", [
    (["train"], "error: Missing argument '{va|expr|au}'. Choose from: va, expr, au; "
                "see 'cli train -h'"),
    (["pretrain", "--epoch", "3"], "error: No such option '--epoch'."),
    (["features", "info"], "error: Missing argument 'STORE'; see 'cli features info -h'"),
    (["--bogus"], "error: No such option '--bogus'; see 'cli -h'"),
])
def test_a_usage_error_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_a_group_without_its_command_shows_its_help():
    result = CliRunner().invoke(cli, ["features"])
    assert "Commands:" in result.output and "error:" not in result.output


def test_a_command_torchrun_does_not_share_is_refused_under_it(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["train", "va", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: train runs in one process, not under torchrun (2 processes here)"), result.stderr
    assert not (tmp_path / "run").exists()
    # one whose work it shares gets as far as its settings
    result = CliRunner().invoke(cli, ["pretrain", "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs 0: use 1 or more" in result.stderr


def test_under_torchrun_a_rank_but_0_names_itself_in_its_error(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(cli, ["pretrain", "--epochs", "0"])
    assert result.exit_code == 2 and result.stderr.startswith(
        "rank 1: error: --epochs 0: use 1 or more"), result.stderr
