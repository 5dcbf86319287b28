"""Temporal heads on per-frame embeddings: TCN -> Transformer encoder -> frame-wise head.

Zhou et al. (2024), "Boosting Continuous Emotion Recognition with Self-Pretraining using Masked
Autoencoders, Temporal Convolutional Networks, and Transformers" (ABAW6, CVPR 2024 workshops); the
TCN follows Bai et al. (2018) and locuslab/TCN, with the non-deprecated
``torch.nn.utils.parametrizations.weight_norm``.

Every model maps features (B, T, D) and a ``keep`` mask (B, T) (false on the padding of a window
longer than its video) to one output per frame (B, T, out). Padding is invisible: padded rows are
zeroed after every convolution (so a centred TCN sees the zeros a shorter input would be padded
with), the Transformer masks them as keys, and the head's BatchNorm takes statistics over real
frames only. A padded window therefore gives the same outputs on its real frames as the unpadded
video, which is what lets training pad short videos and inference average overlapping windows.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pipeline.configs.heads import HeadConfig
from pipeline.models.registry import register_model


def _masked(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded frames of x (B, C, T); keep (B, 1, T) float or None."""
    return x if keep is None else x * keep


class TemporalConv(nn.Module):
    """Weight-normed dilated Conv1d whose output has its input's length T.

    Causal: all (k - 1) * d padding goes on the left, so output t sees inputs <= t only. (The
    authors pad both sides and trim the end, as locuslab/TCN's ``Chomp1d`` does: the same result,
    with a wasted tail.) Centred: the padding is split, output t sees t - r .. t + r.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation))
        total = (kernel_size - 1) * dilation
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))  # (B, C, T) -> (B, C_out, T)


class TemporalBlock(nn.Module):
    """Two (conv, PReLU, dropout) stages plus a residual (1x1 conv where widths differ), then
    PReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, causal: bool,
                 dropout: float):
        super().__init__()
        self.conv1 = TemporalConv(c_in, c_out, kernel_size, dilation, causal)
        self.act1 = nn.PReLU()
        self.conv2 = TemporalConv(c_out, c_out, kernel_size, dilation, causal)
        self.act2 = nn.PReLU()
        self.drop = nn.Dropout(dropout)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        h = _masked(self.drop(self.act1(self.conv1(x))), keep)  # (B, C_out, T)
        h = _masked(self.drop(self.act2(self.conv2(h))), keep)
        return _masked(self.act(h + self.residual(x)), keep)


class TemporalConvNet(nn.Module):
    """Residual blocks with dilations 1, 2, 4, ...; takes and returns (B, C, T)."""

    def __init__(self, c_in: int, channels: tuple[int, ...], kernel_size: int, causal: bool,
                 dropout: float):
        super().__init__()
        widths = (c_in, *channels)
        self.blocks = nn.ModuleList(
            TemporalBlock(widths[i], widths[i + 1], kernel_size, 2**i, causal, dropout)
            for i in range(len(channels))
        )

    @property
    def receptive_field(self) -> int:
        return 1 + sum(2 * (b.conv1.conv.kernel_size[0] - 1) * b.conv1.conv.dilation[0]
                       for b in self.blocks)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, keep)
        return x


