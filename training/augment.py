"""Augmentations suited to overhead imagery: there is no "up" in a satellite tile, so flips and 90-degree
rotations are label-preserving; colour jitter is kept small (sensor calibration and season vary a little)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    jitter: float = 0.1  # brightness/contrast/per-band gain drawn from [1 - jitter, 1 + jitter]


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image of (B, C, S, S) by k[i] quarter turns (counter-clockwise)."""
    out = x.clone()
    for turns in (1, 2, 3):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a batch of scaled pixels (raw / scale, before mean/std); randomness only from `gen`."""
    b = x.shape[0]
    if cfg.flips:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg.rot90:
        x = rotate90(x, torch.randint(0, 4, (b,), generator=gen))
    if cfg.jitter > 0:
        j = cfg.jitter

        def draw(*shape):
            return 1 + (torch.rand(*shape, generator=gen) * 2 - 1) * j

        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * draw(b, 1, 1, 1) + mean  # contrast
        x = x * draw(b, 1, 1, 1) * (1 + (draw(b, x.shape[1], 1, 1) - 1) / 2)  # brightness, per-band gain
    return x
