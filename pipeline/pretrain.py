"""MAE self-pretraining on folders of face images (stage 1 of Zhou et al. 2024, ABAW6).

Follows facebookresearch/mae ``main_pretrain.py`` / ``engine_pretrain.py``: AdamW (betas 0.9, 0.95,
weight decay 0.05 except biases and norms), ``lr = blr * effective_batch / 256``, linear warm-up
then a cosine decay updated every optimizer step, gradient accumulation, bf16 autocast.
:func:`train_one_epoch` is the step; set-up, resume, logging and saving are the shared
:class:`pipeline.engine.Engine`'s.

A run directory holds ``config.json`` (resolved), ``log.jsonl`` (and ``tensorboard/``),
``checkpoint-last.pt`` (written at the end of every epoch, atomically) and ``recon/epoch-XXX.png``.
Started again with the same settings, a run resumes from ``checkpoint-last.pt`` and ends with the
weights an uninterrupted run would have: the data order is a per-epoch seeded permutation, each
sample's augmentation is seeded by (seed, epoch, index), and the engine re-seeds the global RNG
(masking, drop-path) every epoch. A larger ``epochs`` extends a finished run.
"""

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.checkpoint import encoder_checkpoint, read_checkpoint, warn
from pipeline.config import ConfigError
from pipeline.configs.pretrain import PretrainConfig
from pipeline.data.pretrain_images import PretrainImages, find_images
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
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize
from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT, mae_config
from pipeline.plots.reconstruction import fixed_images, reconstruction_grid, save_png
from pipeline.runs import check_out_dir, check_run_kind, to_jsonable


