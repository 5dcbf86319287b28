"""Training a temporal head on cached feature sequences (stage 3 of Zhou et al. 2024, ABAW6).

The loop: windows of the training videos, shuffled per epoch, gathered from the in-memory table;
AdamW with a linear warm-up then cosine annealing with warm restarts (as the authors: restart period
``epochs - warmup + 1``, doubling); after every epoch the whole validation videos are predicted
(overlapping windows averaged) and scored with the official metric over every valid frame; the best
epoch is kept. Post-processing is then chosen on validation and stored with the weights.

RUN/ gets config.json, log.jsonl, best.pt, val_predictions.npz, summary.json and PNG plots.
"""

import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pipeline.models.temporal  # noqa: F401  (registers the heads)
from pipeline.config import ConfigError
from pipeline.configs.heads import TrainConfig
from pipeline.data.affwild2 import AffWild2
from pipeline.device import autocast, fits_on, resolve_device, to_device
from pipeline.errors import InputError
from pipeline.heads import postprocess
from pipeline.heads.evaluate import CHECKPOINT_FORMAT, infer
from pipeline.heads.folds import fold_split, pooled_annotations
from pipeline.heads.losses import make_loss
from pipeline.heads.sequences import (
    OUT_DIMS,
    Batcher,
    FeatureTable,
    TaskData,
    load_features,
    make_windows,
    task_data,
)
from pipeline.models import build_model
from pipeline.plots import heads as plots
from pipeline.runlog import RunLog
from pipeline.runs import (
    HEAD_PLOTS,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_out_dir,
    check_run_kind,
    to_jsonable,
    write_config,
)


def feature_stats(features: np.ndarray, rows: np.ndarray,
                  chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32, (D,)) over the selected rows of (N, D)
    features, accumulated in float64 chunk by chunk (no float64 copy of a multi-GB table)."""
    total = np.zeros(features.shape[1])
    squares = np.zeros(features.shape[1])
    n = 0
    for start in range(0, len(features), chunk):
        # (n_chunk, D)
        block = features[start:start + chunk][rows[start:start + chunk]].astype(np.float64)
        total += block.sum(0)
        squares += (block**2).sum(0)
        n += len(block)
    if n == 0:
        return np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
    mean = total / n
    return mean.astype(np.float32), np.sqrt(np.maximum(squares / n - mean**2, 0)).astype(np.float32)


def warmup_epochs(cfg: TrainConfig) -> float:
    """The warm-up a run uses: ``cfg.warmup_epochs``, but at most half the run, so that a short run
    (one epoch, as often in an ablation or a smoke test) is not all warm-up."""
    return min(cfg.warmup_epochs, cfg.epochs / 2)


def learning_rate(cfg: TrainConfig, epoch: float) -> float:
    """The rate at a fractional epoch: linear warm-up (:func:`warmup_epochs`), then cosine annealing
    with warm restarts. The loop gives each step the rate at the point of training the step
    completes, so the first step of a warm-up of n steps runs at lr / n, never at 0 (a step at lr 0
    learns nothing: a one-epoch run of one step kept its untrained head)."""
    warmup = warmup_epochs(cfg)
    if epoch < warmup:
        return cfg.lr * epoch / warmup
    t = epoch - warmup
    period = cfg.restart_epochs or (cfg.epochs - warmup + 1)
    while t >= period:
        t -= period
        period *= cfg.restart_mult
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t / period)) / 2


def build_head(cfg: TrainConfig, in_dim: int) -> torch.nn.Module:
    """The head ``cfg.model`` from the registry, for features of width ``in_dim`` (D) and the
    task's outputs (VA 2, Expr 8, AU 12): a module mapping (B, W, D) windows to (B, W, K)."""
    return build_model(cfg.model, in_dim=in_dim, out_dim=OUT_DIMS[cfg.task],
                       **dataclasses.asdict(cfg.head))


