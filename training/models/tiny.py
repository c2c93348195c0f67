"""A very small CNN backbone: fast enough to train and export inside the test suite."""
from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Three strided conv layers and global average pooling; `features()` returns `width * 4` values."""

    def __init__(self, in_channels: int = 3, width: int = 8, seed: int | None = 0):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1),  # no ReLU: signed features suit LSH codes
        )
        self.num_features = width * 4

    def first_layers(self, n: int) -> list[nn.Module]:
        """The first `n` conv layers (with their activations)."""
        if not 0 <= n <= 3:
            raise ValueError(f"frozen_blocks must be 0..3 for the tiny backbone, got {n}")
        return list(self.body[:2 * n])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))
