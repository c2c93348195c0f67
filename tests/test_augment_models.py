"""Augmentations and backbones: exact geometric transforms, reproducible randomness, the ResNet-18 layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import AugmentConfig, augment, rotate90, rotate_by, rotate_pixels
from training.models.factory import TrainNet, build_backbone
from training.models.resnet import ResNet18


def test_rotate90_turns_each_image_by_its_own_count():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    out = rotate90(x, torch.tensor([1, 2]))
    assert torch.equal(out[0, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))  # counter-clockwise
    assert torch.equal(out[1], x[1].flip(1).flip(2))


def test_rotate_by_turns_each_image_by_its_own_angle():
    x = torch.rand(3, 2, 8, 8)
    out = rotate_by(x, torch.tensor([0.0, 90.0, 180.0]))
    assert torch.allclose(out[0], x[0], atol=1e-5)  # sampling lands on pixel centres
    assert torch.allclose(out[1], torch.rot90(x[1], 1, dims=(1, 2)), atol=1e-4)  # counter-clockwise, as rotate90
    assert torch.allclose(out[2], x[2].flip(1).flip(2), atol=1e-4)


def test_rotate_pixels_keeps_dtype_and_moves_a_dot_around_the_centre():
    x = np.zeros((2, 1, 9, 9), np.uint16)
    x[:, 0, 1, 4] = 1000  # three pixels above the centre (4, 4)
    assert np.array_equal(rotate_pixels(x, 90), np.rot90(x, 1, axes=(2, 3)))  # quarter turns are exact
    assert np.array_equal(rotate_pixels(x, -360), x)
    turned = rotate_pixels(x, 45)
    assert turned.dtype == np.uint16
    row, col = np.unravel_index(turned[0, 0].argmax(), (9, 9))
    assert (row, col) == (2, 2)  # up-left of the centre: 3 px away at 135 degrees
    flat = np.full((1, 3, 16, 16), 77, np.uint8)
    assert np.array_equal(rotate_pixels(flat, 37.5), flat)  # the reflected corners add nothing new


def test_geometric_augmentation_only_permutes_pixels_and_is_reproducible():
    x = torch.rand(16, 3, 8, 8)
    cfg = AugmentConfig(flips=True, rot90=True, jitter=0.0)
    a = augment(x, cfg, torch.Generator().manual_seed(3))
    b = augment(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i in range(16):  # each output is one of the 8 dihedral copies of its input
        copies = [torch.rot90(v, k, dims=(1, 2)) for v in (x[i], x[i].flip(2)) for k in range(4)]
        assert any(torch.equal(a[i], c) for c in copies)
    assert not torch.equal(a, x)


def test_colour_jitter_stays_small():
    x = torch.full((64, 3, 4, 4), 0.5)
    out = augment(x, AugmentConfig(flips=False, rot90=False, jitter=0.1), torch.Generator().manual_seed(0))
    ratio = out / x
    assert ratio.min() >= 0.9 * 0.95 - 1e-6 and ratio.max() <= 1.1 * 1.05 + 1e-6
    assert ratio.std() > 0.01  # it does vary


def test_resnet18_has_the_standard_layout():
    net = ResNet18(in_channels=3, small_input=False)
    # torchvision's resnet18 without its 1000-way fc layer has 11,176,512 parameters
    assert sum(p.numel() for p in net.parameters()) == 11_176_512
    assert net.features(torch.rand(2, 3, 64, 64)).shape == (2, 512)
    small = ResNet18(in_channels=13)  # 13 Sentinel-2 bands, 3x3 stem for small tiles
    assert small.features(torch.rand(1, 13, 32, 32)).shape == (1, 512)


def test_pretrained_lite0_accepts_other_band_counts():
    rgb = build_backbone("efficientnet_lite0", True, 3)
    four = build_backbone("efficientnet_lite0", True, 4)
    x = torch.rand(1, 3, 64, 64)
    grey = x.mean(dim=1, keepdim=True)
    # the 4-band stem is the mean RGB filter per band, scaled: on a grey image it equals the RGB stem
    with torch.no_grad():
        a = rgb._conv_stem(grey.repeat(1, 3, 1, 1))
        b = four._conv_stem(grey.repeat(1, 4, 1, 1))
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_backbone("resnet18", True, 3)


def test_train_net_embedding_is_unit_norm_and_classifier_optional():
    net = TrainNet(build_backbone("tiny", False, 3), 8, num_classes=5).eval()
    emb, logits, codes = net(torch.rand(4, 3, 32, 32))
    assert codes is None
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5) and logits.shape == (4, 5)
    emb2 = net.retrieval_net()(torch.rand(4, 3, 32, 32))
    assert emb2.shape == (4, 8)


@pytest.mark.parametrize("variant,params", [("efficientnet_lite1", 5_416_680), ("efficientnet_lite2", 6_092_072)])
def test_lite1_lite2_load_their_packaged_imagenet_weights(variant, params):
    net = build_backbone(variant, True, 3).eval()  # load_state_dict(strict=True) inside
    assert sum(p.numel() for p in net.parameters()) == params
    with torch.no_grad():
        logits = net(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
