"""Augmentations suited to overhead imagery: there is no "up" in a satellite tile, so flips and 90-degree
rotations are label-preserving; colour jitter stands for sensor calibration and season. For models meant to work
across archives, random resized crops (the same ground at other scales) and a coarser ground resolution
(down-sampled and back) stand for the differences between sensors; both are off by default."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    jitter: float = 0.1  # brightness/contrast/per-band gain drawn from [1 - jitter, 1 + jitter]
    crop_scale: float = 1.0  # random resized crops keep [crop_scale, 1] of the image's area (1 = off)
    resolution: float = 1.0  # half the batches are down-sampled by a factor in [1, resolution] and back (1 = off)


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each image of (B, C, S, S) by k[i] quarter turns (counter-clockwise)."""
    out = x.clone()
    for turns in (1, 2, 3):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


def random_resized_crop(x: torch.Tensor, min_area: float, gen: torch.Generator) -> torch.Tensor:
    """Each image of (B, C, S, S) cropped to a random [min_area, 1] share of its area (aspect ratio 3:4 to 4:3,
    anywhere inside) and resampled bilinearly back to S x S."""
    b = x.shape[0]
    area = min_area + (1 - min_area) * torch.rand(b, generator=gen)
    ratio = torch.exp((torch.rand(b, generator=gen) * 2 - 1) * math.log(4 / 3))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def coarser(x: torch.Tensor, factor: float) -> torch.Tensor:
    """(B, C, S, S) seen at a ground resolution `factor` times coarser: area-averaged down, bilinear back up."""
    s = x.shape[-1]
    small = max(2, round(s / factor))
    if small >= s:
        return x
    down = F.interpolate(x, size=(small, small), mode="area")
    return F.interpolate(down, size=(s, s), mode="bilinear", align_corners=False)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a batch of scaled pixels (raw / scale, before mean/std); randomness only from `gen`."""
    b = x.shape[0]
    if cfg.crop_scale < 1:
        x = random_resized_crop(x, cfg.crop_scale, gen)
    if cfg.resolution > 1:
        factor = 1 + (cfg.resolution - 1) * float(torch.rand(1, generator=gen))
        if float(torch.rand(1, generator=gen)) < 0.5:
            x = coarser(x, factor)
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


def rotate_by(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of (B, C, S, S) counter-clockwise by degrees[i] about its centre: bilinear, the corners
    filled by reflection (a tile is all there is of the scene)."""
    theta = torch.deg2rad(degrees.to(x.device, torch.float32))
    c, s = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(c)
    # affine_grid maps output to input coordinates (x right, y down): this matrix turns the picture CCW
    mat = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotate_pixels(pixels: np.ndarray, degrees: float, chunk: int = 1024) -> np.ndarray:
    """Rotate each image of (N, C, S, S) raw pixels counter-clockwise by `degrees`, same dtype: quarter turns
    exactly, other angles with `rotate_by` (how `rsir eval --rotate-queries` tests rotation invariance)."""
    turns, rest = divmod(float(degrees) % 360.0, 90.0)
    if rest == 0:
        return np.ascontiguousarray(np.rot90(pixels, int(turns), axes=(2, 3)))
    out = []
    for i in range(0, len(pixels), chunk):  # bounded memory on large query sets
        x = torch.from_numpy(pixels[i:i + chunk].astype(np.float32))
        out.append(rotate_by(x, torch.full((len(x),), float(degrees))).numpy())
    rotated = np.concatenate(out)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        rotated = np.clip(np.rint(rotated), info.min, info.max)
    return rotated.astype(pixels.dtype)
