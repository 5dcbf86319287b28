"""``analyze`` on the real clip: faces -> feature store -> the heads' own prediction path -> a CSV
row per source frame, a PNG timeline, one HTML page, an MP4; with a tiny encoder and heads trained
here on the tiny synthetic set."""

import csv
import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import features
from cli import cli
from pipeline.checkpoint import encoder_checkpoint, save_checkpoint
from pipeline.configs.video import AnalyzeConfig, FacesConfig
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES, TASKS
from pipeline.extract import ExtractConfig, extract
from pipeline.heads.evaluate import load_run, tables_for
from pipeline.heads.predict import predict_videos
from pipeline.heads.train import TrainConfig, prepare, train_run
from pipeline.models.mae import build_encoder
from pipeline.video.analyze import AU_PROB_COLUMNS, EXPR_PROB_COLUMNS, analyze
from pipeline.video.record import read_record
from tests.conftest import write_video
from tests.test_faces import carphone_frames, cut_in_half

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2)
HEAD = dict(window=64, stride=32, tcn_channels=(16, 16), d_model=16, num_layers=1, num_heads=2,
            ff_dim=16, head_hidden=8, batch_size=8, lr=1e-3, epochs=1, device="cpu")
CPU = ["--device", "cpu", "--workers", 0, "--no-bf16"]


