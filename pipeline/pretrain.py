"""MAE self-pretraining on folders of face images (stage 1 of ``shared/PAPER.md``).

Follows facebookresearch/mae ``main_pretrain.py`` / ``engine_pretrain.py``: AdamW (betas 0.9, 0.95,
weight decay 0.05 except biases and norms), ``lr = blr * effective_batch / 256``, linear warm-up then a
cosine decay updated every optimizer step, gradient accumulation, bf16 autocast.

A run directory holds ``config.json`` (resolved), ``log.jsonl``, ``checkpoint-last.pt`` (written at the end
of every epoch, atomically) and ``recon/epoch-XXX.png``. Started again with the same options, a run resumes
from ``checkpoint-last.pt`` and ends with the weights an uninterrupted run would have: the data order is a
per-epoch seeded permutation, each sample's augmentation is seeded by (seed, epoch, index), and the global
RNG (masking, drop-path) is re-seeded at the start of every epoch from (seed, epoch, rank).
"""

import contextlib
import io
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline.data.images import PretrainImages, UnreadableImage, decode_source, find_images
from pipeline.device import autocast, pin_memory, resolve_device
from pipeline.distributed import DistInfo, barrier, init_distributed
from pipeline.errors import InputError
from pipeline.models.checkpoint import encoder_checkpoint, read_checkpoint, save_checkpoint, warn
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize
from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT, mae_config
from pipeline.runs import (
    JsonlLogger,
    atomic_write_bytes,
    check_resumable,
    read_jsonl,
    to_jsonable,
    write_config,
)


@dataclass(frozen=True)
class PretrainConfig:
    """Defaults reproduce the paper: ViT-B/16 at 224 px, 75 % masking, batch 1024, lr 5e-4, 500 epochs."""

    images: tuple[str, ...] = ()
    out: str = "runs/pretrain"
    model: str = "mae_vit_base_patch16"
    img_size: int = 224
    patch_size: int | None = None  # None: the registered model's (16); 8 gives 196 tokens on 112 px crops
    epochs: int = 500
    batch_size: int = 64  # per process
    accum_iter: int = 16  # 64 x 16 = 1024 images per optimizer step on one device, the paper's batch
    blr: float = 1.25e-4  # the paper's lr 5e-4 at batch 1024 under MAE's rule (MAE's own default: 1.5e-4)
    lr: float | None = None  # absolute learning rate; overrides blr when set
    min_lr: float = 0.0
    warmup_epochs: int = 40  # MAE's
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    crop_scale: tuple[float, float] = (0.2, 1.0)  # MAE's random resized crop; aligned faces may want less
    norm_pix_loss: bool = True
    decoder_dim: int | None = None  # None: the registered model's decoder
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    max_images: int | None = None  # a seeded random subset of the images found
    workers: int = 4
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    log_every: int = 10  # optimizer steps between log.jsonl step lines
    recon_images: int = 6  # rows of the per-epoch reconstruction picture


def model_config(cfg: PretrainConfig) -> MAEConfig:
    """The MAE config a pretraining config asks for."""
    overrides = {"img_size": cfg.img_size, "mask_ratio": cfg.mask_ratio, "norm_pix_loss": cfg.norm_pix_loss}
    for key, value in (("patch_size", cfg.patch_size), ("decoder_embed_dim", cfg.decoder_dim),
                       ("decoder_depth", cfg.decoder_depth), ("decoder_num_heads", cfg.decoder_heads)):
        if value is not None:
            overrides[key] = value
    return mae_config(cfg.model, **overrides)


