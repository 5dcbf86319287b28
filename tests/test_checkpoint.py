"""The one encoder loader: project checkpoints, the official MAE layout, timm and raw state dicts,
position-embedding resampling, and refusals that name the key, the file and the fix."""

import argparse
import pickle

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from pipeline.checkpoint import (
    encoder_checkpoint,
    interpolate_pos_embed,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.errors import InputError
from pipeline.models.encoder import PIXEL_MEAN
from pipeline.models.mae import MAEConfig, MaskedAutoencoderViT, build_encoder
from pipeline.runs import atomic_torch_save, sha256_file

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
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY32.__dict__, mae.encoder,
                                       32, model=mae.state_dict(), epoch=3), path)
    assert torch.load(path, weights_only=True)["epoch"] == 3  # plain types only
    encoder, info = load_encoder(path)
    assert torch.equal(features(encoder, imgs), features(mae.encoder, imgs))
    assert (info.kind, info.model_name, info.img_size) == ("mae", "mae_vit_tiny_patch16", 32)
    assert info.model_config["decoder_embed_dim"] == 32 and info.sha256 == sha256_file(path)
    assert info.pixel_mean == PIXEL_MEAN and info.pooling is None
    assert not info.missing_keys and not info.unexpected_keys and not info.pos_embed_grid
    assert not encoder.pos_embed.requires_grad
    assert "warning" not in capsys.readouterr().err


def test_official_mae_layout_loads_and_infers_the_model(mae, imgs, tmp_path, capsys):
    # facebookresearch/mae checkpoints: {'model': sd} with encoder keys at the top level, decoder
    # keys beside them (pretraining) or fc_norm/head (fine-tuned).
    sd = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items()}
    sd["head.weight"], sd["head.bias"] = torch.zeros(7, 192), torch.zeros(7)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": sd, "epoch": 799}, path)
    encoder, info = load_encoder(path)
    assert ((info.kind, info.model_name, info.img_size)
            == ("official-mae", "mae_vit_tiny_patch16", 32))
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
    save_checkpoint(encoder_checkpoint("mae", "mae_vit_tiny_patch16", TINY32.__dict__, mae.encoder,
                                       32), path)
    encoder, info = load_encoder(path, img_size=64)  # grid 2x2 -> 4x4
    assert info.img_size == 64 and info.pos_embed_grid == (2, 2)
    assert encoder.pos_embed.shape == (1, 17, 192)
    assert torch.equal(encoder.pos_embed[:, 0], mae.encoder.pos_embed[:, 0])  # class token kept
    # Bicubic upsampling of the 2x2 table: the four corners of the 4x4 grid move towards the
    # originals.
    old = mae.encoder.pos_embed[0, 1:].reshape(2, 2, -1)
    new = encoder.pos_embed[0, 1:].reshape(4, 4, -1)
    assert (new[0, 0] - old[0, 0]).abs().mean() < (new[0, 0] - old[1, 1]).abs().mean()
    assert encoder.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 17, 192)


@pytest.mark.parametrize("case, pattern", [
    ("width", r"key 'cls_token' has shape \(1, 1, 192\) in the file but mae_vit_small_patch16 .* "
              r"needs \(1, 1, 384\)"),
    ("depth", r"the file's encoder has 6 blocks .* mae_vit_tiny_patch16 \(--model\) has 12"),
    ("patch", r"key 'patch_embed.proj.weight' has shape \(192, 3, 8, 8\)"),
])
def test_shapes_that_cannot_fit_are_refused(mae, tmp_path, case, pattern):
    path = tmp_path / f"{case}.pt"
    sd = mae.encoder.state_dict()
    name = "mae_vit_tiny_patch16"
    if case == "width":
        name = "mae_vit_small_patch16"
    elif case == "depth":
        sd = {k: v for k, v in sd.items()
              if not k.startswith("blocks.") or int(k.split(".")[1]) < 6}
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
    assert (info.missing_keys == ("norm.weight", "norm.bias")
            and info.unexpected_keys == ("extra.scale",))
    err = capsys.readouterr().err
    assert "warning:" in err and "norm.weight" in err and "extra.scale" in err


