"""Checkpoints: the project's format, and the one loader behind every ``--init`` / ``--ckpt``.

The project format is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "mae-affect", "kind": "mae" | "finetune" | ..., "model_name": "mae_vit_base_patch16",
     "model_config": {...MAEConfig fields...}, "img_size": 224, "pixel_mean": [...], "pixel_std": [...],
     "encoder": timm ViT state_dict, ...stage-specific keys ("model", "optimizer", "epoch", ...)}

:func:`load_encoder` also reads the official MAE layout (``{"model": state_dict}``, decoder keys optional),
a plain timm ViT state dict and a raw state dict (``module.`` / ``encoder.`` prefixes stripped). Without a
model name in the file it infers the registered size from the shapes; position embeddings are resampled
(bicubic, class token kept) when the input size differs; shapes that cannot fit are refused with a message
naming the key, the file and the fix.
"""

import math
import pickle
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from tqdm import tqdm

from pipeline.errors import InputError
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD
from pipeline.models.mae import MAE_SIZES, build_encoder, mae_config
from pipeline.runs import atomic_torch_save, sha256_file

FORMAT = "mae-affect"
# Keys of a full MAE or a classifier that the encoder does not have: dropped on purpose, not reported.
_NOT_ENCODER = ("decoder_", "mask_token", "head.", "fc_norm.")


@dataclass(frozen=True)
class EncoderInfo:
    """What :func:`load_encoder` loaded, and how (JSON-able with ``dataclasses.asdict``)."""

    path: str
    sha256: str
    kind: str  # the project's kind ("mae", "finetune", ...), "official-mae" or "state-dict"
    model_name: str
    model_config: dict  # resolved MAEConfig fields: build_encoder(model_name, **model_config) rebuilds it
    img_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    ignored_keys: tuple[str, ...]  # decoder / classifier keys dropped on purpose
    pos_embed_grid: tuple[int, int] | None  # the file's patch grid when it was resampled, else None
    pooling: str | None = None  # the pooling a fine-tuned checkpoint was trained with (extraction's default)

    def __getitem__(self, key: str):
        """Mapping-style access (``info["img_size"]``) beside attributes."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.__dataclass_fields__ else default


def warn(message: str) -> None:
    """One warning line on stderr that does not break a running tqdm bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def read_checkpoint(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU; unusable files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; check --init/--ckpt")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{path} is not a checkpoint that loads with weights_only=True ({first}); re-save it as a plain "
            "state dict: torch.save(model.state_dict(), path)"
        ) from err
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def encoder_checkpoint(
    kind: str,
    model_name: str,
    model_config: dict,
    encoder: nn.Module,
    img_size: int,
    pixel_mean=PIXEL_MEAN,
    pixel_std=PIXEL_STD,
    **extra,
) -> dict:
    """The project checkpoint dict for any stage that holds an encoder; ``extra`` adds stage keys.

    Args:
        kind: the stage ("mae", "finetune", ...).
        model_name, model_config: the registered name and resolved config (``build_encoder`` inputs).
        encoder: the timm ViT (unwrapped from DDP).
        img_size: input side the encoder was trained at.
        pixel_mean, pixel_std: the normalisation its inputs had.
    """
    return {
        "format": FORMAT,
        "kind": kind,
        "model_name": model_name,
        "model_config": dict(model_config),
        "img_size": int(img_size),
        "pixel_mean": [float(v) for v in pixel_mean],
        "pixel_std": [float(v) for v in pixel_std],
        "encoder": encoder.state_dict(),
        **extra,
    }


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Atomic write (temporary name, then rename) of a project checkpoint."""
    if checkpoint.get("format") != FORMAT or "encoder" not in checkpoint:
        raise ValueError("save_checkpoint takes the dict made by encoder_checkpoint()")
    atomic_torch_save(checkpoint, path)


def _unpack(obj: dict, path: Path) -> tuple[dict, dict, str]:
    """(state dict, project metadata or {}, kind) from any accepted layout."""
    if obj.get("format") == FORMAT:
        if not isinstance(obj.get("encoder"), dict):
            raise InputError(f"{path} is a mae-affect checkpoint without an 'encoder' entry; it is damaged")
        return obj["encoder"], obj, str(obj.get("kind", "mae"))
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], {}, "official-mae" if key == "model" else "state-dict"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}, "state-dict"
    raise InputError(
        f"{path} holds no encoder weights: expected a mae-affect checkpoint, {{'model': state_dict}} "
        f"(official MAE) or a ViT state dict; top-level keys are {sorted(map(str, obj))[:8]}"
    )


def _encoder_keys(state: dict) -> tuple[dict, list[str]]:
    """Strip ``module.`` (DDP) and ``encoder.`` (a full mae-affect MAE) prefixes; drop non-encoder keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        ignored = [k for k in state if not k.startswith("encoder.")]
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    else:
        ignored = []
    ignored += [k for k in state if k.startswith(_NOT_ENCODER)]
    return {k: v for k, v in state.items() if not k.startswith(_NOT_ENCODER)}, ignored


