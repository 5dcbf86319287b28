"""The ``mae-affect`` command line: one click group, one subcommand per stage.

Each command only parses options and calls the library function a Python user would call. Bad input
(an :class:`InputError` or a feature-store error) becomes one line on stderr and exit code 2; any other
exception is a bug and exits 1.
"""

import json
from pathlib import Path

import click

from pipeline.errors import InputError
from pipeline.video.config import SUBJECTS, AnalyzeConfig, FacesConfig


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
@click.option("--patch-size", default=None, type=int, help="Patch side (default: the model's, 16).")
@click.option("--epochs", default=500, show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Per process.")
@click.option("--accum-iter", default=16, show_default=True,
              help="Micro-batches per optimizer step.")
@click.option("--blr", "--base-lr", "blr", default=1.25e-4, show_default=True,
              help="Base lr: lr = blr * effective batch / 256.")
@click.option("--lr", default=None, type=float, help="Absolute lr (overrides --blr).")
@click.option("--warmup-epochs", default=40, show_default=True)
@click.option("--mask-ratio", default=0.75, show_default=True)
@click.option("--crop-scale", nargs=2, type=float, default=(0.2, 1.0), show_default=True,
              help="Area range MIN MAX of the random resized crop (MAE's 0.2 1.0).")
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
def pretrain(images, out, model, img_size, patch_size, epochs, batch_size, accum_iter, blr, lr, warmup_epochs, mask_ratio,
             crop_scale, norm_pix_loss, decoder_dim, decoder_depth, decoder_heads, max_images, workers, seed, device, bf16,
             as_json):
    """MAE self-pretraining on folders of face images; resumes from OUT/checkpoint-last.pt (torchrun: DDP)."""
    from pipeline.distributed import cleanup
    from pipeline.pretrain import PretrainConfig
    from pipeline.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        images=tuple(str(p) for p in images), out=str(out), model=model, img_size=img_size,
        patch_size=patch_size, epochs=epochs,
        batch_size=batch_size, accum_iter=accum_iter, blr=blr, lr=lr, warmup_epochs=warmup_epochs,
        mask_ratio=mask_ratio, crop_scale=tuple(crop_scale), norm_pix_loss=norm_pix_loss, decoder_dim=decoder_dim,
        decoder_depth=decoder_depth, decoder_heads=decoder_heads, max_images=max_images, workers=workers,
        seed=seed, device=device, bf16=bf16,
    )
    try:
        result = run_pretrain(config, progress=not as_json)
    finally:
        cleanup()
    if result is not None:
        emit(result, as_json, figures_table(result, f"pretrained {out} ({result['checkpoint']})"))


# --- expression fine-tuning ----------------------------------------------------------------------
# Defaults are FinetuneConfig's (the paper's lr and batch in MAE's recipe); tests/test_finetune.py checks them.


@cli.command()
@data_option
@click.option("--init", type=click.Path(path_type=Path), default=None,
              help="Encoder checkpoint (MAE run, official MAE .pth, timm); without it: random init, with a warning.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory (rerun to resume).")
