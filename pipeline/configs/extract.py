"""The settings of extraction into a feature store (``pipeline.extract`` runs them)."""

from dataclasses import dataclass

from features.format import WRITE_FORMATS, suffix_contradiction
from pipeline.config import ConfigError, check_choices, setting
from pipeline.configs.common import DEVICES, POOL_MODES, check_host_share
from pipeline.data.affwild2 import SPLITS, TEST

SELECTABLE_SPLITS = ("all", *SPLITS, TEST)

@dataclass(frozen=True)
class ExtractConfig:
    """One extraction run: which frames, which encoder, which store, how fast."""

    data: str = setting("", "An Aff-Wild2-layout root (its cropped_aligned* folders).")
    ckpt: str = setting("", "Encoder checkpoint: a fine-tuned run's best.pt, an MAE run's, an "
                            "official MAE .pth or a timm ViT.")
    store: str = setting("", "Feature store to write: DIR.zarr (default) or FILE.h5.")
    format: str | None = setting(None, "Store format; none: from the store's suffix "
                                       "(hdf5 for .h5 or .hdf5, else zarr).", choices=WRITE_FORMATS)
    splits: tuple[str, ...] = setting(("all",), "all, Train_Set, Validation_Set, test (repeat the "
                                                "option for several).")
    pooling: str | None = setting(None, "cls or mean; none: the checkpoint's (the pooling "
                                        "fine-tuning trained).", choices=POOL_MODES)
    dtype: str = setting("float16", "Stored feature dtype.", choices=("float16", "float32"))
    batch_size: int | None = setting(None, "Frames per forward pass, frames of several videos "
                                           "sharing a batch (none: 256 on CUDA, 64 on the CPU).")
    workers: int | None = setting(None, "DataLoader processes decoding JPEGs (none: chosen from "
                                        "the cores).")
    threads: int | None = setting(None, "Torch threads of the main process (none: chosen from the "
                                        "cores).")
    device: str = setting("auto", "auto, cpu or cuda.", choices=DEVICES)
    bf16: bool = setting(True, "bf16 autocast (CUDA, and CPUs with native bf16).")
    overwrite: bool = setting(False, "Delete an existing store of ours and start afresh.")
    redo: tuple[str, ...] = setting((), "Videos to extract again though the store holds them "
                                        "complete (repeat the option for several).")

    def __post_init__(self):
        check_choices(self)
        contradiction = suffix_contradiction(self.store, self.format)
        if contradiction:  # before any work, on every rank
            raise ConfigError("format", f"{self.format}: {contradiction}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("batch_size", f"{self.batch_size}: use 1 or more")
        check_host_share(self)
        unknown = [s for s in self.splits if s not in SELECTABLE_SPLITS]
        if unknown:
            raise ConfigError("splits", f"{unknown[0]!r} is not a split; use "
                                        f"{', '.join(SELECTABLE_SPLITS)}")