def prepare(cfg: TrainConfig, table: FeatureTable | None = None,
            ds: AffWild2 | None = None) -> TaskData:
    """Load the stores (unless a table is given) and lay the task's fold on them.

    Raises:
        ConfigError: no dataset (``data``) given; InputError: a fold without training or validation
            videos.
    """
    if ds is None and not cfg.data:
        raise ConfigError("data", "is required; give the Aff-Wild2-layout root the stores were "
                                  "extracted from")
    ds = ds if ds is not None else AffWild2(Path(cfg.data))
    table = table if table is not None else load_features(cfg.stores, cfg.fill)
    train, val = fold_split(ds, cfg.task, cfg.fold, cfg.folds)
    if not train or not val:
        raise InputError(f"{ds.root}: {cfg.task} fold {cfg.fold} has {len(train)} training and "
                         f"{len(val)} validation videos; both need at least one")
    return task_data(cfg.task, table, train, val, pooled_annotations(ds, cfg.task, train + val))


def _checkpoint(cfg: TrainConfig, model, data: TaskData, epoch: int, val: dict, out_dir: Path,
                pp=None, after=None) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "version": 1, "task": cfg.task, "model": cfg.model,
        "head": dataclasses.asdict(cfg.head), "in_dim": data.table.dim,
        "out_dim": OUT_DIMS[cfg.task],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": to_jsonable(cfg), "stores": to_jsonable(data.table.identities), "epoch": epoch,
        # plain Python numbers: the checkpoint loads with torch.load(..., weights_only=True)
        "val_before": to_jsonable(val), "val_after": to_jsonable(after),
        "postprocess": None if pp is None else to_jsonable(pp.to_dict()),
        "train_videos": data.train_videos, "val_videos": data.val_videos,
        "inputs": run_inputs(cfg, out_dir),
    }


def run_inputs(cfg: TrainConfig, out_dir: Path) -> dict:
    """Where a run's stores and dataset are: each as an absolute path and as a path relative to the
    run directory, so that ``evaluate`` and ``predict`` find them from any working directory, and
    after the run directory moved together with them (``heads.evaluate.Run.resolve_input`` has the
    rule)."""
    run = os.path.abspath(out_dir)

    def where(path: str) -> dict:
        absolute = os.path.abspath(path)
        return {"absolute": absolute, "from_run": os.path.relpath(absolute, run)}

    return {"stores": [where(s) for s in cfg.stores], "data": where(cfg.data)}