@click.option("--model", default=None, help="Registered model (default: the checkpoint's, else mae_vit_base_patch16).")
@click.option("--img-size", default=None, type=int, help="Input side (default: the checkpoint's, else 224).")
@click.option("--patch-size", default=None, type=int, help="Without --init only: patch side (default: the model's, 16).")
@click.option("--pooling", default="mean", show_default=True, type=click.Choice(["cls", "mean"]),
              help="Embedding the head reads; extraction reuses it.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=256, show_default=True, help="Per process.")
@click.option("--lr", default=1e-4, show_default=True, help="Peak lr of the last layer (absolute).")
@click.option("--warmup-epochs", default=1.0, show_default=True)
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--layer-decay", default=0.75, show_default=True, help="lr factor per block towards the input.")
@click.option("--drop-path", default=0.1, show_default=True)
@click.option("--label-smoothing", default=0.1, show_default=True)
@click.option("--balance", default="sampler", show_default=True, type=click.Choice(["sampler", "weights", "none"]),
              help="Class-balanced sampling, inverse-frequency loss weights, or neither.")
@click.option("--frames-per-video", default=300, show_default=True, help="Cap per video per epoch (0: all).")
@click.option("--val-frames-per-video", default=0, show_default=True,
              help="Evenly spaced validation frames per video (0: all, the official metric).")
@click.option("--color-jitter", default=0.0, show_default=True,
              help="Brightness/contrast/saturation factors in [1-s, 1+s], hue up to s/4 of a turn (0: off).")
@click.option("--grayscale", default=0.0, show_default=True, help="Probability of a gray crop.")
@click.option("--erase", default=0.0, show_default=True, help="Random-erasing probability (MAE's recipe: 0.25).")
@click.option("--mixup", default=0.0, show_default=True, help="Mixup Beta alpha (MAE's recipe: 0.8; 0: off).")
@click.option("--cutmix", default=0.0, show_default=True, help="CutMix Beta alpha (MAE's recipe: 1.0; 0: off).")
@click.option("--aux-au/--no-aux-au", default=False, show_default=True, help="Auxiliary frame-level AU head.")
@click.option("--aux-va/--no-aux-va", default=False, show_default=True, help="Auxiliary frame-level VA head.")
@click.option("--aux-weight", default=1.0, show_default=True)
@click.option("--linear-probe", is_flag=True, default=False, help="Freeze the encoder; train only the head.")
@click.option("--head-init", type=click.Path(path_type=Path), default=None,
              help="LP-FT: start the head from this --linear-probe run's best.pt (trained on the same --init).")
@click.option("--workers", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast (CUDA, and CPUs with native bf16).")
@json_option
def finetune(data_root, init, out, model, img_size, patch_size, pooling, epochs, batch_size, lr, warmup_epochs, weight_decay,
             layer_decay, drop_path, label_smoothing, balance, frames_per_video, val_frames_per_video, color_jitter,
             grayscale, erase, mixup, cutmix, aux_au, aux_va, aux_weight, linear_probe, head_init, workers, seed, device,
             bf16, as_json):
    """Fine-tune the encoder on per-frame Expr labels; keeps OUT/best.pt by validation macro F1 (torchrun: DDP)."""
    from pipeline.distributed import cleanup
    from pipeline.finetune import FinetuneConfig
    from pipeline.finetune import finetune as run_finetune

    config = FinetuneConfig(
        data=str(data_root), out=str(out), init=str(init) if init else None, model=model, img_size=img_size,
        patch_size=patch_size, pooling=pooling, epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs,
        weight_decay=weight_decay, layer_decay=layer_decay, drop_path=drop_path,
        label_smoothing=label_smoothing, balance=balance, frames_per_video=frames_per_video,
        val_frames_per_video=val_frames_per_video, color_jitter=color_jitter, grayscale=grayscale, erase=erase,
        mixup=mixup, cutmix=cutmix, aux_au=aux_au, aux_va=aux_va, aux_weight=aux_weight,
        linear_probe=linear_probe, head_init=str(head_init) if head_init else None, workers=workers, seed=seed,
        device=device, bf16=bf16,
    )
    try:
        result = run_finetune(config, progress=not as_json)
    finally:
        cleanup()
    if result is not None:
        emit(result, as_json, figures_table(result, f"fine-tuned {out} (best: {result['best_checkpoint']})"))


# --- synthetic data -------------------------------------------------------------------------------


@cli.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset root to create.")
@click.option("--preset", type=click.Choice(["tiny", "demo", "bench"]), default="demo", show_default=True)
@click.option("--videos", type=int, default=None, help="Override the preset's number of videos.")
@click.option("--frames-per-video", type=int, default=None, help="Override the preset's mean video length.")
@click.option("--img-size", type=int, default=None, help="Override the crop size (112 as released).")
@click.option("--seed", type=int, default=None, help="Override the preset's seed.")
@click.option("--people", type=int, default=None,
              help="Cast only N people, video k showing person k mod N, in every split. Default: a new person "
                   "per video.")
@click.option("--scenes", type=int, default=None,
              help="Film in only N scenes (background, light, camera). Default: one per source video. "
                   "--people 1 --scenes 1 leaves nothing but the expressions to tell videos apart.")
@click.option("--workers", type=int, default=None, help="Rendering processes (default: 2 for large presets).")
@json_option
def synth(out, preset, videos, frames_per_video, img_size, seed, people, scenes, workers, as_json):
    """Generate a synthetic mini-Aff-Wild2 in the exact Aff-Wild2 layout (deterministic for a seed)."""
    from dataclasses import replace

    from pipeline.data.synth import PRESETS, generate

    overrides = {"videos": videos, "frames_per_video": frames_per_video, "img_size": img_size, "seed": seed,
                 "people": people, "scenes": scenes}
    config = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    result = generate(out, config, progress=not as_json, workers=workers)
    table = (f"{out}: already holds this dataset, left as it is" if result["skipped"] else
             f"wrote {result['videos']} videos, {result['frames']} frames ({result['images']} images) to {out} "
             f"in {result['seconds']:.1f} s")
    emit(result, as_json, table)


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
    from pipeline.distributed import cleanup

    try:
        result = run_extract(data_root, ckpt, store_path, config, progress=not as_json)
    finally:
        cleanup()
    if result["rank"] == 0:
        emit(result, as_json, figures_table(result, f"extracted into {store_path}"))


# --- raw videos: faces | analyze -------------------------------------------------------------------
# Defaults are read from FacesConfig and AnalyzeConfig (pipeline/video/config.py, no heavy imports).

device_option = click.option("--device", default=FacesConfig.device, show_default=True,
                             type=click.Choice(["auto", "cpu", "cuda"]))


def _faces_options(f):
    options = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path)),
        click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder."),
        click.option("--size", default=FacesConfig.size, show_default=True, help="Crop side in pixels."),
        click.option("--subjects", default=FacesConfig.subjects, show_default=True, type=click.Choice(SUBJECTS),
                     help="People per video; 2 writes <video>_left and <video>_right."),
        device_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_faces_options
