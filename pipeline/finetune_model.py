"""The fine-tuning classifier built from a config, started from a linear probe (LP-FT), and loaded
back.

The encoder comes from any checkpoint ``load_encoder`` reads (the MAE of stage 1, an official MAE
``.pth``, a timm state dict) or, as a from-scratch baseline, from random weights; the heads are the
paper's fully connected layer on the pooled embedding (Zhou et al. 2024, ABAW6), optionally started
from a linear probe's (LP-FT, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features").
"""

from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.checkpoint import EncoderInfo, load_encoder, read_checkpoint, warn
from pipeline.config import ConfigError
from pipeline.data.affwild2 import AU_NAMES, EXPR_CLASSES
from pipeline.errors import InputError
from pipeline.models.classifier import PROBE_NORM_EPS, ExprClassifier
from pipeline.models.encoder import PIXEL_MEAN, PIXEL_STD
from pipeline.models.mae import build_encoder, mae_config
from pipeline.runs import sha256_file


def build_classifier(cfg) -> tuple[ExprClassifier, dict]:
    """The classifier for a FinetuneConfig, and what its encoder is (name, config, init file,
    normalisation).

    With ``cfg.init`` the encoder comes from :func:`load_encoder` (drop-path set to
    ``cfg.drop_path_rate``); without, it is built at random from the registered model, with a
    warning. The heads output the 8 Expr classes (and the 12 AUs / 2 VA values of the auxiliary
    heads).

    Raises:
        InputError: an unusable checkpoint, or a ``head_init`` that is not a probe of this encoder.
    """
    if cfg.init:
        if cfg.patch_size is not None:
            raise ConfigError("patch_size", "is for a random init only; a checkpoint's patch size "
                                            "is its own")
        encoder, info = load_encoder(Path(cfg.init), cfg.model, cfg.img_size,
                                     drop_path_rate=cfg.drop_path_rate)
        source = {
            "model_name": info.model_name, "model_config": info.model_config,
            "img_size": info.img_size, "pixel_mean": list(info.pixel_mean),
            "pixel_std": list(info.pixel_std), "init": info.path, "init_sha256": info.sha256,
            "init_kind": info.kind,
        }
    else:
        warn("no --init: the encoder starts from random weights (a from-scratch baseline, not the "
             "method)")
        name = cfg.model or "mae_vit_base_patch16"
        overrides = {"img_size": cfg.img_size or mae_config(name).img_size,
                     "drop_path_rate": cfg.drop_path_rate}
        if cfg.patch_size is not None:
            overrides["patch_size"] = cfg.patch_size
        resolved = mae_config(name, **overrides)
        encoder = build_encoder(name, **asdict(resolved))
        source = {
            "model_name": name, "model_config": asdict(resolved), "img_size": resolved.img_size,
            "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
            "init": None, "init_sha256": None, "init_kind": "random",
        }
    model = ExprClassifier(encoder, len(EXPR_CLASSES), cfg.pooling,
                           len(AU_NAMES) if cfg.aux_au else 0, cfg.aux_va, cfg.linear_probe)
    if cfg.head_init:
        source["head_init"], source["head_init_sha256"] = load_probe_heads(
            model, Path(cfg.head_init), source)
    return model, source


def load_probe_heads(model: ExprClassifier, path: Path, source: dict) -> tuple[str, str]:
    """Start ``model``'s heads from a linear-probe run's (LP-FT, Kumar et al. 2022); returns (path,
    sha256).

    The probe's BatchNorm (no affine part) is folded into each head, so the fine-tune starts from
    exactly the probe's predictions (in eval mode) instead of a random head whose large early
    gradients distort the pretrained features. The probe must have been trained on this encoder: its
    recorded init is ``init``, or ``init`` is the probe's own checkpoint.

    Raises:
        ConfigError: (key ``head_init``) the file is not such a probe, or was trained on another
            encoder.
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("model")
    if (not ckpt.get("linear_probe") or not isinstance(state, dict)
            or "probe_norm.running_mean" not in state):
        raise ConfigError("head_init", f"{path} is not a linear-probe run's checkpoint; give the "
                                       "best.pt of a finetune run made with linear_probe")
    sha = sha256_file(path)
    if source["init_sha256"] not in (ckpt.get("init_sha256"), sha):
        trained_on = ((ckpt.get("config") or {}).get("encoder", {}).get("init")
                      or "another checkpoint")
        raise ConfigError("head_init", f"{path} was trained on the encoder of {trained_on} (sha256 "
                                       f"{str(ckpt.get('init_sha256'))[:12]}), not on init "
                                       f"{source['init']}; give the checkpoint that probe started "
                                       "from as init")
    scale = 1.0 / torch.sqrt(state["probe_norm.running_var"].float() + PROBE_NORM_EPS)
    shift = state["probe_norm.running_mean"].float() * scale
    for name in ("head", "au_head", "va_head"):
        head = getattr(model, name)
        if head is None:
            continue
        if f"{name}.weight" not in state:
            raise ConfigError("head_init", f"{path} has no {name}; drop the matching aux_ setting "
                                           "or probe with it")
        # Same shapes: the sha256 check above makes the probe's encoder this one.
        weight, bias = state[f"{name}.weight"].float(), state[f"{name}.bias"].float()
        with torch.no_grad():  # W (z - mean) / std + b  ==  (W / std) z + (b - W mean / std)
            head.weight.copy_(weight * scale)
            head.bias.copy_(bias - weight @ shift)
    return str(path.resolve()), sha


def load_classifier(path: Path) -> tuple[ExprClassifier, EncoderInfo]:
    """The whole fine-tuned classifier (encoder, pooling, heads) of a ``finetune`` checkpoint, in
    eval mode.

    Returns:
        (classifier, info) with ``info`` from :func:`load_encoder`.
    Raises:
        InputError: the file is not a fine-tuned classifier's checkpoint.
    """
    encoder, info = load_encoder(Path(path))
    ckpt = read_checkpoint(Path(path))
    if info.kind != "finetune" or "model" not in ckpt:
        raise InputError(f"{path} is a {info.kind!r} checkpoint, not a fine-tuned classifier; give "
                         "a finetune run's best.pt")
    state = ckpt["model"]
    num_aus = state["au_head.weight"].shape[0] if "au_head.weight" in state else 0
    model = ExprClassifier(encoder, state["head.weight"].shape[0], info.pooling or "cls", num_aus,
                           "va_head.weight" in state, bool(ckpt.get("linear_probe", False)))
    model.load_state_dict(state)
    return model.eval(), info
