"""What each loop is measured against, shared by ``bench/`` and ``make gpu-check``.

- a bare training step: the stage's own model, optimizer and loss at the loop's batch size and
  precision, on one batch already on the device: forward, backward, optimizer step, and nothing else
  (no loader, no schedule, no logging; the fine-tuning loss reads its parts' values on the host,
  as in the loop, so both wait for the device there);
- forward only: extraction's own :func:`pipeline.extract.encode` on frames already on the device;
- the authors' per-frame extraction: one frame per forward pass, one ``.npy`` file per frame;
- the loader alone: extraction's own :func:`pipeline.extract.frame_loader`, no encoder (with the
  fast JPEG path, or every file through Pillow: :func:`pillow_only`).

Rates are per second of wall time, the device synchronised before the clock is read.
"""

import contextlib
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from pipeline.configs import FinetuneConfig, PretrainConfig
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES
from pipeline.data.images import decode_image
from pipeline.device import autocast
from pipeline.extract import encode, frame_loader
from pipeline.finetune import make_optimizer as finetune_optimizer
from pipeline.finetune_loss import finetune_loss, mix_batch
from pipeline.finetune_model import build_classifier
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize
from pipeline.models.mae import MaskedAutoencoderViT
from pipeline.pretrain import make_optimizer as pretrain_optimizer
from pipeline.pretrain import model_config


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(fn, items: int, device: torch.device) -> float:
    """``items`` per second of one call of ``fn``, the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return items / (time.perf_counter() - start)


class BareStep:
    """A stage's training step and nothing else; subclasses set ``cfg``, ``device`` and ``step``."""

    cfg: PretrainConfig | FinetuneConfig
    device: torch.device

    def step(self) -> None:
        raise NotImplementedError

    def rate(self, steps: int) -> float:
        """Images/s over ``steps`` steps (after one untimed step)."""
        self.step()
        return timed_rate(lambda: [self.step() for _ in range(steps)], steps * self.cfg.batch_size,
                          self.device)