class NotWeights:
    pass


def test_unloadable_files_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_encoder(tmp_path / "nope.pt")
    # text and other bytes the unpickler stops on in its own ways (KeyError, IndexError, struct)
    for junk in (b"not a checkpoint", b"hello\n", b"a,b,c\n", b"q", b"\x80\x02J\x01"):
        (tmp_path / "junk.pt").write_bytes(junk)
        with pytest.raises(InputError, match="junk.pt is not a readable checkpoint"):
            read_checkpoint(tmp_path / "junk.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "noenc.pt")
    with pytest.raises(InputError, match="holds no encoder weights"):
        load_encoder(tmp_path / "noenc.pt")
    torch.save({"model": {}}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.pt is not a readable checkpoint .truncated"):
        read_checkpoint(tmp_path / "cut.pt")


def save_like_facebookresearch_mae(path, model: torch.nn.Module, epoch: int = 799) -> None:
    """What facebookresearch/mae's util/misc.py save_model writes (RETFound and others inherit
    it)."""
    args = argparse.Namespace(batch_size=64, epochs=800, accum_iter=1, model="mae_vit_tiny_patch16",
                              input_size=32, mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05,
                              lr=None, blr=1.5e-4, min_lr=0.0, warmup_epochs=40,
                              data_path="/datasets01/imagenet_full_size/061417/",
                              output_dir="./output_dir", log_dir="./output_dir", device="cuda",
                              seed=0, resume="", start_epoch=0, num_workers=10, pin_mem=True,
                              world_size=8, local_rank=-1, dist_on_itp=False, dist_url="env://",
                              distributed=True, rank=0, gpu=0, dist_backend="nccl")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "scaler": scaler.state_dict(), "args": args}, path)


def test_a_checkpoint_of_facebookresearch_mae_save_model_loads(mae, imgs, tmp_path, capsys):
    state = {k.removeprefix("encoder."): v for k, v in mae.state_dict().items()}
    holder = torch.nn.Module()
    for k, v in state.items():
        holder.register_buffer(k.replace(".", "__"), v)
    path = tmp_path / "checkpoint-799.pth"
    save_like_facebookresearch_mae(path, MaskedAutoencoderViT(TINY32))
    raw = torch.load(path, weights_only=False)
    raw["model"] = state  # the MAE's own key names, as facebookresearch/mae's model has them
    torch.save(raw, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what a plain weights_only load says
    assert read_checkpoint(path)["args"].model == "mae_vit_tiny_patch16"
    encoder, info = load_encoder(path)
    assert info.kind == "official-mae" and info.model_name == "mae_vit_tiny_patch16"
    assert torch.equal(features(encoder, imgs), features(mae.encoder, imgs))
    assert "warning" not in capsys.readouterr().err


def test_a_pickled_class_is_refused_naming_it_and_how_to_extract_the_weights(mae, tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"model": mae.encoder.state_dict(), "extra": NotWeights()}, path)
    with pytest.raises(InputError) as err:
        load_encoder(path)
    message = str(err.value)
    assert "\n" not in message and "two options" not in message
    assert f"{path} holds a {NotWeights.__module__}.NotWeights object" in message
    # the snippet, run where the file is trusted, writes weights the loader takes
    snippet = message.split('python -c "', 1)[1].rstrip('"')
    exec(snippet, {})  # noqa: S102  (the test's own file)
    encoder, _ = load_encoder(tmp_path / "obj-weights.pt")
    assert torch.equal(encoder.pos_embed, mae.encoder.pos_embed)