def train_run(data: TaskData, cfg: TrainConfig, out_dir: Path, progress: bool = True,
              make_plots: bool = True) -> dict:
    """Train one head and write its run directory.

    Args:
        data: the task's sequences (``prepare``), loaded once and reusable across runs.
        cfg: the run's config (its task must be data's).
        out_dir: the run directory (created; an earlier run's files are replaced).
        progress: show a tqdm bar.
        make_plots: write the PNG plots.
    Returns:
        the summary (also ``summary.json``): best epoch, validation figures before / after
        post-processing, chosen post-processing, speed.
    Raises:
        ValueError: cfg's task is not data's; InputError: the loss became NaN or infinite (the
            head diverged: the epoch and step are named, and ``lr`` is the setting to lower).
    """
    if cfg.task != data.task:
        raise ValueError(f"config task {cfg.task} but data of task {data.task}")
    out_dir = check_out_dir(out_dir)
    check_run_kind(out_dir, "heads")
    # everything that may refuse the settings comes before an earlier run in out_dir is touched
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_head(cfg, data.table.dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = make_windows(data.table, data.train_videos, cfg.window, cfg.stride)  # (n, 2)
    in_train = np.zeros(len(data.valid), bool)
    for v in data.train_videos:
        in_train[slice(*data.table.offsets[v])] = True
    # z-score every feature with the statistics of the training frames with a face
    if cfg.standardize:
        mean, std = feature_stats(data.table.features, in_train & data.table.present)
        model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    counted = data.valid if cfg.absent_in_loss else data.valid & data.table.present  # (sum T,)
    loss_fn = make_loss(cfg.task, cfg.va_loss, cfg.class_weights, cfg.focal_gamma, cfg.pos_weight,
                        data.labels[counted & in_train])
    # the table on the GPU when it has room (copied once; a step gathers there), else on the host
    table_bytes = data.table.features.nbytes + data.labels.nbytes + counted.nbytes
    batcher = Batcher(data.table.features, data.labels, counted,
                      device if fits_on(device, table_bytes) else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An earlier run's outputs go first, so a crash never leaves its head beside this run's config.
    for stale in ["log.jsonl", "best.pt", "summary.json", "val_predictions.npz", *HEAD_PLOTS]:
        (out_dir / stale).unlink(missing_ok=True)  # a user's own files in the folder stay
    shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    write_config(out_dir, cfg)
    if warmup_epochs(cfg) < cfg.warmup_epochs:
        tqdm.write(f"warning: a warm-up of {cfg.warmup_epochs:g} epoch(s) would fill most of this "
                   f"{cfg.epochs}-epoch run; it warms up for {warmup_epochs(cfg):g}",
                   file=sys.stderr)
    log = RunLog(out_dir, cfg.tensorboard)
    val_annotations = {v: data.annotations[v] for v in data.val_videos}
    steps = math.ceil(len(windows) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps, desc=f"train {cfg.task}", unit="step",
               disable=not progress)
    best, best_state, history = -math.inf, None, []
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        # shuffled windows, `steps` batches
        batches = np.array_split(rng.permutation(len(windows)), steps)
        losses, frames, t_data = [], 0, 0.0
        model.train()
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                # where this step ends
                group["lr"] = learning_rate(cfg, epoch - 1 + (step + 1) / steps)
            t0 = time.perf_counter()
            b = batcher.batch(windows[batch], cfg.window)
            t_data += time.perf_counter() - t0
            losses.append(_train_step(model, optimizer, loss_fn, b, device, cfg.bf16))
            frames += int(windows[batch, 1].sum())  # the windows' real frames
            bar.update()
        # the epoch's losses, read from the device once (a read per step would stall the host)
        losses = torch.stack(losses).tolist()
        _check_finite(losses, epoch, cfg.task)
        bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses):.3f}", best=f"{best:.3f}")
        seconds = time.perf_counter() - t_epoch
        raw = infer(model, cfg.task, data.table, data.val_videos, cfg.window, cfg.stride,
                    cfg.batch_size, device, cfg.bf16, batcher=batcher.without_labels())
        val = postprocess.score(cfg.task,
                                postprocess.apply_all(postprocess.PostProcess(cfg.task), raw),
                                val_annotations)
        record = {
            "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(np.mean(losses)), "val_score": val["score"], "val": val,
            "train_seconds": seconds, "frames_per_s": frames / seconds,
            "data_share": t_data / seconds, "eval_seconds": time.perf_counter() - t_epoch - seconds,
        }
        log.log(record, tag="epoch", step=epoch)
        history.append(record)
        if val["score"] > best:
            best = val["score"]
            ckpt = _checkpoint(cfg, model, data, epoch, val, out_dir)
            best_state = ckpt["state_dict"]
            atomic_torch_save(ckpt, out_dir / "best.pt")
    bar.close()
    log.close()
    model.load_state_dict(best_state)
    raw = infer(model, cfg.task, data.table, data.val_videos, cfg.window, cfg.stride,
                cfg.batch_size, device, cfg.bf16, batcher=batcher.without_labels())
    pp = postprocess.choose(cfg.task, raw, val_annotations)
    final = postprocess.apply_all(pp, raw)
    before = postprocess.score(cfg.task,
                               postprocess.apply_all(postprocess.PostProcess(cfg.task), raw),
                               val_annotations)
    after = postprocess.score(cfg.task, final, val_annotations)
    best_epoch = max(history, key=lambda r: r["val_score"])["epoch"]
    atomic_torch_save(_checkpoint(cfg, model, data, best_epoch, before, out_dir, pp, after),
                      out_dir / "best.pt")
    _save_predictions(out_dir / "val_predictions.npz", raw, final, val_annotations)
    if make_plots:
        _write_plots(out_dir, cfg.task, history, final, val_annotations, before, after)
    summary = {
        "run": str(out_dir), "task": cfg.task, "model": cfg.model, "best_epoch": best_epoch,
        "score": after["score"], "before": before, "after": after, "postprocess": pp.to_dict(),
        "train_videos": len(data.train_videos), "val_videos": len(data.val_videos),
        "train_frames": data.frames(data.train_videos), "warmup_epochs": warmup_epochs(cfg),
        "seconds": time.perf_counter() - t_start,
        "frames_per_s": float(np.mean([r["frames_per_s"] for r in history])),
        "data_share": float(np.mean([r["data_share"] for r in history])),
    }
    atomic_write_text(out_dir / "summary.json", _json(summary))
    return summary


