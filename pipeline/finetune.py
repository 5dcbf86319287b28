"""Expression fine-tuning of the pretrained encoder (stage 2 of Zhou et al. 2024, ABAW6).

The paper trains "a fully connected head on the encoder" on Aff-Wild2's per-frame Expr labels with
AdamW at lr 1e-4, batch 256. The rest is MAE's fine-tuning recipe (He et al. 2022, appendix A.1;
facebookresearch/mae ``main_finetune.py``): layer-wise lr decay 0.75, drop-path 0.1, label smoothing
0.1, weight decay 0.05 off biases, norms and tokens, linear warm-up then a per-step cosine. What
this data adds: class-balanced sampling (or loss weights), a per-video cap on frames per epoch, and
a light augmentation by default (random resized crop of 80-100 % of the area, flip: the crops are
already aligned faces). MAE's stronger regularisers are options: random erasing, mixup and CutMix
(:mod:`pipeline.finetune_loss`), and colour jitter and grayscale against the colours that name a
person.

A run directory holds ``config.json`` (resolved), ``log.jsonl`` (and ``tensorboard/``),
``checkpoint-last.pt`` (every epoch) and ``best.pt`` (the epoch with the best validation macro F1,
computed officially over every valid Validation_Set frame with an image;
:mod:`pipeline.finetune_eval`). Both are project checkpoints of kind ``finetune`` that
:func:`pipeline.checkpoint.load_encoder` reads, with the ``pooling`` the head was trained on.
Resume, seeding, logging and saving are the shared :class:`pipeline.engine.Engine`'s;
:func:`train_one_epoch` is the step.
"""

import time
from dataclasses import asdict, replace
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

from pipeline.checkpoint import encoder_checkpoint, read_checkpoint, save_checkpoint, warn
from pipeline.config import ConfigError
from pipeline.configs.finetune import FinetuneConfig
from pipeline.data.affwild2 import EXPR_CLASSES, AffWild2
from pipeline.data.frames import EpochSampler, ExprFrames, class_weights, expr_frames
from pipeline.device import (
    autocast,
    cpu_budget,
    lower_priority,
    pin_memory,
    resolve_device,
    synchronize,
)
from pipeline.distributed import init_distributed
from pipeline.engine import Engine
from pipeline.finetune_eval import gather, predict_expr, validation_f1, validation_loader
from pipeline.finetune_loss import finetune_loss, mix_batch
from pipeline.finetune_model import build_classifier
from pipeline.models.classifier import ExprClassifier
from pipeline.models.encoder import normalize
from pipeline.runs import check_out_dir, check_run_kind, to_jsonable


def layer_decay_groups(model: ExprClassifier, weight_decay: float,
                       layer_decay: float) -> list[dict]:
    """Parameter groups with MAE's layer-wise lr decay; each group carries an ``lr_scale``.

    Layer 0 is the patch embedding and the tokens, layer i + 1 is block i, layer depth + 1
    everything after the blocks (final norm, heads). A parameter at layer l trains at
    ``layer_decay ** (depth + 1 - l)`` times the lr. Biases, norm weights (1-D) and the tokens are
    not decayed. Frozen parameters are left out.
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


def make_optimizer(model: ExprClassifier, cfg: FinetuneConfig,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999, as MAE's fine-tuning) over :func:`layer_decay_groups`, fused on CPU
    and CUDA (many times faster than the per-tensor loop on the CPU for ViT-sized lists; groups keep
    their lr)."""
    return torch.optim.AdamW(layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay),
                             lr=cfg.lr, betas=(0.9, 0.999), fused=device.type in ("cpu", "cuda"))


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    engine: Engine, cfg: FinetuneConfig, device: torch.device,
                    weight: torch.Tensor | None, pixel_mean, pixel_std,
                    on_unreadable) -> tuple[float, float]:
    """One epoch of fine-tuning: the step and nothing else, as MAE's
    ``engine_finetune.train_one_epoch``.

    Args:
        model: the classifier (DDP-wrapped under torchrun).
        loader: batches of {"image": uint8 (B, C, H, W), "expr": (B,), "ok": (B,), "row": (B,),
            AU / VA}.
        weight: Expr class weights (C,) or None.
        pixel_mean, pixel_std: the encoder's input normalisation.
        on_unreadable: called with the row of each frame whose image could not be read.
    Returns:
        (mean loss, training accuracy over readable frames; after mixing, a hit is the class with
        the larger share of the mixed target). Both are read from the device at the epoch's end.
    """
    model.train()
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    for batch in engine.batches(loader, total=engine.steps_per_epoch * cfg.batch_size):
        all_ok = bool(batch["ok"].all())  # on the host, before the copy
        for row in batch["row"][~batch["ok"]].tolist():
            on_unreadable(row)
        engine.set_lr(optimizer)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        x = normalize(batch["image"], pixel_mean, pixel_std)  # (B, C, H, W)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            x, batch = mix_batch(x, batch, cfg.mixup, cfg.cutmix, len(EXPR_CLASSES))
        with autocast(device, cfg.bf16):
            out = model(x)
        loss, parts = finetune_loss(out, batch, weight, cfg.label_smoothing, cfg.aux_weight,
                                    all_ok)
        engine.backward(loss, optimizer, images=len(x), parts=parts)
        truth = batch["expr_soft"].argmax(dim=1) if "expr_soft" in batch else batch["expr"]
        correct += ((out["expr"].argmax(dim=1) == truth) & batch["ok"]).sum()
        seen += batch["ok"].sum()
    return engine.epoch_loss(), int(correct) / max(int(seen), 1)


