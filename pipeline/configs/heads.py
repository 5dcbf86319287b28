"""The settings of a temporal head and its training run (stage 3; ``pipeline.heads`` runs them)."""

from dataclasses import MISSING, dataclass
from typing import ClassVar

from features import FILLS
from pipeline import config
from pipeline.config import ConfigError, check_choices, setting
from pipeline.configs.common import DEVICES, check_optimizer
from pipeline.data.affwild2 import TASKS

POS_ENCODINGS = ("none", "sinusoidal", "learned")
VA_LOSSES = ("ccc", "ccc+mse")
WEIGHTINGS = ("none", "balanced")


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of a temporal head; the defaults are the paper's (Zhou et al. 2024, section 3)."""

    tcn_channels: tuple[int, ...] = setting((768, 256, 128), "Output width of each TCN block "
                                                             "(dilation 2**i), e.g. 768-256-128.")
    kernel_size: int = setting(5, "TCN kernel size in frames.")
    causal: bool = setting(True, "The authors' causal padding; false centres the receptive field.")
    d_model: int = setting(512, "Transformer width.")
    num_layers: int = setting(8, "Transformer encoder layers.")
    num_heads: int = setting(4, "Attention heads.")
    ff_dim: int = setting(512, "Feed-forward width of each layer.")
    head_hidden: int = setting(256, "Hidden width of the frame-wise head.")
    dropout: float = setting(0.3, "Dropout (the paper's text; the authors' configs use 0.0).")
    pos_encoding: str = setting("none", "Position encoding (the authors use none).",
                                choices=POS_ENCODINGS)
    max_len: int = setting(1024, "Rows of the learned position table.")

    def __post_init__(self):
        check_choices(self)
        check_optimizer(self)
        if not self.tcn_channels or min(self.tcn_channels) < 1:
            raise ConfigError("tcn_channels", f"{self.tcn_channels}: use positive widths")
        if self.d_model % self.num_heads:
            raise ConfigError("d_model", f"{self.d_model} is not divisible by num_heads "
                                         f"{self.num_heads}")


