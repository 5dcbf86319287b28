"""The ``mae-affect`` command line: one click group, one subcommand per stage.

Each command only parses options and calls the library function a Python user would call. A stage's
options, their defaults and help come from its config dataclass (``pipeline.cli_config``), with
``--config FILE``, ``--set KEY=VALUE``, ``--preset NAME`` and ``--print-config`` beside them. Bad
input (an :class:`InputError` or a feature-store error) becomes one line on stderr and exit code 2;
any other exception is a bug and exits 1.
"""

import json
import os
from pathlib import Path

import click

from pipeline.cli_config import config_options
from pipeline.configs import (
    DemoConfig,
    ExtractConfig,
    FinetuneConfig,
    PretrainConfig,
    SynthConfig,
    TrainConfig,
)
from pipeline.configs.common import DEVICES
from pipeline.configs.heads import ABLATION_SEEDS
from pipeline.configs.video import AnalyzeConfig, FacesConfig
from pipeline.data.affwild2 import TASKS, TEST, VALIDATION
from pipeline.errors import InputError


def _user_errors() -> tuple[type[Exception], ...]:
    from features import StoreError

    return (InputError, StoreError)


# Commands that go on from their last checkpoint, or skip finished videos, when run again.
RESUMABLE = ("pretrain", "finetune", "extract", "faces", "analyze", "demo")


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit 2, never a traceback; a setting's error
    names the option, ``--set`` item, config file or preset that gave the value. A usage error
    (click's) is one line and exit 2 as well; Ctrl-C is one line and exit 130 (the shell's code for
    SIGINT)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # a group without its command: click shows the help
        except click.UsageError as err:  # the top level's own options (mae-affect --bogus)
            _usage_error(ctx, err)

    def resolve_command(self, ctx, args):
        from pipeline.distributed import check_single_process

        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:  # None while the shell completes a name
            check_single_process(command.name)  # train under torchrun: each rank would do it all
        return name, command, rest

    def invoke(self, ctx):
        from pipeline.cli_config import describe_error
        from pipeline.config import ConfigError

        rank = os.environ.get("RANK", "0")  # under torchrun every process gets here
        try:
            return super().invoke(ctx)
        except _user_errors() as err:
            text = describe_error(ctx, err) if isinstance(err, ConfigError) else str(err)
            # each process says it, ranks other than 0 named
            click.echo(f"{f'rank {rank}: ' if rank != '0' else ''}error: {' '.join(text.split())}",
                       err=True)
            ctx.exit(2)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:  # an unknown option, a missing argument: one line too
            _usage_error(ctx, err)
        except KeyboardInterrupt:
            if rank == "0":  # one line, though every rank is interrupted
                again = ("; the same command goes on from what was finished"
                         if ctx.invoked_subcommand in RESUMABLE else "")
                # after a line break: a progress bar may hold the line
                click.echo(f"\ninterrupted (Ctrl-C){again}", err=True)
            ctx.exit(130)


def _usage_error(ctx: click.Context, err: click.UsageError) -> None:
    """click's usage error as one line naming the help to read; exit 2."""
    where = err.ctx.command_path if err.ctx else ctx.command_path
    message = " ".join(err.format_message().split()).rstrip(".")
    click.echo(f"error: {message}; see '{where} -h'", err=True)
    ctx.exit(2)


def emit(result: dict, as_json: bool, table: str) -> None:
    """Print one JSON object (``--json``) or a readable table."""
    click.echo(json.dumps(result, sort_keys=True) if as_json else table)


