"""The MAE's reconstruction picture: original | masked | reconstruction | reconstruction + visible
patches.

As facebookresearch/mae's visualisation notebook: with ``norm_pix_loss`` the model predicts each
patch standardised, so the prediction is shown at the true patch's mean and std (colour levels from
the image, the structure inside each patch from the model), and a footer line says so.
"""

import io
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.data.images import UnreadableImage
from pipeline.data.pretrain_images import decode_source
from pipeline.errors import InputError
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD, normalize
from pipeline.models.mae import MaskedAutoencoderViT
from pipeline.runs import atomic_write_bytes


def fixed_images(paths: list, n: int, img_size: int) -> torch.Tensor:
    """n readable images spread evenly over the list (files or FER2013 rows), un-augmented: the
    picture's rows, uint8 (B, C, H, W).

    Raises:
        InputError: none of the images can be read.
    """
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


@torch.no_grad()
def reconstruction_grid(model: MaskedAutoencoderViT, images: torch.Tensor, seed: int,
                        mean=PIXEL_MEAN, std=PIXEL_STD) -> Image.Image:
    """Rows of original | masked | reconstruction | reconstruction with the visible patches pasted.

    Args:
        model: the MAE (its training mode is restored afterwards).
        images: uint8 (B, C, H, W) on the model's device. The mask is drawn from ``seed`` (same
            every epoch) without touching the training RNG.
        mean, std: the normalisation the model was trained with.
    Returns:
        A PIL RGB picture of 4 columns and B rows of (H, W) tiles.
    """
    was_training = model.training
    model.eval()
    x = normalize(images, mean, std)  # (B, C, H, W)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, pred, mask = model(x)  # (B, N, P), (B, N)
    model.train(was_training)
    # predictions are per-patch standardised: undo with the true patch stats
    if model.config.norm_pix_loss:
        target = model.patchify(x)  # (B, N, P)
        pred = (pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
                + target.mean(dim=-1, keepdim=True))
    recon = model.unpatchify(pred.float())  # (B, C, H, W), normalised space
    p = model.patch_size
    # (B, C, H, W), 1 = hidden
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * 3))
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)

    def to_uint8(t: torch.Tensor) -> torch.Tensor:
        return ((t * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)

    recon_u8 = to_uint8(recon)
    masked = torch.where(mask_img.bool(), torch.full_like(images, 96), images)
    pasted = torch.where(mask_img.bool(), recon_u8, images)
    columns = [images, masked, recon_u8, pasted]
    # each column's title, the longest that fits its width (the default font: ~6 pixels a letter)
    titles = [("original", "orig"), ("masked", "mask"), ("reconstruction", "recon"),
              ("recon + visible", "rec+vis", "+vis")]

    b, _, h, w = images.shape
    gap, header, letter = 2, 12, 6
    width = len(columns) * (w + gap) - gap
    # say so: with per-patch normalised targets the shown colour level of each patch is the truth's
    note = (textwrap.wrap("norm-pix: hidden patches shown at the true patch mean/std",
                          max(8, width // letter)) if model.config.norm_pix_loss else [])
    footer = header * len(note)
    canvas = Image.new("RGB", (width, header + b * (h + gap) - gap + footer), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(note):
        draw.text((1, canvas.height - footer + i * header), line, fill="black")
    fit = max(1, w // letter)
    for c, (column, names) in enumerate(zip(columns, titles, strict=True)):
        title = next((n for n in names if len(n) <= fit), names[-1][:fit])
        draw.text((c * (w + gap) + 1, 0), title, fill="black")
        for r in range(b):
            tile = Image.fromarray(column[r].permute(1, 2, 0).cpu().numpy())  # (H, W, C)
            canvas.paste(tile, (c * (w + gap), header + r * (h + gap)))
    return canvas


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PIL picture as PNG, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
