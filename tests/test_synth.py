"""The synthetic mini-Aff-Wild2: determinism, the release layout and its quirks, the reader agreeing
with synth.json, the hidden state's properties, and a renderer on which every AU shows."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.config import preset
from pipeline.configs import SynthConfig
from pipeline.data.affwild2 import AU_NAMES, CHALLENGE_DIRS, HEADERS, TASKS, AffWild2
from pipeline.data.faces import FaceRenderer, FrameParams, sample_identity, sample_scene
from pipeline.data.synth import (
    ANNOTATION_DIR,
    EXAMPLE_FILES,
    EXAMPLE_VALUES,
    GROUND_TRUTH_DIR,
    IMAGE_ROOTS,
    MIN_VIDEOS,
    SPLITS,
    TEST_LIST_DIR,
    TEST_LISTS,
    generate,
    merge_short_runs,
    plan_videos,
    simulate,
)
from pipeline.errors import InputError

SMALL = replace(preset(SynthConfig, "tiny"), videos=6, frames_per_video=60, img_size=32)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def annotation_path(root: Path, task: str, split: str, video: str) -> Path:
    base = root / GROUND_TRUTH_DIR if split == "Test_Set" else root / ANNOTATION_DIR
    return base / CHALLENGE_DIRS[task][0] / split / f"{video}.txt"


@pytest.fixture(scope="module")
def meta(tiny_root) -> dict:
    return json.loads((tiny_root / "synth.json").read_text())


def test_same_seed_same_bytes_in_any_worker_count_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", SMALL, progress=False, workers=1)
    generate(tmp_path / "b", SMALL, progress=False, workers=2)
    generate(tmp_path / "c", replace(SMALL, seed=1), progress=False)
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db
    assert da != dc and set(da.values()).isdisjoint(h for k, h in dc.items() if k.endswith(".jpg"))
    target = SMALL.videos * SMALL.frames_per_video  # the 40-frame minimum length can add a little
    assert target <= a["frames"] <= 1.2 * target and not a["skipped"]


def test_rerun_is_a_no_op_and_a_foreign_folder_is_refused(tmp_path):
    root = tmp_path / "d"
    generate(root, SMALL, progress=False)
    before = digest(root)
    assert generate(root, SMALL, progress=False)["skipped"]
    assert digest(root) == before
    with pytest.raises(InputError, match="another config"):
        generate(root, replace(SMALL, seed=5), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        generate(tmp_path / "busy", SMALL, progress=False)
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("bad,names", [
    ({"videos": 4}, "too few"), ({"img_size": 8}, "too small"),
    ({"pairs": 5, "videos": 8}, "videos 8 is fewer than the 10 that pairs 5 make"),
    ({"videos": 1}, "videos 1 is fewer"), ({"pairs": -1}, "pairs -1: use 0 or more"),
    ({"people": 0}, "use 1 or more"),
    ({"scenes": 0}, "use 1 or more"),
    ({"videos": 60, "val_fraction": 0.6, "test_fraction": 0.6}, "leaves no video for Train_Set"),
    ({"val_fraction": 0.0}, "between 0 and 1"), ({"task_prob": 1.5}, "a chance from 0 to 1")])
def test_unusable_configs_are_input_errors(bad, names):
    """Refused as the config is made (so --print-config refuses them too), by the setting's name."""
    with pytest.raises(InputError, match=names):
        replace(preset(SynthConfig, "tiny"), **bad)


def test_workers_below_one_are_refused(tmp_path):
    with pytest.raises(InputError, match="--workers 0: use 1 or more"):
        generate(tmp_path / "d", preset(SynthConfig, "tiny"), progress=False, workers=0)
    assert not (tmp_path / "d").exists()


def test_help_shows_the_default_presets_values():
    shown = CliRunner().invoke(cli, ["synth", "--help"], terminal_width=200).output
    assert "[default: 114]" in shown and "[default: 38]" not in shown  # the demo preset's videos