def figures_table(result: dict, title: str = "") -> str:
    """A two-column table of a metric dict's numbers (score first)."""
    rows = [(k, v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows.sort(key=lambda kv: kv[0] != "score")
    width = max((len(k) for k, _ in rows), default=5)
    lines = [title] if title else []
    lines += [f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
              for k, v in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object instead of a table.")
data_option = click.option("--data", "data_root", required=True, type=click.Path(path_type=Path),
                           help="An Aff-Wild2-layout root.")
task_option = click.option("--task", required=True, type=click.Choice(TASKS))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-affect")
def cli():
    """MAE self-pretraining, expression fine-tuning, feature extraction and temporal heads
    for Aff-Wild2."""


@cli.command()
@task_option
@click.option("--pred", "pred_path", required=True, type=click.Path(path_type=Path),
              help="Submission-format CSV.")
@data_option
@click.option("--split", default=VALIDATION, show_default=True,
              help="Train_Set, Validation_Set (or Test_Set where ground truth exists).")
@json_option
def score(task, pred_path, data_root, split, as_json):
    """Score a submission-format prediction file against the annotations of a split."""
    from pipeline.data.affwild2 import AffWild2
    from pipeline.submission import score_submission

    result = score_submission(pred_path, task, AffWild2(data_root), split)
    emit(result, as_json, figures_table(result, f"{task} on {split} ({pred_path})"))


@cli.command("check-submission")
@click.argument("file", type=click.Path(path_type=Path))
@task_option
@click.option("--example", required=True, type=click.Path(path_type=Path),
              help="The organisers' example file.")
def check_submission_cmd(file, task, example):
    """Check a submission's header, rows, order and value ranges against the example file."""
    from pipeline.submission import check_submission

    problems = check_submission(file, task, example)
    if problems:
        raise InputError(problems[0]
                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    click.echo(f"{file}: valid {task} submission")


# --- MAE pretraining and Expr fine-tuning ---------------------------------------------------------
# Every option, its default and its help come from the stage's config dataclass
# (pipeline.cli_config).


@cli.command()
@config_options(PretrainConfig, "pretrain")
@json_option
def pretrain(settings, as_json):
    """MAE self-pretraining on folders of face images; resumes or extends OUT (torchrun: DDP)."""
    from pipeline.distributed import cleanup
    from pipeline.pretrain import pretrain as run_pretrain

    config = settings.build()
    try:
        result = run_pretrain(config, progress=not as_json)
    finally:
        cleanup()
    if result is not None:
        emit(result, as_json,
             figures_table(result, f"pretrained {config.out} ({result['checkpoint']})"))


@cli.command()
@config_options(FinetuneConfig, "finetune")
@json_option
def finetune(settings, as_json):
    """Fine-tune the encoder on per-frame Expr labels; keeps OUT/best.pt by validation macro F1
    (torchrun: DDP)."""
    from pipeline.distributed import cleanup
    from pipeline.finetune import finetune as run_finetune

    config = settings.build()
    try:
        result = run_finetune(config, progress=not as_json)
    finally:
        cleanup()
    if result is not None:
        emit(result, as_json, figures_table(
            result, f"fine-tuned {config.out} (best: {result['best_checkpoint']})"))


# --- synthetic data -------------------------------------------------------------------------------


@cli.command()
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Dataset root to create.")
@click.option("--workers", type=int, default=None,
              help="Rendering processes (default: chosen from the set's size and the cores).")
@config_options(SynthConfig, "synth", default_preset="demo")
@json_option
def synth(out, workers, settings, as_json):
    """Generate a synthetic mini-Aff-Wild2 in the exact Aff-Wild2 layout (deterministic
    for a seed)."""
    from pipeline.data.synth import generate

    result = generate(out, settings.build(), progress=not as_json, workers=workers)
    table = (f"{out}: already holds this dataset, left as it is" if result["skipped"] else
             f"wrote {result['videos']} videos, {result['frames']} frames "
             f"({result['images']} images) to {out} in {result['seconds']:.1f} s")
    emit(result, as_json, table)


# --- extraction ---------------------------------------------------------------------------------


@cli.command()
@config_options(ExtractConfig, "extract")
@json_option
def extract(settings, as_json):
    """Run the encoder once over every frame and write per-video features to a store (resumable)."""
    from pipeline.distributed import cleanup
    from pipeline.extract import extract as run_extract

    config = settings.build()
    try:
        result = run_extract(config, progress=not as_json)
    finally:
        cleanup()
    if result["rank"] == 0:
        emit(result, as_json, figures_table(
            {k: v for k, v in result.items() if k != "rank"},
            f"extracted into {config.store} (frames: those with a face image)"))


# --- raw videos: faces | analyze ------------------------------------------------------------------

video_inputs = click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
video_out = click.option("--out", required=True, type=click.Path(path_type=Path),
                         help="Output folder.")


@cli.command()
@video_inputs
@video_out
@config_options(FacesConfig, "faces")
@json_option
def faces(inputs, out, settings, as_json):
    """Detect, track and align the faces of VIDEO|DIR ... into OUT/cropped_aligned
    (resumable; torchrun)."""
    from pipeline.distributed import cleanup
    from pipeline.video.faces import faces as run_faces

    try:
        result = run_faces(list(inputs), out, settings.build(), progress=not as_json)
    finally:
        cleanup()
    if result["rank"] == 0:
        damaged = [f"damaged input, {Path(source).name}: {'; '.join(found)}"
                   for source, found in result["warnings"].items()]
        emit(result, as_json, "\n".join([
            f"{out}: {result['written']} video(s) written, {result['skipped']} already done, "
            f"{len(result['failed'])} unusable; {result['frames']} frames, {result['faces']} "
            f"faces, {result['frames_per_s']:.1f} frames/s", *damaged]))


class _ListedOptions(click.Command):
    """Lets ``--heads A B C`` stand for ``--heads A --heads B --heads C`` (values up to the
    next option)."""

    listed = ("--heads",)

    def parse_args(self, ctx, args):
        spread, current = [], None
        for arg in args:
            if arg == "--":
                current = None
            elif arg.startswith("-"):
                current = arg if arg in self.listed else None
                if current:
                    continue
            elif current:
                spread.append(current)
            spread.append(arg)
        return super().parse_args(ctx, spread)


@cli.command(cls=_ListedOptions)
@video_inputs
@video_out
@config_options(AnalyzeConfig, "analyze")
@json_option
def analyze(inputs, out, settings, as_json):
    """Per-frame valence, arousal, expression and AUs of VIDEO|DIR ...: a CSV and a PNG per video,
    report.html."""
    from pipeline.video.analyze import analyze as run_analyze

    result = run_analyze(list(inputs), out, settings.build(), progress=not as_json)
    result = {k: v for k, v in result.items() if k != "tables"}
    lines = [f"{name}: {v['frames']} frames, a face in {v['faces']} -> {Path(out) / v['csv']}"
             for name, v in result["videos"].items()]
    emit(result, as_json, "\n".join([*lines, f"report: {result['report']}"]))


# --- feature store: features info | verify | export -----------------------------------------------

store_argument = click.argument("store", type=click.Path(path_type=Path))
store_data_option = click.option(
    "--data", "data_root", type=click.Path(path_type=Path), default=None,
    help="An Aff-Wild2-layout root to compare the store with.")


@cli.group("features")
def features_group():
    """Inspect, check and convert feature stores."""


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


@features_group.command("info")
@store_argument
@store_data_option
@json_option
def features_info(store, data_root, as_json):
    """What made a store, its videos and frames, size on disk (per split with --data)."""
    import features

    with features.open_store(store) as s:
        result = s.info()
        if data_root is not None:
            from pipeline.data.affwild2 import AffWild2
            from pipeline.store_check import split_counts

            result["splits"] = split_counts(s, AffWild2(data_root))
    a = {k: "?" for k in features.IDENTITY_KEYS} | result["attrs"]  # "?": verify names it
    lines = [
        f"{result['path']}  ({result['format']}, {_size(result['bytes'])} on disk)",
        f"encoder     {a['encoder']}, pooling {a['pooling']}, input {a['input_size']}, "
        f"{a['feature_dim']} x {a['dtype']}, computed in {a.get('compute_dtype', '?')}",
        f"checkpoint  sha256 {a['checkpoint_sha256']}",
        f"created     {a.get('created')} by mae-affect {a.get('tool_version')}",
        f"videos      {result['videos']} complete, {result['incomplete_videos']} incomplete",
        f"frames      {result['frames']} ({result['present_frames']} with a face)",
    ]
    if result["listing_stale"]:
        lines.append("listing     stale: the consolidated listing plain zarr reads differs from "
                     "the groups (changed after consolidation); repair it with `mae-affect "
                     f"features consolidate {store}`")
    lines += [f"{k:<24}{c['videos']}/{c['annotated']} videos, {c['frames']} frames"
              for k, c in result.get("splits", {}).items()]
    emit(result, as_json, "\n".join(lines))


@features_group.command("verify")
@store_argument
@store_data_option
@json_option
@click.pass_context
def features_verify(ctx, store, data_root, as_json):
    """Check a store (complete videos, shapes, dtype, NaN/Inf; frame counts with --data); exit 1
    on problems."""
    import features

    expected = None
    if data_root is not None:
        from pipeline.data.affwild2 import AffWild2
        from pipeline.store_check import expected_frames

        expected = expected_frames(AffWild2(data_root))
    problems = features.verify_store(store, expected, progress=not as_json)
    result = {"store": str(store), "ok": not problems, "problems": problems}
    emit(result, as_json, "\n".join(problems) if problems else f"{store}: OK")
    if problems:
        ctx.exit(1)


@features_group.command("export")
@store_argument
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@json_option
def features_export(store, out, overwrite, as_json):
    """Copy STORE to OUT in the format of OUT's suffix (.zarr, .h5, .zarr.zip), values identical."""
    import features

    features.export_store(store, out, overwrite=overwrite, progress=not as_json)
    with features.open_store(out) as s:
        result = {k: v for k, v in s.info().items() if k != "attrs"}
    emit(result, as_json, f"wrote {out} ({result['format']}, {result['videos']} videos, "
                          f"{_size(result['bytes'])})")


@features_group.command("consolidate")
@store_argument
@json_option
def features_consolidate(store, as_json):
    """Rewrite a Zarr directory store's consolidated listing from its groups (after a hand edit or
    an unfinished writer left it stale)."""
    import features

    features.consolidate_store(store)
    emit({"store": str(store), "consolidated": True}, as_json,
         f"{store}: listing rewritten from its groups")


# --- temporal heads: train | evaluate | predict | ablate ------------------------------------------

HEAD_TASKS = click.Choice(TASKS)
heads_stores_option = click.option(
    "--store", "stores", multiple=True, type=click.Path(path_type=Path),
    help="Feature store; repeat to put several stores side by side (frames aligned).")


def _before_after(result: dict, title: str) -> str:
    before, after = result["before"], result["after"]
    names = [k for k, v in after.items() if isinstance(v, float)]
    width = max(len(n) for n in names)
    lines = [title, f"{'':<{width}}  {'before':>8}  {'after':>8}"]
    lines += [f"{n:<{width}}  {before[n]:8.4f}  {after[n]:8.4f}"
              for n in sorted(names, key=lambda n: n != "score")]
    lines.append("post-processing: "
                 f"{json.dumps({k: v for k, v in result['postprocess'].items() if k != 'task'})}")
    return "\n".join(lines)


@cli.command()
@click.argument("task", type=HEAD_TASKS)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@config_options(TrainConfig, "heads", skip=("task",), default_preset="paper")
@json_option
def train(task, out, settings, as_json):
    """Train a temporal head for TASK on cached features; best epoch by the official
    validation metric."""
    from pipeline.heads.train import train as run_train

    result = run_train(settings.build(task=task), out, progress=not as_json)
    emit(result, as_json, _before_after(
        result, f"{task} run {out}: best epoch {result['best_epoch']}, validation"))


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory of `train`.")
@click.option("--split", default=None,
              help="Default: the run's validation videos; or Train_Set, Validation_Set, Test_Set.")
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path),
              help="Default: the run's.")
@heads_stores_option
@click.option("--device", default=DEVICES[0], show_default=True, type=click.Choice(DEVICES))
@json_option
def evaluate(run_dir, split, data_root, stores, device, as_json):
    """Official figures of a run on whole videos, before and after its post-processing."""
    from pipeline.heads.evaluate import evaluate_run

    result = evaluate_run(run_dir, split, data_root, stores or None, device, progress=not as_json)
    emit(result, as_json, _before_after(
        result, f"{result['task']} run {run_dir} on {result['split']} "
                f"({result['videos']} videos, epoch {result['epoch']})"))


@cli.command()
@click.option("--run", "run_dirs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Run directory; repeat to average an ensemble.")
@click.option("--split", default=TEST, show_default=True,
              help="test (the example file's rows) or an annotated split.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Submission CSV to write.")
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path),
              help="Default: the first run's.")
