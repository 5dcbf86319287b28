"""Expression fine-tuning of the pretrained encoder (stage 2 of ``shared/PAPER.md``).

The paper trains "a fully connected head on the encoder" on Aff-Wild2's per-frame Expr labels with AdamW
at lr 1e-4, batch 256. The rest is MAE's fine-tuning recipe (He et al. 2022, appendix A.1;
facebookresearch/mae ``main_finetune.py``): layer-wise lr decay 0.75, drop-path 0.1, label smoothing
0.1, weight decay 0.05 off biases, norms and tokens, linear warm-up then a per-step cosine. What this
data adds: class-balanced sampling (or loss weights), a per-video cap on frames per epoch, and a light
augmentation by default (random resized crop of 80-100 % of the area, flip: the crops are already aligned
faces). MAE's stronger regularisers are options: random erasing, mixup and CutMix (:func:`mix_batch`),
and colour jitter and grayscale against the colours that name a video's person.

A run directory holds ``config.json`` (resolved), ``log.jsonl``, ``checkpoint-last.pt`` (every epoch)
and ``best.pt`` (the epoch with the best validation macro F1, computed officially over every valid
Validation_Set frame with an image). Both are project checkpoints of kind ``finetune`` that
:func:`pipeline.models.checkpoint.load_encoder` reads, with the ``pooling`` the head was trained on.
The same command started again resumes from ``checkpoint-last.pt`` and ends where an uninterrupted
run would (conventions of :mod:`pipeline.pretrain`: seeded data order and augmentation, the global RNG
re-seeded every epoch).
"""

import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.affwild2 import EXPR_CLASSES, AffWild2
from pipeline.data.frames import (
    BALANCE_MODES,
    EpochSampler,
    ExprFrames,
    FrameIndex,
    class_weights,
    expr_frames,
)
from pipeline.device import autocast, pin_memory, resolve_device
from pipeline.distributed import DistInfo, barrier, init_distributed
from pipeline.errors import InputError
from pipeline.metrics import expr_f1
from pipeline.models.checkpoint import (
    EncoderInfo,
    encoder_checkpoint,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
    warn,
)
from pipeline.models.classifier import PROBE_NORM_EPS, ExprClassifier
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, POOL_MODES, normalize
from pipeline.models.mae import build_encoder, mae_config
from pipeline.pretrain import epoch_seed, lr_at
from pipeline.runs import (
    JsonlLogger,
    check_resumable,
    read_jsonl,
    sha256_file,
    to_jsonable,
    write_config,
)


@dataclass(frozen=True)
class FinetuneConfig:
    """Defaults reproduce the paper (AdamW, lr 1e-4, batch 256) inside MAE's fine-tuning recipe.

    ``epochs`` and ``frames_per_video`` are not in the paper: 10 epochs of at most 300 frames per video
    (about 75,000 of Aff-Wild2's training frames per epoch) are this project's choice.
    """

    data: str = ""
    out: str = "runs/finetune"
    init: str | None = None  # a checkpoint load_encoder takes; None: random init (with a warning)
    model: str | None = None  # None: the init checkpoint's, else mae_vit_base_patch16
    img_size: int | None = None  # None: the init checkpoint's, else 224
    patch_size: int | None = None  # random init only (None: the registered model's); a file fixes its own
    pooling: str = "mean"  # MAE fine-tunes on the mean of the patch tokens; extraction reuses this
    epochs: int = 10
    batch_size: int = 256  # per process
    lr: float = 1e-4  # absolute (not scaled with the batch), the paper's
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    balance: str = "sampler"  # sampler | weights | none
    frames_per_video: int = 300  # per epoch, a fresh seeded draw each epoch; 0 = all
    val_frames_per_video: int = 0  # evenly spaced; 0 = all (the official metric)
    crop_scale: tuple[float, float] = (0.8, 1.0)
    color_jitter: float = 0.0  # ExprFrames: strength of brightness/contrast/saturation/hue jitter
    grayscale: float = 0.0  # probability
    erase: float = 0.0  # random-erasing probability (MAE's recipe: 0.25)
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup (MAE's recipe: 0.8); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix (MAE's recipe: 1.0); with mixup, one of the two per batch
    aux_au: bool = False
    aux_va: bool = False
    aux_weight: float = 1.0
    linear_probe: bool = False  # frozen encoder, only the head trains
    head_init: str | None = None  # a linear-probe run's checkpoint whose heads start this fine-tune (LP-FT)
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    log_every: int = 10  # optimizer steps between log.jsonl step lines


