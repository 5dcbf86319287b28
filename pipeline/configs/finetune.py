"""The settings of Expr fine-tuning (stage 2; ``pipeline.finetune`` runs them)."""

from dataclasses import dataclass
from typing import ClassVar

from pipeline.config import ConfigError, check_choices, setting
from pipeline.configs.common import DEVICES, POOL_MODES, check_host_share, check_optimizer

# sampler: class-balanced sampling; weights: inverse-frequency loss weights; none: the frames as
# they come.
BALANCE_MODES = ("sampler", "weights", "none")

@dataclass(frozen=True)
class FinetuneConfig:
    """Defaults reproduce the paper (AdamW, lr 1e-4, batch 256) inside MAE's fine-tuning recipe.

    ``epochs`` and ``frames_per_video`` are not in the paper: 10 epochs of at most 300 frames per
    video (about 75,000 of Aff-Wild2's training frames per epoch) are this project's choice.
    """

    data: str = setting("", "An Aff-Wild2-layout root (its Train_Set and Validation_Set Expr "
                            "labels).")
    out: str = setting("runs/finetune", "Run directory; run again with the same settings to "
                                        "resume.")
    init: str | None = setting(None, "Encoder checkpoint (an MAE run's, an official MAE .pth, a "
                                     "timm ViT); none: random weights, a from-scratch baseline.")
    model: str | None = setting(None, "Registered MAE model (none: the checkpoint's, else "
                                      "mae_vit_base_patch16).")
    img_size: int | None = setting(None, "Input side in pixels (none: the checkpoint's, else 224).")
    patch_size: int | None = setting(None, "Random init only: patch side in pixels (none: the "
                                           "model's, 16).")
    pooling: str = setting("mean", "Embedding the head reads (MAE fine-tunes on the mean of the "
                                   "patch tokens); extraction reuses it.", choices=POOL_MODES)
    epochs: int = setting(10, "Epochs to reach; a larger value extends a finished run.")
    batch_size: int = setting(256, "Frames per step per process.")
    lr: float = setting(1e-4, "Peak lr of the last layer (absolute, the paper's).")
    min_lr: float = setting(1e-6, "Floor of the cosine decay.")
    warmup_epochs: float = setting(1.0, "Epochs of linear warm-up.")
    weight_decay: float = setting(0.05, "AdamW weight decay (not on biases, norms and tokens).")
    layer_decay: float = setting(0.75, "lr factor per block towards the input (MAE's layer-wise "
                                       "decay).")
    drop_path_rate: float = setting(0.1, "Stochastic depth of the encoder's blocks.")
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy.")
    balance: str = setting("sampler", "Class-balanced sampling, inverse-frequency loss weights, or "
                                      "neither.", choices=BALANCE_MODES)
    frames_per_video: int = setting(300, "Frames drawn per video per epoch (a fresh seeded draw "
                                         "each epoch; 0: all).")
    val_frames_per_video: int = setting(0, "Evenly spaced validation frames per video (0: all, the "
                                           "official metric).")
    crop_scale: tuple[float, float] = setting((0.8, 1.0), "Area range MIN MAX of the random "
                                                          "resized crop.")
    color_jitter: float = setting(0.0, "Brightness/contrast/saturation factors in [1-s, 1+s], hue "
                                       "up to s/4 of a turn (0: off).")
    grayscale: float = setting(0.0, "Probability of a gray crop.")
    erase: float = setting(0.0, "Random-erasing probability (MAE's recipe: 0.25).")
    mixup: float = setting(0.0, "Mixup Beta alpha (MAE's recipe: 0.8; 0: off).")
    cutmix: float = setting(0.0, "CutMix Beta alpha (MAE's recipe: 1.0; 0: off; with mixup, one of "
                                 "the two per batch).")
    aux_au: bool = setting(False, "Auxiliary frame-level AU head.")
    aux_va: bool = setting(False, "Auxiliary frame-level VA head.")
    aux_weight: float = setting(1.0, "Weight of each auxiliary loss.")
    linear_probe: bool = setting(False, "Freeze the encoder; train only the head (MAE's linear "
                                        "probe).")
    head_init: str | None = setting(None, "LP-FT: start the head from this linear-probe run's "
                                          "best.pt (trained on the same init).")
    workers: int | None = setting(None, "DataLoader processes decoding images (none: chosen from "
                                        "the cores).")
    threads: int | None = setting(None, "Torch threads of the main process (none: chosen from the "
                                        "cores).")
    seed: int = setting(0, "Seed of the head, data order, augmentation and mixing.")
    device: str = setting("auto", "auto, cpu or cuda.", choices=DEVICES)
    bf16: bool = setting(True, "bf16 autocast (CUDA, and CPUs with native bf16).")
    log_every: int = setting(10, "Optimizer steps between step lines of log.jsonl (and between the "
                                 "reads of the losses: a NaN stops the run at most this late).")
    tensorboard: bool = setting(True, "Also write TensorBoard event files (when TensorBoard is "
                                      "installed).")

    # Named budgets over the defaults. `demo-full`: the longer CPU demo's, 10 epochs of at most
    # 100 frames a video (4,352 frames an epoch on the demo set; 3 epochs fitted nothing on a set
    # without the per-video shortcut, docs/results.md); `demo`: the 15-minute demo's, 4 epochs of
    # 50 frames a video, the best epoch chosen on 60 evenly spaced frames of each validation video;
    # `*-probe`: their linear probes, whose heads start the fine-tuning (LP-FT); `tiny` and
    # `tiny-probe`: a smoke test in seconds.
    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {},
        "demo": dict(epochs=4, batch_size=64, lr=5e-4, frames_per_video=50,
                     val_frames_per_video=60, warmup_epochs=0.5),
        "demo-probe": dict(epochs=4, batch_size=64, lr=5e-3, frames_per_video=50,
                           val_frames_per_video=60, warmup_epochs=0.5, linear_probe=True),
        "demo-full": dict(epochs=10, batch_size=64, lr=5e-4, frames_per_video=100,
                          warmup_epochs=0.5),
        "demo-full-probe": dict(epochs=10, batch_size=64, lr=5e-3, frames_per_video=100,
                                warmup_epochs=0.5, linear_probe=True),
        "tiny": dict(epochs=1, batch_size=32, lr=5e-4, frames_per_video=100, warmup_epochs=0.5,
                     workers=0),
        "tiny-probe": dict(epochs=1, batch_size=32, lr=5e-3, frames_per_video=100,
                           warmup_epochs=0.5, workers=0, linear_probe=True),
    }

    def __post_init__(self):
        check_choices(self)
        check_optimizer(self)
        check_host_share(self)
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)}: use 1 or more")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay", f"{self.layer_decay} must lie in (0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"{self.label_smoothing} must lie in [0, 1)")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError("crop_scale", f"{self.crop_scale[0]} {self.crop_scale[1]}: "
                                            "need 0 < MIN <= MAX <= 1")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError("color_jitter", f"{self.color_jitter} must lie in [0, 1)")
        for name in ("grayscale", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(name, f"{getattr(self, name)} is a probability; "
                                        "use a value in [0, 1]")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"{getattr(self, name)} is a Beta alpha: "
                                        "use 0 (off) or a positive value")
        if self.head_init and (self.linear_probe or not self.init):
            raise ConfigError("head_init", "starts a fine-tune from a linear probe's head: it "
                                           "needs init (the probe's encoder) and no linear_probe")