@heads_stores_option
@click.option("--device", default=DEVICES[0], show_default=True, type=click.Choice(DEVICES))
@json_option
def predict(run_dirs, split, out, data_root, stores, device, as_json):
    """Write a challenge submission file from one run or the average of several."""
    from pipeline.heads.predict import predict as run_predict

    result = run_predict(run_dirs, out, split, data_root, stores or None, device,
                         progress=not as_json)
    emit(result, as_json,
         f"wrote {result['out']}: {result['rows']} rows of {result['videos']} videos "
         f"({result['task']}, {split}, {len(result['runs'])} run(s))")


@cli.command()
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="A setting and its values, e.g. model=temporal_tcn,temporal_transformer "
                   "(repeatable).")
@click.option("--seeds", default=ABLATION_SEEDS, show_default=True,
              help="Seeds per combination.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for the runs and tables.")
@config_options(TrainConfig, "heads", default_preset="paper")
@json_option
def ablate(grid, seeds, out, settings, as_json):
    """Train every grid combination for several seeds on data loaded once; print a
    Markdown table."""
    from pipeline.heads.ablate import ablate as run_ablate
    from pipeline.heads.ablate import parse_grid

    result = run_ablate(settings.values(), parse_grid(grid), out, seeds, progress=not as_json)
    emit(result, as_json,
         result["markdown"].rstrip() + f"\n\nwrote {out}/ablation.md, ablation.csv, runs.csv")


# --- demo and report ------------------------------------------------------------------------------


@cli.command()
@config_options(DemoConfig, "demo")
@json_option
def demo(settings, as_json):
    """The whole method on the synthetic dataset: every stage, the ablation table, test files,
    report.html."""
    from pipeline.demo import closing_table, run_demo

    config = settings.build()
    figures = run_demo(config, progress=not as_json)
    emit(figures, as_json, closing_table(figures, Path(config.out)))


@cli.command()
@click.option("--runs", "run_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A demo directory, or pretraining, fine-tuning and head runs (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for report.html.")
def report(run_dirs, out):
    """Write one self-contained HTML page (plots embedded) about the given runs."""
    from pipeline.report import write_report

    path = write_report(Path(out) / "report.html", runs=list(run_dirs))
    click.echo(f"wrote {path}")


def main():
    cli(prog_name="mae-affect")


if __name__ == "__main__":
    main()
