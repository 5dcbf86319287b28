"""Masked autoencoder with a timm ViT encoder (He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners"; follows facebookresearch/mae ``models_mae.py``).

The encoder is a plain timm ``VisionTransformer`` (``self.encoder``, see
:mod:`pipeline.models.encoder`): the masked path below uses only its public parts (``patch_embed``,
``cls_token``, ``pos_embed``, ``blocks``, ``norm``), and after pretraining the same object runs
standalone through its own ``forward_features``. Stage 1 of Zhou et al. (2024, ABAW6) (ViT-Base/16,
75 % masking).

Shapes: B images, N patches per image, D encoder width, Dd decoder width, P = patch_size**2 * C.
"""

from dataclasses import dataclass, fields, replace
from functools import partial

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from pipeline.config import ConfigError
from pipeline.errors import InputError
from pipeline.models.encoder import init_mae_weights, sincos_pos_embed_2d, vit_encoder
from pipeline.models.registry import register_model


@dataclass(frozen=True)
class MAEConfig:
    """Defaults are MAE's ViT-Base/16 at 224 px with its 512 x 8 decoder (the paper's setting)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True
    mask_ratio: float = 0.75
    drop_path_rate: float = 0.0


# Encoder sizes carried by the registered names; decoders are MAE's 512 x 8 for base and large, and
# narrower for tiny and small so the decoder does not cost many times the encoder it trains.
MAE_SIZES: dict[str, dict] = {
    "mae_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3,
                                 decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "mae_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6,
                                  decoder_embed_dim=256, decoder_depth=8, decoder_num_heads=8),
    "mae_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16),
}


def mae_config(name: str, **overrides) -> MAEConfig:
    """The resolved config of a registered MAE name with overrides (e.g. ``img_size=112``).

    Raises:
        InputError: an unknown name or key (the known ones listed).
        ConfigError: a side that its divisor does not divide (``img_size`` by ``patch_size``, a
            width by its attention heads).
    """
    if name not in MAE_SIZES:
        raise InputError(f"unknown MAE model {name!r}; known: {', '.join(MAE_SIZES)}")
    known = {f.name for f in fields(MAEConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InputError(f"unknown MAE config key(s) {unknown} for {name}; known keys: "
                         f"{sorted(known)}")
    cfg = replace(MAEConfig(**MAE_SIZES[name]), **overrides)
    for key in ("patch_size", "num_heads", "decoder_num_heads"):
        if getattr(cfg, key) < 1:
            raise ConfigError(key, f"{getattr(cfg, key)}: use 1 or more")
    # Each pair: the side and what must divide it; the error is told from the side of whichever
    # of the two the user gave (ConfigError's others).
    for size_key, part_key in (("img_size", "patch_size"), ("embed_dim", "num_heads"),
                               ("decoder_embed_dim", "decoder_num_heads")):
        size, part = getattr(cfg, size_key), getattr(cfg, part_key)
        if size % part:
            low = max(part, size // part * part)
            divisors = [k for k in range(1, min(size, 32) + 1) if size % k == 0][-3:]
            raise ConfigError(
                size_key, f"{size} is not a multiple of {part_key} {part}: give a multiple such "
                          f"as {low} or {low + part}, or another {part_key}",
                others={part_key: f"{part} does not divide {size_key} {size}: give a divisor "
                                  f"such as {', '.join(map(str, divisors))}, or another "
                                  f"{size_key}"})
    return cfg


def build_encoder(name: str, **config) -> VisionTransformer:
    """The encoder alone, from a registered name and a (possibly full MAE) config dict.

    Decoder and loss keys in ``config`` are accepted and ignored, so a checkpoint's ``model_config``
    can be passed as it is.
    """
    cfg = mae_config(name, **config)
    return vit_encoder(cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads,
                       cfg.mlp_ratio, cfg.drop_path_rate)


class MaskedAutoencoderViT(nn.Module):
    """MAE: encode the visible 25 % of patches, decode all patches, MSE on the masked ones."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        if config.in_chans != 3:
            raise InputError(f"in_chans={config.in_chans}: the encoder reads RGB images; use 3")
        self.config = config
        self.encoder = vit_encoder(config.img_size, config.patch_size, config.embed_dim,
                                   config.depth, config.num_heads, config.mlp_ratio,
                                   config.drop_path_rate)
        grid_h, grid_w = self.encoder.patch_embed.grid_size
        dd = config.decoder_embed_dim

        self.decoder_embed = nn.Linear(config.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(
            # (1, 1+N, Dd)
            sincos_pos_embed_2d(dd, grid_h, grid_w).unsqueeze(0), requires_grad=False
        )
        self.decoder_blocks = nn.Sequential(*[
            Block(dd, config.decoder_num_heads, config.mlp_ratio, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(config.decoder_depth)
        ])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, config.patch_size**2 * config.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's init for the decoder (the encoder initialised itself); pos embeds stay sin-cos."""
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm,
                       self.decoder_pred):
            module.apply(init_mae_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (B, C, H, W) -> (B, N, p*p*C), patches in raster order, pixels (p, p, C) inside."""
        p = self.patch_size
        b, c, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, P)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, p*p*C) -> (B, C, H, W); the inverse of :meth:`patchify` for the model's
        grid."""
        p = self.patch_size
        h, w = self.encoder.patch_embed.grid_size
        b, _, patch_dim = x.shape
        c = patch_dim // (p * p)
        x = x.reshape(b, h, w, p, p, c)  # (B, h, w, p, p, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(b, c, h * p, w * p)  # (B, C, H, W)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float):
        """Per-sample random masking by sorting uniform noise (MAE's trick: argsort is a shuffle).

        Args:
            x: (B, N, D) patch tokens.
            mask_ratio: fraction of patches to hide.

        Returns:
            x_kept (B, K, D) with K = int(N * (1 - mask_ratio)), MAE's ``len_keep`` (rounded down:
            19 of 196 patches at 0.9) ; mask (B, N), 1 = hidden, in the original patch order ;
            ids_restore (B, N), the permutation that un-shuffles.
        """
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        noise = torch.rand(b, n, device=x.device)  # (B, N)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first K are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
        ids_keep = ids_shuffle[:, :keep]  # (B, K)
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # (B, K, D)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # (B, N), back in patch order
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        """imgs: (B, C, H, W) normalised -> latent (B, 1+K, D), mask (B, N), ids_restore (B, N).

        The same steps as the encoder's ``forward_features`` (patch embed, position, blocks, norm)
        with the masking between the position embedding and the class token.
        """
        enc = self.encoder
        x = enc.patch_embed(imgs)  # (B, N, D)
        x = x + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)  # (B, K, D)
        cls = enc.cls_token + enc.pos_embed[:, :1]  # (1, 1, D)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+K, D)
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1+K, D), ids_restore (B, N) -> per-patch pixel predictions (B, N, P)."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n + 1 - x.shape[1], -1)  # (B, N-K, Dd)
        x_ = torch.cat([x[:, 1:], masks], dim=1)  # (B, N, Dd), shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (B, N, Dd)
        x = torch.cat([x[:, :1], x_], dim=1)  # (B, 1+N, Dd)
        x = x + self.decoder_pos_embed
        x = self.decoder_blocks(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (B, 1+N, P)
        return x[:, 1:]  # (B, N, P), class token dropped

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (B, C, H, W) -> the regression target (B, N, P): patches, per-patch normalised if
        set."""
        target = self.patchify(imgs)  # (B, N, P)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def patch_loss(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Squared error of every patch, visible or not: imgs (B, C, H, W), pred (B, N, P) -> (B,
        N)."""
        return ((pred.float() - self.target(imgs).float()) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only.

        Args:
            imgs: (B, C, H, W) ; pred: (B, N, P) ; mask: (B, N), 1 = hidden.
        """
        return (self.patch_loss(imgs, pred) * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None):
        """imgs (B, C, H, W) -> (loss, pred (B, N, P), mask (B, N)); ``mask_ratio`` defaults to the
        config's."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def _build(name: str, **overrides) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(mae_config(name, **overrides))


@register_model
def mae_vit_tiny_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-Ti/16 encoder (192 wide, 12 deep, 3 heads), 256 x 4 decoder."""
    return _build("mae_vit_tiny_patch16", **overrides)


@register_model
def mae_vit_small_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-S/16 encoder (384 wide, 12 deep, 6 heads), 256 x 8 decoder."""
    return _build("mae_vit_small_patch16", **overrides)


@register_model
def mae_vit_base_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-B/16 encoder (768 wide, 12 deep, 12 heads), MAE's 512 x 8 decoder: the paper's model."""
    return _build("mae_vit_base_patch16", **overrides)


@register_model
def mae_vit_large_patch16(**overrides) -> MaskedAutoencoderViT:
    """ViT-L/16 encoder (1024 wide, 24 deep, 16 heads), MAE's 512 x 8 decoder."""
    return _build("mae_vit_large_patch16", **overrides)
