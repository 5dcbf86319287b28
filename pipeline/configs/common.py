"""Choices several stage configs share: the device, the pooled embedding of a frame, and the checks
of the host's share (decode workers, torch threads)."""

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