def test_release_layout(tiny_root, meta):
    for folder in IMAGE_ROOTS:
        assert any((tiny_root / folder).iterdir()), folder
    for task in TASKS:
        for split in SPLITS:
            names = meta["splits"][task][split]
            assert len(names) >= MIN_VIDEOS[split], (task, split)
            for name in names:
                path = annotation_path(tiny_root, task, split, name)
                lines = path.read_bytes().decode().splitlines()
                if not lines[-1]:
                    lines.pop()
                assert lines[0] == ",".join(HEADERS[task])
                assert len(lines) - 1 == meta["videos"][name]["frames"]
        assert not (tiny_root / GROUND_TRUTH_DIR / CHALLENGE_DIRS[task][0] / "Train_Set").exists()
        listed = (tiny_root / TEST_LIST_DIR / TEST_LISTS[task]).read_text().split()
        assert listed == meta["splits"][task]["Test_Set"]
    for name, video in meta["videos"].items():
        files = sorted((tiny_root / video["image_root"] / name).iterdir())
        assert len(files) == video["images"]
        assert all(len(f.stem) == 5 and f.stem.isdigit() and f.suffix == ".jpg" for f in files)
        assert int(files[-1].stem) == video["last_image"] <= video["frames"]


def test_quirks_of_the_release_are_present(tiny_root, meta):
    videos = meta["videos"].values()
    assert any(v["images"] < v["last_image"] - v["first_image"] + 1 for v in videos), "no gaps"
    assert any(v["last_image"] < v["frames"] for v in videos), (
        "annotation longer than the last image")
    assert {v["image_root"] for v in videos} == set(IMAGE_ROOTS)
    lengths = sorted(v["frames"] for v in videos)
    assert lengths[0] < 300 and lengths[-1] > 1.5 * lengths[-2]
    pairs = [n[:-len("_left")] for n in meta["videos"] if n.endswith("_left")]
    assert pairs
    for source in pairs:
        left, right = meta["videos"][source + "_left"], meta["videos"][source + "_right"]
        assert left["split"] == right["split"] and left["frames"] == right["frames"]
        assert left["identity"] != right["identity"] and left["scene"] == right["scene"]
    raw = [p.read_bytes() for p in (tiny_root / ANNOTATION_DIR).rglob("*.txt")]
    assert any(b"\r\n" in r for r in raw)
    assert any(r.endswith((b"\n\n", b"\r\n\r\n")) for r in raw)
    text = b"".join(raw).decode()
    assert "\n-5,-5" in text.replace("\r", "") and "\n-1\n" in text.replace("\r", "")
    assert ",".join(["-1"] * len(AU_NAMES)) in text


def test_example_files_list_every_frame_in_order(tiny_root, meta):
    for task in TASKS:
        lines = (tiny_root / EXAMPLE_FILES[task]).read_text().splitlines()
        assert lines[0] == ",".join(("image_location", *HEADERS[task]))
        expected = [f"{v}/{k:05d}.jpg" for v in meta["splits"][task]["Test_Set"]
                    for k in range(1, meta["videos"][v]["frames"] + 1)]
        assert [line.split(",")[0] for line in lines[1:]] == expected
        assert {line.split(",", 1)[1] for line in lines[1:]} == {EXAMPLE_VALUES[task]}


def test_reader_loads_tiny_and_agrees_with_synth_json(tiny_root, meta):
    ds = AffWild2(tiny_root)
    assert set(ds.videos) == set(meta["videos"])
    for name, video in ds.videos.items():
        assert len(video.frames) == meta["videos"][name]["images"]
        assert video.last_frame == meta["videos"][name]["last_image"]
    for task in TASKS:
        assert ds.test_videos(task) == meta["splits"][task]["Test_Set"]
        assert ds.example_submission(task).name == EXAMPLE_FILES[task]
        for split in SPLITS[:2]:
            anns = ds.annotations(task, split)
            assert sorted(anns) == sorted(meta["splits"][task][split])
            for name, ann in anns.items():
                want = meta["videos"][name]["labels"][task]
                assert ann.num_frames == want["rows"] == ds.num_frames(name)
                assert ann.valid.sum() == want["valid"]
                ok = ann.labels[ann.valid]
                if task == "va":
                    np.testing.assert_allclose(ok.mean(axis=0), want["mean"], atol=1e-5)
                elif task == "expr":
                    assert np.bincount(ok, minlength=8).tolist() == want["counts"]
                else:
                    assert ok.sum(axis=0).tolist() == want["positives"]