class PositionalEncoding(nn.Module):
    """Adds a sinusoidal (Vaswani et al., 2017) or learned position code to (B, T, D)."""

    def __init__(self, kind: str, d_model: int, max_len: int):
        super().__init__()
        self.kind = kind
        self.max_len = max_len
        self.table = nn.Parameter(torch.zeros(max_len, d_model)) if kind == "learned" else None
        if self.table is not None:
            nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        T, D = x.shape[1], x.shape[2]
        if self.kind == "learned":
            if T > self.max_len:
                raise ValueError(f"a window of {T} frames exceeds the learned positional table "
                                 f"({self.max_len})")
            return x + self.table[:T]
        position = torch.arange(T, device=x.device, dtype=torch.float32)[:, None]  # (T, 1)
        freq = torch.exp(torch.arange(0, D, 2, device=x.device, dtype=torch.float32)
                         * (-math.log(10000.0) / D))
        code = torch.zeros(T, D, device=x.device)
        code[:, 0::2] = torch.sin(position * freq)
        code[:, 1::2] = torch.cos(position * freq[: D // 2])
        return x + code.to(x.dtype)


class TransformerStage(nn.Module):
    """Conv1d (kernel 1) to d_model, optional position code, post-norm Transformer encoder
    (ReLU)."""

    def __init__(self, c_in: int, cfg: HeadConfig):
        super().__init__()
        self.proj = nn.Conv1d(c_in, cfg.d_model, 1)
        self.pos = PositionalEncoding(cfg.pos_encoding, cfg.d_model, cfg.max_len)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.num_heads, cfg.ff_dim, cfg.dropout, activation="relu",
            batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = self.pos(self.proj(x).transpose(1, 2))  # (B, C, T) -> (B, T, D)
        padding = None if keep is None else ~keep  # (B, T) true on padded keys
        return self.encoder(x, src_key_padding_mask=padding)  # (B, T, D)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the real frames of (B, T, C): padded rows neither shift the statistics nor
    the output."""

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        if keep is None:
            return super().forward(x.reshape(B * T, C)).reshape(B, T, C)
        y = super().forward(x[keep])  # (M, C), M real frames
        return x.new_zeros((B, T, C), dtype=y.dtype).index_put((keep,), y)


class FrameHead(nn.Module):
    """The paper's per-frame head: Linear, BatchNorm, Linear (no activation between, as the
    authors')."""

    def __init__(self, c_in: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.norm = MaskedBatchNorm(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x), keep))  # (B, T, C) -> (B, T, out)


class TemporalModel(nn.Module):
    """Optional TCN, optional Transformer, then the frame head; the four registered heads are its
    cases.

    Args:
        in_dim: feature width D (from the store).
        out_dim: outputs per frame (2 VA, 8 Expr logits, 12 AU logits).
        cfg: sizes.
        use_tcn, use_transformer: which temporal stages to build.
    """

    def __init__(self, in_dim: int, out_dim: int, cfg: HeadConfig, use_tcn: bool,
                 use_transformer: bool):
        super().__init__()
        self.cfg = cfg
        self.in_dim, self.out_dim = in_dim, out_dim
        width = in_dim
        self.tcn = None
        if use_tcn:
            self.tcn = TemporalConvNet(in_dim, cfg.tcn_channels, cfg.kernel_size, cfg.causal,
                                       cfg.dropout)
            width = cfg.tcn_channels[-1]
        self.transformer = None
        if use_transformer:
            self.transformer = TransformerStage(width, cfg)
            width = cfg.d_model
        self.head = FrameHead(width, cfg.head_hidden, out_dim)
        # Feature standardisation (identity until set_input_stats): saved with the weights, so a
        # head carries the statistics of the features it was trained on into inference.
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs as (x - mean) / std, both (D,), e.g. from the training frames."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def forward_temporal(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) -> (B, T, C): the TCN and Transformer stages, in (B, C, T) for the
        convolutions."""
        if self.tcn is None and self.transformer is None:
            return x
        # The one transpose: convolutions over time take (B, C, T).
        h = x.transpose(1, 2)  # (B, T, D) -> (B, D, T)
        keep_ct = None if keep is None else keep[:, None, :].to(h.dtype)  # (B, 1, T)
        h = _masked(h, keep_ct)
        if self.tcn is not None:
            h = self.tcn(h, keep_ct)  # (B, C, T)
        if self.transformer is not None:
            return self.transformer(h, keep)  # (B, T, C)
        return h.transpose(1, 2)  # (B, C, T) -> (B, T, C)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: features (B, T, D).
            keep: (B, T) bool, false on padded frames; None when every frame is real.
        Returns:
            (B, T, out) raw outputs (VA values, Expr or AU logits).
        """
        if keep is not None and bool(keep.all()):
            # nothing padded: skip the masking work (a third of a small head's step on CPU)
            keep = None
        x = (x - self.input_mean) / self.input_std  # padded rows are zeroed again by the masks
        return self.head(self.forward_temporal(x, keep), keep)


@register_model
def temporal_tcn_transformer(in_dim: int, out_dim: int, **sizes) -> TemporalModel:
    """The paper's head: TCN 768 -> 256 -> 128, Transformer 8 x 512, Linear-BN-Linear."""
    return TemporalModel(in_dim, out_dim, HeadConfig(**sizes), use_tcn=True, use_transformer=True)


@register_model
def temporal_tcn(in_dim: int, out_dim: int, **sizes) -> TemporalModel:
    """Ablation "without Transformer": TCN then the frame head."""
    return TemporalModel(in_dim, out_dim, HeadConfig(**sizes), use_tcn=True, use_transformer=False)


@register_model
def temporal_transformer(in_dim: int, out_dim: int, **sizes) -> TemporalModel:
    """Ablation "without TCN": Conv1d to d_model, Transformer, then the frame head."""
    return TemporalModel(in_dim, out_dim, HeadConfig(**sizes), use_tcn=False, use_transformer=True)


@register_model
def temporal_linear(in_dim: int, out_dim: int, **sizes) -> TemporalModel:
    """Frame-wise baseline without temporal context: the frame head on the features alone."""
    return TemporalModel(in_dim, out_dim, HeadConfig(**sizes), use_tcn=False, use_transformer=False)
