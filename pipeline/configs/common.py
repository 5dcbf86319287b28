"""Choices several stage configs share: the device, the pooled embedding of a frame, and the checks
of the host's share (decode workers, torch threads) and of the optimizer's settings."""

import math

from pipeline.config import ConfigError

DEVICES = ("auto", "cpu", "cuda")
# cls: the class token; mean: the mean of the patch tokens (MAE's fine-tuning pooling). Both taken
# after the encoder's final norm, as timm's ViT does.
POOL_MODES = ("cls", "mean")


def check_host_share(config) -> None:
    """``workers`` (0 or more) and ``threads`` (1 or more) of a config that has them, each None for
    "auto" (``pipeline.device.cpu_budget`` resolves them). Raises ConfigError naming the field."""
    for name, least in (("workers", 0), ("threads", 1)):
        value = getattr(config, name, None)
        if value is not None and value < least:
            raise ConfigError(name, f"{value}: use {least} or more, or none to choose from the "
                                    "cores")


def check_optimizer(config) -> None:
    """The optimizer and regularisation settings a config has, each where it is defined: lr and
    blr positive (lr may be none where blr stands in), min_lr, weight_decay and warmup_epochs 0
    or more, dropout and drop_path_rate in [0, 1). A value outside would reach PyTorch as a
    traceback, or (lr 0) train nothing without a word. Raises ConfigError naming the field."""
    rules = {
        "lr": (lambda v: v > 0, "use a positive lr"),
        "blr": (lambda v: v > 0, "use a positive base lr"),
        "min_lr": (lambda v: v >= 0, "use 0 or more"),
        "weight_decay": (lambda v: v >= 0, "use 0 or more"),
        "warmup_epochs": (lambda v: v >= 0, "use 0 or more"),
        "dropout": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
        "drop_path_rate": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    }
    for name, (ok, advice) in rules.items():
        value = getattr(config, name, None)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise ConfigError(name, f"{value}: {advice}")