PAPER_EPOCHS = {"va": 40, "expr": 10, "au": 30}
ABLATION_SEEDS = 3  # runs per combination of an ablation (the mean ± std of its table)
# Registered temporal heads (``pipeline.models.temporal``); the family is in the name.
HEAD_MODELS = ("temporal_tcn_transformer", "temporal_tcn", "temporal_transformer",
               "temporal_linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a head run depends on; defaults reproduce the paper (epochs per task).

    ``head`` holds the model sizes (:class:`HeadConfig`); its fields are set by their own names
    (``d_model=256``), in ``create``, ``--set`` and ``ablate --grid`` alike.
    """

    task: str = setting(MISSING, "va, expr or au.", choices=TASKS)
    stores: tuple[str, ...] = setting((), "Feature stores, frames aligned, features side by side "
                                          "(repeat the option).", option="--store")
    data: str = setting("", "An Aff-Wild2-layout root (the annotations).")
    fold: int = setting(0, "0: the official split; 1..folds: folds grouped by source video.")
    folds: int = setting(5, "Number of grouped folds.")
    fill: str = setting("nearest", "Rows of frames without a face, the same in training and "
                                   "inference.", choices=FILLS)
    absent_in_loss: bool = setting(True, "Frames without a face count in the loss (the metric "
                                         "counts them too).")
    model: str = setting("temporal_tcn_transformer", "Temporal head.", choices=HEAD_MODELS)
    head: HeadConfig = setting(default_factory=HeadConfig)
    window: int = setting(300, "Window length W in frames (the paper's 300).")
    stride: int | None = setting(None, "Window stride S in frames (none: two thirds of the window, "
                                       "the paper's 200 for 300).")
    batch_size: int = setting(32, "Windows per step.")
    epochs: int | None = setting(None, "Epochs (none: the paper's for the task: "
                                       "VA 40, Expr 10, AU 30).")
    lr: float = setting(3e-5, "Peak AdamW lr.")
    weight_decay: float = setting(1e-5, "AdamW weight decay.")
    warmup_epochs: float = setting(1.0, "Epochs of linear warm-up.")
    restart_epochs: float | None = setting(None, "First cosine period in epochs (none: epochs - "
                                                 "warmup + 1, the authors' T_0).")
    restart_mult: int = setting(2, "Growth of each cosine period after a restart.")
    min_lr: float = setting(1e-8, "Floor of the cosine.")
    va_loss: str = setting("ccc", "VA loss: 1 - CCC per dimension, or that plus MSE.",
                           choices=VA_LOSSES)
    class_weights: str = setting("none", "Expr: inverse-frequency class weights.",
                                 choices=WEIGHTINGS)
    focal_gamma: float = setting(0.0, "Expr: focal loss gamma (0: plain cross-entropy).")
    pos_weight: str = setting("none", "AU: a positive weight per AU.", choices=WEIGHTINGS)
    # z-score features with training-frame statistics (kept in the head's buffers). Off, as the
    # paper: on the synthetic demo stores it lowered validation VA CCC (docs/results.md).
    standardize: bool = setting(False, "z-score the features with training-frame statistics.")
    seed: int = setting(0, "Seed of the weights and the window order.")
    device: str = setting("auto", "auto, cpu or cuda.", choices=DEVICES)
    bf16: bool = setting(False, "bf16 autocast.")
    tensorboard: bool = setting(True, "Also write TensorBoard event files (when TensorBoard is "
                                      "installed).")

    # Named starting points; settings given with them win. "demo": a head small enough to train in
    # well under a minute per task on two CPU cores (the synthetic demo store, about 100 videos of
    # 200 frames, D=192): the paper's lr 3e-5 and batch 32 assume ~3 million frames (hundreds of
    # steps an epoch), the demo has a few thousand; dropout 0 as in the authors' configs (on the
    # CPU, dropout's random masks cost a third of a small head's step); 12 epochs in the 15-minute
    # demo, 20 in "demo-full". "tiny": a smoke test in seconds.
    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {},
        "demo": dict(tcn_channels=(128, 64, 64), d_model=64, num_layers=2, ff_dim=128,
                     head_hidden=64, dropout=0.0, batch_size=8, lr=1e-3, epochs=12),
        "demo-full": dict(tcn_channels=(128, 64, 64), d_model=64, num_layers=2, ff_dim=128,
                          head_hidden=64, dropout=0.0, batch_size=8, lr=1e-3, epochs=20),
        "tiny": dict(tcn_channels=(32, 16), d_model=32, num_layers=1, num_heads=2, ff_dim=32,
                     head_hidden=16, dropout=0.0, batch_size=8, lr=1e-3, epochs=2, window=64,
                     stride=32),
    }

    def __post_init__(self):
        check_choices(self)
        check_optimizer(self)
        if self.epochs is None:
            # resolved, so config.json says it
            object.__setattr__(self, "epochs", PAPER_EPOCHS[self.task])
        if self.stride is None:
            object.__setattr__(self, "stride", max(1, self.window * 2 // 3))
        checks = [
            ("window", self.window >= 1, f"{self.window}: use 1 or more"),
            ("stride", 1 <= self.stride <= self.window,
             f"{self.stride}: use 1 .. window ({self.window}); a larger stride would skip frames"),
            ("epochs", self.epochs >= 1, f"{self.epochs}: use 1 or more"),
            ("batch_size", self.batch_size >= 1, f"{self.batch_size}: use 1 or more"),
            ("window", self.head.pos_encoding != "learned" or self.window <= self.head.max_len,
             f"{self.window} exceeds the learned position table (max_len {self.head.max_len})"),
        ]
        for key, ok, problem in checks:
            if not ok:
                raise ConfigError(key, problem)

    @classmethod
    def create(cls, preset: str = "paper", **values) -> "TrainConfig":
        """A config from flat settings over a preset (``PRESETS``); HeadConfig's fields by their
        names.

        Raises:
            ConfigError: an unknown setting or preset, or a value the checks refuse.
        """
        return config.build(cls, {**config.preset_values(cls, preset), **values})