def make_encoder(path, seed: int = 0):
    torch.manual_seed(seed)
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY,
                                       build_encoder("mae_vit_tiny_patch16", **TINY), 32), path)
    return path


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A tiny encoder, its store of the tiny synthetic set, and a head per task trained one epoch on
    it."""
    tmp = tmp_path_factory.mktemp("heads")
    encoder = make_encoder(tmp / "encoder.pt")
    store = tmp / "tiny.zarr"
    extract(ExtractConfig(data=str(tiny_root), ckpt=str(encoder), store=str(store), device="cpu",
                          workers=0, bf16=False), progress=False)
    runs = {}
    for task in TASKS:
        cfg = TrainConfig.create(task=task, stores=(str(store),), data=str(tiny_root), **HEAD)
        train_run(prepare(cfg), cfg, tmp / task, progress=False, make_plots=False)
        runs[task] = tmp / task
    return encoder, runs


@pytest.fixture(scope="module")
def analyzed(carphone, trained, tmp_path_factory):
    """`mae-affect analyze` on the carphone clip and a clip without a face, with --render."""
    encoder, runs = trained
    tmp = tmp_path_factory.mktemp("analyze")
    rng = np.random.default_rng(1)
    wall = write_video(tmp / "wall.mp4",
                       np.repeat(rng.integers(0, 256, (10, 9, 11, 3), dtype=np.uint8), 16, axis=1)
                       .repeat(16, axis=2))  # (10, 144, 176, 3) coloured blocks, no face
    out = tmp / "out"
    result = CliRunner().invoke(cli, [str(a) for a in [
        "analyze", carphone, wall, "--encoder", encoder, "--heads", runs["va"], runs["expr"],
        runs["au"], "--out", out, "--render", *CPU, "--json"]])
    assert result.exit_code == 0, result.output
    summary = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    return out, summary, wall


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_csv_row_per_source_frame_with_every_prediction(analyzed, trained):
    out, summary, _ = analyzed
    assert set(summary["videos"]) == {"carphone_pristine", "wall"}
    rows = read_csv(out / "carphone_pristine.csv")
    columns = ["frame", "time_s", "face", "valence", "arousal", *EXPR_PROB_COLUMNS, "expression",
               *AU_PROB_COLUMNS, *AU_NAMES]
    assert list(rows[0]) == columns and len(rows) == 120
    record = read_record(out / "faces" / "cropped_aligned" / "carphone_pristine.json")
    assert [int(r["frame"]) for r in rows] == list(range(1, 121))
    np.testing.assert_allclose([float(r["time_s"]) for r in rows], record["times"], atol=1e-6)
    assert ([int(r["face"]) for r in rows]
            == [int(k in set(record["frames"])) for k in range(1, 121)])
    assert sum(int(r["face"]) for r in rows) >= 114
    va = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    expr = np.array([[float(r[c]) for c in EXPR_PROB_COLUMNS] for r in rows])
    au = np.array([[float(r[c]) for c in AU_PROB_COLUMNS] for r in rows])
    au_on = np.array([[int(r[a]) for a in AU_NAMES] for r in rows])
    assert np.abs(va).max() <= 1 and np.allclose(expr.sum(axis=1), 1, atol=1e-3)
    assert {r["expression"] for r in rows} <= set(EXPR_CLASSES) and ((au >= 0) & (au <= 1)).all()
    thresholds = np.array(load_run(trained[1]["au"]).postprocess.au_thresholds)
    margin = np.abs(au - thresholds) > 1e-4  # the CSV rounds probabilities to 4 decimals
    assert ((au >= thresholds) == au_on)[margin].all()  # the run's tuned thresholds

    empty = read_csv(out / "wall.csv")
    assert len(empty) == 10 and all(r["face"] == "0" for r in empty)  # all-absent rows, marked
    # filled as the submission writer fills
    assert all(r["valence"] and r["expression"] for r in empty)


def test_plots_page_and_rendered_video(analyzed):
    out, summary, _ = analyzed
    for video in ("carphone_pristine", "wall"):
        assert (out / f"{video}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert (page.count('src="data:image/png;base64,') == 2 and 'id="carphone_pristine"' in page
            and 'id="wall"' in page)
    assert 'href="carphone_pristine.mp4"' in page and 'href="wall.csv"' in page
    # a video without any face is marked: its rows are predictions from filled rows only
    assert '<a href="#wall">wall</a> (no face)' in page and "no face in any frame" in page
    assert '<a href="#carphone_pristine">carphone_pristine</a></td>' in page
    with av.open(str(out / "carphone_pristine.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 120 and frames[0].shape == (432, 528, 3)  # enlarged 3x for legible text
    with features.open_store(out / "features.zarr") as store:
        assert store.num_frames("carphone_pristine") == 120 and store.num_frames("wall") == 10
    assert summary["extraction"]["extracted"] == 2


def test_the_python_api_returns_the_tables_and_reuses_the_work(analyzed, carphone, trained):
    """A second run finds the faces and features done; its tables are the CSVs, and they are what
    the heads' own prediction path gives for the store."""
    out, _, wall = analyzed
    encoder, runs = trained
    config = AnalyzeConfig(encoder=str(encoder), heads=tuple(str(r) for r in runs.values()),
                           faces=FacesConfig(device="cpu"), workers=0, bf16=False)
    result = analyze([carphone, wall], out, config, progress=False)
    assert result["faces"]["skipped"] == 2 and result["extraction"]["extracted"] == 0
    table = result["tables"]["carphone_pristine"]
    rows = read_csv(out / "carphone_pristine.csv")
    np.testing.assert_allclose(table["valence"], [float(r["valence"]) for r in rows], atol=1e-4)
    assert list(table["expression"]) == [r["expression"] for r in rows]

    run = load_run(runs["va"])
    raw, pp = predict_videos([run], tables_for([run], [out / "features.zarr"]),
                             ["carphone_pristine"], torch.device("cpu"))
    np.testing.assert_allclose(table["valence"], pp.apply(raw["carphone_pristine"])[:, 0],
                               atol=1e-5)  # batching


def test_heads_of_another_encoder_or_twice_one_task_are_refused(carphone, trained, tmp_path):
    encoder, runs = trained
    other = make_encoder(tmp_path / "other.pt", seed=1)
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    for enc, heads, message in ((other, [runs["va"]], "checkpoint_sha256"),
                                (encoder, [runs["va"], runs["va"]], "both va runs"),
                                (tmp_path / "notes.txt", [runs["va"]], "is not a readable"),
                                (tmp_path, [runs["va"]], "a folder, not a checkpoint file")):
        result = CliRunner().invoke(cli, [str(a) for a in ["analyze", carphone, "--encoder", enc,
                                                            "--heads", *heads, "--out",
                                                            tmp_path / "out", *CPU]])
        assert (result.exit_code == 2 and result.output.count("\n") == 1
                and message in result.output), result.output
    assert not (tmp_path / "out").exists()  # refused before any work