def layer_decay_groups(model: ExprClassifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with MAE's layer-wise lr decay; each group carries an ``lr_scale``.

    Layer 0 is the patch embedding and the tokens, layer i + 1 is block i, layer depth + 1 everything
    after the blocks (final norm, heads). A parameter at layer l trains at ``layer_decay ** (depth + 1 -
    l)`` times the lr. Biases, norm weights (1-D) and the tokens are not decayed. Frozen parameters are
    left out.
    """
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        decay = param.ndim > 1 and not name.endswith(("cls_token", "pos_embed"))
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer,
        })
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def expr_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
              smoothing: float) -> torch.Tensor:
    """Cross-entropy over valid frames only: logits (B, 8), labels (B,) in 0..7 or (B, 8) probabilities.

    With class weights, torch divides a hard-label loss by the summed weights of the labels but a
    probability-target loss by B; dividing the latter by its targets' summed weights instead makes a one-hot
    target score exactly like its hard label, so mixing does not rescale the loss.
    """
    if labels.dim() == 2 and weight is not None:
        total = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing, reduction="sum")
        return total / (labels @ weight).sum().clamp(min=1e-12)
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)


def mix_batch(x: torch.Tensor, batch: dict, mixup: float, cutmix: float, num_classes: int) -> tuple[torch.Tensor, dict]:
    """Mixup or CutMix of a batch with its own reverse, as in MAE's fine-tuning (timm's ``Mixup``).

    Draws from torch's global RNG, which the loop re-seeds every epoch, so a resumed run mixes alike.
    With both alphas set, each batch takes one of the two at even odds. CutMix pastes a box of the
    partner image; the mixing weight becomes the kept area. Targets mix with the same weight: ``expr``
    becomes ``expr_soft`` (B, 8) probabilities, AU labels soft targets and VA values a weighted mean,
    each valid only where both rows' labels are; rows whose image or partner's image could not be read
    drop out through ``ok``.

    Args:
        x: (B, C, H, W) normalised images.
        batch: the loader's batch on the device.
    Returns:
        The mixed images and a copy of ``batch`` with mixed targets.
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(()) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = x.flip(0)
    if use_cutmix:
        _, _, h, w = x.shape
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        x = lam * x + (1.0 - lam) * partner
    mixed = dict(batch)
    onehot = F.one_hot(batch["expr"], num_classes).float()
    mixed["expr_soft"] = lam * onehot + (1.0 - lam) * onehot.flip(0)
    mixed["ok"] = batch["ok"] & batch["ok"].flip(0)
    au = batch["au"].clamp(min=0).float()  # (B, 12); -1 (no label) rows stay out through au_valid
    mixed["au"] = lam * au + (1.0 - lam) * au.flip(0)
    mixed["au_valid"] = batch["au_valid"] & batch["au_valid"].flip(0)
    mixed["va"] = lam * batch["va"] + (1.0 - lam) * batch["va"].flip(0)
    mixed["va_valid"] = batch["va_valid"] & batch["va_valid"].flip(0)
    return x, mixed


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B,) where ``mask``; 0 (still on the graph, for DDP) when no row is valid."""
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1)


def finetune_loss(out: dict, batch: dict, weight: torch.Tensor | None, cfg: FinetuneConfig) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts for one batch (``batch`` tensors already on the device).

    Rows whose image could not be decoded (``ok`` false) are left out of every term; AU and VA terms
    use only the rows whose labels are valid.
    """
    keep = batch["ok"]
    logits = out["expr"].float()  # (B, 8)
    target = batch.get("expr_soft", batch["expr"])  # (B, 8) probabilities after mixing, else (B,) classes
    if keep.any():
        loss = expr_loss(logits[keep], target[keep], weight, cfg.label_smoothing)
    else:
        loss = logits.sum() * 0.0  # keeps the graph so every DDP rank reduces the same parameters
    parts = {"expr": loss.item()}
    if "au" in out:
        per_frame = F.binary_cross_entropy_with_logits(
            out["au"].float(), batch["au"].clamp(min=0).float(), reduction="none").mean(dim=1)  # (B,); soft if mixed
        au = _masked_mean(per_frame, keep & batch["au_valid"])
        loss = loss + cfg.aux_weight * au
        parts["au"] = au.item()
    if "va" in out:
        # Frame-level regression: CCC is a sequence metric, left to the temporal heads.
        per_frame = ((out["va"].float() - batch["va"]) ** 2).mean(dim=1)  # (B,)
        va = _masked_mean(per_frame, keep & batch["va_valid"])
        loss = loss + cfg.aux_weight * va
        parts["va"] = va.item()
    return loss, parts


