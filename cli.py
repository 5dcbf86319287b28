"""The ``mae-affect`` command line: one click group, one subcommand per stage.

Each command only parses options and calls the library function a Python user would call. Bad input
(an :class:`InputError` or a feature-store error) becomes one line on stderr and exit code 2; any other
exception is a bug and exits 1.
"""

import json
from pathlib import Path

import click

from pipeline.errors import InputError


def _user_errors() -> tuple[type[Exception], ...]:
    from features import StoreError

    return (InputError, StoreError)


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _user_errors() as err:
            message = " ".join(str(err).split())
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)


def emit(result: dict, as_json: bool, table: str) -> None:
    """Print one JSON object (``--json``) or a readable table."""
    click.echo(json.dumps(result, sort_keys=True) if as_json else table)


def figures_table(result: dict, title: str = "") -> str:
    """A two-column table of a metric dict's numbers (score first)."""
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows.sort(key=lambda kv: kv[0] != "score")
    width = max((len(k) for k, _ in rows), default=5)
    lines = [title] if title else []
    lines += [f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
data_option = click.option(
    "--data", "data_root", required=True, type=click.Path(path_type=Path), help="An Aff-Wild2-layout root."
)
task_option = click.option("--task", required=True, type=click.Choice(["va", "expr", "au"]))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mae-affect")
def cli():
    """MAE self-pretraining, expression fine-tuning, feature extraction and temporal heads for Aff-Wild2."""


@cli.command()
@task_option
@click.option("--pred", "pred_path", required=True, type=click.Path(path_type=Path), help="Submission-format CSV.")
@data_option
@click.option("--split", default="Validation_Set", show_default=True, help="Train_Set, Validation_Set (or Test_Set where ground truth exists).")
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
@click.option("--example", required=True, type=click.Path(path_type=Path), help="The organisers' example file.")
def check_submission_cmd(file, task, example):
    """Check a submission's header, rows, order and value ranges against the example file."""
    from pipeline.submission import check_submission

    problems = check_submission(file, task, example)
    if problems:
        raise InputError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    click.echo(f"{file}: valid {task} submission")


def main():
    cli(prog_name="mae-affect")


if __name__ == "__main__":
    main()