def model_config(cfg: PretrainConfig) -> MAEConfig:
    """The MAE config a pretraining config asks for."""
    overrides = {"img_size": cfg.img_size, "mask_ratio": cfg.mask_ratio,
                 "norm_pix_loss": cfg.norm_pix_loss}
    for key in ("patch_size", "decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        if getattr(cfg, key) is not None:
            overrides[key] = getattr(cfg, key)
    return mae_config(cfg.model, **overrides)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norm scales (1-D) are not decayed, as in MAE."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, lr: float,
                   device: torch.device) -> torch.optim.AdamW:
    """MAE's AdamW (betas 0.9, 0.95; weight decay off biases and norms), fused on CPU and CUDA: the
    fused kernel (torch >= 2.4 on the CPU) is many times faster than the per-tensor loop for
    ViT-sized lists."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr, betas=(0.9, 0.95),
                             fused=device.type in ("cpu", "cuda"))


def _select(paths: list[Path], cfg: PretrainConfig) -> list[Path]:
    if cfg.max_images is None or len(paths) <= cfg.max_images:
        return paths
    pick = np.random.default_rng(cfg.seed).choice(len(paths), cfg.max_images, replace=False)
    return [paths[i] for i in sorted(pick)]


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    engine: Engine, cfg: PretrainConfig, device: torch.device,
                    on_unreadable) -> float:
    """One epoch of masked-patch reconstruction, as MAE's ``engine_pretrain.train_one_epoch``.

    Args:
        model: the MAE (DDP-wrapped under torchrun).
        loader: batches of uint8 images (B, C, H, W) and each one's index if it could not be read,
            else -1.
        on_unreadable: called with the index of each unreadable image.
    Returns:
        The mean loss over the epoch's micro-batches.
    """
    model.train()
    n_micro = engine.steps_per_epoch * cfg.accum_iter
    optimizer.zero_grad(set_to_none=True)
    for i, (images, bad) in enumerate(engine.batches(loader, total=n_micro * cfg.batch_size)):
        if i == n_micro:  # an incomplete accumulation at the epoch's end is not stepped
            break
        for b in bad[bad >= 0].tolist():
            on_unreadable(b)
        if i % cfg.accum_iter == 0:
            engine.set_lr(optimizer)
        update = (i + 1) % cfg.accum_iter == 0
        x = normalize(images.to(device, non_blocking=True))  # (B, C, H, W)
        with engine.no_sync(model, update):
            with autocast(device, cfg.bf16):
                loss, _, _ = model(x, cfg.mask_ratio)
            engine.backward(loss, optimizer, images=len(images), accum_iter=cfg.accum_iter,
                            update=update)
    return engine.epoch_loss()


def pretrain(cfg: PretrainConfig, *, stop_at_epoch: int | None = None,
             progress: bool = True) -> dict | None:
    """Pretrain (or resume, or extend) the MAE run ``cfg.out``; returns a summary of the run so far.

    Args:
        cfg: the run's settings.
        stop_at_epoch: return (resumably) once this many epochs are done; for time-sliced jobs and
            tests.
        progress: show the tqdm bar (rank 0 only).

    Returns:
        {"run", "checkpoint", "epochs_done", "images", "loss_first_step", "loss_last_epoch",
        "img_per_s", "unreadable"} (``loss_first_step``: the first logged step's loss, or the first
        epoch's mean when no step was logged; ``loss_last_epoch``, ``img_per_s``: the last epoch),
        or None on ranks other than 0 under torchrun.
    Raises:
        ConfigError / InputError: no images, too few for one step, a run made with other settings.
    """
    if not cfg.images:
        raise ConfigError("images", "is empty; give at least one folder of face images")
    # absolute, so that `--config RUN/config.json` resumes the run from any folder
    cfg = replace(cfg, images=tuple(str(Path(p).resolve()) for p in cfg.images),
                  out=str(Path(cfg.out).resolve()))
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    workers, threads = cpu_budget(device, cfg.workers, cfg.threads, dist_info.local_world_size)
    cfg = replace(cfg, workers=workers, threads=threads)  # resolved, so config.json says what ran
    run_dir = check_out_dir(cfg.out)
    check_run_kind(run_dir, "pretrain")
    mcfg = model_config(cfg)  # refuses sizes that do not fit, before the images are listed

    paths = _select(find_images(cfg.images, warn if dist_info.is_main else None), cfg)
    torch.manual_seed(cfg.seed)
    model = MaskedAutoencoderViT(mcfg).to(device)

    dataset = PretrainImages(paths, cfg.img_size, cfg.seed, tuple(cfg.crop_scale))
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, pin_memory=pin_memory(device), drop_last=True,
                        worker_init_fn=lower_priority)
    steps_per_epoch = len(loader) // cfg.accum_iter
    if steps_per_epoch == 0:
        raise ConfigError("batch_size", f"{cfg.batch_size} x accum_iter {cfg.accum_iter} x "
                                        f"{dist_info.world_size} process(es) is more than the "
                                        f"{len(paths)} images give for one optimizer step; lower "
                                        "batch_size or accum_iter")
    effective_batch = cfg.batch_size * cfg.accum_iter * dist_info.world_size
    peak_lr = cfg.lr if cfg.lr is not None else cfg.blr * effective_batch / 256
    optimizer = make_optimizer(model, cfg, peak_lr, device)
    engine = Engine(run_dir, "pretrain", cfg.epochs, steps_per_epoch, peak_lr, cfg.min_lr,
                    cfg.warmup_epochs * steps_per_epoch, cfg.seed, dist_info,
                    resume_key={**to_jsonable(cfg), "world_size": dist_info.world_size},
                    lr_setting="blr (or lr)", log_every=cfg.log_every, tensorboard=cfg.tensorboard,
                    progress=progress, threads=cfg.threads)
    last = read_checkpoint(engine.last_path) if engine.last_path.exists() else None
    engine.resume(model, optimizer, last)
    if last is not None:
        dataset.skip = {i for i, p in enumerate(paths) if str(p) in set(last.get("unreadable", []))}
    engine.start({
        "pretrain": to_jsonable(cfg), "model_config": asdict(mcfg),
        "world_size": dist_info.world_size, "effective_batch": effective_batch, "peak_lr": peak_lr,
        "steps_per_epoch": steps_per_epoch, "num_images": len(paths), "pixel_mean": PIXEL_MEAN,
        "pixel_std": PIXEL_STD, "versions": {"torch": torch.__version__, "timm": timm.__version__},
    })
    ddp = engine.wrap(model, device)
    recon_batch = fixed_images(paths, cfg.recon_images, cfg.img_size).to(device)  # (B, C, H, W)

    reported: set[int] = set(dataset.skip)

    def on_unreadable(index: int) -> None:
        if index not in reported:
            reported.add(index)
            warn(f"unreadable image skipped: {paths[index]}")

    for epoch in engine.run_epochs(stop_at_epoch):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        start = time.perf_counter()
        mean_loss = torch.tensor(train_one_epoch(ddp, loader, optimizer, engine, cfg, device,
                                                 on_unreadable),
                                 device=device)
        synchronize(device)  # the last step's queued work, inside the epoch's time
        seconds = time.perf_counter() - start
        dataset.skip = set(reported)  # the next epoch's workers skip them without retrying
        if dist_info.enabled:
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= dist_info.world_size
        n_images = steps_per_epoch * cfg.accum_iter * cfg.batch_size * dist_info.world_size
        engine.end_epoch({"loss": mean_loss.item(), "seconds": round(seconds, 2),
                          **engine.rates(n_images, seconds), "unreadable": len(reported)})
        engine.save_last(encoder_checkpoint("mae", cfg.model, asdict(mcfg), model.encoder,
                                            cfg.img_size, model=model.state_dict()), optimizer,
                         unreadable=sorted(str(paths[i]) for i in reported))
        if dist_info.is_main:
            picture = reconstruction_grid(model, recon_batch, cfg.seed)
            save_png(picture, run_dir / "recon" / f"epoch-{epoch + 1:03d}.png")
            engine.log.image("reconstruction", picture, epoch + 1)

    records = engine.finish()
    if not dist_info.is_main:
        return None
    steps = [r for r in records if "step" in r]
    epochs = [r for r in records if "seconds" in r]
    return {
        "run": str(run_dir),
        "checkpoint": str(engine.last_path) if engine.last_path.exists() else None,
        "epochs_done": epochs[-1]["epoch"] if epochs else 0,
        "images": len(paths),
        "loss_first_step": steps[0]["loss"] if steps else (epochs[0]["loss"] if epochs else None),
        "loss_last_epoch": epochs[-1]["loss"] if epochs else None,
        "img_per_s": epochs[-1]["img_per_s"] if epochs else None,
        "unreadable": len(reported),
    }
