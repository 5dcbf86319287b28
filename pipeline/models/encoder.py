"""The image encoder every stage shares: a plain timm ViT with fixed 2-D sin-cos position
embeddings.

MAE (He et al. 2022, facebookresearch/mae ``util/pos_embed.py``) fixes the position embedding to a
2-D sin-cos table instead of learning it. Here the table is written into a standard timm
``VisionTransformer``'s ``pos_embed`` parameter, so the encoder stays a plain timm model: its own
``forward_features(x) -> (B, 1+N, D)`` is the one feature path for pretraining checks, fine-tuning
and extraction, and its ``state_dict`` has timm's key names.

Images enter as uint8 (B, C, H, W) and are normalised on the device with :func:`normalize`, using
the ImageNet mean/std that every checkpoint records (``pixel_mean`` / ``pixel_std``).
"""

import functools
from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.configs.common import POOL_MODES

# ImageNet statistics, as MAE and timm use; recorded in every checkpoint.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)



def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position table, as MAE: half the channels encode the row, half the column.

    Args:
        dim: embedding width D, a multiple of 4.
        grid_h, grid_w: patch grid size (N = grid_h * grid_w).
        cls_token: prepend an all-zero row for the class token.

    Returns:
        (1+N, D) if ``cls_token`` else (N, D), float32, rows in raster order.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
        indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega  # (N, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, D/2)

    # MAE's order: the first half of the channels encodes the column (w), the second half the row
    # (h).
    table = torch.cat([encode(cols), encode(rows)], dim=1)  # (N, D)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)  # (1+N, D)
    return table.float()


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears (patch projection treated as one), unit
    norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        # The patch projection is a linear map of a flattened patch: init it as one.
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def vit_encoder(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """A headless timm ViT (class token, final norm) whose ``pos_embed`` holds the fixed sin-cos
    table.

    ``pos_embed`` stays an ``nn.Parameter`` (so timm's key names and loaders keep working) but does
    not require grad, as in MAE. Weights get MAE's initialisation (:func:`init_mae_weights`) instead
    of timm's (which would be overwritten anyway and costs seconds for the large sizes).
    """
    encoder = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        class_token=True,
        global_pool="token",
        drop_path_rate=drop_path_rate,
        weight_init="skip",
    )
    encoder.apply(init_mae_weights)
    nn.init.normal_(encoder.cls_token, std=0.02)
    grid_h, grid_w = encoder.patch_embed.grid_size
    with torch.no_grad():
        # (1, 1+N, D)
        encoder.pos_embed.copy_(sincos_pos_embed_2d(embed_dim, grid_h, grid_w).unsqueeze(0))
    encoder.pos_embed.requires_grad_(False)
    return encoder


def normalize(images: torch.Tensor, mean: Sequence[float] = PIXEL_MEAN,
              std: Sequence[float] = PIXEL_STD) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (B, C, H, W), scaled to [0, 1] then standardised per
    channel."""
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), images.device)
    return (images.float() / 255 - mean_t) / std_t


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (1, C, 1, 1) tensors on ``device``, made once: built afresh on a
    GPU, each would be a blocking copy from the host, a wait in every step. Made outside inference
    mode, so that a training step can use what an extraction cached."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
                torch.tensor(std, device=device).view(1, -1, 1, 1))


def pool_tokens(tokens: torch.Tensor, mode: str = "cls") -> torch.Tensor:
    """One vector per image from ``forward_features`` output.

    Args:
        tokens: (B, 1+N, D), the class token first.
        mode: ``cls`` (the class token) or ``mean`` (mean of the N patch tokens, MAE fine-tuning's
            choice).

    Returns:
        (B, D)
    """
    if mode == "cls":
        return tokens[:, 0]
    if mode == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"unknown pooling {mode!r}; use one of {POOL_MODES}")