def test_a_store_of_another_precision_is_extracted_afresh(analyzed, carphone, trained, tmp_path):
    """OUT/features.zarr is analyze's own cache: a run in another precision (or with another
    encoder) makes it again instead of refusing with extract's --overwrite advice."""
    out, _, wall = analyzed
    encoder, runs = trained
    again = Path(shutil.copytree(out, tmp_path / "out"))
    config = AnalyzeConfig(encoder=str(encoder), heads=(str(runs["va"]),),
                           faces=FacesConfig(device="cpu"), workers=0, bf16=True)
    result = analyze([carphone, wall], again, config, progress=False)
    assert result["faces"]["skipped"] == 2 and result["extraction"]["extracted"] == 2
    with features.open_store(again / "features.zarr") as store:
        assert store.attrs["compute_dtype"] == "bfloat16"


def test_heads_trained_on_two_stores_side_by_side_are_refused(tiny_root, carphone, trained,
                                                              tmp_path):
    encoder, _ = trained
    store = str(Path(trained[1]["va"]).parent / "tiny.zarr")
    cfg = TrainConfig.create(task="va", stores=(store, store), data=str(tiny_root), **HEAD)
    train_run(prepare(cfg), cfg, tmp_path / "two", progress=False, make_plots=False)
    result = CliRunner().invoke(cli, [str(a) for a in [
        "analyze", carphone, "--encoder", encoder, "--heads", tmp_path / "two", "--out",
        tmp_path / "out", *CPU]])
    assert (result.exit_code == 2 and "trained on 2 feature stores side by side" in result.output
            and result.output.count("\n") == 1), result.output
    assert not (tmp_path / "out").exists()


def test_refusals_leave_nothing_behind(carphone, trained, tmp_path):
    """Settings, inputs and the output folder are checked before any folder is made."""
    encoder, runs = trained
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notvideo.mp4").write_text("not a video")
    (tmp_path / "afile").write_text("mine")
    for video, out, options, message in (
            (carphone, tmp_path / "out", ["--detector", "retina"], "retina"),
            (tmp_path / "bad" / "notvideo.mp4", tmp_path / "out", [], "not a video"),
            (carphone, tmp_path / "afile", [], f"{tmp_path / 'afile'}: a file, not a folder")):
        result = CliRunner().invoke(cli, [str(a) for a in [
            "analyze", video, "--encoder", encoder, "--heads", runs["va"], "--out", out, *CPU,
            *options]])
        assert (result.exit_code == 2 and result.output.count("\n") == 1
                and message in result.output), result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bad"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_analyze_json_is_a_valid_config(analyzed, trained, tmp_path):
    """`--config OUT/analyze.json` gives the settings of the run that wrote it (its "analyze"
    part), as a run's config.json does."""
    _, _, wall = analyzed
    encoder, runs = trained

    def printed(*options):
        result = CliRunner().invoke(cli, [str(a) for a in [
            "analyze", wall, "--out", tmp_path / "again", *options, "--print-config"]])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    given = ["--encoder", encoder, "--heads", runs["va"], runs["au"], "--render", "--size", 96,
             *CPU]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [str(a) for a in ["analyze", wall, "--out", out, *given]])
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "analyze.json").read_text())["analyze"]
    assert printed("--config", out / "analyze.json") == printed(*given) == settings
    assert settings["render"] and settings["faces"]["size"] == 96