@click.option("--batch-size", default=FacesConfig.batch_size, show_default=True, help="Frames per detector call.")
@json_option
def faces(inputs, out, size, subjects, device, batch_size, as_json):
    """Detect, track and align the faces of VIDEO|DIR ... into OUT/cropped_aligned (resumable; torchrun)."""
    from pipeline.distributed import cleanup
    from pipeline.video.faces import faces as run_faces

    config = FacesConfig(size=size, subjects=subjects, batch_size=batch_size, device=device)
    try:
        result = run_faces(list(inputs), out, config, progress=not as_json)
    finally:
        cleanup()
    if result["rank"] == 0:
        emit(result, as_json, f"{out}: {result['written']} video(s) written, {result['skipped']} already done, "
                              f"{len(result['failed'])} unusable; {result['frames']} frames, {result['faces']} "
                              f"faces, {result['frames_per_s']:.1f} frames/s")


class _ListedOptions(click.Command):
    """Lets ``--heads A B C`` stand for ``--heads A --heads B --heads C`` (values up to the next option)."""

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
@_faces_options
@click.option("--encoder", required=True, type=click.Path(path_type=Path),
              help="The encoder checkpoint the heads' feature store was extracted with.")
@click.option("--heads", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Head runs of `train`, one per task: --heads RUN [RUN ...].")
@click.option("--render", is_flag=True, help="Also write an MP4 per video with the boxes and predictions drawn.")
@click.option("--faces-batch", default=FacesConfig.batch_size, show_default=True, help="Frames per detector call.")
@click.option("--batch-size", default=AnalyzeConfig.batch_size, show_default=True,
              help="Frames per encoder forward pass.")
@click.option("--workers", default=AnalyzeConfig.workers, show_default=True, help="Extraction's decoding processes.")
@click.option("--bf16/--no-bf16", default=AnalyzeConfig.bf16, show_default=True, help="bf16 autocast in extraction.")
@json_option
def analyze(inputs, out, size, subjects, device, encoder, heads, render, faces_batch, batch_size, workers, bf16,
            as_json):
    """Per-frame valence, arousal, expression and AUs of VIDEO|DIR ...: a CSV and a PNG per video, report.html."""
    from pipeline.video.analyze import analyze as run_analyze

    faces_config = FacesConfig(size=size, subjects=subjects, batch_size=faces_batch, device=device)
    config = AnalyzeConfig(faces=faces_config, batch_size=batch_size, workers=workers, render=render, bf16=bf16)
    result = run_analyze(list(inputs), encoder, list(heads), out, config, progress=not as_json)
    result = {k: v for k, v in result.items() if k != "tables"}
    lines = [f"{name}: {v['frames']} frames, a face in {v['faces']} -> {Path(out) / v['csv']}"
             for name, v in result["videos"].items()]
    emit(result, as_json, "\n".join([*lines, f"report: {result['report']}"]))


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


# --- temporal heads: train | evaluate | predict | ablate --------------------------------------------

HEAD_TASKS = click.Choice(["va", "expr", "au"])
heads_stores_option = click.option(
    "--store", "stores", multiple=True, type=click.Path(path_type=Path),
    help="Feature store; repeat to put several stores side by side (frames aligned).")


def _head_settings(f):
    """Options shared by train and ablate; unset ones keep TrainConfig's (the paper's) defaults."""
    options = [
        click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper", "demo"]),
                     help="Starting settings: the paper's, or a small fast head for the CPU demo; options given win."),
        click.option("--model", default=None, type=click.Choice(["tcn_transformer", "tcn", "transformer", "linear"]),
                     help="Temporal head [default: tcn_transformer]."),
        click.option("--epochs", type=int, default=None, help="[default: the paper's: VA 40, Expr 10, AU 30]"),
        click.option("--batch-size", type=int, default=None, help="Windows per step [default: 32]."),
        click.option("--lr", type=float, default=None, help="Peak AdamW lr [default: 3e-5]."),
        click.option("--window", type=int, default=None, help="Window length W [default: 300]."),
        click.option("--stride", type=int, default=None, help="Window stride S [default: 2/3 of the window: 200]."),
        click.option("--fill", default=None, type=click.Choice(["nearest", "linear", "zeros"]),
                     help="Rows of frames without a face [default: nearest]."),
        click.option("--fold", type=int, default=None, help="0: official split [default]; 1..N: folds by source video."),
        click.option("--folds", type=int, default=None, help="Number of grouped folds N [default: 5]."),
        click.option("--seed", type=int, default=None, help="[default: 0]"),
        click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]), help="[default: auto]"),
        click.option("--bf16/--no-bf16", default=None, help="bf16 autocast [default: off]."),
        click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                     help="Any other setting, e.g. d_model=256, num_layers=2, tcn_channels=256-128-64, "
                          "causal=false, pos_encoding=sinusoidal, va_loss=ccc+mse (repeatable)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _head_settings_given(task, stores, data_root, settings, **options) -> dict:
    """The settings given on the command line (unset options are left to TrainConfig)."""
    from pipeline.heads.train import parse_settings

    if not stores:
        raise InputError("no feature store given: pass --store PATH (made by `mae-affect extract`)")
    given = {k: v for k, v in options.items() if v is not None}
    return {"task": task, "stores": tuple(str(s) for s in stores), "data": str(data_root), **given,
            **parse_settings(settings)}


