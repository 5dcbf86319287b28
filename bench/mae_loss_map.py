"""Where an MAE checkpoint draws detail: its masked-patch loss at each patch position, averaged over
frames.

With the norm-pix loss, a hidden patch predicted flat at its own mean scores 1.0 (exactly
(P - 1) / P for P values a patch), so 1 - loss is the share of the patch's detail (its variance)
that the model draws; without norm-pix the map is in normalised pixel units. Each frame
(un-augmented, evenly spaced over the image list) is masked ``--repeats`` times by the model's own
random masking, and only hidden patches count. A reconstruction picture shows six faces; this map
says, over many, whether the eyes and mouth are drawn or only the outline.

    python -m bench.mae_loss_map --ckpt runs/demo/pretrain/checkpoint-last.pt \\
        --images data/synth-demo/cropped_aligned [--frames 512] [--repeats 2] [--json]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench import exit_on_bad_input
from pipeline.checkpoint import read_checkpoint
from pipeline.data.images import UnreadableImage
from pipeline.data.pretrain_images import decode_source, find_images
from pipeline.errors import InputError
from pipeline.models.encoder import normalize
from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT


def load_mae(path: Path) -> tuple[MaskedAutoencoderViT, dict]:
    """The whole MAE (encoder and decoder) of a ``mae-affect pretrain`` checkpoint, in eval mode."""
    ckpt = read_checkpoint(path)
    if "model" not in ckpt or "model_config" not in ckpt:
        raise InputError(f"{path} holds no MAE decoder (kind {ckpt.get('kind', 'unknown')!r}); "
                         "pass the checkpoint-last.pt of a `mae-affect pretrain` run")
    model = MaskedAutoencoderViT(MAEConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


@torch.no_grad()
def loss_map(model: MaskedAutoencoderViT, images: torch.Tensor, repeats: int, seed: int = 0,
             batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Mean masked-patch loss per position.

    Args:
        model: the MAE.
        images: (F, C, H, W) normalised frames.
        repeats: random maskings per frame.
        progress: a tqdm bar (frames/s) on stderr.
    Returns:
        (H / p, W / p) float64; NaN where no draw hid the position.
    """
    torch.manual_seed(seed)
    side = model.config.img_size // model.config.patch_size
    total, count = (torch.zeros(side * side, dtype=torch.float64),
                    torch.zeros(side * side, dtype=torch.float64))
    with tqdm(total=repeats * len(images), unit="frame", desc="loss map", disable=not progress,
              dynamic_ncols=True) as bar:
        for _ in range(repeats):
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size]
                latent, mask, ids_restore = model.forward_encoder(x, model.config.mask_ratio)
                # (B, N)
                per_patch = model.patch_loss(x, model.forward_decoder(latent, ids_restore))
                total += (per_patch * mask).sum(0).double()
                count += mask.sum(0).double()
                bar.update(len(x))
    with np.errstate(invalid="ignore"):
        return (total / count).numpy().reshape(side, side)


def main(argv=None) -> dict:
    """Print the map; bad input (a missing folder, a checkpoint without a decoder) exits 2
    with one line."""
    return exit_on_bad_input(_run, argv)


def _run(argv) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True,
                        help="checkpoint-last.pt of a `mae-affect pretrain` run.")
    parser.add_argument("--images", required=True, nargs="+",
                        help="Face-image folders (searched recursively).")
    parser.add_argument("--frames", type=int, default=512,
                        help="Frames, evenly spaced over the sorted list.")
    parser.add_argument("--repeats", type=int, default=2, help="Random maskings per frame.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object instead of the grid.")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1:
        parser.error("--frames and --repeats must be >= 1")

    path = Path(args.ckpt)
    model, ckpt = load_mae(path)
    paths = find_images([Path(p) for p in args.images])
    picked = [paths[i] for i in
              np.unique(np.linspace(0, len(paths) - 1, args.frames).round().astype(int))]
    frames, unreadable = [], []
    for p in picked:
        try:
            frames.append(decode_source(p, ckpt["img_size"]))
        except UnreadableImage:
            unreadable.append(str(p))
    if not frames:
        raise InputError(f"none of the {len(picked)} picked images could be read "
                         f"(first: {picked[0]})")
    images = normalize(torch.stack(frames), ckpt["pixel_mean"], ckpt["pixel_std"])  # (F, C, H, W)
    grid = loss_map(model, images, args.repeats, args.seed, progress=not args.json)
    result = {
        "checkpoint": str(path), "epoch": ckpt.get("epoch"), "frames": len(frames),
        "repeats": args.repeats,
        "unreadable": unreadable, "norm_pix_loss": bool(ckpt["model_config"].get("norm_pix_loss")),
        "grid": np.round(grid, 4).tolist(), "mean": round(float(np.nanmean(grid)), 4),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{path} (epoch {result['epoch']}): masked-patch loss per position over "
              f"{len(frames)} frames x {args.repeats} maskings"
              + (" (norm-pix: 1.0 = a flat patch at its own mean)"
                 if result["norm_pix_loss"] else ""))
        for row in grid:
            print(" ".join(f"{v:5.2f}" for v in row))
        print(f"mean {result['mean']:.3f}")
    return result


if __name__ == "__main__":
    main()