def validation_loader(index: FrameIndex, img_size: int, cfg: FinetuneConfig, device: torch.device,
                      dist_info: DistInfo | None = None) -> DataLoader:
    """The frames validation scores (``--val-frames-per-video``, evenly spaced), un-augmented and in order;
    under ``torchrun`` each rank takes every world_size-th of them."""
    rows = index.capped(cfg.val_frames_per_video)
    if dist_info is not None:
        rows = rows[dist_info.rank::dist_info.world_size]
    return DataLoader(ExprFrames(index, img_size), batch_size=cfg.batch_size, sampler=rows.tolist(),
                      num_workers=cfg.workers, pin_memory=pin_memory(device), persistent_workers=cfg.workers > 0)


@torch.no_grad()
def predict_expr(model: torch.nn.Module, loader: DataLoader, device: torch.device, bf16: bool,
                 pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD, progress: bool = False) -> dict[str, np.ndarray]:
    """Class predictions for every frame a loader yields: {"row", "pred", "ok"}, each (F,)."""
    was_training = model.training
    model.eval()
    rows, preds, oks = [], [], []
    for batch in tqdm(loader, desc="validate", unit="batch", disable=not progress, dynamic_ncols=True, leave=False):
        x = normalize(batch["image"].to(device, non_blocking=True), pixel_mean, pixel_std)  # (B, C, H, W)
        with autocast(device, bf16):
            logits = model(x)["expr"]  # (B, 8)
        preds.append(logits.float().argmax(dim=1).cpu().numpy())
        rows.append(batch["row"].numpy())
        oks.append(batch["ok"].numpy())
    model.train(was_training)
    empty = np.zeros(0, dtype=np.int64)
    return {
        "row": np.concatenate(rows) if rows else empty,
        "pred": np.concatenate(preds) if preds else empty,
        "ok": np.concatenate(oks) if oks else empty.astype(bool),
    }


def _gather(result: dict[str, np.ndarray], dist_info: DistInfo) -> dict[str, np.ndarray]:
    if not dist_info.enabled:
        return result
    parts: list = [None] * dist_info.world_size
    dist.all_gather_object(parts, result)
    return {k: np.concatenate([p[k] for p in parts]) for k in result}


def validation_f1(result: dict[str, np.ndarray], index: FrameIndex) -> dict:
    """The official Expr macro F1 (``expr_f1``) over the frames predicted, unreadable ones left out."""
    ok = result["ok"].astype(bool)
    metrics = expr_f1(result["pred"][ok], index.expr[result["row"][ok]])
    # plain Python numbers: checkpoints must load with weights_only=True
    return {**{k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()},
            "unreadable": int((~ok).sum())}


