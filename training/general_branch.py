"""A general branch beside the trained embedding: what the default model does to stay good on imagery and land
uses no training set named (docs/results.md, "A default for imagery it was not trained on").

Training on labelled classes separates those classes and narrows the network to them: on AID's 15 classes that no
model here trains on, the trained embedding scored 44 mAP@100 where the untrained ImageNet features of the same
network score 55, while on the trained classes it went from 53 to 91. The two are complementary, so the exported
embedding is both, concatenated:

    embedding = normalise([ w * normalise((f - mean) @ P),  (1 - w) * normalise(trained embedding) ])

f: the untrained ImageNet network's pooled features (of its head, or with `tap = N` of block N's output: on AID's
unseen classes the untrained Lite2 at 150 px scores 61.6 mAP@100 from block 17's pooled output against 56.3 from
its head), `mean` and `P` (PCA to `dims`) fitted on the training images. With `scale` > 1 the branch sees the input
resized by that factor (a 150 px aerial patch seen at 225 px: unseen classes +1.8 in the default), while the trained
part, trained at each dataset's own size, sees it as it is; with `views` 2 its features are averaged over the input
and its quarter turn (+2.2 more; bench/general_features.py);
w the weight of the general part. With `also` ("efficientnet_lite0:13") a second untrained network's pooled block
features, read from the same resized and turned input (or at its own `also_scale` and `also_views`), join the
first's before the PCA (each L2-normalised): two networks' features, whose errors differ, carry further to unseen
classes than either (+1.4 on AID's unseen classes beside the default's trained branch, bench/general_features.py
--also). With `model.frozen_blocks = k` the trained network's stem and first k blocks are ImageNet's own, so the
two branches share them and part ways after block k: a second tail, not a second network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.efficientnet_lite import EfficientNetLite
from .models.invariant import group_views

Reading = tuple[EfficientNetLite, int, float, int]  # an untrained network, its block, input scale, quarter turns


@dataclass(frozen=True)
class GeneralBranch:
    """How the general branch is built (`rsir export --general-branch WEIGHT --general-dims --general-block
    --general-scale --general-views`)."""

    weight: float
    dims: int = 128
    block: int = 0  # > 0: pool this block's output instead of the head's features
    scale: float = 1.0  # > 1: the branch sees the input resized by this factor (bilinear)
    views: int = 1  # 2 or 4: its pooled features are averaged over this many quarter turns of the input
    also: str = ""  # "BACKBONE:BLOCK": a second untrained network whose pooled block features join the first's
    also_scale: float = 0.0  # the second network's input scale (0: `scale`)
    also_views: int = 0  # the second network's quarter turns (0: `views`)

    def second(self) -> tuple[str, int, float, int] | None:
        """(backbone, block, input scale, quarter turns) of `also` (its scale and turns the first's where not
        given), or None; ValueError when malformed."""
        if not self.also:
            return None
        backbone, _, block = self.also.partition(":")
        if not block.isdigit() or int(block) < 1:
            raise ValueError(f"expected BACKBONE:BLOCK (e.g. efficientnet_lite0:13), got {self.also!r}")
        return backbone, int(block), float(self.also_scale or self.scale), int(self.also_views or self.views)


class GeneralAndTrained(nn.Module):
    """Exported as the model: shared stem and first `shared` blocks, then the untrained tail (general) and the
    trained tail (its embedding head), concatenated as above. Outputs the embedding only; codes come from
    `rsir whiten --no-whitening --itq-codes BITS` on top."""

    output_names = ["embedding"]

    def __init__(self, trained: nn.Module, imagenet: EfficientNetLite, shared: int, mean: np.ndarray,
                 projection: np.ndarray, weight: float, tap: int = 0, scale: float = 1.0, views: int = 1,
                 second: Reading | None = None):
        super().__init__()
        self.trained, self.imagenet, self.shared, self.weight = trained, imagenet, shared, float(weight)
        self.tap, self.scale, self.views = tap, float(scale), int(views)
        self.second = second[0] if second else None  # a submodule, so that export and .eval() reach it
        self.second_reading = tuple(second[1:]) if second else ()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("projection", torch.as_tensor(projection, dtype=torch.float32))

    def general(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The general part of input `x`, whose activations after the shared blocks are `h`."""
        if self.second is not None:
            f = joint_features([(self.imagenet, self.tap, self.scale, self.views),
                                (self.second, *self.second_reading)], x)
        elif self.scale == 1 and self.views == 1:
            f = untrained_features(self.imagenet, h, self.shared, self.tap)
        else:
            f = general_features(self.imagenet, x, self.tap, self.scale, self.views)
        return F.normalize((f - self.mean) @ self.projection, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.imagenet.prefix(x, self.shared)  # = the trained network's own: those blocks stayed frozen
        specific = F.normalize(self.trained.embed_head(self.trained.backbone.features_from(h, self.shared)), dim=1)
        return F.normalize(torch.cat([self.weight * self.general(x, h), (1 - self.weight) * specific], dim=1), dim=1)


def upscaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` resized by `scale` (bilinear, half-pixel centres: ONNX Resize's default, so onnxruntime agrees)."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def branch_input(x: torch.Tensor, scale: float = 1.0, views: int = 1) -> torch.Tensor:
    """Normalised images `x` resized by `scale`, their first `views` quarter turns stacked as one batch (as
    --invariance rot4 makes them)."""
    xs = x if scale == 1 else upscaled(x, scale)
    return torch.cat(group_views(xs, "rot4")[:views], dim=0) if views > 1 else xs


def view_mean(f: torch.Tensor, views: int) -> torch.Tensor:
    """Per-image mean of features computed on `branch_input`'s stacked views."""
    return f.reshape(views, -1, f.shape[1]).mean(dim=0) if views > 1 else f


def general_features(net: EfficientNetLite, x: torch.Tensor, tap: int, scale: float = 1.0,
                     views: int = 1) -> torch.Tensor:
    """`untrained_features` of normalised images `x`, resized by `scale` and averaged over `views` quarter turns
    (run as one batch)."""
    return pooled_views(net, branch_input(x, scale, views), tap, views)


def pooled_views(net: EfficientNetLite, xs: torch.Tensor, tap: int, views: int) -> torch.Tensor:
    """`untrained_features` of `branch_input`'s stacked views `xs`, averaged per image."""
    return view_mean(untrained_features(net, net.prefix(xs, 0), 0, tap), views)


def joint_features(readings: list[Reading], x: torch.Tensor) -> torch.Tensor:
    """Each reading's `general_features` of `x`, L2-normalised (their scales differ) and concatenated; a resized,
    turned input two readings share is made once."""
    inputs: dict[tuple[float, int], torch.Tensor] = {}
    parts = []
    for net, tap, scale, views in readings:
        if (scale, views) not in inputs:
            inputs[(scale, views)] = branch_input(x, scale, views)
        xs = inputs[(scale, views)]
        parts.append(F.normalize(pooled_views(net, xs, tap, views), dim=1))
    return torch.cat(parts, dim=1)


def shared_blocks_match(trained_backbone: EfficientNetLite, imagenet: EfficientNetLite, n: int) -> bool:
    """True when the stem and first `n` blocks of both hold the same weights and statistics."""
    a = {k: v for k, v in trained_backbone.state_dict().items()}
    b = imagenet.state_dict()
    keys = [k for k in b if k.startswith(("_conv_stem", "_bn0")) or
            (k.startswith("_blocks.") and int(k.split(".")[1]) < n)]
    return all(torch.equal(a[k], b[k]) for k in keys)


def fit_pca(features: np.ndarray, dims: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, (D, dims) projection onto the top principal directions) of `features` (N, D); `weights` (N,): how
    much each row counts (e.g. datasets of different sizes alike)."""
    x = np.asarray(features, np.float64)
    w = np.full(len(x), 1.0 / len(x)) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    mean = w @ x
    _, _, vt = np.linalg.svd((x - mean) * np.sqrt(w)[:, None], full_matrices=False)
    return mean.astype(np.float32), np.ascontiguousarray(vt[:dims].T, np.float32)


def untrained_features(net: EfficientNetLite, h: torch.Tensor, start: int, tap: int) -> torch.Tensor:
    """The general branch's features from the activations after block `start`: the head's pooled features, or
    with `tap` block `tap`'s pooled output."""
    return net.pooled_between(h, start, tap) if tap else net.features_from(h, start)


@torch.no_grad()
def pooled_features(net: EfficientNetLite, batches, tap: int = 0, scale: float = 1.0, views: int = 1,
                    second: Reading | None = None) -> np.ndarray:
    """The general branch's features (`general_features`, or with `second` `joint_features`) of normalised image
    batches."""
    net.eval()
    if second is not None:
        second[0].eval()
        out = [joint_features([(net, tap, scale, views), second], x).numpy() for x in batches]
    else:
        out = [general_features(net, x, tap, scale, views).numpy() for x in batches]
    return np.concatenate(out)