def finetune(cfg: FinetuneConfig, *, stop_at_epoch: int | None = None,
             progress: bool = True) -> dict | None:
    """Fine-tune (or resume, or extend) the run ``cfg.out``; returns a summary of the run so far.

    Args:
        cfg: the run's settings.
        stop_at_epoch: return (resumably) once this many epochs are done; for time-sliced jobs and
            tests.
        progress: show tqdm bars (rank 0 only).

    Returns:
        {"run", "best_checkpoint", "last_checkpoint", "epochs_done", "best_f1", "best_epoch",
        "last_f1", "img_per_s", "train_frames", "val_frames"}, or None on ranks other than 0 under
        torchrun.
    Raises:
        ConfigError / InputError: no dataset, too few frames for a batch, an unusable checkpoint, a
        run made with other settings.
    """
    if not cfg.data:
        raise ConfigError("data", "is required; give an Aff-Wild2-layout root")
    # absolute, so that `--config RUN/config.json` resumes the run from any folder
    cfg = replace(cfg, data=str(Path(cfg.data).resolve()), out=str(Path(cfg.out).resolve()),
                  init=str(Path(cfg.init).resolve()) if cfg.init else None,
                  head_init=str(Path(cfg.head_init).resolve()) if cfg.head_init else None)
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    workers, threads = cpu_budget(device, cfg.workers, cfg.threads, dist_info.local_world_size)
    cfg = replace(cfg, workers=workers, threads=threads)  # resolved, so config.json says what ran
    run_dir = check_out_dir(cfg.out)
    check_run_kind(run_dir, "finetune")
    best_path = run_dir / "best.pt"

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
    train_set = ExprFrames(train_index, cfg.img_size, cfg.seed, cfg.crop_scale,
                           color_jitter=cfg.color_jitter, grayscale=cfg.grayscale, erase=cfg.erase)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=pin_memory(device), drop_last=True,
                        persistent_workers=cfg.workers > 0, worker_init_fn=lower_priority)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError("batch_size", f"{cfg.batch_size} x {dist_info.world_size} process(es) is "
                                        f"more than the {sampler.epoch_size} training frames of an "
                                        "epoch; lower it")
    val_loader = validation_loader(val_index, cfg.img_size, cfg, device, dist_info)
    val_frames = len(val_index.capped(cfg.val_frames_per_video))  # over all ranks

    counts = train_index.class_counts()
    weight = None
    if cfg.balance == "weights":
        weight = torch.tensor(class_weights(counts), dtype=torch.float32, device=device)
    optimizer = make_optimizer(model, cfg, device)
    resume_key = to_jsonable({**asdict(cfg), "world_size": dist_info.world_size,
                              "init_sha256": source["init_sha256"],
                              "head_init_sha256": source.get("head_init_sha256")})
    engine = Engine(run_dir, "finetune", cfg.epochs, steps_per_epoch, cfg.lr, cfg.min_lr,
                    round(cfg.warmup_epochs * steps_per_epoch), cfg.seed, dist_info, resume_key,
                    lr_setting="lr", log_every=cfg.log_every, tensorboard=cfg.tensorboard,
                    progress=progress, threads=cfg.threads)
    last = read_checkpoint(engine.last_path) if engine.last_path.exists() else None
    engine.resume(model, optimizer, last)
    best = dict(last["best"]) if last is not None else {"f1": -1.0, "epoch": 0}
    resolved = {
        "finetune": to_jsonable(cfg), "encoder": source, "world_size": dist_info.world_size,
        "effective_batch": cfg.batch_size * dist_info.world_size,
        "steps_per_epoch": steps_per_epoch, "train_frames": len(train_index),
        "train_frames_per_epoch": sampler.epoch_size, "val_frames": val_frames,
        "val_frames_all": len(val_index),
        "train_class_counts": dict(zip(EXPR_CLASSES, counts.tolist(), strict=True)),
        "class_weights": weight.tolist() if weight is not None else None,
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},
    }
    engine.start(resolved)
    ddp = engine.wrap(model, device)

    def checkpoint(epoch: int, val: dict) -> dict:
        return encoder_checkpoint(
            "finetune", source["model_name"], source["model_config"], model.encoder, cfg.img_size,
            mean, std, pooling=cfg.pooling, model=model.state_dict(), epoch=epoch,
            epochs=cfg.epochs, val=val, init_sha256=source["init_sha256"],
            linear_probe=cfg.linear_probe)

    reported: set[int] = set()

    def on_unreadable(row: int) -> None:
        if row not in reported:
            reported.add(row)
            warn(f"unreadable image left out: {train_index.image_paths[row]}")

    for epoch in engine.run_epochs(stop_at_epoch):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        loss, train_acc = train_one_epoch(ddp, loader, optimizer, engine, cfg, device, weight, mean,
                                          std, on_unreadable)
        synchronize(device)  # the last step's queued work, inside the epoch's time
        seconds = time.perf_counter() - start
        val = validation_f1(gather(predict_expr(model, val_loader, device, cfg.bf16, mean, std,
                                                progress and dist_info.is_main), dist_info),
                            val_index)
        improved = val["score"] > best["f1"]
        if improved:
            best = {"f1": val["score"], "epoch": epoch + 1}
        rates = engine.rates(steps_per_epoch * cfg.batch_size * dist_info.world_size, seconds)
        engine.end_epoch({
            "loss": loss, "train_acc": train_acc, "seconds": round(seconds, 2), **rates,
            "val_f1": val["score"], "val_acc": val["accuracy"], "val_frames": val["frames"],
            "val_per_class": {c: val[c] for c in EXPR_CLASSES},
            "unreadable": len(reported) + val["unreadable"], "best_f1": best["f1"],
            "best_epoch": best["epoch"],
        })
        engine.message(f"epoch {epoch + 1}: val macro F1 {val['score']:.4f} (best {best['f1']:.4f} "
                       f"at epoch {best['epoch']}), "
                       f"{rates['img_per_s']:.0f} img/s")  # every process's, as the log's
        # best first: a crash between the two writes re-runs this epoch
        if improved and dist_info.is_main:
            save_checkpoint({**checkpoint(epoch + 1, val), "config": resolved}, best_path)
        engine.save_last(checkpoint(epoch + 1, val), optimizer, best=best)

    records = [r for r in engine.finish() if "val_f1" in r]
    if not dist_info.is_main:
        return None
    return {
        "run": str(run_dir),
        "best_checkpoint": str(best_path) if best_path.exists() else None,
        "last_checkpoint": str(engine.last_path) if engine.last_path.exists() else None,
        "epochs_done": records[-1]["epoch"] if records else 0,
        "best_f1": records[-1]["best_f1"] if records else None,
        "best_epoch": records[-1]["best_epoch"] if records else None,
        "last_f1": records[-1]["val_f1"] if records else None,
        "img_per_s": records[-1]["img_per_s"] if records else None,
        "train_frames": len(train_index),
        "val_frames": val_frames,
    }