def _check_config(cfg: FinetuneConfig) -> None:
    if not cfg.data:
        raise InputError("no dataset given; pass --data with an Aff-Wild2-layout root")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
    if cfg.pooling not in POOL_MODES:
        raise InputError(f"unknown --pooling {cfg.pooling!r}; use one of {', '.join(POOL_MODES)}")
    if cfg.balance not in BALANCE_MODES:
        raise InputError(f"unknown --balance {cfg.balance!r}; use one of {', '.join(BALANCE_MODES)}")
    if not 0 < cfg.layer_decay <= 1:
        raise InputError(f"--layer-decay {cfg.layer_decay} must lie in (0, 1]")
    if not 0 <= cfg.label_smoothing < 1:
        raise InputError(f"--label-smoothing {cfg.label_smoothing} must lie in [0, 1)")
    if not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise InputError(f"crop_scale {cfg.crop_scale} must satisfy 0 < min <= max <= 1")
    if not 0 <= cfg.color_jitter < 1:
        raise InputError(f"--color-jitter {cfg.color_jitter} must lie in [0, 1)")
    for name, p in (("--grayscale", cfg.grayscale), ("--erase", cfg.erase)):
        if not 0 <= p <= 1:
            raise InputError(f"{name} {p} is a probability; use a value in [0, 1]")
    if cfg.mixup < 0 or cfg.cutmix < 0:
        raise InputError("--mixup and --cutmix are Beta alphas: use 0 (off) or a positive value")
    if cfg.head_init and (cfg.linear_probe or not cfg.init):
        raise InputError("--head-init starts a fine-tune from a linear probe's head: it needs --init (the probe's "
                         "encoder) and no --linear-probe")


def build_classifier(cfg: FinetuneConfig) -> tuple[ExprClassifier, dict]:
    """The classifier for a config, and what its encoder is (name, config, init file, normalisation).

    With ``cfg.init`` the encoder comes from :func:`load_encoder` (drop-path set to ``cfg.drop_path``);
    without, it is built at random from the registered model, with a warning.
    """
    if cfg.init:
        if cfg.patch_size is not None:
            raise InputError("--patch-size is for a random init only; a checkpoint's patch size is its own")
        encoder, info = load_encoder(Path(cfg.init), cfg.model, cfg.img_size, drop_path_rate=cfg.drop_path)
        source = {
            "model_name": info.model_name, "model_config": info.model_config, "img_size": info.img_size,
            "pixel_mean": list(info.pixel_mean), "pixel_std": list(info.pixel_std),
            "init": info.path, "init_sha256": info.sha256, "init_kind": info.kind,
        }
    else:
        warn("no --init: the encoder starts from random weights (a from-scratch baseline, not the method)")
        name = cfg.model or "mae_vit_base_patch16"
        overrides = {"img_size": cfg.img_size or mae_config(name).img_size, "drop_path_rate": cfg.drop_path}
        if cfg.patch_size is not None:
            overrides["patch_size"] = cfg.patch_size
        resolved = mae_config(name, **overrides)
        encoder = build_encoder(name, **asdict(resolved))
        source = {
            "model_name": name, "model_config": asdict(resolved), "img_size": resolved.img_size,
            "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
            "init": None, "init_sha256": None, "init_kind": "random",
        }
    model = ExprClassifier(encoder, cfg.pooling, cfg.aux_au, cfg.aux_va, cfg.linear_probe)
    if cfg.head_init:
        source["head_init"], source["head_init_sha256"] = load_probe_heads(model, Path(cfg.head_init), source)
    return model, source


