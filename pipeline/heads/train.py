"""Training a temporal head on cached feature sequences (stage 3 of ``shared/PAPER.md``).

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
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import pipeline.models.temporal  # noqa: F401  (registers the heads)
from pipeline.data.affwild2 import AffWild2, check_task
from pipeline.device import autocast, resolve_device
from pipeline.errors import InputError
from pipeline.heads import plots, postprocess
from pipeline.heads.evaluate import CHECKPOINT_FORMAT, infer
from pipeline.heads.folds import fold_split, pooled_annotations
from pipeline.heads.losses import VA_LOSSES, WEIGHTINGS, make_loss
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
from pipeline.models.temporal import HeadConfig
from pipeline.runs import (
    JsonlLogger,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    to_jsonable,
    write_config,
)

PAPER_EPOCHS = {"va": 40, "expr": 10, "au": 30}
# Named starting points for TrainConfig.create(preset=...); settings given with them win.
# "demo": a head small enough to train in well under a minute per task on two CPU cores (the synthetic
# demo store, about 100 videos of 200 frames, D=192): the paper's lr 3e-5 and batch 32 assume ~3 million
# frames (hundreds of steps an epoch), the demo has a few thousand; dropout 0 as in the authors' configs
# (on the CPU, dropout's random masks cost a third of a small head's step).
PRESETS = {
    "paper": {},
    "demo": dict(tcn_channels=(128, 64, 64), d_model=64, num_layers=2, ff_dim=128, head_hidden=64, dropout=0.0,
                 batch_size=8, lr=1e-3, epochs=20),
}
HEAD_MODELS = ("tcn_transformer", "tcn", "transformer", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a head run depends on; defaults reproduce the paper (epochs per task).

    ``head`` holds the model sizes; ``create`` accepts its field names directly (``d_model=256``),
    as do ``--set`` and ``ablate --grid``.
    """

    task: str
    stores: tuple[str, ...] = ()
    data: str = ""
    fold: int = 0  # 0: the official split; 1..folds: folds grouped by source video
    folds: int = 5
    fill: str = "nearest"  # absent-face rows: nearest | linear | zeros, same in training and inference
    absent_in_loss: bool = True  # frames without a face count in the loss (the metric counts them too)
    model: str = "tcn_transformer"
    head: HeadConfig = field(default_factory=HeadConfig)
    window: int = 300
    stride: int | None = None  # None: two thirds of the window (the paper's 200 for 300)
    batch_size: int = 32
    epochs: int | None = None  # None: the paper's for the task (VA 40, Expr 10, AU 30)
    lr: float = 3e-5
    weight_decay: float = 1e-5
    warmup_epochs: float = 1.0
    restart_epochs: float | None = None  # None: epochs - warmup + 1 (the authors' T_0)
    restart_mult: int = 2
    min_lr: float = 1e-8
    va_loss: str = "ccc"  # ccc | ccc+mse
    class_weights: str = "none"  # Expr: none | balanced
    focal_gamma: float = 0.0  # Expr: 0 is plain cross-entropy
    pos_weight: str = "none"  # AU: none | balanced
    # z-score features with training-frame statistics (kept in the head's buffers). Off, as the paper: on
    # the synthetic demo stores it lowered validation VA CCC (0.202 -> -0.187 on the pretrained store).
    standardize: bool = False
    seed: int = 0
    device: str = "auto"
    bf16: bool = False

    def __post_init__(self):
        check_task(self.task)
        if self.epochs is None:
            object.__setattr__(self, "epochs", PAPER_EPOCHS[self.task])  # resolved, so config.json says it
        if self.stride is None:
            object.__setattr__(self, "stride", max(1, self.window * 2 // 3))
        if self.model not in HEAD_MODELS:
            raise InputError(f"model {self.model!r} is not a temporal head; use one of {', '.join(HEAD_MODELS)}")
        checks = [
            (self.window >= 1 and self.stride >= 1, f"window {self.window} and stride {self.stride} must be >= 1"),
            (self.stride <= self.window, f"stride {self.stride} > window {self.window} would skip frames"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.va_loss in VA_LOSSES, f"va_loss {self.va_loss!r}; use {' or '.join(VA_LOSSES)}"),
            (self.class_weights in WEIGHTINGS, f"class_weights {self.class_weights!r}; use {' or '.join(WEIGHTINGS)}"),
            (self.pos_weight in WEIGHTINGS, f"pos_weight {self.pos_weight!r}; use {' or '.join(WEIGHTINGS)}"),
            (self.head.pos_encoding != "learned" or self.window <= self.head.max_len,
             f"window {self.window} exceeds the learned position table (max_len {self.head.max_len})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def create(cls, preset: str = "paper", **values) -> "TrainConfig":
        """A config from flat settings over a preset (``PRESETS``): HeadConfig's field names
        (``d_model=256``) go into ``head``; unset epochs and stride are resolved from the task and
        window given with them."""
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        values = {**PRESETS[preset], **values}
        head_names = {f.name for f in dataclasses.fields(HeadConfig)}
        head = {k: v for k, v in values.items() if k in head_names}
        rest = {k: v for k, v in values.items() if k not in head_names}
        try:
            return cls(**rest, head=HeadConfig(**head))
        except (TypeError, ValueError) as err:
            raise InputError(f"invalid settings {values}: {err}") from None


def config_fields() -> dict[str, typing.Any]:
    """Every settable name (TrainConfig's and HeadConfig's fields but what the data is) and its type."""
    hints = {**typing.get_type_hints(HeadConfig), **typing.get_type_hints(TrainConfig)}
    for fixed in ("head", "task", "stores", "data"):
        hints.pop(fixed)
    return hints


def parse_value(key: str, text: str):
    """A config value from text, by the field's type: ``tcn_channels=768-256-128``, ``causal=false``."""
    hints = config_fields()
    if key not in hints:
        raise InputError(f"unknown setting {key!r}; settable: {', '.join(sorted(hints))}")
    kind = hints[key]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    text = text.strip()
    try:
        if text.lower() == "none" and type(None) in typing.get_args(kind):
            return None
        if typing.get_origin(kind) is tuple:
            return tuple(typing.get_args(kind)[0](p) for p in text.replace("/", "-").split("-") if p)
        base = args[0] if args else kind
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return base(text)
    except ValueError:
        raise InputError(f"{key}={text!r}: not a valid {getattr(kind, '__name__', kind)}") from None


def parse_settings(items) -> dict:
    """``["key=value", ...]`` (the CLI's ``--set``) as typed overrides."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: use KEY=VALUE, e.g. --set d_model=256")
        out[key.strip()] = parse_value(key.strip(), value)
    return out


def feature_stats(features: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32, (D,)) over the selected rows of (N, D) features,
    accumulated in float64 chunk by chunk (no float64 copy of a multi-GB table)."""
    total = np.zeros(features.shape[1])
    squares = np.zeros(features.shape[1])
    n = 0
    for start in range(0, len(features), chunk):
        block = features[start:start + chunk][rows[start:start + chunk]].astype(np.float64)  # (n_chunk, D)
        total += block.sum(0)
        squares += (block**2).sum(0)
        n += len(block)
    if n == 0:
        return np.zeros(features.shape[1], np.float32), np.ones(features.shape[1], np.float32)
    mean = total / n
    return mean.astype(np.float32), np.sqrt(np.maximum(squares / n - mean**2, 0)).astype(np.float32)


def warmup_epochs(cfg: TrainConfig) -> float:
    """The warm-up a run uses: ``cfg.warmup_epochs``, but at most half the run, so that a short run (one
    epoch, as often in an ablation or a smoke test) is not all warm-up."""
    return min(cfg.warmup_epochs, cfg.epochs / 2)


def learning_rate(cfg: TrainConfig, epoch: float) -> float:
    """The rate at a fractional epoch: linear warm-up (:func:`warmup_epochs`), then cosine annealing with
    warm restarts. The loop gives each step the rate at the point of training the step completes, so the
    first step of a warm-up of n steps runs at lr / n, never at 0 (a step at lr 0 learns nothing: a
    one-epoch run of one step kept its untrained head)."""
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
    return build_model(cfg.model, in_dim=in_dim, out_dim=OUT_DIMS[cfg.task], **dataclasses.asdict(cfg.head))


def prepare(cfg: TrainConfig, table: FeatureTable | None = None, ds: AffWild2 | None = None) -> TaskData:
    """Load the stores (unless a table is given) and lay the task's fold on them."""
    ds = ds if ds is not None else AffWild2(Path(cfg.data))
    table = table if table is not None else load_features(cfg.stores, cfg.fill)
    train, val = fold_split(ds, cfg.task, cfg.fold, cfg.folds)
    if not train or not val:
        raise InputError(f"{ds.root}: {cfg.task} fold {cfg.fold} has {len(train)} training and {len(val)} "
                         "validation videos; both need at least one")
    return task_data(cfg.task, table, train, val, pooled_annotations(ds, cfg.task, train + val))


def _checkpoint(cfg: TrainConfig, model, data: TaskData, epoch: int, val: dict, out_dir: Path, pp=None,
                after=None) -> dict:
    return {
        "format": CHECKPOINT_FORMAT, "version": 1, "task": cfg.task, "model": cfg.model,
        "head": dataclasses.asdict(cfg.head), "in_dim": data.table.dim, "out_dim": OUT_DIMS[cfg.task],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": to_jsonable(cfg), "stores": to_jsonable(data.table.identities), "epoch": epoch,
        # plain Python numbers: the checkpoint loads with torch.load(..., weights_only=True)
        "val_before": to_jsonable(val), "val_after": to_jsonable(after),
        "postprocess": None if pp is None else to_jsonable(pp.to_dict()),
        "train_videos": data.train_videos, "val_videos": data.val_videos,
        "inputs": run_inputs(cfg, out_dir),
    }


def run_inputs(cfg: TrainConfig, out_dir: Path) -> dict:
    """Where a run's stores and dataset are: each as an absolute path and as a path relative to the run
    directory, so that ``evaluate`` and ``predict`` find them from any working directory, and after the
    run directory moved together with them (``heads.evaluate.Run.resolve_input`` has the rule)."""
    run = os.path.abspath(out_dir)

    def where(path: str) -> dict:
        absolute = os.path.abspath(path)
        return {"absolute": absolute, "from_run": os.path.relpath(absolute, run)}

    return {"stores": [where(s) for s in cfg.stores], "data": where(cfg.data)}


def train_run(data: TaskData, cfg: TrainConfig, out_dir: Path, progress: bool = True, make_plots: bool = True) -> dict:
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
    """
    if cfg.task != data.task:
        raise ValueError(f"config task {cfg.task} but data of task {data.task}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An earlier run's outputs go first, so a crash never leaves its head beside this run's config.
    for stale in ["log.jsonl", "best.pt", "summary.json", "val_predictions.npz", *(p.name for p in out_dir.glob("*.png"))]:
        (out_dir / stale).unlink(missing_ok=True)
    write_config(out_dir, cfg)
    if warmup_epochs(cfg) < cfg.warmup_epochs:
        tqdm.write(f"warning: a warm-up of {cfg.warmup_epochs:g} epoch(s) would fill most of this {cfg.epochs}-epoch "
                   f"run; it warms up for {warmup_epochs(cfg):g}", file=sys.stderr)
    log = JsonlLogger(out_dir / "log.jsonl")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_head(cfg, data.table.dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = make_windows(data.table, data.train_videos, cfg.window, cfg.stride)  # (n, 2)
    in_train = np.zeros(len(data.valid), bool)
    for v in data.train_videos:
        in_train[slice(*data.table.offsets[v])] = True
    if cfg.standardize:  # z-score every feature with the statistics of the training frames with a face
        mean, std = feature_stats(data.table.features, in_train & data.table.present)
        model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    counted = data.valid if cfg.absent_in_loss else data.valid & data.table.present  # (sum T,)
    loss_fn = make_loss(cfg.task, cfg.va_loss, cfg.class_weights, cfg.focal_gamma, cfg.pos_weight,
                        data.labels[counted & in_train])
    batcher = Batcher(data.table.features, data.labels, counted)
    val_annotations = {v: data.annotations[v] for v in data.val_videos}
    steps = math.ceil(len(windows) / cfg.batch_size)
    bar = tqdm(total=cfg.epochs * steps, desc=f"train {cfg.task}", unit="step", disable=not progress)
    best, best_state, history = -math.inf, None, []
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        batches = np.array_split(rng.permutation(len(windows)), steps)  # shuffled windows, `steps` batches
        losses, frames, t_data = [], 0, 0.0
        model.train()
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch - 1 + (step + 1) / steps)  # where this step ends
            t0 = time.perf_counter()
            b = batcher.batch(windows[batch], cfg.window)
            t_data += time.perf_counter() - t0
            losses.append(_train_step(model, optimizer, loss_fn, b, device, cfg.bf16))
            frames += int(b["keep"].sum())
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", best=f"{best:.3f}")
        seconds = time.perf_counter() - t_epoch
        raw = infer(model, cfg.task, data.table, data.val_videos, cfg.window, cfg.stride, cfg.batch_size,
                    device, cfg.bf16)
        val = postprocess.score(cfg.task, postprocess.apply_all(postprocess.PostProcess(cfg.task), raw), val_annotations)
        record = {
            "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses)),
            "val_score": val["score"], "val": val, "train_seconds": seconds,
            "frames_per_s": frames / seconds, "data_share": t_data / seconds,
            "eval_seconds": time.perf_counter() - t_epoch - seconds,
        }
        log.log(record)
        history.append(record)
        if val["score"] > best:
            best = val["score"]
            ckpt = _checkpoint(cfg, model, data, epoch, val, out_dir)
            best_state = ckpt["state_dict"]
            atomic_torch_save(ckpt, out_dir / "best.pt")
    bar.close()
    model.load_state_dict(best_state)
    raw = infer(model, cfg.task, data.table, data.val_videos, cfg.window, cfg.stride, cfg.batch_size, device, cfg.bf16)
    pp = postprocess.choose(cfg.task, raw, val_annotations)
    final = postprocess.apply_all(pp, raw)
    before = postprocess.score(cfg.task, postprocess.apply_all(postprocess.PostProcess(cfg.task), raw), val_annotations)
    after = postprocess.score(cfg.task, final, val_annotations)
    best_epoch = max(history, key=lambda r: r["val_score"])["epoch"]
    atomic_torch_save(_checkpoint(cfg, model, data, best_epoch, before, out_dir, pp, after), out_dir / "best.pt")
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


def _train_step(model, optimizer, loss_fn, b: dict, device: torch.device, bf16: bool) -> float:
    with autocast(device, bf16):
        out = model(b["x"].to(device), b["keep"].to(device))  # (B, W, K)
    loss = loss_fn(out, b["labels"].to(device), b["mask"].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _json(obj) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"


def _save_predictions(path: Path, raw: dict, final: dict, annotations: dict) -> None:
    """``videos`` names; per video i: ``raw_i`` (T, K) outputs, ``pred_i`` post-processed predictions,
    ``labels_i`` and ``valid_i`` (the annotation's rows)."""
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
