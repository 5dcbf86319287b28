"""Checkpoints: the project's format, and the one loader behind every ``--init`` / ``--ckpt``.

The project format is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "mae-affect", "kind": "mae" | "finetune" | ..., "model_name": "mae_vit_base_patch16",
     "model_config": {...MAEConfig fields...}, "img_size": 224, "pixel_mean": [...],
     "pixel_std": [...], "encoder": timm ViT state_dict,
     ...stage-specific keys ("model", "optimizer", "epoch", ...)}

:func:`load_encoder` also reads the official MAE layout (``{"model": state_dict}``, decoder keys
optional), a plain timm ViT state dict and a raw state dict (``module.`` / ``encoder.`` prefixes
stripped), with whatever plain data other training loops store beside the weights (an
``argparse.Namespace`` under ``args``), never unpickling other classes. Without a model name in the
file it infers the registered size from the shapes; position tables are resampled as
facebookresearch/mae's ``interpolate_pos_embed`` does (plain bicubic, class token kept) when the
input size differs; shapes that cannot fit are refused with a message naming the key, the file and
the fix.
"""

import argparse
import math
import pathlib
import pickle
import re
import struct
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from tqdm import tqdm

from pipeline.errors import InputError
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD
from pipeline.models.mae import MAE_SIZES, build_encoder, mae_config
from pipeline.runs import atomic_torch_save, sha256_file

FORMAT = "mae-affect"
# Keys of a full MAE or a classifier that the encoder does not have: dropped on purpose, not
# reported.
_NOT_ENCODER = ("decoder_", "mask_token", "head.", "fc_norm.")


@dataclass(frozen=True)
class EncoderInfo:
    """What :func:`load_encoder` loaded, and how (JSON-able with ``dataclasses.asdict``)."""

    path: str
    sha256: str
    kind: str  # the project's kind ("mae", "finetune", ...), "official-mae" or "state-dict"
    model_name: str
    # resolved MAEConfig fields: build_encoder(model_name, **model_config) rebuilds it
    model_config: dict
    img_size: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]
    ignored_keys: tuple[str, ...]  # decoder / classifier keys dropped on purpose
    pos_embed_grid: tuple[int, int] | None  # the file's patch grid when it was resampled, else None
    # the pooling a fine-tuned checkpoint was trained with (extraction's default)
    pooling: str | None = None


def warn(message: str) -> None:
    """One warning line on stderr that does not break a running tqdm bar."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


_NUMPY_DTYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                 "Float16", "Float32", "Float64", "LongDouble", "Complex64", "Complex128", "Str",
                 "Bytes", "Long", "ULong", "LongLong", "ULongLong", "Byte", "UByte", "Short",
                 "UShort", "Int", "UInt")


def _safe_globals() -> list:
    """Plain containers that other training loops store beside their weights and that rebuild
    without running code: facebookresearch/mae's ``save_model`` (and DeiT, RETFound, timm's
    ``train.py``) put the run's ``argparse.Namespace`` under ``args``; forks add ``pathlib`` paths
    and numpy scalars or arrays."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
               pathlib.PureWindowsPath, np.dtype, np.ndarray]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles a dtype's class too
    allowed += [getattr(dtypes, f"{kind}DType") for kind in _NUMPY_DTYPES
                if hasattr(dtypes, f"{kind}DType")]
    for fn in (multiarray.scalar, multiarray._reconstruct):  # as numpy 1 and numpy 2 pickle them
        allowed += [(fn, f"numpy.core.multiarray.{fn.__name__}"),
                    (fn, f"numpy._core.multiarray.{fn.__name__}")]
    return allowed


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (PyTorch's run on for several lines)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def read_checkpoint(path: Path, what: str = "checkpoint", option: str = "--init/--ckpt") -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU: plain data only, never arbitrary objects.

    Beside tensors and Python's own types, the few plain containers of :func:`_safe_globals` load
    (so an official MAE ``checkpoint-799.pth`` with its ``argparse.Namespace`` loads as it is); a
    file that holds any other class is refused with one line naming the class and a snippet that
    extracts the weights in the user's own environment. Every file mae-affect reads with
    ``torch.load`` goes through here.

    Args:
        path: the file.
        what: what the file should be, for messages ("checkpoint", "head checkpoint").
        option: the option that named it, for the message of a missing file.

    Raises:
        InputError: the file is missing, truncated, not a ``torch.save`` file, holds a class outside
            the allow-list, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check {option}")
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # a file that is not a pickle at all may start with any "protocol" byte
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            weights = path.with_name(f"{path.stem}-weights.pt")
            snippet = ("python -c \"import torch; "
                       f"c = torch.load({str(path)!r}, map_location='cpu', weights_only=False); "
                       "m = c.get('model', c.get('state_dict', c)) if isinstance(c, dict) else c; "
                       "torch.save(m.state_dict() if hasattr(m, 'state_dict') else m, "
                       f"{str(weights)!r})\"")
            raise InputError(
                f"{path} holds a {found.group(1)} object, which mae-affect does not unpickle "
                "(unpickling a class can run code); if you trust the file, save its weights as "
                f"plain tensors in your own environment and pass the result: {snippet}"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        raise InputError(
            f"{path} is not a readable {what} (truncated, or not written by torch.save: "
            f"{reason.group(1) if reason else _first_line(err)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise InputError(
            f"{path} is not a readable {what} (truncated, or not written by torch.save: "
            f"{_first_line(err)})"
        ) from None
    except (LookupError, struct.error):  # the unpickler read bytes that are no pickle (text)
        raise InputError(f"{path} is not a readable {what} (not written by torch.save: its bytes "
                         "are not a pickle)") from None
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
        model_name, model_config: the registered name and resolved config (``build_encoder``
            inputs).
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
            raise InputError(
                f"{path} is a mae-affect checkpoint without an 'encoder' entry; it is damaged"
            )
        return obj["encoder"], obj, str(obj.get("kind", "mae"))
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key], {}, "official-mae" if key == "model" else "state-dict"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}, "state-dict"
    raise InputError(
        f"{path} holds no encoder weights: expected a mae-affect checkpoint, "
        f"{{'model': state_dict}} (official MAE) or a ViT state dict; top-level keys are "
        f"{sorted(map(str, obj))[:8]}"
    )