def load_probe_heads(model: ExprClassifier, path: Path, source: dict) -> tuple[str, str]:
    """Start ``model``'s heads from a linear-probe run's (LP-FT, Kumar et al. 2022); returns (path, sha256).

    The probe's BatchNorm (no affine part) is folded into each head, so the fine-tune starts from exactly the
    probe's predictions (in eval mode) instead of a random head whose large early gradients distort the
    pretrained features. The probe must have been trained on this encoder: its recorded init is ``--init``,
    or ``--init`` is the probe's own checkpoint.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("model")
    if not ckpt.get("linear_probe") or not isinstance(state, dict) or "probe_norm.running_mean" not in state:
        raise InputError(f"--head-init {path} is not a linear-probe run's checkpoint; give the best.pt of a "
                         "finetune run made with --linear-probe")
    sha = sha256_file(path)
    if source["init_sha256"] not in (ckpt.get("init_sha256"), sha):
        trained_on = (ckpt.get("config") or {}).get("encoder", {}).get("init") or "another checkpoint"
        raise InputError(f"--head-init {path} was trained on the encoder of {trained_on} (sha256 "
                         f"{str(ckpt.get('init_sha256'))[:12]}), not on --init {source['init']}; give the checkpoint "
                         "that probe started from as --init")
    scale = 1.0 / torch.sqrt(state["probe_norm.running_var"].float() + PROBE_NORM_EPS)
    shift = state["probe_norm.running_mean"].float() * scale
    for name in ("head", "au_head", "va_head"):
        head = getattr(model, name)
        if head is None:
            continue
        if f"{name}.weight" not in state:
            raise InputError(f"--head-init {path} has no {name}; drop the matching --aux option or probe with it")
        # Same shapes: the sha256 check above makes the probe's encoder this one.
        weight, bias = state[f"{name}.weight"].float(), state[f"{name}.bias"].float()
        with torch.no_grad():  # W (z - mean) / std + b  ==  (W / std) z + (b - W mean / std)
            head.weight.copy_(weight * scale)
            head.bias.copy_(bias - weight @ shift)
    return str(path.resolve()), sha


def load_classifier(path: Path) -> tuple[ExprClassifier, EncoderInfo]:
    """The whole fine-tuned classifier (encoder, pooling, heads) of a ``finetune`` checkpoint, in eval mode.

    Returns:
        (classifier, info) with ``info`` from :func:`load_encoder`.
    """
    encoder, info = load_encoder(Path(path))
    ckpt = read_checkpoint(Path(path))
    if info.kind != "finetune" or "model" not in ckpt:
        raise InputError(f"{path} is a {info.kind!r} checkpoint, not a fine-tuned classifier; give a finetune run's best.pt")
    state = ckpt["model"]
    model = ExprClassifier(encoder, info.pooling or "cls", "au_head.weight" in state, "va_head.weight" in state,
                           bool(ckpt.get("linear_probe", False)))
    model.load_state_dict(state)
    return model.eval(), info


def finetune(cfg: FinetuneConfig, *, stop_at_epoch: int | None = None, progress: bool = True) -> dict | None:
    """Fine-tune (or resume) the run ``cfg.out``; returns a summary of the run so far.

    Args:
        cfg: the run's options.
        stop_at_epoch: return (resumably) once this many epochs are done; for time-sliced jobs and tests.
        progress: show tqdm bars (rank 0 only).

    Returns:
        {"run", "best_checkpoint", "last_checkpoint", "epochs_done", "best_f1", "best_epoch", "last_f1",
        "img_per_s", "train_frames", "val_frames"}, or None on ranks other than 0 under torchrun.
    """
    _check_config(cfg)
    cfg = replace(cfg, data=str(Path(cfg.data).resolve()),
                  init=str(Path(cfg.init).resolve()) if cfg.init else None,
                  head_init=str(Path(cfg.head_init).resolve()) if cfg.head_init else None)
    dist_info = init_distributed()
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    last_path, best_path = run_dir / "checkpoint-last.pt", run_dir / "best.pt"

    ds = AffWild2(Path(cfg.data))
    train_index, val_index = expr_frames(ds, "Train_Set"), expr_frames(ds, "Validation_Set")
    torch.manual_seed(cfg.seed)
    model, source = build_classifier(cfg)
    cfg = replace(cfg, model=source["model_name"], img_size=source["img_size"],
                  patch_size=source["model_config"]["patch_size"] if not cfg.init else None)
    model.to(device)
    mean, std = source["pixel_mean"], source["pixel_std"]

    sampler = EpochSampler(train_index, cfg.seed, cfg.frames_per_video, cfg.balance,
                           dist_info.rank, dist_info.world_size)
    train_set = ExprFrames(train_index, cfg.img_size, cfg.seed, cfg.crop_scale, color_jitter=cfg.color_jitter,
                           grayscale=cfg.grayscale, erase=cfg.erase)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=pin_memory(device), drop_last=True, persistent_workers=cfg.workers > 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise InputError(
            f"an epoch holds {sampler.epoch_size} training frames, less than one batch of --batch-size "
            f"{cfg.batch_size} x {dist_info.world_size} process(es); lower --batch-size"
        )
    val_loader = validation_loader(val_index, cfg.img_size, cfg, device, dist_info)
    val_frames = len(val_index.capped(cfg.val_frames_per_video))  # over all ranks

    counts = train_index.class_counts()
    weight = None
    if cfg.balance == "weights":
        weight = torch.tensor(class_weights(counts), dtype=torch.float32, device=device)
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch

    resolved = {
        "finetune": to_jsonable(cfg), "encoder": source, "world_size": dist_info.world_size,
        "effective_batch": cfg.batch_size * dist_info.world_size, "steps_per_epoch": steps_per_epoch,
        "train_frames": len(train_index), "train_frames_per_epoch": sampler.epoch_size,
        "val_frames": val_frames, "val_frames_all": len(val_index),
        "train_class_counts": dict(zip(EXPR_CLASSES, counts.tolist(), strict=True)),
        "class_weights": weight.tolist() if weight is not None else None,
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},
    }
    resume_key = to_jsonable({**asdict(cfg), "world_size": dist_info.world_size,
                              "init_sha256": source["init_sha256"],
                              "head_init_sha256": source.get("head_init_sha256")})
    done, step, best = 0, 0, {"f1": -1.0, "epoch": 0}
    if last_path.exists():
        ckpt = read_checkpoint(last_path)
        check_resumable(ckpt.get("resume_key", {}), resume_key, run_dir)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        done, step, best = int(ckpt["epoch"]), int(ckpt["scheduler"]["step"]), dict(ckpt["best"])
    logger = JsonlLogger(run_dir / "log.jsonl")
    if dist_info.is_main:
        write_config(run_dir, resolved)
        logger.truncate_after("epoch", done)
    barrier()

    ddp = model
    if dist_info.enabled:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(path: Path, epoch: int, val: dict, **extra) -> None:
        save_checkpoint(encoder_checkpoint(
            "finetune", source["model_name"], source["model_config"], model.encoder, cfg.img_size,
            mean, std, pooling=cfg.pooling, model=model.state_dict(), epoch=epoch, epochs=cfg.epochs,
            val=val, init_sha256=source["init_sha256"], linear_probe=cfg.linear_probe, **extra,
        ), path)

    reported: set[int] = set()
    for epoch in range(done, cfg.epochs):
        if stop_at_epoch is not None and epoch >= stop_at_epoch:
            break
        torch.manual_seed(epoch_seed(cfg.seed, epoch, dist_info.rank))
        sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(total=steps_per_epoch * cfg.batch_size, unit="img", desc=f"finetune {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and dist_info.is_main), dynamic_ncols=True)
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        for batch in loader:
            for row in batch["row"][~batch["ok"]].tolist():
                if row not in reported:
                    reported.add(row)
                    warn(f"unreadable image left out: {train_index.image_paths[row]}")
            lr = lr_at(step, cfg.lr, cfg.min_lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            x = normalize(batch["image"], mean, std)  # (B, C, H, W)
            if cfg.mixup > 0 or cfg.cutmix > 0:
                x, batch = mix_batch(x, batch, cfg.mixup, cfg.cutmix, len(EXPR_CLASSES))
            with autocast(device, cfg.bf16):
                out = ddp(x)
            loss, parts = finetune_loss(out, batch, weight, cfg)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item()
            # After mixing, a hit is the class with the larger share of the mixed target.
            truth = batch["expr_soft"].argmax(dim=1) if "expr_soft" in batch else batch["expr"]
            correct += int((out["expr"].argmax(dim=1) == truth)[batch["ok"]].sum())
            seen += int(batch["ok"].sum())
            if dist_info.is_main and (step == 1 or step % cfg.log_every == 0):
                logger.log({"epoch": epoch + 1, "step": step, "loss": loss.item(), "lr": lr,
                            **{f"loss_{k}": v for k, v in parts.items()}})
            bar.update(len(x))
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        bar.close()
        seconds = time.perf_counter() - start

        val = validation_f1(_gather(predict_expr(model, val_loader, device, cfg.bf16, mean, std,
                                                 progress and dist_info.is_main), dist_info), val_index)
        record = {
            "epoch": epoch + 1, "loss": loss_sum / steps_per_epoch, "train_acc": correct / max(seen, 1),
            "lr": lr, "seconds": round(seconds, 2),
            "img_per_s": steps_per_epoch * cfg.batch_size * dist_info.world_size / seconds,
            "val_f1": val["score"], "val_acc": val["accuracy"], "val_frames": val["frames"],
            "val_per_class": {c: val[c] for c in EXPR_CLASSES}, "unreadable": len(reported) + val["unreadable"],
        }
        improved = val["score"] > best["f1"]
        if improved:
            best = {"f1": val["score"], "epoch": epoch + 1}
        if dist_info.is_main:
            logger.log({**record, "best_f1": best["f1"], "best_epoch": best["epoch"]})
            if progress:  # stderr, like the bars: with --json, stdout holds the one JSON object
                tqdm.write(f"epoch {epoch + 1}: val macro F1 {val['score']:.4f} (best {best['f1']:.4f} at "
                           f"epoch {best['epoch']}), {record['img_per_s']:.0f} img/s", file=sys.stderr)
            if improved:  # best first: a crash between the two writes re-runs this epoch on resume
                save(best_path, epoch + 1, val, config=resolved)
            save(last_path, epoch + 1, val, optimizer=optimizer.state_dict(), best=best,
                 scheduler={"step": step, "warmup_steps": warmup_steps, "total_steps": total_steps},
                 rng={"seed": cfg.seed, "scheme": "per-epoch reseed from (seed, epoch, rank)"},
                 resume_key=resume_key)
        barrier()

    return _summary(run_dir, len(train_index), val_frames) if dist_info.is_main else None


def _summary(run_dir: Path, train_frames: int, val_frames: int) -> dict:
    records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").exists() else []
    epochs = [r for r in records if "val_f1" in r]
    return {
        "run": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
        "last_checkpoint": str(run_dir / "checkpoint-last.pt") if (run_dir / "checkpoint-last.pt").exists() else None,
        "epochs_done": epochs[-1]["epoch"] if epochs else 0,
        "best_f1": epochs[-1]["best_f1"] if epochs else None,
        "best_epoch": epochs[-1]["best_epoch"] if epochs else None,
        "last_f1": epochs[-1]["val_f1"] if epochs else None,
        "img_per_s": epochs[-1]["img_per_s"] if epochs else None,
        "train_frames": train_frames,
        "val_frames": val_frames,
    }