def _before_after(result: dict, title: str) -> str:
    before, after = result["before"], result["after"]
    names = [k for k, v in after.items() if isinstance(v, float)]
    width = max(len(n) for n in names)
    lines = [title, f"{'':<{width}}  {'before':>8}  {'after':>8}"]
    lines += [f"{n:<{width}}  {before[n]:8.4f}  {after[n]:8.4f}" for n in sorted(names, key=lambda n: n != "score")]
    lines.append(f"post-processing: {json.dumps({k: v for k, v in result['postprocess'].items() if k != 'task'})}")
    return "\n".join(lines)


@cli.command()
@click.argument("task", type=HEAD_TASKS)
@heads_stores_option
@data_option
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@_head_settings
@json_option
def train(task, stores, data_root, out, settings, as_json, **options):
    """Train a temporal head for TASK on cached features; best epoch by the official validation metric."""
    from pipeline.heads.train import TrainConfig, prepare, train_run

    config = TrainConfig.create(**_head_settings_given(task, stores, data_root, settings, **options))
    result = train_run(prepare(config), config, out, progress=not as_json)
    emit(result, as_json, _before_after(result, f"{task} run {out}: best epoch {result['best_epoch']}, validation"))


@cli.command()
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory of `train`.")
@click.option("--split", default=None, help="Default: the run's validation videos; or Train_Set, Validation_Set, Test_Set.")
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path), help="Default: the run's.")
@heads_stores_option
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@json_option
def evaluate(run_dir, split, data_root, stores, device, as_json):
    """Official figures of a run on whole videos, before and after its post-processing."""
    from pipeline.heads.evaluate import evaluate_run

    result = evaluate_run(run_dir, split, data_root, stores or None, device, progress=not as_json)
    emit(result, as_json, _before_after(result, f"{result['task']} run {run_dir} on {result['split']} "
                                                f"({result['videos']} videos, epoch {result['epoch']})"))