def _encoder_keys(state: dict) -> tuple[dict, list[str]]:
    """Strip ``module.`` (DDP) and ``encoder.`` (a full mae-affect MAE) prefixes; drop non-encoder
    keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        ignored = [k for k in state if not k.startswith("encoder.")]
        state = {k.removeprefix("encoder."): v for k, v in state.items()
                 if k.startswith("encoder.")}
    else:
        ignored = []
    ignored += [k for k in state if k.startswith(_NOT_ENCODER)]
    return {k: v for k, v in state.items() if not k.startswith(_NOT_ENCODER)}, ignored


# Rows a position table may hold before its patch grid: a class token, a distillation token (DeiT)
# and register tokens (ViTs with registers hold 4 to 8); more is not a ViT position table.
_MAX_PREFIX = 16


def _prefix_tokens(state: dict, rows: int) -> int | None:
    """How many rows of a ``pos_embed`` of ``rows`` rows precede a square patch grid: the file's own
    token keys (``cls_token``, ``dist_token``, ``reg_token``) when they account for it, else the
    fewest rows that leave a square (for a grid of side g, 0, 1 and 2 extra rows are never ambiguous
    below 2 g + 1)."""
    reg = state.get("reg_token")
    named = (int("cls_token" in state) + int("dist_token" in state)
             + (reg.shape[1] if reg is not None and reg.ndim == 3 else 0))
    candidates = [named, *range(min(rows, _MAX_PREFIX) + 1)]
    return next((k for k in candidates if 0 <= k < rows and math.isqrt(rows - k) ** 2 == rows - k),
                None)


def _file_shape(state: dict, path: Path) -> dict:
    """Width, depth, patch size, MLP ratio, position-table token rows and patch grid of a ViT state
    dict."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4:
        raise InputError(
            f"{path} has no 'patch_embed.proj.weight' (C_out, C_in, p, p): "
            "not a ViT encoder's weights"
        )
    width, patch = proj.shape[0], proj.shape[-1]
    blocks = {int(k.split(".")[1]) for k in state
              if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    prefix = grid = None
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        prefix = _prefix_tokens(state, pos.shape[1])
        if prefix is not None:
            side = math.isqrt(pos.shape[1] - prefix)
            grid = (side, side)
    return {
        "embed_dim": width,
        "patch_size": patch,
        "depth": max(blocks) + 1 if blocks else 0,
        "mlp_ratio": fc1.shape[0] / width if fc1 is not None else None,
        "prefix": prefix,
        "grid": grid,
    }


def _check_position_table(state: dict, shape: dict, encoder: VisionTransformer, name: str,
                          path: Path) -> None:
    """Refuse a ``pos_embed`` whose token rows are not the encoder's (one class token), saying what
    the file holds (facebookresearch/mae's ``interpolate_pos_embed`` keeps the model's token rows as
    they are, so it cannot take such a file either)."""
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return
    rows, want = pos.shape[1], encoder.num_prefix_tokens
    if shape["prefix"] is None:
        raise InputError(
            f"{path}: its position table 'pos_embed' has {rows} rows, which are not up to "
            f"{_MAX_PREFIX} token rows and a square patch grid; {name} needs {want} token row and "
            "a square grid: the file is not the position table of a square-input ViT"
        )
    if shape["prefix"] != want:
        tokens = [k for k in ("cls_token", "dist_token", "reg_token") if k in state]
        side = shape["grid"][0]
        raise InputError(
            f"{path}: its position table 'pos_embed' has {rows} rows, {shape['prefix']} token "
            f"row(s) before a {side} x {side} patch grid (token keys in the file: "
            f"{', '.join(tokens) or 'none'}), but {name} has {want} token row (the class token): "
            "the file comes from a ViT with another number of tokens (a distillation or register "
            "token, or none), which this encoder cannot load"
        )


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                          old_grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """A position table resampled to another patch grid, as facebookresearch/mae's and DeiT's
    ``interpolate_pos_embed``: the token rows kept as they are, the grid rows resampled by plain
    bicubic interpolation (``F.interpolate``, ``align_corners=False``, no antialiasing).

    Args:
        pos_embed: (1, num_prefix_tokens + h * w, D).
        new_grid, old_grid: (h, w) patch grids.
    Returns:
        (1, num_prefix_tokens + H * W, D) in the input's dtype.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    d = grid.shape[-1]
    grid = grid.float().reshape(1, *old_grid, d).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic",
                         align_corners=False)  # (1, D, H, W)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d)  # (1, H * W, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


def _infer_name(shape: dict, path: Path) -> str:
    for name, size in MAE_SIZES.items():
        if size["embed_dim"] == shape["embed_dim"] and size["depth"] == shape["depth"]:
            return name
    sizes = ", ".join(f"{n} ({s['embed_dim']} x {s['depth']})" for n, s in MAE_SIZES.items())
    raise InputError(
        f"{path}: an encoder {shape['embed_dim']} wide and {shape['depth']} deep matches no "
        f"registered model ({sizes}); it cannot be loaded as one of them"
    )


def load_encoder(
    path: Path, model_name: str | None = None, img_size: int | None = None, **overrides
) -> tuple[VisionTransformer, EncoderInfo]:
    """Build the encoder a checkpoint describes and load its weights.

    Args:
        path: a project checkpoint, an official MAE ``{'model': sd}`` file, or a (timm) ViT state
            dict.
        model_name: registered name; default: the file's, else inferred from the shapes.
        img_size: input side to build for; default: the file's. The position table is resampled if
            it differs from the file's grid.
        overrides: MAEConfig fields for the encoder (e.g. ``drop_path_rate=0.1`` when fine-tuning).

    Returns:
        (encoder, info); missing and unexpected keys are also printed as one warning line each.
    """
    path = Path(path)
    state, meta, kind = _unpack(read_checkpoint(path), path)
    state, ignored = _encoder_keys(state)
    shape = _file_shape(state, path)

    if model_name and model_name != meta.get("model_name"):
        # the named size as registered; a file that differs is refused below
        name, config = model_name, {}
        fix = ("pass the --model the file was trained with, or leave --model out to infer it from "
               "the shapes")
        chosen = "--model"
    elif meta.get("model_name"):
        name, config = meta["model_name"], dict(meta.get("model_config", {}))
        fix = ("the file's model_name and model_config do not describe its weights: it is damaged "
               "or was edited")
        chosen = "named in the file"
    else:
        name, config = _infer_name(shape, path), {"patch_size": shape["patch_size"]}
        if shape["mlp_ratio"] is not None:
            config["mlp_ratio"] = shape["mlp_ratio"]
        fix = ("its other keys do not fit the layout its width and depth imply: it is not a "
               "registered ViT layout")
        chosen = "inferred from the file's shapes"
    file_img = meta.get("img_size") or (
        shape["grid"][0] * shape["patch_size"] if shape["grid"] else None)
    config["img_size"] = img_size or file_img or mae_config(name).img_size
    config.update(overrides)
    resolved = mae_config(name, **config)
    encoder = build_encoder(name, **asdict(resolved))

    if shape["depth"] != resolved.depth:
        raise InputError(
            f"{path}: the file's encoder has {shape['depth']} blocks "
            f"(blocks.0-{shape['depth'] - 1}) but {name} ({chosen}) has {resolved.depth}; {fix}"
        )
    expected = encoder.state_dict()
    if "pos_embed" in expected and state.get("pos_embed") is not None and (
            state["pos_embed"].shape[-1] == expected["pos_embed"].shape[-1]):
        _check_position_table(state, shape, encoder, name, path)
    grid = None
    for key, value in state.items():
        want = expected.get(key)
        if want is None or value.shape == want.shape:
            continue
        if key == "pos_embed" and value.shape[-1] == want.shape[-1] and shape["grid"]:
            grid = shape["grid"]
            # (1, 1+N, D) at the new grid
            state[key] = interpolate_pos_embed(value, encoder.patch_embed.grid_size, grid,
                                               encoder.num_prefix_tokens)
            continue
        raise InputError(
            f"{path}: key '{key}' has shape {tuple(value.shape)} in the file but {name} ({chosen}: "
            f"patch {resolved.patch_size}, width {resolved.embed_dim}) needs {tuple(want.shape)}; "
            f"{fix}"
        )

    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(expected):
        raise InputError(
            f"{path}: none of the encoder's weights are in the file; is it a ViT checkpoint?"
        )
    if missing:
        warn(f"{path}: {len(missing)} encoder key(s) not in the file, left at init: "
             f"{', '.join(missing)}")
    if unexpected:
        warn(f"{path}: {len(unexpected)} key(s) in the file the encoder does not have: "
             f"{', '.join(unexpected)}")
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
