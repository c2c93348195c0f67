"""Orientation-invariant export: average a retrieval net's outputs over the quarter turns (and mirror images) of
its input, so the exported encoder gives a tile and its rotated or flipped copy the same embedding and code."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.encoder import INVARIANCE_VIEWS

GROUPS = {name: n for name, n in INVARIANCE_VIEWS.items() if name != "none"}  # group -> views per image


def _check(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown invariance group {group!r}; choose from {sorted(GROUPS)}")


def group_views(x: torch.Tensor, group: str) -> list[torch.Tensor]:
    """The views of square images `x` (N, C, S, S): the four quarter turns ("rot4"), and with "d4" also the four
    turns of the left-right mirror image (the dihedral group of the square)."""
    _check(group)
    bases = [x, torch.flip(x, dims=[3])] if group == "d4" else [x]
    return [torch.rot90(b, k, dims=[2, 3]) for b in bases for k in range(4)]


class GroupAveraged(nn.Module):
    """Runs `net` on every view of the input in one batch and averages each output over the views; the averaged
    embedding is L2-normalised again. The result is exactly invariant to the group's transformations (up to float
    rounding), at `GROUPS[group]` times the encoding cost."""

    def __init__(self, net: nn.Module, group: str):
        super().__init__()
        _check(group)
        self.net = net
        self.group = group

    @property
    def output_names(self) -> list[str]:
        return list(self.net.output_names)

    def forward(self, x: torch.Tensor):
        views = GROUPS[self.group]
        out = self.net(torch.cat(group_views(x, self.group), dim=0))
        out = out if isinstance(out, tuple) else (out,)
        averaged = [o.reshape(views, x.shape[0], -1).mean(dim=0) for o in out]
        averaged[0] = F.normalize(averaged[0], dim=1)  # outputs[0] is always the embedding
        return averaged[0] if len(averaged) == 1 else tuple(averaged)
