"""The exported retrieval network: backbone features -> (embedding, hash logits)."""
from __future__ import annotations

import torch
from torch import nn


class RetrievalNet(nn.Module):
    """Wraps a backbone exposing `features(x)` with an optional embedding head and an optional hash head.

    Input is already normalised (core/ applies scale, mean and std from the model metadata).
    `forward` returns the outputs named by `output_names`, in that order.
    """

    def __init__(self, backbone: nn.Module, embed_head: nn.Module | None = None, hash_head: nn.Module | None = None,
                 classifier: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.embed_head = embed_head if embed_head is not None else nn.Identity()
        self.hash_head = hash_head
        self.classifier = classifier  # on the embedding: class logits (softmax, or sigmoid per label)

    @property
    def output_names(self) -> list[str]:
        return (["embedding"] + (["hash_logits"] if self.hash_head is not None else [])
                + (["class_logits"] if self.classifier is not None else []))

    def forward(self, x: torch.Tensor):
        feats = self.backbone.features(x)
        emb = self.embed_head(feats)
        out = [emb]
        if self.hash_head is not None:
            out.append(self.hash_head(feats))
        if self.classifier is not None:
            out.append(self.classifier(emb))
        return out[0] if len(out) == 1 else tuple(out)


class LSHHead(nn.Module):
    """Fixed random-hyperplane hash head: logits = W (f - mean); sign bits are the code (Charikar 2002)."""

    def __init__(self, in_features: int, bits: int, mean: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(bits, in_features, generator=gen) / in_features ** 0.5
        center = mean if mean is not None else torch.zeros(in_features)
        self.proj = nn.Linear(in_features, bits)
        with torch.no_grad():
            self.proj.weight.copy_(weight)
            self.proj.bias.copy_(-(weight @ center))
        self.proj.requires_grad_(False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)
