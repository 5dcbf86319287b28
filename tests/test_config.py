"""Settings written once: every field of every stage config is reachable from its command, a run's
own config.json is a valid --config, layers win in order, and a bad value is named where it was
given."""

import json
import typing
from dataclasses import MISSING

import pytest
from click.testing import CliRunner

from cli import cli
from pipeline import config
from pipeline.cli_config import option_name
from pipeline.configs import (
    AnalyzeConfig,
    DemoConfig,
    ExtractConfig,
    FacesConfig,
    FinetuneConfig,
    PretrainConfig,
    SynthConfig,
    TrainConfig,
)
from pipeline.runs import to_jsonable

# command -> (config class, arguments the command needs besides the settings, settings it takes
# another way)
COMMANDS = {
    "pretrain": (PretrainConfig, [], ()),
    "finetune": (FinetuneConfig, ["--init", "probe-start.pt"], ()),
    "extract": (ExtractConfig, [], ()),
    "synth": (SynthConfig, ["--out", "unused"], ()),
    "train": (TrainConfig, ["va", "--out", "unused"], ("task",)),
    "ablate": (TrainConfig, ["--out", "unused", "--task", "expr"], ()),
    "demo": (DemoConfig, [], ()),
    "faces": (FacesConfig, ["clip.mp4", "--out", "unused"], ()),
    "analyze": (AnalyzeConfig, ["clip.mp4", "--out", "unused"], ()),
}
# Values a field's type alone cannot suggest (a list of known names).
SAMPLES = {"splits": ("Train_Set", "test"), "task": "au", "jpeg_quality": 80,
           "img_size": 112, "patch_size": 16}  # the side a multiple of the patch


def sample(name: str, f, kind):
    """A valid value of the field that differs from its default."""
    if name in SAMPLES:
        return SAMPLES[name]
    base, _ = config._optional(kind)
    default = config.default_of(f)
    choices = f.metadata.get(config.CHOICES)
    if choices:
        return next(c for c in choices if c != default)
    if base is bool:
        return not default
    if base is int:
        return 3 if default in (None, MISSING) else max(1, default * 2)
    if base is float:
        return 0.5 if default != 0.5 else 0.25
    if base is str:
        return "somewhere"
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if args[0] is str:
            return ("a", "b")
        if args[1] is Ellipsis:
            return (8, 4)
        return (0.5, 0.9)
    return None  # dicts: files and --set only