def lr_at(step: int, peak: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then half a cosine down to ``min_lr``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norm scales (1-D) are not decayed, as in MAE."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG seed of one epoch on one rank (masking noise, drop-path)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@torch.no_grad()
def reconstruction_grid(model: MaskedAutoencoderViT, images: torch.Tensor, seed: int,
                        mean=PIXEL_MEAN, std=PIXEL_STD) -> Image.Image:
    """Rows of original | masked | reconstruction | reconstruction with the visible patches pasted.

    With ``norm_pix_loss`` the model predicts each patch standardised, so (as MAE's own visualisation) the
    prediction is shown at the true patch's mean and std: colour levels come from the image, the structure
    inside each patch from the model. A footer line says so.

    Args:
        images: uint8 (B, C, H, W) on the model's device. The mask is drawn from ``seed`` (same every epoch)
            without touching the training RNG.
    """
    was_training = model.training
    model.eval()
    x = normalize(images, mean, std)  # (B, C, H, W)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, pred, mask = model(x)  # (B, N, P), (B, N)
    model.train(was_training)
    if model.config.norm_pix_loss:  # predictions are per-patch standardised: undo with the true patch stats
        target = model.patchify(x)  # (B, N, P)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    recon = model.unpatchify(pred.float())  # (B, C, H, W), normalised space
    p = model.patch_size
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * 3))  # (B, C, H, W), 1 = hidden
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)

    def to_uint8(t: torch.Tensor) -> torch.Tensor:
        return ((t * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)

    recon_u8 = to_uint8(recon)
    masked = torch.where(mask_img.bool(), torch.full_like(images, 96), images)
    pasted = torch.where(mask_img.bool(), recon_u8, images)
    columns = [images, masked, recon_u8, pasted]
    names = ["original", "masked", "reconstruction", "recon + visible"]

    b, _, h, w = images.shape
    gap, header = 2, 12
    footer = header if model.config.norm_pix_loss else 0
    canvas = Image.new("RGB", (len(columns) * (w + gap) - gap, header + b * (h + gap) - gap + footer), "white")
    draw = ImageDraw.Draw(canvas)
    if footer:  # say so: with per-patch normalised targets the shown colour level of each patch is the truth's
        draw.text((1, canvas.height - footer), "norm-pix: hidden patches shown at the true patch mean/std",
                  fill="black")
    for c, (column, name) in enumerate(zip(columns, names, strict=True)):
        draw.text((c * (w + gap) + 1, 0), name[: max(1, w // 6)], fill="black")
        for r in range(b):
            tile = Image.fromarray(column[r].permute(1, 2, 0).cpu().numpy())  # (H, W, C)
            canvas.paste(tile, (c * (w + gap), header + r * (h + gap)))
    return canvas


def _save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def _fixed_images(paths: list[Path], n: int, img_size: int) -> torch.Tensor:
    """n readable images spread evenly over the list, un-augmented: the reconstruction picture's rows."""
    picked = []
    for start in np.linspace(0, len(paths), min(n, len(paths)), endpoint=False).astype(int):
        for path in paths[start:]:
            try:
                picked.append(decode_source(path, img_size))
                break
            except UnreadableImage:
                continue
    if not picked:
        raise InputError(f"none of the {len(paths)} images could be read (first: {paths[0]})")
    return torch.stack(picked)  # (B, C, H, W)


def _select(paths: list[Path], cfg: PretrainConfig) -> list[Path]:
    if cfg.max_images is None or len(paths) <= cfg.max_images:
        return paths
    pick = np.random.default_rng(cfg.seed).choice(len(paths), cfg.max_images, replace=False)
    return [paths[i] for i in sorted(pick)]


def pretrain(cfg: PretrainConfig, *, stop_at_epoch: int | None = None, progress: bool = True) -> dict | None:
    """Pretrain (or resume) the MAE run ``cfg.out``; returns a summary of the run so far.

    Args:
        cfg: the run's options.
        stop_at_epoch: return (resumably) once this many epochs are done; for time-sliced jobs and tests.
        progress: show the tqdm bar (rank 0 only).

    Returns:
        {"run", "checkpoint", "epochs_done", "images", "loss_start", "loss_end", "img_per_s", "unreadable"}
        (``loss_start``: the first step; ``loss_end``, ``img_per_s``: the last epoch), or None on ranks
        other than 0 under torchrun.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.accum_iter < 1:
        raise InputError("--epochs, --batch-size and --accum-iter must be at least 1")
    if not 0 < cfg.mask_ratio < 1:
        raise InputError(f"--mask-ratio {cfg.mask_ratio} must lie strictly between 0 and 1")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise InputError(f"--max-images {cfg.max_images}: use a positive number, or leave it out to use every image")
    if not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise InputError(f"--crop-scale {cfg.crop_scale[0]} {cfg.crop_scale[1]}: need 0 < MIN <= MAX <= 1")
    cfg = replace(cfg, images=tuple(str(Path(p).resolve()) for p in cfg.images))
    dist_info: DistInfo = init_distributed()
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / "checkpoint-last.pt"

    paths = _select(find_images(cfg.images, warn if dist_info.is_main else None), cfg)
    mcfg = model_config(cfg)
    torch.manual_seed(cfg.seed)
    model = MaskedAutoencoderViT(mcfg).to(device)

    dataset = PretrainImages(paths, cfg.img_size, cfg.seed, tuple(cfg.crop_scale))
    sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                 shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=pin_memory(device), drop_last=True)
    steps_per_epoch = len(loader) // cfg.accum_iter
    if steps_per_epoch == 0:
        raise InputError(
            f"{len(paths)} images give no full optimizer step of --batch-size {cfg.batch_size} x --accum-iter "
            f"{cfg.accum_iter} x {dist_info.world_size} process(es); lower --batch-size or --accum-iter"
        )
    effective_batch = cfg.batch_size * cfg.accum_iter * dist_info.world_size
    peak_lr = cfg.lr if cfg.lr is not None else cfg.blr * effective_batch / 256
    warmup_steps, total_steps = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    # The fused kernel (torch >= 2.4 on CPU) is ~10x faster than the per-tensor loop for ViT-sized lists.
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak_lr, betas=(0.9, 0.95),
                                  fused=device.type in ("cpu", "cuda"))

    resolved = {
        "pretrain": to_jsonable(cfg), "model_config": asdict(mcfg), "world_size": dist_info.world_size,
        "effective_batch": effective_batch, "peak_lr": peak_lr, "steps_per_epoch": steps_per_epoch,
        "num_images": len(paths), "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }
    resume_key = {**to_jsonable(cfg), "world_size": dist_info.world_size}
    done, step = 0, 0
    if ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        check_resumable(ckpt.get("resume_key", {}), to_jsonable(resume_key), run_dir)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        done, step = int(ckpt["epoch"]), int(ckpt["scheduler"]["step"])
        dataset.skip = {i for i, p in enumerate(paths) if str(p) in set(ckpt.get("unreadable", []))}
    logger = JsonlLogger(run_dir / "log.jsonl")
    if dist_info.is_main:
        write_config(run_dir, resolved)
        logger.truncate_after("epoch", done)  # drop step lines of an epoch that was cut short
    barrier()

    ddp = model
    if dist_info.enabled:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    recon_batch = _fixed_images(paths, cfg.recon_images, cfg.img_size).to(device)  # (B, C, H, W)

    reported: set[int] = set(dataset.skip)
    for epoch in range(done, cfg.epochs):
        if stop_at_epoch is not None and epoch >= stop_at_epoch:
            break
        torch.manual_seed(epoch_seed(cfg.seed, epoch, dist_info.rank))
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        n_micro = steps_per_epoch * cfg.accum_iter
        bar = tqdm(total=n_micro * cfg.batch_size, unit="img", desc=f"pretrain {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and dist_info.is_main), dynamic_ncols=True)
        loss_sum, start = 0.0, time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for i, (images, bad) in enumerate(loader):
            if i == n_micro:  # an incomplete accumulation at the epoch's end is not stepped
                break
            for b in bad[bad >= 0].tolist():
                if b not in reported:
                    reported.add(b)
                    warn(f"unreadable image skipped: {paths[b]}")
            if i % cfg.accum_iter == 0:
                lr = lr_at(step, peak_lr, cfg.min_lr, warmup_steps, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            boundary = (i + 1) % cfg.accum_iter == 0
            x = normalize(images.to(device, non_blocking=True))  # (B, C, H, W)
            sync = contextlib.nullcontext() if boundary or not dist_info.enabled else ddp.no_sync()
            with sync:
                with autocast(device, cfg.bf16):
                    loss, _, _ = ddp(x, cfg.mask_ratio)
                (loss / cfg.accum_iter).backward()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss became {loss_value} at epoch {epoch + 1}, step {step}; lower --blr")
            loss_sum += loss_value
            if boundary:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if dist_info.is_main and (step == 1 or step % cfg.log_every == 0):
                    logger.log({"epoch": epoch + 1, "step": step, "loss": loss_value, "lr": lr})
            bar.update(len(images))
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        bar.close()
        dataset.skip = set(reported)  # the next epoch's workers skip them without retrying
        seconds = time.perf_counter() - start
        mean_loss = torch.tensor(loss_sum / n_micro, device=device)
        if dist_info.enabled:
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= dist_info.world_size
        record = {
            "epoch": epoch + 1, "loss": mean_loss.item(), "lr": lr, "seconds": round(seconds, 2),
            "img_per_s": n_micro * cfg.batch_size * dist_info.world_size / seconds, "unreadable": len(reported),
        }
        if dist_info.is_main:
            logger.log(record)
            save_checkpoint(encoder_checkpoint(
                "mae", cfg.model, asdict(mcfg), model.encoder, cfg.img_size,
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler={"step": step, "peak_lr": peak_lr, "min_lr": cfg.min_lr,
                           "warmup_steps": warmup_steps, "total_steps": total_steps},
                epoch=epoch + 1, epochs=cfg.epochs,
                rng={"seed": cfg.seed, "scheme": "per-epoch reseed from (seed, epoch, rank)"},
                unreadable=sorted(str(paths[i]) for i in reported),
                resume_key=to_jsonable(resume_key),
            ), ckpt_path)
            _save_png(reconstruction_grid(model, recon_batch, cfg.seed), run_dir / "recon" / f"epoch-{epoch + 1:03d}.png")
        barrier()

    return _summary(run_dir, ckpt_path, len(paths), len(reported)) if dist_info.is_main else None


def _summary(run_dir: Path, ckpt_path: Path, n_images: int, n_unreadable: int) -> dict:
    records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").exists() else []
    steps = [r for r in records if "step" in r]
    epochs = [r for r in records if "seconds" in r]
    return {
        "run": str(run_dir),
        "checkpoint": str(ckpt_path) if ckpt_path.exists() else None,
        "epochs_done": epochs[-1]["epoch"] if epochs else 0,
        "images": n_images,
        "loss_start": steps[0]["loss"] if steps else (epochs[0]["loss"] if epochs else None),
        "loss_end": epochs[-1]["loss"] if epochs else None,
        "img_per_s": epochs[-1]["img_per_s"] if epochs else None,
        "unreadable": n_unreadable,
    }
