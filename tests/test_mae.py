"""The MAE model: every registered size builds and trains, masking and patchify properties, the
masked path is the encoder's own network, the loss looks at hidden patches only."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline.errors import InputError
from pipeline.models import build_model, list_models
from pipeline.models.encoder import (
    _channel_stats,
    normalize,
    pool_tokens,
    sincos_pos_embed_2d,
)
from pipeline.models.mae import MAE_SIZES, MAEConfig, MaskedAutoencoderViT, build_encoder
from pipeline.models.registry import FAMILIES

SMALL = MAEConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                  decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_mae_size_is_registered_and_every_model_has_a_family():
    assert set(MAE_SIZES) == set(list_models("mae_"))
    # each family is tested
    assert set(list_models()) == {n for family in FAMILIES for n in list_models(family)}


# Every registered MAE, from the registry itself; base and large take seconds just to allocate:
# slow-marked.
SIZES = [pytest.param(n, marks=pytest.mark.slow)
         if n in {"mae_vit_base_patch16", "mae_vit_large_patch16"} else n
         for n in list_models("mae_")]


@pytest.mark.parametrize("name", SIZES)
def test_registered_model_trains_on_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, img_size=32)  # 4 patches: base and large stay fast
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs)
    loss.backward()
    assert pred.shape == (2, 4, 16 * 16 * 3) and mask.shape == (2, 4)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and not torch.isnan(g).any() for g in grads)
    tokens = model.encoder.forward_features(imgs)
    assert tokens.shape == (2, 5, MAE_SIZES[name]["embed_dim"]) and not torch.isnan(tokens).any()


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_keeps_exact_count_and_unshuffle_restores_order(ratio):
    torch.manual_seed(1)
    b, n, d = 4, 49, 3
    # (B, N, D), every token distinct
    x = torch.arange(b * n * d, dtype=torch.float32).reshape(b, n, d)
    kept, mask, ids_restore = MaskedAutoencoderViT.random_masking(x, ratio)
    keep = int(n * (1 - ratio))
    assert kept.shape == (b, keep, d)
    assert torch.equal(mask.sum(dim=1), torch.full((b,), float(n - keep)))
    # Un-shuffling kept tokens + placeholders puts each kept token back at its own position.
    filled = torch.cat([kept, torch.full((b, n - keep, d), -1.0)], dim=1)  # (B, N, D), shuffled
    restored = torch.gather(filled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # (B, N, D)
    visible = mask == 0
    assert torch.equal(restored[visible], x[visible])
    assert (restored[~visible] == -1).all()
    assert not all(torch.equal(mask[0], mask[i]) for i in range(1, b))  # per-sample masks


@pytest.mark.parametrize("n, ratio, kept", [(196, 0.9, 19), (196, 0.75, 49), (49, 0.9, 4),
                                           (49, 0.5, 24), (196, 0.6, 78), (64, 0.85, 9)])
def test_masking_keeps_mae_len_keep(n, ratio, kept):
    # facebookresearch/mae: len_keep = int(L * (1 - mask_ratio)); rounding would keep 20 of
    # 196 at 0.9
    assert kept == int(n * (1 - ratio))
    x = torch.zeros(2, n, 4)
    x_kept, mask, _ = MaskedAutoencoderViT.random_masking(x, ratio)
    assert x_kept.shape[1] == kept and (mask.sum(dim=1) == n - kept).all()
    model = MaskedAutoencoderViT(SMALL)  # 16 patches: 0.9 keeps int(1.6) = 1, not 2
    latent, mask, _ = model.forward_encoder(torch.randn(1, 3, 32, 32), mask_ratio=0.9)
    assert latent.shape[1] == 1 + 1 and mask.sum() == 15


def test_patchify_unpatchify_round_trip_and_layout():
    model = MaskedAutoencoderViT(SMALL)
    imgs = torch.randn(2, 3, 32, 32)
    patches = model.patchify(imgs)  # (B, N, p*p*C)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(model.unpatchify(patches), imgs)
    # Patch 1 is the second patch of the first row, pixels in (p, p, C) order.
    assert torch.equal(patches[0, 1], imgs[0, :, :8, 8:16].permute(1, 2, 0).reshape(-1))


def test_masked_path_is_the_encoders_own_network():
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(SMALL).eval()
    imgs = torch.randn(3, 3, 32, 32)
    # nothing hidden, shuffled
    latent, mask, ids_restore = model.forward_encoder(imgs, mask_ratio=0.0)
    assert mask.sum() == 0
    patches = torch.gather(latent[:, 1:], 1,
                           ids_restore.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
    expected = model.encoder.forward_features(imgs)  # (B, 1+N, D)
    torch.testing.assert_close(latent[:, :1], expected[:, :1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_sees_hidden_patches_only(norm_pix):
    torch.manual_seed(0)
    from dataclasses import replace

    model = MaskedAutoencoderViT(replace(SMALL, norm_pix_loss=norm_pix))
    imgs = torch.randn(2, 3, 32, 32)
    _, pred, mask = model(imgs)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible patches: must not matter
    assert torch.equal(model.forward_loss(imgs, pred, mask),
                       model.forward_loss(imgs, changed, mask))
    perfect = model.target(imgs)
    assert model.forward_loss(imgs, perfect, mask).item() == pytest.approx(0.0, abs=1e-10)
    if norm_pix:
        torch.testing.assert_close(perfect.mean(dim=-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    else:
        assert torch.equal(perfect, model.patchify(imgs))


def test_position_embeddings_are_fixed_sincos():
    model = MaskedAutoencoderViT(SMALL)
    enc = model.encoder
    assert isinstance(enc, VisionTransformer)
    assert not enc.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(enc.pos_embed[0], sincos_pos_embed_2d(32, 4, 4))
    table = sincos_pos_embed_2d(8, 2, 3, cls_token=False)  # (N, D)
    assert table.shape == (6, 8)
    # First half encodes the column, second half the row: patches of one column share
    # the first half.
    torch.testing.assert_close(table[0, :4], table[3, :4])
    torch.testing.assert_close(table[0, 4:], table[1, 4:])


def test_build_encoder_takes_a_full_mae_config():
    cfg = {**SMALL.__dict__, "decoder_depth": 5, "norm_pix_loss": False}
    enc = build_encoder("mae_vit_tiny_patch16", **cfg)
    assert isinstance(enc, VisionTransformer) and enc.embed_dim == 32 and len(enc.blocks) == 2
    assert enc.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 17, 32)
    with pytest.raises(InputError, match="decoder_width"):
        build_encoder("mae_vit_tiny_patch16", decoder_width=3)
    with pytest.raises(InputError, match="known"):
        build_model("mae_vit_huge_patch99")


def test_pool_tokens():
    tokens = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (B, 1+N, D)
    assert torch.equal(pool_tokens(tokens, "cls"), tokens[:, 0])
    assert torch.equal(pool_tokens(tokens, "mean"), tokens[:, 1:].mean(dim=1))
    with pytest.raises(ValueError):
        pool_tokens(tokens, "max")


def test_normalize_makes_its_channel_stats_once_and_training_may_use_extractions():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    with torch.inference_mode():  # as extraction calls it first
        first = normalize(images, mean, std)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    assert torch.equal(first, expected)
    weight = torch.ones(3, requires_grad=True)
    (normalize(images, list(mean), std) * weight.view(1, 3, 1, 1)).sum().backward()
    assert weight.grad is not None
    made = _channel_stats(mean, std, images.device)
    assert made[0] is _channel_stats(mean, std, images.device)[0]  # made once, then reused
