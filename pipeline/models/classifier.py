"""The fine-tuning model: the shared ViT encoder, one pooled embedding per frame, a linear Expr
head.

Stage 2 of Zhou et al. (2024, ABAW6): "decoder dropped, a fully connected head on the encoder". The
embedding is exactly what extraction stores (:func:`pipeline.models.encoder.pool_tokens` of the
encoder's own ``forward_features``), so the head is trained on the features the temporal heads will
read. Optional frame-level heads for AU (12 logits) and VA (2 values in [-1, 1]) share that
embedding.

For a linear probe MAE puts a BatchNorm without affine parameters before the head (He et al. 2022,
appendix A.2): features of a frozen MAE encoder have very different scales per channel.
"""

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.models.encoder import pool_tokens

PROBE_NORM_EPS = 1e-6


class ExprClassifier(nn.Module):
    """encoder -> pooled (B, D) -> heads.

    Args:
        encoder: a timm ViT from :func:`pipeline.checkpoint.load_encoder` or ``build_encoder``.
        num_classes: expression classes C of the main head (Aff-Wild2: 8).
        pooling: ``cls`` or ``mean`` (see ``pool_tokens``).
        num_aus: action units of the auxiliary AU head (Aff-Wild2: 12); 0: no AU head.
        aux_va: add the auxiliary valence-arousal head (2 values).
        linear_probe: freeze the encoder (no grad, always in eval mode: no drop-path) and put MAE's
            BatchNorm before the heads.
    """

    def __init__(self, encoder: VisionTransformer, num_classes: int, pooling: str = "mean",
                 num_aus: int = 0, aux_va: bool = False, linear_probe: bool = False):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.linear_probe = linear_probe
        width = encoder.embed_dim
        if linear_probe:
            encoder.requires_grad_(False)
        self.probe_norm = (nn.BatchNorm1d(width, affine=False, eps=PROBE_NORM_EPS) if linear_probe
                           else nn.Identity())
        self.head = nn.Linear(width, num_classes)
        self.au_head = nn.Linear(width, num_aus) if num_aus else None
        self.va_head = nn.Linear(width, 2) if aux_va else None
        for head in (self.head, self.au_head, self.va_head):
            if head is not None:
                # MAE's fine-tuning init: near-zero logits, so the pretrained features are not
                # disturbed by a random head's large gradients in the first steps.
                nn.init.trunc_normal_(head.weight, std=2e-5)
                nn.init.zeros_(head.bias)

    def train(self, mode: bool = True) -> "ExprClassifier":
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()
        return self

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) normalised -> pooled embedding (B, D), as extraction computes it."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.linear_probe):
            return pool_tokens(self.encoder.forward_features(images), self.pooling)

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, D) -> {"expr": (B, C) logits, "au": (B, num_aus) logits, "va": (B, 2) in
        [-1, 1]}."""
        z = self.probe_norm(features)
        out = {"expr": self.head(z)}
        if self.au_head is not None:
            out["au"] = self.au_head(z)
        if self.va_head is not None:
            out["va"] = torch.tanh(self.va_head(z))
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_heads(self.forward_features(images))