class PretrainStep(BareStep):
    """A bare MAE pretraining step of a :class:`PretrainConfig`: its model, fused AdamW, masking and
    precision, on one uint8 batch (B, 3, S, S) already on the device."""

    def __init__(self, cfg: PretrainConfig, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, device
        self.model = MaskedAutoencoderViT(model_config(cfg)).to(device).train()
        self.optimizer = pretrain_optimizer(self.model, cfg, 1e-4, device)
        self.images = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size),
                                    dtype=torch.uint8, device=device)

    def step(self) -> None:
        with autocast(self.device, self.cfg.bf16):
            loss, _, _ = self.model(normalize(self.images), self.cfg.mask_ratio)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class FinetuneStep(BareStep):
    """A bare fine-tuning step of a :class:`FinetuneConfig`: its classifier (from ``cfg.init``),
    optimizer, mixing, loss and precision, on one batch of the loader's layout already on the device
    (uint8 images (B, 3, S, S), random labels)."""

    def __init__(self, cfg: FinetuneConfig, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.model, source = build_classifier(cfg)
        self.model.to(device).train()
        self.cfg, self.device = cfg, device
        self.mean, self.std = source["pixel_mean"], source["pixel_std"]
        self.optimizer = finetune_optimizer(self.model, cfg, device)
        b, side = cfg.batch_size, source["img_size"]
        self.batch = {
            "image": torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8),
            "expr": torch.randint(0, len(EXPR_CLASSES), (b,)),
            "au": torch.randint(0, 2, (b, len(AU_NAMES))),
            "au_valid": torch.ones(b, dtype=torch.bool),
            "va": torch.rand(b, 2) * 2 - 1,
            "va_valid": torch.ones(b, dtype=torch.bool),
            "row": torch.arange(b),
            "ok": torch.ones(b, dtype=torch.bool),
        }
        self.batch = {k: v.to(device) for k, v in self.batch.items()}

    def step(self) -> None:
        batch = self.batch
        x = normalize(batch["image"], self.mean, self.std)  # (B, C, H, W)
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            x, batch = mix_batch(x, batch, self.cfg.mixup, self.cfg.cutmix, len(EXPR_CLASSES))
        with autocast(self.device, self.cfg.bf16):
            out = self.model(x)
        loss, _ = finetune_loss(out, batch, None, self.cfg.label_smoothing, self.cfg.aux_weight,
                                all_ok=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def forward_only(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int,
                 device: torch.device, pooling: str = "cls", bf16: bool = True,
                 pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD, frames: int | None = None) -> float:
    """Frames/s of extraction's own :func:`pipeline.extract.encode` on uint8 frames (N, 3, S, S)
    already on ``device``, ``batch_size`` a batch, the rows made float16 on the host as extraction
    stores them (one untimed batch first). ``frames``: go round ``images`` until this many frames
    are done (default: once), so that the reference runs as long as the extraction it is
    compared with."""
    images = images.to(device)
    starts = [i % len(images) for i in range(0, frames or len(images), batch_size)]

    def run(limit: int | None = None) -> None:
        for i in starts[:limit]:
            encode(encoder, images[i: i + batch_size], device, pooling, bf16, pixel_mean,
                   pixel_std).numpy().astype(np.float16)

    with torch.inference_mode():
        run(limit=1)
        return timed_rate(run, sum(len(images[i: i + batch_size]) for i in starts), device)


def best_forward_only(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device,
                      batch_sizes=(32, 64, 128, 256), precisions=(True, False),
                      pooling: str = "cls", rounds: int = 2) -> dict:
    """The best forward-only rate over batch sizes and precisions (bf16 autocast, fp32), the best of
    ``rounds`` rounds each: {"fps", "batch_size", "bf16", "table": {"bf16 64": fps, ...}}."""
    table: dict[str, float] = {}
    for _ in range(rounds):
        for bf16 in precisions:
            for b in batch_sizes:
                key = f"{'bf16' if bf16 else 'fp32'} {b}"
                table[key] = max(table.get(key, 0.0),
                                 forward_only(encoder, images, b, device, pooling, bf16))
    best = max(table, key=table.get)
    precision, b = best.split()
    return {"fps": table[best], "batch_size": int(b), "bf16": precision == "bf16", "table": table}


def per_frame_loop(encoder: torch.nn.Module, paths: list[Path], out_dir: Path, img_size: int,
                   device: torch.device, bf16: bool = False, pooling: str = "cls") -> float:
    """The authors' extraction: each frame decoded, sent to the device and encoded alone, its
    feature saved as ``out_dir/<video>/<frame>.npy`` (fp32 by default, as their scripts run).
    Returns frames/s."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        for path in paths:
            image = decode_image(path, img_size).unsqueeze(0)  # (1, 3, S, S)
            feature = encode(encoder, image, device, pooling, bf16)  # (1, D)
            (out_dir / path.parent.name).mkdir(exist_ok=True)
            np.save(out_dir / path.parent.name / f"{path.stem}.npy", feature[0].numpy())

    with torch.inference_mode():
        return timed_rate(run, len(paths), device)


@contextlib.contextmanager
def pillow_only(enabled: bool = True):
    """Within the block (when ``enabled``), every image file goes through Pillow: the fast JPEG
    path (:mod:`pipeline.data.jpeg`) off in this process and in DataLoader workers forked from it,
    for a side-by-side figure of what it gains. Workers started by spawn or forkserver (the default
    from Python 3.14) do not see the patch: measure with 0 workers there."""
    if not enabled:
        yield
        return
    with mock.patch("pipeline.data.images.decode_plain_jpeg", lambda path: None):
        yield


def loader_rate(paths: list[Path], img_size: int, batch_size: int, workers: int,
                device: torch.device) -> float:
    """Frames/s of extraction's loader alone (decode, collate and, on CUDA, pinning), no encoder."""
    def run() -> None:
        for _ in frame_loader(paths, img_size, batch_size, workers, device):
            pass

    return timed_rate(run, len(paths), device)
