"""The fine-tuning losses and MAE's mixing regularisers (stage 2 of Zhou et al. 2024, ABAW6).

Cross-entropy with label smoothing over the frames with a valid Expr label, optional auxiliary AU
(BCE) and VA (squared error) terms, and mixup / CutMix as in MAE's fine-tuning recipe (He et al.
2022, appendix A.1; timm's ``Mixup``). Shapes: B frames, C = 8 expression classes, 12 AUs.
"""

import math

import torch
import torch.nn.functional as F


def expr_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
              smoothing: float) -> torch.Tensor:
    """Cross-entropy over valid frames only: logits (B, 8), labels (B,) in 0..7 or (B, 8)
    probabilities.

    With class weights, torch divides a hard-label loss by the summed weights of the labels but a
    probability-target loss by B; dividing the latter by its targets' summed weights instead makes a
    one-hot target score exactly like its hard label, so mixing does not rescale the loss.
    """
    if labels.dim() == 2 and weight is not None:
        total = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing,
                                reduction="sum")
        return total / (labels @ weight).sum().clamp(min=1e-12)
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)


def mix_batch(x: torch.Tensor, batch: dict, mixup: float, cutmix: float,
              num_classes: int) -> tuple[torch.Tensor, dict]:
    """Mixup or CutMix of a batch with its own reverse, as in MAE's fine-tuning (timm's ``Mixup``).

    Draws from torch's global RNG, which the loop re-seeds every epoch, so a resumed run mixes
    alike. With both alphas set, each batch takes one of the two at even odds. CutMix pastes a box
    of the partner image; the mixing weight becomes the kept area. Targets mix with the same weight:
    ``expr`` becomes ``expr_soft`` (B, 8) probabilities, AU labels soft targets and VA values a
    weighted mean, each valid only where both rows' labels are; rows whose image or partner's image
    could not be read drop out through ``ok``.

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
    """Mean of ``values`` (B,) where ``mask``; 0 (still on the graph, for DDP) when no row is
    valid."""
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1)


def finetune_loss(out: dict, batch: dict, weight: torch.Tensor | None, label_smoothing: float,
                  aux_weight: float, all_ok: bool = False) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts (scalars on the device, not read) for one batch (``batch`` tensors
    already on the device).

    Rows whose image could not be decoded (``ok`` false) are left out of every term; AU and VA terms
    use only the rows whose labels are valid. ``all_ok`` says that every row was read (the host
    knows it from the loader's ``ok`` before the copy): the Expr term then skips selecting rows by
    ``ok``, which would make the host wait for the device to read the mask.
    """
    keep = batch["ok"]
    logits = out["expr"].float()  # (B, 8)
    # (B, 8) probabilities after mixing, else (B,) classes
    target = batch.get("expr_soft", batch["expr"])
    if all_ok:
        loss = expr_loss(logits, target, weight, label_smoothing)
    elif keep.any():
        loss = expr_loss(logits[keep], target[keep], weight, label_smoothing)
    else:
        loss = logits.sum() * 0.0  # keeps the graph so every DDP rank reduces the same parameters
    parts = {"expr": loss.detach()}
    if "au" in out:
        per_frame = F.binary_cross_entropy_with_logits(  # (B,); soft if mixed
            out["au"].float(), batch["au"].clamp(min=0).float(), reduction="none").mean(dim=1)
        au = _masked_mean(per_frame, keep & batch["au_valid"])
        loss = loss + aux_weight * au
        parts["au"] = au.detach()
    if "va" in out:
        # Frame-level regression: CCC is a sequence metric, left to the temporal heads.
        per_frame = ((out["va"].float() - batch["va"]) ** 2).mean(dim=1)  # (B,)
        va = _masked_mean(per_frame, keep & batch["va_valid"])
        loss = loss + aux_weight * va
        parts["va"] = va.detach()
    return loss, parts