def test_output_beside_the_sources_is_never_read_as_input_nor_written_over_them(
        analyzed, trained, tmp_path, monkeypatch):
    _, _, wall = analyzed
    encoder, runs = trained
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(wall, videos / "wall.mp4")
    before = (videos / "wall.mp4").read_bytes()
    monkeypatch.chdir(tmp_path)  # paths as typed, relative
    relative = ["--encoder", os.path.relpath(encoder, tmp_path),
                "--heads", os.path.relpath(runs["va"], tmp_path)]

    def run(out, *options):
        return CliRunner().invoke(cli, [str(a) for a in [
            "analyze", "videos", "--out", out, *relative, *CPU, *options]])

    # --out the videos' folder (spelt another way): its outputs would mix with the videos
    result = run("videos/.", "--render")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--out videos is the videos' own folder videos" in result.output
    # a source given by name inside --out: the render would replace it
    result = CliRunner().invoke(cli, [str(a) for a in [
        "analyze", "videos/wall.mp4", "--out", "videos", *relative, *CPU, "--render"]])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "videos/wall.mp4: --render would write its rendered video over it" in result.output
    assert (videos / "wall.mp4").read_bytes() == before and sorted(
        p.name for p in videos.iterdir()) == ["wall.mp4"]
    (tmp_path / "link").symlink_to(videos)
    result = run("link", "--render")
    assert result.exit_code == 2 and "is the videos' own folder" in result.output, result.output
    # --out inside the videos' folder (the second time through a symlink): a rerun does not take
    # the first run's render or crops for input
    for out in ("videos/analysis", "link/analysis"):
        result = run(out, "--render", "--json")
        assert result.exit_code == 0, result.output
        assert "without a video suffix" not in result.output
    assert (videos / "wall.mp4").read_bytes() == before
    # the settings keep absolute paths: --config works from another folder
    settings = json.loads((videos / "analysis" / "analyze.json").read_text())["analyze"]
    assert Path(settings["encoder"]).is_absolute() and len(settings["heads"]) == 1
    assert Path(settings["encoder"]).resolve() == Path(encoder).resolve()
    assert Path(settings["heads"][0]).resolve() == Path(runs["va"]).resolve()


def test_damaged_input_is_named_in_the_summary_and_the_report(carphone, trained, tmp_path):
    """Frames are numbered as decoded, so the summary and the page say which videos lost frames."""
    encoder, runs = trained
    cut = cut_in_half(write_video(tmp_path / "whole.mp4", carphone_frames(carphone, 24)),
                      tmp_path / "cut.mp4")
    config = AnalyzeConfig(encoder=str(encoder), heads=(str(runs["va"]),),
                           faces=FacesConfig(device="cpu"), workers=0, bf16=False)
    result = analyze([cut], tmp_path / "out", config, progress=False)
    warnings = result["videos"]["cut"]["warnings"]
    assert len(warnings) == 1 and "of the 24 frames the container declares" in warnings[0]
    on_disk = json.loads((tmp_path / "out" / "analyze.json").read_text())
    assert on_disk["videos"]["cut"]["warnings"] == warnings
    assert on_disk["faces"]["warnings"] == {str(cut): warnings}
    page = (tmp_path / "out" / "report.html").read_text()
    assert "damaged input" in page and "of the 24 frames the container declares" in page
    rows = read_csv(tmp_path / "out" / "cut.csv")
    assert len(rows) == result["videos"]["cut"]["frames"] < 24


def test_a_video_whose_crops_are_made_again_is_extracted_again(analyzed, carphone, trained,
                                                               tmp_path, capsys):
    """Crops made again (their source changed: the user deleted the folder and record, as faces
    advises) are not paired with the store's features of the old crops."""
    out, _, wall = analyzed
    encoder, runs = trained
    again = Path(shutil.copytree(out, tmp_path / "out"))
    shutil.rmtree(again / "faces" / "cropped_aligned" / "wall", ignore_errors=True)
    (again / "faces" / "cropped_aligned" / "wall.json").unlink()
    config = AnalyzeConfig(encoder=str(encoder), heads=(str(runs["va"]),),
                           faces=FacesConfig(device="cpu"), workers=0, bf16=False)
    result = analyze([carphone, wall], again, config, progress=False)
    assert result["faces"]["written"] == 1 and result["extraction"]["extracted"] == 2
    assert "holds features of wall, whose crops were made again" in capsys.readouterr().err
