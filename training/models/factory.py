"""Build the network being trained: backbone + embedding head (+ classifier head)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, LITE_VARIANTS, efficientnet_lite
from .heads import CosineClassifier, EmbeddingHead, HashHead, RelaxedCodeEmbedding
from .resnet import ResNet18
from .retrieval import RetrievalNet
from .tiny import TinyConvNet

BACKBONES = tuple(sorted(LITE_VARIANTS)) + ("resnet18", "tiny")


def build_backbone(name: str, pretrained: bool, in_channels: int) -> nn.Module:
    """A backbone exposing `features(x)` and `num_features`. ImageNet weights exist for efficientnet_lite0/1/2;
    with other than 3 bands the stem takes the mean RGB filter for every band (scaled to keep activations)."""
    if name in LITE_VARIANTS:
        if not pretrained:
            return efficientnet_lite(name, pretrained=False, in_channels=in_channels)
        net = efficientnet_lite(name, pretrained=True)
        if in_channels != 3:
            old = net._conv_stem
            new = nn.Conv2d(in_channels, old.out_channels, 3, stride=2, padding=1, bias=False)
            with torch.no_grad():
                new.weight.copy_(old.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels)
            net._conv_stem = new
        return net
    if pretrained:
        raise ValueError(f"backbone {name!r} has no pretrained weights; set pretrained = false")
    if name == "resnet18":
        return ResNet18(in_channels)
    if name == "tiny":
        return TinyConvNet(in_channels, seed=None)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")


def default_normalisation(name: str, pretrained: bool, channels: int) -> tuple[list[float], list[float]]:
    """Mean/std applied after dividing by scale: the ImageNet weights' own, else centre [0, 1] on 0."""
    if name in LITE_VARIANTS and pretrained:
        return [IMAGENET_MEAN[0]] * channels, [IMAGENET_STD[0]] * channels
    return [0.5] * channels, [0.25] * channels


class Outputs(NamedTuple):
    emb: torch.Tensor  # (B, D) unit-norm embedding
    logits: torch.Tensor | None  # (B, classes) from the classifier head
    codes: torch.Tensor | None  # (B, K) tanh-relaxed hash codes in (-1, 1)


class TrainNet(nn.Module):
    """`forward(x)` -> Outputs; `retrieval_net()` is what gets exported.

    With `hash_bits`, a hash head replaces the embedding head: the embedding is then the normalised relaxed code
    (its float view), and the export carries the hash logits whose signs are the codes."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, num_classes: int = 0, hash_bits: int = 0,
                 multi_label: bool = False, frozen_blocks: int = 0, classifier_dims: int = 0):
        super().__init__()
        self.backbone = backbone
        if frozen_blocks and not hasattr(backbone, "first_layers"):
            raise ValueError(f"{type(backbone).__name__} cannot freeze blocks (model.frozen_blocks)")
        # kept out of the module tree's own list: they are the backbone's modules, frozen in place
        self._frozen = backbone.first_layers(frozen_blocks) if frozen_blocks else []
        for m in self._frozen:
            m.requires_grad_(False)
        self.hash_head = HashHead(backbone.num_features, hash_bits) if hash_bits else None
        if self.hash_head is not None:
            self.embed_head = RelaxedCodeEmbedding(self.hash_head)
            embedding_dim = hash_bits
        else:
            self.embed_head = EmbeddingHead(backbone.num_features, embedding_dim)
        # classifier_dims: the classifier reads the first N dims only (a split embedding whose class part
        # is trained apart from the rest, training/crossmodal.py)
        self.classifier_dims = classifier_dims if 0 < classifier_dims < embedding_dim else 0
        self.classifier = CosineClassifier(self.classifier_dims or embedding_dim, num_classes,
                                           bias=multi_label) if num_classes else None

    def train(self, mode: bool = True) -> TrainNet:
        """Frozen layers stay in eval mode: their batch-norm statistics keep their starting values too."""
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> Outputs:
        feats = self.backbone.features(x)
        if self.hash_head is not None:
            codes = torch.tanh(self.hash_head(feats))
            emb = torch.nn.functional.normalize(codes, dim=1)
        else:
            codes, emb = None, self.embed_head(feats)
        if self.classifier is None:
            return Outputs(emb, None, codes)
        cls_in = torch.nn.functional.normalize(emb[:, :self.classifier_dims], dim=1) if self.classifier_dims else emb
        return Outputs(emb, self.classifier(cls_in), codes)

    def retrieval_net(self, with_classifier: bool = False) -> RetrievalNet:
        return RetrievalNet(self.backbone, embed_head=self.embed_head, hash_head=self.hash_head,
                            classifier=self.classifier if with_classifier else None)