@cli.command()
@click.option("--run", "run_dirs", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Run directory; repeat to average an ensemble.")
@click.option("--split", default="test", show_default=True, help="test (the example file's rows) or an annotated split.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Submission CSV to write.")
@click.option("--data", "data_root", default=None, type=click.Path(path_type=Path), help="Default: the first run's.")
@heads_stores_option
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@json_option
def predict(run_dirs, split, out, data_root, stores, device, as_json):
    """Write a challenge submission file from one run or the average of several."""
    from pipeline.heads.predict import predict as run_predict

    result = run_predict(run_dirs, out, split, data_root, stores or None, device, progress=not as_json)
    emit(result, as_json, f"wrote {result['out']}: {result['rows']} rows of {result['videos']} videos "
                          f"({result['task']}, {split}, {len(result['runs'])} run(s))")


@cli.command()
@click.option("--task", required=True, type=HEAD_TASKS)
@heads_stores_option
@data_option
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="A setting and its values, e.g. model=tcn,transformer,tcn_transformer (repeatable).")
@click.option("--seeds", default=3, show_default=True, help="Seeds per combination.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the runs and tables.")
@_head_settings
@json_option
def ablate(task, stores, data_root, grid, seeds, out, settings, as_json, **options):
    """Train every grid combination for several seeds on data loaded once; print a Markdown table."""
    from pipeline.heads.ablate import ablate as run_ablate
    from pipeline.heads.ablate import parse_grid

    given = _head_settings_given(task, stores, data_root, settings, **options)
    result = run_ablate(given, parse_grid(grid), seeds, out, progress=not as_json)
    emit(result, as_json, result["markdown"].rstrip() + f"\n\nwrote {out}/ablation.md, ablation.csv, runs.csv")


# --- demo and report ------------------------------------------------------------------------------


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(path_type=Path), help="Demo run directory.")
@click.option("--data", "data_root", default="data/synth-demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the synthetic dataset is made (once) and read.")
@click.option("--preset", type=click.Choice(["tiny", "demo", "bench"]), default="demo", show_default=True)
@click.option("--model", default="mae_vit_tiny_patch16", show_default=True)
@click.option("--img-size", default=112, show_default=True)
@click.option("--pretrain-epochs", type=int, default=None, help="Default: the demo's budget.")
@click.option("--finetune-epochs", type=int, default=None, help="Default: the demo's budget.")
@click.option("--workers", default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", default=0, show_default=True)
@json_option
def demo(out, data_root, preset, model, img_size, pretrain_epochs, finetune_epochs, workers, device, seed, as_json):
    """The whole method on the synthetic dataset: every stage, the ablation table, test files, report.html."""
    from pipeline.demo import DemoConfig, run_demo

    budgets = {"pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs}
    config = DemoConfig(out=str(out), data=str(data_root), preset=preset, model=model, img_size=img_size,
                        workers=workers, device=device, seed=seed,
                        **{k: v for k, v in budgets.items() if v is not None})
    figures = run_demo(config, progress=not as_json)
    emit(figures, as_json, demo_table(figures, out))


def demo_table(figures: dict, out: Path) -> str:
    """The demo's closing table: the ablation rows by task, test scores, where the report is."""
    tasks = ("va", "expr", "au")
    lines = [f"{'setting':<28}" + "".join(f"{t:>10}" for t in tasks)]
    for row, scores in figures["table"].items():
        lines.append(f"{row:<28}" + "".join(f"{scores.get(t, float('nan')):>10.4f}" for t in tasks))
    lines.append(f"{'test (synthetic labels)':<28}"
                 + "".join(f"{figures['submissions'][t]['test_score']:>10.4f}" for t in tasks))
    lines.append(f"validation scores: VA mean CCC, Expr macro F1, AU mean F1; report: {out / 'report.html'}")
    frame_level = [f"{name} {figures[key]['best_f1']:.4f}" for key, name in
                   (("probe", "linear probe"), ("finetune", "fine-tuned encoder")) if figures.get(key)]
    lines.append(f"frame-level Expr macro F1 before the temporal heads: {', '.join(frame_level)}")
    return "\n".join(lines)


@cli.command()
@click.option("--runs", "run_dirs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A demo directory, or pretraining, fine-tuning and head runs (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for report.html.")
def report(run_dirs, out):
    """Write one self-contained HTML page (plots embedded) about the given runs."""
    from pipeline.report import write_report

    path = write_report(Path(out) / "report.html", runs=list(run_dirs))
    click.echo(f"wrote {path}")


def main():
    cli(prog_name="mae-affect")


if __name__ == "__main__":
    main()
