"""The one encoder loader: project checkpoints, the official MAE layout, timm and raw state dicts,
position-embedding resampling, and refusals that name the key, the file and the fix."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline.errors import InputError
from pipeline.models.checkpoint import (
    encoder_checkpoint,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.models.encoder import PIXEL_MEAN
from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT, build_encoder
from pipeline.runs import sha256_file

# A registered size (tiny: 192 x 12) at 32 px keeps inference-by-shape testable and fast.
TINY32 = MAEConfig(img_size=32, embed_dim=192, depth=12, num_heads=3,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
SMALL_ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoderViT(TINY32).eval()


@pytest.fixture(scope="module")
def imgs():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def features(encoder, x):
    with torch.no_grad():
        return encoder.eval().forward_features(x)


def test_project_checkpoint_round_trip(mae, imgs, tmp_path, capsys):
    path = tmp_path / "mae.pt"
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY32.__dict__, mae.encoder, 32,
                                       model=mae.state_dict(), epoch=3), path)
    assert torch.load(path, weights_only=True)["epoch"] == 3  # plain types only
    encoder, info = load_encoder(path)
    assert torch.equal(features(encoder, imgs), features(mae.encoder, imgs))
    assert (info.kind, info.model_name, info.img_size) == ("mae", "mae_vit_tiny_patch16", 32)
    assert info.model_config["decoder_embed_dim"] == 32 and info["sha256"] == sha256_file(path)
    assert info.pixel_mean == PIXEL_MEAN and info.get("pooling") is None
    assert not info.missing_keys and not info.unexpected_keys and not info.pos_embed_grid
    assert not encoder.pos_embed.requires_grad
    assert "warning" not in capsys.readouterr().err


def test_official_mae_layout_loads_and_infers_the_model(mae, imgs, tmp_path, capsys):
    # facebookresearch/mae checkpoints: {'model': sd} with encoder keys at the top level, decoder keys
    # beside them (pretraining) or fc_norm/head (fine-tuned).
    sd = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = torch.zeros(7, 192), torch.zeros(7)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": sd, "epoch": 799}, path)
    encoder, info = load_encoder(path)
    assert (info.kind, info.model_name, info.img_size) == ("official-mae", "mae_vit_tiny_patch16", 32)
    assert torch.equal(features(encoder, imgs), features(mae.encoder, imgs))
    assert "mask_token" in info.ignored_keys and "head.weight" in info.ignored_keys
    assert not info.missing_keys and "warning" not in capsys.readouterr().err


def test_timm_and_raw_state_dicts(imgs, tmp_path):
    torch.manual_seed(2)
    timm_vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                 num_classes=10)  # learned pos_embed, a classifier head
    path = tmp_path / "timm.pth"
    torch.save(timm_vit.state_dict(), path)
    encoder, info = load_encoder(path)
    assert info.kind == "state-dict" and info.ignored_keys == ("head.weight", "head.bias")
    assert torch.equal(features(encoder, imgs), features(timm_vit, imgs))

    # A DDP-wrapped full mae-affect MAE: module. and encoder. prefixes are stripped.
    mae = MaskedAutoencoderViT(TINY32)
    torch.save({f"module.{k}": v for k, v in mae.state_dict().items()}, path)
    encoder, _ = load_encoder(path)
    assert torch.equal(features(encoder, imgs), features(mae.encoder, imgs))


def test_unregistered_size_needs_the_model_and_its_overrides(tmp_path):
    torch.save(build_encoder("mae_vit_tiny_patch16", **SMALL_ARCH).state_dict(), tmp_path / "e.pt")
    with pytest.raises(InputError, match="32 wide and 2 deep matches no registered model"):
        load_encoder(tmp_path / "e.pt")
    encoder, info = load_encoder(tmp_path / "e.pt", "mae_vit_tiny_patch16", **SMALL_ARCH)
    assert info.model_config["embed_dim"] == 32 and len(encoder.blocks) == 2


def test_pos_embed_is_resampled_for_another_input_size(mae, tmp_path):
    path = tmp_path / "mae.pt"
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY32.__dict__, mae.encoder, 32), path)
    encoder, info = load_encoder(path, img_size=64)  # grid 2x2 -> 4x4
    assert info.img_size == 64 and info.pos_embed_grid == (2, 2)
    assert encoder.pos_embed.shape == (1, 17, 192)
    assert torch.equal(encoder.pos_embed[:, 0], mae.encoder.pos_embed[:, 0])  # class token kept
    # Bicubic upsampling of the 2x2 table: the four corners of the 4x4 grid move towards the originals.
    old = mae.encoder.pos_embed[0, 1:].reshape(2, 2, -1)
    new = encoder.pos_embed[0, 1:].reshape(4, 4, -1)
    assert (new[0, 0] - old[0, 0]).abs().mean() < (new[0, 0] - old[1, 1]).abs().mean()
    assert encoder.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 17, 192)


@pytest.mark.parametrize("case, pattern", [
    ("width", r"key 'cls_token' has shape \(1, 1, 192\) in the file but mae_vit_small_patch16 .* needs \(1, 1, 384\)"),
    ("depth", r"the file's encoder has 6 blocks .* mae_vit_tiny_patch16 has 12"),
    ("patch", r"key 'patch_embed.proj.weight' has shape \(192, 3, 8, 8\)"),
])
def test_shapes_that_cannot_fit_are_refused(mae, tmp_path, case, pattern):
    path = tmp_path / f"{case}.pt"
    sd = mae.encoder.state_dict()
    name = "mae_vit_tiny_patch16"
    if case == "width":
        name = "mae_vit_small_patch16"
    elif case == "depth":
        sd = {k: v for k, v in sd.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < 6}
    else:
        sd = build_encoder(name, img_size=32, patch_size=8).state_dict()
    torch.save(sd, path)
    with pytest.raises(InputError, match=pattern) as err:
        load_encoder(path, name)
    assert str(path) in str(err.value) and "--model" in str(err.value)


def test_missing_and_unexpected_keys_are_reported(mae, tmp_path, capsys):
    sd = dict(mae.encoder.state_dict())
    del sd["norm.weight"], sd["norm.bias"]
    sd["extra.scale"] = torch.ones(1)
    torch.save(sd, tmp_path / "partial.pt")
    _, info = load_encoder(tmp_path / "partial.pt")
    assert info.missing_keys == ("norm.weight", "norm.bias") and info.unexpected_keys == ("extra.scale",)
    err = capsys.readouterr().err
    assert "warning:" in err and "norm.weight" in err and "extra.scale" in err


class NotWeights:
    pass


def test_unloadable_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_encoder(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="weights_only"):
        read_checkpoint(tmp_path / "junk.pt")
    with open(tmp_path / "obj.pt", "wb") as f:
        torch.save({"model": NotWeights()}, f)
    with pytest.raises(InputError, match="weights_only=True"):
        load_encoder(tmp_path / "obj.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "noenc.pt")
    with pytest.raises(InputError, match="holds no encoder weights"):
        load_encoder(tmp_path / "noenc.pt")