def as_args(flag: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return [a for v in value for a in (flag, v)]
    if isinstance(value, tuple) and isinstance(value[0], int):
        return [flag, "-".join(map(str, value))]
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def printed(command: str, args: list[str]) -> dict:
    result = CliRunner().invoke(cli, [command, *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return config.flatten(COMMANDS[command][0], json.loads(result.output))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_is_reachable_from_its_command(command):
    cls, fixed, skip = COMMANDS[command]
    reached = []
    for name, (f, kind) in config.settable(cls).items():
        if name in skip:
            continue
        value = sample(name, f, kind)
        # a dict: --set takes JSON-free text only for scalars; the file layer covers it
        if value is None:
            continue
        got = printed(command, [*fixed, *as_args(option_name(f), value)])
        assert got[name] == (list(value) if isinstance(value, tuple) else value), (
            command, name, got[name])
        reached.append(name)
    assert reached, command


def test_a_runs_config_json_is_a_valid_config_and_layers_win_in_order(tmp_path):
    run_config = tmp_path / "config.json"  # as `pretrain` writes it: the settings under "pretrain"
    settings = {**json.loads(json.dumps(to_jsonable(config.preset(PretrainConfig, "demo")))),
                "images": ["faces"], "epochs": 5}
    run_config.write_text(json.dumps({"pretrain": settings, "model_config": {"embed_dim": 192},
                                      "peak_lr": 1e-3, "epochs_history": []}))
    got = printed("pretrain", ["--config", str(run_config)])
    # its out is the folder it lies in: the run, wherever it moved since
    assert got == {**settings, "out": str(tmp_path.resolve())}
    assert printed("pretrain", ["--config", str(run_config), "--out", "new"])["out"] == "new"
    # a user's own file of several stages' settings, named config.json: its out is kept
    shared = tmp_path / "exp" / "config.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"pretrain": {"out": "runs/mae"}, "finetune": {"out": "runs/ft"}}))
    assert printed("pretrain", ["--config", str(shared)])["out"] == "runs/mae"
    got = printed("pretrain",
                  ["--config", str(run_config), "--set", "epochs=7", "--set", "lr=none"])
    assert (got["epochs"], got["lr"]) == (7, None)
    got = printed("pretrain", ["--config", str(run_config), "--set", "epochs=7", "--epochs", "9"])
    # an option given wins over --set, --set over the file, the file over a preset
    assert got["epochs"] == 9
    got = printed("pretrain", ["--preset", "demo", "--config", str(run_config)])
    assert got["epochs"] == 5

    # a head run's config.json: nested head sizes, set by their own names
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps(to_jsonable(
        TrainConfig.create(task="va", d_model=64, num_heads=2))))
    got = printed("train", ["va", "--out", "x", "--config", str(heads)])
    assert got["d_model"] == 64 and got["num_heads"] == 2


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "error: --epochs 0: use 1 or more"),
    (["--set", "epochs=0"], "error: --set epochs 0: use 1 or more"),
    (["--set", "epoch=3"], "error: --set epoch is not a setting"),
    (["--set", "epochs=many"], "error: --set epochs 'many' is not a valid int"),
    (["--set", "epochs"], "error: --set 'epochs': use KEY=VALUE"),
    (["--crop-scale", "0.9", "0.2"], "error: --crop-scale 0.9 0.2: need 0 < MIN <= MAX <= 1"),
])
def test_a_bad_setting_is_named_where_it_was_given(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["pretrain", "--images", str(tmp_path), "--out",
                                      str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "r").exists()


def test_a_bad_config_file_is_named_with_its_key(tmp_path):
    path = tmp_path / "run.json"
    for content, message in (
            (json.dumps({"pretrain": {"epochs": 0}}), f"error: {path}: epochs 0: use 1 or more"),
            (json.dumps({"epoch": 3}), f"error: {path}: epoch is not a setting"),
            ("{not json", f"error: {path}: not a JSON config file"),
            ("[1, 2]", f"error: {path}: holds a JSON list"),
            # another stage's run config.json
            (json.dumps({"finetune": {"epochs": 3}, "train_frames": 10}),
             f"error: {path}: a finetune run's config (its settings are under \"finetune\", there "
             "is no \"pretrain\" part)"),
            # a head run's config.json (its settings at the top)
            (json.dumps(to_jsonable(TrainConfig.create(task="va"))),
             f"error: {path}: a heads config: its keys task, stores, data, ... are heads "
             "settings, not pretrain ones"),
            # misspelt keys of no stage: each is named with what is settable
            (json.dumps({"epoch": 3, "lrr": 1e-3, "batchsize": 8, "seed": 1}),
             f"error: {path}: epoch is not a setting; settable: accum_iter")):
        path.write_text(content)
        result = CliRunner().invoke(cli, ["pretrain", "--config", str(path), "--out",
                                          str(tmp_path / "r")])
        assert result.exit_code == 2 and result.output.startswith(message), result.output
    result = CliRunner().invoke(cli, ["pretrain", "--config", str(tmp_path / "none.json")])
    assert (result.exit_code == 2 and "config file" in result.output
            and "does not exist" in result.output)


def test_a_nested_config_is_not_taken_for_another_stage(tmp_path):
    path = tmp_path / "analyze.json"  # analyze's own settings hold a "faces" part
    path.write_text(json.dumps({"faces": {"size": 96}}))
    assert config.read_config_file(path, AnalyzeConfig, "analyze") == {"size": 96}


@pytest.mark.parametrize("cls, values, message", [
    (TrainConfig, dict(task="va", lr=-1.0), "lr -1.0: use a positive lr"),
    (TrainConfig, dict(task="va", lr=0.0), "lr 0.0: use a positive lr"),  # ablate's lr=0
    (TrainConfig, dict(task="va", weight_decay=-1.0), "weight_decay -1.0: use 0 or more"),
    (TrainConfig, dict(task="va", dropout=1.5), "dropout 1.5: must lie in"),
    (FinetuneConfig, dict(lr=float("nan")), "lr nan: use a positive lr"),
    (FinetuneConfig, dict(drop_path_rate=1.0), "drop_path_rate 1.0: must lie in"),
    (PretrainConfig, dict(blr=0.0), "blr 0.0: use a positive base lr"),
    (PretrainConfig, dict(warmup_epochs=-1), "warmup_epochs -1: use 0 or more"),
])
def test_optimizer_settings_out_of_range_are_refused_by_name(cls, values, message):
    """Values PyTorch would refuse with a traceback, or (lr 0) train nothing with."""
    with pytest.raises(config.ConfigError, match=f"^{message}"):
        config.build(cls, values)


def test_library_errors_speak_in_field_names():
    with pytest.raises(config.ConfigError,
                       match="^mask_ratio 1.5 must lie strictly between 0 and 1$"):
        PretrainConfig(mask_ratio=1.5)
    with pytest.raises(config.ConfigError, match="^pooling 'max' is not one of cls, mean$"):
        FinetuneConfig(pooling="max")
    with pytest.raises(config.ConfigError, match="^task is required"):
        config.build(TrainConfig, {})
    # the paper's preset is the defaults
    assert config.preset(PretrainConfig, "paper") == PretrainConfig()


def test_text_lists_keep_their_paths_and_number_lists_split():
    """--set images=/data/aw2 is one folder (paths split on commas only); number lists still
    take 768-256-128 and 768/256/128; a number in a JSON file fits a text setting ("subjects": 2
    as --subjects 2)."""
    build = lambda cls, **values: config.build(cls, values)  # noqa: E731
    assert build(PretrainConfig, images="/data/aw2/cropped_aligned").images == (
        "/data/aw2/cropped_aligned",)
    assert build(PretrainConfig, images="/data/a, /data/b").images == ("/data/a", "/data/b")
    assert build(AnalyzeConfig, heads="runs/demo/heads/va/full-model").heads == (
        "runs/demo/heads/va/full-model",)
    assert build(TrainConfig, task="va", tcn_channels="768/256/128").head.tcn_channels == (
        768, 256, 128)
    assert build(TrainConfig, task="va", tcn_channels="64-32").head.tcn_channels == (64, 32)
    assert build(FacesConfig, subjects=2).subjects == "2"
