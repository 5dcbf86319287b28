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


# --- MAE pretraining ------------------------------------------------------------------------------
# Defaults are PretrainConfig's (the paper's); tests/test_pretrain.py checks that they agree.


@cli.command()
@click.option("--images", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A folder of face images, searched recursively for jpg/png; repeat for more folders.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory (rerun to resume).")
@click.option("--model", default="mae_vit_base_patch16", show_default=True, help="Registered MAE model.")
@click.option("--img-size", default=224, show_default=True)
@click.option("--epochs", default=500, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Per process.")
@click.option("--accum-iter", default=16, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--blr", "--base-lr", "blr", default=1.25e-4, show_default=True,
              help="Base lr: lr = blr * effective batch / 256.")
@click.option("--lr", default=None, type=float, help="Absolute lr (overrides --blr).")
@click.option("--warmup-epochs", default=40, show_default=True)
@click.option("--mask-ratio", default=0.75, show_default=True)
@click.option("--norm-pix-loss/--no-norm-pix-loss", default=True, show_default=True)
@click.option("--decoder-dim", default=None, type=int, help="Decoder width (default: the model's).")
@click.option("--decoder-depth", default=None, type=int, help="Decoder blocks (default: the model's).")
@click.option("--decoder-heads", default=None, type=int, help="Decoder heads (default: the model's).")
@click.option("--max-images", default=None, type=int, help="Train on a seeded random subset of this size.")
@click.option("--workers", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast (CUDA, and CPUs with native bf16).")
@json_option
def pretrain(images, out, model, img_size, epochs, batch_size, accum_iter, blr, lr, warmup_epochs, mask_ratio,
             norm_pix_loss, decoder_dim, decoder_depth, decoder_heads, max_images, workers, seed, device, bf16,
             as_json):
    """MAE self-pretraining on folders of face images; resumes from OUT/checkpoint-last.pt (torchrun: DDP)."""
    from pipeline.distributed import cleanup
    from pipeline.pretrain import PretrainConfig
    from pipeline.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        images=tuple(str(p) for p in images), out=str(out), model=model, img_size=img_size, epochs=epochs,
        batch_size=batch_size, accum_iter=accum_iter, blr=blr, lr=lr, warmup_epochs=warmup_epochs,
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss, decoder_dim=decoder_dim,
        decoder_depth=decoder_depth, decoder_heads=decoder_heads, max_images=max_images, workers=workers,
        seed=seed, device=device, bf16=bf16,
    )
    try:
        result = run_pretrain(config, progress=not as_json)
    finally:
        cleanup()
    if result is not None:
        emit(result, as_json, figures_table(result, f"pretrained {out} ({result['checkpoint']})"))


# --- extraction ---------------------------------------------------------------------------------


@cli.command()
@data_option
@click.option("--ckpt", required=True, type=click.Path(path_type=Path), help="Encoder checkpoint (fine-tuned, MAE, official MAE .pth, timm).")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="Feature store: DIR.zarr (default) or FILE.h5.")
@click.option("--format", "fmt", type=click.Choice(["zarr", "hdf5"]), default=None, help="Store format; default from the suffix (zarr unless .h5).")
@click.option("--splits", multiple=True, default=("all",), show_default=True, help="all, Train_Set, Validation_Set, test (repeatable).")
@click.option("--pooling", type=click.Choice(["cls", "mean"]), default=None, help="Default: the checkpoint's pooling.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast (CUDA, and CPUs with native bf16).")
@click.option("--overwrite", is_flag=True, help="Delete an existing store and start afresh.")
@json_option
def extract(data_root, ckpt, store_path, fmt, splits, pooling, dtype, batch_size, workers, device, bf16,
            overwrite, as_json):
    """Run the encoder once over every frame and write per-video features to a store (resumable)."""
    from pipeline.extract import ExtractConfig
    from pipeline.extract import extract as run_extract

    config = ExtractConfig(batch_size=batch_size, workers=workers, dtype=dtype, pooling=pooling,
                           splits=tuple(splits), bf16=bf16, device=device, format=fmt, overwrite=overwrite)
    result = run_extract(data_root, ckpt, store_path, config, progress=not as_json)
    if result["rank"] == 0:
        emit(result, as_json, figures_table(result, f"extracted into {store_path}"))


# --- feature store: features info | verify | export -------------------------------------------------

store_argument = click.argument("store", type=click.Path(path_type=Path))
store_data_option = click.option(
    "--data", "data_root", type=click.Path(path_type=Path), default=None,
    help="An Aff-Wild2-layout root to compare the store with.")


@cli.group("features")
def features_group():
    """Inspect, check and convert feature stores."""


def _split_counts(store, data_root: Path) -> dict:
    """Per task and split: annotated videos, how many the store holds, and their frames."""
    from pipeline.data.affwild2 import SPLITS, TASKS, AffWild2

    ds, have = AffWild2(data_root), set(store.videos())
    counts = {}
    for task in TASKS:
        for split in SPLITS:
            if ds.available(task, split):
                annotated = set(ds.annotations(task, split))
                held = annotated & have
                counts[f"{task}/{split}"] = {"videos": len(held), "annotated": len(annotated),
                                             "frames": sum(store.num_frames(v) for v in held)}
    return counts


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
            result["splits"] = _split_counts(s, data_root)
    a = result["attrs"]
    lines = [
        f"{result['path']}  ({result['format']}, {result['bytes'] / 2**20:.1f} MiB on disk)",
        f"encoder     {a['encoder']}, pooling {a['pooling']}, input {a['input_size']}, "
        f"{a['feature_dim']} x {a['dtype']}",
        f"checkpoint  sha256 {a['checkpoint_sha256']}",
        f"created     {a.get('created')} by mae-affect {a.get('tool_version')}",
        f"videos      {result['videos']} complete, {result['incomplete_videos']} incomplete",
        f"frames      {result['frames']} ({result['present_frames']} with a face)",
    ]
    lines += [f"{k:<24}{c['videos']}/{c['annotated']} videos, {c['frames']} frames"
              for k, c in result.get("splits", {}).items()]
    emit(result, as_json, "\n".join(lines))


@features_group.command("verify")
@store_argument
@store_data_option
@json_option
@click.pass_context
def features_verify(ctx, store, data_root, as_json):
    """Check a store (complete videos, shapes, dtype, NaN/Inf; frame counts with --data); exit 1 on problems."""
    import features

    expected = None
    if data_root is not None:
        from pipeline.data.affwild2 import AffWild2

        ds = AffWild2(data_root)
        expected = {v: ds.num_frames(v) for v in ds.videos}
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
                          f"{result['bytes'] / 2**20:.1f} MiB)")


def main():
    cli(prog_name="mae-affect")


if __name__ == "__main__":
    main()
