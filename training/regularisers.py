"""Terms added to any method's loss that keep what the backbone knew when training started (its ImageNet weights,
or `model.init_from`'s) while it learns the metric (`[loss] l2sp_weight`, `[loss] distill_weight`). Like
pytorch-metric-learning's regularisers they are composable: each is `penalty(model, x, out) -> (tensor, stats)` on
the batch and the model's outputs for it. The starting backbone is saved in `last.pt`, so a resumed run pulls
towards the same weights.

- L2-SP (Li, Grandvalet & Davoine, ICML 2018): weight x the squared distance of the backbone's weights from their
  ImageNet values (instead of from zero, as weight decay pulls). Free: no extra forward pass.
- Distance distillation (relational knowledge distillation, "RKD-D", Park et al., CVPR 2019): weight x the Huber
  loss between the batch's pairwise distances in the trained embedding and in the starting backbone's pooled
  features (centred on the batch mean), each divided by its mean so only their shape counts. The trained space may
  move classes apart, but images the starting features find alike stay alike, which is what carries over to
  classes never trained on. Costs one teacher forward pass (no backward) per batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig


class L2SP:
    """weight * sum over backbone weights of ||w - w_imagenet||^2 (batch-norm statistics are not weights)."""

    name = "l2sp"

    def __init__(self, model: nn.Module, reference: nn.Module, weight: float):
        own = dict(model.backbone.named_parameters())
        self.reference = {n: p.detach().clone().to(own[n].device) for n, p in reference.named_parameters()
                          if n in own and own[n].shape == p.shape}
        self.weight = weight

    def penalty(self, model, x: torch.Tensor, out) -> tuple[torch.Tensor, dict]:
        terms = [((p - self.reference[n]) ** 2).sum() for n, p in model.backbone.named_parameters()
                 if p.requires_grad and n in self.reference]
        value = torch.stack(terms).sum() if terms else torch.zeros((), device=x.device)
        return self.weight * value, {self.name: float(value.detach())}


def relative_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of `z` (i != j, flattened), divided by their mean."""
    sq = (z * z).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * z @ z.t()).clamp_min(1e-12).sqrt()
    off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    d = d[off]
    return d / d.mean().clamp_min(1e-12)


class DistanceDistillation:
    """weight * Huber(relative distances of the embeddings, relative distances of the teacher's centred
    features) over the batch's pairs."""

    name = "distill"

    def __init__(self, teacher: nn.Module, weight: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight

    def penalty(self, model, x: torch.Tensor, out) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            t = self.teacher.features(x)
            target = relative_distances(t - t.mean(0, keepdim=True))
        value = F.smooth_l1_loss(relative_distances(out.emb), target)
        return self.weight * value, {self.name: float(value.detach())}


def wants_regularisers(cfg: TrainConfig) -> bool:
    return bool(cfg.loss.l2sp_weight or cfg.loss.distill_weight)


def make_regularisers(cfg: TrainConfig, start: dict, model: nn.Module, device) -> list:
    """The regularisers the config asks for, each against `start`: the backbone's state dict when training
    began."""
    if not wants_regularisers(cfg):
        return []
    from .models.factory import build_backbone

    reference = build_backbone(cfg.model.backbone, False, len(cfg.data.bands))
    reference.load_state_dict(start)
    reference = reference.to(device).eval().requires_grad_(False)
    out = []
    if cfg.loss.l2sp_weight:
        out.append(L2SP(model, reference, cfg.loss.l2sp_weight))
    if cfg.loss.distill_weight:
        out.append(DistanceDistillation(reference, cfg.loss.distill_weight))
    return out


class OutputRecorder:
    """Stands in for the model during a method's loss: calls it and keeps the first call's outputs (the batch's
    own forward pass), so regularisers reuse them instead of running the model again."""

    def __init__(self, model: nn.Module):
        self.model, self.first = model, None

    def __call__(self, x: torch.Tensor):
        out = self.model(x)
        if self.first is None:
            self.first = out
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)
