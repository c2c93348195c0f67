"""Heads on top of a backbone's pooled features: the L2-normalised embedding and an optional classifier."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingHead(nn.Module):
    """features -> Linear -> L2-normalised embedding of `dim` values."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_features, dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(feats), dim=1)


class CosineClassifier(nn.Module):
    """Class logits = scale * cos(embedding, class weight): works on the unit-norm embedding directly."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = scale

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * emb @ F.normalize(self.weight, dim=1).t()
