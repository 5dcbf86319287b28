"""The settings of MAE self-pretraining (stage 1; ``pipeline.pretrain`` runs them)."""

from dataclasses import dataclass
from typing import ClassVar

from pipeline.config import ConfigError, check_choices, setting
from pipeline.configs.common import DEVICES, check_host_share, check_optimizer


@dataclass(frozen=True)
class PretrainConfig:
    """Defaults reproduce the paper: ViT-B/16 at 224 px, 75 % masking, batch 1024, lr 5e-4, 500
    epochs."""

    images: tuple[str, ...] = setting((), "Folders of face images (searched recursively for "
                                          "jpg/png); repeat the option for more folders.")
    out: str = setting("runs/pretrain", "Run directory; run again with the same settings to "
                                        "resume.")
    model: str = setting("mae_vit_base_patch16", "Registered MAE model: "
                                                 "mae_vit_{tiny,small,base,large}_patch16.")
    img_size: int = setting(224, "Input side in pixels.")
    patch_size: int | None = setting(None, "Patch side in pixels (none: the model's, 16; 8 gives "
                                           "196 tokens on 112 px crops).")
    epochs: int = setting(500, "Epochs to reach; a larger value extends a finished run.")
    batch_size: int = setting(64, "Images per micro-batch per process.")
    accum_iter: int = setting(16, "Micro-batches per optimizer step (64 x 16 = 1024, the paper's "
                                  "batch).")
    blr: float = setting(1.25e-4, "Base lr: lr = blr * effective batch / 256 (the paper's 5e-4 at "
                                  "1024).")
    lr: float | None = setting(None, "Absolute peak lr; overrides blr when set.")
    min_lr: float = setting(0.0, "Floor of the cosine decay.")
    warmup_epochs: int = setting(40, "Epochs of linear warm-up (MAE's).")
    weight_decay: float = setting(0.05, "AdamW weight decay (not on biases and norms).")
    mask_ratio: float = setting(0.75, "Share of patches hidden from the encoder.")
    crop_scale: tuple[float, float] = setting((0.2, 1.0), "Area range MIN MAX of the random "
                                                          "resized crop (MAE's 0.2 1.0; aligned "
                                                          "faces may want less).")
    norm_pix_loss: bool = setting(True, "Loss on per-patch normalised pixels (MAE's).")
    decoder_embed_dim: int | None = setting(None, "Decoder width (none: the model's).")
    decoder_depth: int | None = setting(None, "Decoder blocks (none: the model's).")
    decoder_num_heads: int | None = setting(None, "Decoder attention heads (none: the model's).")
    max_images: int | None = setting(None, "Train on a seeded random subset of this many images.")
    workers: int | None = setting(None, "DataLoader processes decoding images (none: chosen from "
                                        "the cores).")
    threads: int | None = setting(None, "Torch threads of the main process (none: chosen from the "
                                        "cores).")
    seed: int = setting(0, "Seed of the weights, data order, augmentation and masking.")
    device: str = setting("auto", "auto, cpu or cuda.", choices=DEVICES)
    bf16: bool = setting(True, "bf16 autocast (CUDA, and CPUs with native bf16).")
    log_every: int = setting(10, "Optimizer steps between step lines of log.jsonl (and between the "
                                 "reads of the losses: a NaN stops the run at most this late).")
    recon_images: int = setting(6, "Rows of the per-epoch reconstruction picture.")
    tensorboard: bool = setting(True, "Also write TensorBoard event files (when TensorBoard is "
                                      "installed).")

    # Named budgets over the defaults: `demo-full` is the longer CPU demo's (a tiny ViT at 112 px
    # for 8 epochs of every frame, ~2,750 steps, with a 128 x 2 decoder at half the registered
    # one's cost; lr absolute, as MAE's blr rule is tuned for batch 1024; a 0.8-1.0 crop keeps the
    # aligned geometry fine-tuning sees); `demo` is the 15-minute demo's (the same for 3 epochs of
    # a seeded 6,000 images, 279 steps); `tiny` is a smoke test of every stage in seconds.
    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {},
        "demo": dict(model="mae_vit_tiny_patch16", img_size=112, epochs=3, max_images=6000,
                     batch_size=64, accum_iter=1, lr=1e-3, warmup_epochs=1, crop_scale=(0.8, 1.0),
                     decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
        "demo-full": dict(model="mae_vit_tiny_patch16", img_size=112, epochs=8, batch_size=64,
                          accum_iter=1, lr=1e-3, warmup_epochs=1, crop_scale=(0.8, 1.0),
                          decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
        "tiny": dict(model="mae_vit_tiny_patch16", img_size=64, epochs=1, batch_size=32,
                     accum_iter=1, lr=1e-3, warmup_epochs=1, crop_scale=(0.8, 1.0),
                     decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, workers=0),
    }

    def __post_init__(self):
        check_choices(self)
        check_optimizer(self)
        check_host_share(self)
        for name in ("epochs", "batch_size", "accum_iter", "img_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)}: use 1 or more")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError("mask_ratio", f"{self.mask_ratio} must lie strictly between 0 and 1")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError("max_images", f"{self.max_images}: use a positive number, or none "
                                            "for every image")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError("crop_scale", f"{self.crop_scale[0]} {self.crop_scale[1]}: "
                                            "need 0 < MIN <= MAX <= 1")