def train(cfg: TrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Load the task's sequences (:func:`prepare`) and train one head into ``out_dir``
    (:func:`train_run`), with ``out_dir`` checked before the stores load.

    Raises:
        InputError: ``out_dir`` is a file or another stage's run, the stores or annotations cannot
            be used, or the head diverged.
    """
    check_run_kind(check_out_dir(out_dir), "heads")
    return train_run(prepare(cfg), cfg, out_dir, progress=progress)


def _train_step(model, optimizer, loss_fn, b: dict, device: torch.device,
                bf16: bool) -> torch.Tensor:
    """One optimizer step on a batch (on the host or already on ``device``); returns the loss,
    detached and left on the device."""
    b = {k: to_device(b[k], device) for k in ("x", "keep", "labels", "counted")}
    with autocast(device, bf16):
        out = model(b["x"], b["keep"])  # (B, W, K)
    loss = loss_fn(out, b["labels"], b["counted"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _check_finite(losses: list[float], epoch: int, task: str) -> None:
    """Refuse an epoch whose loss became NaN or infinite: the head has diverged, and its weights
    (and every prediction after) would be NaN, which the metrics cannot score.

    Raises:
        InputError: naming the epoch, the step and the setting to lower.
    """
    for step, value in enumerate(losses, start=1):
        if not math.isfinite(value):
            raise InputError(f"train {task}: the loss became {value} at epoch {epoch}, step "
                             f"{step}; lower the lr setting (train --lr) and train again (best.pt "
                             "of the epochs before, if any, is kept)")


def _json(obj) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"


def _save_predictions(path: Path, raw: dict, final: dict, annotations: dict) -> None:
    """``videos`` names; per video i: ``raw_i`` (T, K) outputs, ``pred_i`` post-processed
    predictions, ``labels_i`` and ``valid_i`` (the annotation's rows)."""
    arrays = {"videos": np.array(list(raw))}
    for i, v in enumerate(raw):
        arrays.update({f"raw_{i}": raw[v], f"pred_{i}": final[v],
                       f"labels_{i}": annotations[v].labels, f"valid_{i}": annotations[v].valid})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _write_plots(out_dir: Path, task: str, history: list[dict], final: dict, annotations: dict,
                 before: dict, after: dict) -> None:
    plots.training_curves(history, out_dir / "training_curves.png")
    if task == "va":
        plots.va_traces(final, annotations, out_dir / "va_traces.png")
    elif task == "expr":
        pred, true = postprocess.valid_pairs(final, annotations)
        plots.confusion_matrix(pred, true, out_dir / "expr_confusion.png")
    else:
        plots.au_f1_bars(before, after, out_dir / "au_f1.png")
