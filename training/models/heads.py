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
    """Class logits = scale * cos(embedding, class weight): works on the unit-norm embedding directly.
    With `bias` (multi-label, one sigmoid per label) each label also learns its own threshold: without it every
    label would switch at cos = 0."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.scale = scale

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        logits = self.scale * emb @ F.normalize(self.weight, dim=1).t()
        return logits if self.bias is None else logits + self.bias


class HashHead(nn.Module):
    """features -> BatchNorm -> Linear -> K hash logits. Training relaxes the codes with tanh; exported, the
    logits' sign bits are the codes (core/ packs them). The BatchNorm centres the features so that random
    hyperplanes split the data from the first step (uncentred features give every image the same code)."""

    def __init__(self, in_features: int, bits: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.proj = nn.Linear(in_features, bits)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(feats))


class RelaxedCodeEmbedding(nn.Module):
    """The float view of a hash head: L2-normalised tanh(logits). Its sign pattern is the code, so float and
    Hamming search rank by the same learned representation."""

    def __init__(self, hash_head: HashHead):
        super().__init__()
        self.hash_head = hash_head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.tanh(self.hash_head(feats)), dim=1)