def _file_shape(state: dict, path: Path) -> dict:
    """Width, depth, patch size, MLP ratio and patch grid read off a ViT state dict."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        raise InputError(
            f"{path} has no 'patch_embed.proj.weight' (C_out, C_in, p, p): not a ViT encoder's weights"
        )
    width, patch = proj.shape[0], proj.shape[-1]
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    grid = None
    pos = state.get("pos_embed")
    if pos is not None:
        side = math.isqrt(pos.shape[1] - 1)
        grid = (side, side) if side * side == pos.shape[1] - 1 else None
    return {
        "embed_dim": width,
        "patch_size": patch,
        "depth": max(blocks) + 1 if blocks else 0,
        "mlp_ratio": fc1.shape[0] / width if fc1 is not None else None,
        "grid": grid,
    }


def _infer_name(shape: dict, path: Path) -> str:
    for name, size in MAE_SIZES.items():
        if size["embed_dim"] == shape["embed_dim"] and size["depth"] == shape["depth"]:
            return name
    sizes = ", ".join(f"{n} ({s['embed_dim']} x {s['depth']})" for n, s in MAE_SIZES.items())
    raise InputError(
        f"{path}: an encoder {shape['embed_dim']} wide and {shape['depth']} deep matches no registered model "
        f"({sizes}); it cannot be loaded as one of them"
    )


def load_encoder(
    path: Path, model_name: str | None = None, img_size: int | None = None, **overrides
) -> tuple[VisionTransformer, EncoderInfo]:
    """Build the encoder a checkpoint describes and load its weights.

    Args:
        path: a project checkpoint, an official MAE ``{'model': sd}`` file, or a (timm) ViT state dict.
        model_name: registered name; default: the file's, else inferred from the shapes.
        img_size: input side to build for; default: the file's. The position table is resampled if it
            differs from the file's grid.
        overrides: MAEConfig fields for the encoder (e.g. ``drop_path_rate=0.1`` when fine-tuning).

    Returns:
        (encoder, info); missing and unexpected keys are also printed as one warning line each.
    """
    path = Path(path)
    state, meta, kind = _unpack(read_checkpoint(path), path)
    state, ignored = _encoder_keys(state)
    shape = _file_shape(state, path)

    if model_name and model_name != meta.get("model_name"):
        name, config = model_name, {}  # the named size as registered; a file that differs is refused below
    elif meta.get("model_name"):
        name, config = meta["model_name"], dict(meta.get("model_config", {}))
    else:
        name, config = _infer_name(shape, path), {"patch_size": shape["patch_size"]}
        if shape["mlp_ratio"] is not None:
            config["mlp_ratio"] = shape["mlp_ratio"]
    file_img = meta.get("img_size") or (shape["grid"][0] * shape["patch_size"] if shape["grid"] else None)
    config["img_size"] = img_size or file_img or mae_config(name).img_size
    config.update(overrides)
    resolved = mae_config(name, **config)
    encoder = build_encoder(name, **asdict(resolved))

    fix = "pass the --model the file was trained with, or leave --model out to infer it from the shapes"
    if shape["depth"] != resolved.depth:
        raise InputError(
            f"{path}: the file's encoder has {shape['depth']} blocks (blocks.0-{shape['depth'] - 1}) but "
            f"{name} has {resolved.depth}; {fix}"
        )
    expected = encoder.state_dict()
    grid = None
    for key, value in state.items():
        want = expected.get(key)
        if want is None or value.shape == want.shape:
            continue
        if key == "pos_embed" and value.shape[-1] == want.shape[-1] and shape["grid"]:
            grid = shape["grid"]
            state[key] = resample_abs_pos_embed(
                value.float(), new_size=list(encoder.patch_embed.grid_size), old_size=list(grid),
                num_prefix_tokens=1,
            ).to(value.dtype)  # (1, 1+N, D) at the new grid, class token kept
            continue
        raise InputError(
            f"{path}: key '{key}' has shape {tuple(value.shape)} in the file but {name} "
            f"(patch {resolved.patch_size}, width {resolved.embed_dim}, img {resolved.img_size}) needs "
            f"{tuple(want.shape)}; {fix}"
        )

    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(expected):
        raise InputError(f"{path}: none of the encoder's weights are in the file; is it a ViT checkpoint?")
    if missing:
        warn(f"{path}: {len(missing)} encoder key(s) not in the file, left at init: {', '.join(missing)}")
    if unexpected:
        warn(f"{path}: {len(unexpected)} key(s) in the file the encoder does not have: {', '.join(unexpected)}")
    info = EncoderInfo(
        path=str(path),
        sha256=sha256_file(path),
        kind=kind,
        model_name=name,
        model_config=asdict(resolved),
        img_size=resolved.img_size,
        pixel_mean=tuple(meta.get("pixel_mean", PIXEL_MEAN)),
        pixel_std=tuple(meta.get("pixel_std", PIXEL_STD)),
        missing_keys=tuple(missing),
        unexpected_keys=tuple(unexpected),
        ignored_keys=tuple(ignored),
        pos_embed_grid=grid,
        pooling=meta.get("pooling"),
    )
    return encoder, info