def test_a_position_table_with_an_extra_token_says_what_the_file_holds(mae, tmp_path):
    sd = dict(mae.encoder.state_dict())  # tiny at 32 px, patch 16: a 2 x 2 grid, 5 rows
    sd["pos_embed"] = torch.zeros(1, 6, 192)  # cls + dist + 2 x 2
    sd["dist_token"] = torch.zeros(1, 1, 192)
    torch.save(sd, tmp_path / "deit.pt")
    with pytest.raises(InputError) as err:
        load_encoder(tmp_path / "deit.pt")
    message = str(err.value)
    assert "'pos_embed' has 6 rows, 2 token row(s) before a 2 x 2 patch grid" in message
    assert "cls_token, dist_token" in message and "has 1 token row (the class token)" in message
    assert "--model" not in message and " img" not in message and "224" not in message
    # 18 rows, no token key but cls_token: a 4 x 4 grid after 2 token rows (a register token)
    sd = build_encoder("mae_vit_tiny_patch16", img_size=64).state_dict()
    sd["pos_embed"] = torch.zeros(1, 18, 192)
    torch.save(sd, tmp_path / "reg.pt")
    with pytest.raises(InputError,
                       match=r"18 rows, 2 token row\(s\) before a 4 x 4 patch grid") as err:
        load_encoder(tmp_path / "reg.pt")
    assert "--model" not in str(err.value)


def test_a_shape_that_does_not_fit_blames_the_model_only_when_one_was_given(mae, tmp_path):
    sd = dict(mae.encoder.state_dict())
    # inferred as tiny, but this key differs
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(3 * 192 + 3, 192)
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(InputError,
                       match="inferred from the file's shapes.*not a registered ViT layout") as err:
        load_encoder(tmp_path / "odd.pt")
    assert "--model" not in str(err.value)


def mae_interpolate_pos_embed(pos_embed_checkpoint, num_patches, num_extra_tokens):
    """facebookresearch/mae util/pos_embed.py interpolate_pos_embed, on a tensor (the reference)."""
    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches ** 0.5)
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = torch.nn.functional.interpolate(
        pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


@pytest.mark.parametrize("old, new", [(14, 7), (7, 14), (4, 6)])
def test_position_tables_resample_as_mae_interpolate_pos_embed(old, new):
    from timm.layers import resample_abs_pos_embed

    table = torch.randn(1, 1 + old * old, 16, generator=torch.Generator().manual_seed(old))
    ours = interpolate_pos_embed(table, (new, new), (old, old), 1)
    assert torch.equal(ours, mae_interpolate_pos_embed(table, new * new, 1))
    if new < old:  # timm antialiases a downsampling: a different table
        timm = resample_abs_pos_embed(table, [new, new], [old, old], num_prefix_tokens=1)
        assert (timm - ours).abs().max() > 1e-3


def test_load_encoder_resamples_as_mae_does(mae, tmp_path):
    path = tmp_path / "mae.pt"
    big = build_encoder("mae_vit_tiny_patch16", img_size=224)
    torch.nn.init.normal_(big.pos_embed)  # a learned-looking table, not the smooth sin-cos one
    torch.save(big.state_dict(), path)
    encoder, info = load_encoder(path, img_size=112)  # 14 x 14 -> 7 x 7
    assert info.pos_embed_grid == (14, 14)
    assert torch.equal(encoder.pos_embed.detach(),
                       mae_interpolate_pos_embed(big.pos_embed.detach(), 49, 1))


def test_a_saved_checkpoint_keeps_shared_weights_shared_and_its_state_dict_metadata(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    state = model.state_dict()
    encoder = {k: v for k, v in state.items() if k.startswith("0.")}  # views of the same weights
    atomic_torch_save({"encoder": encoder, "model": state, "rows": [state["0.weight"][2:4]]},
                      tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())
    assert loaded["model"]._metadata == state._metadata  # load_state_dict reads module versions
    shared = loaded["model"]["0.weight"].untyped_storage().data_ptr()
    assert loaded["encoder"]["0.weight"].untyped_storage().data_ptr() == shared
    assert loaded["rows"][0].untyped_storage().data_ptr() == shared
    assert torch.equal(loaded["rows"][0], state["0.weight"][2:4])
