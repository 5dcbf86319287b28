"""Validation of Expr fine-tuning: the frames scored, their predictions, and the official macro F1.

Validation scores every Validation_Set frame with an image and a valid Expr label (or, with
``val_frames_per_video``, that many evenly spaced frames a video), un-augmented and in order; under
torchrun each rank predicts every world_size-th frame and the predictions are gathered. The metric
is the challenge's macro F1 over the 8 classes (``pipeline.metrics.expr_f1``).
"""

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.frames import ExprFrames, FrameIndex
from pipeline.device import autocast, lower_priority, pin_memory
from pipeline.distributed import DistInfo
from pipeline.metrics import expr_f1
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize


def validation_loader(index: FrameIndex, img_size: int, cfg, device: torch.device,
                      dist_info: DistInfo | None = None) -> DataLoader:
    """The frames validation scores (``val_frames_per_video`` of ``cfg``, a FinetuneConfig, evenly
    spaced), un-augmented and in order, ``cfg.batch_size`` a batch; under torchrun each rank takes
    every world_size-th of them. Batches hold uint8 images (B, C, H, W) of side ``img_size``
    pixels."""
    rows = index.capped(cfg.val_frames_per_video)
    if dist_info is not None:
        rows = rows[dist_info.rank::dist_info.world_size]
    return DataLoader(ExprFrames(index, img_size), batch_size=cfg.batch_size, sampler=rows.tolist(),
                      num_workers=cfg.workers, pin_memory=pin_memory(device),
                      persistent_workers=cfg.workers > 0, worker_init_fn=lower_priority)


@torch.no_grad()
def predict_expr(model: torch.nn.Module, loader: DataLoader, device: torch.device, bf16: bool,
                 pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """Class predictions for every frame a loader yields: {"row", "pred", "ok"}, each (F,)."""
    was_training = model.training
    model.eval()
    rows, preds, oks = [], [], []
    for batch in tqdm(loader, desc="validate", unit="batch", disable=not progress,
                      dynamic_ncols=True, leave=False):
        # (B, C, H, W)
        x = normalize(batch["image"].to(device, non_blocking=True), pixel_mean, pixel_std)
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


def gather(result: dict[str, np.ndarray], dist_info: DistInfo) -> dict[str, np.ndarray]:
    """Every rank's predictions concatenated in rank order (the result itself without torchrun)."""
    if not dist_info.enabled:
        return result
    parts: list = [None] * dist_info.world_size
    dist.all_gather_object(parts, result)
    return {k: np.concatenate([p[k] for p in parts]) for k in result}


def validation_f1(result: dict[str, np.ndarray], index: FrameIndex) -> dict:
    """The official Expr macro F1 (``expr_f1``) over the frames predicted, unreadable ones left
    out."""
    ok = result["ok"].astype(bool)
    metrics = expr_f1(result["pred"][ok], index.expr[result["row"][ok]])
    # plain Python numbers: checkpoints must load with weights_only=True
    return {**{k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()},
            "unreadable": int((~ok).sum())}