@pytest.mark.parametrize("name", ["tiny", "demo", "bench"])
def test_every_split_of_every_task_is_populated(name):
    plans = plan_videos(preset(SynthConfig, name))
    assert len(plans) == preset(SynthConfig, name).videos
    for task in TASKS:
        for split, need in MIN_VIDEOS.items():
            assert sum(task in p.tasks and p.split == split for p in plans) >= need, (task, split)
    sources = {}
    for p in plans:
        sources.setdefault(p.source, set()).add((p.split, p.tasks, p.frames))
    assert all(len(v) == 1 for v in sources.values()), (
        "a pair's two subjects differ in split or tasks")


def test_people_and_scenes_limit_the_cast_and_the_sets_and_change_nothing_else():
    default = plan_videos(preset(SynthConfig, "tiny"))
    assert len({p.identity for p in default}) == len(default)  # a new person per video
    assert len({p.scene for p in default}) == len({p.source for p in default})  # a scene per source
    three = plan_videos(replace(preset(SynthConfig, "tiny"), people=3))
    assert [p.identity for p in three] == [default[k % 3].identity for k in range(len(three))]
    one = plan_videos(replace(preset(SynthConfig, "tiny"), people=1, scenes=1))
    assert len({p.identity for p in one}) == 1 and len({p.scene for p in one}) == 1
    assert one[0].scene == default[0].scene
    rest = [(p.name, p.split, p.frames, p.tasks, p.image_root) for p in default]
    assert [(p.name, p.split, p.frames, p.tasks, p.image_root) for p in one] == rest


def test_short_expression_runs_join_a_long_one():
    def runs(labels):
        expr = merge_short_runs(np.repeat(*np.array(labels).T), min_run=10)
        starts = np.flatnonzero(np.diff(expr, prepend=-1))
        return [(int(expr[s]), int(n))
                for s, n in zip(starts, np.diff(np.append(starts, len(expr))))]

    # two short runs at the start used to merge into each other and stay short
    assert runs([(1, 3), (2, 6), (3, 20), (4, 4), (5, 12)]) == [(3, 33), (5, 12)]
    assert runs([(1, 12), (2, 3), (3, 3), (1, 12)]) == [(1, 30)]
    assert runs([(1, 4), (2, 6), (3, 5)]) == [(2, 15)]  # no long run: the longest takes the video


def test_hidden_state_runs_and_ranges():
    cfg = preset(SynthConfig, "demo")
    plans = plan_videos(cfg)
    train_classes = np.zeros(8, int)
    for p in plans[:12] + [p for p in plans if p.split == "Train_Set" and "expr" in p.tasks]:
        tl = simulate(p, cfg)
        assert np.abs(tl.valence).max() <= 1 and np.abs(tl.arousal).max() <= 1
        starts = np.flatnonzero(np.diff(tl.expr, prepend=-1))
        assert np.diff(np.append(starts, len(tl.expr))).min() >= 10  # expression runs last
        assert tl.face.any() and tl.invalid["va"].shape == (p.frames,)
        if p.split == "Train_Set" and "expr" in p.tasks:
            train_classes += np.bincount(tl.expr[~tl.invalid["expr"]], minlength=8)
    assert (train_classes > 0).all(), train_classes


def test_every_action_unit_valence_and_arousal_change_the_face():
    rng = np.random.default_rng(0)
    renderer = FaceRenderer(sample_identity(rng), sample_scene(rng), 64)

    def draw(valence=0.0, arousal=0.0, au=None) -> np.ndarray:
        au = np.zeros(12) if au is None else au
        f = FrameParams(valence, arousal, au, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0, 1.0,
                        0.0, None)
        return renderer.render(f, np.random.default_rng(1)).astype(float)  # same noise every call

    neutral = draw()
    assert neutral.shape == (64, 64, 3)
    for j, name in enumerate(AU_NAMES):
        au = np.zeros(12)
        au[j] = 1.0
        assert np.abs(draw(au=au) - neutral).mean() > 0.05, name
    assert np.abs(draw(valence=1.0) - draw(valence=-1.0)).mean() > 0.05
    assert np.abs(draw(arousal=1.0) - draw(arousal=-1.0)).mean() > 0.05


@pytest.mark.parametrize("args, message", [
    (["--pairs", "100"], "error: --pairs 100 make 200 videos"),  # the preset's 114 videos
    (["--videos", "1"], "error: --videos 1 is fewer than the 6 that pairs 3 make"),
])
def test_of_two_clashing_settings_the_one_given_is_named(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 2 and result.stderr.startswith(message), result.stderr
    assert not (tmp_path / "d").exists()
